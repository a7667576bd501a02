//! A session while it runs: what the event loop changes, and one method per thing that can
//! happen (a batch of observations, a container event, a tick, the end).

use std::{
    collections::{BTreeSet, HashMap},
    io::{BufWriter, Stdout, Write},
    time::{Duration, Instant},
};

use super::{
    churn,
    kernel::Kernel,
    setup::{monotonic_ns, progress},
};
use crate::{
    cli::TraceArgs,
    correlate::packet::PointInfo,
    error::{Error, Result},
    events::{clock::WallClock, decode::Observation},
    output::raw,
    pipeline::Pipeline,
    target::{
        docker::{Docker, Lifecycle},
        scope::{DnatRule, Scope},
        topology::{AttachPoint, ContainerPath},
    },
    tui::{Feed, HopCount},
};

/// How often `--counters --json` prints the counters.
const COUNTERS_JSON: Duration = Duration::from_secs(1);
/// How often the dashboard learns what the kernel evicted from its tables.
const EVICTED_EVERY: Duration = Duration::from_secs(5);
/// How often a headless run says how it is doing (on stderr).
const PROGRESS: Duration = Duration::from_secs(5);
/// How often pending packets are completed and loss counters read, while anything is in
/// flight.
pub const TICK: Duration = Duration::from_millis(50);
/// The tick while nothing is in flight (the next records read bring it back to `TICK`). A
/// tracer of a quiet container woke 20 times a second for nothing: on these 2-vCPU machines
/// that cost a neighbour's UDP flood 3% of its rate (205 against 198 kpkt/s, four runs each,
/// side by side, with a 500 ms tick).
pub const IDLE_TICK: Duration = Duration::from_millis(500);

/// The time to the next tick: `TICK` when `busy`; else `IDLE_TICK`, or sooner when the next
/// counters line is due (`counters`: the time until then).
pub fn tick_after(busy: bool, counters: Option<Duration>) -> Duration {
    if busy {
        return TICK;
    }
    counters.map_or(IDLE_TICK, |c| c.clamp(TICK, IDLE_TICK))
}

fn werr(e: std::io::Error) -> Error {
    Error::io("writing output", e)
}

/// A container looked up again: its name and where it is now.
pub(super) type Resolution = (String, Result<churn::Restarted>);
pub(super) type Resolving = (
    tokio::sync::mpsc::Sender<Resolution>,
    tokio::sync::mpsc::Receiver<Resolution>,
);

