//! tc (TCX/clsact) observer: count the packet, copy its first bytes into the ring buffer,
//! and always let it continue (`TC_ACT_UNSPEC`: TCX "next").

use aya_ebpf::{
    bindings::{__sk_buff, BPF_RB_AVAIL_DATA, TC_ACT_UNSPEC},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use tracer_common::{EventKind, PointKey, MAX_SNAP, TC_HEAD_LEN};

use crate::maps::{emit_events, snaplen, EVENTS, HOP_COUNTERS, RING_FILL, TC_SCRATCH, TRACKED};

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
    // Let the netfilter and drop programs know this packet is ours.
    let _ = TRACKED.insert(skb as u64, 1, 0);

    if !emit(skb, ifindex, len, mark, protocol, direction) {
        if let Some(c) = counter {
            // SAFETY: as above.
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
