//! `--raw`: every observation as it arrives, one line each, not joined into packets.
//! Useful to see exactly what the kernel side reports.

use std::collections::HashMap;

use tracer_common::netfilter::hook_name;

use crate::{
    events::{
        clock::WallClock,
        decode::{Observation, TcObservation},
        packet::tcp_flags_str,
    },
    model::{self, ObservedAt},
};

/// Interface names by ifindex, for the points flowtrace attached to.
pub type IfNames = HashMap<u32, String>;

fn iface(names: &IfNames, ifindex: u32) -> String {
    names
        .get(&ifindex)
        .cloned()
        .unwrap_or_else(|| format!("if{ifindex}"))
}

pub fn text(obs: &Observation, names: &IfNames, clock: &WallClock) -> String {
    let t = match obs {
        Observation::Tc(t) => t,
        Observation::Nf(n) => {
            return format!(
                "{} skb {:#x} {:<16} netfilter slot {} {}B {}",
                clock.short(n.ts_ns),
                n.skb,
                hook_name(n.hook),
                n.slot,
                n.len,
                n.headers
                    .map_or_else(|| "non-IP".to_owned(), |h| h.summary())
            )
        }
        Observation::End(e) => {
            // A normal free carries no device (the kernel reads it for drops only).
            let dev = match e.ifindex {
                0 => String::new(),
                i => format!(" (if{i})"),
            };
            return format!(
                "{} skb {:#x} {:?} at {:#x}{dev}",
                clock.short(e.ts_ns),
                e.skb,
                e.kind,
                e.location,
            );
        }
    };
    let what = summary(t);
    format!(
        "{} skb {:#x} {:<16} tc {:<7} {}B {}",
        clock.short(t.ts_ns),
        t.skb,
        iface(names, t.ifindex),
        t.direction.as_str(),
        t.len,
        what
    )
}

fn summary(t: &TcObservation) -> String {
    t.headers
        .map_or_else(|| "non-IP frame".to_owned(), |h| h.summary())
}

/// The observation as the model's `--raw` line.
pub fn line(obs: &Observation, names: &IfNames, clock: &WallClock) -> model::Observation {
    let (ts_ns, skb, at) = match obs {
        Observation::Tc(t) => {
            let h = t.headers.as_ref();
            let at = ObservedAt::Tc {
                iface: iface(names, t.ifindex),
                ifindex: t.ifindex,
                dir: t.direction.as_str().to_owned(),
                len: t.len,
                proto: h.map(|h| h.proto.name().into_owned()),
                src: h.map(|h| h.source().to_string()),
                dst: h.map(|h| h.destination().to_string()),
                tcp_flags: h.and_then(|h| h.tcp_flags()).map(tcp_flags_str),
            };
            (t.ts_ns, t.skb, at)
        }
        Observation::Nf(n) => {
            let at = ObservedAt::Netfilter {
                hook: hook_name(n.hook).to_owned(),
                slot: n.slot,
                len: n.len,
                src: n.headers.map(|h| h.source().to_string()),
                dst: n.headers.map(|h| h.destination().to_string()),
            };
            (n.ts_ns, n.skb, at)
        }
        Observation::End(e) => {
            let at = ObservedAt::End {
                end: format!("{:?}", e.kind),
                location: format!("{:#x}", e.location),
                ifindex: e.ifindex,
            };
            (e.ts_ns, e.skb, at)
        }
    };
    model::Observation {
        time: clock.rfc3339(ts_ns),
        ts_ns,
        skb: format!("{skb:#x}"),
        at,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::events::packet::{parse_ethernet, tests::tcp_syn_v4};
    use tracer_common::Direction;

    pub(crate) fn obs() -> Observation {
        let frame = tcp_syn_v4();
        Observation::Tc(TcObservation {
            ts_ns: 5_000_000_000,
            skb: 0xffff_8881_0000_1000,
            cpu: 0,
            ifindex: 21,
            direction: Direction::Ingress,
            len: 54,
            mark: 0,
            headers: parse_ethernet(&frame),
            bytes: frame,
        })
    }

    #[test]
    fn text_line_names_the_interface_and_addresses() {
        let names = IfNames::from([(21, "veth9780200".to_owned())]);
        let line = text(&obs(), &names, &WallClock::with_offset(0));
        assert!(line.contains("veth9780200"), "{line}");
        assert!(
            line.contains("TCP 172.18.0.2:41234 → 198.51.100.2:8080 [S]"),
            "{line}"
        );
        assert!(line.contains("54B"), "{line}");
    }

    #[test]
    fn json_has_the_contract_fields() {
        let v: serde_json::Value = serde_json::from_str(
            &line(&obs(), &IfNames::new(), &WallClock::with_offset(0)).to_json(),
        )
        .expect("json");
        assert_eq!(v["type"], "observation");
        assert_eq!(v["point"], "tc");
        assert_eq!(v["iface"], "if21");
        assert_eq!(v["dir"], "ingress");
        assert_eq!(v["src"], "172.18.0.2:41234");
        assert_eq!(v["dst"], "198.51.100.2:8080");
        assert_eq!(v["proto"], "tcp");
        assert_eq!(v["tcp_flags"], "S");
        assert_eq!(v["time"], "1970-01-01T00:00:05.000000Z");
    }
}
