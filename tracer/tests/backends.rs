//! The other rulesets flowtrace must read: iptables' legacy backend and plain nftables. Each
//! test builds two namespaces joined by a veth pair (no link to the host's namespace at all, so
//! nothing can leave the machine), loads the rules inside the first, runs the real flowtrace
//! there with `--iface`, sends one UDP datagram from the second, and checks that the drop is
//! attributed to the hook, the table and the rule. Legacy tables and nftables tables live and
//! die with their namespace: the host's own ruleset is never touched.

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::{nf_hop, packets, run_ok as run, show, Flowtrace, Line, Packet};
use serde_json::Value;

/// The traced side and the sender; 203.0.113.0/24 (TEST-NET-3) exists only between them.
const A: &str = "ftbk-a";
const B: &str = "ftbk-b";
const A_IF: &str = "bk-a";
const B_IF: &str = "bk-b";
const A_IP: &str = "203.0.113.1";
const B_IP: &str = "203.0.113.2";

/// The two namespaces; deleted on drop (with every table and rule inside), even on failure.
struct Pair;

impl Pair {
    fn new() -> Self {
        drop(Pair); // a previous, failed run's namespaces
        let me = Pair;
        run(&["ip", "netns", "add", A]);
        run(&["ip", "netns", "add", B]);
        run(&[
            "ip", "-n", A, "link", "add", A_IF, "type", "veth", "peer", "name", B_IF, "netns", B,
        ]);
        for (ns, dev, ip) in [(A, A_IF, A_IP), (B, B_IF, B_IP)] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        me
    }

    /// `iptables-legacy -A INPUT -p udp --dport PORT -j DROP` in namespace A.
    fn legacy_udp_drop(&self, port: u16) {
        let port = port.to_string();
        self.in_a(&[
            "iptables-legacy",
            "-A",
            "INPUT",
            "-p",
            "udp",
            "--dport",
            &port,
            "-j",
            "DROP",
        ]);
    }

    /// Runs a command inside namespace A.
    fn in_a(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", A];
        all.extend_from_slice(args);
        run(&all);
    }

