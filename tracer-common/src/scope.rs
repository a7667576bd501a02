//! Which packets belong to the traced containers, decided in the kernel before anything is
//! sent up. At a hop, a packet that is not tracked yet is in scope when:
//! - it is at a traced container's veth (or at an interface named with `--iface` alone),
//!   per `SCOPE_POINTS`;
//! - its source or destination there is a traced address (`SCOPE_ADDRS`);
//! - arriving (tc ingress, or at the PREROUTING/OUTPUT entry), its protocol and destination
//!   port are a traced container's published port (`SCOPE_PORTS`): the inbound packet before
//!   DNAT;
//! - arriving, its tuple is in `FLOWS`: NAT maps it to a traced container's flow (the reply
//!   to MASQUERADE, for the host's address).
//!
//! A packet in scope is tracked by its sk_buff from then on. One out of scope costs its
//! per-hop counter and these lookups, nothing more. User space fills the maps from the
//! targets (and updates them as containers come and go); the kernel only reads them.

/// `SCOPE_POINTS` flags of an interface.
/// Every packet at this point is in scope: a traced container's host veth.
pub const POINT_TRACED: u32 = 1;
/// Every packet at this point is in scope: an `--iface` traced without containers.
pub const POINT_ALL: u32 = 2;

/// Entries in `SCOPE_ADDRS` and `SCOPE_PORTS` at most (a `--network` of many containers).
pub const MAX_SCOPE_ADDRS: u32 = 4096;
pub const MAX_SCOPE_PORTS: u32 = 4096;
/// Interfaces in `SCOPE_POINTS` at most.
pub const MAX_SCOPE_POINTS: u32 = 1024;

/// Address families as in the kernel.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// A traced address (`SCOPE_ADDRS`' key): IPv4 in the first 4 bytes, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeAddr {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

impl ScopeAddr {
    pub const fn v4(a: [u8; 4]) -> Self {
        Self {
            addr: [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            family: AF_INET,
            _pad: [0; 3],
        }
    }

    pub const fn v6(addr: [u8; 16]) -> Self {
        Self {
            addr,
            family: AF_INET6,
            _pad: [0; 3],
        }
    }

    /// A flow key's address (`crate::flow::FlowKey` keeps IPv4 in the first 4 bytes).
    #[inline(always)]
    pub fn of_key(addr: &[u8; 16], ipv6: bool) -> Self {
        if ipv6 {
            Self::v6(*addr)
        } else {
            Self::v4([addr[0], addr[1], addr[2], addr[3]])
        }
    }
}

/// `SCOPE_PORTS`' key: a published host port and its protocol (6 TCP, 17 UDP, 132 SCTP).
#[inline(always)]
pub const fn port_key(proto: u8, port: u16) -> u32 {
    ((proto as u32) << 16) | port as u32
}

/// Bytes of the network header a netfilter observer reads to decide scope: an IPv6 header and
/// the ports after it, or an IPv4 header without options and its ports.
pub const NF_SCOPE_BYTES: usize = 44;

/// Where the observers build the keys they look up, one per CPU (`SCOPE_SCRATCH`): the
/// stack is too small for them beside everything else a tc or netfilter program holds.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ScopeScratch {
    pub src: ScopeAddr,
    pub dst: ScopeAddr,
    pub key: crate::flow::FlowKey,
    /// A netfilter observer's copy of the packet from its IP header.
    pub head: [u8; NF_SCOPE_BYTES],
}

impl ScopeScratch {
    pub const ZERO: Self = Self {
        src: ScopeAddr::v4([0; 4]),
        dst: ScopeAddr::v4([0; 4]),
        key: crate::flow::FlowKey::zeroed(),
        head: [0; NF_SCOPE_BYTES],
    };

    /// Parses `head`, the start of an IPv4 or IPv6 packet, into `src` and `dst`; gives its
    /// protocol and its ports (network byte order) when it has them and they are in the
    /// bytes. IPv4 options move the ports past the bytes read: such a packet is judged on its
    /// addresses alone. A non-first IPv4 fragment has no ports.
    #[inline(always)]
    pub fn parse_head(&mut self) -> Option<(u8, Option<[u8; 4]>)> {
        let h = &self.head;
        match h[0] >> 4 {
            4 => {
                let proto = h[9];
                let frag = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
                let ports = (h[0] & 0xf == 5 && frag == 0 && has_ports(proto))
                    .then_some([h[20], h[21], h[22], h[23]]);
                self.src = ScopeAddr::v4([h[12], h[13], h[14], h[15]]);
                self.dst = ScopeAddr::v4([h[16], h[17], h[18], h[19]]);
                Some((proto, ports))
            }
            6 => {
                let proto = h[6];
                let ports = has_ports(proto).then_some([h[40], h[41], h[42], h[43]]);
                self.src.family = AF_INET6;
                self.dst.family = AF_INET6;
                self.src._pad = [0; 3];
                self.dst._pad = [0; 3];
                let mut i = 0;
                while i < 16 {
                    self.src.addr[i] = self.head[8 + i];
                    self.dst.addr[i] = self.head[24 + i];
                    i += 1;
                }
                Some((proto, ports))
            }
            _ => None,
        }
    }

