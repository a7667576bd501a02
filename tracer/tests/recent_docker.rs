//! The chain layout of recent Docker (≥ 28, the seed's host), which Debian's Docker does not
//! write: `FORWARD → DOCKER-USER, DOCKER-FORWARD`; `DOCKER-FORWARD → DOCKER-CT, DOCKER-INTERNAL,
//! DOCKER-BRIDGE → DOCKER` with `-A DOCKER ! -i br-… -o br-… -j DROP` for unpublished ports.
//! It is replayed with `iptables-restore` inside a throwaway namespace that plays the host
//! (a bridge with a "container" namespace on it, an uplink veth to an "internet" namespace),
//! with no link to the real host: nothing sent here can leave the machine. flowtrace runs in
//! that namespace, tracing the container's namespace with `--netns`. Run through
//! `cargo xtask test`.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{nf_hop, packets, run_ok as run, show, Flowtrace, Packet};

const HOST: &str = "ftrd-host";
const CTR: &str = "ftrd-ctr";
const INET: &str = "ftrd-inet";
const BRIDGE: &str = "br-ftrd";
const CTR_IP: &str = "192.0.2.2";
const INET_IP: &str = "198.51.100.2";

/// Recent Docker's filter and nat tables for one user network with no published port.
const RULES: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-BRIDGE - [0:0]
:DOCKER-CT - [0:0]
:DOCKER-FORWARD - [0:0]
:DOCKER-INTERNAL - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER ! -i br-ftrd -o br-ftrd -j DROP
-A DOCKER-BRIDGE -o br-ftrd -j DOCKER
-A DOCKER-CT -o br-ftrd -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-FORWARD -j DOCKER-CT
-A DOCKER-FORWARD -j DOCKER-INTERNAL
-A DOCKER-FORWARD -j DOCKER-BRIDGE
-A DOCKER-FORWARD -i br-ftrd -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 192.0.2.0/24 ! -o br-ftrd -j MASQUERADE
COMMIT
";

fn ip(ns: &str, args: &str) {
    let mut all = vec!["ip", "-n", ns];
    all.extend(args.split_whitespace());
    run(&all);
}

/// The three namespaces; deleted on drop (with every rule and table inside), even on failure.
struct Topology;

