//! Privileged end-to-end tests of nftrace: the rule that decided each netfilter hop, accepts
//! included, named from the kernel's nftables trace of that very packet; the marking table
//! flowtrace adds, and that nothing of it is left after a SIGKILL. Run through
//! `cargo xtask test`.

mod common;

use std::{process::Command, time::Duration};

use common::{nf_hop, packets, show, Flowtrace, From, Lab, Packet};

/// `nft -s list ruleset`: the ruleset without counters (they move all the time).
fn ruleset() -> String {
    let out = Command::new("nft")
        .args(["-s", "list", "ruleset"])
        .output()
        .expect("nft");
    assert!(out.status.success(), "nft -s list ruleset failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tables() -> String {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The connection's packets: TCP to or from `remote`.
fn of_connection<'a>(all: &[&'a Packet], remote: &str) -> Vec<&'a Packet> {
    all.iter()
        .copied()
        .filter(|p| {
            p.proto.as_deref() == Some("tcp")
                && (p.src.as_deref() == Some(remote) || p.dst.as_deref() == Some(remote))
        })
        .collect()
}

/// Out and back: every FORWARD/filter hop names the rule that accepted it. What leaves the
/// container is accepted by the bridge's outbound rule, what comes back by Docker's conntrack
/// accept; each was walked from FORWARD, through DOCKER-USER and back.
#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn every_forward_hop_of_a_tcp_connection_names_its_accept_rule() {
    let lab = Lab::get();
    let cron = From::Container(lab.container());
    lab.assert_safe(&cron, lab.inet_ip());
    let ft = Flowtrace::start(&["--container", &lab.container(), "--json"]);
    let err = ft.stderr_text();
    assert!(
        err.contains("nftrace: added nftables table inet flowtrace_"),
        "the start-up lines say the table was added:\n{err}"
    );
    common::tcp(&lab, &cron, lab.inet_ip(), 8080).expect("tcp echo");
    let lines = ft.stop();
    let all = packets(&lines);
    let conn = of_connection(&all, &format!("{}:8080", lab.inet_ip()));
    assert!(conn.len() >= 6, "only {} packets", conn.len());
    let bridge = lab.bridge();
    let outbound = format!("-A FORWARD -i {bridge} ! -o {bridge} -j ACCEPT");
    let ct = format!("-A FORWARD -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT");
    for p in &conn {
        let shown = show(p);
        let h = nf_hop(p, "FORWARD", "filter");
        assert_eq!(h.verdict, "accept", "{shown}");
        assert_eq!(h.rule_source.as_deref(), Some("nftrace"), "{shown}");
        // Docker 20.10 accepts everything leaving its bridge by the bridge's rule, and what
        // comes back by the conntrack rule.
        let want = match p.way.as_deref() {
            Some("out") => &outbound,
            _ => &ct,
        };
        assert_eq!(h.rule.as_deref(), Some(want.as_str()), "{shown}");
        assert_eq!(
            h.chain_path.first().map(String::as_str),
            Some("FORWARD"),
            "{shown}"
        );
        assert!(
            h.chain_path.iter().any(|c| c == "DOCKER-USER"),
            "walked through DOCKER-USER: {shown}"
        );
    }
    // The connection's first packet walked the nat table: its policy accepted it there.
    let syn = conn
        .iter()
        .find(|p| p.tcp_flags.as_deref() == Some("S"))
        .expect("the SYN");
    let post = nf_hop(syn, "POSTROUTING", "nat");
    assert!(
        post.rule
            .as_deref()
            .is_some_and(|r| r.contains("MASQUERADE")),
        "the SYN's MASQUERADE rule: {}",
        show(syn)
    );
}

