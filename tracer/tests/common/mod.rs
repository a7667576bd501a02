//! Shared pieces of the privileged end-to-end tests: the lab built by `cargo xtask lab up`,
//! the network safety check, senders that run inside a namespace, and a runner for the real
//! `flowtrace` binary.
//!
//! These tests need root, dockerd and the lab; `cargo xtask test` brings the lab up, runs
//! them serially (`--test-threads=1`) and tears the lab down even when they fail.
#![allow(dead_code, unused_imports)]

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

pub use nat::{de_natted_from, is_on_the_uplink, leaves_masqueraded, masqueraded_to};
use serde_json::Value;
pub use tracer_model::{Hop, Line, NfHop, Packet, SummaryLine, TcHop};
pub use xtask::expect::{hop_packets, hops, nf_hops, packets, summary, HostPath};
use xtask::lab::{
    guard::{safety_check, Origin},
    state::{State, STATE_FILE},
};

mod nat;
mod send;

pub use send::{in_netns, ping, tcp, tcp_sized, udp, udp_burst, udp_from, udp_ttl, From};

/// The lab as `cargo xtask lab up` described it: xtask's own state type.
pub struct Lab {
    pub state: State,
}

fn parse_ip(what: &str, s: Option<&str>) -> IpAddr {
    s.and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the lab state has no address `{what}`"))
}

impl Lab {
    pub fn get() -> Self {
        match State::load() {
            Ok(Some(state)) => Self { state },
            Ok(None) => panic!(
                "{STATE_FILE} is missing. Run the privileged tests through `cargo xtask test` (it brings the lab up)"
            ),
            Err(e) => panic!("{e:#}"),
        }
    }

    pub fn container(&self) -> String {
        self.state.container.clone()
    }

    pub fn peer_container(&self) -> String {
        self.state
            .peer_container
            .clone()
            .expect("the lab has a peer container")
    }

    pub fn container_ip(&self) -> IpAddr {
        parse_ip("container_ip", Some(&self.state.container_ip))
    }

    pub fn peer_ip(&self) -> IpAddr {
        parse_ip("peer_ip", self.state.peer_ip.as_deref())
    }

    pub fn isolated_ip(&self) -> IpAddr {
        parse_ip("isolated_ip", self.state.isolated_ip.as_deref())
    }

    pub fn inet_ip(&self) -> IpAddr {
        parse_ip("inet_ip", Some(&self.state.inet_ip))
    }

    pub fn uplink_ip(&self) -> IpAddr {
        parse_ip("uplink_ip", Some(&self.state.uplink_ip))
    }

    pub fn bridge(&self) -> String {
        self.state
            .bridge
            .clone()
            .expect("the lab's bridge is recorded")
    }

    pub fn isolated_bridge(&self) -> String {
        self.state
            .isolated_bridge
            .clone()
            .expect("the isolated bridge is recorded")
    }

    pub fn uplink(&self) -> String {
        self.state.uplink.clone()
    }

    pub fn inet_netns(&self) -> String {
        self.state.inet_netns.clone()
    }

    pub fn drop_rule(&self) -> String {
        self.state
            .drop_rule
            .clone()
            .expect("the lab has a drop rule")
    }

    pub fn drop_port(&self) -> u16 {
        self.state.drop_port.expect("the lab has a drop port")
    }

    /// `(host port, container port)` of the published port.
    pub fn published(&self) -> (u16, u16) {
        let p = self
            .state
            .published
            .as_ref()
            .expect("the lab publishes a port");
        (p.host_port, p.container_port)
    }

    /// The traced container's veth, as it is now (it changes when the container restarts).
    pub fn host_veth(&self) -> String {
        self.veth_of(&self.state.container)
    }

    pub fn peer_veth(&self) -> String {
        self.veth_of(&self.peer_container())
    }