impl Topology {
    fn new() -> Self {
        drop(Topology); // a previous, failed run's namespaces
        let me = Topology;
        for ns in [HOST, CTR, INET] {
            run(&["ip", "netns", "add", ns]);
            ip(ns, "link set lo up");
        }
        ip(HOST, &format!("link add {BRIDGE} type bridge"));
        ip(HOST, &format!("addr add 192.0.2.1/24 dev {BRIDGE}"));
        ip(HOST, &format!("link set {BRIDGE} up"));
        ip(
            HOST,
            &format!("link add vethrd type veth peer name eth0 netns {CTR}"),
        );
        ip(HOST, &format!("link set vethrd master {BRIDGE}"));
        ip(HOST, "link set vethrd up");
        ip(CTR, &format!("addr add {CTR_IP}/24 dev eth0"));
        ip(CTR, "link set eth0 up");
        ip(CTR, "route add default via 192.0.2.1");
        ip(
            HOST,
            &format!("link add uprd0 type veth peer name uprd1 netns {INET}"),
        );
        ip(HOST, "addr add 198.51.100.1/24 dev uprd0");
        ip(HOST, "link set uprd0 up");
        ip(INET, &format!("addr add {INET_IP}/24 dev uprd1"));
        ip(INET, "link set uprd1 up");
        // Routed access to the container network, as a neighbour on the LAN would have.
        ip(INET, "route add 192.0.2.0/24 via 198.51.100.1");
        ip(HOST, "route add default via 198.51.100.2 dev uprd0");
        run(&[
            "ip",
            "netns",
            "exec",
            HOST,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let mut restore = Command::new("ip")
            .args(["netns", "exec", HOST, "iptables-restore"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("iptables-restore");
        std::io::Write::write_all(restore.stdin.as_mut().expect("stdin"), RULES.as_bytes())
            .expect("write the rules");
        drop(restore.stdin.take());
        assert!(restore.wait().expect("wait").success(), "iptables-restore");
        me
    }

    /// A TCP echo server in `ns` on `port` (python3; the namespace holds nothing else).
    fn serve(&self, ns: &str, port: u16) -> Child {
        let py = format!(
            "import socket\n\
             s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('0.0.0.0', {port})); s.listen(8)\n\
             while True:\n\
             \x20   c, _ = s.accept(); c.sendall(c.recv(100)); c.close()\n"
        );
        Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", &py])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3")
    }

    /// A TCP connection from `ns` to `dst:port`, after checking that `ns` routes `dst` out
    /// of its own veth (its only interface besides lo). True if the echo came back.
    fn connect(&self, ns: &str, dev: &str, dst: &str, port: u16) -> bool {
        let route = Command::new("ip")
            .args(["-n", ns, "-j", "route", "get", dst])
            .output()
            .expect("ip route get");
        let v: serde_json::Value = serde_json::from_slice(&route.stdout).expect("ip -j");
        assert_eq!(v[0]["dev"], dev, "safety: {dst} must be reached by {dev}");
        let py = format!(
            "import socket, sys\n\
             s = socket.socket(); s.settimeout(1.0)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'{dev}')\n\
             try:\n\
             \x20   s.connect(('{dst}', {port})); s.sendall(b'x'); sys.exit(0 if s.recv(1) else 1)\n\
             except OSError: sys.exit(1)\n"
        );
        Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", &py])
            .status()
            .expect("python3")
            .success()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [HOST, CTR, INET] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn find<'a>(all: &[&'a Packet], what: &str, pred: impl Fn(&Packet) -> bool) -> &'a Packet {
    all.iter().copied().find(|p| pred(p)).unwrap_or_else(|| {
        let shown: Vec<String> = all.iter().map(|p| show(p)).collect();
        panic!("no {what} among:\n{}", shown.join("\n"))
    })
}

#[test]
#[ignore = "privileged: needs root (network namespaces, BPF, nftables)"]
fn recent_dockers_chains_name_the_unpublished_port_drop_and_the_conntrack_accept() {
    let topo = Topology::new();
    let mut echo = topo.serve(INET, 9000);
    let mut closed = topo.serve(CTR, 81);
    std::thread::sleep(Duration::from_millis(300));
    let ft = Flowtrace::start_in_netns(HOST, &["--netns", &format!("/run/netns/{CTR}"), "--json"]);
    let out_ok = topo.connect(CTR, "eth0", INET_IP, 9000);
    let in_ok = topo.connect(INET, "uprd1", CTR_IP, 81);
    let lines = ft.stop();
    let _ = (echo.kill(), closed.kill(), echo.wait(), closed.wait());
    drop(topo);
    assert!(out_ok, "the container reaches the internet's echo");
    assert!(!in_ok, "the unpublished port is closed by DOCKER");
    let all = packets(&lines);

    // Inbound to a port nobody published: dropped in DOCKER, reached through DOCKER-FORWARD
    // and DOCKER-BRIDGE.
    let syn = find(&all, "dropped SYN to :81", |p| {
        p.dst.as_deref() == Some(&format!("{CTR_IP}:81")) && p.drop.is_some()
    });
    let d = syn.drop.as_ref().expect("dropped");
    assert_eq!(
        d.rule.as_deref(),
        Some("-A DOCKER ! -i br-ftrd -o br-ftrd -j DROP"),
        "{}",
        show(syn)
    );
    assert_eq!(d.rule_source.as_deref(), Some("nftrace"), "{}", show(syn));
    let h = nf_hop(syn, "FORWARD", "filter");
    assert_eq!(
        h.chain_path,
        [
            "FORWARD",
            "DOCKER-USER",
            "FORWARD",
            "DOCKER-FORWARD",
            "DOCKER-CT",
            "DOCKER-FORWARD",
            "DOCKER-INTERNAL",
            "DOCKER-FORWARD",
            "DOCKER-BRIDGE",
            "DOCKER"
        ],
        "{}",
        show(syn)
    );

    // The reply to the container's connection: accepted by DOCKER-CT; what the container sent
    // by DOCKER-FORWARD's bridge accept.
    let remote = format!("{INET_IP}:9000");
    let synack = find(&all, "SYN-ACK to the container", |p| {
        p.src.as_deref() == Some(remote.as_str()) && p.tcp_flags.as_deref() == Some("S.")
    });
    let h = nf_hop(synack, "FORWARD", "filter");
    assert_eq!(
        h.rule.as_deref(),
        Some("-A DOCKER-CT -o br-ftrd -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        "{}",
        show(synack)
    );
    let out = find(&all, "SYN from the container", |p| {
        p.dst.as_deref() == Some(remote.as_str()) && p.tcp_flags.as_deref() == Some("S")
    });
    assert_eq!(
        nf_hop(out, "FORWARD", "filter").rule.as_deref(),
        Some("-A DOCKER-FORWARD -i br-ftrd -j ACCEPT"),
        "{}",
        show(out)
    );
}
