//! NAT inference: where a packet's addresses changed between two observations, and how.

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

/// The rewrites between two observations of one packet (shown as `model::Nat`).
pub fn rewrites(
    before: &crate::events::packet::Headers,
    after: &crate::events::packet::Headers,
) -> Vec<NatRewrite> {
    // Most pairs of a packet's observations show no rewrite: one comparison of the addresses
    // and ports, without building the four ends.
    let ports = (before.ports(), after.ports());
    if before.src == after.src && before.dst == after.dst && ports.0 == ports.1 {
        return Vec::new();
    }
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
        let text = |n: &NatRewrite| crate::model::Texts::default().nat(n).text();
        assert_eq!(text(&r[0]), "SNAT 172.18.0.2:41234 → 198.51.100.1:41234");
        assert_eq!(text(&r[1]), "DNAT 198.51.100.2:8080 → 198.51.100.2:80");
        assert_eq!(r[0].kind.as_str(), "snat");
        assert!(rewrites(&a, &a).is_empty());
    }
}
