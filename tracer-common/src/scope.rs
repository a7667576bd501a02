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
//! per-hop counter and these checks, nothing more. User space fills the maps from the
//! targets (and updates them as containers come and go); the kernel only reads them.
//!
//! The checks are cheap for the packets that fail them, a busy neighbour's: bitmaps in BPF
//! arrays (whose lookups the verifier inlines) come before any hash lookup. The ports' bitmap
//! is exact (`SCOPE_PORT_BITS`); the addresses' (`SCOPE_ADDR_BITS`) and the NAT'd flows'
//! (`FLOW_MARKS`, set by the kernel as it learns a flow) are hashed, so a set bit is
//! confirmed in `SCOPE_ADDRS` or `FLOWS`.

use crate::headers::{
    ipv4_transport, ipv6_transport, network, plain_v4, plain_v4_transport, plain_v6,
    plain_v6_addresses, Frame, ETH_P_IP, ETH_P_IPV6, PLAIN_V4_L4, PLAIN_V6_L4,
};

/// `SCOPE_POINTS` flags of an interface.
/// Every packet at this point is in scope: a traced container's host veth.
pub const POINT_TRACED: u32 = 1;
/// Every packet at this point is in scope: an `--iface` traced without containers.
pub const POINT_ALL: u32 = 2;

/// Entries in `SCOPE_ADDRS` at most (a `--network` of many containers).
pub const MAX_SCOPE_ADDRS: u32 = 4096;

/// `SCOPE_ADDR_BITS`: 64-bit words of the addresses' hashed bitmap (65,536 bits).
pub const ADDR_BITMAP_WORDS: u32 = 1024;
/// `SCOPE_PORT_BITS`: one bit per port of each protocol with ports (4 × 65,536 bits).
pub const PORT_BITMAP_WORDS: u32 = 4096;
/// `FLOW_MARKS`: words marked (set to 1) for the NAT'd flows the kernel learnt.
pub const FLOW_MARK_WORDS: u32 = 16_384;
/// Interfaces in `SCOPE_POINTS` at most.
pub const MAX_SCOPE_POINTS: u32 = 1024;
/// `SCOPE_POINT_BITS`: one bit per ifindex below 65,536, set for the points in `SCOPE_POINTS`
/// (every flag there puts all of a point's packets in scope). A busy neighbour's packet is
/// asked "is this a traced point?" at each tc hop; the bit answers with an array lookup the
/// verifier inlines, where the hash lookup cost a helper call and a hash. An ifindex beyond
/// the bitmap is looked up in `SCOPE_POINTS` as before.
pub const POINT_BITMAP_WORDS: u32 = 1024;

/// An ifindex's bit in `SCOPE_POINT_BITS`, if the bitmap covers it.
#[inline(always)]
pub const fn point_bit(ifindex: u32) -> Option<u32> {
    if ifindex < POINT_BITMAP_WORDS * 64 {
        Some(ifindex)
    } else {
        None
    }
}

