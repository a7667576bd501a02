//! Privileged end-to-end tests of which rule a drop is blamed on, on a host that is busy the
//! way internet-facing hosts are: while the container's packets are dropped by a DOCKER-USER
//! rule, the "internet" keeps knocking on a host port that an INPUT rule drops. Run through
//! `cargo xtask test`.

mod common;

use std::{
    net::{SocketAddr, TcpStream},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{in_netns, packets, show, Flowtrace, From, Lab};

/// The port the internet knocks on; an INPUT rule drops it.
const KNOCKED: u16 = 7999;

/// A rule inserted first in a chain, removed again even if the test fails, with its table
/// if the rule created it (iptables-nft keeps an emptied table, and its chains' hooks, which
/// would change what later tests and the bench run through).
struct Rule {
    table: &'static str,
    chain: &'static str,
    spec: Vec<String>,
    created_table: bool,
}

/// Whether nftables has iptables' table `name`.
fn nft_table(name: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "ip", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Rule {
    /// `spec` as `iptables -S` prints it, after the chain's name.
    fn insert(table: &'static str, chain: &'static str, spec: &str) -> Self {
        let spec: Vec<String> = spec.split_whitespace().map(str::to_owned).collect();
        let created_table = !nft_table(table);
        let ok = Command::new("iptables")
            .args(["-w", "5", "-t", table, "-I", chain, "1"])
            .args(&spec)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not add the {table} {chain} rule {spec:?}");
        Self {
            table,
            chain,
            spec,
            created_table,
        }
    }

    /// As flowtrace names it.
    fn text(&self) -> String {
        format!("-A {} {}", self.chain, self.spec.join(" "))
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-w", "5", "-t", self.table, "-D", self.chain])
            .args(&self.spec)
            .status();
        if self.created_table {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", self.table])
                .status();
        }
    }
}

/// An INPUT rule dropping the internet's knocks.
struct InputDrop(Rule);

impl InputDrop {
    fn install(uplink: &str) -> Self {
        let spec = format!("-i {uplink} -p tcp -m tcp --dport {KNOCKED} -j DROP");
        Self(Rule::insert("filter", "INPUT", &spec))
    }

    /// The rule's packet counter, from `iptables-save -c`.
    fn packets(&self) -> u64 {
        let out = Command::new("iptables-save")
            .args(["-c", "-t", "filter"])
            .output()
            .expect("iptables-save");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.ends_with(&self.0.text()))
            .unwrap_or_default();
        line.trim_start_matches('[')
            .split(':')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// SYNs from `netns` to `dst` until `stop`, each given up after a moment (they are dropped).
fn knock(netns: String, dst: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        in_netns(&netns, || {
            while !stop.load(Ordering::Relaxed) {
                let _ = TcpStream::connect_timeout(&dst, Duration::from_millis(30));
            }
        })
    })
}

#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn every_container_drop_names_the_docker_user_rule_while_input_drops_the_internets_knocks() {
    let lab = Lab::get();
    let (uplink_ip, inet_ip, port) = (lab.uplink_ip(), lab.inet_ip(), lab.drop_port());
    let cron = From::Container(lab.container());
    lab.assert_safe(&From::Internet, uplink_ip);
    lab.assert_safe(&cron, inet_ip);
    let input = InputDrop::install(&lab.uplink());
    let ft = Flowtrace::start(&["--container", &lab.container(), "--json"]);

    let stop = Arc::new(AtomicBool::new(false));
    let knocker = knock(
        format!("/run/netns/{}", lab.inet_netns()),
        SocketAddr::new(uplink_ip, KNOCKED),
        stop.clone(),
    );
    let netns = format!("/proc/{}/ns/net", lab.container_pid(&lab.container()));
    // Twelve connections the DOCKER-USER rule drops, among the knocks.
    for _ in 0..12 {
        in_netns(&netns, || {
            let _ = TcpStream::connect_timeout(
                &SocketAddr::new(inet_ip, port),
                Duration::from_millis(250),
            );
        });
    }
    stop.store(true, Ordering::Relaxed);
    let _ = knocker.join();
    let lines = ft.stop();
    let knocks = input.packets();
    drop(input);

    assert!(
        knocks >= 20,
        "the INPUT rule dropped only {knocks} knocks: the host was not busy"
    );
    let want_dst = format!("{inet_ip}:{port}");
    let drops: Vec<_> = packets(&lines)
        .into_iter()
        .filter(|p| p.dst.as_deref() == Some(&want_dst) && p.drop.is_some())
        .collect();
    assert!(drops.len() >= 10, "only {} drops seen", drops.len());
    let rule = lab.drop_rule();
    for p in &drops {
        let d = p.drop.as_ref().expect("dropped");
        assert_eq!(
            d.rule.as_deref(),
            Some(rule.as_str()),
            "{} of {} drops: {}",
            drops.len(),
            knocks,
            show(p)
        );
        // The lab's iptables is iptables-nft: the rule comes from the packet's own trace.
        assert_eq!(d.rule_source.as_deref(), Some("nftrace"), "{}", show(p));
    }
    // Nothing of the knocks themselves: they are not the container's.
    assert!(packets(&lines)
        .iter()
        .all(|p| p.dst.as_deref() != Some(&format!("{uplink_ip}:{KNOCKED}"))));
}

