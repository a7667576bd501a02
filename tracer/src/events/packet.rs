//! Parsing the captured bytes of a frame: Ethernet (with VLAN tags), IPv4, IPv6, and TCP,
//! UDP, ICMP, ICMPv6. Truncated input yields what could be parsed, never a panic.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

// The walk to each header is tracer-common's, the kernel side's too: both agree on where
// the ports are. This module reads the fields there.
use super::digits::Ascii;
use tracer_common::headers::{ipv4_transport, ipv6_transport, network};
pub use tracer_common::headers::{ETH_P_ARP, ETH_P_IP, ETH_P_IPV6};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    /// ARP (IPv4 over Ethernet): src/dst are the sender and target protocol addresses.
    Arp,
    Other(u8),
}

impl Proto {
    fn from_ip(n: u8) -> Self {
        match n {
            6 => Self::Tcp,
            17 => Self::Udp,
            1 => Self::Icmp,
            58 => Self::Icmpv6,
            n => Self::Other(n),
        }
    }

    /// The IP protocol number (ARP has none: 0).
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Icmp => 1,
            Self::Icmpv6 => 58,
            Self::Arp => 0,
            Self::Other(n) => n,
        }
    }

    /// The protocol [`Proto::name`] calls `name`.
    pub fn from_name(name: &str) -> Self {
        match name {
            "tcp" => Self::Tcp,
            "udp" => Self::Udp,
            "icmp" => Self::Icmp,
            "icmpv6" => Self::Icmpv6,
            "arp" => Self::Arp,
            other => other
                .strip_prefix("ip-proto-")
                .and_then(|n| n.parse().ok())
                .map_or(Self::Other(255), Self::Other),
        }
    }

    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match self {
            Self::Tcp => "tcp".into(),
            Self::Udp => "udp".into(),
            Self::Icmp => "icmp".into(),
            Self::Icmpv6 => "icmpv6".into(),
            Self::Arp => "arp".into(),
            Self::Other(n) => format!("ip-proto-{n}").into(),
        }
    }
}

/// The transport-layer part of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        kind: u8,
        code: u8,
        /// Echo identifier (ICMP/ICMPv6 echo request and reply), else 0.
        id: u16,
        seq: u16,
    },
    /// ARP operation: 1 request, 2 reply.
    Arp {
        op: u16,
    },
    None,
}

/// An IP packet's headers as captured at one observation point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Headers {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    pub ttl: u8,
    /// IPv4 identification (0 for IPv6): helps tell apart retransmissions.
    pub ip_id: u16,
    pub l4: L4,
}

/// Address and port of one end, printed like `172.18.0.2:41234` or `[fd00::2]:80`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (ip, None) => write!(f, "{ip}"),
            (IpAddr::V4(ip), Some(p)) => write!(f, "{ip}:{p}"),
            (IpAddr::V6(ip), Some(p)) => write!(f, "[{ip}]:{p}"),
        }
    }
}

impl Endpoint {
    /// The same text as `Display`, written without the formatting machinery for IPv4: every
    /// hop of every shown packet has two of these, and `Ipv4Addr`'s `Display` was a fifth of
    /// the time spent per packet (perf, under `cargo xtask bench`'s load).
    pub fn text(&self) -> String {
        let IpAddr::V4(ip) = self.ip else {
            return self.to_string();
        };
        let mut s = Ascii::<21>::new();
        for (i, o) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                s.byte(b'.');
            }
            s.number(u32::from(o), 1);
        }
        if let Some(p) = self.port {
            s.byte(b':');
            s.number(u32::from(p), 1);
        }
        s.as_str().to_owned()
    }
}

