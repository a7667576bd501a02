//! One tracing session, in the order the data flows: discover the targets → attach probes →
//! read events → present them → summarise. Everything attached is detached when this returns,
//! whether by Ctrl-C, SIGTERM, `--duration`, `--count` or an error (`kernel::Kernel` owns it).

use std::{
    io::{BufWriter, IsTerminal},
    time::{Duration, Instant},
};

use tokio::signal::unix::{signal, SignalKind};

mod churn;
mod kernel;
mod live;
mod nftrace;
mod setup;

use live::{scope_of, Dashboard, Live};
use setup::{discover, explainer, points_of, section_comment, title, Startup};

use crate::{
    allocator::release_freed,
    cli::TraceArgs,
    correlate::explain::Explainer,
    error::{Error, Result},
    events::clock::WallClock,
    output::{
        record::{RecordOptions, Recorder},
        Format,
    },
    pcapfilter::CompiledFilter,
    pipeline::Pipeline,
    select::PacketFilter,
    target::{
        docker::Docker,
        ruleset::Ruleset,
        topology::{AttachPoint, Topology},
    },
    tui::Feed,
};

/// Bytes of stdout written at once at most. `Live::out` is flushed after every batch read
/// from the ring (so a reader of the pipe waits no longer than that); within a batch, this
/// makes one write(2) per 64 KiB rather than per 8 KiB (three or so JSON packets).
const STDOUT_BUFFER: usize = 64 * 1024;

pub async fn trace(args: TraceArgs) -> Result<()> {
    // First of all, so that Ctrl-C during start-up still detaches everything on the way out.
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    // A dropped ssh session (SIGHUP) and SIGQUIT end the run as SIGTERM does: cleanup, the
    // recording flushed, the summary.
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| Error::io("SIGHUP handler", e))?;
    let mut sigquit = signal(SignalKind::quit()).map_err(|e| Error::io("SIGQUIT handler", e))?;
    // A signal during start-up (Docker slow to answer, say) is honoured at once: what was
    // attached so far is detached as the start-up is dropped.
    let (mut live, topo, docker) = tokio::select! {
        r = start(args) => r?,
        _ = sigint.recv() => return stopped_during_startup("SIGINT"),
        _ = sigterm.recv() => return stopped_during_startup("SIGTERM"),
        _ = sighup.recv() => return stopped_during_startup("SIGHUP"),
        _ = sigquit.recv() => return stopped_during_startup("SIGQUIT"),
    };

    // For the exit-path tests: a panic with everything attached must leave nothing behind.
    // Only in the debug builds the tests run, never in a release.
    #[cfg(debug_assertions)]
    if std::env::var_os("FLOWTRACE_TEST_PANIC_AFTER_ATTACH").is_some() {
        panic!("FLOWTRACE_TEST_PANIC_AFTER_ATTACH is set");
    }
    settle(&live);
    let forever = Duration::from_secs(u64::MAX / 4);
    let deadline = tokio::time::sleep(live.args.duration.unwrap_or(forever));
    tokio::pin!(deadline);
    // Completes pending packets and reads the loss counters: every `TICK` while anything is
    // in flight, less often while idle (`Live::tick_every`), and brought back to `TICK` as
    // soon as records arrive.
    let tick = tokio::time::sleep(live::TICK);
    tokio::pin!(tick);
    let mut batch = Vec::new();
    // Restarts and stops of the traced containers.
    let watched: Vec<String> = topo
        .containers
        .iter()
        .map(|c| c.info.name.clone())
        .collect();
    let mut lifecycle = docker.as_ref().filter(|_| !watched.is_empty()).map(|d| {
        let ids: Vec<(String, String)> = live
            .containers
            .iter()
            .filter(|c| !c.info.id.is_empty())
            .map(|c| (c.info.id.clone(), c.info.name.clone()))
            .collect();
        Box::pin(d.lifecycle(&watched, &ids))
    });
    loop {
        tokio::select! {
            r = live.kernel.stream.next_batch(&mut batch) => {
                r?;
                let soon = tokio::time::Instant::now() + live::TICK;
                if tick.deadline() > soon {
                    tick.as_mut().reset(soon);
                }
            }
            Some(ev) = async {
                match lifecycle.as_mut() {
                    Some(s) => futures_util::StreamExt::next(s).await,
                    None => std::future::pending().await,
                }
            } => live.container_event(ev, docker.as_ref())?,
            Some((name, r)) = live.resolving.1.recv() => live.resolved(name, r)?,
            () = &mut tick => {
                live.tick(&mut batch)?;
                tick.as_mut().reset(tokio::time::Instant::now() + live.tick_every());
            }
            _ = async { if let Some((_, t)) = live.dashboard.as_mut() { let _ = t.await; } },
                if live.dashboard.is_some() => {
                // The user quit the dashboard.
                live.dashboard = None;
                break;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
            _ = sigquit.recv() => break,
            _ = &mut deadline => break,
        }
        if live.drain(&mut batch)? {
            break;
        }
    }
    // What the ring still holds from before the stop (not wanted once `--count` is reached).
    live.catch_up(&mut batch)?;
    live.finish().await
}

