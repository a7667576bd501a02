//! Shared pieces of the privileged end-to-end tests: the lab built by `cargo xtask lab up`,
//! the network safety check, senders that run inside a namespace, and a runner for the real
//! `flowtrace` binary.
//!
//! These tests need root, dockerd and the lab; `cargo xtask test` brings the lab up, runs
//! them serially (`--test-threads=1`) and tears the lab down even when they fail.
#![allow(dead_code)]

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const STATE: &str = "/run/flowtrace-lab/state.json";
/// The lab's "internet": the only range besides the lab's containers that tests may send to.
const LAB_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 51, 100, 0), 24);

/// The lab as `cargo xtask lab up` described it.
pub struct Lab {
    pub state: Value,
}

impl Lab {
    pub fn get() -> Self {
        let text = std::fs::read_to_string(STATE).unwrap_or_else(|e| {
            panic!("{STATE}: {e}. Run the privileged tests through `cargo xtask test` (it brings the lab up)")
        });
        let state: Value = serde_json::from_str(&text).expect("lab state is JSON");
        Self { state }
    }

    pub fn s(&self, key: &str) -> String {
        // A container's veth changes when it restarts: look it up live.
        match key {
            "host_veth" => return self.veth_of(&self.s("container")),
            "peer_veth" => return self.veth_of(&self.s("peer_container")),
            _ => {}
        }
        self.state[key]
            .as_str()
            .unwrap_or_else(|| panic!("lab state has no string `{key}`: {}", self.state))
            .to_owned()
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

    pub fn ip(&self, key: &str) -> IpAddr {
        self.s(key).parse().expect("an IP address")
    }

    pub fn port(&self, key: &str) -> u16 {
        self.state[key].as_u64().expect("a port") as u16
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

    /// The network safety rule: the destination is the lab's internet (routed out of the
    /// lab's own uplink, with the guard rules in place) or one of the lab's containers.
    pub fn assert_safe(&self, dst: IpAddr) {
        let IpAddr::V4(v4) = dst else {
            panic!("unsafe destination {dst}: the lab is IPv4 only")
        };
        let containers: Vec<IpAddr> = ["container_ip", "peer_ip"]
            .iter()
            .filter_map(|k| self.state[*k].as_str()?.parse().ok())
            .collect();
        if containers.contains(&dst) {
            return;
        }
        // The isolated network's containers (the /24 of the isolated container): routed to
        // its own bridge, guarded like the internet range.
        let isolated: Option<Ipv4Addr> = self.state["isolated_ip"]
            .as_str()
            .and_then(|s| s.parse().ok());
        if isolated.is_some_and(|i| u32::from(i) >> 8 == u32::from(v4) >> 8) {
            assert_eq!(
                self.route_dev(dst),
                self.s("isolated_bridge"),
                "unsafe: {dst}"
            );
            assert!(
                self.guards() >= 4,
                "unsafe: the lab's guard rules are missing"
            );
            return;
        }
        let (net, len) = LAB_NET;
        let mask = u32::MAX << (32 - len);
        assert_eq!(
            u32::from(v4) & mask,
            u32::from(net),
            "unsafe destination {dst}: outside the lab"
        );
        assert_eq!(
            self.route_dev(dst),
            self.s("uplink"),
            "unsafe: {dst} would not leave by the lab's uplink"
        );
        assert!(
            self.guards() >= 2,
            "unsafe: the lab's guard rules are missing"
        );
    }

    /// The interface the host routes `dst` out of.
    fn route_dev(&self, dst: IpAddr) -> String {
        let out = Command::new("ip")
            .args(["-j", "route", "get", &dst.to_string()])
            .output()
            .expect("ip route get");
        let routes: Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        routes[0]["dev"].as_str().unwrap_or("").to_owned()
    }

    /// How many lab guard rules are installed.
    fn guards(&self) -> usize {
        let rules = Command::new("iptables")
            .args(["-S"])
            .output()
            .expect("iptables -S");
        String::from_utf8_lossy(&rules.stdout)
            .matches("flowtrace-lab-guard")
            .count()
    }
}

/// Runs `f` on a thread inside the network namespace at `path`.
pub fn in_netns<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: valid fd; changes only this thread's namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("sender thread")
    })
}

/// Where a test sends from.
#[derive(Clone, Debug)]
pub enum From {
    Container(String),
    Internet,
}

impl From {
    fn netns(&self, lab: &Lab) -> String {
        match self {
            Self::Container(name) => format!("/proc/{}/ns/net", lab.container_pid(name)),
            Self::Internet => format!("/run/netns/{}", lab.s("inet_netns")),
        }
    }
}

/// One TCP exchange (connect, send, read the echo, close). Returns the local port, or the
/// error (a dropped SYN times out).
pub fn tcp(lab: &Lab, from: &From, dst: IpAddr, port: u16) -> Result<u16, String> {
    tcp_sized(lab, from, dst, port, b"flowtrace\n")
}