/// A healthy TCP connection has no drops: the pure ACKs and FINs that TCP frees once its
/// socket has them (`kfree_skb` in `tcp_rcv_state_process`, NOT_SPECIFIED) are shown as freed
/// by TCP and left out of the counts.
#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_healthy_tcp_connection_has_no_drops() {
    let lab = Lab::get();
    let cron = From::Container(lab.container());
    let ft = Flowtrace::start(&["--container", &lab.container(), "--json"]);
    for _ in 0..5 {
        common::tcp(&lab, &cron, lab.inet_ip(), 8080).expect("tcp echo");
    }
    let lines = ft.stop();
    // The connections' packets (the host may drop others meanwhile: an MLD report into a
    // container without IPv6, say).
    let echo = format!("{}:8080", lab.inet_ip());
    let all = packets(&lines);
    let conn: Vec<_> = all
        .iter()
        .filter(|p| {
            p.proto.as_deref() == Some("tcp")
                && (p.src.as_deref() == Some(&echo) || p.dst.as_deref() == Some(&echo))
        })
        .collect();
    assert!(
        conn.len() >= 30,
        "only {} packets of the connections",
        conn.len()
    );
    let freed = conn
        .iter()
        .filter(|p| p.drop.as_ref().is_some_and(|d| !d.counts()))
        .count();
    for p in &conn {
        if let Some(d) = &p.drop {
            assert!(!d.counts(), "{}", show(p));
            let raw = match d.freed_by.as_deref() {
                Some("tcp") => "NOT_SPECIFIED",
                _ => "QUEUE_PURGE",
            };
            assert_eq!(d.reason, raw, "the raw reason: {}", show(p));
        }
    }
    // The summary counts the others' drops only.
    let counted = all
        .iter()
        .filter(|p| p.drop.as_ref().is_some_and(|d| d.counts()))
        .count() as u64;
    let s = common::the_summary(&lines);
    assert_eq!(s.drops, counted, "{freed} frees by sockets: {s:?}");
    // Each connection's close has its socket free what it still held: the case is there.
    assert!(
        freed >= 1,
        "no packet freed by a socket: the test tested nothing"
    );
}

/// Where a hook has two tables, a drop by the second is the second's, not the first's: the
/// packet passed the first unchanged, so the slot after it reported nothing, and the CPU's
/// note of the last slot passed tells where it died. A REJECT makes it harder: its ICMP
/// error is a packet of its own, run through OUTPUT and POSTROUTING (and noted) before the
/// rejected one is freed. (A TCP reset would not be: with br_netfilter, it is sent straight
/// to the bridge port the SYN came by.)
#[test]
#[ignore = "privileged: needs root, dockerd and the lab (cargo xtask test)"]
fn a_reject_after_an_unchanging_mangle_rule_is_the_filter_tables() {
    let lab = Lab::get();
    let (inet_ip, ip) = (lab.inet_ip(), lab.container_ip());
    let cron = From::Container(lab.container());
    lab.assert_safe(&cron, inet_ip);
    let dst = format!("{inet_ip}/32 -p tcp -m tcp --dport {REJECTED}");
    // A rule that only counts: the mangle table at FORWARD, which changes nothing.
    let mangle = Rule::insert("mangle", "FORWARD", &format!("-s {ip}/32 -d {dst}"));
    let reject = Rule::insert(
        "filter",
        "DOCKER-USER",
        &format!("-s {ip}/32 -d {dst} -j REJECT --reject-with icmp-port-unreachable"),
    );
    let ft = Flowtrace::start(&["--container", &lab.container(), "--json"]);
    for _ in 0..5 {
        let refused = common::tcp(&lab, &cron, inet_ip, REJECTED);
        assert!(refused.is_err(), "the REJECT rule let a connection through");
    }
    let lines = ft.stop();
    let reject_text = reject.text();
    drop(reject);
    drop(mangle);

    let want = format!("{inet_ip}:{REJECTED}");
    let syns: Vec<_> = packets(&lines)
        .into_iter()
        .filter(|p| p.dst.as_deref() == Some(&want) && p.drop.is_some())
        .collect();
    assert!(syns.len() >= 5, "only {} rejected SYNs seen", syns.len());
    for p in &syns {
        let d = p.drop.as_ref().expect("dropped");
        assert_eq!(
            (d.hook.as_deref(), d.table.as_deref(), d.rule.as_deref()),
            (Some("FORWARD"), Some("filter"), Some(reject_text.as_str())),
            "{}",
            show(p)
        );
        // Mangle let it through; filter's step is the drop.
        let m = common::nf_hop(p, "FORWARD", "mangle");
        assert_eq!(m.verdict.as_ref(), "accept", "{}", show(p));
        let f = common::nf_hop(p, "FORWARD", "filter");
        assert_eq!(f.verdict.as_ref(), "drop", "{}", show(p));
    }
}

/// The port a DOCKER-USER rule rejects (nothing listens there either).
const REJECTED: u16 = 7998;
