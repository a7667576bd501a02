//! tc (TCX/clsact) observer: count the packet, copy its first bytes into the ring buffer,
//! and always let it continue (`TC_ACT_UNSPEC`: TCX "next").

use aya_ebpf::{
    bindings::{__sk_buff, BPF_RB_AVAIL_DATA, TC_ACT_UNSPEC},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use tracer_common::{
    flow::{
        FlowKey, Frame, Tracked, FILTER_SLOT_EGRESS, FILTER_SLOT_INGRESS, ORIGIN_TUPLE,
        VIEW_FILTER_SLOT, VIEW_LEN,
    },
    headers::{PLAIN_V4_LEN, PLAIN_V6_LEN},
    judged::Noted,
    Direction, EventKind, TableOp, TcFixed, TcHead, TcHeaders, MAX_SNAP, SNAP_LEN, TC_HEADERS,
    TC_HEAD_LEN,
};

use crate::{
    maps::{
        count_op, emit_events, filtering, headers_only, hop_counter, snaplen, track_skb,
        tracked_entry, untrack_skb, EVENTS, FILTER_PROGS, FLOWS, FRAME_HEAD, RING_FILL, TC_SCRATCH,
        UNFILTERED, VIEW,
    },
    scope,
};

/// Reads the frame of the sk_buff a tc program runs on. The helpers below take the context
/// pointer itself and are not inlined: each is a BPF subprogram with its own stack frame, so
/// parsing a frame twice (is it still ours? is it in scope?) fits the 512-byte stack.
struct Skb(*mut __sk_buff);

impl Frame for Skb {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: u32) -> Option<[u8; N]> {
        // Not zeroed first: that is a `memset` subprogram call per read, on every packet (the
        // helper takes uninitialised memory and fills all of it, or fails).
        let mut out = core::mem::MaybeUninit::<[u8; N]>::uninit();
        // SAFETY: `self.0` is the program's context; the helper bounds-checks the read.
        let r = unsafe {
            bpf_skb_load_bytes(
                self.0 as *const _,
                offset,
                out.as_mut_ptr() as *mut _,
                N as u32,
            )
        };
        // SAFETY: on success the helper wrote all N bytes.
        (r == 0).then(|| unsafe { out.assume_init() })
    }

    #[inline(always)]
    fn plain_head(&self) -> Option<&[u8; PLAIN_V4_LEN]> {
        // Where the frame's head is in the skb's linear data (nearly always: a forwarded
        // packet's headers are), it is read in place: no helper call and no copy.
        if let Some(h) = self.in_place() {
            return Some(h);
        }
        let head = FRAME_HEAD.get_ptr_mut(0)?;
        // SAFETY: `head` is this CPU's entry, of PLAIN_V4_LEN bytes, and nothing else runs on
        // this CPU until the caller is done with it.
        let r = unsafe {
            bpf_skb_load_bytes(self.0 as *const _, 0, head as *mut _, PLAIN_V4_LEN as u32)
        };
        // SAFETY: on success the helper wrote all of it.
        (r == 0).then(|| unsafe { &*head })
    }

    #[inline(always)]
    fn plain_v6_head(&self) -> Option<&[u8; PLAIN_V6_LEN]> {
        // In place only: a frame whose head is not in the linear data is walked.
        self.in_place()
    }
}

impl Skb {
    /// The frame's first `N` bytes where they lie in the skb's linear data, read in place.
    #[inline(always)]
    fn in_place<const N: usize>(&self) -> Option<&[u8; N]> {
        // SAFETY: `data` and `data_end` are context fields the verifier turns into packet
        // pointers; the bytes are read only after they are known to lie between them.
        let (data, end) = unsafe { ((*self.0).data as usize, (*self.0).data_end as usize) };
        // SAFETY: N bytes of packet data, checked first; the programs change no packet data
        // while the caller holds them.
        (data + N <= end).then(|| unsafe { &*(data as *const [u8; N]) })
    }
}

