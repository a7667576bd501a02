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
            if !p
                .hops
                .iter()
                .any(|h| !h.bytes.is_empty() && prog.matches_captured(&h.bytes, h.len))
            {
                return false;
            }
        }
        let headers: Vec<_> = p.hops.iter().filter_map(|h| h.headers).collect();
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
    fn protocols_parse() {
        assert_eq!(parse_proto("TCP"), Ok(Proto::Tcp));
        assert_eq!(parse_proto("icmp6"), Ok(Proto::Icmpv6));
        assert!(parse_proto("sctp").is_err());
    }
}
