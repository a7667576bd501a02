//! Maps and globals shared with user space. Names are part of the contract with
//! `tracer/src/probe`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
};
use tracer_common::{
    counters::{counter_index, HOP_COUNTS_LEN, HOP_WAYS},
    flow::{FlowKey, Tracked, View, FILTER_SLOTS, MAX_NAT_FLOWS, MAX_TRACKED},
    headers::PLAIN_V4_LEN,
    judged::Judged,
    offsets::SKB_WINDOW,
    scope::{
        ScopeAddr, ScopeScratch, ADDR_BITMAP_WORDS, FLOW_MARK_WORDS, MAX_SCOPE_ADDRS,
        MAX_SCOPE_POINTS, POINT_BITMAP_WORDS, PORT_BITMAP_WORDS,
    },
    HopCounter, LostKind, Offsets, PointKey, TableOp, TcEvent, DEFAULT_SNAP, LOST_KINDS,
    MAX_HOP_COUNTERS, TABLE_OPS,
};

/// Per-packet observations. 8 MiB: ~45k 176-byte events of headroom.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Records that did not fit in `EVENTS`, by kind (`LostKind`), per CPU.
#[map(name = "LOST")]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_KINDS, 0);

/// Adds one to entry `i` of a per-CPU array of counts.
#[inline(always)]
fn bump(counts: &PerCpuArray<u64>, i: u32) {
    if let Some(n) = counts.get_ptr_mut(i) {
        // SAFETY: a per-CPU value, no concurrent writer on this CPU.
        unsafe { *n += 1 };
    }
}

/// Counts a record of this kind that did not fit in the ring buffer.
#[inline(always)]
pub fn count_lost(kind: LostKind) {
    bump(&LOST, kind as u32);
}

/// What the programs did to `TRACKED` and `FLOWS`, by kind (`TableOp`), per CPU: user space
/// tells the kernel's evictions from these.
#[map(name = "TABLE_OPS")]
pub static TABLE_OPS_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TABLE_OPS, 0);

#[inline(always)]
pub fn count_op(op: TableOp) {
    bump(&TABLE_OPS_COUNTS, op as u32);
}

/// Takes a packet into `TRACKED`, counted. The slab soon gives a freed packet's address to
/// another: an ended entry there ([`end_tracked`]) is written over in place, which takes no
/// lock and allocates nothing; an insertion does both, and replacing an entry frees the old one
/// to the LRU's lists too.
#[inline(always)]
pub fn track_skb(skb: u64, t: &Tracked) {
    if let Some(e) = TRACKED.get_ptr_mut(skb) {
        // SAFETY: the map's entry. Ended, it is no packet's: no other CPU reads or writes it
        // for this address until this packet is at a hop there.
        unsafe {
            if !(*e).live() {
                *e = *t;
                count_op(TableOp::TrackedIn);
                return;
            }
        }
    }
    if TRACKED.insert(skb, t, 0).is_ok() {
        count_op(TableOp::TrackedIn);
    }
}

/// The end of a tracked packet (freed): its entry is marked ended, counted as taken out, and
/// this CPU no longer notes it ([`devices_cached`]); false if it was not tracked, or had ended.
///
/// Marked, not removed: a removal takes the hash bucket's lock and then the LRU list's lock,
/// which both CPUs share, and cost about 240 ns of every packet's `consume_skb` run under the
/// container's UDP flood (bpf_stats: 456 → 214 ns a run without it). The LRU takes ended
/// entries back in batches when it needs room, and an address reused is inserted over its
/// ended entry. User space counts only live entries as still there (`probe/tables.rs`).
#[inline(always)]
pub fn end_tracked(skb: u64) -> bool {
    let Some(t) = TRACKED.get_ptr_mut(skb) else {
        return false;
    };
    // SAFETY: the map's entry; a packet ends on one CPU, once.
    unsafe {
        if !(*t).live() {
            return false;
        }
        (*t).ended = 1;
    }
    count_op(TableOp::TrackedOut);
    forget_devices(skb);
    true
}

/// Takes a packet out of `TRACKED`, counted if it was there, and out of this CPU's note
/// ([`devices_cached`]); false if it was not tracked.
#[inline(always)]
pub fn untrack_skb(skb: u64) -> bool {
    let was = TRACKED.remove(skb).is_ok();
    if was {
        count_op(TableOp::TrackedOut);
        forget_devices(skb);
    }
    was
}

