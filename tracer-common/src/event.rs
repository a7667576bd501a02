//! Per-packet observations sent through the ring buffer.

/// Bytes of each packet copied into a [`TcEvent`] (Ethernet + IPv6 + TCP with options fit).
pub const SNAP_LEN: usize = 128;

/// What kind of observation an event is; the first byte of every ring-buffer record.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A packet seen by a tc program ([`TcEvent`]).
    Tc = 1,
    /// A packet seen by a netfilter observer ([`NfEvent`]).
    Nf = 2,
    /// A traced packet was dropped (`kfree_skb`) ([`SkbEndEvent`]).
    Drop = 3,
    /// A traced packet was freed normally (`consume_skb`) ([`SkbEndEvent`]).
    Consume = 4,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Tc),
            2 => Some(Self::Nf),
            3 => Some(Self::Drop),
            4 => Some(Self::Consume),
            _ => None,
        }
    }
}

/// Which way a packet crossed an interface.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

impl Direction {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Ingress),
            1 => Some(Self::Egress),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// The common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] value.
    pub kind: u8,
    pub _pad: [u8; 3],
    /// CPU that produced the event.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Address of the kernel `sk_buff`: the packet's identity across hops.
    pub skb: u64,
}

impl EventHeader {
    /// Fills the header in place, its kind and padding written as one word. (Three zero
    /// bytes written as an array compile, in the kernel side's code, to a call of a `memset`
    /// subprogram that loops byte by byte: once per record, on every packet's every hop.)
    #[inline(always)]
    pub fn fill(&mut self, kind: EventKind, cpu: u32, ts_ns: u64, skb: u64) {
        // SAFETY: `kind` and `_pad` are the first four bytes of this repr(C) struct, whose
        // alignment (8) covers a u32's.
        unsafe { (self as *mut Self as *mut u32).write(u32::from_ne_bytes([kind as u8, 0, 0, 0])) };
        self.cpu = cpu;
        self.ts_ns = ts_ns;
        self.skb = skb;
    }
}

/// The fixed part of a tc observation. In the ring buffer the captured bytes follow it
/// directly: a record is `TC_HEAD_LEN + cap_len` bytes long.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcHead {
    pub header: EventHeader,
    /// Interface index in the namespace the program is attached in.
    pub ifindex: u32,
    /// `skb->len`: the whole frame, Ethernet header included.
    pub len: u32,
    /// How many bytes follow (`min(len, snaplen)`).
    pub cap_len: u32,
    /// `skb->mark`.
    pub mark: u32,
    /// `skb->protocol` in network byte order (e.g. 0x0800 for IPv4).
    pub protocol: u16,
    /// A [`Direction`] value.
    pub direction: u8,
    pub _pad: [u8; 5],
}

impl TcHead {
    /// Writes `protocol`, `direction` and the padding after them as one word (see
    /// [`EventHeader::fill`]).
    #[inline(always)]
    pub fn set_protocol_direction(&mut self, protocol: u16, direction: u8) {
        let p = protocol.to_ne_bytes();
        let word = u64::from_ne_bytes([p[0], p[1], direction, 0, 0, 0, 0, 0]);
        // SAFETY: `protocol`, `direction` and `_pad` are this repr(C) struct's last eight
        // bytes, at an offset that is a multiple of 8 (a unit test pins it).
        unsafe { (core::ptr::addr_of_mut!(self.protocol) as *mut u64).write(word) };
    }
}

pub const TC_HEAD_LEN: usize = core::mem::size_of::<TcHead>();

/// Most bytes a tc observation can carry (a power of two: the programs mask with it - 1).
pub const MAX_SNAP: usize = 16384;

/// Bytes captured per tc hop unless `--snaplen` says otherwise: every header.
pub const DEFAULT_SNAP: u32 = 128;

/// What the tc program assembles in a per-CPU scratch buffer before sending the head and the
/// first `cap_len` bytes of `data`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcEvent {
    pub head: TcHead,
    pub data: [u8; MAX_SNAP],
}

/// A tc observation of at most `N` bytes, reserved in the ring buffer at its full size and
/// filled there: no scratch buffer, no second copy. `cap_len` says how much of `data` is the
/// packet's.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcFixed<const N: usize> {
    pub head: TcHead,
    pub data: [u8; N],
}

/// At most [`SNAP_LEN`] bytes (the default snaplen).
pub type TcSmall = TcFixed<SNAP_LEN>;

/// The headers alone, when nothing records the packet's bytes (no `--write`, no filter
/// expression): an IPv4 frame whose header has no options (`0x45`) has every byte user space
/// reads (its addresses, ports, TCP flags and sequence, ICMP's id) in its first 14 + 20 + 14.
/// Any other frame is sent as a [`TcSmall`].
pub const TC_HEADERS: usize = 64;
pub type TcHeaders = TcFixed<TC_HEADERS>;

/// The same for a netfilter observation, from the IP header: 20 + 14 and the 40 bytes a
/// hook's later slots compare (`PRINT_WORDS` in the kernel side).
pub const NF_HEADERS: usize = 48;

// Whole words, at least the print a hook's later slots compare; every header user space reads
// of an IPv4 packet without options; no more than the records they replace.
const _: () = assert!(NF_HEADERS.is_multiple_of(8) && NF_HEADERS >= 40 && NF_HEADERS <= SNAP_LEN);
const _: () = assert!(TC_HEADERS >= 14 + 20 + 14 && TC_HEADERS <= SNAP_LEN);
const _: () = assert!(TC_HEADERS.is_power_of_two());

