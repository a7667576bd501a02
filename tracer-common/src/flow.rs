//! Following a filtered packet across NAT, with tcpdump's semantics at every hop.
//!
//! A packet that matches the user's filter at one tc hop is tracked by its sk_buff at every
//! later hop, whatever NAT does to its headers; its tuple there is its *origin*. At a later hop
//! where its tuple differs from the origin (NAT rewrote it), the reversed tuples are noted in
//! `FLOWS`: a packet coming the other way with tuple `reverse(now)` will look like
//! `reverse(origin)` once NAT has undone the rewrite. So when a packet arriving at an ingress
//! hop does not match the filter as it is, and `FLOWS` knows its tuple, the filter runs again
//! on a *view*: its first bytes with the addresses and ports it will have after NAT. A match
//! there reports it from this hop on: the reply before de-NAT (`host 172.18.0.2` sees it
//! arrive for the uplink's address, and `src host 172.18.0.2` does not).
//!
//! The tail calls: tc program → filter (on the packet) → on a match, the reporting program; on
//! no match at ingress, the miss program → filter (on the view) → on a match, the reporting
//! program.
//!
//! What `TRACKED` holds of a packet, and how a packet is told from the next one at its
//! address, is in `tracked.rs`.

pub use crate::tracked::{
    fingerprint_at_ip, Tracked, ORIGIN_NONE, ORIGIN_PRINT, ORIGIN_TUPLE, PRINT_SOURCE,
};

/// Program-array slots.
/// `TRACKED`'s size: sk_buffs tracked at once at most, the packets in flight.
pub const MAX_TRACKED: u32 = 65_536;
/// `FLOWS`' size: NAT'd flows whose replies are in scope.
pub const MAX_NAT_FLOWS: u32 = 65_536;

pub const FILTER_SLOT_INGRESS: u32 = 0;
pub const FILTER_SLOT_EGRESS: u32 = 1;
pub const MATCHED_SLOT_INGRESS: u32 = 2;
pub const MATCHED_SLOT_EGRESS: u32 = 3;
/// Ingress only: at an egress hop, netfilter has done its rewriting.
pub const MISS_SLOT: u32 = 4;
pub const VIEW_FILTER_SLOT: u32 = 5;
pub const FILTER_SLOTS: u32 = 6;

/// Bytes of a packet the view holds (every header the filters look at; a load past them is
/// "no match", as past a capture's snap length).
pub const VIEW_LEN: usize = 128;

/// A packet as it will look after NAT (`VIEW`, per CPU): `len` bytes of `data` are valid.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct View {
    pub len: u32,
    pub data: [u8; VIEW_LEN],
}

impl Parsed {
    /// `ports_at` when the packet has no ports (or they are past the frame).
    pub const NO_PORTS: u32 = u32::MAX;

    /// What `FlowKey::parse_frame` fills: no key, no ports, IPv4.
    const START: Self = Self {
        key: FlowKey::zeroed(),
        l3: PLAIN_V4_L3,
        ports_at: Self::NO_PORTS,
        ipv6: false,
        fingerprint: 0,
    };

    /// The offset of the ports, if the packet has them.
    pub const fn ports(&self) -> Option<u32> {
        if self.ports_at == Self::NO_PORTS {
            None
        } else {
            Some(self.ports_at)
        }
    }
}

/// A parsed frame: its flow key and where its headers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub key: FlowKey,
    /// Offset of the IP header.
    pub l3: u32,
    /// Offset of the ports, or [`Parsed::NO_PORTS`]. Not an `Option`: the kernel side bounds
    /// its write there by one comparison on this very value (see `write_into`).
    pub ports_at: u32,
    pub ipv6: bool,
    /// What NAT leaves alone and the next packet of the flow does not share: the IP total
    /// length, ID and fragment field (IPv6: payload length and flow label), and TCP's sequence
    /// number.
    pub fingerprint: u64,
}

/// A flow's addresses (IPv4 in the first 4 bytes), ports and protocol, as in the packet
/// (network byte order). ICMP and other protocols without ports have ports 0.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

