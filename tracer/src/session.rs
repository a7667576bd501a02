//! One tracing session, in the order the data flows: discover the targets → attach probes →
//! read events → present them → summarise. Everything attached is detached when this returns,
//! whether by Ctrl-C, SIGTERM, `--duration`, `--count` or an error.

use std::{collections::BTreeSet, io::Write, time::Duration};

use tokio::signal::unix::{signal, SignalKind};
use tracer_common::{Direction, PointKey};

use crate::{
    cli::TraceArgs,
    error::{Error, Result},
    events::{clock::WallClock, ringbuf::EventStream},
    output::raw::{self, IfNames},
    probe::{counters::Counters, loader, tc},
    target::{
        docker::Docker,
        topology::{container_path, HostView, Topology},
    },
};

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
        if !args.no_uplinks {
            topo.uplinks = host.uplinks();
        }
    }
    Ok(topo)
}

pub async fn trace(args: TraceArgs) -> Result<()> {
    let topo = discover(&args).await?;
    let points = topo.attach_points();
    if points.is_empty() {
        return Err(Error::NoTarget);
    }
    for line in topo.describe() {
        eprintln!("{line}");
    }

    // Declared before `ebpf` so that it is dropped after it: links first, then our qdiscs.
    let mut qdiscs = tc::QdiscGuard::default();
    let mut ebpf = loader::load()?;
    let mut counters = Counters::take(&mut ebpf)?;
    for p in &points {
        for d in [Direction::Ingress, Direction::Egress] {
            counters.register(PointKey::new(p.ifindex, d as u8))?;
        }
    }
    let mut stream = EventStream::take(&mut ebpf)?;
    let attached = tc::attach(&mut ebpf, &points, &mut qdiscs)?;
    for a in attached
        .iter()
        .filter(|a| a.direction == Direction::Ingress)
    {
        eprintln!(
            "attached tc ingress+egress on {} ({}, ifindex {}) via {}",
            a.point.name, a.point.role, a.point.ifindex, a.mechanism
        );
    }
    eprintln!("tracing… (Ctrl-C to stop)");

    let names: IfNames = points.iter().map(|p| (p.ifindex, p.name.clone())).collect();
    let clock = WallClock::measure();
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut batch = Vec::new();
    let mut shown: u64 = 0;
    'run: loop {
        tokio::select! {
            r = stream.next_batch(&mut batch) => r?,
            _ = sigint.recv() => break 'run,
            _ = sigterm.recv() => break 'run,
            _ = &mut deadline => break 'run,
        }
        for obs in batch.drain(..) {
            let line = if args.json {
                raw::json(&obs, &names, &clock).to_string()
            } else {
                raw::text(&obs, &names, &clock)
            };
            writeln!(out, "{line}").map_err(|e| Error::io("writing output", e))?;
            shown += 1;
            if args.count.is_some_and(|n| shown >= n) {
                break 'run;
            }
        }
        out.flush().map_err(|e| Error::io("writing output", e))?;
    }

    let totals = counters.read();
    let lost: u64 = totals.values().map(|c| c.lost).sum();
    if args.json {
        let hops: Vec<_> = totals
            .iter()
            .map(|(k, c)| {
                serde_json::json!({
                    "iface": names.get(&k.ifindex),
                    "dir": Direction::from_u8(k.direction).map(Direction::as_str),
                    "packets": c.packets, "bytes": c.bytes, "lost": c.lost,
                })
            })
            .collect();
        let summary = serde_json::json!({
            "type": "summary", "observations": shown, "lost": lost,
            "malformed": stream.malformed, "hops": hops,
        });
        writeln!(out, "{summary}").map_err(|e| Error::io("writing output", e))?;
    } else {
        eprintln!("{shown} observations, {lost} lost");
        for (k, c) in &totals {
            eprintln!(
                "  {:<16} {:<7} {:>8} pkts {:>10} bytes",
                names.get(&k.ifindex).map_or("?", String::as_str),
                Direction::from_u8(k.direction).map_or("?", Direction::as_str),
                c.packets,
                c.bytes
            );
        }
    }
    out.flush().map_err(|e| Error::io("writing output", e))?;
    drop(ebpf);
    drop(qdiscs);
    Ok(())
}