/// A packet seen by a netfilter observer at one (hook, priority slot), with up to `N` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NfRecord<const N: usize> {
    pub header: EventHeader,
    /// `nf_hook_state.hook`: 0 PREROUTING … 4 POSTROUTING.
    pub hook: u8,
    /// `nf_hook_state.pf`: 2 for IPv4, 10 for IPv6.
    pub pf: u8,
    /// Index into [`crate::netfilter::SLOT_PRIORITIES`].
    pub slot: u8,
    pub _pad: u8,
    /// `state->in` / `state->out` ifindex (0 when absent).
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    /// `skb->len` (from the network header: no Ethernet header here).
    pub len: u32,
    pub cap_len: u32,
    pub mark: u32,
    /// The first `cap_len` bytes from the network (IP) header.
    pub data: [u8; N],
}

/// Up to [`SNAP_LEN`] bytes: what user space reads every netfilter record as (a shorter one
/// is read into a zeroed one of these).
pub type NfEvent = NfRecord<SNAP_LEN>;

/// The headers alone (see [`TC_HEADERS`]).
pub type NfHeaders = NfRecord<NF_HEADERS>;

impl<const N: usize> NfRecord<N> {
    pub fn captured(&self) -> &[u8] {
        let n = (self.cap_len as usize).min(N);
        &self.data[..n]
    }
}

/// The end of a traced packet's life: dropped (`kfree_skb`, with a reason) or consumed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkbEndEvent {
    pub header: EventHeader,
    /// Kernel address the free was called from (symbolised with /proc/kallsyms).
    pub location: u64,
    /// `enum skb_drop_reason` value (0 for consume).
    pub reason: u32,
    /// `skb->dev->ifindex` at the time, 0 if none.
    pub ifindex: u32,
    /// Inode of the network namespace of `skb->dev` (ifindex is per namespace), 0 if none.
    pub netns: u32,
    /// The netfilter hook it was last reported at and the last slot there it passed, when
    /// the freeing CPU noted it (`passed` is 1): a hook's later slots report a packet only
    /// where it changed, so this is where a drop inside a hook happened.
    pub nf_hook: u8,
    pub nf_slot: u8,
    pub passed: u8,
    pub _pad: u8,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, repr(C), every bit pattern valid.
    unsafe impl aya::Pod for super::TcHead {}
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::NfEvent {}
    unsafe impl aya::Pod for super::SkbEndEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn layout_is_stable() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(offset_of!(TcHead, ifindex), 24);
        assert_eq!(offset_of!(TcHead, protocol), 40);
        assert_eq!(TC_HEAD_LEN, 48);
        assert_eq!(offset_of!(TcEvent, data), TC_HEAD_LEN);
        // A small record is read as a head and its bytes, like a large one.
        assert_eq!(offset_of!(TcSmall, data), TC_HEAD_LEN);
        assert_eq!(size_of::<TcSmall>(), TC_HEAD_LEN + SNAP_LEN);
        assert!(SNAP_LEN as u32 >= DEFAULT_SNAP && SNAP_LEN.is_power_of_two());
        assert!(MAX_SNAP.is_power_of_two());
        // The ring buffer hands out 8-byte aligned records.
        assert!(align_of::<TcEvent>() <= 8);
    }

    /// The word-wide writes set what field-by-field writes set, and zero the padding, over
    /// a record that held other bytes.
    #[test]
    fn word_writes_are_the_fields() {
        // SAFETY: plain-old-data; every byte pattern is a valid value.
        let mut h: TcHead = unsafe { core::mem::transmute([0xa5u8; TC_HEAD_LEN]) };
        h.header.fill(EventKind::Tc, 7, 8, 9);
        h.set_protocol_direction(0x0008, 1);
        assert_eq!(
            h.header,
            EventHeader {
                kind: EventKind::Tc as u8,
                _pad: [0; 3],
                cpu: 7,
                ts_ns: 8,
                skb: 9,
            }
        );
        assert_eq!((h.protocol, h.direction, h._pad), (0x0008, 1, [0; 5]));
        assert_eq!(h.ifindex, 0xa5a5_a5a5, "the fields between are left alone");
    }

    #[test]
    fn nf_and_end_layouts_are_stable() {
        assert_eq!(offset_of!(NfEvent, hook), 24);
        assert_eq!(offset_of!(NfEvent, in_ifindex), 28);
        // 8-aligned: the kernel side copies its first words into its note word by word.
        assert_eq!(offset_of!(NfEvent, data), 48);
        assert_eq!(size_of::<NfEvent>(), 48 + SNAP_LEN);
        // The headers-only records: the same head, fewer bytes.
        assert_eq!(offset_of!(NfHeaders, data), 48);
        assert_eq!(size_of::<NfHeaders>(), 48 + NF_HEADERS);
        assert_eq!(size_of::<TcHeaders>(), TC_HEAD_LEN + TC_HEADERS);
        assert_eq!(size_of::<SkbEndEvent>(), 48);
        assert_eq!(
            (
                offset_of!(SkbEndEvent, nf_hook),
                offset_of!(SkbEndEvent, nf_slot),
                offset_of!(SkbEndEvent, passed)
            ),
            (44, 45, 46),
            "where the last slot passed is"
        );
        assert!(align_of::<NfEvent>() <= 8 && align_of::<SkbEndEvent>() <= 8);
    }

    #[test]
    fn kinds_and_directions_round_trip() {
        assert_eq!(EventKind::from_u8(EventKind::Tc as u8), Some(EventKind::Tc));
        assert_eq!(EventKind::from_u8(0), None);
        for k in [EventKind::Nf, EventKind::Drop, EventKind::Consume] {
            assert_eq!(EventKind::from_u8(k as u8), Some(k));
        }
        assert_eq!(Direction::from_u8(1), Some(Direction::Egress));
        assert_eq!(Direction::from_u8(2), None);
        assert_eq!(Direction::Ingress.as_str(), "ingress");
    }
}