/// A tracked sk_buff at a later hop: is it still the packet that was taken in (its address may
/// have been reused, see `Tracked::same_packet`)? If it is and NAT rewrote its tuple since,
/// note how its replies will look once NAT has undone that (see `tracer_common::flow`): they
/// are in scope, and a filter runs on that view.
#[inline(never)]
fn still_ours(skb: *mut __sk_buff, t: *const Tracked) -> bool {
    // SAFETY: the map's entry for this skb; LRU entries stay valid during the program.
    let t = unsafe { &*t };
    if t.has_origin == 0 {
        return true;
    }
    let Some(now) = FlowKey::parse_frame(&Skb(skb)) else {
        return true;
    };
    if !t.same_packet(&now) {
        return false;
    }
    // A netfilter observer's entry has no tuple to learn a NAT mapping from.
    if t.has_origin == ORIGIN_TUPLE && now.key != t.origin {
        let back = now.key.reversed();
        // SAFETY: a lookup with a stack key; the value is not kept.
        if unsafe { FLOWS.get(back).is_none() } {
            if FLOWS.insert(back, t.origin.reversed(), 0).is_ok() {
                count_op(TableOp::FlowsIn);
            }
            scope::mark_flow(&back);
        }
    }
    true
}

/// Takes the packet in: its tuple and fingerprint here are its origin, and the netfilter and
/// drop programs, and the next hops, will know it is ours.
#[inline(never)]
fn track(skb: *mut __sk_buff) {
    // A frame that is not IP takes the static entry: building its zeroed one on the stack
    // is a `memset` subprogram call, one frame deeper than the verifier allows here.
    match FlowKey::parse_frame(&Skb(skb)) {
        Some(p) => track_skb(skb as u64, &Tracked::matched(Some(p))),
        None => track_skb(skb as u64, &UNFILTERED),
    }
    // SAFETY: `skb` is the program's context; this load is rewritten by the verifier.
    scope::taken_in(skb as u64, unsafe { (*skb).len });
}

/// Is this packet, not tracked yet, one of the traced containers'? (`scope.rs`)
#[inline(never)]
fn in_scope(skb: *mut __sk_buff, ifindex: u32, direction: u8) -> bool {
    scope::at_tc(&Skb(skb), ifindex, direction)
}

#[inline(always)]
pub fn observe(ctx: &TcContext, direction: u8) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: `skb` is the program's context; these loads are rewritten by the verifier.
    let (ifindex, len) = unsafe { ((*skb).ifindex, (*skb).len) };

    let counter = hop_counter(ifindex, direction);
    if let Some(c) = counter {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(len);
        }
    }

    if !emit_events() {
        return TC_ACT_UNSPEC;
    }
    let ingress = direction == Direction::Ingress as u8;
    // This CPU's notes (one lookup): judged out at an earlier hop (a neighbour's packet), or
    // taken in at an earlier hop (a traced container's packet at the bridge, after its veth).
    let noted = scope::noted_at(skb as u64, len, ifindex, !ingress);
    if noted == Noted::Out {
        return TC_ACT_UNSPEC;
    }
    let taken = noted == Noted::Taken;
    // At an ingress the packet comes from a wire or another namespace, before netfilter could
    // rewrite it: the scope's rules judge it there, tracked or not (a neighbour's packet, on
    // the way in at its own veth, costs no TRACKED lookup), and only what they take in is
    // looked up; one taken in here at an earlier hop is looked up first. An egress sees
    // packets after NAT, where only TRACKED knows them.
    if ingress && !taken && !in_scope(skb, ifindex, direction) {
        scope::mark_out(skb as u64, len);
        return TC_ACT_UNSPEC;
    }
    if let Some(t) = tracked_entry(skb as u64) {
        if still_ours(skb, t) {
            // Tracked already (the lookup refreshed its LRU position): nothing to insert.
            return report(ctx, direction, counter);
        }
        // Another packet at a freed packet's address: it is judged on its own.
        let _ = untrack_skb(skb as u64);
    }
    // Not one of the traced containers' packets: counted, nothing more (egress looks at the
    // addresses alone, and judges nothing out for later hops). A packet noted as taken in
    // but no longer tracked (the note outlived it) is judged here as at any ingress.
    if (!ingress || taken) && !in_scope(skb, ifindex, direction) {
        if ingress {
            scope::mark_out(skb as u64, len);
        }
        return TC_ACT_UNSPEC;
    }
    if filtering() {
        let slot = if ingress {
            FILTER_SLOT_INGRESS
        } else {
            FILTER_SLOT_EGRESS
        };
        // SAFETY: the context is this program's own. On a match the filter tail-calls
        // `observe_matched`, else `observe_miss`; if the slot is empty, nothing is reported.
        unsafe { FILTER_PROGS.tail_call(ctx, slot) };
        return TC_ACT_UNSPEC;
    }
    track(skb);
    report(ctx, direction, counter)
}

