//! The lab's "internet": network namespace `ft-inet`, joined to the host by the veth pair
//! `ftlab-up` (host, 198.51.100.1/24) ⇄ `eth0` (ns, 198.51.100.2/24), with echo responders
//! (TCP 8080/8081, UDP 9999) bound to the namespace's address. The kernel answers pings.

use super::state::STATE_DIR;
use super::{INET_IP, INET_NS_IF, NETNS, PREFIX_LEN, TCP_PORTS, UDP_PORT, UPLINK, UPLINK_IP};
use crate::cmd::cmd;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// Marker in the responder's command line; teardown only kills processes that carry it.
pub const RESPONDER_MARKER: &str = "flowtrace-lab-responder";
const PYTHON: &str = "/usr/bin/python3";

const RESPONDER_PY: &str = r#"# flowtrace lab responder: TCP and UDP echo, bound to one address.
import os, signal, socket, socketserver, sys, threading

signal.signal(signal.SIGHUP, signal.SIG_IGN)
_, marker, addr, tcp_ports, udp_port, ready = sys.argv

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        s.settimeout(30)
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                s.sendall(data)
        except OSError:
            pass

class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024

servers = [Server((addr, int(p)), Echo) for p in tcp_ports.split(",")]
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
udp.bind((addr, int(udp_port)))
for srv in servers:
    threading.Thread(target=srv.serve_forever, daemon=True).start()
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
while True:
    try:
        data, peer = udp.recvfrom(65536)
        udp.sendto(data, peer)
    except OSError:
        pass
"#;

pub fn netns_exists() -> bool {
    Path::new("/run/netns").join(NETNS).exists()
}

/// Create the namespace and the veth pair, address and route them.
pub fn create() -> Result<()> {
    if netns_exists() {
        bail!("network namespace {NETNS} already exists");
    }
    cmd("ip", ["netns", "add", NETNS]).run()?;
    cmd(
        "ip",
        [
            "link", "add", UPLINK, "type", "veth", "peer", "name", INET_NS_IF,
        ],
    )
    .args(["netns", NETNS])
    .run()?;
    // No IPv6 on the lab link: keeps router/neighbour solicitations out of traces.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{UPLINK}/disable_ipv6"),
        "1",
    );
    let _ = cmd("ip", ["netns", "exec", NETNS, "sysctl", "-qw"])
        .arg(format!("net.ipv6.conf.{INET_NS_IF}.disable_ipv6=1"))
        .run();
    cmd("ip", ["addr", "add"])
        .arg(format!("{UPLINK_IP}/{PREFIX_LEN}"))
        .args(["dev", UPLINK])
        .run()?;
    cmd("ip", ["link", "set", UPLINK, "up"]).run()?;
    cmd("ip", ["-n", NETNS, "link", "set", "lo", "up"]).run()?;
    cmd("ip", ["-n", NETNS, "addr", "add"])
        .arg(format!("{INET_IP}/{PREFIX_LEN}"))
        .args(["dev", INET_NS_IF])
        .run()?;
    cmd("ip", ["-n", NETNS, "link", "set", INET_NS_IF, "up"]).run()?;
    cmd(
        "ip",
        ["-n", NETNS, "route", "add", "default", "via", UPLINK_IP],
    )
    .run()?;
    Ok(())
}

/// Start the responder inside the namespace; returns its pid once all sockets are bound.
pub fn start_responder() -> Result<u32> {
    std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    let script = format!("{STATE_DIR}/responder.py");
    let ready = format!("{STATE_DIR}/responder.ready");
    let log_path = format!("{STATE_DIR}/responder.log");
    std::fs::write(&script, RESPONDER_PY).with_context(|| format!("writing {script}"))?;
    let _ = std::fs::remove_file(&ready);
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {log_path}"))?;
    let log2 = log.try_clone().context("duplicating a file handle")?;
    let ports = TCP_PORTS
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    // `ip netns exec` execs (no fork), so the child's pid is python's pid.
    let (mut command, line) = cmd("ip", ["netns", "exec", NETNS, PYTHON, &script])
        .args([
            RESPONDER_MARKER,
            INET_IP,
            &ports,
            &UDP_PORT.to_string(),
            &ready,
        ])
        .into_command();
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let pid = child.id();
    let start = Instant::now();
    while !Path::new(&ready).exists() {
        if let Some(status) = child.try_wait().context("checking the responder")? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("responder exited ({status}): {}", log.trim());
        }
        if start.elapsed() > Duration::from_secs(10) {
            kill_pid(pid);
            bail!("responder did not bind its sockets within 10 s (log: {log_path})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(pid)
}

/// Is `pid` a live lab responder (its command line carries the marker)?
pub fn is_responder(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .any(|arg| arg == RESPONDER_MARKER.as_bytes())
        })
        .unwrap_or(false)
}

fn kill_pid(pid: u32) {
    let _ = cmd("kill", ["-TERM", &pid.to_string()]).run();
}

/// Kill the recorded responders and any other marked responder inside the namespace.
pub fn stop_responders(recorded: &[u32]) -> Result<Vec<u32>> {
    let mut pids: Vec<u32> = recorded.to_vec();
    if netns_exists() {
        if let Ok(out) = cmd("ip", ["netns", "pids", NETNS]).read() {
            pids.extend(out.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    pids.sort_unstable();
    pids.dedup();
    let pids: Vec<u32> = pids.into_iter().filter(|p| is_responder(*p)).collect();
    for pid in &pids {
        kill_pid(*pid);
    }
    let start = Instant::now();
    while pids.iter().any(|p| is_responder(*p)) {
        if start.elapsed() > Duration::from_secs(3) {
            for pid in pids.iter().filter(|p| is_responder(**p)) {
                let _ = cmd("kill", ["-KILL", &pid.to_string()]).run();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for f in ["responder.py", "responder.ready", "responder.log"] {
        let _ = std::fs::remove_file(format!("{STATE_DIR}/{f}"));
    }
    Ok(pids)
}

/// Remove the veth pair and the namespace (responders must be gone first, or the namespace
/// outlives its name).
pub fn destroy() -> Result<Vec<&'static str>> {
    let mut removed = Vec::new();
    if super::docker::link_exists(UPLINK) {
        cmd("ip", ["link", "del", UPLINK]).run()?;
        removed.push(UPLINK);
    }
    if netns_exists() {
        cmd("ip", ["netns", "del", NETNS]).run()?;
        removed.push(NETNS);
    }
    Ok(removed)
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Turn on IPv4 forwarding; returns the old value if it had to be changed.
pub fn enable_ip_forward() -> Result<Option<String>> {
    let old = std::fs::read_to_string(IP_FORWARD)
        .with_context(|| format!("reading {IP_FORWARD}"))?
        .trim()
        .to_string();
    if old == "1" {
        return Ok(None);
    }
    std::fs::write(IP_FORWARD, "1").with_context(|| format!("writing {IP_FORWARD}"))?;
    Ok(Some(old))
}

pub fn restore_ip_forward(old: &str) -> Result<()> {
    std::fs::write(IP_FORWARD, old).with_context(|| format!("writing {IP_FORWARD}"))
}
