//! Readings of the system (CPU, RSS, BPF program costs), the loads, and one measurement.

use super::*;

pub(super) fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime+stime of a process, in seconds.
pub(super) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("bad /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: field 3 (state) is f[0]; utime is field 14, stime field 15.
    let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(ticks as f64 / clk_tck())
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`), or 0 once the process is gone.
pub(super) fn status_kib(pid: u32, field: &str) -> u64 {
    let key = format!("{field}:");
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(&key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub(super) fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM")
}

/// Other tracers running on this host (not started by the bench): they load the same kernel
/// and CPUs, so their presence makes the figures unreliable.
pub(super) fn foreign_tracers(ours: &[u32]) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !ours.contains(pid))
        .filter_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim();
            matches!(comm, "flowtrace" | "tcpdump" | "iperf3")
                .then(|| format!("{comm} (pid {pid})"))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The loads.

pub(super) fn safety() -> Result<State> {
    let st = State::load()?.context("the lab is not up (no state file)")?;
    let inet: std::net::Ipv4Addr = lab::INET_IP.parse()?;
    safety_check(&st, Origin::Container(lab::CONTAINER), inet)?;
    safety_check(&st, Origin::Container(lab::PEER), inet)?;
    safety_check(&st, Origin::Inet, lab::UPLINK_IP.parse()?)?;
    Ok(st)
}

pub(super) fn server_listening() -> bool {
    cmd(
        "ip",
        [
            "netns",
            "exec",
            lab::NETNS,
            "ss",
            "-Hltn",
            &format!("sport = :{IPERF_PORT}"),
        ],
    )
    .read()
    .map(|s| !s.trim().is_empty())
    .unwrap_or(false)
}

/// One iperf3 run from the container to the internet namespace; returns (throughput, figures).
pub(super) fn run_load(load: Load, seconds: u32) -> Result<(f64, Value)> {
    // The server: a one-off, in the lab's internet namespace, bound to its lab address.
    let mut server_cmd = Command::new("ip");
    server_cmd.args(["netns", "exec", lab::NETNS, "iperf3", "-s", "-1"]);
    server_cmd.args(["-B", lab::INET_IP, "-p", IPERF_PORT]);
    let server = Proc::spawn(server_cmd, "iperf3 server", None)?;
    let start = Instant::now();
    while !server_listening() {
        if start.elapsed() > Duration::from_secs(5) {
            bail!(
                "the iperf3 server in {} did not listen within 5 s",
                lab::NETNS
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The check right before sending: the lab, its guards, and the route by ftlab-up (the
    // host's route, which the containers' packets and the host's own take alike).
    safety()?;
    let secs = seconds.to_string();
    let mut c = match load.sender() {
        Some((container, address)) => {
            let pid = lab::docker::container_pid(container)?.to_string();
            let mut c = Command::new("nsenter");
            c.args(["-n", "-t", &pid, "iperf3"]);
            // Bound to the container's address: outside its namespace this fails.
            c.args(["-B", address]);
            c
        }
        None => {
            // Bound to the host's lab address, which only ftlab-up holds.
            let mut c = Command::new("iperf3");
            c.args(["-B", lab::UPLINK_IP]);
            c
        }
    };
    c.args(["-c", lab::INET_IP, "-p", IPERF_PORT, "-t", &secs, "-J"]);
    if load.udp() {
        c.args(["-u", "-l", &UDP_LEN.to_string(), "-b", "0"]);
    }
    let client = Proc::spawn(c, "iperf3 client", None)?;
    let done = client.finish(None, Duration::from_secs(u64::from(seconds) + 15))?;
    let _ = server.finish(Some(libc::SIGKILL), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&done.out.tail);
    let v: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "iperf3 client ({}) gave no JSON: {}\n{}",
            done.exit,
            text.chars().take(400).collect::<String>(),
            done.stderr
        )
    })?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let end = &v["end"];
    let (tput, figures) = match load.udp() {
        false => {
            let bps = end["sum_received"]["bits_per_second"]
                .as_f64()
                .context("iperf3 JSON without end.sum_received.bits_per_second")?;
            let fig = json!({
                "seconds": end["sum_received"]["seconds"],
                "received_bits_per_second": bps,
                "sent_bits_per_second": end["sum_sent"]["bits_per_second"],
                "retransmits": end["sum_sent"]["retransmits"],
                "cpu_utilization_percent": end["cpu_utilization_percent"],
            });
            (bps, fig)
        }
        true => {
            let s = &end["sum_received"];
            let sent = s["packets"]
                .as_u64()
                .context("iperf3 JSON without packets")?;
            let lost = s["lost_packets"].as_u64().unwrap_or(0);
            let secs = s["seconds"].as_f64().unwrap_or(f64::from(seconds));
            let received = sent.saturating_sub(lost);
            let pps = received as f64 / secs.max(0.001);
            let fig = json!({
                "seconds": secs,
                "payload_bytes": UDP_LEN,
                "sent_packets": sent,
                "lost_packets": lost,
                "received_packets": received,
                "received_pps": pps,
                "sent_pps": sent as f64 / secs.max(0.001),
                "cpu_utilization_percent": end["cpu_utilization_percent"],
            });
            (pps, fig)
        }
    };
    Ok((tput, figures))
}

/// `PROBES` UDP datagrams from the traced container to the lab's echo (one every 20 ms, after
/// a second, each waiting for its echo); returns the local port and how many were echoed.
/// Sent from a thread inside the container's namespace, bound to its address, after the
/// lab's safety check.
fn send_probes() -> Result<(u16, u32)> {
    std::thread::sleep(Duration::from_secs(1));
    safety()?;
    let pid = lab::docker::container_pid(lab::CONTAINER)?;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    // SAFETY: setns(2) on a valid fd; it changes only this thread's namespace.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns into {}: {}",
            lab::CONTAINER,
            std::io::Error::last_os_error()
        );
    }
    let s = std::net::UdpSocket::bind((lab::CONTAINER_IP, 0))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let port = s.local_addr()?.port();
    let mut echoed = 0;
    let mut buf = [0u8; 64];
    for i in 0..PROBES {
        s.send_to(
            format!("probe {i}\n").as_bytes(),
            (lab::INET_IP, lab::UDP_PORT),
        )?;
        if s.recv_from(&mut buf).is_ok() {
            echoed += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((port, echoed))
}

/// How many of the probes from `port` flowtrace's JSON shows leaving the container with every
/// hop of the way out, in order.
pub(super) fn probes_shown(json_lines: &str, port: u16, path: &[(&str, &str)]) -> u32 {
    let from = format!("{}:{port}", lab::CONTAINER_IP);
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "packet" && v["way"] == "out" && v["src"] == from.as_str())
        .filter(|v| {
            let tc: Vec<(&str, &str)> = v["hops"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|h| h["point"] == "tc")
                .map(|h| {
                    (
                        h["iface"].as_str().unwrap_or(""),
                        h["dir"].as_str().unwrap_or(""),
                    )
                })
                .collect();
            tc == path
        })
        .count() as u32
}

// ---------------------------------------------------------------------------------------------
/// Starts the configuration's tracer (none for the baseline), with the file it writes.
pub(super) fn spawn_tracer(
    ctx: &Ctx,
    config: Config,
    load: Load,
) -> Result<(Option<Proc>, Option<TmpFile>)> {
    let mut file: Option<TmpFile> = None;
    let tracer = match config {
        Config::Baseline => None,
        Config::Tcpdump => {
            let path = PathBuf::from(format!("/tmp/flowtrace-bench-{}.pcap", ctx.tag));
            file = Some(TmpFile(path.clone()));
            // Under someone else's load, what an operator would run to watch the traced
            // container: tcpdump on its veth. Otherwise every interface (flowtrace's scope).
            let iface = if load.idle_container() {
                ctx.host_veth.as_str()
            } else {
                "any"
            };
            let mut c = Command::new("tcpdump");
            c.args(["-i", iface, "-n", "-s", "128", "-w"]).arg(&path);
            Some(Proc::spawn(c, "tcpdump", Some("listening on"))?)
        }
        _ => {
            let mut c = Command::new(&ctx.bin);
            c.args(["-c", lab::CONTAINER]);
            match config {
                Config::Counters => {
                    c.args(["--counters", "--json"]);
                }
                Config::Events => {
                    c.arg("--json");
                }
                Config::EventsNoNftrace => {
                    c.args(["--json", "--no-nftrace"]);
                }
                Config::Filtered => {
                    c.args(["--json", "-f", FILTER_1PCT]);
                }
                _ => {
                    let path = PathBuf::from(format!("/tmp/flowtrace-bench-{}.pcapng", ctx.tag));
                    file = Some(TmpFile(path.clone()));
                    c.arg("--write").arg(&path).arg("--no-tui");
                }
            }
            Some(Proc::spawn(c, "flowtrace", Some("tracing…"))?)
        }
    };
    Ok((tracer, file))
}

/// Per packet of the load: at the traced veth, for a neighbour's load (which never passes
/// it) at the bridge, for the host's at the uplink.
pub(super) fn counted_at(ctx: &Ctx, load: Load) -> &str {
    match load {
        Load::HostUdp => lab::UPLINK,
        _ if load.neighbour() => &ctx.bridge,
        _ => &ctx.host_veth,
    }
}

pub(super) fn measure(ctx: &Ctx, config: Config, load: Load, rep: u32) -> Result<Run> {
    let foreign = foreign_tracers(&[]);
    if !foreign.is_empty() {
        crate::err!(
            "bench: WARNING: other tracers/loads are running ({}): the figures are not clean",
            foreign.join(", ")
        );
    }
    let (mut tracer, file) = spawn_tracer(ctx, config, load)?;
    let mut startup_s = 0.0;
    let mut cpu0 = 0.0;
    if let Some(t) = tracer.as_mut() {
        let s = Instant::now();
        t.wait_ready(Duration::from_secs(60))?;
        startup_s = s.elapsed().as_secs_f64();
        // Let the tracer settle (tcpdump's first buffer, flowtrace's first tick).
        std::thread::sleep(Duration::from_millis(300));
        cpu0 = cpu_seconds(t.pid())?;
    }
    // The traced container is idle under someone else's load, but for a few probes.
    let probes = load
        .idle_container()
        .then(|| std::thread::spawn(send_probes));
    let (throughput, iperf) = run_load(load, ctx.seconds)?;
    let probes = match probes.map(|h| h.join()) {
        Some(Ok(r)) => Some(r?),
        Some(Err(_)) => bail!("the probe sender panicked"),
        None => None,
    };
    let figures = match tracer.take() {
        None => None,
        Some(t) => {
            std::thread::sleep(DRAIN);
            let pid = t.pid();
            let cpu1 = cpu_seconds(pid)?;
            let rss = peak_rss_kib(pid);
            let rss_now = status_kib(pid, "VmRSS");
            let done = t.finish(Some(libc::SIGINT), Duration::from_secs(20))?;
            let mut f = TracerFigures {
                pid,
                startup_s,
                cpu_s_load: cpu1 - cpu0,
                cpu_s_total: cpu1,
                peak_rss_kib: rss,
                rss_kib: rss_now,
                stdout_bytes: done.out.bytes,
                stdout_lines: done.out.lines,
                file_bytes: file
                    .as_ref()
                    .and_then(|f| std::fs::metadata(&f.0).ok())
                    .map(|m| m.len()),
                exit: done.exit.clone(),
                ..TracerFigures::default()
            };
            if config == Config::Tcpdump {
                read_tcpdump_stats(&done.stderr, &mut f);
            } else {
                read_flowtrace_summary(&done, config, counted_at(ctx, load), &mut f)?;
            }
            f.events_per_s = f.events as f64 / f64::from(ctx.seconds);
            if let Some((port, sent)) = probes {
                f.probes_sent = sent;
                if config == Config::Events {
                    let path = [
                        (ctx.host_veth.as_str(), "ingress"),
                        (ctx.bridge.as_str(), "ingress"),
                        (lab::UPLINK, "egress"),
                    ];
                    let text = String::from_utf8_lossy(&done.out.tail);
                    f.probes_shown_full_path = Some(probes_shown(&text, port, &path));
                }
            }
            Some(f)
        }
    };
    drop(file);
    let cost = if config.is_flowtrace() {
        Some(cost_pass(ctx, config, load)?)
    } else {
        None
    };
    Ok(Run {
        config,
        load,
        rep,
        throughput,
        unit: load.unit(),
        ratio: None,
        iperf,
        tracer: figures,
        cost,
        foreign,
    })
}

pub(super) fn read_tcpdump_stats(stderr: &str, f: &mut TracerFigures) {
    // "N packets captured", "N packets received by filter", "N packets dropped by kernel"
    let num = |suffix: &str| -> u64 {
        stderr
            .lines()
            .find(|l| l.trim_end().ends_with(suffix))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    f.events = num("packets captured");
    f.lost = num("packets dropped by kernel");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("packets")).collect();
    f.summary = json!(lines);
}

pub(super) fn read_flowtrace_summary(
    done: &Finished,
    config: Config,
    veth: &str,
    f: &mut TracerFigures,
) -> Result<()> {
    let summary: Value = if config == Config::Pcapng {
        // Text mode: the summary goes to stderr. "N packets, F flows, D dropped, L events lost"
        // and then one line per hop: "  IFACE DIR N pkts B bytes [L events lost]".
        let mut lines = done.stderr.lines().skip_while(|l| {
            !(l.contains(" packets, ") && l.contains(" flows, ") && !l.starts_with("flowtrace:"))
        });
        let head = lines.next().with_context(|| {
            format!(
                "flowtrace ({}) printed no summary:\n{}",
                done.exit, done.stderr
            )
        })?;
        let words: Vec<&str> = head.split_whitespace().collect();
        let at = |i: usize| {
            words
                .get(i)
                .and_then(|w| w.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let hops: Vec<Value> = lines
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() >= 6).then(|| {
                    json!({"iface": w[0], "dir": w[1],
                           "packets": w[2].parse::<u64>().unwrap_or(0),
                           "bytes": w[4].parse::<u64>().unwrap_or(0),
                           "lost": w.get(6).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)})
                })
            })
            .collect();
        json!({"type": "summary", "packets": at(0), "flows": at(2), "drops": at(4),
               "lost": at(6), "hops": hops, "from": "stderr text"})
    } else {
        let text = String::from_utf8_lossy(&done.out.tail);
        text.lines()
            .rev()
            .filter(|l| l.contains("\"summary\""))
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == "summary")
            .with_context(|| {
                format!(
                    "flowtrace ({}) printed no summary line:\n{}",
                    done.exit, done.stderr
                )
            })?
    };
    f.events = if config == Config::Counters {
        0
    } else {
        summary["packets"].as_u64().unwrap_or(0)
    };
    f.lost = summary["lost"].as_u64().unwrap_or(0);
    f.discarded = summary["discarded"].clone();
    f.veth_packets = summary["hops"]
        .as_array()
        .map(|hops| {
            hops.iter()
                .filter(|h| h["iface"] == veth)
                .filter_map(|h| h["packets"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    f.summary = summary;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Output.