/// Where the translated filter tail-calls on a match: remember the packet's tuple and
/// fingerprint here, and report it (it was counted before the filter ran).
#[inline(always)]
pub fn observe_matched(ctx: &TcContext, direction: u8) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: as in `observe`.
    let ifindex = unsafe { (*skb).ifindex };
    track(skb);
    let counter = hop_counter(ifindex, direction);
    report(ctx, direction, counter)
}

/// Where the ingress filter tail-calls when the packet as it is does not match: if `FLOWS`
/// knows how it will look once NAT has rewritten it, run the filter again on that view
/// (`VIEW`). Only ingress needs it: at an egress hop, netfilter has done its rewriting.
#[inline(always)]
pub fn observe_miss(ctx: &TcContext) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // Until its view matches (then `track` forgets this), netfilter leaves it alone.
    // SAFETY: `skb` is the program's context; this load is rewritten by the verifier.
    scope::mark_filtered(skb as u64, unsafe { (*skb).len });
    let Some(p) = FlowKey::parse_frame(&Skb(skb)) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: a lookup with a stack key; the value is copied out.
    let Some(after) = (unsafe { FLOWS.get(p.key) }).copied() else {
        return TC_ACT_UNSPEC;
    };
    let Some(view) = VIEW.get_ptr_mut(0) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: `skb` is the context; `view` is this CPU's entry, nothing else runs here meanwhile.
    unsafe {
        let len = (*skb).len;
        let want = if len < VIEW_LEN as u32 {
            len
        } else {
            VIEW_LEN as u32
        };
        if !load_head(skb, (*view).data.as_mut_ptr(), want, VIEW_LEN as u64 - 1) {
            return TC_ACT_UNSPEC;
        }
        (*view).len = want;
        after.write_into(&p, &mut (*view).data);
        FILTER_PROGS.tail_call(ctx, VIEW_FILTER_SLOT);
    }
    TC_ACT_UNSPEC
}

#[inline(always)]
fn report(ctx: &TcContext, direction: u8, counter: Option<*mut tracer_common::HopCounter>) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: `skb` is the program's context; these loads are rewritten by the verifier.
    let seen = unsafe {
        Seen {
            ifindex: (*skb).ifindex,
            len: (*skb).len,
            mark: (*skb).mark,
            protocol: (*skb).protocol,
            direction,
        }
    };
    if !emit(skb, &seen) {
        crate::maps::count_lost(tracer_common::LostKind::Tc);
        if let Some(c) = counter {
            // SAFETY: a per-CPU value, no concurrent writer on this CPU.
            unsafe { (*c).lost += 1 };
        }
    }
    TC_ACT_UNSPEC
}

/// What the head of a tc observation says of the packet.
struct Seen {
    ifindex: u32,
    len: u32,
    mark: u32,
    protocol: u32,
    direction: u8,
}

/// Sends the observation: its head and the first `min(len, snaplen)` bytes. False if the ring
/// buffer had no room (an event lost).
#[inline(always)]
fn emit(skb: *mut __sk_buff, seen: &Seen) -> bool {
    let want = snaplen();
    let sent = if want <= SNAP_LEN as u32 {
        let headers = if headers_only() && want >= TC_HEADERS as u32 {
            emit_headers(skb, seen)
        } else {
            None
        };
        match headers {
            Some(sent) => sent,
            None => emit_fixed::<SNAP_LEN>(skb, seen, want),
        }
    } else {
        emit_large(skb, seen, want)
    };
    // The dashboard's gauge: one record in 64 (by its time's low bits) is plenty for a
    // figure read once a second, and spares the others a helper call and a map write.
    if sent.is_some_and(|ts| ts & 63 == 0) {
        if let Some(fill) = RING_FILL.get_ptr_mut(0) {
            // SAFETY: this CPU's entry.
            unsafe { *fill = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) };
        }
    }
    sent.is_some()
}

/// Fills the observation's head; its time.
#[inline(always)]
fn fill_head(h: &mut TcHead, skb: *mut __sk_buff, seen: &Seen) -> u64 {
    // SAFETY: plain helpers.
    let (cpu, ts) = unsafe { (bpf_get_smp_processor_id(), bpf_ktime_get_ns()) };
    // The context pointer's value is the kernel sk_buff address: the packet's identity.
    h.header.fill(EventKind::Tc, cpu, ts, skb as u64);
    h.ifindex = seen.ifindex;
    h.len = seen.len;
    h.mark = seen.mark;
    h.set_protocol_direction(seen.protocol as u16, seen.direction);
    ts
}

