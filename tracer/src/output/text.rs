//! The human-readable form: one block per packet, one line per flow, a summary.

use std::fmt::Write as _;

use super::Summary;
use super::{merged, Step};
use crate::{
    correlate::{
        explain::Explained,
        flow::{FlowKey, FlowStats},
        packet::{Points, Way},
        verdict::Verdict,
    },
    events::clock::WallClock,
    target::topology::Role,
};
use tracer_common::{netfilter::hook_name, Direction};

/// `+0.0µs`, `+32.6µs`, `+1.204ms`.
pub fn delta(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("+{:.1}µs", ns as f64 / 1000.0)
    } else {
        format!("+{:.3}ms", ns as f64 / 1_000_000.0)
    }
}

fn note(role: Option<Role>, dir: Direction) -> &'static str {
    match (role, dir) {
        (Some(Role::Veth), Direction::Ingress) => "(leaves the container)",
        (Some(Role::Veth), Direction::Egress) => "(enters the container)",
        (Some(Role::Uplink), Direction::Egress) => "(leaves the host)",
        (Some(Role::Uplink), Direction::Ingress) => "(arrives at the host)",
        _ => "",
    }
}

pub fn packet(e: &Explained, points: &Points, clock: &WallClock) -> String {
    let p = &e.packet;
    let mut s = String::new();
    let view = p.view(points);
    let head = view.map_or_else(|| "non-IP frame".to_owned(), |h| h.summary());
    let who = match (p.container_hop(points), p.way(points)) {
        (Some((_, c)), Some(Way::FromContainer)) => format!("  container {c} (out)"),
        (Some((_, c)), Some(Way::ToContainer)) => format!("  container {c} (in)"),
        _ => String::new(),
    };
    let _ = writeln!(s, "{} {head} {}B{who}", clock.short(p.first_ts()), p.len());
    let t0 = p.first_ts();
    for step in merged(e) {
        let line = match step {
            Step::Tc(h, nat) => {
                let pt = points.get(&h.ifindex);
                let name = pt.map_or_else(|| format!("if{}", h.ifindex), |p| p.name.clone());
                let mut tail = note(pt.map(|p| p.role), h.direction).to_owned();
                for n in nat {
                    if !tail.is_empty() {
                        tail.push_str("  ");
                    }
                    tail.push_str(&n.to_string());
                }
                let what = format!("tc {}", h.direction.as_str());
                format!(
                    "  {:<9} {:<17} {:<14} {tail}",
                    delta(h.ts_ns - t0),
                    name,
                    what
                )
            }
            Step::Nf(n) => {
                let mut tail = match n.verdict {
                    Verdict::Accept if n.nat.is_empty() => "accept".to_owned(),
                    Verdict::Accept => n
                        .nat
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("  "),
                    Verdict::Drop => format!(
                        "DROP ✗ {}",
                        e.drop.as_ref().map_or("", |d| d.reason.as_str())
                    ),
                };
                if n.verdict == Verdict::Drop {
                    if let Some(rule) = e.drop.as_ref().and_then(|d| d.rule.as_ref()) {
                        tail.push_str(&format!("\n            rule: {rule}"));
                    }
                }
                format!(
                    "  {:<9} {:<17} {:<14} {tail}",
                    delta(n.ts_ns.saturating_sub(t0)),
                    hook_name(n.hook),
                    n.table
                )
            }
        };
        let _ = writeln!(s, "{}", line.trim_end());
    }
    if let Some(d) = &e.drop {
        if d.hook.is_none() {
            let at = p.end.as_ref().map_or(0, |x| x.ts_ns.saturating_sub(t0));
            let mut line = format!("  {:<9} ✗ dropped: {}", delta(at), d.reason);
            if let Some(loc) = &d.location {
                line.push_str(&format!(" in {loc}"));
            }
            if let Some(place) = &d.place {
                line.push_str(&format!(" ({place})"));
            }
            let _ = writeln!(s, "{line}");
        }
    }
    s.pop();
    s
}

pub fn flow(k: &FlowKey, f: &FlowStats, clock: &WallClock) -> String {
    let nat = f
        .translated
        .map(|t| format!(" (as {t})"))
        .unwrap_or_default();
    let path = if f.path_out.is_empty() {
        &f.path_in
    } else {
        &f.path_out
    };
    let drops = if f.drops > 0 {
        format!(" drops {}", f.drops)
    } else {
        String::new()
    };
    format!(
        "{} {} {k}{nat}  out {} pkts {} B  in {} pkts {} B{drops}  via {}",
        clock.short(f.first_ns),
        k.container,
        f.out_packets,
        f.out_bytes,
        f.in_packets,
        f.in_bytes,
        path.join(" → ")
    )
}

pub fn summary(s: &Summary) -> String {
    let mut out = format!(
        "{} packets, {} flows, {} dropped, {} events lost",
        s.packets, s.flows, s.drops, s.lost
    );
    for h in &s.hops {
        let _ = write!(
            out,
            "\n  {:<17} {:<7} {:>9} pkts {:>12} bytes",
            h.iface, h.direction, h.packets, h.bytes
        );
        if h.lost > 0 {
            let _ = write!(out, " {:>7} events lost", h.lost);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::{explain::Explainer, packet::tests::*};

    #[test]
    fn a_packet_block_shows_hops_in_order_with_nat() {
        let p = packet_of(&[
            (1_000, VETH, Direction::Ingress, [172, 18, 0, 2]),
            (33_600, BRIDGE, Direction::Ingress, [172, 18, 0, 2]),
            (47_900, UPLINK, Direction::Egress, [198, 51, 100, 1]),
        ]);
        let e = Explainer::empty().explain(p, &points());
        let text = packet(&e, &points(), &WallClock::with_offset(0));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].ends_with("TCP 172.18.0.2:41234 → 198.51.100.2:8080 [S] 54B  container ens_monitor_cron (out)"), "{text}");
        assert!(
            lines[1].contains("+0.0µs")
                && lines[1].contains("veth9780200")
                && lines[1].contains("(leaves the container)"),
            "{text}"
        );
        assert!(
            lines[2].contains("+32.6µs") && lines[2].contains("br-d9231d44a1ab"),
            "{text}"
        );
        assert!(
            lines[3].contains("+46.9µs")
                && lines[3].contains("tc egress")
                && lines[3].contains("SNAT 172.18.0.2:41234 → 198.51.100.1:41234"),
            "{text}"
        );
    }

    #[test]
    fn deltas_switch_to_milliseconds() {
        assert_eq!(delta(0), "+0.0µs");
        assert_eq!(delta(32_600), "+32.6µs");
        assert_eq!(delta(1_204_000), "+1.204ms");
    }
}
