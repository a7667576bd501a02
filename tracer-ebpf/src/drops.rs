//! The end of a tracked packet's life: `kfree_skb` (a drop, with its reason) and
//! `consume_skb` (a normal free). Both are reported for tracked packets only, which are then
//! forgotten. Attached as tp_btf where the kernel has BTF tracepoints, else as raw tracepoints;
//! the arguments are the same: (skb, location[, reason]).

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use tracer_common::{EventKind, SkbEndEvent};

use crate::{
    kread::{field, ifindex},
    maps::{offsets, EVENTS},
};

#[inline(always)]
pub fn end(skb: u64, location: u64, reason: u32, kind: EventKind) -> i32 {
    // Its address may be another packet's next.
    crate::scope::forget(skb);
    // Every skb the host frees passes here, nearly all of them never ours: a lookup (lock-free)
    // first. Ending it clears this CPU's note of it too; a stale note (a packet evicted, or
    // freed on another CPU) is harmless: a hook's first slot always looks the packet up
    // (`netfilter.rs`).
    if crate::maps::tracked_entry(skb).is_none() {
        return 0;
    }
    // Where in netfilter it was, read before ending it clears this CPU's note of it.
    let passed = crate::maps::passed(skb);
    if !crate::maps::end_tracked(skb) {
        return 0;
    }
    let off = offsets();
    let Some(mut entry) = EVENTS.reserve::<SkbEndEvent>(0) else {
        crate::maps::count_lost(tracer_common::LostKind::Drop);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer record.
    unsafe {
        (*ev)
            .header
            .fill(kind, bpf_get_smp_processor_id(), bpf_ktime_get_ns(), skb);
        // Volatile: where both are constant zeros (`consume_skb` before 6.3), the compiler
        // would merge them with the stores below into a `memset` subprogram call.
        core::ptr::write_volatile(&mut (*ev).location, location);
        core::ptr::write_volatile(&mut (*ev).reason, reason);
        // Where it was freed tells a drop inside a container from one on the host; a normal
        // free (once per packet shown) needs neither, which spares it three kernel reads.
        let dev: u64 = if off.valid != 0 && kind == EventKind::Drop {
            field(skb, off.skb_dev)
        } else {
            0
        };
        (*ev).ifindex = 0;
        (*ev).netns = 0;
        if dev != 0 {
            (*ev).ifindex = ifindex(dev, off.dev_ifindex);
            (*ev).netns = field(field::<u64>(dev, off.dev_net), off.net_inum);
        }
        (*ev).nf_hook = passed.0;
        (*ev).nf_slot = passed.1;
        (*ev).passed = passed.2;
        (*ev)._pad = 0;
    }
    entry.submit(0);
    0
}
