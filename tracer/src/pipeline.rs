//! What happens to each observation after it leaves the ring buffer: join into packets, keep
//! the traced containers' packets that pass the filter, account flows, print. No kernel in
//! here, so the whole path is unit-tested.

use std::{cmp::Reverse, collections::BinaryHeap, io::Write};

use crate::{
    correlate::{
        explain::Explainer,
        flow::FlowTable,
        packet::{Correlator, Packet, Points},
    },
    events::{clock::WallClock, decode::Observation},
    model,
    output::{stdout::Stdout, Discarded, Format, Summary},
    select::PacketFilter,
    sink::Sink,
    target::scope::Scope,
};

/// Idle time after which a packet is considered complete (it crosses the host in µs).
pub const PACKET_IDLE_NS: u64 = 100_000_000;
/// How long after a packet's last observation its nftables trace events may still be on
/// their way into the trace socket: the kernel queues them while the tables run, before the
/// next observer or the packet's free, so microseconds; the margin covers a table walk
/// interrupted on its CPU.
const TRACE_MARGIN_NS: u64 = 2_000_000;
/// Idle time after which a flow is reported with `--flows`.
pub const FLOW_IDLE_NS: u64 = 10_000_000_000;
/// Flows kept in memory at most: 7/8 of 65,536, the most a hash table of 65,536 slots holds
/// before it doubles (to 131,072 slots of ~180 bytes each).
pub const MAX_FLOWS: usize = 57_344;

pub struct Pipeline {
    correlator: Correlator,
    explainer: Explainer,
    flows: FlowTable,
    filter: PacketFilter,
    format: Format,
    clock: WallClock,
    /// The endpoints' and containers' texts, shared by the packets that show them.
    texts: model::Texts,
    /// `--flows`: print flows instead of packets.
    flow_mode: bool,
    /// Where shown packets, flows and losses go (stdout, the recording, the dashboard).
    sinks: Vec<Box<dyn Sink>>,
    /// `--count`: show at most this many packets.
    pub limit: Option<u64>,
    pub shown: u64,
    /// What the kernel's scope holds: the traced addresses name the packets that never reach
    /// a traced veth.
    scope: Scope,
    /// Packets not shown, by why.
    pub discarded: Discarded,
    pub drops: u64,
    /// Completed packets as the correlator hands them over…
    done: Vec<Packet>,
    /// …and waiting to be shown in time order, oldest first out.
    ready: BinaryHeap<Reverse<Completed>>,
    /// Arrival order, to keep packets with the same first timestamp in the order they came.
    seq: u64,
    /// With nftrace: how long a packet that met netfilter waits at most after its last
    /// observation for the trace of its tables to arrive (0: no wait); less once the trace
    /// reader has read past it (`Explainer::traced_until`).
    pub hold_ns: u64,
    /// The monotonic time of the last tick.
    now_ns: u64,
    /// Live: the time up to which the ring buffer has been read (`EventStream::read_at`).
    /// Packets complete by it, not by the clock alone. u64::MAX where records are not read
    /// from a ring.
    pub read_until: u64,
}

/// A completed packet, ordered by when it started (then by arrival).
struct Completed {
    key: (u64, u64),
    /// Boxed: the heap moves its entries at every push and pop.
    packet: Box<Packet>,
}

impl PartialEq for Completed {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Completed {}
impl PartialOrd for Completed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Completed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

impl Pipeline {
    pub fn new(
        points: Points,
        explainer: Explainer,
        filter: PacketFilter,
        format: Format,
        flow_mode: bool,
        clock: WallClock,
    ) -> Self {
        Self {
            correlator: Correlator::new(points, PACKET_IDLE_NS),
            explainer,
            flows: FlowTable::new(MAX_FLOWS),
            filter,
            format,
            clock,
            texts: model::Texts::default(),
            flow_mode,
            sinks: vec![Box::new(Stdout::new(format, flow_mode))],
            limit: None,
            shown: 0,
            scope: Scope::default(),
            discarded: Discarded::default(),
            drops: 0,
            done: Vec::new(),
            ready: BinaryHeap::new(),
            seq: 0,
            hold_ns: 0,
            now_ns: 0,
            read_until: u64::MAX,
        }
    }