/// A snaplen of at most `N` (`SNAP_LEN`, the default): the record is reserved at its full size
/// and the bytes are loaded straight into it. Its time if it was sent.
#[inline(always)]
fn emit_fixed<const N: usize>(skb: *mut __sk_buff, seen: &Seen, want: u32) -> Option<u64> {
    let mut entry = EVENTS.reserve::<TcFixed<N>>(0)?;
    let ev = entry.as_mut_ptr();
    let cap = if seen.len < want { seen.len } else { want };
    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer record, whose `data`
    // has room for N bytes (`load_head` copies at most mask + 1).
    let ts = unsafe {
        let ts = fill_head(&mut (*ev).head, skb, seen);
        let copied = load_head(skb, (*ev).data.as_mut_ptr(), cap, N as u64 - 1);
        (*ev).head.cap_len = if copied { cap } else { 0 };
        ts
    };
    entry.submit(0);
    Some(ts)
}

/// Nothing records the bytes (`headers_only`): an IPv4 frame whose header has no options is
/// sent with its first `TC_HEADERS` bytes, which hold every header user space reads. `None`
/// for any other frame (it is sent as before); `Some(None)` if the ring had no room.
#[inline(always)]
fn emit_headers(skb: *mut __sk_buff, seen: &Seen) -> Option<Option<u64>> {
    if u16::from_be(seen.protocol as u16) != 0x0800 || seen.len < 14 + 20 {
        return None;
    }
    let Some(mut entry) = EVENTS.reserve::<TcHeaders>(0) else {
        return Some(None);
    };
    let ev = entry.as_mut_ptr();
    let cap = if seen.len < TC_HEADERS as u32 {
        seen.len
    } else {
        TC_HEADERS as u32
    };
    // SAFETY: as in `emit_fixed`, for TC_HEADERS bytes.
    unsafe {
        let ts = fill_head(&mut (*ev).head, skb, seen);
        let copied = load_head(skb, (*ev).data.as_mut_ptr(), cap, TC_HEADERS as u64 - 1);
        let d = &(*ev).data;
        // An Ethernet header for IPv4 (not a VLAN tag), and an IPv4 header without options.
        if !copied || d[12] != 0x08 || d[13] != 0 || d[14] != 0x45 {
            entry.discard(0);
            return None;
        }
        (*ev).head.cap_len = cap;
        entry.submit(0);
        Some(Some(ts))
    }
}

/// A larger snaplen: assembled in the per-CPU scratch buffer, and its head and captured bytes
/// copied into a record of their size.
#[inline(always)]
fn emit_large(skb: *mut __sk_buff, seen: &Seen, want: u32) -> Option<u64> {
    let ev = TC_SCRATCH.get_ptr_mut(0)?;
    // Masked so that the verifier can bound both the copy and the record.
    let cap = (if seen.len < want { seen.len } else { want }) & (MAX_SNAP as u32 - 1);
    // SAFETY: `ev` is this CPU's scratch entry; nothing else runs on this CPU meanwhile.
    unsafe {
        let h = &mut (*ev).head;
        let ts = fill_head(h, skb, seen);
        let copied = load_head(skb, (*ev).data.as_mut_ptr(), cap, MAX_SNAP as u64 - 1);
        let cap = if copied { cap } else { 0 };
        h.cap_len = cap;
        let record = core::slice::from_raw_parts(ev as *const u8, TC_HEAD_LEN + cap as usize);
        EVENTS.output::<[u8]>(record, 0).is_ok().then_some(ts)
    }
}

/// Copies the packet's first `n` bytes (0 < n ≤ mask + 1) to `to`. Older verifiers (6.1) need
/// the length's lower bound proven ≥ 1, which an `n > 0` test does not give them:
/// 1 + ((n - 1) & mask) is in [1, mask + 1] by arithmetic, masked after an opaque read so that
/// the mask stays in the program.
///
/// # Safety
/// `to` must have room for `mask + 1` bytes; `skb` is the program's context.
#[inline(always)]
unsafe fn load_head(skb: *mut __sk_buff, to: *mut u8, n: u32, mask: u64) -> bool {
    if n == 0 {
        return false;
    }
    let below = u64::from(n - 1);
    let below = core::ptr::read_volatile(&below) & mask;
    bpf_skb_load_bytes(skb as *const _, 0, to as *mut _, (below + 1) as u32) == 0
}
