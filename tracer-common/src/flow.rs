//! Following a filtered packet across NAT. A packet that matches the user's filter at one tc
//! hop is tracked by its sk_buff at every later hop, whatever NAT does to its headers. At each
//! of those hops its reversed 5-tuple is noted: after MASQUERADE that is the uplink's address,
//! which is how the reply arrives, so the reply is reported from the uplink on, before de-NAT
//! makes it match again. Replies are not followed further (their own replies are not), and user
//! space keeps a reply only if it matches the filter at one of its hops.

/// Program-array slots: the translated filter of each direction, and the emitting program
/// it tail-calls on a match.
pub const FILTER_SLOT_INGRESS: u32 = 0;
pub const FILTER_SLOT_EGRESS: u32 = 1;
pub const MATCHED_SLOT_INGRESS: u32 = 2;
pub const MATCHED_SLOT_EGRESS: u32 = 3;
pub const FILTER_SLOTS: u32 = 4;

/// A flow's addresses (IPv4 in the first 4 bytes), ports and protocol, as in the packet
/// (network byte order). ICMP and other protocols without ports have ports 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Reads `N` bytes of the frame at an offset (`bpf_skb_load_bytes` in the kernel).
pub trait Frame {
    fn bytes<const N: usize>(&self, offset: u32) -> Option<[u8; N]>;
}

impl FlowKey {
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
        Self {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// The key of an Ethernet frame (one VLAN tag allowed) carrying IPv4 or IPv6; None for
    /// anything else. A non-first IPv4 fragment has no ports.
    #[inline(always)]
    pub fn parse<F: Frame>(f: &F) -> Option<Self> {
        let mut ethertype = u16::from_be_bytes(f.bytes::<2>(12)?);
        let mut l3 = 14;
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            ethertype = u16::from_be_bytes(f.bytes::<2>(16)?);
            l3 = 18;
        }
        let mut k = Self::zeroed();
        let l4 = match ethertype {
            0x0800 => {
                let h = f.bytes::<20>(l3)?;
                k.proto = h[9];
                k.src = [
                    h[12], h[13], h[14], h[15], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ];
                k.dst = [
                    h[16], h[17], h[18], h[19], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ];
                if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                    return Some(k);
                }
                l3 + u32::from(h[0] & 0xf) * 4
            }
            0x86dd => {
                k.proto = f.bytes::<1>(l3 + 6)?[0];
                k.src = f.bytes::<16>(l3 + 8)?;
                k.dst = f.bytes::<16>(l3 + 24)?;
                l3 + 40
            }
            _ => return None,
        };
        // TCP, UDP, SCTP, UDP-Lite: ports first.
        if matches!(k.proto, 6 | 17 | 132 | 136) {
            if let Some(p) = f.bytes::<4>(l4) {
                k.sport = [p[0], p[1]];
                k.dport = [p[2], p[3]];
            }
        }
        Some(k)
    }
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::FlowKey {}
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
}