impl Headers {
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.l4 {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => Some((sport, dport)),
            _ => None,
        }
    }

    pub fn source(&self) -> Endpoint {
        Endpoint {
            ip: self.src,
            port: self.ports().map(|p| p.0),
        }
    }

    pub fn destination(&self) -> Endpoint {
        Endpoint {
            ip: self.dst,
            port: self.ports().map(|p| p.1),
        }
    }

    /// A tcpdump-like one-line description: `TCP 172.18.0.2:41234 → 198.51.100.2:8080 [S]`,
    /// `ARP who-has 172.18.0.1 tell 172.18.0.2`, `ICMP 172.18.0.2 → 198.51.100.2 echo request id 7 seq 1`.
    pub fn summary(&self) -> String {
        self.summary_of(&self.source().text(), &self.destination().text())
    }

    /// The summary, from the texts of `source()` and `destination()` (which the model has
    /// already written for the packet's `src` and `dst`): pushed piece by piece, as this is
    /// written for every shown packet.
    pub fn summary_of(&self, src: &str, dst: &str) -> String {
        let mut s = String::with_capacity(24 + src.len() + dst.len());
        let push = |s: &mut String, parts: &[&str]| parts.iter().for_each(|p| s.push_str(p));
        match self.l4 {
            L4::Arp { op: 1 } => push(&mut s, &["ARP who-has ", dst, " tell ", src]),
            L4::Arp { op: 2 } => push(&mut s, &["ARP reply ", src, " is-at (to ", dst, ")"]),
            L4::Arp { op } => push(&mut s, &["ARP op ", &op.to_string(), " ", src, " → ", dst]),
            _ => {
                s.extend(self.proto.name().chars().map(|c| c.to_ascii_uppercase()));
                push(&mut s, &[" ", src, " → ", dst]);
                match self.l4 {
                    L4::Tcp { flags, .. } => push(&mut s, &[" [", &tcp_flags_str(flags), "]"]),
                    L4::Icmp { .. } => push(&mut s, &[" ", &self.icmp_what()]),
                    _ => {}
                }
            }
        }
        s
    }

    /// What an ICMP message is, for the summary.
    fn icmp_what(&self) -> String {
        let L4::Icmp {
            kind,
            code,
            id,
            seq,
        } = self.l4
        else {
            return String::new();
        };
        match (self.proto, kind) {
            (Proto::Icmp, 8) | (Proto::Icmpv6, 128) => format!("echo request id {id} seq {seq}"),
            (Proto::Icmp, 0) | (Proto::Icmpv6, 129) => format!("echo reply id {id} seq {seq}"),
            (Proto::Icmp, 3) => format!("unreachable code {code}"),
            (Proto::Icmp, 11) => "time exceeded".to_owned(),
            _ => format!("type {kind} code {code}"),
        }
    }

    pub fn tcp_flags(&self) -> Option<u8> {
        match self.l4 {
            L4::Tcp { flags, .. } => Some(flags),
            _ => None,
        }
    }
}

/// tcpdump's letters for TCP flags: `S`, `S.`, `P.`, `F.`, `R`, ...
pub fn tcp_flags_str(flags: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
        (0x40, 'E'),
        (0x80, 'W'),
    ] {
        if flags & bit != 0 {
            s.push(c);
        }
    }
    if flags & 0x10 != 0 {
        s.push('.');
    }
    if s.is_empty() {
        s.push_str("none");
    }
    s
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses a frame that starts with an Ethernet header.
pub fn parse_ethernet(frame: &[u8]) -> Option<Headers> {
    let n = network(frame)?;
    let rest = frame.get(n.offset as usize..)?;
    if n.ethertype == ETH_P_ARP {
        return parse_arp(rest);
    }
    parse_l3(n.ethertype, rest)
}

fn parse_arp(p: &[u8]) -> Option<Headers> {
    // Ethernet hardware (1), IPv4 protocol, 6-byte MACs, 4-byte addresses.
    if be16(p, 0)? != 1 || be16(p, 2)? != ETH_P_IP || *p.get(4)? != 6 || *p.get(5)? != 4 {
        return None;
    }
    Some(Headers {
        src: IpAddr::V4(Ipv4Addr::from(be32(p, 14)?)),
        dst: IpAddr::V4(Ipv4Addr::from(be32(p, 24)?)),
        proto: Proto::Arp,
        ttl: 0,
        ip_id: 0,
        l4: L4::Arp { op: be16(p, 6)? },
    })
}

/// Parses an IP packet whose ethertype is known (`ETH_P_IP` or `ETH_P_IPV6`).
pub fn parse_l3(ethertype: u16, pkt: &[u8]) -> Option<Headers> {
    match ethertype {
        ETH_P_IP => parse_ipv4(pkt),
        ETH_P_IPV6 => parse_ipv6(pkt),
        _ => None,
    }
}

fn parse_ipv4(p: &[u8]) -> Option<Headers> {
    let h: [u8; 20] = p.get(..20)?.try_into().ok()?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let t = ipv4_transport(&h, 0);
    let proto = Proto::from_ip(t.proto);
    // Only the first fragment carries the transport header.
    let l4 = match t.at() {
        Some(at) => parse_l4(proto, p.get(at as usize..).unwrap_or(&[])),
        None => L4::None,
    };
    Some(Headers {
        src: IpAddr::V4(Ipv4Addr::from(be32(p, 12)?)),
        dst: IpAddr::V4(Ipv4Addr::from(be32(p, 16)?)),
        proto,
        ttl: h[8],
        ip_id: be16(p, 4)?,
        l4,
    })
}