/// Address families as in the kernel.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// A traced address (`SCOPE_ADDRS`' key): IPv4 in the first 4 bytes, the rest zero.
#[repr(C, align(4))]
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

    /// Writes an address in place, word by word: assigning the fields makes the BPF target
    /// call `memset` for the zeroed rest of the array, a subprogram call per field.
    #[inline(always)]
    pub fn set(&mut self, words: [u32; 4], family: u8) {
        let p = self as *mut Self as *mut u32;
        // SAFETY: `Self` is 20 bytes, 4-aligned, plain data: five u32 words.
        unsafe {
            p.write(words[0]);
            p.add(1).write(words[1]);
            p.add(2).write(words[2]);
            p.add(3).write(words[3]);
            p.add(4).write(u32::from_ne_bytes([family, 0, 0, 0]));
        }
    }

    #[inline(always)]
    pub fn set_v4(&mut self, a: [u8; 4]) {
        self.set([u32::from_ne_bytes(a), 0, 0, 0], AF_INET);
    }

    #[inline(always)]
    pub fn set_v6(&mut self, a: &[u8; 16]) {
        let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        self.set([w(0), w(4), w(8), w(12)], AF_INET6);
    }

    /// The address's four words.
    #[inline(always)]
    pub fn words(&self) -> [u32; 4] {
        let p = self as *const Self as *const u32;
        // SAFETY: as in `set`.
        unsafe { [p.read(), p.add(1).read(), p.add(2).read(), p.add(3).read()] }
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

/// A published host port's bit in `SCOPE_PORT_BITS` (TCP, UDP, SCTP, UDP-Lite); None for a
/// protocol without ports.
#[inline(always)]
pub const fn port_bit(proto: u8, port: u16) -> Option<u32> {
    let index = match proto {
        6 => 0,
        17 => 1,
        132 => 2,
        136 => 3,
        _ => return None,
    };
    Some((index << 16) | port as u32)
}

/// An address's bit in `SCOPE_ADDR_BITS`: its four 32-bit words and its family, folded and
/// mixed (Fibonacci hashing) into 16 bits.
#[inline(always)]
pub fn addr_bit(a: &ScopeAddr) -> u32 {
    let w = |i: usize| u32::from_ne_bytes([a.addr[i], a.addr[i + 1], a.addr[i + 2], a.addr[i + 3]]);
    let folded = w(0) ^ w(4).rotate_left(7) ^ w(8).rotate_left(14) ^ w(12).rotate_left(21);
    (folded ^ u32::from(a.family)).wrapping_mul(0x9e37_79b1) >> 16
}

/// A NAT'd flow's word in `FLOW_MARKS` (its reply tuple's destination and ports).
#[inline(always)]
pub fn flow_mark(k: &crate::flow::FlowKey) -> u32 {
    let w = |i: usize| u32::from_ne_bytes([k.dst[i], k.dst[i + 1], k.dst[i + 2], k.dst[i + 3]]);
    let ports = u32::from_ne_bytes([k.sport[0], k.sport[1], k.dport[0], k.dport[1]]);
    let folded = w(0) ^ w(4).rotate_left(7) ^ w(8).rotate_left(14) ^ w(12).rotate_left(21);
    ((folded ^ ports.rotate_left(11) ^ u32::from(k.proto)).wrapping_mul(0x9e37_79b1) >> 18)
        % FLOW_MARK_WORDS
}

/// Where a bit is in a bitmap of 64-bit words: the word, and the mask within it.
#[inline(always)]
pub const fn word_and_mask(bit: u32) -> (u32, u64) {
    (bit >> 6, 1u64 << (bit & 63))
}

/// Bytes of the network header a netfilter observer reads to decide scope (an IPv6 header and
/// the ports after it, or an IPv4 header without options and its ports) and to tell a packet
/// from another at its address (its fingerprint, TCP's sequence included).
pub const NF_SCOPE_BYTES: usize = crate::flow::PRINT_SOURCE;

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
                // The bytes read end at 20 + 4: with options, the ports are past them.
                let t = crate::headers::ipv4_transport_of(h[0], [h[6], h[7]], h[9], 0);
                let proto = t.proto;
                let ports =
                    (t.offset == 20 && has_ports(proto)).then_some([h[20], h[21], h[22], h[23]]);
                let (src, dst) = ([h[12], h[13], h[14], h[15]], [h[16], h[17], h[18], h[19]]);
                self.src.set_v4(src);
                self.dst.set_v4(dst);
                Some((proto, ports))
            }
            6 => {
                // Extension headers move the ports past the bytes read (as IPv4 options do).
                let proto = h[6];
                let ports = has_ports(proto).then_some([h[40], h[41], h[42], h[43]]);
                let w = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
                let (src, dst) = ([w(8), w(12), w(16), w(20)], [w(24), w(28), w(32), w(36)]);
                self.src.set(src, AF_INET6);
                self.dst.set(dst, AF_INET6);
                Some((proto, ports))
            }
            _ => None,
        }
    }

    /// Reads a frame's addresses into `src` and `dst`; gives its protocol, and its ports if
    /// it has them and they count (`ingress`: at an egress only the addresses are looked
    /// at). Most frames take one read, in place on the kernel side (`plain_v4`, `plain_v6`);
    /// others are walked header by header.
    #[inline(always)]
    pub fn read_frame<F: Frame + ?Sized>(
        &mut self,
        frame: &F,
        ingress: bool,
    ) -> Option<(u8, Option<[u8; 4]>)> {
        if let Some(h) = frame.plain_head() {
            if plain_v4(h) {
                let t = plain_v4_transport(h);
                self.src.set_v4([h[26], h[27], h[28], h[29]]);
                self.dst.set_v4([h[30], h[31], h[32], h[33]]);
                let ports = ingress && t.at().is_some() && has_ports(t.proto);
                return Some((t.proto, ports.then(|| four(h, PLAIN_V4_L4))));
            }
        }
        if let Some(h) = frame.plain_v6_head() {
            if plain_v6(h) {
                let (src, dst) = plain_v6_addresses(h)?;
                self.src.set_v6(src);
                self.dst.set_v6(dst);
                let proto = h[20];
                let ports = ingress && has_ports(proto);
                return Some((proto, ports.then(|| four(h, PLAIN_V6_L4))));
            }
        }
        let n = network(frame)?;
        let l3 = n.offset;
        let t = match n.ethertype {
            ETH_P_IP => {
                let h = frame.bytes::<20>(l3)?;
                self.src.set_v4([h[12], h[13], h[14], h[15]]);
                self.dst.set_v4([h[16], h[17], h[18], h[19]]);
                ipv4_transport(&h, l3)
            }
            ETH_P_IPV6 => {
                let h = frame.bytes::<8>(l3)?;
                self.src.set_v6(&frame.bytes::<16>(l3 + 8)?);
                self.dst.set_v6(&frame.bytes::<16>(l3 + 24)?);
                ipv6_transport(frame, h[6], l3)
            }
            _ => return None,
        };
        let ports = match t.at() {
            Some(at) if ingress && has_ports(t.proto) => frame.bytes::<4>(at),
            _ => None,
        };
        Some((t.proto, ports))
    }

    /// `key` for the packet whose addresses are in `src` and `dst`: its flow key
    /// (`FLOWS`' key), as a tc observer parses it.
    #[inline(always)]
    pub fn set_key(&mut self, proto: u8, ports: Option<[u8; 4]>) {
        let (src, dst) = (self.src.words(), self.dst.words());
        self.key.set(src, dst, ports.unwrap_or([0; 4]), proto);
    }
}