    /// The traced container's path through the host, as the shared expectations name it.
    pub fn host_path(&self) -> HostPath {
        HostPath {
            veth: self.host_veth(),
            bridge: self.bridge(),
            uplink: self.uplink(),
            uplink_ip: self.state.uplink_ip.clone(),
        }
    }

    /// The host end of a container's eth0 veth, as it is now.
    pub fn veth_of(&self, container: &str) -> String {
        let out = Command::new("docker")
            .args(["exec", container, "cat", "/sys/class/net/eth0/iflink"])
            .output()
            .expect("docker exec");
        let ifindex: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| {
                panic!(
                    "no iflink for {container}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let links = Command::new("ip")
            .args(["-j", "link"])
            .output()
            .expect("ip -j link");
        let links: Value = serde_json::from_slice(&links.stdout).expect("ip -j output");
        links
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["ifindex"].as_u64() == Some(ifindex))
            .and_then(|l| l["ifname"].as_str())
            .unwrap_or_else(|| panic!("no host interface with ifindex {ifindex}"))
            .to_owned()
    }

    pub fn container_pid(&self, name: &str) -> u32 {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Pid}}", name])
            .output()
            .expect("docker inspect");
        assert!(out.status.success(), "docker inspect {name} failed");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a pid")
    }

    /// The network safety rule, the one xtask's senders obey: the destination is provably
    /// inside the lab (its internet, its containers, its isolated network) and leaves by the
    /// lab's own interface, with the guard rules in place.
    pub fn assert_safe(&self, from: &From, dst: IpAddr) {
        let IpAddr::V4(v4) = dst else {
            panic!("unsafe destination {dst}: the lab is IPv4 only")
        };
        let origin = match from {
            From::Container(name) => Origin::Container(name),
            From::Internet => Origin::Inet,
            // A container's check is of the host's route: `dst` must leave by the lab's uplink.
            From::Host => Origin::Container(self.state.container.as_str()),
        };
        if let Err(e) = safety_check(&self.state, origin, v4) {
            panic!("{e:#}");
        }
    }
}

/// The real flowtrace binary, running. Killed on drop if a test fails before `stop`.
pub struct Flowtrace {
    child: Option<Child>,
    stdout: mpsc::Receiver<String>,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Flowtrace {
    /// Starts flowtrace and waits until it says it is tracing.
    pub fn start(args: &[&str]) -> Self {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flowtrace"));
        c.args(args);
        Self::spawn(c)
    }

    /// Starts flowtrace with these environment variables set.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flowtrace"));
        c.args(args).envs(env.iter().copied());
        Self::spawn(c)
    }

    /// Starts flowtrace inside the named network namespace (`ip netns exec`, which execs it:
    /// the pid is flowtrace's own).
    pub fn start_in_netns(netns: &str, args: &[&str]) -> Self {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_flowtrace")])
            .args(args);
        Self::spawn(c)
    }

    fn spawn(mut c: Command) -> Self {
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flowtrace");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("tracing…") {
                    let _ = ready_tx.send(());
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let mut me = Self {
            child: Some(child),
            stdout: rx,
            stderr,
        };
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let status = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "flowtrace did not start ({status:?}):\n{}",
                me.stderr_text()
            );
        }
        me
    }

    /// The process id (0 once it has exited).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sends a signal and waits for the exit; returns (success, stdout lines, stderr).
    pub fn signal_and_wait(mut self, sig: i32) -> (bool, Vec<String>, String) {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().expect("wait");
        std::thread::sleep(Duration::from_millis(100));
        (
            status.success(),
            self.stdout.try_iter().collect(),
            self.stderr_text(),
        )
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGINT (like Ctrl-C), waits for a clean exit, returns stdout's lines, each one a
    /// line of the contract (`tracer-model`).
    pub fn stop(self) -> Vec<Line> {
        self.stop_text().iter().map(|l| line(l)).collect()
    }

    /// Sends SIGINT (like Ctrl-C), waits for a clean exit, returns stdout's lines.
    pub fn stop_text(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "flowtrace did not exit after SIGINT:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            status.success(),
            "flowtrace failed ({status}):\n{}",
            self.stderr_text()
        );
        self.stdout.try_iter().collect()
    }
}

