//! The counters and records the dashboard keeps (see `model` for how they are filled). Pure.

use std::collections::VecDeque;
use std::time::Instant;

/// Rates are recomputed when at least this much time separates two snapshots.
const RATE_WINDOW_S: f64 = 0.5;

/// Per-second rates from successive snapshots of a monotonic (packets, bytes) counter.
#[derive(Clone, Debug, Default)]
pub struct Rate {
    anchor: Option<(Instant, u64, u64)>,
    pub pps: f64,
    pub bps: f64,
}

impl Rate {
    pub fn update(&mut self, now: Instant, packets: u64, bytes: u64) {
        let Some((t0, p0, b0)) = self.anchor else {
            self.anchor = Some((now, packets, bytes));
            return;
        };
        let dt = now.saturating_duration_since(t0).as_secs_f64();
        if dt < RATE_WINDOW_S {
            return;
        }
        // A counter that went backwards was reset: rate 0 for this window.
        self.pps = packets.saturating_sub(p0) as f64 / dt;
        self.bps = bytes.saturating_sub(b0) as f64 / dt;
        self.anchor = Some((now, packets, bytes));
    }
}

/// One (interface, direction) that flowtrace attached to.
#[derive(Clone, Debug, Default)]
pub struct HopStat {
    pub iface: String,
    pub role: String,
    pub direction: String,
    /// Raw kernel counters (None until a `Counters` feed mentions this hop).
    pub raw: Option<(u64, u64, u64)>,
    /// The view's baseline (set by "clear counters").
    pub base: (u64, u64, u64),
    pub rate: Rate,
}

impl HopStat {
    /// (packets, bytes, lost) since the baseline.
    pub fn counts(&self) -> Option<(u64, u64, u64)> {
        self.raw.map(|(p, b, l)| {
            (
                p.saturating_sub(self.base.0),
                b.saturating_sub(self.base.1),
                l.saturating_sub(self.base.2),
            )
        })
    }
}

/// A netfilter hook, counted from the packets' netfilter hops (no kernel counters exist).
#[derive(Clone, Debug, Default)]
pub struct HookStat {
    pub hook: String,
    pub tables: Vec<String>,
    /// Packets and bytes, [out, in].
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub drops: u64,
    pub rate: [Rate; 2],
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub container: String,
    pub proto: String,
    /// The container-side endpoint.
    pub local: String,
    pub remote: String,
}

/// One hop of a packet in a flow's timeline.
#[derive(Clone, Debug)]
pub struct ChainHop {
    pub name: String,
    pub at_ns: u64,
}

/// A recent packet of a flow, compacted for the timeline.
#[derive(Clone, Debug)]
pub struct TimelinePacket {
    pub time: String,
    pub way: String,
    pub flags: String,
    pub len: u64,
    pub hops: Vec<ChainHop>,
    /// NAT rewrites ("SNAT a → b at POSTROUTING/nat") and the drop, if any.
    pub notes: Vec<String>,
    pub dropped: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Flow {
    /// [out, in]
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub drops: u64,
    pub last_seq: u64,
    pub last_time: String,
    /// How NAT shows the flow: "as 198.51.100.1:41234" (the container side's address
    /// outside), or "a → b" when the remote side is rewritten.
    pub nat: Option<String>,
    pub recent: VecDeque<TimelinePacket>,
}

/// Drops grouped by (reason, hook, table, rule).
pub type DropKey = (String, Option<String>, Option<String>, Option<String>);

#[derive(Clone, Debug, Default)]
pub struct DropStat {
    pub reason: String,
    pub hook: Option<String>,
    pub table: Option<String>,
    pub rule: Option<String>,
    /// Where, for drops outside netfilter: "ip6_rcv_core (inside X)".
    pub location: Option<String>,
    pub count: u64,
    pub last_time: String,
    pub last_seq: u64,
}