/// The drop names the DOCKER-USER rule from nftrace (the busy-firewall test checks that no
/// other rule is ever named), and the text output shows the rule under the hop.
#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_drop_is_named_by_nftrace_and_the_text_shows_accept_rules_too() {
    let lab = Lab::get();
    let cron = From::Container(lab.container());
    lab.assert_safe(&cron, lab.inet_ip());
    let ft = Flowtrace::start(&["--container", &lab.container(), "--json"]);
    let _ = common::tcp(&lab, &cron, lab.inet_ip(), lab.drop_port());
    let lines = ft.stop();
    let want_dst = format!("{}:{}", lab.inet_ip(), lab.drop_port());
    let dropped = packets(&lines)
        .into_iter()
        .find(|p| p.dst.as_deref() == Some(&want_dst) && p.drop.is_some())
        .expect("a dropped SYN");
    let d = dropped.drop.as_ref().expect("drop");
    assert_eq!(
        d.rule.as_deref(),
        Some(lab.drop_rule().as_str()),
        "{}",
        show(dropped)
    );
    assert_eq!(
        d.rule_source.as_deref(),
        Some("nftrace"),
        "{}",
        show(dropped)
    );
    let h = nf_hop(dropped, "FORWARD", "filter");
    assert_eq!(
        h.chain_path,
        ["FORWARD", "DOCKER-USER"],
        "{}",
        show(dropped)
    );

    let ft = Flowtrace::start(&["--container", &lab.container(), "--no-tui"]);
    common::tcp(&lab, &cron, lab.inet_ip(), 8080).expect("tcp echo");
    let text = ft.stop_text().join("\n");
    assert!(
        text.contains("rule: -A FORWARD -o ") && text.contains("RELATED,ESTABLISHED -j ACCEPT"),
        "the text shows the accept rule:\n{text}"
    );
}

/// `--no-nftrace`: no table, and no rule on accepted hops.
#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn no_nftrace_adds_no_table() {
    let lab = Lab::get();
    let cron = From::Container(lab.container());
    lab.assert_safe(&cron, lab.inet_ip());
    let ft = Flowtrace::start(&["--container", &lab.container(), "--json", "--no-nftrace"]);
    let pid = ft.pid();
    assert!(
        !tables().contains(&format!("flowtrace_{pid}")),
        "{}",
        tables()
    );
    common::tcp(&lab, &cron, lab.inet_ip(), 8080).expect("tcp echo");
    let lines = ft.stop();
    let all = packets(&lines);
    let conn = of_connection(&all, &format!("{}:8080", lab.inet_ip()));
    assert!(!conn.is_empty());
    assert!(conn
        .iter()
        .all(|p| nf_hop(p, "FORWARD", "filter").rule.is_none()));
}

/// After SIGKILL the kernel removes the table with the socket that owned it: the ruleset is
/// what it was before flowtrace started. Nobody else can remove or flush it meanwhile.
#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn after_sigkill_the_ruleset_is_what_it_was() {
    let lab = Lab::get();
    let before = ruleset();
    let mut ft = Flowtrace::start(&["--container", &lab.container(), "--json"]);
    let table = format!("flowtrace_{}", ft.pid());
    let during = ruleset();
    assert!(
        during.contains(&format!("table inet {table}")),
        "the marking table is there while tracing:\n{during}"
    );
    // Every rule of it only marks (no verdict): its chains' rules all end in the mark.
    let own = Command::new("nft")
        .args(["-s", "list", "table", "inet", &table])
        .output()
        .expect("nft");
    let own = String::from_utf8_lossy(&own.stdout);
    let rules: Vec<&str> = own
        .lines()
        .map(str::trim)
        .filter(|l| l.contains(" @") || l.contains("nftrace"))
        .filter(|l| !l.starts_with("elements"))
        .collect();
    assert!(rules.len() >= 4, "{own}");
    assert!(
        rules
            .iter()
            .all(|r| r.ends_with("meta nftrace set 1 accept")),
        "it only marks (and ends its own chain: an accept ends no other table's):\n{own}"
    );
    // Its other rules only send IPv6 packets on to the chains of the IPv6 rules.
    let gotos: Vec<&str> = own
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("goto"))
        .collect();
    assert_eq!(gotos.len(), 3, "{own}");
    assert!(
        gotos
            .iter()
            .all(|g| g.starts_with("meta nfproto ipv6 goto ") && g.ends_with('6')),
        "{own}"
    );
    // …and at most --nftrace-rate packets a second each (the default, 250).
    assert!(
        rules
            .iter()
            .all(|r| r.contains("limit rate 250/second burst 250 packets")),
        "each rule is limited:\n{own}"
    );
    // Another process cannot delete it.
    let del = Command::new("nft")
        .args(["delete", "table", "inet", &table])
        .output()
        .expect("nft");
    assert!(!del.status.success(), "another process deleted the table");
    ft.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tables().contains(&table) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ruleset(), before, "the ruleset after SIGKILL");
}
