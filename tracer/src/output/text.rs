//! The human-readable form: one block per packet, one line per flow, a summary.

use std::{borrow::Cow, fmt::Write as _};

use super::Summary;
use crate::{
    events::clock::short_time,
    model::{FlowLine, Hop, Packet},
};

/// `+0.0µs`, `+32.6µs`, `+1.204ms`: what `{:.1}` of the microseconds (below a millisecond)
/// or `{:.3}` of the milliseconds writes, in integers: formatting a float was the largest
/// single cost of a hop's line. An exact tie (`…50` ns below a millisecond, `…500` above)
/// and a time too large for an f64 to hold exactly are left to the float formatter, whose
/// rounding of the binary value they depend on.
pub fn delta(ns: u64) -> String {
    let (unit, scale, digits) = if ns < 1_000_000 {
        ("µs", 1_000, 1)
    } else {
        ("ms", 1_000_000, 3)
    };
    // The part below the shown precision, and its half.
    let cut = scale / 10u64.pow(digits);
    let rest = ns % cut;
    if rest * 2 == cut || ns >= 1 << 52 {
        return if digits == 1 {
            format!("+{:.1}µs", ns as f64 / 1000.0)
        } else {
            format!("+{:.3}ms", ns as f64 / 1_000_000.0)
        };
    }
    let shown = ns / cut + u64::from(rest * 2 > cut);
    let pow = 10u64.pow(digits);
    let mut s = String::with_capacity(16);
    s.push('+');
    s.push_str(itoa::Buffer::new().format(shown / pow));
    s.push('.');
    let mut b = itoa::Buffer::new();
    let frac = b.format(shown % pow);
    (frac.len()..digits as usize).for_each(|_| s.push('0'));
    s.push_str(frac);
    s.push_str(unit);
    s
}

fn note(role: &str, dir: &str) -> &'static str {
    match (role, dir) {
        ("veth", "ingress") => "(leaves the container)",
        ("veth", "egress") => "(enters the container)",
        ("uplink", "egress") => "(leaves the host)",
        ("uplink", "ingress") => "(arrives at the host)",
        _ => "",
    }
}

/// The rule (or policy) that gave a netfilter hop's verdict, and the chains walked to it, on
/// a line of its own (nothing when unknown), pushed onto `t`.
fn decided(t: &mut String, n: &tracer_model::NfHop) {
    let push = |t: &mut String, parts: &[&str]| parts.iter().for_each(|x| t.push_str(x));
    match (&n.rule, &n.policy) {
        (Some(r), _) => push(t, &["\n            rule: ", r]),
        (None, Some(p)) => {
            let chain = n.chain_path.first().map_or("", String::as_str);
            push(t, &["\n            policy: ", p, " (", chain, ")"]);
        }
        _ => return,
    }
    if n.chain_path.len() > 1 {
        t.push_str("  (via ");
        for (i, c) in n.chain_path.iter().enumerate() {
            if i > 0 {
                t.push_str(" → ");
            }
            t.push_str(c);
        }
        t.push(')');
    }
}

/// `  {at:<9} {a:<17} {b:<14} {tail}` and a newline, without its trailing blanks: pushed
/// piece by piece (format! for each hop's line was most of what printing a packet cost).
fn hop_line(s: &mut String, [at, a, b, tail]: [&str; 4]) {
    let start = s.len();
    s.push_str("  ");
    for (x, width) in [(at, 9), (a, 17), (b, 14)] {
        s.push_str(x);
        // Padded by characters, as format!'s width is.
        let n = x.chars().count();
        (n..width).for_each(|_| s.push(' '));
        s.push(' ');
    }
    s.push_str(tail);
    let kept = s[start..].trim_end().len();
    s.truncate(start + kept);
    s.push('\n');
}

