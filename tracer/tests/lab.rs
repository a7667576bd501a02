//! Privileged end-to-end tests: real dockerd, real container, real bridge and iptables rules
//! that Docker wrote, a namespace standing in for the internet, real packets, and the real
//! `flowtrace` binary's `--json` output. Run through `cargo xtask test`.

mod common;

use common::{
    hops, is_on_the_uplink, leaves_masqueraded, leftovers, line, nf_hop, nf_hops, packets, ping,
    show, tc_hop, tcp, the_summary, udp, udp_ttl, Flowtrace, From, Lab, Line, Packet,
};
use tracer_model::ObservedAt;

fn cron() -> From {
    From::Container("ens_monitor_cron".into())
}

/// The first packet whose container-side view matches.
fn find<'a>(lines: &'a [Line], way: &str, pred: impl Fn(&Packet) -> bool) -> &'a Packet {
    packets(lines)
        .into_iter()
        .find(|p| p.way.as_deref() == Some(way) && pred(p))
        .unwrap_or_else(|| {
            let all: Vec<String> = lines.iter().map(Line::to_json).collect();
            panic!("no {way} packet matched in:\n{}", all.join("\n"))
        })
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

/// Fails the test with the shared expectation's sentence.
fn check(r: Result<(), String>) {
    r.unwrap_or_else(|e| panic!("{e}"))
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn raw_event_at_the_container_veth_has_the_right_addresses() {
    let lab = Lab::get();
    let veth = lab.host_veth();
    let ft = Flowtrace::start(&["--iface", &veth, "--raw", "--json"]);
    let sport = udp(&lab, &cron(), lab.inet_ip(), 9999).expect("udp echo");
    let lines = ft.stop();
    let want_src = format!("{}:{sport}", lab.container_ip());
    let want_dst = format!("{}:9999", lab.inet_ip());
    let hit = lines.iter().find_map(|l| match l {
        Line::Observation(o)
            if o.tc() == Some((veth.as_str(), "ingress"))
                && o.addresses().0 == Some(want_src.as_str()) =>
        {
            Some(o)
        }
        _ => None,
    });
    let hit = hit.unwrap_or_else(|| panic!("no observation from {want_src} on {veth}: {lines:?}"));
    assert_eq!(hit.addresses().1, Some(want_dst.as_str()));
    let proto = match &hit.at {
        ObservedAt::Tc { proto, .. } => proto.as_deref(),
        _ => None,
    };
    assert_eq!(proto, Some("udp"));
    assert!(hit.skb.starts_with("0xffff"), "{}", hit.to_json());
    // The echo came back through the veth's egress.
    assert!(lines.iter().any(|l| match l {
        Line::Observation(o) => {
            o.tc().is_some_and(|(_, dir)| dir == "egress")
                && o.addresses().1 == Some(want_src.as_str())
        }
        _ => false,
    }));
    assert_eq!(leftovers(&veth), "", "flowtrace left tc state behind");
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn tcp_to_the_internet_shows_veth_bridge_uplink_and_masquerade_both_ways() {
    let lab = Lab::get();
    let path = lab.host_path();
    let (veth, uplink) = (path.veth.clone(), path.uplink.clone());
    let ft = Flowtrace::start(&["--container", "ens_monitor_cron", "--json"]);
    let sport = tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("tcp echo");
    let lines = ft.stop();
    let local = format!("{}:{sport}", lab.container_ip());

    let syn = find(&lines, "out", |p| {
        p.src.as_deref() == Some(local.as_str()) && p.tcp_flags.as_deref() == Some("S")
    });
    let outside = leaves_masqueraded(&lab, syn, &local);
    assert_eq!(syn.container.as_deref(), Some("ens_monitor_cron"));
    assert_eq!(
        syn.dst.as_deref(),
        Some(format!("{}:8080", lab.inet_ip()).as_str())
    );
    // veth, bridge, uplink in time order, MASQUERADE'd at POSTROUTING/nat...
    check(path.masqueraded_out(syn));
    // ...to the uplink address (and the same port, unless conntrack held that one), checked
    // by `leaves_masqueraded` above.

    let synack = find(&lines, "in", |p| {
        p.dst.as_deref() == Some(local.as_str()) && p.tcp_flags.as_deref() == Some("S.")
    });
    // uplink, bridge, veth, de-NATed at PREROUTING/nat, before the bridge...
    check(path.denatted_reply(synack, &local));
    // ...arriving for the host address and the port MASQUERADE chose.
    assert_eq!(
        tc_hop(synack, &uplink, "ingress").dst.as_deref(),
        Some(outside.as_str()),
        "the reply arrives for the host address"
    );

    let summary = the_summary(&lines);
    assert!(summary.packets >= 4, "{summary:?}");
    assert_eq!(summary.lost, 0);
    assert_eq!(leftovers(&veth), "");
    assert_eq!(leftovers(&uplink), "");
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn udp_and_icmp_echo_are_traced_out_and_back() {
    let lab = Lab::get();
    let path = lab.host_path();
    let uplink = path.uplink.clone();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let sport = udp(&lab, &cron(), lab.inet_ip(), 9999).expect("udp echo");
    assert!(ping(&lab, "ens_monitor_cron", lab.inet_ip(), 2), "ping");
    let lines = ft.stop();
    let local = format!("{}:{sport}", lab.container_ip());

    let out = find(&lines, "out", |p| {
        p.proto.as_deref() == Some("udp") && p.src.as_deref() == Some(local.as_str())
    });
    check(path.masqueraded_out(out));
    leaves_masqueraded(&lab, out, &local);
    let back = find(&lines, "in", |p| {
        p.proto.as_deref() == Some("udp") && p.dst.as_deref() == Some(local.as_str())
    });
    assert_eq!(hops(back), path.inward());

    let cip = lab.container_ip().to_string();
    let req = find(&lines, "out", |p| {
        p.proto.as_deref() == Some("icmp") && p.src.as_deref() == Some(cip.as_str())
    });
    assert_eq!(hops(req), path.out());
    assert_eq!(
        tc_hop(req, &uplink, "egress").src.as_deref(),
        Some(lab.uplink_ip().to_string().as_str()),
        "{}",
        show(req)
    );
    let rep = find(&lines, "in", |p| {
        p.proto.as_deref() == Some("icmp") && p.dst.as_deref() == Some(cip.as_str())
    });
    assert_eq!(hops(rep), path.inward());
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn container_to_container_is_the_l2_path_without_uplink_or_nat() {
    let lab = Lab::get();
    let (veth, peer_veth) = (lab.host_veth(), lab.peer_veth());
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let sport = tcp(&lab, &cron(), lab.peer_ip(), 8080).expect("tcp to the peer");
    let lines = ft.stop();
    let local = format!("{}:{sport}", lab.container_ip());
    let syn = find(&lines, "out", |p| {
        p.src.as_deref() == Some(local.as_str()) && p.tcp_flags.as_deref() == Some("S")
    });
    assert_eq!(
        hops(syn),
        vec![pair(&veth, "ingress"), pair(&peer_veth, "egress")],
        "{}",
        show(syn)
    );
    assert!(syn.hops.iter().all(|h| h.nat().is_none()), "{}", show(syn));
    let synack = find(&lines, "in", |p| {
        p.dst.as_deref() == Some(local.as_str()) && p.tcp_flags.as_deref() == Some("S.")
    });
    assert_eq!(
        hops(synack),
        vec![pair(&peer_veth, "ingress"), pair(&veth, "egress")],
        "{}",
        show(synack)
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn an_untraced_containers_traffic_does_not_appear() {
    let lab = Lab::get();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let peer = From::Container(lab.peer_container());
    for _ in 0..3 {
        tcp(&lab, &peer, lab.inet_ip(), 8080).expect("peer tcp");
    }
    let sport = tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("cron tcp");
    let lines = ft.stop();
    let peer_ip = lab.peer_ip();
    let local = format!("{}:{sport}", lab.container_ip());
    // The traced container's own exchange is there, so the tracer was working...
    find(&lines, "out", |p| p.src.as_deref() == Some(local.as_str()));
    // ...and nothing of the peer's three connections is.
    for p in packets(&lines) {
        let text = show(p);
        assert!(
            !text.contains(&format!("\"{peer_ip}:")),
            "peer traffic shown: {text}"
        );
        assert_eq!(p.container.as_deref(), Some("ens_monitor_cron"));
    }
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_published_port_shows_the_dnat_and_the_reply_de_nat() {
    let lab = Lab::get();
    let (host_port, cport) = lab.published();
    let path = lab.host_path();
    let uplink = path.uplink.clone();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let sport = tcp(&lab, &From::Internet, lab.uplink_ip(), host_port).expect("published port");
    let lines = ft.stop();
    let client = format!("{}:{sport}", lab.inet_ip());
    let published = format!("{}:{host_port}", lab.uplink_ip());
    let container = format!("{}:{cport}", lab.container_ip());
    let syn = find(&lines, "in", |p| {
        p.src.as_deref() == Some(client.as_str()) && p.tcp_flags.as_deref() == Some("S")
    });
    assert_eq!(syn.dst.as_deref(), Some(container.as_str()));
    // The published port's DNAT at PREROUTING/nat, FORWARD/filter accepts it, and it goes in
    // by the uplink, the bridge and the container's veth...
    check(path.published_in(syn, &published, &container));
    assert_eq!(
        tc_hop(syn, &uplink, "ingress").dst.as_deref(),
        Some(published.as_str())
    );
    // ...in that order.
    let order = [
        nf_hop(syn, "PREROUTING", "nat").at_ns,
        nf_hop(syn, "FORWARD", "filter").at_ns,
        tc_hop(syn, &path.bridge, "egress").at_ns,
        tc_hop(syn, &path.veth, "egress").at_ns,
    ];
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "{order:?}: {}",
        show(syn)
    );
    let synack = find(&lines, "out", |p| {
        p.dst.as_deref() == Some(client.as_str()) && p.tcp_flags.as_deref() == Some("S.")
    });
    // veth, bridge, uplink, rewritten back at POSTROUTING/nat...
    check(path.masqueraded_out(synack));
    // ...to the published address and port.
    assert_eq!(
        tc_hop(synack, &uplink, "egress").src.as_deref(),
        Some(published.as_str()),
        "reply de-NAT: {}",
        show(synack)
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn masquerade_is_a_nat_hop_at_postrouting_and_the_reply_is_de_natted_at_prerouting() {
    let lab = Lab::get();
    let path = lab.host_path();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let sport = tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("tcp echo");
    let lines = ft.stop();
    let local = format!("{}:{sport}", lab.container_ip());
    let syn = find(&lines, "out", |p| {
        p.src.as_deref() == Some(local.as_str()) && p.tcp_flags.as_deref() == Some("S")
    });
    // The packet as it left: MASQUERADE's port is the container's unless conntrack held it.
    let outside = tc_hop(syn, &path.uplink, "egress")
        .src
        .as_deref()
        .unwrap_or_default()
        .to_owned();
    assert!(is_on_the_uplink(&lab, &outside), "{}", show(syn));
    let hooks: Vec<String> = nf_hops(syn)
        .into_iter()
        .map(|(h, t, v)| format!("{h}/{t}/{v}"))
        .collect();
    assert_eq!(
        hooks,
        vec![
            "PREROUTING/nat/accept",
            "FORWARD/filter/accept",
            "POSTROUTING/nat/accept"
        ],
        "{}",
        show(syn)
    );
    // An SNAT at POSTROUTING/nat, hops in time order.
    check(path.masqueraded_out(syn));
    let masq = nf_hop(syn, "POSTROUTING", "nat").nat.as_ref();
    assert_eq!(masq.map(|n| &*n.from), Some(local.as_str()));
    assert_eq!(masq.map(|n| &*n.to), Some(outside.as_str()));
    // The rewrite is shown where it happened, not again on the uplink.
    assert!(
        tc_hop(syn, &path.uplink, "egress").nat.is_none(),
        "{}",
        show(syn)
    );

    let synack = find(&lines, "in", |p| {
        p.dst.as_deref() == Some(local.as_str()) && p.tcp_flags.as_deref() == Some("S.")
    });
    // A DNAT at PREROUTING/nat...
    check(path.denatted_reply(synack, &local));
    assert_eq!(
        tc_hop(synack, &path.uplink, "ingress").dst.as_deref(),
        Some(outside.as_str())
    );
    // ...from the outside address back to the container's.
    let denat = nf_hop(synack, "PREROUTING", "nat").nat.as_ref();
    assert_eq!(denat.map(|n| &*n.from), Some(outside.as_str()));
    assert_eq!(denat.map(|n| &*n.to), Some(local.as_str()));
    assert!(synack.drop.is_none());
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_docker_user_drop_names_hook_table_reason_and_rule() {
    let lab = Lab::get();
    let drop_port = lab.drop_port();
    let rule = lab.drop_rule();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let err = tcp(&lab, &cron(), lab.inet_ip(), drop_port).expect_err("the lab drops this port");
    let lines = ft.stop();
    let dst = format!("{}:{drop_port}", lab.inet_ip());
    let syn = find(&lines, "out", |p| {
        p.dst.as_deref() == Some(dst.as_str())
            && p.tcp_flags.as_deref() == Some("S")
            && p.drop.is_some()
    });
    let filter = nf_hop(syn, "FORWARD", "filter");
    assert_eq!(filter.verdict, "drop", "{}", show(syn));
    // NETFILTER_DROP at FORWARD/filter, by the rule as iptables -S prints it.
    xtask::expect::dropped_by_rule(syn, "FORWARD", "filter", &rule)
        .unwrap_or_else(|e| panic!("{e} ({err})"));
    let Some(d) = &syn.drop else {
        panic!("not dropped: {}", show(syn))
    };
    // The function that freed it (symbolised from /proc/kallsyms; which one depends on the
    // backend: nf_hook_slow for legacy tables, nft_do_chain's caller chain for nf_tables).
    assert!(
        d.location.as_deref().is_some_and(|l| !l.is_empty()),
        "{}",
        show(syn)
    );
    // It never reached the uplink.
    let uplink = lab.uplink();
    assert!(
        hops(syn).iter().all(|(iface, _)| *iface != uplink),
        "{}",
        show(syn)
    );
    let summary = the_summary(&lines);
    assert!(summary.drops >= 1, "{summary:?}");
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn traffic_to_another_user_network_is_dropped_by_dockers_isolation_rules() {
    let lab = Lab::get();
    let iso = lab.isolated_ip();
    let bridge = lab.isolated_bridge();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let err = tcp(&lab, &cron(), iso, 8080).expect_err("Docker isolates user networks");
    let lines = ft.stop();
    let dst = format!("{iso}:8080");
    let syn = find(&lines, "out", |p| {
        p.dst.as_deref() == Some(dst.as_str())
            && p.tcp_flags.as_deref() == Some("S")
            && p.drop.is_some()
    });
    // Out of the container, across its bridge, and no further: FORWARD/filter dropped it.
    let path = hops(syn);
    assert_eq!(
        path.first(),
        Some(&(lab.host_veth(), "ingress".into())),
        "{}",
        show(syn)
    );
    assert!(
        path.iter().all(|(i, _)| *i != bridge),
        "never reached {bridge}: {}",
        show(syn)
    );
    assert_eq!(
        nf_hop(syn, "FORWARD", "filter").verdict,
        "drop",
        "{}",
        show(syn)
    );
    let Some(d) = &syn.drop else {
        panic!("not dropped: {}", show(syn))
    };
    assert_eq!(d.reason, "NETFILTER_DROP", "{}", show(syn));
    assert_eq!(
        (d.hook.as_deref(), d.table.as_deref()),
        (Some("FORWARD"), Some("filter"))
    );
    // Docker 20.10–27 drops in DOCKER-ISOLATION-STAGE-2, later versions in DOCKER-FORWARD or
    // DOCKER-INTERNAL: whichever it is, the rule names the isolated bridge and drops.
    let rule = d.rule.as_deref().unwrap_or_default();
    assert!(
        rule.starts_with("-A DOCKER-") && rule.contains(&bridge) && rule.ends_with("-j DROP"),
        "the isolation rule as iptables -S prints it, not {rule:?} ({err}): {}",
        show(syn)
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_drop_outside_netfilter_has_its_reason_and_no_hook() {
    let lab = Lab::get();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    // TTL 1: the host must not forward it (and says so with an ICMP time exceeded).
    let sport = udp_ttl(&lab, &cron(), lab.inet_ip(), 9999, 1);
    let lines = ft.stop();
    let local = format!("{}:{sport}", lab.container_ip());
    let p = find(&lines, "out", |p| {
        p.src.as_deref() == Some(local.as_str()) && p.drop.is_some()
    });
    let Some(d) = &p.drop else {
        panic!("not dropped: {}", show(p))
    };
    let reason = d.reason.as_str();
    assert!(
        !reason.is_empty() && reason != "NETFILTER_DROP",
        "{}",
        show(p)
    );
    assert!(
        d.hook.is_none() && d.table.is_none() && d.rule.is_none(),
        "{}",
        show(p)
    );
    assert!(
        d.location.as_deref().is_some_and(|l| !l.is_empty()),
        "{}",
        show(p)
    );
    // It got as far as the bridge, never to the uplink.
    let uplink = lab.uplink();
    assert!(
        hops(p).iter().all(|(iface, _)| *iface != uplink),
        "{}",
        show(p)
    );
    assert_eq!(
        d.last_hop.as_deref(),
        Some(format!("{} tc ingress", lab.bridge()).as_str()),
        "{}",
        show(p)
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn network_flows_count_duration_and_filters_work_on_the_real_binary() {
    let lab = Lab::get();
    let cip = lab.container_ip();
    let peer_ip = lab.peer_ip();

    // --network traces every container on it: both lab containers' traffic shows.
    let ft = Flowtrace::start(&["--network", "docker_default", "--json"]);
    let s1 = tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("cron tcp");
    let s2 = tcp(
        &lab,
        &From::Container(lab.peer_container()),
        lab.inet_ip(),
        8080,
    )
    .expect("peer tcp");
    let lines = ft.stop();
    find(&lines, "out", |p| {
        p.src.as_deref() == Some(format!("{cip}:{s1}").as_str())
            && p.container.as_deref() == Some("ens_monitor_cron")
    });
    let peer = lab.peer_container();
    find(&lines, "out", |p| {
        p.src.as_deref() == Some(format!("{peer_ip}:{s2}").as_str())
            && p.container.as_deref() == Some(peer.as_str())
    });

    // --flows: one line per flow with counts each way and the NAT.
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--flows", "--json"]);
    let sport = tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("tcp");
    let lines = ft.stop();
    let flow = lines
        .iter()
        .filter_map(Line::flow)
        .find(|f| f.local == format!("{cip}:{sport}"))
        .unwrap_or_else(|| panic!("no flow line: {lines:?}"));
    assert_eq!(flow.remote, format!("{}:8080", lab.inet_ip()));
    // MASQUERADE's port is the container's unless conntrack already held that one.
    assert!(
        flow.translated
            .as_deref()
            .is_some_and(|t| is_on_the_uplink(&lab, t)),
        "{}",
        flow.to_json()
    );
    assert!(
        flow.out.packets >= 3 && flow.inbound.packets >= 2,
        "{}",
        flow.to_json()
    );
    assert!(
        packets(&lines).is_empty(),
        "--flows prints flows, not packets"
    );

    // --proto/--port filters: only the UDP datagram and its echo.
    let ft = Flowtrace::start(&[
        "-c",
        "ens_monitor_cron",
        "--json",
        "--proto",
        "udp",
        "--port",
        "9999",
    ]);
    tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("tcp");
    udp(&lab, &cron(), lab.inet_ip(), 9999).expect("udp");
    let lines = ft.stop();
    let shown = packets(&lines);
    assert!(shown.len() >= 2, "{lines:?}");
    assert!(
        shown.iter().all(|p| p.proto.as_deref() == Some("udp")),
        "{lines:?}"
    );

    // --count stops after N packets, --duration after a time, both with a summary.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_flowtrace"))
        .args([
            "-c",
            "ens_monitor_cron",
            "--json",
            "--count",
            "2",
            "--duration",
            "20s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("flowtrace");
    std::thread::sleep(std::time::Duration::from_secs(3));
    for _ in 0..2 {
        tcp(&lab, &cron(), lab.inet_ip(), 8080).expect("tcp");
    }
    let out = child
        .wait_with_output()
        .expect("exits by itself after --count");
    assert!(out.status.success());
    let lines: Vec<Line> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(line)
        .collect();
    assert_eq!(packets(&lines).len(), 2, "{lines:?}");
    assert!(matches!(lines.last(), Some(Line::Summary(_))), "{lines:?}");
    let t = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowtrace"))
        .args(["-c", "ens_monitor_cron", "--json", "--duration", "1500ms"])
        .output()
        .expect("flowtrace");
    assert!(out.status.success() && t.elapsed() < std::time::Duration::from_secs(15));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"type\":\"summary\""));
}