fn parse_ipv6(p: &[u8]) -> Option<Headers> {
    if *p.first()? >> 4 != 6 {
        return None;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(p.get(8..24)?).ok()?);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(p.get(24..40)?).ok()?);
    let t = ipv6_transport(p, *p.get(6)?, 0);
    let proto = Proto::from_ip(t.proto);
    let l4 = match t.at() {
        Some(at) => parse_l4(proto, p.get(at as usize..).unwrap_or(&[])),
        None => L4::None,
    };
    Some(Headers {
        src: IpAddr::V6(src),
        dst: IpAddr::V6(dst),
        proto,
        ttl: *p.get(7)?,
        ip_id: 0,
        l4,
    })
}

fn parse_l4(proto: Proto, p: &[u8]) -> L4 {
    let parsed = match proto {
        Proto::Tcp => (|| {
            Some(L4::Tcp {
                sport: be16(p, 0)?,
                dport: be16(p, 2)?,
                seq: be32(p, 4)?,
                ack: be32(p, 8)?,
                flags: *p.get(13)?,
            })
        })(),
        Proto::Udp => (|| {
            Some(L4::Udp {
                sport: be16(p, 0)?,
                dport: be16(p, 2)?,
            })
        })(),
        Proto::Icmp | Proto::Icmpv6 => (|| {
            let kind = *p.first()?;
            let code = *p.get(1)?;
            let echo = matches!(
                (proto, kind),
                (Proto::Icmp, 0 | 8) | (Proto::Icmpv6, 128 | 129)
            );
            let (id, seq) = if echo {
                (be16(p, 4)?, be16(p, 6)?)
            } else {
                (0, 0)
            };
            Some(L4::Icmp {
                kind,
                code,
                id,
                seq,
            })
        })(),
        Proto::Arp | Proto::Other(_) => None,
    };
    parsed.unwrap_or(L4::None)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    #[test]
    fn endpoint_text_is_its_display() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut ends = vec![
            Endpoint {
                ip: IpAddr::from([0, 0, 0, 0]),
                port: Some(0),
            },
            Endpoint {
                ip: IpAddr::from([255, 255, 255, 255]),
                port: Some(65535),
            },
            Endpoint {
                ip: IpAddr::from([10, 0, 100, 9]),
                port: None,
            },
            Endpoint {
                ip: "fd00::2".parse().expect("v6"),
                port: Some(80),
            },
        ];
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let [a, b, c, d, p0, p1, has, _] = x.to_le_bytes();
            ends.push(Endpoint {
                ip: IpAddr::from([a, b, c, d]),
                port: (has & 1 == 1).then(|| u16::from_le_bytes([p0, p1])),
            });
        }
        for e in ends {
            assert_eq!(e.text(), e.to_string());
        }
    }

    /// An Ethernet + IPv4 + TCP SYN frame from 172.18.0.2:41234 to 198.51.100.2:8080.
    pub fn tcp_syn_v4() -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[172, 18, 0, 2]);
        ip[16..20].copy_from_slice(&[198, 51, 100, 2]);
        let tcp = &mut f[34..54];
        tcp[0..2].copy_from_slice(&41234u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&8080u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
        tcp[12] = 0x50;
        tcp[13] = 0x02;
        f
    }

    #[test]
    fn parses_ipv4_tcp() {
        let h = parse_ethernet(&tcp_syn_v4()).expect("parsed");
        assert_eq!(h.source().to_string(), "172.18.0.2:41234");
        assert_eq!(h.destination().to_string(), "198.51.100.2:8080");
        assert_eq!(h.proto, Proto::Tcp);
        assert_eq!(h.tcp_flags(), Some(0x02));
        assert_eq!(h.ip_id, 0x1234);
        assert_eq!(h.ttl, 64);
    }

    #[test]
    fn parses_through_a_vlan_tag() {
        let plain = tcp_syn_v4();
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a]);
        tagged.extend_from_slice(&plain[12..]);
        assert_eq!(parse_ethernet(&tagged), parse_ethernet(&plain));
    }

    #[test]
    fn parses_ipv6_udp_and_formats_brackets() {
        let mut f = vec![0u8; 14 + 40 + 8];
        f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        f[14] = 0x60;
        f[14 + 6] = 17;
        f[14 + 7] = 63;
        f[14 + 8 + 15] = 2; // src ::2
        f[14 + 8] = 0xfd;
        f[14 + 24] = 0xfd;
        f[14 + 24 + 15] = 1; // dst fd00::1
        f[54..56].copy_from_slice(&5353u16.to_be_bytes());
        f[56..58].copy_from_slice(&53u16.to_be_bytes());
        let h = parse_ethernet(&f).expect("parsed");
        assert_eq!(h.proto, Proto::Udp);
        assert_eq!(h.source().to_string(), "[fd00::2]:5353");
        assert_eq!(h.destination().to_string(), "[fd00::1]:53");
        assert_eq!(h.ttl, 63);
    }

    #[test]
    fn parses_icmp_echo_without_ports() {
        let mut f = tcp_syn_v4();
        f[14 + 9] = 1;
        f[34] = 8; // echo request
        f[35] = 0; // code
        f[34 + 4..34 + 6].copy_from_slice(&77u16.to_be_bytes());
        f[34 + 6..34 + 8].copy_from_slice(&3u16.to_be_bytes());
        let h = parse_ethernet(&f).expect("parsed");
        assert_eq!(
            h.l4,
            L4::Icmp {
                kind: 8,
                code: 0,
                id: 77,
                seq: 3
            }
        );
        assert_eq!(h.source().to_string(), "172.18.0.2");
        assert_eq!(h.ports(), None);
    }

    #[test]
    fn truncated_frames_never_panic() {
        let f = tcp_syn_v4();
        for n in 0..f.len() {
            let _ = parse_ethernet(&f[..n]);
        }
        // IP header complete, TCP header cut: addresses survive, L4 is unknown.
        let h = parse_ethernet(&f[..40]).expect("ip header present");
        assert_eq!(h.l4, L4::None);
        assert!(parse_ethernet(&f[..20]).is_none());
    }

    #[test]
    fn other_frames_are_not_parsed() {
        let mut f = tcp_syn_v4();
        f[12..14].copy_from_slice(&0x88ccu16.to_be_bytes()); // LLDP
        assert!(parse_ethernet(&f).is_none());
    }

    #[test]
    fn parses_arp_like_tcpdump() {
        let mut f = vec![0u8; 42];
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f[28..32].copy_from_slice(&[172, 18, 0, 2]);
        f[38..42].copy_from_slice(&[172, 18, 0, 1]);
        let h = parse_ethernet(&f).expect("arp");
        assert_eq!(h.proto, Proto::Arp);
        assert_eq!(h.summary(), "ARP who-has 172.18.0.1 tell 172.18.0.2");
        f[21] = 2;
        assert!(parse_ethernet(&f)
            .expect("arp")
            .summary()
            .starts_with("ARP reply 172.18.0.2"));
    }

    #[test]
    fn summaries_read_like_tcpdump() {
        let h = parse_ethernet(&tcp_syn_v4()).expect("tcp");
        assert_eq!(h.summary(), "TCP 172.18.0.2:41234 → 198.51.100.2:8080 [S]");
        let udp = |src: &str, dst: &str, proto, l4| Headers {
            src: src.parse().expect("address"),
            dst: dst.parse().expect("address"),
            proto,
            ttl: 64,
            ip_id: 0,
            l4,
        };
        let ports = L4::Udp {
            sport: 40000,
            dport: 53,
        };
        let v4 = udp("172.18.0.2", "198.51.100.2", Proto::Udp, ports);
        assert_eq!(v4.summary(), "UDP 172.18.0.2:40000 → 198.51.100.2:53");
        let v6 = udp("fd00::2", "2001:db8::1", Proto::Udp, ports);
        assert_eq!(v6.summary(), "UDP [fd00::2]:40000 → [2001:db8::1]:53");
        let gre = udp("172.18.0.2", "198.51.100.2", Proto::Other(47), L4::None);
        assert_eq!(gre.summary(), "IP-PROTO-47 172.18.0.2 → 198.51.100.2");
    }

    #[test]
    fn tcp_flags_read_like_tcpdump() {
        assert_eq!(tcp_flags_str(0x02), "S");
        assert_eq!(tcp_flags_str(0x12), "S.");
        assert_eq!(tcp_flags_str(0x18), "P.");
        assert_eq!(tcp_flags_str(0x11), "F.");
        assert_eq!(tcp_flags_str(0x04), "R");
        assert_eq!(tcp_flags_str(0), "none");
    }
}
