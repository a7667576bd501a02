//! Privileged end-to-end tests of the kernel's scope: packets *to* a traced container that die
//! on the host before they reach its veth are shown (a published port closed in DOCKER-USER,
//! a connection from another Docker network), a neighbour's traffic is counted on the bridge
//! and uplink but never sent up, and the scope follows a container that joins and leaves a
//! network. Run through `cargo xtask test`.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{
    counted, hops, nf_hop, packets, show, tc_hop, tcp, the_summary, udp_burst, Flowtrace, From,
    Hop, Lab, Line,
};

/// An iptables rule inserted for one test, deleted when the test ends (even on failure).
struct Rule(Vec<String>);

impl Rule {
    fn insert(chain: &str, spec: &[&str]) -> Self {
        let mut args = vec!["-I".to_owned(), chain.to_owned()];
        args.extend(spec.iter().map(|s| s.to_string()));
        let ok = Command::new("iptables")
            .args(&args)
            .status()
            .expect("iptables")
            .success();
        assert!(ok, "iptables {args:?}");
        args[0] = "-D".into();
        Self(args)
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let _ = Command::new("iptables").args(&self.0).status();
    }
}

fn all(lines: &[Line]) -> String {
    lines
        .iter()
        .map(Line::to_json)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_published_port_closed_in_docker_user_shows_the_inbound_dnat_and_the_drop() {
    let lab = Lab::get();
    let (host_port, cport) = lab.published();
    let cip = lab.container_ip().to_string();
    let rule = format!("{cip}/32");
    let _closed = Rule::insert(
        "DOCKER-USER",
        &[
            "-d",
            &rule,
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            &cport.to_string(),
            "-j",
            "DROP",
        ],
    );
    let dir = std::env::temp_dir().join(format!("flowtrace-scope-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("closed.pcapng");
    let file_s = file.display().to_string();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json", "--write", &file_s]);
    let err = tcp(&lab, &From::Internet, lab.uplink_ip(), host_port)
        .expect_err("the published port is closed in DOCKER-USER");
    let lines = ft.stop();
    let uplink = lab.uplink();
    let public = format!("{}:{host_port}", lab.uplink_ip());
    let inside = format!("{cip}:{cport}");
    let syn = packets(&lines)
        .into_iter()
        .find(|p| {
            p.tcp_flags.as_deref() == Some("S")
                && p.dst.as_deref() == Some(inside.as_str())
                && p.drop.is_some()
        })
        .unwrap_or_else(|| panic!("no dropped inbound SYN ({err}) in:\n{}", all(&lines)));
    assert_eq!(syn.way.as_deref(), Some("in"), "{}", show(syn));
    assert_eq!(
        syn.container.as_deref(),
        Some("ens_monitor_cron"),
        "{}",
        show(syn)
    );
    // It arrived at the uplink for the host's address, was DNATed at PREROUTING/nat, and died
    // at FORWARD/filter: it never reached the bridge or the container's veth.
    assert_eq!(
        hops(syn),
        vec![(uplink.clone(), "ingress".to_owned())],
        "{}",
        show(syn)
    );
    assert_eq!(
        tc_hop(syn, &uplink, "ingress").dst.as_deref(),
        Some(public.as_str()),
        "{}",
        show(syn)
    );
    let dnat = nf_hop(syn, "PREROUTING", "nat").nat.as_ref();
    assert_eq!(dnat.map(|n| &*n.kind), Some("dnat"), "{}", show(syn));
    assert_eq!(
        dnat.map(|n| &*n.from),
        Some(public.as_str()),
        "{}",
        show(syn)
    );
    assert_eq!(dnat.map(|n| &*n.to), Some(inside.as_str()), "{}", show(syn));
    assert_eq!(
        nf_hop(syn, "FORWARD", "filter").verdict,
        "drop",
        "{}",
        show(syn)
    );
    let d = syn.drop.as_ref().expect("the SYN was picked for its drop");
    assert_eq!(d.reason, "NETFILTER_DROP", "{}", show(syn));
    assert_eq!(
        (d.hook.as_deref(), d.table.as_deref()),
        (Some("FORWARD"), Some("filter"))
    );
    assert_eq!(
        d.rule.as_deref(),
        Some(format!("-A DOCKER-USER -d {rule} -p tcp -m tcp --dport {cport} -j DROP").as_str()),
        "{}",
        show(syn)
    );
    // The recording has it too, and its text replay says what happened.
    let read = Command::new(env!("CARGO_BIN_EXE_flowtrace"))
        .arg("read")
        .arg(&file)
        .output()
        .expect("flowtrace read");
    let text = String::from_utf8_lossy(&read.stdout).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert!(
        text.contains(&format!("DNAT {public} → {inside}")),
        "the DNAT in the replayed text:\n{text}"
    );
    assert!(text.contains("DROP ✗ NETFILTER_DROP"), "{text}");
    assert!(text.contains("(in)"), "{text}");
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_connection_from_another_network_is_shown_dropped_by_dockers_isolation() {
    let lab = Lab::get();
    let cip = lab.container_ip();
    let iso = lab.isolated_ip();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let err = tcp(&lab, &From::Container("ens_isolated".to_owned()), cip, 8080)
        .expect_err("Docker isolates user networks");
    let lines = ft.stop();
    let syn = packets(&lines)
        .into_iter()
        .find(|p| {
            p.tcp_flags.as_deref() == Some("S")
                && p.src
                    .as_deref()
                    .is_some_and(|s| s.starts_with(&format!("{iso}:")))
        })
        .unwrap_or_else(|| panic!("no SYN from {iso} ({err}) in:\n{}", all(&lines)));
    assert_eq!(syn.way.as_deref(), Some("in"), "{}", show(syn));
    assert_eq!(
        syn.container.as_deref(),
        Some("ens_monitor_cron"),
        "{}",
        show(syn)
    );
    assert_eq!(
        syn.dst.as_deref(),
        Some(format!("{cip}:8080").as_str()),
        "{}",
        show(syn)
    );
    // It came in by the other network's bridge, which flowtrace is not attached to: netfilter
    // saw it first, and FORWARD/filter dropped it.
    assert!(hops(syn).is_empty(), "no tc hop: {}", show(syn));
    assert!(
        matches!(syn.hops.first(), Some(Hop::Nf(h)) if h.hook == "PREROUTING"),
        "{}",
        show(syn)
    );
    assert_eq!(
        nf_hop(syn, "FORWARD", "filter").verdict,
        "drop",
        "{}",
        show(syn)
    );
    let d = syn.drop.as_ref();
    assert_eq!(
        (
            d.and_then(|d| d.hook.as_deref()),
            d.and_then(|d| d.table.as_deref())
        ),
        (Some("FORWARD"), Some("filter"))
    );
    let rule = d.and_then(|d| d.rule.as_deref()).unwrap_or_default();
    assert!(
        rule.starts_with("-A DOCKER-") && rule.ends_with("-j DROP"),
        "Docker's isolation rule, not {rule:?}: {}",
        show(syn)
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_neighbours_traffic_is_counted_on_the_bridge_and_uplink_and_never_sent_up() {
    let lab = Lab::get();
    let peer = lab.peer_container();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let n = 3000;
    udp_burst(&lab, &peer, lab.inet_ip(), 9999, n, b"neighbour");
    for _ in 0..3 {
        tcp(&lab, &From::Container(peer.clone()), lab.inet_ip(), 8080).expect("peer tcp");
    }
    let sport =
        tcp(&lab, &From::Container(lab.container()), lab.inet_ip(), 8080).expect("cron tcp");
    let lines = ft.stop();
    let local = format!("{}:{sport}", lab.container_ip());
    assert!(
        common::has_packet_from(&lines, &local),
        "the traced container's own exchange: {}",
        all(&lines)
    );
    let peer_ip = lab.peer_ip();
    for p in packets(&lines) {
        let json = show(p);
        assert!(
            !json.contains(&format!("\"{peer_ip}:")),
            "neighbour shown: {json}"
        );
    }
    let s = the_summary(&lines);
    // The kernel counted every one of the neighbour's datagrams where they pass...
    assert!(counted(s, &lab.bridge(), "ingress") >= n, "{s:?}");
    assert!(counted(s, &lab.uplink(), "egress") >= n, "{s:?}");
    assert!(counted(s, &lab.peer_veth(), "ingress") >= n, "{s:?}");
    // ...and sent none of them up: user space had nothing to throw away.
    assert_eq!(s.discarded.untraced, 0, "{s:?}");
    assert_eq!(s.lost, 0, "{s:?}");
    assert!(s.packets < 50, "{s:?}");
}

/// A freed packet's `TRACKED` entry stays, marked ended, for the LRU to reuse; and some frees
/// pass no tracepoint (on 6.18, a UDP read on the CPU that allocated the packet), so an entry
/// can outlive its packet still marked alive. The slab soon gives the address to another
/// packet: the host's own, or a neighbour's, must not be taken for the traced container's.
#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_packet_at_a_freed_traced_packets_address_is_not_followed() {
    let lab = Lab::get();
    let peer = lab.peer_container();
    let dst = lab.inet_ip();
    lab.assert_safe(&From::Host, dst);
    // A fixed port below the ephemeral range: none of the traced container's flows can be
    // masqueraded to it, so whatever shows it is the host's.
    const HOST_PORT: u16 = 9990;
    let host = std::net::UdpSocket::bind((lab.uplink_ip(), HOST_PORT)).expect("bind on the host");
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    // Rounds of the traced container's datagrams (freed once the lab's internet reads them),
    // each followed at once by others' packets, which take the addresses they leave.
    for _ in 0..8 {
        udp_burst(&lab, &lab.container(), dst, 9999, 200, b"traced");
        for _ in 0..1000 {
            while host.send_to(b"host", (dst, 9999)).is_err() {}
        }
        udp_burst(&lab, &peer, dst, 9999, 500, b"neighbour");
    }
    let lines = ft.stop();
    let host_end = format!("\"{}:{HOST_PORT}\"", lab.uplink_ip());
    let peer_end = format!("\"{}:", lab.peer_ip());
    let (mut own, mut at_prerouting) = (0, 0);
    for p in packets(&lines) {
        let json = show(p);
        assert!(!json.contains(&host_end), "the host's packet shown: {json}");
        assert!(
            !json.contains(&peer_end),
            "a neighbour's packet shown: {json}"
        );
        own += 1;
        let prerouting = |h: &Hop| matches!(h, Hop::Nf(n) if n.hook == "PREROUTING");
        at_prerouting += usize::from(p.hops.iter().any(prerouting));
    }
    assert!(own >= 1600, "the traced container's datagrams: {own} shown");
    // The check runs in the netfilter observers: they were attached, and saw them.
    assert!(
        at_prerouting >= 1600,
        "{at_prerouting} of {own} with a PREROUTING step"
    );
    let s = the_summary(&lines);
    // None of theirs was even sent up to be thrown away.
    assert_eq!(s.discarded.untraced, 0, "{s:?}");
    assert_eq!(s.lost, 0, "{s:?}");
}

/// Disconnects the peer from the isolated network when the test ends, even on failure.
struct Connected(String, String);

impl Drop for Connected {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "disconnect", "-f", &self.0, &self.1])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn wait_until(what: &str, ft: &Flowtrace, f: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f(&ft.stderr_text()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            ft.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn the_scope_follows_a_container_that_joins_and_leaves_a_network() {
    let lab = Lab::get();
    let peer = lab.peer_container();
    let net = "ftlab_isolated".to_owned();
    let ft = Flowtrace::start(&["-c", &peer, "--json"]);
    docker(&["network", "connect", &net, &peer]);
    let _connected = Connected(net.clone(), peer.clone());
    let addr = docker(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        &peer,
    ]);
    wait_until("the new address in the scope", &ft, |e| {
        e.contains(&format!("+{addr}"))
    });
    // From the other container on that network, straight to the peer's new address: it
    // crosses the isolated bridge to the peer's new veth, which flowtrace attached to.
    let dst = addr.parse().expect("an IPv4 address");
    let sport = tcp(&lab, &From::Container("ens_isolated".to_owned()), dst, 8080)
        .expect("tcp on the isolated network");
    docker(&["network", "disconnect", &net, &peer]);
    wait_until("the address leaving the scope", &ft, |e| {
        e.contains(&format!("-{addr}"))
    });
    let lines = ft.stop();
    let from = format!("{}:{sport}", lab.isolated_ip());
    let syn = packets(&lines)
        .into_iter()
        .find(|p| p.src.as_deref() == Some(from.as_str()) && p.tcp_flags.as_deref() == Some("S"))
        .unwrap_or_else(|| panic!("no SYN from {from} in:\n{}", all(&lines)));
    assert_eq!(
        syn.container.as_deref(),
        Some(peer.as_str()),
        "{}",
        show(syn)
    );
    assert_eq!(syn.way.as_deref(), Some("in"), "{}", show(syn));
    // Delivered by its new veth (bridged between two ports of the isolated bridge: the
    // bridge device's own tc hooks do not see it), not the one on docker_default.
    let path = hops(syn);
    let last = path.last().cloned().unwrap_or_default();
    assert_eq!(last.1, "egress", "{}", show(syn));
    assert_ne!(last.0, lab.peer_veth(), "the new veth: {}", show(syn));
    assert!(
        matches!(syn.hops.last(), Some(Hop::Tc(h)) if h.role.as_deref() == Some("veth")),
        "{}",
        show(syn)
    );
}