/// Start-up is over: capabilities lowered, start-up's memory handed back, and "tracing…"
/// said where the user looks.
fn settle(live: &Live) {
    let note = lower_privileges(live.args.rotate.is_some());
    // Start-up parsed the kernel's BTF, the eBPF object and the rulesets, and freed them:
    // hand that memory back now rather than hold it for the whole run.
    release_freed();
    crate::allocator::started();
    if let Some((rss, peak)) = crate::allocator::memory_kib() {
        log::debug!(
            "memory after start-up: RSS {} MiB, peak {} MiB",
            rss / 1024,
            peak / 1024
        );
    }
    // Only now is everything in place (including the ruleset baseline for rule attribution).
    // On the dashboard's status line while it is up (nothing is written over it), else on
    // stderr (not a container's note: no JSON line).
    for line in note
        .into_iter()
        .chain(["tracing… (Ctrl-C to stop)".to_owned()])
    {
        crate::logging::note(&line);
        match live.dashboard.as_ref() {
            Some((tx, _)) => {
                let _ = tx.try_send(Feed::Status(line));
            }
            None => eprintln!("{line}"),
        }
    }
}

/// Everything is attached: keep only the capabilities still used (every thread follows); the
/// line that says so.
fn lower_privileges(rotating: bool) -> Option<String> {
    let keep = crate::probe::privilege::kept(rotating);
    match crate::probe::privilege::lower(keep) {
        Ok(gone) if gone.is_empty() => None,
        Ok(gone) => Some(format!(
            "privileges: dropped {} capabilities (kept CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, \
             CAP_NET_RAW, CAP_SYS_ADMIN, CAP_SYS_PTRACE{}); no_new_privs set",
            gone.len(),
            if rotating { ", CAP_DAC_OVERRIDE" } else { "" }
        )),
        Err(e) => Some(format!(
            "privileges: could not drop capabilities ({e}); running with them"
        )),
    }
}

fn stopped_during_startup(signal: &str) -> Result<()> {
    eprintln!("{signal} during start-up: stopped; nothing is left attached");
    Ok(())
}

/// Everything up to the first event: the filter, the targets, the kernel's facts, the
/// attachments, the pipeline and its sinks.
async fn start(args: TraceArgs) -> Result<(Live, Topology, Option<Docker>)> {
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
    let (offsets, reasons) = kernel::kernel_facts(&mut notes);
    release_freed();
    kernel::sweep(&mut notes);
    // Which tables run at which hook: where the netfilter observers go, and how drops are named.
    let read_ns = setup::monotonic_ns();
    let ruleset = Ruleset::read();
    let dnat = ruleset
        .as_ref()
        .map(crate::target::scope::dnat_rules)
        .unwrap_or_default();
    let containers = topo.containers.clone();
    let scope = scope_of(&containers, &attach_points, &dnat);
    let kernel = kernel::attach(
        &args,
        &offsets,
        ruleset.as_ref(),
        compiled.as_ref(),
        &attach_points,
        scope,
        &mut notes,
    )?;
    let clock = WallClock::measure();
    let explainer = explainer(&topo, reasons, ruleset, read_ns);
    let (explainer, nftrace, hold_ns) = with_nftrace(&args, &kernel, explainer, &mut notes);
    let mut pipeline = pipeline(&args, &attach_points, explainer, compiled, clock);
    pipeline.set_scope(kernel.scope_maps.current().clone());
    pipeline.hold_ns = hold_ns;
    if !args.raw {
        pipeline.limit = args.count;
    }
    if let Some(path) = &args.write {
        pipeline.add_sink(Box::new(recorder(
            &args,
            path,
            &topo,
            &kernel.attached,
            &clock,
            &mut notes,
        )?));
        if !args.prints_packets() {
            pipeline.record_only();
        }
    }
    let (tui_mode, headless) = display_mode(&args);
    let dashboard = tui_mode.then(|| dashboard(&mut pipeline, &notes, &topo));
    let names: Vec<(u32, String)> = attach_points
        .iter()
        .map(|p| (p.ifindex, p.name.clone()))
        .collect();
    let started = Instant::now();
    let live = Live {
        kernel,
        nftrace,
        pipeline,
        clock,
        dashboard,
        out: BufWriter::with_capacity(STDOUT_BUFFER, std::io::stdout()),
        roles: role_names(&attach_points),
        raw_names: names.iter().cloned().collect(),
        names,
        containers,
        attached_ifs: attach_points.iter().map(|p| p.ifindex).collect(),
        resolving: tokio::sync::mpsc::channel(16),
        all_points: attach_points,
        dnat,
        headless,
        started,
        last_progress: started,
        last_counters: started,
        last_evicted: started,
        raw_shown: 0,
        lost_reported: 0,
        args,
    };
    Ok((live, topo, docker))
}

