//! `cargo xtask lab send`: send test traffic inside the lab, after the safety check.
//! TCP and ICMP from a container run busybox `nc`/`ping` via `docker exec`; busybox's `nc` has
//! no UDP mode, so UDP from a container runs a small python3 probe in the container's network
//! namespace (`nsenter -n`, bound to its eth0). From `inet`, the probe or busybox `ping` run
//! in the ft-inet namespace, bound to its eth0.

use super::guard::{safety_check, Origin};
use super::state::State;
use super::{INET_IP, INET_NS_IF, NETNS};
use crate::cmd::cmd;
use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    #[arg(long, value_enum, default_value = "tcp")]
    pub proto: Proto,
    #[arg(long, default_value = INET_IP)]
    pub dst: Ipv4Addr,
    /// Destination port (default: 8080 for tcp, 9999 for udp; ignored for icmp).
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// ens_monitor_cron, ens_monitor_peer or inet.
    #[arg(long, default_value = super::CONTAINER)]
    pub from: String,
    /// Succeed only if no reply at all comes back (e.g. the drop port).
    #[arg(long)]
    pub expect_fail: bool,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 1)]
    pub timeout: u32,
}

const PROBE_PY: &str = r#"
import socket, sys
proto, dst, port, count, timeout, dev = sys.argv[1:]
ok = 0
for i in range(int(count)):
    tok = ("flowtrace-lab-%d\n" % i).encode()
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
        s.settimeout(float(timeout))
        if proto == "tcp":
            s.connect((dst, int(port)))
            s.sendall(tok)
            s.shutdown(socket.SHUT_WR)
            buf = b""
            while True:
                d = s.recv(4096)
                if not d:
                    break
                buf += d
        else:
            s.sendto(tok, (dst, int(port)))
            buf, _ = s.recvfrom(4096)
        if buf == tok:
            ok += 1
    except OSError:
        pass
    finally:
        s.close()
print(ok)
"#;

fn parse_count(out: &str, what: &str) -> Result<u32> {
    out.trim()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("unexpected output from the {what}: {out:?}"))
}

fn ping_received(out: &str) -> u32 {
    // "3 packets transmitted, 3 packets received, 0% packet loss"
    out.lines()
        .find_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words
                .windows(3)
                .find(|w| w[1] == "packets" && w[2].starts_with("received"))
                .and_then(|w| w[0].parse().ok())
        })
        .unwrap_or(0)
}

pub fn send(args: &SendArgs) -> Result<()> {
    let state = State::load()?.context("the lab is not up (no state file): cargo xtask lab up")?;
    if !state.complete {
        bail!("the lab's last `up` did not finish; run `cargo xtask lab down` and `lab up`");
    }
    let origin = if args.from == "inet" || args.from == NETNS {
        Origin::Inet
    } else if args.from == state.container || state.peer_container.as_deref() == Some(&args.from) {
        Origin::Container(&args.from)
    } else {
        bail!(
            "--from must be {}, {} or inet",
            state.container,
            state
                .peer_container
                .as_deref()
                .unwrap_or("(no peer container)")
        );
    };
    safety_check(&state, origin, args.dst)?;
    let port = args.port.unwrap_or(match args.proto {
        Proto::Udp => state.udp_port,
        _ => 8080,
    });
    let n = args.count.to_string();
    let t = args.timeout.max(1).to_string();
    let dst = args.dst.to_string();
    let ok = match (args.proto, origin) {
        (Proto::Tcp, Origin::Container(c)) => {
            // One `docker exec` for the whole loop; a connection counts if its echo comes back.
            let script = format!(
                "ok=0; i=0; while [ $i -lt {n} ]; do \
                   r=$(echo flowtrace-lab-$i | timeout {tt} nc -w {t} {dst} {port} 2>/dev/null); \
                   [ \"$r\" = \"flowtrace-lab-$i\" ] && ok=$((ok+1)); i=$((i+1)); \
                 done; echo $ok",
                tt = args.timeout.max(1) + 2
            );
            let out = cmd("docker", ["exec", c, "sh", "-c", &script]).read()?;
            parse_count(&out, "nc loop")?
        }
        (Proto::Icmp, Origin::Container(c)) => {
            let (_, out, _) = cmd(
                "docker",
                ["exec", c, "ping", "-A", "-c", &n, "-W", &t, &dst],
            )
            .output()?;
            ping_received(&out)
        }
        (Proto::Udp, Origin::Container(c)) => {
            let pid = super::docker::container_pid(c)?.to_string();
            let out = cmd(
                "nsenter",
                ["-t", &pid, "-n", "/usr/bin/python3", "-c", PROBE_PY],
            )
            .args(["udp", &dst, &port.to_string(), &n, &t, "eth0"])
            .read()?;
            parse_count(&out, "udp probe")?
        }
        (Proto::Icmp, Origin::Inet) => {
            let (_, out, _) = cmd("ip", ["netns", "exec", NETNS, "busybox", "ping"])
                .args(["-I", INET_NS_IF, "-A", "-c", &n, "-W", &t, &dst])
                .output()?;
            ping_received(&out)
        }
        (proto, Origin::Inet) => {
            let p = if proto == Proto::Tcp { "tcp" } else { "udp" };
            let out = cmd(
                "ip",
                ["netns", "exec", NETNS, "/usr/bin/python3", "-c", PROBE_PY],
            )
            .args([p, &dst, &port.to_string(), &n, &t, INET_NS_IF])
            .read()?;
            parse_count(&out, "probe")?
        }
    };
    let target = match args.proto {
        Proto::Icmp => dst.clone(),
        _ => format!("{dst}:{port}"),
    };
    let proto = format!("{:?}", args.proto).to_lowercase();
    crate::out!(
        "lab send: {proto} {} → {target}: {ok}/{} replies{}",
        args.from,
        args.count,
        if args.expect_fail {
            " (failure expected)"
        } else {
            ""
        }
    );
    if args.expect_fail {
        if ok != 0 {
            bail!("expected no replies from {target}, got {ok}");
        }
    } else if ok != args.count {
        bail!(
            "only {ok} of {} {proto} probes to {target} got a reply",
            args.count
        );
    }
    Ok(())
}
