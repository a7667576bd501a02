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

/// An INPUT rule dropping the internet's knocks, removed again even if the test fails.
struct InputDrop(Vec<String>);

impl InputDrop {
    fn install(uplink: &str) -> Self {
        let spec: Vec<String> = format!("-i {uplink} -p tcp -m tcp --dport {KNOCKED} -j DROP")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let ok = Command::new("iptables")
            .args(["-w", "5", "-I", "INPUT", "1"])
            .args(&spec)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not add the INPUT rule");
        Self(spec)
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
            .find(|l| l.contains(&format!("--dport {KNOCKED} -j DROP")))
            .unwrap_or_default();
        line.trim_start_matches('[')
            .split(':')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for InputDrop {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-w", "5", "-D", "INPUT"])
            .args(&self.0)
            .status();
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
