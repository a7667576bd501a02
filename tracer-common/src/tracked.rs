//! `TRACKED`'s value: what the observers knew of a packet when they took it in, and how a
//! packet is told from the next one the slab gives its address (its fingerprint). Both sides
//! use it: the kernel side to decide, user space to count the entries still alive.

use crate::flow::{FlowKey, Parsed};

/// [`Tracked::has_origin`]: nothing known (a frame that is not IP).
pub const ORIGIN_NONE: u32 = 0;
/// Its tuple and fingerprint where a tc observer took it in.
pub const ORIGIN_TUPLE: u32 = 1;
/// Its fingerprint alone, where a netfilter observer took it in.
pub const ORIGIN_PRINT: u32 = 2;

/// `TRACKED`'s value: how the observers saw an sk_buff when they took it in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// What is known of the packet: [`ORIGIN_NONE`], [`ORIGIN_TUPLE`] (a tc observer took it
    /// in: `origin` and `fingerprint` are its tuple and fingerprint there) or [`ORIGIN_PRINT`]
    /// (a netfilter observer did: its fingerprint alone).
    /// (A word, not a byte and seven of padding: their zeroing compiled to a `memset` call
    /// in the kernel side's code, for every packet taken in.)
    pub has_origin: u32,
    /// 1 once the packet's end (`kfree_skb`/`consume_skb`) was seen: the entry is left for
    /// the LRU to reuse, not removed, and reads as not tracked (see `Tracked::live`).
    pub ended: u32,
    pub fingerprint: u64,
    pub origin: FlowKey,
}

impl Tracked {
    /// An sk_buff reported without a filter.
    pub const UNFILTERED: Self = Self {
        has_origin: ORIGIN_NONE,
        ended: 0,
        fingerprint: 0,
        origin: FlowKey::zeroed(),
    };

    /// A packet that matched the filter, as parsed where it did.
    pub const fn matched(p: Option<Parsed>) -> Self {
        match p {
            Some(p) => Self {
                has_origin: ORIGIN_TUPLE,
                ended: 0,
                fingerprint: p.fingerprint,
                origin: p.key,
            },
            None => Self::UNFILTERED,
        }
    }

    /// A packet a netfilter observer took in, known by its fingerprint
    /// ([`fingerprint_at_ip`]).
    pub const fn fingerprinted(fingerprint: u64) -> Self {
        Self {
            has_origin: ORIGIN_PRINT,
            fingerprint,
            ..Self::UNFILTERED
        }
    }

    /// Is the packet still alive (its end not seen yet)?
    pub const fn live(&self) -> bool {
        self.ended == 0
    }

    /// Is the packet now at this hop (parsed as `now`) still the one that matched? An
    /// sk_buff's address is reused once it is freed, and some frees (TCP's deferred free)
    /// pass no tracepoint, so an entry can outlive its packet.
    pub fn same_packet(&self, now: &Parsed) -> bool {
        self.same_print(now.fingerprint)
    }

    /// The same, with the fingerprint alone.
    pub const fn same_print(&self, fingerprint: u64) -> bool {
        self.has_origin == ORIGIN_NONE || self.fingerprint == fingerprint
    }
}

/// Bytes from the IP header that [`fingerprint_at_ip`] reads: an IPv6 header and a TCP
/// sequence number after it.
pub const PRINT_SOURCE: usize = 48;

/// The fingerprint [`FlowKey::parse_frame`] gives a packet, from its first bytes at the IP
/// header (what a netfilter observer sees), and whether they hold all of it: not a TCP header
/// past IPv6 extension headers or long IPv4 options, and IP at all. Both always written, not
/// an `Option`: the kernel side's compiled code read a `None`'s payload from a register never
/// written, which the verifier refuses.
#[inline(always)]
pub const fn fingerprint_at_ip(h: &[u8; PRINT_SOURCE]) -> (u64, bool) {
    let (print, proto, l4) = match h[0] >> 4 {
        4 => {
            let print = u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], 0, 0]);
            let t = crate::headers::ipv4_transport_of(h[0], [h[6], h[7]], h[9], 0);
            // A later fragment (offset 0): no transport header, no sequence.
            if t.offset == 0 {
                return (print, true);
            }
            (print, t.proto, t.offset as usize)
        }
        6 => {
            let print = u64::from_be_bytes([h[1] & 0xf, h[2], h[3], h[4], h[5], 0, 0, 0]);
            // Extension headers: where TCP starts is past what was read.
            if matches!(h[6], 0 | 43 | 60) {
                return (0, false);
            }
            (print, h[6], 40)
        }
        _ => return (0, false),
    };
    if proto != 6 {
        return (print, true);
    }
    if l4 + 8 > PRINT_SOURCE {
        return (0, false);
    }
    let seq = u32::from_be_bytes([h[l4 + 4], h[l4 + 5], h[l4 + 6], h[l4 + 7]]);
    (print ^ seq as u64, true)
}
