//! The output contract's types live in the `tracer-model` crate (so that xtask and the tests
//! read the same ones); this module re-exports them and builds them from the core's state.
//! Presenters consume these, never the core's own types.

use tracer_common::netfilter::{hook_name, TABLES};
pub use tracer_model::*;

use crate::{
    correlate::{
        explain::Explained,
        flow::{FlowKey, FlowStats},
        nat::NatRewrite,
        packet::{Points, Way},
    },
    events::{
        clock::WallClock,
        packet::{tcp_flags_str, Endpoint, Headers, Proto},
    },
    output::{merged, Discarded, Step, Summary},
    probe::counters::HopTotals,
};

/// A rewrite as the model shows it.
pub(crate) fn nat(n: &NatRewrite) -> Nat {
    Nat {
        kind: n.kind.as_str().to_owned(),
        from: n.from.text(),
        to: n.to.text(),
    }
}

/// The endpoints' texts of one packet: its hops repeat the same two or three endpoints, so
/// each is written once and copied after.
#[derive(Default)]
struct Endpoints(Vec<(Endpoint, String)>);

impl Endpoints {
    fn text(&mut self, e: Endpoint) -> String {
        if let Some((_, t)) = self.0.iter().find(|(k, _)| *k == e) {
            return t.clone();
        }
        let t = e.text();
        self.0.push((e, t.clone()));
        t
    }

    fn of(&mut self, h: Option<Headers>) -> (Option<String>, Option<String>) {
        match h {
            Some(h) => (
                Some(self.text(h.source())),
                Some(self.text(h.destination())),
            ),
            None => (None, None),
        }
    }
}

/// A netfilter table's name: iptables' own borrowed, any other (an nftables table's) copied.
fn table_name(t: &str) -> Text {
    match TABLES.iter().find(|k| **k == t) {
        Some(k) => Text::Borrowed(k),
        None => Text::Owned(t.to_owned()),
    }
}

/// A traced packet, explained.
pub(crate) fn packet(e: &Explained, points: &Points, clock: &WallClock) -> Packet {
    let p = &e.packet;
    let view = p.view(points);
    let t0 = p.first_ts();
    let mut ends = Endpoints::default();
    let (src, dst) = ends.of(view);
    let hops = merged(e)
        .into_iter()
        .map(|step| match step {
            Step::Tc(h, rw) => {
                let (src, dst) = ends.of(h.headers);
                Hop::Tc(TcHop {
                    at_ns: h.ts_ns - t0,
                    iface: points
                        .get(&h.ifindex)
                        .map_or_else(|| format!("if{}", h.ifindex), |p| p.name.clone()),
                    role: points.get(&h.ifindex).map(|p| p.role.as_str().into()),
                    dir: h.direction.as_str().into(),
                    src,
                    dst,
                    len: h.len,
                    nat: rw.first().map(nat),
                })
            }
            Step::Nf(n) => {
                let (src, dst) = ends.of(n.headers);
                Hop::Nf(NfHop {
                    at_ns: n.ts_ns.saturating_sub(t0),
                    hook: hook_name(n.hook).into(),
                    table: table_name(&n.table),
                    verdict: n.verdict.as_str().into(),
                    src,
                    dst,
                    nat: n.nat.first().map(nat),
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
        container: p.container(points).map(str::to_owned),
        way: p.way(points).map(|w| {
            match w {
                Way::FromContainer => "out",
                Way::ToContainer => "in",
            }
            .into()
        }),
        proto: view.map(|h| h.proto.name()),
        src,
        dst,
        len: p.frame_len(),
        tcp_flags: view.and_then(|h| h.tcp_flags()).map(tcp_flags_str),
        summary: view.map(|h| h.summary()),
        skb: format!("{:#x}", p.skb),
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