/// The four bytes at `at` of a frame's head: its ports, where its transport header is there.
#[inline(always)]
fn four<const N: usize>(h: &[u8; N], at: u32) -> [u8; 4] {
    let i = at as usize;
    [h[i], h[i + 1], h[i + 2], h[i + 3]]
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
        assert_eq!(port_bit(6, 18080), Some(18080));
        assert_eq!(port_bit(17, 18080), Some((1 << 16) | 18080));
        assert_eq!(port_bit(1, 0), None);
        let (word, mask) = word_and_mask(port_bit(136, 65535).expect("udplite"));
        assert_eq!((word, mask), (PORT_BITMAP_WORDS - 1, 1 << 63));
    }

    #[test]
    fn the_points_bitmap_covers_ifindex_below_65536() {
        assert_eq!(point_bit(0), Some(0));
        let last = point_bit(65_535).expect("covered");
        assert_eq!(word_and_mask(last), (POINT_BITMAP_WORDS - 1, 1 << 63));
        assert_eq!(point_bit(65_536), None);
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
    fn the_hashed_bits_stay_in_their_bitmaps_and_spread() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..=255u8 {
            let b = addr_bit(&ScopeAddr::v4([172, 18, 0, i]));
            assert!(b < ADDR_BITMAP_WORDS * 64);
            seen.insert(b);
        }
        assert!(
            seen.len() > 250,
            "a /24 takes nearly as many bits: {}",
            seen.len()
        );
        assert_ne!(
            addr_bit(&ScopeAddr::v4([172, 18, 0, 2])),
            addr_bit(&ScopeAddr::v6([
                172, 18, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]))
        );
        let mut k = crate::flow::FlowKey::zeroed();
        let mut marks = std::collections::BTreeSet::new();
        for port in 32768..33768u16 {
            k.dport = port.to_be_bytes();
            let m = flow_mark(&k);
            assert!(m < FLOW_MARK_WORDS);
            marks.insert(m);
        }
        assert!(marks.len() > 950, "{}", marks.len());
    }

    #[test]
    fn only_the_first_hooks_judge() {
        assert!(judged_at_hook(0) && judged_at_hook(3));
        assert!(!judged_at_hook(1) && !judged_at_hook(2) && !judged_at_hook(4));
    }

    /// A frame read only by the walk: no head read at once.
    struct Walked<'a>(&'a [u8]);

    impl Frame for Walked<'_> {
        fn bytes<const N: usize>(&self, offset: u32) -> Option<[u8; N]> {
            self.0.bytes(offset)
        }

        fn plain_head(&self) -> Option<&[u8; crate::headers::PLAIN_V4_LEN]> {
            None
        }
    }

    #[test]
    fn one_read_of_a_frame_is_the_walk() {
        let mut next = crate::test_bytes(0x9e37_79b9_7f4a_7c15);
        let read = |f: &[u8], ingress: bool| {
            let (mut a, mut b) = (ScopeScratch::ZERO, ScopeScratch::ZERO);
            let got = (a.read_frame(f, ingress), a.src, a.dst);
            let walked = (b.read_frame(&Walked(f), ingress), b.src, b.dst);
            assert_eq!(got, walked, "{f:?} ingress {ingress}");
            got.0.is_some()
        };
        let mut parsed = [0usize; 2];
        for (v6, ethertype, first) in [(false, [0x08, 0x00], 0x45), (true, [0x86, 0xdd], 0x60)] {
            for proto in [0u8, 1, 6, 17, 43, 44, 58, 60, 132, 136] {
                for len in 0..80 {
                    let mut f: Vec<u8> = (0..len).map(|_| next()).collect();
                    let at = if v6 { 20 } else { 23 };
                    for (i, b) in [(12, ethertype[0]), (13, ethertype[1]), (14, first)] {
                        if i < len {
                            f[i] = b;
                        }
                    }
                    if at < len {
                        f[at] = proto;
                    }
                    if !v6 && len > 21 {
                        // Not a later fragment: its ports are read.
                        f[20] &= 0xe0;
                        f[21] = 0;
                    }
                    for ingress in [true, false] {
                        if read(&f, ingress) {
                            parsed[usize::from(v6)] += 1;
                        }
                    }
                }
            }
        }
        // Every frame long enough for its headers parsed, both ways.
        assert_eq!(parsed, [10 * (80 - 34) * 2, 10 * (80 - 54) * 2]);
    }
}
