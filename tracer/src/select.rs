//! `--proto`, `--host`, `--port`: which traced packets to show. A packet matches when every
//! given criterion matches at some hop, so a filter on the container's address still keeps
//! the uplink hop after MASQUERADE, and the reply before de-NAT.

use std::{net::IpAddr, sync::Arc};

use crate::{correlate::packet::Packet, events::packet::Proto, pcapfilter::libpcap::Program};

#[derive(Clone, Debug, Default)]
pub struct PacketFilter {
    pub protos: Vec<Proto>,
    pub hosts: Vec<IpAddr>,
    pub ports: Vec<u16>,
    /// A tcpdump expression, already run in the kernel. Here a packet is kept only if libpcap
    /// matches it at one of its hops: the safety net for an sk_buff address the kernel reused
    /// before flowtrace saw its first packet freed.
    pub pcap: Option<Arc<Program>>,
}

/// Parses a `--proto` value.
pub fn parse_proto(s: &str) -> Result<Proto, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        "icmp" => Ok(Proto::Icmp),
        "icmp6" | "icmpv6" => Ok(Proto::Icmpv6),
        other => Err(format!(
            "unknown protocol `{other}` (tcp, udp, icmp, icmp6)"
        )),
    }
}

impl PacketFilter {
    pub fn is_empty(&self) -> bool {
        self.protos.is_empty()
            && self.hosts.is_empty()
            && self.ports.is_empty()
            && self.pcap.is_none()
    }

    pub fn matches(&self, p: &Packet) -> bool {
        if self.is_empty() {
            return true;
        }
        if let Some(prog) = &self.pcap {
            let at_tc = p
                .hops
                .iter()
                .any(|h| !h.bytes.is_empty() && prog.matches_captured(&h.bytes, h.len));
            // A packet that no tc observer saw (it came in by an interface flowtrace is not
            // attached to) is filtered on what netfilter saw, as an Ethernet frame.
            let at_nf = || {
                p.nf.iter().any(|n| {
                    let frame = as_ethernet(&n.bytes);
                    !n.bytes.is_empty() && prog.matches_captured(&frame, n.len + 14)
                })
            };
            if !(at_tc || (p.hops.is_empty() && at_nf())) {
                return false;
            }
        }
        let headers: Vec<_> = p
            .hops
            .iter()
            .filter_map(|h| h.headers)
            .chain(p.nf.iter().filter_map(|n| n.headers))
            .collect();
        let proto_ok =
            self.protos.is_empty() || headers.iter().any(|h| self.protos.contains(&h.proto));
        let host_ok = self.hosts.is_empty()
            || headers
                .iter()
                .any(|h| self.hosts.contains(&h.src) || self.hosts.contains(&h.dst));
        let port_ok = self.ports.is_empty()
            || headers.iter().any(|h| {
                h.ports()
                    .is_some_and(|(s, d)| self.ports.contains(&s) || self.ports.contains(&d))
            });
        proto_ok && host_ok && port_ok
    }
}

/// An IP packet behind an Ethernet header with no addresses (what libpcap's Ethernet filter
/// expects).
fn as_ethernet(ip: &[u8]) -> Vec<u8> {
    let ethertype: u16 = match ip.first().map(|b| b >> 4) {
        Some(6) => 0x86dd,
        _ => 0x0800,
    };
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

/// `--proto`, `--host` and `--port` as a tcpdump expression, so that the kernel decides them
/// with the rest of the filter: alternatives of one kind are or'ed, kinds are and'ed.
pub fn criteria_expression(protos: &[Proto], hosts: &[IpAddr], ports: &[u16]) -> Option<String> {
    let any = |words: Vec<String>| (!words.is_empty()).then(|| format!("({})", words.join(" or ")));
    let parts: Vec<String> = [
        any(protos
            .iter()
            .map(|p| match p {
                Proto::Tcp => "tcp".to_owned(),
                Proto::Udp => "udp".to_owned(),
                Proto::Icmp => "icmp".to_owned(),
                Proto::Icmpv6 => "icmp6".to_owned(),
                Proto::Arp => "arp".to_owned(),
                Proto::Other(n) => format!("ip proto {n}"),
            })
            .collect()),
        any(hosts.iter().map(|h| format!("host {h}")).collect()),
        any(ports.iter().map(|p| format!("port {p}")).collect()),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join(" and "))
}

/// The user's expression and the criteria, both required.
pub fn combined_expression(expr: Option<String>, criteria: Option<String>) -> Option<String> {
    match (expr, criteria) {
        (Some(e), Some(c)) => Some(format!("({e}) and {c}")),
        (e, c) => e.or(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::packet::tests::masqueraded_syn;

    #[test]
    fn criteria_match_at_any_hop() {
        let p = masqueraded_syn();
        let host = |s: &str| PacketFilter {
            hosts: vec![s.parse().expect("ip")],
            ..Default::default()
        };
        assert!(host("172.18.0.2").matches(&p));
        assert!(
            host("198.51.100.1").matches(&p),
            "the address after SNAT matches too"
        );
        assert!(!host("198.51.100.9").matches(&p));
        let port = PacketFilter {
            ports: vec![8080],
            ..Default::default()
        };
        assert!(port.matches(&p));
        let udp = PacketFilter {
            protos: vec![Proto::Udp],
            ..Default::default()
        };
        assert!(!udp.matches(&p));
        let both = PacketFilter {
            protos: vec![Proto::Tcp],
            ports: vec![9999],
            ..Default::default()
        };
        assert!(!both.matches(&p), "all criteria must hold");
        assert!(PacketFilter::default().matches(&p));
    }

    #[test]
    fn criteria_become_one_expression_libpcap_compiles() {
        let hosts: Vec<IpAddr> = vec![
            "172.18.0.2".parse().expect("ip"),
            "fd00::2".parse().expect("ip"),
        ];
        let c = criteria_expression(&[Proto::Tcp, Proto::Icmpv6], &hosts, &[8080]);
        assert_eq!(
            c.as_deref(),
            Some("(tcp or icmp6) and (host 172.18.0.2 or host fd00::2) and (port 8080)")
        );
        assert_eq!(criteria_expression(&[], &[], &[]), None);
        let both = combined_expression(Some("udp or tcp".into()), c).expect("both");
        assert!(
            both.starts_with("(udp or tcp) and (tcp or icmp6)"),
            "{both}"
        );
        assert_eq!(combined_expression(None, None), None);
        assert!(
            crate::pcapfilter::CompiledFilter::new(&both).is_ok(),
            "{both}"
        );
    }

    #[test]
    fn a_packet_seen_only_by_netfilter_is_filtered_as_ethernet() {
        let f = as_ethernet(&[0x45, 0, 0, 20]);
        assert_eq!(&f[12..15], &[0x08, 0x00, 0x45]);
        assert_eq!(&as_ethernet(&[0x60])[12..14], &[0x86, 0xdd]);
    }

    #[test]
    fn protocols_parse() {
        assert_eq!(parse_proto("TCP"), Ok(Proto::Tcp));
        assert_eq!(parse_proto("icmp6"), Ok(Proto::Icmpv6));
        assert!(parse_proto("sctp").is_err());
    }
}
