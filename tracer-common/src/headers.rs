//! Where a frame's headers are: the one walk through Ethernet, VLAN tags, IPv4 and IPv6 (with
//! its extension headers) to the transport header. The kernel side (its scope and flow keys)
//! and user space (the packet's headers as shown) both take it from here, so they agree on
//! which bytes are the ports.

/// Reads `N` bytes of the frame at an offset (`bpf_skb_load_bytes` in the kernel, a slice in
/// user space).
pub trait Frame {
    fn bytes<const N: usize>(&self, offset: u32) -> Option<[u8; N]>;

    /// The frame's first [`PLAIN_V4_LEN`] bytes, if it is that long, read at once (for
    /// [`plain_v4`]). The kernel side reads them in place from the skb's linear data, else
    /// into per-CPU memory, never onto the stack: its tc programs' stack frames together must
    /// stay within 512 bytes.
    fn plain_head(&self) -> Option<&[u8; PLAIN_V4_LEN]>;

    /// The frame's first [`PLAIN_V6_LEN`] bytes where they can be had without a copy (for
    /// [`plain_v6`]: the kernel side reads them in place from the skb's linear data). `None`
    /// sends the caller to the walk.
    fn plain_v6_head(&self) -> Option<&[u8; PLAIN_V6_LEN]> {
        None
    }
}

impl Frame for [u8] {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: u32) -> Option<[u8; N]> {
        let o = offset as usize;
        self.get(o..o.checked_add(N)?)?.try_into().ok()
    }

    #[inline(always)]
    fn plain_head(&self) -> Option<&[u8; PLAIN_V4_LEN]> {
        self.get(..PLAIN_V4_LEN)?.try_into().ok()
    }

    #[inline(always)]
    fn plain_v6_head(&self) -> Option<&[u8; PLAIN_V6_LEN]> {
        self.get(..PLAIN_V6_LEN)?.try_into().ok()
    }
}

/// An Ethernet header without VLAN tags.
pub const ETH_HLEN: u32 = 14;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags walked at most (an 802.1ad outer tag and an 802.1Q inner one).
pub const MAX_VLAN_TAGS: u32 = 2;
/// IPv6 extension headers skipped at most before the transport header.
pub const MAX_IPV6_EXTENSIONS: u32 = 4;

/// The network header of an Ethernet frame: its ethertype and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    pub ethertype: u16,
    pub offset: u32,
}

/// The transport header of an IP packet: its protocol and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transport {
    pub proto: u8,
    /// 0 when there is none here: an IPv4 fragment other than the first, or an IPv6
    /// extension-header chain cut short. (Not an `Option`: on the verifier's side every path
    /// must write every byte it returns.)
    pub offset: u32,
}

impl Transport {
    /// The transport header's offset, if the packet has one here.
    #[inline(always)]
    pub const fn at(&self) -> Option<u32> {
        if self.offset == 0 {
            None
        } else {
            Some(self.offset)
        }
    }
}

/// An untagged Ethernet frame's first bytes through the first 8 of an IPv4 header without
/// options' transport header (ports, and TCP's sequence number). Most frames at a tc hop are
/// that, and one read of these bytes gives everything the kernel side parses: a read is a
/// helper call there (`bpf_skb_load_bytes`), and the walk below takes three or four.
pub const PLAIN_V4_LEN: usize = 14 + 20 + 8;
/// Where such a frame's IPv4 header and transport header are.
pub const PLAIN_V4_L3: u32 = 14;
pub const PLAIN_V4_L4: u32 = 34;

/// Are `h` the first bytes of an untagged IPv4 frame whose header has no options? Then the
/// walk below finds its network header at [`PLAIN_V4_L3`], and its transport header (if it
/// is not a later fragment) at [`PLAIN_V4_L4`], within `h`.
#[inline(always)]
pub const fn plain_v4(h: &[u8; PLAIN_V4_LEN]) -> bool {
    h[12] == 0x08 && h[13] == 0x00 && h[14] == 0x45
}

/// The transport header of a [`plain_v4`] frame.
#[inline(always)]
pub const fn plain_v4_transport(h: &[u8; PLAIN_V4_LEN]) -> Transport {
    ipv4_transport_of(h[14], [h[20], h[21]], h[23], PLAIN_V4_L3)
}

/// An untagged Ethernet frame's first bytes through the first 4 of an IPv6 packet's transport
/// header (its ports) when the fixed header names that header itself: the IPv6 side of
/// [`PLAIN_V4_LEN`]. A host's IPv6 traffic is mostly that.
pub const PLAIN_V6_LEN: usize = 14 + 40 + 4;
/// Where such a frame's transport header is.
pub const PLAIN_V6_L4: u32 = 54;