/// Renders one packet, so that a live run and `flowtrace read` of a recording print the same
/// text.
pub fn packet(p: &Packet) -> String {
    let mut s = String::new();
    let who = match (&p.container, &p.way) {
        (Some(c), Some(w)) => format!("  container {c} ({w})"),
        _ => String::new(),
    };
    let time = short_time(&p.time);
    let summary = p.summary.as_deref().unwrap_or("non-IP frame");
    let _ = writeln!(s, "{time} {summary} {}B{who}", p.len);
    let drop = p.drop.as_ref();
    for h in &p.hops {
        let at = delta(h.at_ns());
        match h {
            Hop::Nf(n) => {
                let tail = match (&*n.verdict, &n.nat) {
                    ("drop", _) => {
                        let mut t = format!("DROP ✗ {}", drop.map_or("", |d| d.reason.as_str()));
                        if let Some(rule) = drop.and_then(|d| d.rule.as_deref()) {
                            t.push_str(&format!("\n            rule: {rule}"));
                        }
                        for c in drop.map_or(&[][..], |d| &d.rule_candidates[..]) {
                            t.push_str(&format!("\n            rule, perhaps: {c}"));
                        }
                        t
                    }
                    (_, Some(nat)) => {
                        let mut t = nat.text();
                        decided(&mut t, n);
                        t
                    }
                    (v, _) => {
                        let mut t = String::with_capacity(v.len());
                        t.push_str(v);
                        decided(&mut t, n);
                        t
                    }
                };
                hop_line(&mut s, [&at, &n.hook, &n.table, &tail]);
            }
            Hop::Tc(t) => {
                let mut tail = note(t.role.as_deref().unwrap_or(""), &t.dir).to_owned();
                if let Some(nat) = &t.nat {
                    if !tail.is_empty() {
                        tail.push_str("  ");
                    }
                    tail.push_str(&nat.text());
                }
                let dir = match &*t.dir {
                    "ingress" => Cow::Borrowed("tc ingress"),
                    "egress" => Cow::Borrowed("tc egress"),
                    d => Cow::Owned(format!("tc {d}")),
                };
                hop_line(&mut s, [&at, &t.iface, &dir, &tail]);
            }
        }
    }
    if let Some(d) = drop.filter(|d| !d.counts()) {
        let loc = d.location.as_deref().unwrap_or("?");
        let _ = writeln!(
            s,
            "  {:<9} freed by {} after delivery ({} in {loc}; not a drop)",
            delta(d.at_ns),
            match d.freed_by.as_deref() {
                Some("tcp") => "TCP",
                _ => "its socket",
            },
            d.reason
        );
    } else if let Some(d) = drop.filter(|d| d.hook.is_none()) {
        let mut line = format!("  {:<9} ✗ dropped: {}", delta(d.at_ns), d.reason);
        if let Some(loc) = &d.location {
            line.push_str(&format!(" in {loc}"));
        }
        if let Some(place) = &d.place {
            line.push_str(&format!(" ({place})"));
        }
        let _ = writeln!(s, "{line}");
    }
    s.pop();
    // The last line of defence for the live path (interface names, rules, Docker's names):
    // nothing but the renderer's own newlines reaches the terminal raw.
    super::terminal::escape(&s, true).into_owned()
}

pub fn flow(f: &FlowLine) -> String {
    let id = f.id.map(|i| format!(" id {i}")).unwrap_or_default();
    let nat = f
        .translated
        .as_ref()
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
    let line = format!(
        "{} {} {} {} ↔ {}{id}{nat}  out {} pkts {} B  in {} pkts {} B{drops}  via {}",
        short_time(&f.time),
        f.container,
        f.proto.to_uppercase(),
        f.local,
        f.remote,
        f.out.packets,
        f.out.bytes,
        f.inbound.packets,
        f.inbound.bytes,
        path.join(" → ")
    );
    super::terminal::escape(&line, false).into_owned()
}