/// Per-hop packet/byte/lost counters, one entry per attached (ifindex, direction).
/// User space inserts the keys when it attaches; the programs only increment existing entries.
#[map(name = "HOP_COUNTERS")]
pub static HOP_COUNTERS: PerCpuHashMap<PointKey, HopCounter> =
    PerCpuHashMap::with_max_entries(MAX_HOP_COUNTERS, 0);

/// Ways to a point's counters, by `ifindex % HOP_WAYS` (`tracer_common::counters`).
#[map(name = "HOP_SLOTS")]
pub static HOP_SLOTS: Array<u64> = Array::with_max_entries(HOP_WAYS, 0);

/// Per-hop counters by slot and direction, for the points `HOP_SLOTS` leads to.
#[map(name = "HOP_COUNTS")]
pub static HOP_COUNTS: PerCpuArray<HopCounter> = PerCpuArray::with_max_entries(HOP_COUNTS_LEN, 0);

/// This CPU's counter of a point: by two array lookups where the point has a slot, else by
/// its key in `HOP_COUNTERS`; `None` for a point not counted.
#[inline(always)]
pub fn hop_counter(ifindex: u32, direction: u8) -> Option<*mut HopCounter> {
    let tag = HOP_SLOTS.get(ifindex % HOP_WAYS).copied().unwrap_or(0);
    match counter_index(tag, ifindex, direction) {
        Some(i) => HOP_COUNTS.get_ptr_mut(i),
        None => HOP_COUNTERS.get_ptr_mut(PointKey::new(ifindex, direction)),
    }
}

/// sk_buff addresses seen by a tc observer: the packets the netfilter and drop programs
/// report on. Least recently used entries make room for new ones.
#[map(name = "TRACKED")]
pub static TRACKED: LruHashMap<u64, Tracked> = LruHashMap::with_max_entries(MAX_TRACKED, 0);

/// The scope (`tracer_common::scope`), written by user space: interfaces where everything is
/// in scope (flags), the traced containers' addresses, their published ports.
#[map(name = "SCOPE_POINTS")]
pub static SCOPE_POINTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_SCOPE_POINTS, 0);

#[map(name = "SCOPE_ADDRS")]
pub static SCOPE_ADDRS: HashMap<ScopeAddr, u32> = HashMap::with_max_entries(MAX_SCOPE_ADDRS, 0);

/// The bitmaps in front of them (`tracer_common::scope`): the traced addresses' (hashed,
/// confirmed in `SCOPE_ADDRS`) and the published ports' (exact), written by user space.
#[map(name = "SCOPE_ADDR_BITS")]
pub static SCOPE_ADDR_BITS: Array<u64> = Array::with_max_entries(ADDR_BITMAP_WORDS, 0);

#[map(name = "SCOPE_PORT_BITS")]
pub static SCOPE_PORT_BITS: Array<u64> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

/// The points' bitmap (`tracer_common::scope::point_bit`), exact, written by user space.
#[map(name = "SCOPE_POINT_BITS")]
pub static SCOPE_POINT_BITS: Array<u64> = Array::with_max_entries(POINT_BITMAP_WORDS, 0);

/// Words set to 1 by the kernel for the flows it puts in `FLOWS` (`scope::flow_mark`), never
/// cleared: a packet whose word is 0 is in no NAT'd flow, and `FLOWS` is not looked up.
#[map(name = "FLOW_MARKS")]
pub static FLOW_MARKS: Array<u64> = Array::with_max_entries(FLOW_MARK_WORDS, 0);

/// This CPU's notes: the sk_buff last judged out of scope, and the one last taken in by a tc
/// observer (`tracer_common::judged::Judged`).
#[map(name = "JUDGED_OUT")]
pub static JUDGED_OUT: PerCpuArray<Judged> = PerCpuArray::with_max_entries(1, 0);

