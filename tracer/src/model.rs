//! The output contract's types live in the `tracer-model` crate (so that xtask and the tests
//! read the same ones); this module re-exports them and builds them from the core's state.
//! Presenters consume these, never the core's own types.

use tracer_common::netfilter::hook_name;
pub use tracer_model::*;

use crate::{
    correlate::{
        explain::Explained,
        flow::{FlowKey, FlowStats},
        nat::NatRewrite,
        packet::{Points, Way},
        NetMap,
    },
    events::{
        clock::WallClock,
        digits::Ascii,
        packet::{tcp_flags_str, Endpoint, Headers, Proto},
    },
    output::{merged, Discarded, Step, Summary},
    probe::counters::HopTotals,
};

/// The texts the model repeats from packet to packet (each endpoint), written once and shared (`Shared`) by every hop and packet that shows them: a forwarded
/// packet's hops repeat two or three endpoints, and a flow's packets the same ones again.
/// Bounded: emptied when it holds `Texts::MAX` endpoints (a scan's addresses), so it never
/// holds more than that.
#[derive(Default)]
pub(crate) struct Texts {
    endpoints: NetMap<Endpoint, Shared>,
    /// The last two pairs of ends asked for, the latest first: a NAT'd packet's hops show two
    /// pairs (before the rewrite and after it), the next packet of its flow the same two
    /// again, and its rewrite the ends of both; comparing is cheaper than hashing.
    recent: [Option<Ends>; 2],
}

/// A pair of ends and their texts.
type Ends = (Endpoint, Endpoint, Shared, Shared);

impl Texts {
    const MAX: usize = 4096;

    fn text(&mut self, e: Endpoint) -> Shared {
        for (s, d, st, dt) in self.recent.iter().flatten() {
            if *s == e {
                return st.clone();
            }
            if *d == e {
                return dt.clone();
            }
        }
        if let Some(t) = self.endpoints.get(&e) {
            return t.clone();
        }
        if self.endpoints.len() >= Self::MAX {
            self.endpoints.clear();
        }
        let t: Shared = e.text().into();
        self.endpoints.insert(e, t.clone());
        t
    }

    fn of(&mut self, h: Option<&Headers>) -> (Option<Shared>, Option<Shared>) {
        let Some(h) = h else {
            return (None, None);
        };
        let (s, d) = (h.source(), h.destination());
        let hit = |r: &Option<Ends>| r.as_ref().is_some_and(|(ls, ld, ..)| (*ls, *ld) == (s, d));
        if !hit(&self.recent[0]) {
            if hit(&self.recent[1]) {
                self.recent.swap(0, 1);
            } else {
                let (st, dt) = (self.text(s), self.text(d));
                self.recent[1] = self.recent[0].take();
                self.recent[0] = Some((s, d, st, dt));
            }
        }
        self.recent[0]
            .as_ref()
            .map(|(_, _, st, dt)| (st.clone(), dt.clone()))
            .unzip()
    }

    /// A rewrite as the model shows it.
    pub(crate) fn nat(&mut self, n: &NatRewrite) -> Nat {
        Nat {
            kind: n.kind.as_str().into(),
            from: self.text(n.from),
            to: self.text(n.to),
        }
    }
}