pub fn summary(s: &Summary) -> String {
    let mut out = format!(
        "{} packets, {} flows, {} dropped, {} events lost",
        s.packets, s.flows, s.drops, s.lost
    );
    let d = &s.discarded;
    if *d != super::Discarded::default() {
        let _ = write!(
            out,
            "\n  not shown: {} untraced, {} filtered, {} malformed records; {} packets completed early, {} flows evicted",
            d.untraced, d.filtered, d.malformed, d.forced, d.evicted
        );
    }
    let k = &s.kernel_evicted;
    if k.tracked + k.flows > 0 {
        let _ = write!(
            out,
            "\n  kernel tables full: {} packets no longer followed, {} NAT'd flows forgotten (evicted to make room)",
            k.tracked, k.flows
        );
    }
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
    const PINNED: [&str; 7] = [
        "TCP [S] 74B  container ens_monitor_cron (out)",
        "  +0.0µs    veth9780200-longer-than-17 tc ingress     (leaves the container)",
        "  +43.0µs   PREROUTING        nat            accept",
        "            policy: accept (PREROUTING)  (via PREROUTING → DOCKER → PREROUTING)",
        "  +52.0µs   br-d9231d44a1ab-longer-than-17 tc ingress",
        "  +67.1µs   FORWARD           filter         DROP ✗ NETFILTER_DROP",
        "            rule: -A DOCKER-USER -d 198.51.100.2/32 -p tcp -m tcp --dport 8081 -j DROP",
    ];
    use crate::correlate::{explain::Explainer, packet::tests::*};
    use crate::events::clock::WallClock;
    use tracer_common::Direction;

    #[test]
    fn a_flow_line_names_both_ends_its_nat_counts_and_path() {
        let mut f: FlowLine = serde_json::from_str(
            r#"{"v":1,"time":"2026-11-24T15:07:34.120511Z","last":"2026-11-24T15:07:35Z",
            "container":"ens_monitor_cron","proto":"icmp","local":"172.18.0.2","remote":"198.51.100.2",
            "id":7,"translated":"198.51.100.1","out":{"packets":2,"bytes":196},"in":{"packets":1,"bytes":98},
            "drops":1,"path_out":["veth9780200","br-x","ftlab-up"],"path_in":[],"closed":false}"#,
        )
        .expect("a flow line");
        let line = flow(&f);
        assert!(line.contains(" ens_monitor_cron ICMP 172.18.0.2 ↔ 198.51.100.2 id 7 (as 198.51.100.1)  out 2 pkts 196 B  in 1 pkts 98 B drops 1  via veth9780200 → br-x → ftlab-up"), "{line}");
        f.id = None;
        assert!(flow(&f).contains("198.51.100.2 (as"), "{}", flow(&f));
    }

    /// The whole block of a dropped packet, byte for byte (the time line's clock aside): the
    /// renderer is written piece by piece, and this pins what format! used to give.
    #[test]
    fn a_dropped_packet_renders_exactly() {
        let mut p = crate::tui::fixtures::dropped();
        p.hops.iter_mut().for_each(|h| {
            if let Hop::Tc(t) = h {
                t.iface = format!("{}-longer-than-17", t.iface).into();
            }
        });
        let text = packet(&p);
        let (_, rest) = text.split_once(' ').expect("a time first");
        assert_eq!(rest, PINNED.join("\n"));
    }

    #[test]
    fn a_packet_block_shows_hops_in_order_with_nat() {
        let p = packet_of(&[
            (1_000, VETH, Direction::Ingress, [172, 18, 0, 2]),
            (33_600, BRIDGE, Direction::Ingress, [172, 18, 0, 2]),
            (47_900, UPLINK, Direction::Egress, [198, 51, 100, 1]),
        ]);
        let e = Explainer::empty().explain(p, &points());
        let text = packet(&crate::model::packet(
            &e,
            &points(),
            &WallClock::with_offset(0),
            &mut Default::default(),
        ));
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
        assert_eq!(delta(1_000_000), "+1.000ms");
        assert_eq!(delta(1_020_400), "+1.020ms");
        assert_eq!(delta(32_600), "+32.6µs");
        assert_eq!(delta(1_204_000), "+1.204ms");
    }

    /// The integer delta writes what the float formatter wrote: every nanosecond up to 3 ms,
    /// then a spread of larger times, ties and the values next to them.
    #[test]
    fn the_delta_is_the_float_formatters() {
        let float = |ns: u64| {
            if ns < 1_000_000 {
                format!("+{:.1}µs", ns as f64 / 1000.0)
            } else {
                format!("+{:.3}ms", ns as f64 / 1_000_000.0)
            }
        };
        let spread = (0..200_000u64).map(|k| k * 49_999_999_967 % 10_000_000_000_000);
        let ties = (0..1000u64).flat_map(|k| {
            let t = 1_000_000 * k + 500 * (k % 7) + 500;
            [t - 1, t, t + 1, 1_250, 1_050, 999_950, u64::MAX - k]
        });
        // Either side of a tie at large times, below where the float formatter takes over.
        let large = (1..2000u64).flat_map(|k| {
            let base = (1u64 << 52) - 1000 - k * 1_000_037;
            let t = base - base % 1000 + 500;
            [t - 1, t + 1, t - 2, t + 2]
        });
        for ns in (0..3_000_000).chain(spread).chain(ties).chain(large) {
            assert_eq!(delta(ns), float(ns), "{ns}");
        }
    }
}