    /// `key` for the packet whose addresses are in `src` and `dst`: its flow key
    /// (`FLOWS`' key), as a tc observer parses it.
    #[inline(always)]
    pub fn set_key(&mut self, proto: u8, ports: Option<[u8; 4]>) {
        let p = ports.unwrap_or([0; 4]);
        self.key.src = self.src.addr;
        self.key.dst = self.dst.addr;
        self.key.sport = [p[0], p[1]];
        self.key.dport = [p[2], p[3]];
        self.key.proto = proto;
        self.key._pad = [0; 3];
    }
}

/// The destination port of ports as in a packet.
#[inline(always)]
pub const fn dport(ports: [u8; 4]) -> u16 {
    u16::from_be_bytes([ports[2], ports[3]])
}

/// TCP, UDP, SCTP, UDP-Lite: ports first in the transport header.
#[inline(always)]
pub const fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132 | 136)
}

/// The netfilter hooks where a packet not tracked yet is judged (at their entry): every packet
/// passes one of them first, PREROUTING when it arrives, OUTPUT when the host sends it.
#[inline(always)]
pub const fn judged_at_hook(hook: u32) -> bool {
    hook == crate::netfilter::HOOK_PREROUTING as u32 || hook == crate::netfilter::HOOK_OUTPUT as u32
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::ScopeAddr {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(ihl: u8, proto: u8, frag: [u8; 2]) -> [u8; NF_SCOPE_BYTES] {
        let mut h = [0u8; NF_SCOPE_BYTES];
        h[0] = 0x40 | ihl;
        h[6..8].copy_from_slice(&frag);
        h[9] = proto;
        h[12..16].copy_from_slice(&[198, 51, 100, 2]);
        h[16..20].copy_from_slice(&[198, 51, 100, 1]);
        h[20..24].copy_from_slice(&[0x9c, 0x40, 0x46, 0xa0]); // 40000 → 18080
        h
    }

    fn parse(h: [u8; NF_SCOPE_BYTES]) -> Option<(ScopeScratch, u8, Option<u16>)> {
        let mut s = ScopeScratch::ZERO;
        s.head = h;
        let (proto, ports) = s.parse_head()?;
        s.set_key(proto, ports);
        Some((s, proto, ports.map(dport)))
    }

    #[test]
    fn an_inbound_ipv4_packet_gives_its_addresses_and_destination_port() {
        let (s, proto, dport) = parse(ipv4(5, 6, [0x40, 0])).expect("ipv4");
        assert_eq!(s.src, ScopeAddr::v4([198, 51, 100, 2]));
        assert_eq!(s.dst, ScopeAddr::v4([198, 51, 100, 1]));
        assert_eq!((proto, dport), (6, Some(18080)));
        let k = s.key;
        assert_eq!(
            (&k.src[..4], u16::from_be_bytes(k.sport)),
            (&[198, 51, 100, 2][..], 40000)
        );
        assert_eq!(k.src[4..], [0; 12], "IPv4 as a tc observer keys it");
        assert_eq!(port_key(6, 18080), (6 << 16) | 18080);
        assert_ne!(port_key(6, 18080), port_key(17, 18080));
    }

    #[test]
    fn options_fragments_and_portless_protocols_have_no_port() {
        assert_eq!(parse(ipv4(6, 6, [0, 0])).map(|s| s.2), Some(None));
        assert_eq!(
            parse(ipv4(5, 17, [0x00, 0x10])).map(|s| s.2),
            Some(None),
            "a later fragment"
        );
        assert_eq!(parse(ipv4(5, 1, [0, 0])).map(|s| s.2), Some(None));
        assert!(parse([0u8; NF_SCOPE_BYTES]).is_none());
    }

    #[test]
    fn ipv6_addresses_are_their_own_family() {
        let mut h = [0u8; NF_SCOPE_BYTES];
        h[0] = 0x60;
        h[6] = 17;
        h[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        h[24] = 0xfd;
        h[42..44].copy_from_slice(&53u16.to_be_bytes());
        let (s, _, dport) = parse(h).expect("ipv6");
        assert_eq!(
            (s.src.family, s.src.addr[15], s.dst.addr[0]),
            (AF_INET6, 2, 0xfd)
        );
        assert_eq!(dport, Some(53));
        assert_eq!(s.key.src, s.src.addr);
        // An IPv6 address that starts like an IPv4 one is still another key.
        let mut like = [0u8; 16];
        like[..4].copy_from_slice(&[172, 18, 0, 2]);
        assert_ne!(ScopeAddr::v6(like), ScopeAddr::v4([172, 18, 0, 2]));
        assert_eq!(
            ScopeAddr::of_key(&like, false),
            ScopeAddr::v4([172, 18, 0, 2])
        );
    }

    #[test]
    fn only_the_first_hooks_judge() {
        assert!(judged_at_hook(0) && judged_at_hook(3));
        assert!(!judged_at_hook(1) && !judged_at_hook(2) && !judged_at_hook(4));
    }
}