/// A traced packet, explained.
pub(crate) fn packet(
    e: &Explained,
    points: &Points,
    clock: &WallClock,
    texts: &mut Texts,
) -> Packet {
    let p = &e.packet;
    let view = p.view(points);
    let t0 = p.first_ts();
    let (src, dst) = texts.of(view.as_ref());
    let hops = merged(e)
        .into_iter()
        .map(|step| match step {
            Step::Tc(h, rw) => {
                let (src, dst) = texts.of(h.headers.as_ref());
                let point = points.get(&h.ifindex);
                Hop::Tc(TcHop {
                    at_ns: h.ts_ns - t0,
                    iface: point
                        .map_or_else(|| format!("if{}", h.ifindex).into(), |p| p.name.clone()),
                    role: point.map(|p| p.role.as_str().into()),
                    dir: h.direction.as_str().into(),
                    src,
                    dst,
                    len: h.len,
                    nat: rw.map(|n| Box::new(texts.nat(n))),
                })
            }
            Step::Nf(n) => {
                let (src, dst) = texts.of(n.headers.as_ref());
                Hop::Nf(NfHop {
                    at_ns: n.ts_ns.saturating_sub(t0),
                    hook: hook_name(n.hook).into(),
                    table: n.table.clone(),
                    verdict: n.verdict.as_str().into(),
                    src,
                    dst,
                    nat: n.nat.first().map(|n| Box::new(texts.nat(n))),
                    rule: n
                        .decided
                        .as_ref()
                        .and_then(|d| d.rule.as_deref().map(str::to_owned)),
                    policy: n.decided.as_ref().and_then(|d| d.policy.map(Text::from)),
                    chain_path: n
                        .decided
                        .as_ref()
                        .map_or_else(Vec::new, |d| d.chain_path.clone()),
                    rule_source: n.decided.as_ref().map(|_| "nftrace".into()),
                })
            }
        })
        .collect();
    let drop = e.drop.as_ref().map(|d| Drop {
        at_ns: p.end.as_ref().map_or(0, |x| x.ts_ns.saturating_sub(t0)),
        reason: d.reason.clone(),
        location: d.location.clone(),
        hook: d.hook.map(str::to_owned),
        table: d.table.clone(),
        rule: d.rule.clone(),
        rule_source: d.rule_source.clone(),
        rule_candidates: d.candidates.clone(),
        last_hop: d.last_hop.clone(),
        place: d.place.clone(),
        freed_by: d.freed_by.map(str::to_owned),
    });
    Packet {
        v: VERSION,
        time: clock.rfc3339(t0),
        container: p.container(points).map(Shared::from),
        way: p.way(points).map(|w| {
            match w {
                Way::FromContainer => "out",
                Way::ToContainer => "in",
            }
            .into()
        }),
        proto: view.map(|h| h.proto.name()),
        len: p.frame_len(),
        tcp_flags: view.and_then(|h| h.tcp_flags()).map(tcp_flags_str),
        summary: view
            .zip(src.as_ref().zip(dst.as_ref()))
            .map(|(h, (s, d))| h.summary_of(s, d)),
        skb: {
            let mut skb = Ascii::<18>::new();
            skb.hex(p.skb);
            skb.as_str().into()
        },
        src,
        dst,
        hops,
        drop,
    }
}

/// A flow's totals.
pub(crate) fn flow(k: &FlowKey, s: &FlowStats, clock: &WallClock) -> FlowLine {
    FlowLine {
        v: VERSION,
        time: clock.rfc3339(s.first_ns),
        last: clock.rfc3339(s.last_ns),
        container: k.container.to_string(),
        proto: k.proto.name().into_owned(),
        local: k.local_str(),
        remote: k.remote_str(),
        id: matches!(k.proto, Proto::Icmp | Proto::Icmpv6).then_some(k.local_port),
        translated: s.translated.map(|t| t.to_string()),
        out: Count {
            packets: s.out_packets,
            bytes: s.out_bytes,
        },
        inbound: Count {
            packets: s.in_packets,
            bytes: s.in_bytes,
        },
        drops: s.drops,
        path_out: s.path_out.iter().map(|n| n.to_string()).collect(),
        path_in: s.path_in.iter().map(|n| n.to_string()).collect(),
        closed: s.closed(),
    }
}

/// A hop's kernel counters.
pub(crate) fn hop_line(h: &HopTotals) -> HopLine {
    HopLine {
        iface: h.iface.clone(),
        dir: h.direction.to_owned(),
        packets: h.packets,
        bytes: h.bytes,
        lost: h.lost,
    }
}

/// The final line.
pub(crate) fn summary(s: &Summary) -> SummaryLine {
    let Discarded {
        untraced,
        filtered,
        malformed,
        forced,
        evicted,
    } = s.discarded;
    SummaryLine {
        v: VERSION,
        packets: s.packets,
        flows: s.flows,
        drops: s.drops,
        lost: s.lost,
        lost_by: LostBy {
            tc: s.lost_by[0],
            netfilter: s.lost_by[1],
            end: s.lost_by[2],
        },
        hops: s.hops.iter().map(hop_line).collect(),
        discarded: DiscardedLine {
            untraced,
            filtered,
            malformed,
            forced,
            evicted,
        },
        kernel_evicted: KernelEvicted {
            tracked: s.kernel_evicted.tracked,
            flows: s.kernel_evicted.flows,
        },
    }
}

#[cfg(test)]
mod tests;
