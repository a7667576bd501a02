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

use common::{hop_packets, hops, nf_hop, packets, tc_hop, tcp, udp_burst, Flowtrace, From, Lab};
use serde_json::Value;

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

fn summary(lines: &[Value]) -> &Value {
    lines
        .iter()
        .find(|l| l["type"] == "summary")
        .expect("a summary line")
}

fn all(lines: &[Value]) -> String {
    lines
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_published_port_closed_in_docker_user_shows_the_inbound_dnat_and_the_drop() {
    let lab = Lab::get();
    let host_port = lab.state["published"]["host_port"]
        .as_u64()
        .expect("lab up with --publish") as u16;
    let cport = lab.state["published"]["container_port"]
        .as_u64()
        .expect("container port");
    let cip = lab.s("container_ip");
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
    let err = tcp(&lab, &From::Internet, lab.ip("uplink_ip"), host_port)
        .expect_err("the published port is closed in DOCKER-USER");
    let lines = ft.stop();
    let uplink = lab.s("uplink");
    let public = format!("{}:{host_port}", lab.s("uplink_ip"));
    let inside = format!("{cip}:{cport}");
    let syn = packets(&lines)
        .into_iter()
        .find(|p| p["tcp_flags"] == "S" && p["dst"] == inside.as_str() && !p["drop"].is_null())
        .unwrap_or_else(|| panic!("no dropped inbound SYN ({err}) in:\n{}", all(&lines)));
    assert_eq!(syn["way"], "in", "{syn}");
    assert_eq!(syn["container"], "ens_monitor_cron", "{syn}");
    // It arrived at the uplink for the host's address, was DNATed at PREROUTING/nat, and died
    // at FORWARD/filter: it never reached the bridge or the container's veth.
    assert_eq!(
        hops(syn),
        vec![(uplink.clone(), "ingress".to_owned())],
        "{syn}"
    );
    assert_eq!(
        tc_hop(syn, &uplink, "ingress")["dst"],
        public.as_str(),
        "{syn}"
    );
    let dnat = nf_hop(syn, "PREROUTING", "nat");
    assert_eq!(dnat["nat"]["kind"], "dnat", "{syn}");
    assert_eq!(dnat["nat"]["from"], public.as_str(), "{syn}");
    assert_eq!(dnat["nat"]["to"], inside.as_str(), "{syn}");
    assert_eq!(nf_hop(syn, "FORWARD", "filter")["verdict"], "drop", "{syn}");
    let d = &syn["drop"];
    assert_eq!(d["reason"], "NETFILTER_DROP", "{syn}");
    assert_eq!(
        (d["hook"].as_str(), d["table"].as_str()),
        (Some("FORWARD"), Some("filter"))
    );
    assert_eq!(
        d["rule"],
        format!("-A DOCKER-USER -d {rule} -p tcp -m tcp --dport {cport} -j DROP").as_str(),
        "{syn}"
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
    let cip = lab.ip("container_ip");
    let iso = lab.s("isolated_ip");
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let err = tcp(&lab, &From::Container("ens_isolated".to_owned()), cip, 8080)
        .expect_err("Docker isolates user networks");
    let lines = ft.stop();
    let syn = packets(&lines)
        .into_iter()
        .find(|p| {
            p["tcp_flags"] == "S"
                && p["src"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&format!("{iso}:")))
        })
        .unwrap_or_else(|| panic!("no SYN from {iso} ({err}) in:\n{}", all(&lines)));
    assert_eq!(syn["way"], "in", "{syn}");
    assert_eq!(syn["container"], "ens_monitor_cron", "{syn}");
    assert_eq!(syn["dst"], format!("{cip}:8080").as_str(), "{syn}");
    // It came in by the other network's bridge, which flowtrace is not attached to: netfilter
    // saw it first, and FORWARD/filter dropped it.
    assert!(hops(syn).is_empty(), "no tc hop: {syn}");
    assert_eq!(syn["hops"][0]["hook"], "PREROUTING", "{syn}");
    assert_eq!(nf_hop(syn, "FORWARD", "filter")["verdict"], "drop", "{syn}");
    let d = &syn["drop"];
    assert_eq!(
        (d["hook"].as_str(), d["table"].as_str()),
        (Some("FORWARD"), Some("filter"))
    );
    let rule = d["rule"].as_str().unwrap_or_default();
    assert!(
        rule.starts_with("-A DOCKER-") && rule.ends_with("-j DROP"),
        "Docker's isolation rule, not {rule:?}: {syn}"
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_neighbours_traffic_is_counted_on_the_bridge_and_uplink_and_never_sent_up() {
    let lab = Lab::get();
    let peer = lab.s("peer_container");
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let n = 3000;
    udp_burst(&lab, &peer, lab.ip("inet_ip"), 9999, n, b"neighbour");
    for _ in 0..3 {
        tcp(
            &lab,
            &From::Container(peer.clone()),
            lab.ip("inet_ip"),
            8080,
        )
        .expect("peer tcp");
    }
    let sport = tcp(
        &lab,
        &From::Container(lab.s("container")),
        lab.ip("inet_ip"),
        8080,
    )
    .expect("cron tcp");
    let lines = ft.stop();
    let local = format!("{}:{sport}", lab.s("container_ip"));
    assert!(
        packets(&lines).iter().any(|p| p["src"] == local.as_str()),
        "the traced container's own exchange: {}",
        all(&lines)
    );
    let peer_ip = lab.s("peer_ip");
    for p in packets(&lines) {
        assert!(
            !p.to_string().contains(&format!("\"{peer_ip}:")),
            "neighbour shown: {p}"
        );
    }
    let s = summary(&lines);
    // The kernel counted every one of the neighbour's datagrams where they pass...
    assert!(hop_packets(s, &lab.s("bridge"), "ingress") >= n, "{s}");
    assert!(hop_packets(s, &lab.s("uplink"), "egress") >= n, "{s}");
    assert!(hop_packets(s, &lab.s("peer_veth"), "ingress") >= n, "{s}");
    // ...and sent none of them up: user space had nothing to throw away.
    assert_eq!(s["discarded"]["untraced"], 0, "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert!(s["packets"].as_u64().unwrap_or(u64::MAX) < 50, "{s}");
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
    let peer = lab.s("peer_container");
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
    let from = format!("{}:{sport}", lab.s("isolated_ip"));
    let syn = packets(&lines)
        .into_iter()
        .find(|p| p["src"] == from.as_str() && p["tcp_flags"] == "S")
        .unwrap_or_else(|| panic!("no SYN from {from} in:\n{}", all(&lines)));
    assert_eq!(syn["container"], peer.as_str(), "{syn}");
    assert_eq!(syn["way"], "in", "{syn}");
    // Delivered by its new veth (bridged between two ports of the isolated bridge: the
    // bridge device's own tc hooks do not see it), not the one on docker_default.
    let path = hops(syn);
    let last = path.last().cloned().unwrap_or_default();
    assert_eq!(last.1, "egress", "{syn}");
    assert_ne!(last.0, lab.s("peer_veth"), "the new veth: {syn}");
    let at = syn["hops"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(at["role"], "veth", "{syn}");
}
