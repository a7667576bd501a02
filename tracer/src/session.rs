//! One tracing session, in the order the data flows: discover the targets → attach probes →
//! read events → present them → summarise. Everything attached is detached when this returns,
//! whether by Ctrl-C, SIGTERM, `--duration`, `--count` or an error.

use std::{
    collections::BTreeSet,
    io::{BufWriter, IsTerminal, Write},
    time::Duration,
};

use tokio::signal::unix::{signal, SignalKind};
use tracer_common::{Direction, Offsets, PointKey, MAX_SNAP};

use crate::{
    cli::TraceArgs,
    correlate::{
        explain::Explainer,
        packet::{PointInfo, Points},
    },
    error::{Error, Result},
    events::{clock::WallClock, ringbuf::EventStream},
    filter::PacketFilter,
    output::{
        raw,
        record::{RecordOptions, Recorder},
        Format,
    },
    pipeline::Pipeline,
    probe::{
        btf, capabilities, counters::Counters, drops, kallsyms::Kallsyms, loader, netfilter,
        offsets, tc,
    },
    target::{
        docker::Docker,
        netns::Netns,
        ruleset::Ruleset,
        topology::{container_path, AttachPoint, HostView, Topology},
    },
    tui::{Feed, HopCount},
};

/// How often pending packets are completed and loss counters read.
const TICK: Duration = Duration::from_millis(50);
/// How often a headless run says how it is doing (on stderr).
const PROGRESS: Duration = Duration::from_secs(5);

/// `flowtrace: 15s, 1234 packets, 2 dropped, 0 events lost, trace.pcapng 1.2 MiB`
fn progress(p: &Pipeline, lost: u64, elapsed: Duration) -> String {
    let file = p
        .recorder
        .as_ref()
        .map(|r| {
            format!(
                ", {} {:.1} MiB",
                r.path().display(),
                r.bytes_written() as f64 / 1_048_576.0
            )
        })
        .unwrap_or_default();
    format!(
        "flowtrace: {}s, {} packets, {} dropped, {lost} events lost{file}",
        elapsed.as_secs(),
        p.shown,
        p.drops
    )
}

/// The dashboard's title: what is traced.
fn title(topo: &Topology) -> String {
    let who: Vec<String> = topo
        .containers
        .iter()
        .map(|c| {
            let nets: Vec<String> = c
                .info
                .endpoints
                .iter()
                .map(|e| match e.ip {
                    Some(ip) => format!("{ip} on {}", e.network),
                    None => e.network.clone(),
                })
                .collect();
            format!("{} ({})", c.info.name, nets.join(", "))
        })
        .collect();
    if who.is_empty() {
        let ifaces: Vec<&str> = topo.named.iter().map(|l| l.name.as_str()).collect();
        format!("flowtrace — {}", ifaces.join(", "))
    } else {
        format!("flowtrace — {}", who.join("; "))
    }
}