pub use crate::headers::Frame;
use crate::headers::{
    ipv4_transport, ipv6_transport, network, plain_v4, plain_v4_transport, ETH_P_IP, ETH_P_IPV6,
    PLAIN_V4_L3, PLAIN_V4_L4, PLAIN_V4_LEN,
};

impl FlowKey {
    /// Writes the key in place, word by word (see `ScopeAddr::set`): the addresses' words,
    /// the ports as in the packet, the protocol.
    #[inline(always)]
    pub fn set(&mut self, src: [u32; 4], dst: [u32; 4], ports: [u8; 4], proto: u8) {
        let p = self as *mut Self as *mut u32;
        // SAFETY: `Self` is 40 bytes, 4-aligned, plain data: ten u32 words.
        unsafe {
            // Written out: a loop over both arrays compiles to a walk the verifier rejects.
            p.write(src[0]);
            p.add(1).write(src[1]);
            p.add(2).write(src[2]);
            p.add(3).write(src[3]);
            p.add(4).write(dst[0]);
            p.add(5).write(dst[1]);
            p.add(6).write(dst[2]);
            p.add(7).write(dst[3]);
            p.add(8).write(u32::from_ne_bytes(ports));
            p.add(9).write(u32::from_ne_bytes([proto, 0, 0, 0]));
        }
    }

    pub const fn zeroed() -> Self {
        Self {
            src: [0; 16],
            dst: [0; 16],
            sport: [0; 2],
            dport: [0; 2],
            proto: 0,
            _pad: [0; 3],
        }
    }

    /// The other direction's key.
    #[inline(always)]
    pub fn reversed(&self) -> Self {
        // A copy with its ends swapped, not a new key: writing `_pad`'s three zero bytes is a
        // `memset` call in the kernel side's code, a subprogram that deepens the tc
        // programs' call chain past what the verifier allows (their padding is zero anyway:
        // every key is built from `zeroed` or by `set`).
        let mut r = *self;
        r.src = self.dst;
        r.dst = self.src;
        r.sport = self.dport;
        r.dport = self.sport;
        r
    }

    /// The key of an Ethernet frame (one VLAN tag allowed) carrying IPv4 or IPv6; None for
    /// anything else. A non-first IPv4 fragment has no ports.
    #[inline(always)]
    pub fn parse<F: Frame + ?Sized>(f: &F) -> Option<Self> {
        Self::parse_frame(f).map(|p| p.key)
    }

    /// The key, the header offsets and the fingerprint. A [`plain_v4`] frame is parsed from
    /// one read of its first bytes; any other is walked header by header (the same result:
    /// a test holds them equal). Both fill one `Parsed`: in the kernel this runs inside tc
    /// subprograms whose stack frames together must stay within 512 bytes.
    #[inline(always)]
    pub fn parse_frame<F: Frame + ?Sized>(f: &F) -> Option<Parsed> {
        let mut p = Parsed::START;
        match f.plain_head() {
            Some(h) if plain_v4(h) => Self::fill_plain_v4(h, &mut p),
            _ => Self::fill_walked(f, &mut p)?,
        }
        Some(p)
    }

    /// Fills `p` (as `parse_frame` starts it) from a [`plain_v4`] frame's first bytes: every
    /// byte the walk would read is within `h`.
    #[inline(always)]
    fn fill_plain_v4(h: &[u8; PLAIN_V4_LEN], p: &mut Parsed) {
        let k = &mut p.key;
        // Copied as words into the zeroed key: byte by byte, the kernel side's compiled code
        // spills each byte to the stack, past what its tc subprograms may use.
        k.src[..4].copy_from_slice(&h[26..30]);
        k.dst[..4].copy_from_slice(&h[30..34]);
        p.fingerprint = u64::from_be_bytes([h[16], h[17], h[18], h[19], h[20], h[21], 0, 0]);
        let t = plain_v4_transport(h);
        k.proto = t.proto;
        if t.at().is_none() {
            return;
        }
        if matches!(k.proto, 6 | 17 | 132 | 136) {
            k.sport = [h[34], h[35]];
            k.dport = [h[36], h[37]];
            p.ports_at = PLAIN_V4_L4;
        }
        if k.proto == 6 {
            p.fingerprint ^= u64::from(u32::from_be_bytes([h[38], h[39], h[40], h[41]]));
        }
    }