/// Like [`tcp`], with `payload` as the message (the responder echoes it).
pub fn tcp_sized(
    lab: &Lab,
    from: &From,
    dst: IpAddr,
    port: u16,
    payload: &[u8],
) -> Result<u16, String> {
    if matches!(from, From::Container(_)) {
        lab.assert_safe(dst);
    }
    in_netns(&from.netns(lab), || {
        let addr = SocketAddr::new(dst, port);
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        let local = s.local_addr().map_err(|e| e.to_string())?.port();
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.write_all(payload).map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < payload.len() {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        if got != payload {
            return Err(format!("unexpected echo of {} bytes", got.len()));
        }
        Ok(local)
    })
}

/// One UDP datagram and its echo. Returns the local port.
pub fn udp(lab: &Lab, from: &From, dst: IpAddr, port: u16) -> Result<u16, String> {
    lab.assert_safe(dst);
    in_netns(&from.netns(lab), || {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.send_to(b"flowtrace\n", SocketAddr::new(dst, port))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok(s.local_addr().map_err(|e| e.to_string())?.port())
    })
}

/// One UDP datagram with the given IP TTL, no reply expected. Returns the local port.
pub fn udp_ttl(lab: &Lab, from: &From, dst: IpAddr, port: u16, ttl: u32) -> u16 {
    lab.assert_safe(dst);
    in_netns(&from.netns(lab), || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_ttl(ttl).expect("IP_TTL");
        s.send_to(b"flowtrace-ttl\n", SocketAddr::new(dst, port))
            .expect("send");
        s.local_addr().expect("local").port()
    })
}

/// `n` UDP datagrams of `payload` from inside a container, as fast as it can (send errors
/// under a flood are retried, so exactly `n` leave). After the safety check.
pub fn udp_burst(lab: &Lab, container: &str, dst: IpAddr, port: u16, n: u64, payload: &[u8]) {
    lab.assert_safe(dst);
    let pid = lab.container_pid(container);
    in_netns(&format!("/proc/{pid}/ns/net"), || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..n {
            while s.send_to(payload, (dst, port)).is_err() {}
        }
    });
}

/// The packets a summary line counted at `iface`/`dir` (the kernel's per-hop counter).
pub fn hop_packets(summary: &Value, iface: &str, dir: &str) -> u64 {
    summary["hops"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["iface"] == iface && h["dir"] == dir)
        .and_then(|h| h["packets"].as_u64())
        .unwrap_or_else(|| panic!("no {iface} {dir} counter in {summary}"))
}

/// ICMP echo from inside a container (busybox ping, which the lab image has).
pub fn ping(lab: &Lab, container: &str, dst: IpAddr, count: u32) -> bool {
    lab.assert_safe(dst);
    Command::new("docker")
        .args([
            "exec",
            container,
            "ping",
            "-c",
            &count.to_string(),
            "-W",
            "2",
            &dst.to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
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

    /// Sends SIGINT (like Ctrl-C), waits for a clean exit, returns stdout's JSON lines (every
    /// line must be JSON).
    pub fn stop(self) -> Vec<Value> {
        self.stop_text()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
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

/// `(iface, dir)` of each hop of a packet.
pub fn hops(p: &Value) -> Vec<(String, String)> {
    p["hops"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter(|h| h["point"] == "tc")
                .map(|h| {
                    (
                        h["iface"].as_str().unwrap_or("").to_owned(),
                        h["dir"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The tc hop at `iface`/`dir`.
pub fn tc_hop<'a>(p: &'a Value, iface: &str, dir: &str) -> &'a Value {
    p["hops"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["point"] == "tc" && h["iface"] == iface && h["dir"] == dir)
        .unwrap_or_else(|| panic!("no tc hop {iface} {dir} in {p}"))
}

/// The netfilter hop for `hook`/`table`.
pub fn nf_hop<'a>(p: &'a Value, hook: &str, table: &str) -> &'a Value {
    p["hops"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["point"] == "netfilter" && h["hook"] == hook && h["table"] == table)
        .unwrap_or_else(|| panic!("no netfilter hop {hook}/{table} in {p}"))
}

/// `(hook, table, verdict)` of each netfilter hop.
pub fn nf_hops(p: &Value) -> Vec<(String, String, String)> {
    p["hops"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["point"] == "netfilter")
        .map(|h| {
            let s = |k: &str| h[k].as_str().unwrap_or("").to_owned();
            (s("hook"), s("table"), s("verdict"))
        })
        .collect()
}

pub fn packets(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["type"] == "packet").collect()
}

/// TCX links and tc filters left on an interface (must be none after flowtrace exits).
pub fn leftovers(iface: &str) -> String {
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
