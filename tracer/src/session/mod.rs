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

use crate::{correlate::packet::PointInfo, target::docker::Lifecycle};

mod churn;
mod setup;

use setup::{
    attach_netfilter_and_drops, discover, explainer, monotonic_ns, points_of, progress,
    section_comment, title, Startup,
};

use crate::{
    cli::TraceArgs,
    error::{Error, Result},
    events::{clock::WallClock, ringbuf::EventStream},
    output::{
        raw,
        record::{RecordOptions, Recorder},
        Format,
    },
    pcapfilter::CompiledFilter,
    pipeline::Pipeline,
    probe::{btf, counters::Counters, loader, offsets, scope::ScopeMaps, tc, tc_ledger},
    select::PacketFilter,
    target::{ruleset::Ruleset, scope::Scope},
    tui::{Feed, HopCount},
};

/// How often pending packets are completed and loss counters read.
const TICK: Duration = Duration::from_millis(50);
/// How often `--counters --json` prints the counters.
const COUNTERS_JSON: Duration = Duration::from_secs(1);
/// How often a headless run says how it is doing (on stderr).
const PROGRESS: Duration = Duration::from_secs(5);

pub async fn trace(args: TraceArgs) -> Result<()> {
    // First of all, so that Ctrl-C during start-up still detaches everything on the way out.
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    // A bad expression is the user's first mistake to hear about: before Docker or the kernel.
    // `--proto`, `--host` and `--port` run in the kernel with the expression.
    let expression = crate::select::combined_expression(
        args.filter_expression(),
        crate::select::criteria_expression(&args.protos, &args.hosts, &args.ports),
    );
    let compiled = expression.as_deref().map(CompiledFilter::new).transpose()?;
    let (topo, docker) = discover(&args).await?;
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
    if offsets.valid != 0 {
        notes.say(format!(
            "struct offsets from this kernel's BTF: sk_buff.len +{} .data +{} .dev +{} .mark +{}; nf_hook_state.in +{}",
            offsets.skb_len, offsets.skb_data, offsets.skb_dev, offsets.skb_mark, offsets.state_in
        ));
    }
    let reasons = kernel_btf
        .as_ref()
        .ok()
        .and_then(|b| b.enum_values("skb_drop_reason").ok())
        .unwrap_or_default();

    // What a killed run left (netlink filters, clsact qdiscs): removed before we attach.
    for swept in tc_ledger::sweep() {
        notes.say(format!(
            "removed what a killed flowtrace (pid {}) left: {} tc filter(s), {} clsact qdisc(s){}",
            swept.pid,
            swept.filters,
            swept.qdiscs,
            match swept.gone {
                0 => String::new(),
                n => format!(" ({n} already gone)"),
            }
        ));
    }
    // Owns the netlink filters and the qdiscs we add; removes them, and its file, when dropped.
    let mut ledger = tc_ledger::Ledger::default();
    // 0: the whole packet, as far as one observation can carry.
    let snaplen = match args.snaplen {
        0 => MAX_SNAP as u32 - 1,
        n => n.min(MAX_SNAP as u32 - 1),
    };
    // Which tables run at which hook: where the netfilter observers go, and how drops are named.
    let ruleset = Ruleset::read();
    let mut ebpf = loader::load(&offsets, snaplen, !args.counters, compiled.is_some())?;
    // Before any map is taken out of `ebpf`: the netfilter loader relocates against all of them.
    // --counters: no per-packet events, so nothing for the netfilter and drop layers to add.
    let _nf = if args.counters {
        notes.say(
            "counters only: no per-packet events, netfilter and drop layers not attached".into(),
        );
        None
    } else {
        attach_netfilter_and_drops(
            &mut ebpf,
            offsets.valid != 0,
            ruleset.as_ref(),
            args.nf_attach,
            &mut notes,
        )
    };
    let mut counters = Counters::take(&mut ebpf)?;
    for p in &attach_points {
        for d in [Direction::Ingress, Direction::Egress] {
            counters.register(PointKey::new(p.ifindex, d as u8))?;
        }
    }
    // Which packets are the targets': decided in the kernel, before the ring buffer.
    let mut scope_maps = ScopeMaps::take(&mut ebpf)?;
    let mut all_points = attach_points.clone();
    let mut containers = topo.containers.clone();
    let dnat = ruleset
        .as_ref()
        .map(crate::target::scope::dnat_rules)
        .unwrap_or_default();
    let scope_of = |containers: &[_], points: &[_]| {
        let mut s = Scope::of(containers, points);
        s.add_dnat_ports(&dnat);
        s
    };
    scope_maps.set(scope_of(&containers, &all_points))?;
    if !args.counters {
        notes.say(scope_maps.current().describe());
    }
    let mut stream = EventStream::take(&mut ebpf)?;
    let _kernel_filter = match &compiled {
        Some(f) => {
            let k = crate::pcapfilter::kernel::install(&mut ebpf, f)?;
            notes.say(format!(
                "filter `{}`: libpcap's {} classic BPF instructions run as {} eBPF instructions in the tc programs, before the ring buffer; a matching packet is followed across NAT, and so is its reply from before de-NAT",
                f.expr,
                f.classic.len(),
                k.instructions
            ));
            Some(k)
        }
        None => None,
    };
    let attached = tc::attach(&mut ebpf, &attach_points, args.tc_attach, &mut ledger)?;
    for a in attached
        .iter()
        .filter(|a| a.direction == Direction::Ingress)
    {
        notes.say(format!(
            "attached tc ingress+egress on {} ({}, ifindex {}) via {}",
            a.point.name, a.point.role, a.point.ifindex, a.mechanism
        ));
    }

    let mut names: Vec<(u32, String)> = attach_points
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
        pcap: compiled.map(|f| std::sync::Arc::new(f.program)),
    };
    let explainer = explainer(&topo, reasons, ruleset);
    let mut pipeline = Pipeline::new(
        points_of(&attach_points),
        explainer,
        filter,
        format,
        args.flows,
        clock,
    );
    pipeline.set_scope(scope_maps.current().clone());
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
        let recorder =
            Recorder::create(opts, section_comment(&topo, &attached)).map_err(|source| {
                Error::Output {
                    path: path.clone(),
                    source,
                }
            })?;
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
    let mut roles: std::collections::HashMap<u32, String> = attach_points
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
    let mut last_counters = started;
    let raw_names: raw::IfNames = names.iter().cloned().collect();

    // For the exit-path tests: a panic with everything attached must leave nothing behind.
    if std::env::var_os("FLOWTRACE_TEST_PANIC_AFTER_ATTACH").is_some() {
        panic!("FLOWTRACE_TEST_PANIC_AFTER_ATTACH is set");
    }
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
    // Restarts and stops of the traced containers.
    let watched: Vec<String> = topo
        .containers
        .iter()
        .map(|c| c.info.name.clone())
        .collect();
    let mut lifecycle = docker.as_ref().filter(|_| !watched.is_empty()).map(|d| {
        let ids: Vec<(String, String)> = containers
            .iter()
            .filter(|c| !c.info.id.is_empty())
            .map(|c| (c.info.id.clone(), c.info.name.clone()))
            .collect();
        Box::pin(d.lifecycle(&watched, &ids))
    });
    let mut attached_ifs: BTreeSet<u32> = attach_points.iter().map(|p| p.ifindex).collect();
    'run: loop {
        tokio::select! {
            r = stream.next_batch(&mut batch) => r?,
            Some(ev) = async {
                match lifecycle.as_mut() {
                    Some(s) => futures_util::StreamExt::next(s).await,
                    None => std::future::pending().await,
                }
            } => {
                let (name, note) = match ev {
                    Lifecycle::Stopped { name, .. } => {
                        (name.clone(), format!("container {name} stopped; waiting for it to start again"))
                    }
                    ev @ (Lifecycle::Started { .. } | Lifecycle::Networks { .. }) => {
                        let networks = matches!(ev, Lifecycle::Networks { .. });
                        let (Lifecycle::Started { name, .. } | Lifecycle::Networks { name, .. }) = ev else { continue };
                        let Some(d) = docker.as_ref() else { continue };
                        if networks {
                            // Docker says so a moment before the interface is in place.
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        match churn::resolve(d, &name, &attached_ifs).await {
                            Err(e) => (name.clone(), format!("container {name} started, but cannot be traced: {e}")),
                            Ok(r) => {
                                tc::attach(&mut ebpf, &r.new_points, args.tc_attach, &mut ledger)?;
                                for p in &r.new_points {
                                    for d in [Direction::Ingress, Direction::Egress] {
                                        counters.register(PointKey::new(p.ifindex, d as u8))?;
                                    }
                                    attached_ifs.insert(p.ifindex);
                                    names.push((p.ifindex, p.name.clone()));
                                    roles.insert(p.ifindex, p.role.to_string());
                                    let info = PointInfo { name: p.name.clone(), role: p.role, container: p.container.clone() };
                                    pipeline.add_point(p.ifindex, info, Some(r.path.netns.inode as u32));
                                }
                                // The scope follows: its veths, addresses and published ports now.
                                churn::replace(&mut containers, &mut all_points, r.path.clone(), &r.new_points);
                                let scope = scope_of(&containers, &all_points);
                                let ch = scope_maps.set(scope.clone())?;
                                pipeline.set_scope(scope);
                                let where_: Vec<String> = r.new_points.iter().map(|p| format!("{} ({}, ifindex {})", p.name, p.role, p.ifindex)).collect();
                                (name.clone(), format!(
                                    "container {name} (re)started or changed networks (pid {}): attached on {}; {}",
                                    r.path.info.pid,
                                    if where_.is_empty() { "the same interfaces".to_owned() } else { where_.join(", ") },
                                    churn::describe_changes(&ch),
                                ))
                            }
                        }
                    }
                };
                if let Some((tx, _)) = &dashboard {
                    let _ = tx.try_send(Feed::Status(note));
                } else {
                    eprintln!("{note}");
                    if args.json {
                        let line = serde_json::json!({"type": "container", "container": name, "note": note});
                        writeln!(out, "{line}").map_err(werr)?;
                    }
                }
            }
            _ = tick.tick() => {
                pipeline.tick(monotonic_ns(), &mut out).map_err(werr)?;
                let lost: u64 = counters.read().values().map(|c| c.lost).sum();
                if lost > lost_reported {
                    pipeline.report_lost(lost - lost_reported, monotonic_ns(), &mut out).map_err(werr)?;
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
                if args.counters && dashboard.is_none() {
                    let every = if args.json { COUNTERS_JSON } else { PROGRESS };
                    if last_counters.elapsed() >= every {
                        last_counters = std::time::Instant::now();
                        let hops = counters.totals(&names);
                        writeln!(out, "{}", pipeline.format().counters(&hops, &clock.rfc3339(monotonic_ns()))).map_err(werr)?;
                    }
                } else if headless && last_progress.elapsed() >= PROGRESS {
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
    summary.discarded.malformed = stream.malformed;
    summary.lost = summary.hops.iter().map(|h| h.lost).sum();
    if summary.lost > lost_reported {
        pipeline
            .report_lost(summary.lost - lost_reported, monotonic_ns(), &mut out)
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
    drop(ledger);
    Ok(())
}