/// The dashboard, while it is up: its feed and its task.
pub(super) type Dashboard = (
    tokio::sync::mpsc::Sender<Feed>,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

pub(super) struct Live {
    pub args: TraceArgs,
    pub kernel: Kernel,
    /// The nftrace marking table, while it is used.
    pub nftrace: Option<super::nftrace::Nftrace>,
    pub pipeline: Pipeline,
    pub clock: WallClock,
    pub dashboard: Option<Dashboard>,
    /// Not `stdout().lock()`: the dashboard writes to stdout from another thread.
    pub out: BufWriter<Stdout>,
    /// The attached points' names and roles, for the counters.
    pub names: Vec<(u32, String)>,
    pub roles: HashMap<u32, String>,
    pub raw_names: raw::IfNames,
    /// The traced containers and every attached point: what the scope is made of.
    pub containers: Vec<ContainerPath>,
    pub all_points: Vec<AttachPoint>,
    pub attached_ifs: BTreeSet<u32>,
    /// Containers being looked up again after an event, and where their answers arrive.
    pub resolving: Resolving,
    /// DNAT rules of the ruleset, whose ports join the scope.
    pub dnat: Vec<DnatRule>,
    pub headless: bool,
    pub started: Instant,
    pub last_progress: Instant,
    pub last_counters: Instant,
    pub last_evicted: Instant,
    pub raw_shown: u64,
    pub lost_reported: u64,
}

/// The scope of these containers at these points, with the DNAT rules' ports.
pub(super) fn scope_of(
    containers: &[ContainerPath],
    points: &[AttachPoint],
    dnat: &[DnatRule],
) -> Scope {
    let mut s = Scope::of(containers, points);
    s.add_dnat_ports(dnat);
    s
}

impl Live {
    /// Shows or prints the observations; true once `--count` is reached.
    pub fn drain(&mut self, batch: &mut Vec<Observation>) -> Result<bool> {
        let args = &self.args;
        for obs in batch.drain(..) {
            if args.raw {
                if args.count.is_some_and(|n| self.raw_shown >= n) {
                    break;
                }
                let line = if args.json {
                    raw::line(&obs, &self.raw_names, &self.clock).to_json()
                } else {
                    raw::text(&obs, &self.raw_names, &self.clock)
                };
                writeln!(self.out, "{line}").map_err(werr)?;
                self.raw_shown += 1;
            } else {
                self.pipeline.observe(obs);
            }
        }
        self.pipeline.read_until = self.kernel.stream.read_at();
        self.pipeline.flush_ready(&mut self.out).map_err(werr)?;
        self.out.flush().map_err(werr)?;
        Ok(self.counted_out())
    }

    /// Has `--count` been reached (raw lines, or shown packets)?
    fn counted_out(&self) -> bool {
        let raw_done = self.args.raw && self.args.count.is_some_and(|n| self.raw_shown >= n);
        raw_done || self.pipeline.reached_limit()
    }

    /// Reads and shows what the kernel committed before the stop: a signal or the deadline
    /// found records in the ring that the loop had not read yet (a reader behind under a
    /// flood, or the last packets' later hops), which were left there unshown and uncounted.
    /// Bounded: a pass ends where the producer was when it began, so a flood that goes on
    /// cannot keep the stop waiting: at most two passes over the ring (each up to ~80,000
    /// records at the default size). Nothing once `--count` is reached.
    pub fn catch_up(&mut self, batch: &mut Vec<Observation>) -> Result<()> {
        if self.counted_out() {
            return Ok(());
        }
        let stop = monotonic_ns();
        while self.kernel.stream.read_at() < stop {
            self.kernel.stream.read_now(batch);
            if self.drain(batch)? {
                break;
            }
        }
        Ok(())
    }

    /// A traced container stopped, started again or changed networks. Finding where it is
    /// now (Docker, netlink, up to a second of retries) runs on a task of its own so that the
    /// loop keeps draining; its answer comes back as [`Live::resolved`].
    pub fn container_event(&mut self, ev: Lifecycle, docker: Option<&Docker>) -> Result<()> {
        let (name, settle) = match ev {
            Lifecycle::Stopped { name, .. } => {
                let note = format!("container {name} stopped; waiting for it to start again");
                return self.note(&name, note);
            }
            Lifecycle::Note(note) => return self.note("", note),
            Lifecycle::Started { name, .. } => (name, Duration::ZERO),
            // Docker says so a moment before the interface is in place.
            Lifecycle::Networks { name, .. } => (name, Duration::from_millis(300)),
        };
        let Some(docker) = docker.cloned() else {
            return Ok(());
        };
        let attached = self.attached_ifs.clone();
        let tx = self.resolving.0.clone();
        tokio::spawn(async move {
            tokio::time::sleep(settle).await;
            let r = churn::resolve(&docker, &name, &attached).await;
            let _ = tx.send((name, r)).await;
        });
        Ok(())
    }

    /// A container's new whereabouts: attach where it is now, let the scope follow, say so.
    pub fn resolved(&mut self, name: String, r: Result<churn::Restarted>) -> Result<()> {
        let note = match r {
            Err(crate::error::Error::ContainerNotRunning(_)) => {
                format!("container {name} is not running; waiting for it to start again")
            }
            Err(e) => format!("container {name} cannot be traced for now: {e}"),
            Ok(r) => self.follow(&name, r)?,
        };
        self.note(&name, note)
    }

    /// A container's note: on the dashboard's status line, else on stderr (and in `--json`).
    fn note(&mut self, name: &str, mut note: String) -> Result<()> {
        crate::output::terminal::clean(&mut note);
        crate::logging::note(&note);
        if let Some((tx, _)) = &self.dashboard {
            let _ = tx.try_send(Feed::Status(note));
        } else {
            eprintln!("{note}");
            if self.args.json {
                let line = crate::model::ContainerNote {
                    v: crate::model::VERSION,
                    container: name.to_owned(),
                    note: note.clone(),
                };
                writeln!(self.out, "{}", line.to_json()).map_err(werr)?;
            }
        }
        Ok(())
    }

    /// Attaches to the container's new points; the note to give.
    fn follow(&mut self, name: &str, mut r: churn::Restarted) -> Result<String> {
        // Another event's answer may have attached some of them meanwhile.
        r.new_points
            .retain(|p| !self.attached_ifs.contains(&p.ifindex));
        self.kernel.attach_more(&self.args, &r.new_points)?;
        for p in &r.new_points {
            self.attached_ifs.insert(p.ifindex);
            self.names.push((p.ifindex, p.name.clone()));
            self.roles.insert(p.ifindex, p.role.to_string());
            let info = PointInfo {
                name: p.name.as_str().into(),
                role: p.role,
                container: p.container.as_deref().map(Into::into),
                veth: p.veth,
            };
            self.pipeline
                .add_point(p.ifindex, info, Some(r.path.netns.inode as u32));
        }
        // The scope follows: its veths, addresses and published ports now.
        let gone = churn::replace(
            &mut self.containers,
            &mut self.all_points,
            r.path.clone(),
            &r.new_points,
        );
        // The old veths' counter entries are freed (restarts never use the map up); their
        // counts stay in the totals.
        self.kernel.forget(&gone);
        for p in &gone {
            self.attached_ifs.remove(&p.ifindex);
        }
        let scope = scope_of(&self.containers, &self.all_points, &self.dnat);
        let ch = self.kernel.scope_maps.set(scope.clone())?;
        if let Some(note) = self.nftrace.as_mut().and_then(|n| n.follow(&scope)) {
            self.note(name, note)?;
        }
        self.pipeline.set_scope(scope);
        let where_: Vec<String> = r
            .new_points
            .iter()
            .map(|p| format!("{} ({}, ifindex {})", p.name, p.role, p.ifindex))
            .collect();
        let note = format!(
            "container {name} (re)started or changed networks (pid {}): attached on {}; {}",
            r.path.info.pid,
            if where_.is_empty() {
                "the same interfaces".to_owned()
            } else {
                where_.join(", ")
            },
            churn::describe_changes(&ch),
        );
        Ok(note)
    }

    /// How long until the next tick: `TICK` while anything is in flight or on screen, longer
    /// while idle (see [`tick_after`]).
    pub fn tick_every(&self) -> Duration {
        let busy = self.dashboard.is_some() || !self.pipeline.idle();
        let counters = self
            .counters_every()
            .map(|every| every.saturating_sub(self.last_counters.elapsed()));
        tick_after(busy, counters)
    }

    /// How often a counters line is printed (None: none is, e.g. under the dashboard).
    fn counters_every(&self) -> Option<Duration> {
        let every = if self.args.json {
            COUNTERS_JSON
        } else {
            PROGRESS
        };
        (self.args.counters && self.dashboard.is_none()).then_some(every)
    }

    /// Completes pending packets, reports losses, feeds the dashboard its counters, prints
    /// `--counters` and the headless progress line.
    pub fn tick(&mut self, batch: &mut Vec<Observation>) -> Result<()> {
        // What the ring holds now first: packets complete by what has been read, not by the
        // clock alone (a reader behind under a flood would complete them early).
        self.kernel.stream.read_now(batch);
        self.drain(batch)?;
        self.pipeline
            .tick(monotonic_ns(), &mut self.out)
            .map_err(werr)?;
        if let Some(note) = self.nftrace.as_mut().and_then(|n| n.check()) {
            self.note("", note)?;
        }
        let counters = &self.kernel.counters;
        let lost = counters.lost_total();
        if lost > self.lost_reported {
            self.pipeline
                .report_lost(lost - self.lost_reported, monotonic_ns(), &mut self.out)
                .map_err(werr)?;
            self.lost_reported = lost;
        }
        if let Some((tx, _)) = &self.dashboard {
            let hops = counters
                .totals(&self.names)
                .into_iter()
                .zip(self.names.iter().flat_map(|(i, _)| [*i, *i]))
                .map(|(h, ifindex)| HopCount {
                    role: self.roles.get(&ifindex).cloned().unwrap_or_default(),
                    iface: h.iface,
                    direction: h.direction,
                    packets: h.packets,
                    bytes: h.bytes,
                    lost: h.lost,
                })
                .collect();
            // The flows that changed go only once there is room for them: none is missed.
            if let Ok(permit) = tx.try_reserve() {
                permit.send(Feed::Flows(self.pipeline.changed_flows()));
            }
            let _ = tx.try_send(Feed::Counters(hops));
            let _ = tx.try_send(Feed::Lost(lost));
            let d = self.pipeline.discarded();
            let malformed = self.kernel.stream.malformed();
            let not_shown = d.untraced + d.filtered + malformed + d.forced + d.evicted;
            let _ = tx.try_send(Feed::NotShown(not_shown));
            // Reading the tables' keys costs a syscall per entry: not at every tick.
            if self.last_evicted.elapsed() >= EVICTED_EVERY {
                self.last_evicted = Instant::now();
                let e = self.kernel.tables.evicted();
                let _ = tx.try_send(Feed::Evicted(e.tracked + e.flows));
            }
            let _ = tx.try_send(Feed::RingFill(counters.ring_fill()));
            if let Some((path, bytes)) = self.pipeline.recording() {
                let _ = tx.try_send(Feed::Recording { path, bytes });
            }
        }
        if let Some(every) = self.counters_every() {
            if self.last_counters.elapsed() >= every {
                self.last_counters = Instant::now();
                let hops = counters.totals(&self.names);
                let now = self.clock.rfc3339(monotonic_ns());
                let line = self.pipeline.format().counters(&hops, &now);
                writeln!(self.out, "{line}").map_err(werr)?;
            }
        } else if self.headless && self.last_progress.elapsed() >= PROGRESS {
            self.last_progress = Instant::now();
            let elapsed = self.started.elapsed();
            eprintln!("{}", progress(&self.pipeline, lost, elapsed));
        }
        Ok(())
    }

    /// The end: the last packets, the dashboard's last word, the summary.
    pub async fn finish(mut self) -> Result<()> {
        let mut summary = self.pipeline.finish(&mut self.out).map_err(werr)?;
        if let Some((tx, task)) = self.dashboard.take() {
            // Stopped by --duration/--count: say so and leave the screen up until q.
            // Stopped by a signal: the dashboard ends itself on SIGINT/SIGTERM too.
            let _ = tx.send(Feed::Flows(self.pipeline.changed_flows())).await;
            let _ = tx.try_send(Feed::Finished("tracing stopped (q to quit)".into()));
            drop(tx);
            self.pipeline.close_dashboard();
            let _ = task.await;
            crate::logging::dashboard(None);
        }
        if self.args.raw {
            summary.packets = self.raw_shown;
        }
        summary.hops = self.kernel.counters.totals(&self.names);
        summary.discarded.malformed = self.kernel.stream.malformed();
        summary.lost_by = self.kernel.counters.lost_by_kind();
        summary.kernel_evicted = self.kernel.tables.evicted();
        summary.lost = self.kernel.counters.lost_total();
        if summary.lost > self.lost_reported {
            let more = summary.lost - self.lost_reported;
            self.pipeline
                .report_lost(more, monotonic_ns(), &mut self.out)
                .map_err(werr)?;
            // The recording's gap block, written (and any error of it seen) before the end.
            self.pipeline.finish_sinks().map_err(werr)?;
        }
        let text = self.pipeline.format().summary(&summary);
        if self.args.json {
            writeln!(self.out, "{text}").map_err(werr)?;
        } else {
            self.out.flush().map_err(werr)?;
            eprintln!("{text}");
        }
        self.out.flush().map_err(werr)?;
        // Everything attached goes now (the programs, then the tc filters and qdiscs).
        drop(self.kernel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_slows_only_while_nothing_is_in_flight() {
        assert_eq!(tick_after(true, None), TICK);
        assert_eq!(tick_after(true, Some(Duration::ZERO)), TICK);
        assert_eq!(tick_after(false, None), IDLE_TICK);
        // A counters line due soon is not left to the idle tick, nor hurried past `TICK`.
        assert_eq!(
            tick_after(false, Some(Duration::from_millis(120))),
            Duration::from_millis(120)
        );
        assert_eq!(tick_after(false, Some(Duration::ZERO)), TICK);
        assert_eq!(tick_after(false, Some(Duration::from_secs(4))), IDLE_TICK);
        assert!(TICK < IDLE_TICK);
    }
}
