//! NAT inference: where a packet's addresses changed between two observations, and how.

use std::fmt;

use serde_json::json;

use super::packet::Hop;
use crate::events::packet::Endpoint;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// Source rewritten (SNAT, MASQUERADE, or the de-NAT of a reply to a DNAT).
    Snat,
    /// Destination rewritten (DNAT, port publishing, or the de-NAT of a reply to a SNAT).
    Dnat,
}

impl NatKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snat => "snat",
            Self::Dnat => "dnat",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatRewrite {
    pub kind: NatKind,
    pub from: Endpoint,
    pub to: Endpoint,
}

impl fmt::Display for NatRewrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            NatKind::Snat => "SNAT",
            NatKind::Dnat => "DNAT",
        };
        write!(f, "{kind} {} → {}", self.from, self.to)
    }
}

impl NatRewrite {
    pub fn to_json(self) -> serde_json::Value {
        json!({"kind": self.kind.as_str(), "from": self.from.to_string(), "to": self.to.to_string()})
    }
}

/// Compares each hop's headers with the previous hop that had headers and records the
/// rewrites on the hop where they first show.
pub fn annotate(hops: &mut [Hop]) {
    let mut before = None;
    for hop in hops.iter_mut() {
        let Some(now) = hop.headers else {
            continue;
        };
        if let Some(prev) = before {
            hop.nat = rewrites(&prev, &now);
        }
        before = Some(now);
    }
}

pub fn rewrites(
    before: &crate::events::packet::Headers,
    after: &crate::events::packet::Headers,
) -> Vec<NatRewrite> {
    let mut out = Vec::new();
    if before.source() != after.source() {
        out.push(NatRewrite {
            kind: NatKind::Snat,
            from: before.source(),
            to: after.source(),
        });
    }
    if before.destination() != after.destination() {
        out.push(NatRewrite {
            kind: NatKind::Dnat,
            from: before.destination(),
            to: after.destination(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::packet::{parse_ethernet, tests::tcp_syn_v4};

    #[test]
    fn detects_source_and_destination_rewrites() {
        let a = parse_ethernet(&tcp_syn_v4()).expect("parsed");
        let mut f = tcp_syn_v4();
        f[26..30].copy_from_slice(&[198, 51, 100, 1]);
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        let b = parse_ethernet(&f).expect("parsed");
        let r = rewrites(&a, &b);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].to_string(),
            "SNAT 172.18.0.2:41234 → 198.51.100.1:41234"
        );
        assert_eq!(r[1].to_string(), "DNAT 198.51.100.2:8080 → 198.51.100.2:80");
        assert_eq!(r[0].to_json()["kind"], "snat");
        assert!(rewrites(&a, &a).is_empty());
    }
}