    /// A new observation point and, for a container's veth, its namespace (a restart).
    pub fn add_point(
        &mut self,
        ifindex: u32,
        info: crate::correlate::packet::PointInfo,
        netns: Option<u32>,
    ) {
        if let (Some(inode), Some(name)) = (netns, info.container.clone()) {
            self.explainer.netns_names.insert(inode, name.to_string());
        }
        self.correlator.add_point(ifindex, info);
    }

    /// Events were lost: every sink says so its way (stdout a line, the recording a block;
    /// the dashboard shows the running total instead).
    pub fn report_lost(
        &mut self,
        count: u64,
        now_ns: u64,
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        for s in &mut self.sinks {
            s.lost(now_ns, count, out)?;
        }
        Ok(())
    }

    /// Everything the sinks hold written where it goes (at the end; again after a last
    /// [`Pipeline::report_lost`]).
    pub fn finish_sinks(&mut self) -> std::io::Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.finish())
    }

    /// Adds a sink (the recording).
    pub fn add_sink(&mut self, sink: Box<dyn Sink>) {
        self.sinks.push(sink);
    }

    /// A recording that prints nothing (`TraceArgs::prints_packets`): only the recording
    /// stays a sink, and the packets cost no printing.
    pub fn record_only(&mut self) {
        self.sinks.retain(|s| s.recording().is_some());
    }

    /// The dashboard takes the terminal: it replaces stdout as a sink.
    pub fn show_on_dashboard(&mut self, dashboard: Box<dyn Sink>) {
        self.sinks.retain(|s| s.recording().is_some());
        self.sinks.push(dashboard);
        self.flows.keep_changes();
    }

    /// The dashboard closed: drop its sink (the others stay to the end).
    pub fn close_dashboard(&mut self) {
        self.sinks.retain(|s| !s.owns_terminal());
    }

    /// The recording's path and size, if there is one.
    pub fn recording(&self) -> Option<(String, u64)> {
        self.sinks.iter().find_map(|s| s.recording())
    }

    /// The targets' scope changed (at start-up, and when a container restarts).
    pub fn set_scope(&mut self, scope: Scope) {
        self.scope = scope;
    }

    /// `--count` packets have been shown.
    pub fn reached_limit(&self) -> bool {
        self.limit.is_some_and(|n| self.shown >= n)
    }

    pub fn format(&self) -> &Format {
        &self.format
    }

    /// Adds an observation. Completed packets wait for [`Pipeline::flush_ready`], called once
    /// per batch: finding what is ready scans the pending packets.
    pub fn observe(&mut self, obs: Observation) {
        self.correlator.push(obs, &mut self.done);
    }

    /// Prints the completed packets that are ready (in time order).
    pub fn flush_ready(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        self.emit(out)
    }

    /// Nothing in flight, completed or waiting to be shown: a tick would find nothing to do.
    pub fn idle(&self) -> bool {
        self.done.is_empty() && self.ready.is_empty() && self.correlator.oldest_pending().is_none()
    }

    /// Called periodically with the current CLOCK_MONOTONIC time.
    pub fn tick(&mut self, now_ns: u64, out: &mut impl Write) -> std::io::Result<()> {
        self.now_ns = now_ns;
        self.correlator
            .expire(now_ns.min(self.read_until), &mut self.done);
        self.emit(out)?;
        if self.flow_mode {
            let finished = self.flows.take_finished(now_ns, FLOW_IDLE_NS);
            let lines: Vec<_> = finished
                .iter()
                .map(|(k, s)| model::flow(k, s, &self.clock))
                .collect();
            self.flows_to_sinks(&lines, out)?;
        }
        self.sinks.iter_mut().try_for_each(|s| s.flush())
    }

    /// Completes everything pending and returns the summary counts.
    pub fn finish(&mut self, out: &mut impl Write) -> std::io::Result<Summary> {
        if self.hold_ns > 0 {
            // The last packets' traces may still be on their way: until the trace reader has
            // read past now, or for the hold at most.
            let start = crate::events::clock::monotonic_ns();
            self.explainer.want_traced(start + TRACE_MARGIN_NS);
            while self.explainer.traced_until() < start + TRACE_MARGIN_NS
                && crate::events::clock::monotonic_ns() < start + self.hold_ns
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        self.hold_ns = 0;
        self.correlator.drain(&mut self.done);
        self.emit(out)?;
        if self.flow_mode {
            let lines: Vec<_> = self
                .flows
                .all()
                .into_iter()
                .map(|(k, s)| model::flow(k, s, &self.clock))
                .collect();
            self.flows_to_sinks(&lines, out)?;
        }
        self.finish_sinks()?;
        Ok(Summary {
            packets: self.shown,
            flows: self.flows.seen(),
            drops: self.drops,
            discarded: self.discarded(),
            ..Summary::default()
        })
    }

    fn flows_to_sinks(
        &mut self,
        lines: &[model::FlowLine],
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        for l in lines {
            for s in &mut self.sinks {
                s.flow(l, out)?;
            }
        }
        Ok(())
    }

    /// The flows that changed since the last call, as the model's flow lines (the dashboard's
    /// flow table is this one's).
    pub fn changed_flows(&mut self) -> Vec<model::FlowLine> {
        let clock = &self.clock;
        self.flows
            .take_changed()
            .into_iter()
            .map(|(k, s)| model::flow(k, s, clock))
            .collect()
    }

    /// What was not shown, so far (the ring buffer's malformed records are the reader's).
    pub fn discarded(&self) -> Discarded {
        Discarded {
            forced: self.correlator.forced,
            evicted: self.flows.evicted,
            ..self.discarded
        }
    }

    /// Prints completed packets in time order: those that started before every packet still
    /// being assembled (all of them once nothing is pending).
    fn emit(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let watermark = self.correlator.oldest_pending().unwrap_or(u64::MAX);
        for packet in self.done.drain(..) {
            self.seq += 1;
            let key = (packet.first_ts(), self.seq);
            self.ready.push(Reverse(Completed {
                key,
                packet: Box::new(packet),
            }));
        }
        let (hold, now) = (self.hold_ns, self.now_ns);
        let traced = self.explainer.traced_until();
        // With containers to trace, only their packets; with bare interfaces (`--iface`
        // alone), every packet seen there. The kernel decided the scope already: what
        // arrives here untraced is counted.
        let has_containers = self
            .correlator
            .points()
            .values()
            .any(|x| x.container.is_some());
        while self.ready.peek().is_some_and(|Reverse(c)| {
            c.key.0 < watermark
                && (hold == 0 || c.packet.nf.is_empty() || {
                    let seen = c.packet.seen_until();
                    seen + hold <= now || seen + TRACE_MARGIN_NS <= traced
                })
        }) {
            let Some(Reverse(Completed { packet: mut p, key })) = self.ready.pop() else {
                break;
            };
            if self.reached_limit() {
                break;
            }
            let points = self.correlator.points();
            let scope = &self.scope;
            p.owner = p.resolve_owner(points, |a| scope.owner(a));
            if has_containers && p.owner.is_none() {
                self.discarded.untraced += 1;
                continue;
            }
            if !self.filter.matches(&p) {
                self.discarded.filtered += 1;
                continue;
            }
            if !self.explainer.ready_for(&p) {
                // A drop waits for the ruleset reading that names its rule; the packets
                // after it wait with it, to keep their order.
                self.ready.push(Reverse(Completed { key, packet: p }));
                break;
            }
            let points = self.correlator.points();
            let e = self.explainer.explain(*p, points);
            let dropped = e.drop.as_ref().is_some_and(|d| d.counts());
            self.drops += u64::from(dropped);
            self.flows.record(&e.packet, points, dropped);
            self.shown += 1;
            if !self.sinks.iter().any(|s| s.wants_packets()) {
                continue; // e.g. `--flows`: only flows are printed
            }
            let model = model::packet(&e, points, &self.clock, &mut self.texts);
            for s in &mut self.sinks {
                s.packet(&e, &model, out)?;
            }
        }
        // The next packet may wait for the trace reader, which reads on its own only when
        // asked (`nftrace::Wants`): ask, or it would wait out the hold.
        if let Some(Reverse(c)) = self.ready.peek() {
            if hold > 0 && !c.packet.nf.is_empty() {
                let seen = c.packet.seen_until();
                self.explainer.want_traced(seen + TRACE_MARGIN_NS);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::{explain::Explainer, packet::tests::*};
    use tracer_common::Direction;

    /// A pipeline printing JSON, over the test points, with nothing known of the host.
    fn json_pipeline(filter: PacketFilter, flow_mode: bool) -> Pipeline {
        Pipeline::new(
            points(),
            Explainer::empty(),
            filter,
            Format::Json,
            flow_mode,
            WallClock::with_offset(0),
        )
    }

    fn run(flow_mode: bool, filter: PacketFilter) -> (String, Summary) {
        let mut p = json_pipeline(filter, flow_mode);
        let mut out = Vec::new();
        let f = frame([172, 18, 0, 2], 41234);
        let g = frame([198, 51, 100, 1], 41234);
        for o in [
            obs(1, 10, VETH, Direction::Ingress, &f),
            obs(1, 20, BRIDGE, Direction::Ingress, &f),
            obs(1, 30, UPLINK, Direction::Egress, &g),
            // Another container's packet on the bridge and uplink only: not shown.
            obs(
                2,
                40,
                BRIDGE,
                Direction::Ingress,
                &frame([172, 18, 0, 3], 5555),
            ),
            obs(
                2,
                50,
                UPLINK,
                Direction::Egress,
                &frame([198, 51, 100, 1], 5555),
            ),
        ] {
            p.observe(o);
        }
        let s = p.finish(&mut out).expect("write");
        (String::from_utf8(out).expect("utf8"), s)
    }

    #[test]
    fn only_traced_packets_are_printed() {
        let (out, s) = run(false, PacketFilter::default());
        let lines: Vec<model::Line> = out
            .lines()
            .map(|l| model::Line::parse(l).expect("a line of the contract"))
            .collect();
        assert_eq!(lines.len(), 1, "{out}");
        let model::Line::Packet(p) = &lines[0] else {
            panic!("not a packet: {out}")
        };
        assert_eq!(p.hops.len(), 3);
        assert_eq!((s.packets, s.flows), (1, 1));
    }

    #[test]
    fn flow_mode_prints_flows_not_packets() {
        let (out, _) = run(true, PacketFilter::default());
        let Ok(model::Line::Flow(f)) = model::Line::parse(out.trim()) else {
            panic!("not one flow line: {out}")
        };
        assert_eq!(f.translated.as_deref(), Some("198.51.100.1:41234"));
    }

    #[test]
    fn packets_are_printed_in_time_order() {
        let mut p = json_pipeline(PacketFilter::default(), false);
        let mut out = Vec::new();
        let f = frame([172, 18, 0, 2], 41234);
        // Packet 1 starts first and stays pending; packet 2 completes (skb reuse) earlier.
        p.observe(obs(1, 10, VETH, Direction::Ingress, &f));
        p.observe(obs(2, 20, VETH, Direction::Ingress, &f));
        p.observe(obs(2, 30, VETH, Direction::Ingress, &f));
        p.flush_ready(&mut out).expect("w");
        assert!(out.is_empty(), "packet 2 must wait for packet 1");
        p.finish(&mut out).expect("w");
        let ts: Vec<model::Shared> = String::from_utf8(out)
            .expect("utf8")
            .lines()
            .map(|l| match model::Line::parse(l) {
                Ok(model::Line::Packet(p)) => p.skb,
                other => panic!("not a packet: {other:?}"),
            })
            .collect();
        assert_eq!(ts, vec!["0x1", "0x2", "0x2"]);
    }

    #[test]
    fn a_packet_that_met_netfilter_waits_until_the_trace_reader_read_past_it() {
        use crate::correlate::{decisions::Decisions, verdict::tests::nf};
        use crate::events::decode::Observation;
        use std::sync::{atomic::Ordering, Arc};
        let mut p = json_pipeline(PacketFilter::default(), false);
        let (_tx, rx) = std::sync::mpsc::channel();
        let until = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut ds = Decisions::new(rx, Arc::clone(&until));
        let wants = Arc::new(crate::nftrace::Wants::new().expect("eventfd"));
        ds.wake_through(Arc::clone(&wants));
        p.explainer.decisions = Some(ds);
        p.hold_ns = 250_000_000;
        let f = frame([172, 18, 0, 2], 41234);
        let met_netfilter = |p: &mut Pipeline, ts: u64| {
            p.observe(obs(ts, ts, VETH, Direction::Ingress, &f));
            p.observe(Observation::Nf(crate::events::decode::NfObservation {
                skb: ts,
                ..nf(ts + 10_000, 0, 0, &f)
            }));
        };
        met_netfilter(&mut p, 1_000_000);
        let mut out = Vec::new();
        let lines = |out: &[u8]| out.iter().filter(|b| **b == b'\n').count();
        // Complete (idle), but the reader has not said how far it read.
        p.tick(200_000_000, &mut out).expect("w");
        assert_eq!(lines(&out), 0, "waits for its trace");
        assert!(!p.idle(), "a packet waits to be shown");
        // ... and has asked the reader (which reads only when asked) to read past it.
        let past = 1_010_000 + TRACE_MARGIN_NS;
        assert!(wants.waiting(past - 1) && !wants.waiting(past), "{wants:?}");
        // The reader read up to within the margin of the packet's last observation.
        until.store(1_010_000 + TRACE_MARGIN_NS - 1, Ordering::Release);
        p.tick(201_000_000, &mut out).expect("w");
        assert_eq!(lines(&out), 0, "the trace may still be on its way");
        until.store(1_010_000 + TRACE_MARGIN_NS, Ordering::Release);
        p.tick(202_000_000, &mut out).expect("w");
        assert_eq!(lines(&out), 1, "shown once the reader read past it");
        // Without word from the reader, a packet is shown after the hold.
        met_netfilter(&mut p, 300_000_000);
        p.tick(500_000_000, &mut out).expect("w");
        assert_eq!(lines(&out), 1);
        p.tick(550_010_000, &mut out).expect("w");
        assert_eq!(lines(&out), 2, "shown after the hold");
        assert!(p.idle(), "nothing is left");
    }

    #[test]
    fn packets_complete_by_how_far_the_ring_was_read_not_by_the_clock_alone() {
        let mut p = json_pipeline(PacketFilter::default(), false);
        let f = frame([172, 18, 0, 2], 41234);
        p.observe(obs(1, 1_000_000, VETH, Direction::Ingress, &f));
        let mut out = Vec::new();
        // The reader is behind: the ring read up to 2 ms, the clock at 1 s.
        p.read_until = 2_000_000;
        p.tick(1_000_000_000, &mut out).expect("w");
        assert!(out.is_empty(), "its next hop may still be in the ring");
        p.read_until = 1_000_000 + PACKET_IDLE_NS + 1;
        p.tick(1_000_000_000, &mut out).expect("w");
        assert_eq!(String::from_utf8(out).expect("utf8").lines().count(), 1);
    }

    #[test]
    fn the_limit_is_exact_even_when_a_batch_completes_more() {
        let mut p = json_pipeline(PacketFilter::default(), false);
        p.limit = Some(2);
        let f = frame([172, 18, 0, 2], 41234);
        for skb in 1..=5 {
            p.observe(obs(skb, skb * 10, VETH, Direction::Ingress, &f));
        }
        let mut out = Vec::new();
        let s = p.finish(&mut out).expect("w");
        assert_eq!(String::from_utf8(out).expect("utf8").lines().count(), 2);
        assert_eq!(s.packets, 2);
        assert!(p.reached_limit());
    }

    #[test]
    fn the_filter_applies() {
        let filter = PacketFilter {
            ports: vec![9],
            ..Default::default()
        };
        let (out, s) = run(false, filter);
        assert!(out.is_empty());
        assert_eq!(s.packets, 0);
    }

    #[test]
    fn bare_interfaces_show_every_packet_seen_there() {
        // `--iface` alone: no point belongs to a container.
        let mut bare = points();
        for info in bare.values_mut() {
            info.container = None;
        }
        let mut p = Pipeline::new(
            bare,
            Explainer::empty(),
            PacketFilter::default(),
            Format::Json,
            false,
            WallClock::with_offset(0),
        );
        p.observe(obs(
            7,
            10,
            BRIDGE,
            Direction::Ingress,
            &frame([172, 18, 0, 3], 5555),
        ));
        let mut out = Vec::new();
        let s = p.finish(&mut out).expect("w");
        assert_eq!(s.packets, 1, "{}", String::from_utf8_lossy(&out));
    }
}
