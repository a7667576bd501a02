//! Privileged end-to-end tests: real dockerd, real container, real bridge and iptables rules
//! that Docker wrote, a namespace standing in for the internet, real packets, and the real
//! `flowtrace` binary's `--json` output. Run through `cargo xtask test`.

mod common;

use common::{
    hops, leftovers, nf_hop, nf_hops, packets, ping, tc_hop, tcp, udp, udp_ttl, Flowtrace, From,
    Lab,
};
use serde_json::Value;

fn cron() -> From {
    From::Container("ens_monitor_cron".into())
}

/// The first packet whose container-side view matches.
fn find<'a>(lines: &'a [Value], way: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    packets(lines)
        .into_iter()
        .find(|p| p["way"] == way && pred(p))
        .unwrap_or_else(|| {
            let all: Vec<String> = lines.iter().map(Value::to_string).collect();
            panic!("no {way} packet matched in:\n{}", all.join("\n"))
        })
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

/// Container → internet: veth ingress, bridge ingress, uplink egress.
fn out_path(lab: &Lab) -> Vec<(String, String)> {
    vec![
        pair(&lab.s("host_veth"), "ingress"),
        pair(&lab.s("bridge"), "ingress"),
        pair(&lab.s("uplink"), "egress"),
    ]
}

/// Internet → container: uplink ingress, bridge egress, veth egress.
fn in_path(lab: &Lab) -> Vec<(String, String)> {
    vec![
        pair(&lab.s("uplink"), "ingress"),
        pair(&lab.s("bridge"), "egress"),
        pair(&lab.s("host_veth"), "egress"),
    ]
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn raw_event_at_the_container_veth_has_the_right_addresses() {
    let lab = Lab::get();
    let veth = lab.s("host_veth");
    let ft = Flowtrace::start(&["--iface", &veth, "--raw", "--json"]);
    let sport = udp(&lab, &cron(), lab.ip("inet_ip"), 9999).expect("udp echo");
    let lines = ft.stop();
    let want_src = format!("{}:{sport}", lab.s("container_ip"));
    let want_dst = format!("{}:9999", lab.s("inet_ip"));
    let hit = lines.iter().find(|l| {
        l["type"] == "observation"
            && l["iface"] == veth.as_str()
            && l["dir"] == "ingress"
            && l["src"] == want_src.as_str()
    });
    let hit = hit.unwrap_or_else(|| panic!("no observation from {want_src} on {veth}: {lines:?}"));
    assert_eq!(hit["dst"], want_dst.as_str());
    assert_eq!(hit["proto"], "udp");
    assert!(
        hit["skb"].as_str().is_some_and(|s| s.starts_with("0xffff")),
        "{hit}"
    );
    // The echo came back through the veth's egress.
    assert!(lines
        .iter()
        .any(|l| l["dir"] == "egress" && l["dst"] == want_src.as_str()));
    assert_eq!(leftovers(&veth), "", "flowtrace left tc state behind");
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn tcp_to_the_internet_shows_veth_bridge_uplink_and_masquerade_both_ways() {
    let lab = Lab::get();
    let (veth, bridge, uplink) = (lab.s("host_veth"), lab.s("bridge"), lab.s("uplink"));
    let ft = Flowtrace::start(&["--container", "ens_monitor_cron", "--json"]);
    let sport = tcp(&lab, &cron(), lab.ip("inet_ip"), 8080).expect("tcp echo");
    let lines = ft.stop();
    let local = format!("{}:{sport}", lab.s("container_ip"));
    let outside = format!("{}:{sport}", lab.s("uplink_ip"));

    let syn = find(&lines, "out", |p| {
        p["src"] == local.as_str() && p["tcp_flags"] == "S"
    });
    assert_eq!(syn["container"], "ens_monitor_cron");
    assert_eq!(syn["dst"], format!("{}:8080", lab.s("inet_ip")).as_str());
    assert_eq!(hops(syn), out_path(&lab), "{syn}");
    let up = tc_hop(syn, &uplink, "egress");
    assert_eq!(
        up["src"],
        outside.as_str(),
        "MASQUERADE to the uplink address: {syn}"
    );
    let at: Vec<u64> = syn["hops"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["at_ns"].as_u64())
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] <= w[1]),
        "hops in time order: {at:?}"
    );

    let synack = find(&lines, "in", |p| {
        p["dst"] == local.as_str() && p["tcp_flags"] == "S."
    });
    assert_eq!(hops(synack), in_path(&lab), "{synack}");
    assert_eq!(
        tc_hop(synack, &uplink, "ingress")["dst"],
        outside.as_str(),
        "the reply arrives for the host address"
    );
    assert_eq!(
        tc_hop(synack, &bridge, "egress")["dst"],
        local.as_str(),
        "de-NATed before the bridge: {synack}"
    );

    let summary = lines
        .iter()
        .find(|l| l["type"] == "summary")
        .expect("summary line");
    assert!(summary["packets"].as_u64().unwrap_or(0) >= 4, "{summary}");
    assert_eq!(summary["lost"], 0);
    assert_eq!(leftovers(&veth), "");
    assert_eq!(leftovers(&uplink), "");
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn udp_and_icmp_echo_are_traced_out_and_back() {
    let lab = Lab::get();
    let uplink = lab.s("uplink");
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let sport = udp(&lab, &cron(), lab.ip("inet_ip"), 9999).expect("udp echo");
    assert!(ping(&lab, "ens_monitor_cron", lab.ip("inet_ip"), 2), "ping");
    let lines = ft.stop();
    let local = format!("{}:{sport}", lab.s("container_ip"));

    let out = find(&lines, "out", |p| {
        p["proto"] == "udp" && p["src"] == local.as_str()
    });
    assert_eq!(hops(out), out_path(&lab));
    assert_eq!(
        tc_hop(out, &uplink, "egress")["src"],
        format!("{}:{sport}", lab.s("uplink_ip")).as_str()
    );
    let back = find(&lines, "in", |p| {
        p["proto"] == "udp" && p["dst"] == local.as_str()
    });
    assert_eq!(hops(back), in_path(&lab));

    let cip = lab.s("container_ip");
    let req = find(&lines, "out", |p| {
        p["proto"] == "icmp" && p["src"] == cip.as_str()
    });
    assert_eq!(hops(req), out_path(&lab));
    assert_eq!(
        tc_hop(req, &uplink, "egress")["src"],
        lab.s("uplink_ip").as_str(),
        "{req}"
    );
    let rep = find(&lines, "in", |p| {
        p["proto"] == "icmp" && p["dst"] == cip.as_str()
    });
    assert_eq!(hops(rep), in_path(&lab));
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn container_to_container_is_the_l2_path_without_uplink_or_nat() {
    let lab = Lab::get();
    let (veth, peer_veth) = (lab.s("host_veth"), lab.s("peer_veth"));
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let sport = tcp(&lab, &cron(), lab.ip("peer_ip"), 8080).expect("tcp to the peer");
    let lines = ft.stop();
    let local = format!("{}:{sport}", lab.s("container_ip"));
    let syn = find(&lines, "out", |p| {
        p["src"] == local.as_str() && p["tcp_flags"] == "S"
    });
    assert_eq!(
        hops(syn),
        vec![pair(&veth, "ingress"), pair(&peer_veth, "egress")],
        "{syn}"
    );
    assert!(
        syn["hops"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|h| h.get("nat").is_none()),
        "{syn}"
    );
    let synack = find(&lines, "in", |p| {
        p["dst"] == local.as_str() && p["tcp_flags"] == "S."
    });
    assert_eq!(
        hops(synack),
        vec![pair(&peer_veth, "ingress"), pair(&veth, "egress")],
        "{synack}"
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn an_untraced_containers_traffic_does_not_appear() {
    let lab = Lab::get();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let peer = From::Container(lab.s("peer_container"));
    for _ in 0..3 {
        tcp(&lab, &peer, lab.ip("inet_ip"), 8080).expect("peer tcp");
    }
    let sport = tcp(&lab, &cron(), lab.ip("inet_ip"), 8080).expect("cron tcp");
    let lines = ft.stop();
    let peer_ip = lab.s("peer_ip");
    let local = format!("{}:{sport}", lab.s("container_ip"));
    // The traced container's own exchange is there, so the tracer was working...
    find(&lines, "out", |p| p["src"] == local.as_str());
    // ...and nothing of the peer's three connections is.
    for p in packets(&lines) {
        let text = p.to_string();
        assert!(
            !text.contains(&format!("\"{peer_ip}:")),
            "peer traffic shown: {text}"
        );
        assert_eq!(p["container"], "ens_monitor_cron");
    }
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_published_port_shows_the_dnat_and_the_reply_de_nat() {
    let lab = Lab::get();
    let published = &lab.state["published"];
    let host_port = published["host_port"]
        .as_u64()
        .expect("lab up with --publish") as u16;
    let cport = published["container_port"]
        .as_u64()
        .expect("container port");
    let uplink = lab.s("uplink");
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let sport = tcp(&lab, &From::Internet, lab.ip("uplink_ip"), host_port).expect("published port");
    let lines = ft.stop();
    let client = format!("{}:{sport}", lab.s("inet_ip"));
    let syn = find(&lines, "in", |p| {
        p["src"] == client.as_str() && p["tcp_flags"] == "S"
    });
    assert_eq!(
        syn["dst"],
        format!("{}:{cport}", lab.s("container_ip")).as_str()
    );
    assert_eq!(hops(syn), in_path(&lab), "{syn}");
    assert_eq!(
        tc_hop(syn, &uplink, "ingress")["dst"],
        format!("{}:{host_port}", lab.s("uplink_ip")).as_str()
    );
    let dnat = nf_hop(syn, "PREROUTING", "nat");
    assert_eq!(
        dnat["nat"]["kind"], "dnat",
        "the published port's DNAT: {syn}"
    );
    assert_eq!(
        dnat["nat"]["from"],
        format!("{}:{host_port}", lab.s("uplink_ip")).as_str()
    );
    assert_eq!(
        dnat["nat"]["to"],
        format!("{}:{cport}", lab.s("container_ip")).as_str()
    );
    // Then FORWARD/filter accepts it, and it leaves by the bridge and the container's veth,
    // in that order.
    let forward = nf_hop(syn, "FORWARD", "filter");
    assert_eq!(forward["verdict"], "accept", "{syn}");
    let at = |h: &Value| h["at_ns"].as_u64().unwrap_or(u64::MAX);
    let order = [
        at(dnat),
        at(forward),
        at(tc_hop(syn, &lab.s("bridge"), "egress")),
        at(tc_hop(syn, &lab.s("host_veth"), "egress")),
    ];
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}: {syn}");
    let synack = find(&lines, "out", |p| {
        p["dst"] == client.as_str() && p["tcp_flags"] == "S."
    });
    assert_eq!(hops(synack), out_path(&lab));
    let up = tc_hop(synack, &uplink, "egress");
    assert_eq!(
        up["src"],
        format!("{}:{host_port}", lab.s("uplink_ip")).as_str(),
        "reply de-NAT: {synack}"
    );
    assert_eq!(
        nf_hop(synack, "POSTROUTING", "nat")["nat"]["kind"],
        "snat",
        "{synack}"
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn masquerade_is_a_nat_hop_at_postrouting_and_the_reply_is_de_natted_at_prerouting() {
    let lab = Lab::get();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let sport = tcp(&lab, &cron(), lab.ip("inet_ip"), 8080).expect("tcp echo");
    let lines = ft.stop();
    let local = format!("{}:{sport}", lab.s("container_ip"));
    let outside = format!("{}:{sport}", lab.s("uplink_ip"));
    let syn = find(&lines, "out", |p| {
        p["src"] == local.as_str() && p["tcp_flags"] == "S"
    });
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
        "{syn}"
    );
    let masq = nf_hop(syn, "POSTROUTING", "nat");
    assert_eq!(masq["nat"]["kind"], "snat", "{syn}");
    assert_eq!(masq["nat"]["from"], local.as_str());
    assert_eq!(masq["nat"]["to"], outside.as_str());
    // The rewrite is shown where it happened, not again on the uplink.
    assert!(
        tc_hop(syn, &lab.s("uplink"), "egress").get("nat").is_none(),
        "{syn}"
    );
    // Hops are in time order.
    let at: Vec<u64> = syn["hops"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["at_ns"].as_u64())
        .collect();
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "{at:?}");

    let synack = find(&lines, "in", |p| {
        p["dst"] == local.as_str() && p["tcp_flags"] == "S."
    });
    let denat = nf_hop(synack, "PREROUTING", "nat");
    assert_eq!(denat["nat"]["kind"], "dnat", "{synack}");
    assert_eq!(denat["nat"]["from"], outside.as_str());
    assert_eq!(denat["nat"]["to"], local.as_str());
    assert!(synack["drop"].is_null());
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_docker_user_drop_names_hook_table_reason_and_rule() {
    let lab = Lab::get();
    let drop_port = lab.port("drop_port");
    let rule = lab.s("drop_rule");
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let err =
        tcp(&lab, &cron(), lab.ip("inet_ip"), drop_port).expect_err("the lab drops this port");
    let lines = ft.stop();
    let dst = format!("{}:{drop_port}", lab.s("inet_ip"));
    let syn = find(&lines, "out", |p| {
        p["dst"] == dst.as_str() && p["tcp_flags"] == "S" && !p["drop"].is_null()
    });
    let filter = nf_hop(syn, "FORWARD", "filter");
    assert_eq!(filter["verdict"], "drop", "{syn}");
    let d = &syn["drop"];
    assert_eq!(d["reason"], "NETFILTER_DROP", "{syn}");
    assert_eq!(d["hook"], "FORWARD");
    assert_eq!(d["table"], "filter");
    assert_eq!(
        d["rule"],
        rule.as_str(),
        "the rule as iptables -S prints it ({err})"
    );
    // The function that freed it (symbolised from /proc/kallsyms; which one depends on the
    // backend: nf_hook_slow for legacy tables, nft_do_chain's caller chain for nf_tables).
    assert!(
        d["location"].as_str().is_some_and(|l| !l.is_empty()),
        "{syn}"
    );
    // It never reached the uplink.
    assert!(
        hops(syn).iter().all(|(iface, _)| *iface != lab.s("uplink")),
        "{syn}"
    );
    let summary = lines
        .iter()
        .find(|l| l["type"] == "summary")
        .expect("summary");
    assert!(summary["drops"].as_u64().unwrap_or(0) >= 1, "{summary}");
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn traffic_to_another_user_network_is_dropped_by_dockers_isolation_rules() {
    let lab = Lab::get();
    let iso = lab.ip("isolated_ip");
    let bridge = lab.s("isolated_bridge");
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    let err = tcp(&lab, &cron(), iso, 8080).expect_err("Docker isolates user networks");
    let lines = ft.stop();
    let dst = format!("{iso}:8080");
    let syn = find(&lines, "out", |p| {
        p["dst"] == dst.as_str() && p["tcp_flags"] == "S" && !p["drop"].is_null()
    });
    // Out of the container, across its bridge, and no further: FORWARD/filter dropped it.
    let path = hops(syn);
    assert_eq!(
        path.first(),
        Some(&(lab.s("host_veth"), "ingress".into())),
        "{syn}"
    );
    assert!(
        path.iter().all(|(i, _)| *i != bridge),
        "never reached {bridge}: {syn}"
    );
    assert_eq!(nf_hop(syn, "FORWARD", "filter")["verdict"], "drop", "{syn}");
    let d = &syn["drop"];
    assert_eq!(d["reason"], "NETFILTER_DROP", "{syn}");
    assert_eq!(
        (d["hook"].as_str(), d["table"].as_str()),
        (Some("FORWARD"), Some("filter"))
    );
    // Docker 20.10–27 drops in DOCKER-ISOLATION-STAGE-2, later versions in DOCKER-FORWARD or
    // DOCKER-INTERNAL: whichever it is, the rule names the isolated bridge and drops.
    let rule = d["rule"].as_str().unwrap_or_default();
    assert!(
        rule.starts_with("-A DOCKER-") && rule.contains(&bridge) && rule.ends_with("-j DROP"),
        "the isolation rule as iptables -S prints it, not {rule:?} ({err}): {syn}"
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_drop_outside_netfilter_has_its_reason_and_no_hook() {
    let lab = Lab::get();
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--json"]);
    // TTL 1: the host must not forward it (and says so with an ICMP time exceeded).
    let sport = udp_ttl(&lab, &cron(), lab.ip("inet_ip"), 9999, 1);
    let lines = ft.stop();
    let local = format!("{}:{sport}", lab.s("container_ip"));
    let p = find(&lines, "out", |p| {
        p["src"] == local.as_str() && !p["drop"].is_null()
    });
    let d = &p["drop"];
    let reason = d["reason"].as_str().unwrap_or("");
    assert!(!reason.is_empty() && reason != "NETFILTER_DROP", "{p}");
    assert!(
        d["hook"].is_null() && d["table"].is_null() && d["rule"].is_null(),
        "{p}"
    );
    assert!(d["location"].as_str().is_some_and(|l| !l.is_empty()), "{p}");
    // It got as far as the bridge, never to the uplink.
    assert!(
        hops(p).iter().all(|(iface, _)| *iface != lab.s("uplink")),
        "{p}"
    );
    assert_eq!(
        d["last_hop"],
        format!("{} tc ingress", lab.s("bridge")).as_str(),
        "{p}"
    );
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn network_flows_count_duration_and_filters_work_on_the_real_binary() {
    let lab = Lab::get();
    let cip = lab.s("container_ip");
    let peer_ip = lab.s("peer_ip");

    // --network traces every container on it: both lab containers' traffic shows.
    let ft = Flowtrace::start(&["--network", "docker_default", "--json"]);
    let s1 = tcp(&lab, &cron(), lab.ip("inet_ip"), 8080).expect("cron tcp");
    let s2 = tcp(
        &lab,
        &From::Container(lab.s("peer_container")),
        lab.ip("inet_ip"),
        8080,
    )
    .expect("peer tcp");
    let lines = ft.stop();
    find(&lines, "out", |p| {
        p["src"] == format!("{cip}:{s1}").as_str() && p["container"] == "ens_monitor_cron"
    });
    find(&lines, "out", |p| {
        p["src"] == format!("{peer_ip}:{s2}").as_str()
            && p["container"] == lab.s("peer_container").as_str()
    });

    // --flows: one line per flow with counts each way and the NAT.
    let ft = Flowtrace::start(&["-c", "ens_monitor_cron", "--flows", "--json"]);
    let sport = tcp(&lab, &cron(), lab.ip("inet_ip"), 8080).expect("tcp");
    let lines = ft.stop();
    let flow = lines
        .iter()
        .find(|l| l["type"] == "flow" && l["local"] == format!("{cip}:{sport}").as_str())
        .unwrap_or_else(|| panic!("no flow line: {lines:?}"));
    assert_eq!(
        flow["remote"],
        format!("{}:8080", lab.s("inet_ip")).as_str()
    );
    assert_eq!(
        flow["translated"],
        format!("{}:{sport}", lab.s("uplink_ip")).as_str()
    );
    assert!(
        flow["out"]["packets"].as_u64().unwrap_or(0) >= 3
            && flow["in"]["packets"].as_u64().unwrap_or(0) >= 2,
        "{flow}"
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
    tcp(&lab, &cron(), lab.ip("inet_ip"), 8080).expect("tcp");
    udp(&lab, &cron(), lab.ip("inet_ip"), 9999).expect("udp");
    let lines = ft.stop();
    let shown = packets(&lines);
    assert!(shown.len() >= 2, "{lines:?}");
    assert!(shown.iter().all(|p| p["proto"] == "udp"), "{lines:?}");

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
        tcp(&lab, &cron(), lab.ip("inet_ip"), 8080).expect("tcp");
    }
    let out = child
        .wait_with_output()
        .expect("exits by itself after --count");
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(packets(&lines).len(), 2, "{lines:?}");
    assert_eq!(
        lines.last().map(|l| l["type"].clone()),
        Some(Value::from("summary"))
    );
    let t = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowtrace"))
        .args(["-c", "ens_monitor_cron", "--json", "--duration", "1500ms"])
        .output()
        .expect("flowtrace");
    assert!(out.status.success() && t.elapsed() < std::time::Duration::from_secs(15));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"type\":\"summary\""));
}