    /// Fills `p` (as `parse_frame` starts it) from any frame, walked header by header.
    #[inline(always)]
    fn fill_walked<F: Frame + ?Sized>(f: &F, p: &mut Parsed) -> Option<()> {
        let n = network(f)?;
        let l3 = n.offset;
        p.l3 = l3;
        let k = &mut p.key;
        let l4 = match n.ethertype {
            ETH_P_IP => {
                let h = f.bytes::<20>(l3)?;
                k.src = [
                    h[12], h[13], h[14], h[15], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ];
                k.dst = [
                    h[16], h[17], h[18], h[19], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ];
                p.fingerprint = u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], 0, 0]);
                let t = ipv4_transport(&h, l3);
                k.proto = t.proto;
                // A later fragment: no ports.
                let Some(l4) = t.at() else {
                    return Some(());
                };
                l4
            }
            ETH_P_IPV6 => {
                let h = f.bytes::<8>(l3)?;
                k.src = f.bytes::<16>(l3 + 8)?;
                k.dst = f.bytes::<16>(l3 + 24)?;
                p.ipv6 = true;
                p.fingerprint = u64::from_be_bytes([h[1] & 0xf, h[2], h[3], h[4], h[5], 0, 0, 0]);
                let t = ipv6_transport(f, h[6], l3);
                k.proto = t.proto;
                t.at().unwrap_or(l3 + 40)
            }
            _ => return None,
        };
        // TCP, UDP, SCTP, UDP-Lite: ports first.
        if matches!(k.proto, 6 | 17 | 132 | 136) {
            if let Some(ports) = f.bytes::<4>(l4) {
                k.sport = [ports[0], ports[1]];
                k.dport = [ports[2], ports[3]];
                p.ports_at = l4;
            }
        }
        if k.proto == 6 {
            if let Some(seq) = f.bytes::<4>(l4 + 4) {
                p.fingerprint ^= u64::from(u32::from_be_bytes(seq));
            }
        }
        Some(())
    }

    /// Rewrites `frame`'s addresses and ports to this key's, at the offsets `p` found: the
    /// packet as it will look after NAT. Writes past `frame` are skipped.
    #[inline(always)]
    pub fn write_into(&self, p: &Parsed, frame: &mut [u8]) {
        // One write per header, each with its own bounds check: the verifier must see every
        // offset checked right before its write.
        if p.ipv6 {
            let mut both = [0u8; 32];
            both[..16].copy_from_slice(&self.src);
            both[16..].copy_from_slice(&self.dst);
            put(frame, p.l3 as usize + 8, &both);
        } else {
            let s = &self.src;
            let d = &self.dst;
            put(
                frame,
                p.l3 as usize + 12,
                &[s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3]],
            );
        }
        // One comparison on the offset itself (NO_PORTS fails it): IPv6 extension headers
        // put the ports anywhere, and the verifier bounds the write only by such a check.
        let at = p.ports_at as usize;
        if at + 4 <= frame.len() {
            let (s, d) = (self.sport, self.dport);
            put(frame, at, &[s[0], s[1], d[0], d[1]]);
        }
    }
}