/// A tc program's copy of a frame's first bytes (`Frame::plain_head`) when they are not all in
/// the skb's linear data (where they are, they are read in place), one per CPU.
#[map(name = "FRAME_HEAD")]
pub static FRAME_HEAD: PerCpuArray<[u8; PLAIN_V4_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// Where the tc observers build the scope's keys (one per CPU).
#[map(name = "SCOPE_SCRATCH")]
pub static SCOPE_SCRATCH: PerCpuArray<ScopeScratch> = PerCpuArray::with_max_entries(1, 0);

/// With a filter expression: the translated filters (loaded by user space from libpcap's
/// compilation) and the programs they tail-call on a match; see `tracer_common::flow`.
#[map(name = "FILTER_PROGS")]
pub static FILTER_PROGS: ProgramArray = ProgramArray::with_max_entries(FILTER_SLOTS, 0);

/// For a tuple of a NAT'd flow with a tracked packet, the tuple its packets will have after
/// NAT (see `tracer_common::flow`): such a packet is in scope, and with a filter expression
/// it is filtered on that view.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowKey> = LruHashMap::with_max_entries(MAX_NAT_FLOWS, 0);

/// With a filter expression: the packet as it will look after NAT, for the filter's second
/// run (one per CPU; the translated filter reads it by this map's fd).
#[map(name = "VIEW")]
pub static VIEW: PerCpuArray<View> = PerCpuArray::with_max_entries(1, 0);

/// (skb, state) of the `nf_hook_slow` calls in progress on this CPU, for the kretprobe: a
/// depth, then up to 7 pairs (hooks nest when a hook's verdict sends a packet, e.g. REJECT).
#[map(name = "HOOK_STACK")]
pub static HOOK_STACK: PerCpuArray<[u64; 16]> = PerCpuArray::with_max_entries(1, 0);

const HOOK_DEPTH: u64 = 7;

#[inline(always)]
pub fn hook_stack_push(skb: u64, state: u64) {
    let Some(s) = HOOK_STACK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's own entry. nf_hook_slow does not sleep, so its kretprobe runs on the
    // CPU its kprobe ran on, and nested calls return in reverse order (a stack).
    unsafe {
        let depth = (*s)[0];
        if depth < HOOK_DEPTH {
            let i = (1 + 2 * depth) as usize & 15;
            (*s)[i] = skb;
            (*s)[(i + 1) & 15] = state;
        }
        (*s)[0] = depth + 1;
    }
}

#[inline(always)]
pub fn hook_stack_pop() -> Option<(u64, u64)> {
    let s = HOOK_STACK.get_ptr_mut(0)?;
    // SAFETY: as above.
    unsafe {
        let depth = (*s)[0];
        if depth == 0 {
            return None;
        }
        (*s)[0] = depth - 1;
        let d = depth - 1;
        if d >= HOOK_DEPTH {
            return None; // pushed past the bound: its pair was not kept
        }
        let i = (1 + 2 * d) as usize & 15;
        Some(((*s)[i], (*s)[(i + 1) & 15]))
    }
}

/// Where a tc observation is assembled before its head and captured bytes are sent (too big
/// for the stack; one per CPU, so no locking).
#[map(name = "TC_SCRATCH")]
pub static TC_SCRATCH: PerCpuArray<TcEvent> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's note of the packet its netfilter observers last reported (`netfilter.rs`).
#[map(name = "NF_NOTE")]
pub static NF_NOTE: PerCpuArray<Note> = PerCpuArray::with_max_entries(1, 0);

/// What a hook's later slots compare the packet with, and what a drop reports as the last
/// slot it passed. A hook's slots run one after another on one CPU, so one entry per CPU
/// holds the packet there; `prev` keeps the one before it, which a nested packet (a REJECT's
/// reply runs OUTPUT and POSTROUTING inside INPUT's filter table) would otherwise push out
/// before the original is freed.
#[repr(C)]
pub struct Note {
    pub skb: u64,
    pub in_dev: u64,
    pub out_dev: u64,
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    /// The hook it is at, and the last slot there that saw it (recorded or not).
    pub hook: u8,
    pub slot: u8,
    /// 1 when `print` holds what the last record carried.
    pub printed: u8,
    pub _pad: u8,
    pub len: u32,
    pub mark: u32,
    pub _pad2: u32,
    /// The first bytes of the last record, from the IP header (see `netfilter::unchanged`).
    pub print: [u64; PRINT_WORDS],
    /// The packet noted before this one: (skb, hook, last slot).
    pub prev_skb: u64,
    pub prev_hook: u8,
    pub prev_slot: u8,
    pub _pad3: [u8; 6],
    /// Where the `sk_buff` window is read when nothing is recorded.
    pub window: [u8; SKB_WINDOW as usize],
}

/// 8-byte words of the packet a later slot compares: the IPv4 header without options and
/// the first 20 bytes of what follows it.
pub const PRINT_WORDS: usize = 5;

/// Is `skb` this CPU's noted packet? Only a packet reported here is noted, and a free or a
/// reuse seen on this CPU clears it; a free on another CPU or an eviction from `TRACKED` does
/// not, so a hit is trusted only after a hook's first slot has looked `skb` up
/// (`netfilter.rs`).
#[inline(always)]
pub fn devices_cached(skb: u64) -> bool {
    // SAFETY: this CPU's entry, read once. An empty entry holds 0, which no packet is.
    skb != 0
        && NF_NOTE
            .get_ptr(0)
            .is_some_and(|c| unsafe { (*c).skb } == skb)
}

/// The hook and the last slot there that `skb` passed, and 1 if this CPU noted it (for its
/// drop). Plain numbers, not an `Option`: a `None`'s undefined payload once compiled to a read
/// of a register never written, which the verifier refuses.
#[inline(always)]
pub fn passed(skb: u64) -> (u8, u8, u8) {
    let Some(c) = NF_NOTE.get_ptr(0) else {
        return (0, 0, 0);
    };
    // SAFETY: this CPU's entry.
    unsafe {
        if (*c).skb == skb {
            ((*c).hook, (*c).slot, 1)
        } else if (*c).prev_skb == skb {
            ((*c).prev_hook, (*c).prev_slot, 1)
        } else {
            (0, 0, 0)
        }
    }
}

/// A packet no longer tracked: this CPU no longer notes it.
#[inline(always)]
fn forget_devices(skb: u64) {
    if let Some(c) = NF_NOTE.get_ptr_mut(0) {
        // SAFETY: this CPU's entry.
        unsafe {
            if (*c).skb == skb {
                (*c).skb = 0;
            }
            if (*c).prev_skb == skb {
                (*c).prev_skb = 0;
            }
        }
    }
}

/// Bytes waiting in `EVENTS` when this CPU last wrote to it (for the dashboard's fill gauge).
#[map(name = "RING_FILL")]
pub static RING_FILL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Bytes of each frame a tc observation carries (`--snaplen`), patched in by the loader.
#[unsafe(no_mangle)]
static SNAPLEN: u32 = DEFAULT_SNAP;

#[inline(always)]
pub fn snaplen() -> u32 {
    // SAFETY: a plain read of a global; the loader patches the value before loading.
    unsafe { core::ptr::read_volatile(&SNAPLEN) }
}

/// 1: nothing records the packets' bytes (no `--write`, no filter expression): IPv4 packets
/// without IP options are sent with their headers alone (`TcHeaders`, `NfHeaders`). Patched
/// by the loader.
#[unsafe(no_mangle)]
static HEADERS_ONLY: u32 = 0;

#[inline(always)]
pub fn headers_only() -> bool {
    // SAFETY: a plain read of a global; the loader patches the value before loading.
    unsafe { core::ptr::read_volatile(&HEADERS_ONLY) != 0 }
}

/// 0: count only (`--counters`): no per-packet events, nothing tracked. Patched by the loader.
#[unsafe(no_mangle)]
static EMIT: u32 = 1;

#[inline(always)]
pub fn emit_events() -> bool {
    // SAFETY: a plain read of a global; the loader patches the value before loading.
    unsafe { core::ptr::read_volatile(&EMIT) != 0 }
}

/// 1: a filter expression is loaded in `FILTER_PROGS`; packets of flows not yet followed
/// go through it. Patched by the loader.
#[unsafe(no_mangle)]
static FILTERING: u32 = 0;

#[inline(always)]
pub fn filtering() -> bool {
    // SAFETY: a plain read of a global; the loader patches the value before loading.
    unsafe { core::ptr::read_volatile(&FILTERING) != 0 }
}

/// Field offsets from the running kernel's BTF, patched in by the loader.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets::zeroed();

/// The offsets, read so that the compiler cannot fold the zeroed initialiser.
#[inline(always)]
pub fn offsets() -> Offsets {
    // SAFETY: a plain read of a global; the loader patches the value before loading.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// How the observers took this sk_buff in, if it is tracked and its end was not seen: its
/// `TRACKED` entry.
#[inline(always)]
pub fn tracked_entry(skb: u64) -> Option<*const Tracked> {
    // SAFETY: the map's entry, read once.
    TRACKED.get_ptr(skb).filter(|t| unsafe { (**t).live() })
}

/// `TRACKED`'s value without a filter (no origin to remember).
pub static UNFILTERED: Tracked = Tracked::UNFILTERED;