/// The recording's section comment: what was traced, where, how (also as JSON).
fn section_comment(topo: &Topology, attached: &[tc::Attached]) -> String {
    let mut lines = vec![format!("flowtrace {} recording", env!("CARGO_PKG_VERSION"))];
    lines.extend(topo.describe());
    let containers: Vec<serde_json::Value> = topo
        .containers
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.info.name, "id": c.info.id, "image": c.info.image, "pid": c.info.pid,
                "netns": c.netns.inode,
                "networks": c.info.endpoints.iter().map(|e| serde_json::json!({
                    "network": e.network, "ip": e.ip.map(|i| i.to_string()),
                    "prefix_len": e.prefix_len, "gateway": e.gateway.map(|g| g.to_string()), "mac": e.mac,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let points: Vec<serde_json::Value> = attached
        .iter()
        .filter(|a| a.direction == Direction::Ingress)
        .map(|a| serde_json::json!({"iface": a.point.name, "ifindex": a.point.ifindex, "role": a.point.role.to_string(), "mechanism": a.mechanism.to_string()}))
        .collect();
    lines.push(format!(
        "flowtrace-meta: {}",
        serde_json::json!({"containers": containers, "points": points})
    ));
    lines.join("\n")
}

/// Finds the containers, their veths and bridges, and the uplinks.
pub async fn discover(args: &TraceArgs) -> Result<Topology> {
    let host = HostView::read()?;
    let mut topo = Topology::default();
    for name in &args.ifaces {
        let link = host
            .by_name(name)
            .ok_or_else(|| Error::UnknownInterface(name.clone()))?;
        topo.named.push(link.clone());
    }
    if !args.containers.is_empty() || !args.networks.is_empty() {
        let docker = Docker::connect().await?;
        let mut wanted: Vec<String> = args.containers.clone();
        for net in &args.networks {
            wanted.extend(docker.network_containers(net).await?);
        }
        let mut seen = BTreeSet::new();
        for name in wanted {
            let info = docker.container(&name).await?;
            if seen.insert(info.id.clone()) {
                topo.containers.push(container_path(info, &host)?);
            }
        }
        let traced: Vec<u32> = topo
            .containers
            .iter()
            .flat_map(|c| c.links.iter().map(|l| l.host_veth.index))
            .collect();
        let bridges: BTreeSet<u32> = topo
            .containers
            .iter()
            .flat_map(|c| {
                c.links
                    .iter()
                    .filter_map(|l| l.bridge.as_ref().map(|b| b.index))
            })
            .collect();
        for b in bridges {
            topo.ports.extend(host.bridge_ports(b, &traced));
        }
        if !args.no_uplinks {
            topo.uplinks = host.uplinks();
        }
    }
    Ok(topo)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_MONOTONIC is what bpf_ktime_get_ns() reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn points_of(attach: &[AttachPoint]) -> Points {
    attach
        .iter()
        .map(|p| {
            (
                p.ifindex,
                PointInfo {
                    name: p.name.clone(),
                    role: p.role,
                    container: p.container.clone(),
                },
            )
        })
        .collect()
}

/// The start-up lines (what was found, attached, or unavailable): printed on stderr as they
/// come, and kept for the dashboard's status area.
#[derive(Default)]
struct Startup(Vec<String>);

impl Startup {
    fn say(&mut self, line: String) {
        eprintln!("{line}");
        self.0.push(line);
    }
}

/// Attaches the drop tracepoints and the netfilter observers, saying what worked; tracing
/// goes on with whatever is available.
fn attach_netfilter_and_drops(
    ebpf: &mut aya::Ebpf,
    have_offsets: bool,
    notes: &mut Startup,
) -> Option<netfilter::NetfilterObservers> {
    if !have_offsets {
        return None;
    }
    let btf = aya::Btf::from_sys_fs().ok();
    notes.say(capabilities::describe(&capabilities::probe(
        ebpf,
        btf.as_ref(),
    )));
    for tp in ["kfree_skb", "consume_skb"] {
        match drops::attach(ebpf, btf.as_ref(), tp) {
            Ok(m) => notes.say(format!("attached {tp} via {m}")),
            Err(e) => notes.say(format!(
                "not attached: {tp} ({e}); drops will not be reported"
            )),
        }
    }
    match netfilter::attach(ebpf, loader::object()) {
        Ok(nf) => {
            notes.say(format!(
                "attached netfilter observers via BPF netfilter links ({} links: {} IPv4 hooks × {} priorities)",
                nf.links,
                tracer_common::netfilter::HOOK_NAMES.len(),
                tracer_common::netfilter::SLOT_PRIORITIES.len()
            ));
            Some(nf)
        }
        Err(e) => {
            notes.say(format!(
                "not attached: netfilter observers ({e}); hooks and tables will not be shown"
            ));
            None
        }
    }
}

/// What the explainer needs from this host.
fn explainer(topo: &Topology, reasons: Vec<(String, i64)>) -> Explainer {
    let kallsyms = Kallsyms::load();
    let mut ex = Explainer::empty();
    ex.reasons = reasons
        .into_iter()
        .filter_map(|(n, v)| u32::try_from(v).ok().map(|v| (v, n)))
        .collect();
    ex.symbol = Box::new(move |addr| kallsyms.function(addr).map(str::to_owned));
    ex.netns_names = topo
        .containers
        .iter()
        .map(|c| (c.netns.inode as u32, c.info.name.clone()))
        .collect();
    ex.host_netns = Netns::open(std::path::Path::new("/proc/self/ns/net"))
        .map(|n| n.inode as u32)
        .unwrap_or(0);
    ex.ruleset = Ruleset::read();
    ex.reread = Box::new(Ruleset::read);
    ex
}

pub async fn trace(args: TraceArgs) -> Result<()> {
    // First of all, so that Ctrl-C during start-up still detaches everything on the way out.
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let topo = discover(&args).await?;
    let attach_points = topo.attach_points();
    if attach_points.is_empty() {
        return Err(Error::NoTarget);
    }
    let mut notes = Startup::default();
    for line in topo.describe() {
        notes.say(line);
    }

    // Struct offsets and drop-reason names from the running kernel's BTF.
    let kernel_btf = btf::Btf::from_sys_fs();
    let offsets = match kernel_btf
        .as_ref()
        .map_err(ToString::to_string)
        .and_then(|b| offsets::from_btf(b).map_err(|e| e.to_string()))
    {
        Ok(o) => o,
        Err(e) => {
            notes.say(format!(
                "BTF: {e}; netfilter and drop tracing are unavailable (tc hops still work)"
            ));
            Offsets::zeroed()
        }
    };
    let reasons = kernel_btf
        .as_ref()
        .ok()
        .and_then(|b| b.enum_values("skb_drop_reason").ok())
        .unwrap_or_default();

    // Declared before `ebpf` so that it is dropped after it: links first, then our qdiscs.
    let mut qdiscs = tc::QdiscGuard::default();
    // 0: the whole packet, as far as one observation can carry.
    let snaplen = match args.snaplen {
        0 => MAX_SNAP as u32 - 1,
        n => n.min(MAX_SNAP as u32 - 1),
    };
    let mut ebpf = loader::load(&offsets, snaplen)?;
    // Before any map is taken out of `ebpf`: the netfilter loader relocates against all of them.
    let _nf = attach_netfilter_and_drops(&mut ebpf, offsets.valid != 0, &mut notes);
    let mut counters = Counters::take(&mut ebpf)?;
    for p in &attach_points {
        for d in [Direction::Ingress, Direction::Egress] {
            counters.register(PointKey::new(p.ifindex, d as u8))?;
        }
    }
    let mut stream = EventStream::take(&mut ebpf)?;
    let attached = tc::attach(&mut ebpf, &attach_points, &mut qdiscs)?;
    for a in attached
        .iter()
        .filter(|a| a.direction == Direction::Ingress)
    {
        notes.say(format!(
            "attached tc ingress+egress on {} ({}, ifindex {}) via {}",
            a.point.name, a.point.role, a.point.ifindex, a.mechanism
        ));
    }

    let names: Vec<(u32, String)> = attach_points
        .iter()
        .map(|p| (p.ifindex, p.name.clone()))
        .collect();
    let clock = WallClock::measure();
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    let filter = PacketFilter {
        protos: args.protos.clone(),
        hosts: args.hosts.clone(),
        ports: args.ports.clone(),
    };
    let explainer = explainer(&topo, reasons);
    let mut pipeline = Pipeline::new(
        points_of(&attach_points),
        explainer,
        filter,
        format,
        args.flows,
        clock,
    );
    if !args.raw {
        pipeline.limit = args.count;
    }
    if let Some(path) = &args.write {
        let opts = RecordOptions {
            path: path.clone(),
            rotate: args.rotate,
            max_files: args.max_files,
            snaplen: 0,
        };
        let recorder = Recorder::create(opts, section_comment(&topo, &attached))
            .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
        notes.say(format!(
            "recording to {} (pcapng, mode 0600)",
            path.display()
        ));
        pipeline.recorder = Some(recorder);
    }
    let tui_mode =
        std::io::stdout().is_terminal() && !(args.json || args.raw || args.flows || args.no_tui);
    let headless =
        !tui_mode && (args.write.is_some() || args.no_tui || !std::io::stdout().is_terminal());
    let roles: std::collections::HashMap<u32, String> = attach_points
        .iter()
        .map(|p| (p.ifindex, p.role.to_string()))
        .collect();
    let mut dashboard = None;
    if tui_mode {
        let (tx, rx) = tokio::sync::mpsc::channel(8192);
        for line in &notes.0 {
            let _ = tx.try_send(Feed::Status(line.clone()));
        }
        // Nothing may draw over the dashboard: log lines go nowhere while it is up.
        log::set_max_level(log::LevelFilter::Off);
        pipeline.tui = Some(tx.clone());
        dashboard = Some((tx, tokio::spawn(crate::tui::run(rx, title(&topo)))));
    }
    let started = std::time::Instant::now();
    let mut last_progress = started;
    let raw_names: raw::IfNames = names.iter().cloned().collect();

    // Only now is everything in place (including the ruleset baseline for rule attribution).
    eprintln!("tracing… (Ctrl-C to stop)");
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(TICK);

    // Not `stdout().lock()`: the dashboard writes to stdout from another thread.
    let mut out = BufWriter::new(std::io::stdout());
    let werr = |e| Error::io("writing output", e);
    let mut batch = Vec::new();
    let mut raw_shown: u64 = 0;
    let mut lost_reported: u64 = 0;
    'run: loop {
        tokio::select! {
            r = stream.next_batch(&mut batch) => r?,
            _ = tick.tick() => {
                pipeline.tick(monotonic_ns(), &mut out).map_err(werr)?;
                let lost: u64 = counters.read().values().map(|c| c.lost).sum();
                if lost > lost_reported {
                    writeln!(out, "{}", pipeline.format().lost(lost - lost_reported)).map_err(werr)?;
                    lost_reported = lost;
                }
                if let Some((tx, _)) = &dashboard {
                    let hops = counters
                        .totals(&names)
                        .into_iter()
                        .zip(names.iter().flat_map(|(i, _)| [*i, *i]))
                        .map(|(h, ifindex)| HopCount {
                            role: roles.get(&ifindex).cloned().unwrap_or_default(),
                            iface: h.iface,
                            direction: h.direction,
                            packets: h.packets,
                            bytes: h.bytes,
                            lost: h.lost,
                        })
                        .collect();
                    let _ = tx.try_send(Feed::Counters(hops));
                    let _ = tx.try_send(Feed::Lost(lost));
                    let _ = tx.try_send(Feed::RingFill(counters.ring_fill()));
                    if let Some(r) = &pipeline.recorder {
                        let _ = tx.try_send(Feed::Recording { path: r.path().display().to_string(), bytes: r.bytes_written() });
                    }
                }
                if headless && last_progress.elapsed() >= PROGRESS {
                    last_progress = std::time::Instant::now();
                    eprintln!("{}", progress(&pipeline, lost, started.elapsed()));
                }
            }
            _ = async { if let Some((_, t)) = dashboard.as_mut() { let _ = t.await; } }, if dashboard.is_some() => {
                // The user quit the dashboard.
                dashboard = None;
                break 'run;
            }
            _ = sigint.recv() => break 'run,
            _ = sigterm.recv() => break 'run,
            _ = &mut deadline => break 'run,
        }
        for obs in batch.drain(..) {
            if args.raw {
                if args.count.is_some_and(|n| raw_shown >= n) {
                    break;
                }
                let line = if args.json {
                    raw::json(&obs, &raw_names, &clock).to_string()
                } else {
                    raw::text(&obs, &raw_names, &clock)
                };
                writeln!(out, "{line}").map_err(werr)?;
                raw_shown += 1;
            } else {
                pipeline.observe(obs);
            }
        }
        pipeline.flush_ready(&mut out).map_err(werr)?;
        out.flush().map_err(werr)?;
        if (args.raw && args.count.is_some_and(|n| raw_shown >= n)) || pipeline.reached_limit() {
            break 'run;
        }
    }

    let mut summary = pipeline.finish(&mut out).map_err(werr)?;
    if let Some((tx, task)) = dashboard.take() {
        // Stopped by --duration/--count: say so and leave the screen up until q.
        // Stopped by a signal: the dashboard ends itself on SIGINT/SIGTERM too.
        let _ = tx.try_send(Feed::Finished("tracing stopped (q to quit)".into()));
        drop(tx);
        pipeline.tui = None;
        let _ = task.await;
        log::set_max_level(log::LevelFilter::Warn);
    }
    if args.raw {
        summary.packets = raw_shown;
    }
    summary.hops = counters.totals(&names);
    summary.lost = summary.hops.iter().map(|h| h.lost).sum();
    if summary.lost > lost_reported {
        writeln!(
            out,
            "{}",
            pipeline.format().lost(summary.lost - lost_reported)
        )
        .map_err(werr)?;
    }
    let text = pipeline.format().summary(&summary);
    if args.json {
        writeln!(out, "{text}").map_err(werr)?;
    } else {
        out.flush().map_err(werr)?;
        eprintln!("{text}");
    }
    out.flush().map_err(werr)?;
    drop(ebpf);
    drop(qdiscs);
    Ok(())
}