/// Are `h` the first bytes of an untagged IPv6 frame whose next header is none of the
/// extension headers [`ipv6_transport`] skips? Then [`network`] finds its header at 14, and
/// [`ipv6_transport`] its transport header, of protocol `h[20]`, at [`PLAIN_V6_L4`].
#[inline(always)]
pub const fn plain_v6(h: &[u8; PLAIN_V6_LEN]) -> bool {
    h[12] == 0x86 && h[13] == 0xdd && !matches!(h[20], 0 | 43 | 60)
}

/// A [`plain_v6`] frame's source and destination addresses.
#[inline(always)]
pub fn plain_v6_addresses(h: &[u8; PLAIN_V6_LEN]) -> Option<(&[u8; 16], &[u8; 16])> {
    Some((h[22..38].try_into().ok()?, h[38..54].try_into().ok()?))
}

/// The network header after the Ethernet header and up to [`MAX_VLAN_TAGS`] VLAN tags.
#[inline(always)]
pub fn network<F: Frame + ?Sized>(f: &F) -> Option<Network> {
    let mut ethertype = u16::from_be_bytes(f.bytes::<2>(12)?);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = u16::from_be_bytes(f.bytes::<2>(offset + 2)?);
        offset += 4;
    }
    Some(Network { ethertype, offset })
}

/// The transport header of the IPv4 packet whose first 20 bytes are `h`, at `l3`: past the
/// options (IHL), none for a later fragment.
#[inline(always)]
pub const fn ipv4_transport(h: &[u8; 20], l3: u32) -> Transport {
    ipv4_transport_of(h[0], [h[6], h[7]], h[9], l3)
}

/// [`ipv4_transport`] from the header's version/IHL byte, flags/fragment field and protocol.
#[inline(always)]
pub const fn ipv4_transport_of(vihl: u8, frag: [u8; 2], proto: u8, l3: u32) -> Transport {
    let later_fragment = u16::from_be_bytes(frag) & 0x1fff != 0;
    Transport {
        proto,
        offset: if later_fragment {
            0
        } else {
            l3 + (vihl & 0xf) as u32 * 4
        },
    }
}

/// The transport header of the IPv6 packet at `l3` whose fixed header names `next`: past the
/// hop-by-hop, routing and destination-options headers (up to [`MAX_IPV6_EXTENSIONS`]).
#[inline(always)]
pub fn ipv6_transport<F: Frame + ?Sized>(f: &F, next: u8, l3: u32) -> Transport {
    let (mut proto, mut offset) = (next, l3 + 40);
    for _ in 0..MAX_IPV6_EXTENSIONS {
        if !matches!(proto, 0 | 43 | 60) {
            break;
        }
        let Some([n, len]) = f.bytes::<2>(offset) else {
            return Transport { proto, offset: 0 };
        };
        proto = n;
        offset += (u32::from(len) + 1) * 8;
    }
    if matches!(proto, 0 | 43 | 60) {
        offset = 0;
    }
    Transport { proto, offset }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_tags_are_walked_up_to_two() {
        let mut f = [0u8; 30];
        f[12..14].copy_from_slice(&ETH_P_8021AD.to_be_bytes());
        f[16..18].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        f[20..22].copy_from_slice(&ETH_P_IP.to_be_bytes());
        assert_eq!(
            network(&f[..]),
            Some(Network {
                ethertype: ETH_P_IP,
                offset: 22
            })
        );
        f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        assert_eq!(network(&f[..]).map(|n| n.offset), Some(14));
        assert_eq!(network(&f[..10]), None);
    }

    #[test]
    fn ipv4_options_and_fragments() {
        let mut h = [0u8; 20];
        h[0] = 0x46;
        h[9] = 6;
        assert_eq!(ipv4_transport(&h, 14).at(), Some(38));
        h[7] = 1; // fragment offset 1: no transport header here
        assert_eq!(ipv4_transport(&h, 14).at(), None);
        h[6] = 0x20; // more fragments, offset 0 again: the first fragment
        h[7] = 0;
        assert_eq!(ipv4_transport(&h, 14).at(), Some(38));
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        // Hop-by-hop (8 bytes) then destination options (16 bytes) then TCP.
        let mut f = [0u8; 120];
        f[54] = 60;
        f[55] = 0;
        f[62] = 6;
        f[63] = 1;
        let t = ipv6_transport(&f[..], 0, 14);
        assert_eq!((t.proto, t.at()), (6, Some(14 + 40 + 8 + 16)));
        assert_eq!(ipv6_transport(&f[..], 17, 14).at(), Some(54));
        // A chain cut short names no transport header; one cut after the chain does.
        assert_eq!(ipv6_transport(&f[..56], 0, 14).at(), None);
        assert_eq!(ipv6_transport(&f[..64], 0, 14).proto, 6);
        // More extension headers than are walked: none named.
        let mut g = [0u8; 200];
        for i in 0..6 {
            g[54 + i * 8] = 60;
        }
        assert_eq!(ipv6_transport(&g[..], 0, 14).at(), None);
    }
}
