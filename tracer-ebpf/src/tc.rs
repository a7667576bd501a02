//! tc (TCX/clsact) observer: count the packet, copy its first bytes into the ring buffer,
//! and always let it continue (`TC_ACT_UNSPEC`: TCX "next").

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use tracer_common::{EventKind, PointKey, TcEvent, SNAP_LEN};

use crate::maps::{EVENTS, HOP_COUNTERS, TRACKED};

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

    // Let the netfilter and drop programs know this packet is ours.
    let _ = TRACKED.insert(skb as u64, 1, 0);

    let Some(mut entry) = EVENTS.reserve::<TcEvent>(0) else {
        if let Some(c) = counter {
            // SAFETY: as above.
            unsafe { (*c).lost += 1 };
        }
        return TC_ACT_UNSPEC;
    };
    let ev = entry.as_mut_ptr();
    let cap = if len < SNAP_LEN as u32 {
        len
    } else {
        SNAP_LEN as u32
    };
    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer record.
    unsafe {
        (*ev).header.kind = EventKind::Tc as u8;
        (*ev).header._pad = [0; 3];
        (*ev).header.cpu = bpf_get_smp_processor_id();
        (*ev).header.ts_ns = bpf_ktime_get_ns();
        // The context pointer's value is the kernel sk_buff address: the packet's identity.
        (*ev).header.skb = skb as u64;
        (*ev).ifindex = ifindex;
        (*ev).len = len;
        (*ev).mark = mark;
        (*ev).protocol = protocol as u16;
        (*ev).direction = direction;
        (*ev)._pad = [0; 5];
        let copied = if cap > 0 && cap <= SNAP_LEN as u32 {
            bpf_skb_load_bytes(skb as *const _, 0, (*ev).data.as_mut_ptr() as *mut _, cap) == 0
        } else {
            false
        };
        (*ev).cap_len = if copied { cap } else { 0 };
    }
    entry.submit(0);
    TC_ACT_UNSPEC
}