/// The explainer, told which netfilter slots observe, and given nftrace's decisions (each
/// table's deciding rule, marked for the traced packets only) when nftrace runs; with how long
/// a packet waits for them.
fn with_nftrace(
    args: &TraceArgs,
    kernel: &kernel::Kernel,
    mut explainer: Explainer,
    notes: &mut Startup,
) -> (Explainer, Option<nftrace::Nftrace>, u64) {
    explainer.linked = kernel.nf_slots;
    let started = (!(args.no_nftrace || args.counters || args.raw))
        .then(|| nftrace::start(kernel.scope_maps.current(), args.nftrace_rate, notes))
        .flatten();
    match started {
        Some((n, decisions)) => {
            explainer.decisions = Some(decisions);
            (explainer, Some(n), nftrace::HOLD_NS)
        }
        None => (explainer, None, 0),
    }
}

/// Whether the dashboard takes the terminal, and whether the run is headless (progress on
/// stderr).
fn display_mode(args: &TraceArgs) -> (bool, bool) {
    let terminal = std::io::stdout().is_terminal();
    let tui_mode = terminal && !(args.json || args.raw || args.flows || args.no_tui);
    let headless = !tui_mode && (args.write.is_some() || args.no_tui || !terminal);
    (tui_mode, headless)
}

/// The pipeline: the points, the explainer, what is shown and how.
fn pipeline(
    args: &TraceArgs,
    attach_points: &[AttachPoint],
    explainer: Explainer,
    compiled: Option<CompiledFilter>,
    clock: WallClock,
) -> Pipeline {
    let filter = PacketFilter {
        protos: args.protos.clone(),
        hosts: args.hosts.clone(),
        ports: args.ports.clone(),
        pcap: compiled.map(|f| std::sync::Arc::new(f.program)),
    };
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    Pipeline::new(
        points_of(attach_points),
        explainer,
        filter,
        format,
        args.flows,
        clock,
    )
}

fn role_names(points: &[AttachPoint]) -> std::collections::HashMap<u32, String> {
    points
        .iter()
        .map(|p| (p.ifindex, p.role.to_string()))
        .collect()
}

/// `--write`: the recording, mode 0600.
fn recorder(
    args: &TraceArgs,
    path: &std::path::Path,
    topo: &Topology,
    attached: &[crate::probe::tc::Attached],
    clock: &WallClock,
    notes: &mut Startup,
) -> Result<Recorder> {
    let opts = RecordOptions {
        path: path.to_owned(),
        rotate: args.rotate,
        max_files: args.max_files.map(|n| n as usize),
        snaplen: 0,
        wall_offset_ns: clock.offset_ns(),
    };
    let recorder = Recorder::create(opts, section_comment(topo, attached)).map_err(|source| {
        Error::Output {
            path: path.to_owned(),
            source,
        }
    })?;
    notes.say(format!(
        "recording to {} (pcapng, mode 0600)",
        path.display()
    ));
    Ok(recorder)
}

/// The dashboard, fed the start-up lines; the pipeline's packets go there instead of stdout.
fn dashboard(pipeline: &mut Pipeline, notes: &Startup, topo: &Topology) -> Dashboard {
    let (tx, rx) = tokio::sync::mpsc::channel(8192);
    for line in &notes.0 {
        let _ = tx.try_send(Feed::Status(line.clone()));
    }
    // Nothing may draw over the dashboard: warnings go to its status line while it is up.
    let to = tx.clone();
    crate::logging::dashboard(Some(Box::new(move |line| {
        let _ = to.try_send(Feed::Status(line));
    })));
    pipeline.show_on_dashboard(Box::new(tx.clone()));
    (tx, tokio::spawn(crate::tui::run(rx, title(topo))))
}
