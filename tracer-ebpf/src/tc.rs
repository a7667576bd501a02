//! tc (TCX/clsact) observer: count the packet, copy its first bytes into the ring buffer,
//! and always let it continue (`TC_ACT_UNSPEC`: TCX "next").

use aya_ebpf::{
    bindings::{__sk_buff, BPF_RB_AVAIL_DATA, TC_ACT_UNSPEC},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use tracer_common::{
    flow::{FlowKey, Frame, FILTER_SLOT_EGRESS, FILTER_SLOT_INGRESS},
    Direction, EventKind, PointKey, MAX_SNAP, TC_HEAD_LEN,
};

use crate::maps::{
    emit_events, filtering, snaplen, tracked_as, EVENTS, FILTER_PROGS, FLOWS, HOP_COUNTERS,
    RING_FILL, TC_SCRATCH, TRACKED,
};

struct Skb<'a>(&'a TcContext);

impl Frame for Skb<'_> {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: u32) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(offset as usize).ok()
    }
}

/// `TRACKED` values with a filter: the packet matched it (at this hop or an earlier one), or
/// it is a reply to a packet that did (user space keeps it if it matches at some hop).
const MATCHED: u8 = 1;
const REPLY: u8 = 2;

/// A matching packet's replies come back with its tuple reversed, as it is at this hop: after
/// MASQUERADE, the uplink's address. Report them from the hop they arrive at.
#[inline(always)]
fn expect_replies(ctx: &TcContext) {
    if let Some(k) = FlowKey::parse(&Skb(ctx)) {
        let r = k.reversed();
        // SAFETY: a lookup with a stack key; the value is not kept.
        if unsafe { FLOWS.get(&r).is_none() } {
            let _ = FLOWS.insert(&r, 1, 0);
        }
    }
}

/// With a filter: how this packet is reported without running the filter (tracked from an
/// earlier hop, or a reply to a matching packet), or None.
#[inline(always)]
fn followed(ctx: &TcContext, skb: u64) -> Option<u8> {
    match tracked_as(skb) {
        Some(MATCHED) => {
            expect_replies(ctx);
            Some(MATCHED)
        }
        Some(other) => Some(other),
        // SAFETY: a lookup with a stack key; the value is not kept.
        None => FlowKey::parse(&Skb(ctx))
            .filter(|k| unsafe { FLOWS.get(k).is_some() })
            .map(|_| REPLY),
    }
}

#[inline(always)]
pub fn observe(ctx: &TcContext, direction: u8) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: `skb` is the program's context; these loads are rewritten by the verifier.
    let (ifindex, len, mark, protocol) =
        unsafe { ((*skb).ifindex, (*skb).len, (*skb).mark, (*skb).protocol) };

    let key = PointKey::new(ifindex, direction);
    let counter = HOP_COUNTERS.get_ptr_mut(key);
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
    let how = if filtering() {
        match followed(ctx, skb as u64) {
            Some(how) => how,
            None => {
                let slot = if direction == Direction::Ingress as u8 {
                    FILTER_SLOT_INGRESS
                } else {
                    FILTER_SLOT_EGRESS
                };
                // SAFETY: the context is this program's own. On a match the filter tail-calls
                // `observe_matched`; otherwise (or if the slot is empty) it is not reported.
                let _ = unsafe { FILTER_PROGS.tail_call(ctx, slot) };
                return TC_ACT_UNSPEC;
            }
        }
    } else {
        MATCHED
    };
    report(skb, ifindex, len, mark, protocol, direction, counter, how)
}

/// Where the translated filter tail-calls on a match: follow the flow, report the packet
/// (it was counted before the filter ran).
#[inline(always)]
pub fn observe_matched(ctx: &TcContext, direction: u8) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: as in `observe`.
    let (ifindex, len, mark, protocol) =
        unsafe { ((*skb).ifindex, (*skb).len, (*skb).mark, (*skb).protocol) };
    expect_replies(ctx);
    let counter = HOP_COUNTERS.get_ptr_mut(PointKey::new(ifindex, direction));
    report(
        skb, ifindex, len, mark, protocol, direction, counter, MATCHED,
    )
}

#[inline(always)]
fn report(
    skb: *mut __sk_buff,
    ifindex: u32,
    len: u32,
    mark: u32,
    protocol: u32,
    direction: u8,
    counter: Option<*mut tracer_common::HopCounter>,
    how: u8,
) -> i32 {
    // Let the netfilter and drop programs, and the next hops, know this packet is ours.
    let _ = TRACKED.insert(skb as u64, how, 0);

    if !emit(skb, ifindex, len, mark, protocol, direction) {
        if let Some(c) = counter {
            // SAFETY: a per-CPU value, no concurrent writer on this CPU.
            unsafe { (*c).lost += 1 };
        }
    }
    TC_ACT_UNSPEC
}

/// Assembles the observation in the per-CPU scratch buffer and sends its head and the first
/// `min(len, snaplen)` bytes. False if the ring buffer had no room (an event lost).
#[inline(always)]
fn emit(
    skb: *mut __sk_buff,
    ifindex: u32,
    len: u32,
    mark: u32,
    protocol: u32,
    direction: u8,
) -> bool {
    let Some(ev) = TC_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let want = snaplen();
    // Masked so that the verifier can bound both the copy and the record.
    let cap = (if len < want { len } else { want }) & (MAX_SNAP as u32 - 1);
    // SAFETY: `ev` is this CPU's scratch entry; nothing else runs on this CPU meanwhile.
    unsafe {
        let h = &mut (*ev).head;
        h.header.kind = EventKind::Tc as u8;
        h.header._pad = [0; 3];
        h.header.cpu = bpf_get_smp_processor_id();
        h.header.ts_ns = bpf_ktime_get_ns();
        // The context pointer's value is the kernel sk_buff address: the packet's identity.
        h.header.skb = skb as u64;
        h.ifindex = ifindex;
        h.len = len;
        h.mark = mark;
        h.protocol = protocol as u16;
        h.direction = direction;
        h._pad = [0; 5];
        // Older verifiers (6.1) need the length's lower bound proven ≥ 1, which a `cap > 0`
        // test does not give them: 1 + ((cap - 1) & mask) is in [1, MAX_SNAP] by arithmetic.
        let copied = cap > 0 && {
            let below = u64::from(cap - 1);
            // Masked after the opaque read, so the mask stays in the program.
            let below = core::ptr::read_volatile(&below) & (MAX_SNAP as u64 - 1);
            bpf_skb_load_bytes(
                skb as *const _,
                0,
                (*ev).data.as_mut_ptr() as *mut _,
                (below + 1) as u32,
            ) == 0
        };
        let cap = if copied { cap } else { 0 };
        h.cap_len = cap;
        let record = core::slice::from_raw_parts(ev as *const u8, TC_HEAD_LEN + cap as usize);
        let sent = EVENTS.output::<[u8]>(record, 0).is_ok();
        if let Some(fill) = RING_FILL.get_ptr_mut(0) {
            *fill = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
        }
        sent
    }
}