#[inline(always)]
fn put(frame: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(d) = frame.get_mut(at..at + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Tracked {}
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes(Vec<u8>);
    impl Frame for Bytes {
        fn bytes<const N: usize>(&self, offset: u32) -> Option<[u8; N]> {
            let o = offset as usize;
            self.0.get(o..o + N)?.try_into().ok()
        }

        fn plain_head(&self) -> Option<&[u8; PLAIN_V4_LEN]> {
            self.0.as_slice().plain_head()
        }
    }

    fn ipv4_tcp(ihl: u8, frag: [u8; 2]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x40 | ihl, 0, 0, 0, 0, 0, frag[0], frag[1], 64, 6, 0, 0];
        ip.extend_from_slice(&[172, 18, 0, 2, 198, 51, 100, 2]);
        ip.resize(usize::from(ihl) * 4, 1);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90]); // 40000 → 8080
        f
    }

    #[test]
    fn ipv4_key_skips_ip_options_and_reverses() {
        let k = FlowKey::parse(&Bytes(ipv4_tcp(6, [0x40, 0]))).expect("ipv4");
        assert_eq!(k.proto, 6);
        assert_eq!(&k.src[..4], &[172, 18, 0, 2]);
        assert_eq!(&k.dst[..4], &[198, 51, 100, 2]);
        assert_eq!(u16::from_be_bytes(k.sport), 40000);
        assert_eq!(u16::from_be_bytes(k.dport), 8080);
        let r = k.reversed();
        assert_eq!(
            (r.src, r.dst, r.sport, r.dport),
            (k.dst, k.src, k.dport, k.sport)
        );
        assert_eq!(r.reversed(), k);
    }

    #[test]
    fn a_view_takes_the_keys_addresses_and_ports() {
        let frame = ipv4_tcp(6, [0x40, 0]);
        let p = FlowKey::parse_frame(&Bytes(frame.clone())).expect("ipv4");
        assert_eq!((p.l3, p.ports(), p.ipv6), (14, Some(38), false));
        let mut nat = p.key;
        nat.src[..4].copy_from_slice(&[198, 51, 100, 1]);
        nat.sport = 51000u16.to_be_bytes();
        let mut view = frame.clone();
        nat.write_into(&p, &mut view);
        let again = FlowKey::parse(&Bytes(view.clone())).expect("still ipv4");
        assert_eq!(again, nat);
        // Only the tuple changed; the IP options and everything else are as they were.
        let changed: Vec<usize> = (0..frame.len()).filter(|i| frame[*i] != view[*i]).collect();
        assert!(
            changed
                .iter()
                .all(|i| (26..30).contains(i) || (38..40).contains(i)),
            "{changed:?}"
        );
        // A frame cut before its ports is written as far as it goes.
        let mut short = frame[..40].to_vec();
        nat.write_into(&p, &mut short);
        assert_eq!(&short[26..30], &[198, 51, 100, 1]);
    }

    #[test]
    fn the_fingerprint_survives_nat_but_not_the_next_packet() {
        let frame = ipv4_tcp(5, [0x40, 0]);
        let p = FlowKey::parse_frame(&Bytes(frame.clone())).expect("ipv4");
        let mut nat = p.key;
        nat.src[..4].copy_from_slice(&[198, 51, 100, 1]);
        nat.sport = 51000u16.to_be_bytes();
        let mut after = frame.clone();
        nat.write_into(&p, &mut after);
        after[22] -= 1; // the TTL
        let q = FlowKey::parse_frame(&Bytes(after)).expect("ipv4");
        let t = Tracked::matched(Some(p));
        assert!(t.same_packet(&q), "MASQUERADE and a hop leave it");
        let mut next = frame.clone();
        next[19] += 1; // the next IP ID
        let n = FlowKey::parse_frame(&Bytes(next)).expect("ipv4");
        assert!(!t.same_packet(&n), "another packet at the same address");
        assert!(Tracked::UNFILTERED.same_packet(&n));
    }

    #[test]
    fn the_fingerprint_from_the_ip_header_is_the_frames() {
        let ipv6 = |next: u8| {
            let mut f = [vec![0u8; 12], vec![0x86, 0xdd]].concat();
            f.extend_from_slice(&[0x60, 0x0a, 0xbc, 0xde, 0, 20, next, 64]);
            f.extend((0..32).map(|i| i as u8));
            f.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90, 0xde, 0xad, 0xbe, 0xef]);
            f
        };
        let mut frames = vec![];
        for ihl in [5, 6, 7] {
            for frag in [[0x40, 0], [0x20, 0], [0, 0xb9]] {
                for proto in [6, 17, 1] {
                    let mut f = ipv4_tcp(ihl, frag);
                    f[14 + 9] = proto;
                    f[14 + 2..14 + 8].copy_from_slice(&[0x01, 0x02, 0x12, 0x34, frag[0], frag[1]]);
                    f.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 7, 7, 7, 7]);
                    frames.push(f);
                }
            }
        }
        frames.extend([ipv6(6), ipv6(17), ipv6(0)]);
        let mut checked = 0;
        for f in &frames {
            let want = FlowKey::parse_frame(&Bytes(f.clone()))
                .expect("ip")
                .fingerprint;
            let mut at_ip = [0u8; PRINT_SOURCE];
            let ip = &f[14..];
            let n = ip.len().min(PRINT_SOURCE);
            at_ip[..n].copy_from_slice(&ip[..n]);
            match fingerprint_at_ip(&at_ip) {
                (got, true) => {
                    assert_eq!(got, want, "{f:02x?}");
                    checked += 1;
                }
                // Only where TCP's sequence may lie past the bytes read: IPv6 extensions.
                (_, false) => assert!(f[12..14] == [0x86, 0xdd] && f[20] == 0, "{f:02x?}"),
            }
        }
        assert_eq!(checked, frames.len() - 1);
        assert_eq!(fingerprint_at_ip(&[0; PRINT_SOURCE]), (0, false), "not IP");
        let t = Tracked::fingerprinted(7);
        assert!(t.same_print(7) && !t.same_print(8));
        assert!(Tracked::UNFILTERED.same_print(8));
    }

    #[test]
    fn later_fragments_and_short_frames_have_no_ports() {
        let k = FlowKey::parse(&Bytes(ipv4_tcp(5, [0x00, 0xb9]))).expect("fragment");
        assert_eq!((k.sport, k.dport), ([0; 2], [0; 2]));
        let mut short = ipv4_tcp(5, [0, 0]);
        short.truncate(36);
        let k = FlowKey::parse(&Bytes(short)).expect("header is there");
        assert_eq!(k.sport, [0; 2]);
        assert!(FlowKey::parse(&Bytes(vec![0; 13])).is_none());
    }

    #[test]
    fn ipv6_and_vlan_tagged_frames() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64, 0x86, 0xdd]);
        let mut ip = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        ip.extend((0..32).map(|i| i as u8));
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0, 53, 0x9c, 0x40]);
        let k = FlowKey::parse(&Bytes(f)).expect("ipv6");
        assert_eq!(k.proto, 17);
        assert_eq!(k.src[0], 0);
        assert_eq!(k.dst[15], 31);
        assert_eq!(u16::from_be_bytes(k.sport), 53);
        let arp = [vec![0u8; 12], vec![0x08, 0x06], vec![0; 28]].concat();
        assert!(FlowKey::parse(&Bytes(arp)).is_none());
    }

    /// A plain IPv4 frame parsed from one read is what the walk gives: every protocol (with
    /// and without ports, TCP's sequence), first and later fragments, every length from too
    /// short to long, over varied bytes. (Frames that are not plain never take it.)
    #[test]
    fn one_read_of_a_plain_frame_is_the_walk() {
        let mut next = crate::test_bytes(0x2545_f491_4f6c_dd1d);
        let mut plain = 0;
        for proto in [1u8, 6, 17, 47, 132, 136] {
            for frag in [[0x40, 0], [0x20, 0], [0x00, 0xb9], [0x3f, 0xff]] {
                for len in 0..60 {
                    let mut f: Vec<u8> = (0..len).map(|_| next()).collect();
                    for (i, b) in [(12, 0x08), (13, 0x00), (14, 0x45), (20, frag[0])] {
                        if i < len {
                            f[i] = b;
                        }
                    }
                    if len > 23 {
                        f[21] = frag[1];
                        f[23] = proto;
                    }
                    let start = Parsed::START;
                    let mut walked = start;
                    let walked =
                        FlowKey::fill_walked(&Bytes(f.clone()), &mut walked).map(|()| walked);
                    assert_eq!(FlowKey::parse_frame(&Bytes(f.clone())), walked, "{f:?}");
                    if let Ok(h) = <[u8; PLAIN_V4_LEN]>::try_from(&f[..len.min(PLAIN_V4_LEN)]) {
                        assert!(plain_v4(&h));
                        let mut read = start;
                        FlowKey::fill_plain_v4(&h, &mut read);
                        assert_eq!(Some(read), walked, "{f:?}");
                        plain += 1;
                    }
                }
            }
        }
        assert_eq!(plain, 6 * 4 * (60 - PLAIN_V4_LEN));
    }
}
