//! Presenting what was traced: text for people, JSON lines for programs.

pub mod files;
pub mod raw;
pub mod record;
mod spool;
pub mod stdout;
pub mod terminal;
pub mod text;

use crate::{
    correlate::{explain::Explained, nat::NatRewrite, packet::Hop, verdict::NfStep},
    model::{CountersLine, FlowLine, Lost, Packet, VERSION},
    probe::counters::HopTotals,
};

/// One line of a packet's path: an interface hop (with the first rewrite visible there that
/// no netfilter step accounts for: a hop shows one) or a netfilter step.
pub enum Step<'a> {
    Tc(&'a Hop, Option<&'a NatRewrite>),
    Nf(&'a NfStep),
}

impl Step<'_> {
    fn ts(&self) -> u64 {
        match self {
            Self::Tc(h, _) => h.ts_ns,
            Self::Nf(n) => n.ts_ns,
        }
    }
}

/// Interface hops and netfilter steps in time order (at one time, hops first). A rewrite that
/// a netfilter step made is shown there, not again on the next interface hop. Both come in
/// time order (`correlate::packet::finish`, `verdict::steps`): merged, not sorted again.
pub fn merged(e: &Explained) -> Vec<Step<'_>> {
    let by_nf = |n: &NatRewrite| e.steps.iter().any(|s| s.nat.contains(n));
    let hop = |h| Step::Tc(h, h.nat.iter().find(|n| !by_nf(n)));
    let (hops, steps) = (&e.packet.hops, &e.steps);
    let mut out: Vec<Step<'_>> = Vec::with_capacity(hops.len() + steps.len());
    if !hops.is_sorted_by_key(|h| h.ts_ns) || !steps.is_sorted_by_key(|s| s.ts_ns) {
        out.extend(hops.iter().map(hop).chain(steps.iter().map(Step::Nf)));
        out.sort_by_key(Step::ts);
        return out;
    }
    let mut steps = steps.iter().peekable();
    for h in hops {
        while let Some(s) = steps.next_if(|s| s.ts_ns < h.ts_ns) {
            out.push(Step::Nf(s));
        }
        out.push(hop(h));
    }
    out.extend(steps.map(Step::Nf));
    out
}

/// Counts for the final summary.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub packets: u64,
    pub flows: u64,
    pub drops: u64,
    pub lost: u64,
    /// `lost` by kind of kernel record: tc, netfilter, a packet's end.
    pub lost_by: [u64; 3],
    pub hops: Vec<HopTotals>,
    /// What user space received and did not show, by why.
    pub discarded: Discarded,
    /// What the kernel evicted from its tables to make room.
    pub kernel_evicted: crate::probe::tables::Evicted,
}

/// Observations and packets that reached user space and were not shown (or not whole).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Discarded {
    /// Packets of no traced container (the kernel's scope let them through: an sk_buff
    /// address reused before its free was seen, or a reply whose owner was never seen).
    pub untraced: u64,
    /// Packets the filter (expression, `--proto`/`--host`/`--port`) did not match in user
    /// space after the kernel let them through.
    pub filtered: u64,
    /// Ring-buffer records that could not be decoded.
    pub malformed: u64,
    /// Packets completed early because too many were in flight (their path may be split).
    pub forced: u64,
    /// Flows dropped from the flow table to make room (their counts restart).
    pub evicted: u64,
}

/// Where traced packets go: text or JSON lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    /// A packet (live, or read back from a recording).
    pub fn packet(&self, p: &Packet) -> String {
        match self {
            Self::Text => text::packet(p),
            Self::Json => p.to_json(),
        }
    }

    pub fn flow(&self, f: &FlowLine) -> String {
        match self {
            Self::Text => text::flow(f),
            Self::Json => f.to_json(),
        }
    }

    pub fn lost(&self, count: u64) -> String {
        match self {
            Self::Text => format!("!! {count} events lost (ring buffer full); per-hop counters still count every packet"),
            Self::Json => Lost::of(count).to_json(),
        }
    }

    /// `--counters`: the per-hop kernel counters at `time`.
    pub fn counters(&self, hops: &[HopTotals], time: &str) -> String {
        match self {
            Self::Text => {
                let mut out = time.to_owned();
                for h in hops {
                    out.push_str(&format!(
                        "\n  {:<17} {:<7} {:>9} pkts {:>12} bytes",
                        h.iface, h.direction, h.packets, h.bytes
                    ));
                }
                out
            }
            Self::Json => {
                let line = CountersLine {
                    v: VERSION,
                    time: time.to_owned(),
                    hops: hops.iter().map(crate::model::hop_line).collect(),
                };
                line.to_json()
            }
        }
    }

    pub fn summary(&self, s: &Summary) -> String {
        match self {
            Self::Text => text::summary(s),
            Self::Json => crate::model::summary(s).to_json(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::Direction;

    use super::*;
    use crate::correlate::{
        packet::{Hop, Packet},
        verdict::{NfStep, Verdict},
    };

    fn explained(hops: &[u64], steps: &[u64]) -> Explained {
        let hop = |(i, ts): (usize, &u64)| Hop {
            ts_ns: *ts,
            ifindex: i as u32,
            direction: Direction::Ingress,
            len: 0,
            headers: None,
            bytes: Vec::new(),
            nat: Vec::new(),
        };
        let step = |(i, ts): (usize, &u64)| NfStep {
            ts_ns: *ts,
            hook: i as u8,
            table: "filter".into(),
            verdict: Verdict::Accept,
            nat: Vec::new(),
            headers: None,
            nf: 0,
            decided: None,
        };
        Explained {
            packet: Packet {
                skb: 1,
                hops: hops.iter().enumerate().map(hop).collect(),
                nf: Vec::new(),
                end: None,
                owner: None,
            },
            steps: steps.iter().enumerate().map(step).collect(),
            drop: None,
        }
    }

    /// Which hop or step each place holds: the tc hop's ifindex, or 100 + the step's hook.
    fn order(e: &Explained) -> Vec<u32> {
        merged(e)
            .iter()
            .map(|s| match s {
                Step::Tc(h, _) => h.ifindex,
                Step::Nf(n) => 100 + u32::from(n.hook),
            })
            .collect()
    }

    /// Merging the two ordered lists gives what a stable sort of both gives: time order, and at
    /// one time the hops before the steps, each in its own order; lists out of order are
    /// sorted.
    #[test]
    fn hops_and_steps_merge_in_time_order() {
        let cases: [(&[u64], &[u64]); 8] = [
            (&[1, 5, 5, 9], &[0, 5, 7, 12]),
            (&[], &[3, 4]),
            (&[3, 4], &[]),
            (&[10, 20], &[1, 2]),
            (&[5, 5], &[5, 5]),
            (&[9, 1, 5], &[7, 0]),
            (&[9, 1, 5], &[0, 7]),
            (&[0, 7], &[9, 1, 5]),
        ];
        for (hops, steps) in cases {
            let e = explained(hops, steps);
            let mut want: Vec<(u64, u32)> = hops
                .iter()
                .enumerate()
                .map(|(i, t)| (*t, i as u32))
                .chain(steps.iter().enumerate().map(|(i, t)| (*t, 100 + i as u32)))
                .collect();
            want.sort_by_key(|(t, _)| *t);
            let want: Vec<u32> = want.into_iter().map(|(_, x)| x).collect();
            assert_eq!(order(&e), want, "{hops:?} {steps:?}");
        }
    }
}