    /// Sends one UDP datagram from B to A's `port`, after checking that B routes it out of
    /// its veth (B has no other interface but lo).
    fn send_udp(&self, port: u16) {
        let route = Command::new("ip")
            .args(["-n", B, "-j", "route", "get", A_IP])
            .output()
            .expect("ip route get");
        let v: Value = serde_json::from_slice(&route.stdout).expect("ip -j");
        assert_eq!(
            v[0]["dev"], B_IF,
            "safety: {A_IP} must be reached by {B_IF}"
        );
        let py = format!(
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'{B_IF}'); \
             s.sendto(b'flowtrace-backend', ('{A_IP}', {port}))"
        );
        let st = Command::new("ip")
            .args(["netns", "exec", B, "python3", "-c", &py])
            .stdout(Stdio::null())
            .status()
            .expect("python3");
        assert!(st.success());
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [A, B] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn dropped_datagram(lines: &[Line], port: u16) -> &Packet {
    let dst = format!("{A_IP}:{port}");
    packets(lines)
        .into_iter()
        .find(|p| p.dst.as_deref() == Some(dst.as_str()) && p.drop.is_some())
        .unwrap_or_else(|| {
            let all: Vec<String> = lines.iter().map(Line::to_json).collect();
            panic!("no dropped packet to {dst} in:\n{}", all.join("\n"))
        })
}

fn trace_in_a() -> Flowtrace {
    Flowtrace::start_in_netns(A, &["--iface", A_IF, "--json"])
}

#[test]
#[ignore = "privileged: needs root (network namespaces, BPF)"]
fn a_legacy_iptables_drop_is_named_from_iptables_legacy_save() {
    let pair = Pair::new();
    let rule = "-A INPUT -p udp -m udp --dport 7777 -j DROP";
    pair.legacy_udp_drop(7777);
    let ft = trace_in_a();
    let err = ft.stderr_text();
    pair.send_udp(7777);
    let lines = ft.stop();
    let p = dropped_datagram(&lines, 7777);
    let shown = show(p);
    assert_eq!(nf_hop(p, "INPUT", "filter").verdict, "drop", "{shown}");
    let d = p.drop.as_ref().expect("a dropped packet");
    assert_eq!(d.reason, "NETFILTER_DROP", "{shown}");
    assert_eq!(
        (d.hook.as_deref(), d.table.as_deref()),
        (Some("INPUT"), Some("filter"))
    );
    assert_eq!(d.rule.as_deref(), Some(rule), "{shown}\n{err}");
    assert_eq!(
        d.rule_source.as_deref(),
        Some("iptables-legacy-save -c counters"),
        "{shown}"
    );
}

#[test]
#[ignore = "privileged: needs root (network namespaces, BPF)"]
fn a_plain_nftables_drop_is_named_by_table_and_rule() {
    let pair = Pair::new();
    pair.in_a(&["nft", "add", "table", "inet", "ftlab"]);
    pair.in_a(&[
        "nft",
        "add chain inet ftlab input { type filter hook input priority 10; policy accept; }",
    ]);
    pair.in_a(&[
        "nft",
        "add rule inet ftlab input udp dport 7778 counter drop",
    ]);
    let ft = trace_in_a();
    let err = ft.stderr_text();
    assert!(
        err.contains("INPUT ftlab"),
        "observers around the nft table:\n{err}"
    );
    pair.send_udp(7778);
    let lines = ft.stop();
    let p = dropped_datagram(&lines, 7778);
    let shown = show(p);
    assert_eq!(nf_hop(p, "INPUT", "ftlab").verdict, "drop", "{shown}");
    let d = p.drop.as_ref().expect("a dropped packet");
    assert_eq!(d.reason, "NETFILTER_DROP", "{shown}");
    assert_eq!(
        (d.hook.as_deref(), d.table.as_deref()),
        (Some("INPUT"), Some("ftlab"))
    );
    assert_eq!(
        d.rule.as_deref(),
        Some("add rule inet ftlab input udp dport 7778 counter drop"),
        "{shown}"
    );
    assert_eq!(
        d.rule_source.as_deref(),
        Some("nft list ruleset counters"),
        "{shown}"
    );
}

/// Legacy iptables on a busy host: while ten datagrams are dropped by one INPUT rule, the
/// other side keeps knocking on a TCP port another INPUT rule drops. Both rules' counters
/// move between reads; each datagram's drop names its own rule, never the knocks'.
#[test]
#[ignore = "privileged: needs root (network namespaces, BPF)"]
fn legacy_counters_name_the_rule_that_fits_while_another_rule_drops_knocks() {
    let pair = Pair::new();
    let rule = "-A INPUT -p udp -m udp --dport 7777 -j DROP";
    for spec in ["-p udp --dport 7777", "-p tcp --dport 7999"] {
        let mut args = vec!["iptables-legacy", "-A", "INPUT"];
        args.extend(spec.split_whitespace());
        args.extend(["-j", "DROP"]);
        pair.in_a(&args);
    }
    let ft = trace_in_a();
    // SYNs to 7999 from B all along (each given up after a moment: they are dropped).
    let py = format!(
        "import socket, time\n\
         end = time.time() + 4\n\
         while time.time() < end:\n\
         \x20   s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'{B_IF}')\n\
         \x20   s.settimeout(0.02)\n\
         \x20   try: s.connect(('{A_IP}', 7999))\n\
         \x20   except OSError: pass\n\
         \x20   s.close()\n"
    );
    let mut knocker = Command::new("ip")
        .args(["netns", "exec", B, "python3", "-c", &py])
        .stdout(Stdio::null())
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..10 {
        pair.send_udp(7777);
    }
    let _ = knocker.wait();
    let lines = ft.stop();
    let dst = format!("{A_IP}:7777");
    let drops: Vec<&Packet> = packets(&lines)
        .into_iter()
        .filter(|p| p.dst.as_deref() == Some(dst.as_str()) && p.drop.is_some())
        .collect();
    assert_eq!(drops.len(), 10, "{} drops", drops.len());
    let knocks = packets(&lines)
        .iter()
        .filter(|p| p.dst.as_deref() == Some(&format!("{A_IP}:7999")) && p.drop.is_some())
        .count();
    assert!(
        knocks >= 10,
        "only {knocks} knocks dropped: the host was not busy"
    );
    for p in drops {
        let d = p.drop.as_ref().expect("dropped");
        assert_eq!(d.rule.as_deref(), Some(rule), "{}", show(p));
    }
}

/// A flood of drops under iptables-legacy (counters, no nftrace): 300 datagrams in a burst,
/// each dropped by one INPUT rule. Reading the ruleset is off the event loop and one reading
/// serves every drop before it, so the draining does not stall (nothing lost) and every drop
/// after the first is named too.
#[test]
#[ignore = "privileged: needs root (network namespaces, BPF)"]
fn a_flood_of_legacy_drops_is_drained_and_every_drop_is_named() {
    let pair = Pair::new();
    let rule = "-A INPUT -p udp -m udp --dport 7777 -j DROP";
    pair.legacy_udp_drop(7777);
    let ft = trace_in_a();
    let py = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'{B_IF}')\n\
         for i in range(300): s.sendto(b'flood %d' % i, ('{A_IP}', 7777))\n"
    );
    let st = Command::new("ip")
        .args(["netns", "exec", B, "python3", "-c", &py])
        .stdout(Stdio::null())
        .status()
        .expect("python3");
    assert!(st.success());
    std::thread::sleep(Duration::from_millis(2500));
    let lines = ft.stop();
    let dst = format!("{A_IP}:7777");
    let drops: Vec<&Packet> = packets(&lines)
        .into_iter()
        .filter(|p| p.dst.as_deref() == Some(dst.as_str()) && p.drop.is_some())
        .collect();
    let s = common::the_summary(&lines);
    assert_eq!(s.lost, 0, "{s:?}");
    assert_eq!(drops.len(), 300, "{} drops shown", drops.len());
    let unnamed: Vec<String> = drops
        .iter()
        .filter(|p| p.drop.as_ref().and_then(|d| d.rule.as_deref()) != Some(rule))
        .map(|p| show(p))
        .collect();
    assert!(
        unnamed.is_empty(),
        "{} of 300 drops not named by the rule, e.g. {}",
        unnamed.len(),
        unnamed[0]
    );
}