impl Drop for Flowtrace {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether a packet from `local` (`addr:port`) is among the lines.
pub fn has_packet_from(lines: &[Line], local: &str) -> bool {
    packets(lines)
        .iter()
        .any(|p| p.src.as_deref() == Some(local))
}

/// The first packet `pred` accepts; panics with `what` and every packet if none does.
pub fn the_packet<'a>(lines: &'a [Line], what: &str, pred: impl Fn(&Packet) -> bool) -> &'a Packet {
    let shown = packets(lines);
    match shown.iter().find(|p| pred(p)) {
        Some(p) => p,
        None => panic!("no {what}: {shown:?}"),
    }
}

/// One line of the contract; panics with the line if it is not one.
pub fn line(l: &str) -> Line {
    Line::parse(l).unwrap_or_else(|e| panic!("not a line of the contract ({e}): {l}"))
}

/// The packet's JSON, for assertion messages.
pub fn show(p: &Packet) -> String {
    Line::Packet(p.clone()).to_json()
}

/// The tc hop at `iface`/`dir`.
pub fn tc_hop<'a>(p: &'a Packet, iface: &str, dir: &str) -> &'a TcHop {
    p.tc_hop(iface, dir)
        .unwrap_or_else(|| panic!("no tc hop {iface} {dir} in {}", show(p)))
}

/// The netfilter hop for `hook`/`table`.
pub fn nf_hop<'a>(p: &'a Packet, hook: &str, table: &str) -> &'a NfHop {
    p.nf_hop(hook, table)
        .unwrap_or_else(|| panic!("no netfilter hop {hook}/{table} in {}", show(p)))
}

/// The summary line; panics if the run printed none.
pub fn the_summary(lines: &[Line]) -> &SummaryLine {
    summary(lines).unwrap_or_else(|| panic!("no summary line in {lines:?}"))
}

/// The packets counted at `iface`/`dir` in a summary; panics if there is no such counter.
pub fn counted(s: &SummaryLine, iface: &str, dir: &str) -> u64 {
    hop_packets(s, iface, dir).unwrap_or_else(|| panic!("no {iface} {dir} counter in {s:?}"))
}

/// TCX links and tc filters left on an interface (must be none after flowtrace exits).
pub fn leftovers(iface: &str) -> String {
    // The kernel frees a closed program after an RCU grace period, later with many links:
    // what is still there after a few seconds outlived flowtrace.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = leftovers_now(iface);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn leftovers_now(iface: &str) -> String {
    let mut s = String::new();
    for dir in ["ingress", "egress"] {
        let out = Command::new("tc")
            .args(["filter", "show", "dev", iface, dir])
            .output()
            .expect("tc");
        s.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    // bpftool 7.1 does not list TCX links under `net show`; any of our programs still
    // loaded would mean a link (or fd) outlived flowtrace.
    let progs = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool");
    let progs: Value = serde_json::from_slice(&progs.stdout).unwrap_or(Value::Null);
    for p in progs.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("");
        let ours = [
            "tc_ingress",
            "tc_egress",
            "kfree_skb_btf",
            "consume_skb_btf",
            "kfree_skb_raw",
            "consume_skb_raw",
            "nf_hook_entry",
            "nf_hook_exit",
            "nf_hook_kprobe",
            "nf_hook_kretprobe",
        ];
        if ours.contains(&name) || name.starts_with("nf_slot") {
            s.push_str(&format!("program {name} (id {}) still loaded\n", p["id"]));
        }
    }
    s
}

/// Runs a command that must succeed (setting up throwaway namespaces and their rules).
pub fn run_ok(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
