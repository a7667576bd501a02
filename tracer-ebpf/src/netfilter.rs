//! Netfilter observers (BPF_PROG_TYPE_NETFILTER): one program per priority slot, attached at
//! every IPv4 hook by `tracer/src/probe/netfilter.rs`. They report tracked packets, and those
//! in scope at the entry of PREROUTING and OUTPUT (`scope.rs`), copy the first bytes from the
//! IP header, and always return NF_ACCEPT.

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel_buf};
use tracer_common::{netfilter::LAST_SLOT, EventKind, NfEvent, SNAP_LEN};

use crate::{
    kread::{field, ifindex, skb_fields, state_fields, StateFields},
    maps::{offsets, tracked, DevCache, DEV_CACHE, EVENTS, UNFILTERED},
    scope,
};

const NF_ACCEPT: i32 = 1;

/// `ctx` is a `struct bpf_nf_ctx { const struct nf_hook_state *state; struct sk_buff *skb; }`:
/// the program type's context ABI, checked by the verifier (not a kernel-internal layout).
#[inline(always)]
pub fn observe(ctx: *mut core::ffi::c_void, slot: u8) -> i32 {
    let ctx = ctx as *const u64;
    // SAFETY: the verifier allows 8-byte reads of both context fields. The skb is read as a
    // number (a trusted pointer may not be split into the bytes of a map key).
    let (state, skb) = unsafe { (*ctx, *ctx.add(1)) };
    observe_at(state, skb, slot);
    NF_ACCEPT
}

/// The same record from `nf_hook_slow` (fentry/fexit or kprobes, on kernels without BPF
/// netfilter links): at the entry of a hook as the first slot, after all its tables accepted
/// as the last one.
#[inline(always)]
pub fn observe_hook(skb: u64, state: u64, entry: bool) {
    let slot = if entry { 0 } else { LAST_SLOT };
    observe_at(state, scalar(skb), slot);
}

/// The value of a pointer the verifier knows as a typed kernel pointer (fentry's arguments),
/// as a plain number: a map key is built from its bytes, which a typed pointer may not be split
/// into.
#[inline(always)]
fn scalar(v: u64) -> u64 {
    // SAFETY: reads our own stack slot.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(&v as *const u64) }.unwrap_or(0)
}

#[inline(always)]
fn observe_at(state: u64, skb: u64, slot: u8) {
    // Judged out at a hook's entry: the rest of its way costs this comparison alone.
    if scope::judged_out(skb) {
        return;
    }
    // Not seen by a tc observer: in scope only if it is to or from a traced container (it came
    // in by an interface flowtrace is not attached to, or the host sent it), judged at a
    // hook's entry. Both checks come before the offsets are copied out.
    // After a hook's first slot, the packet this CPU last reported is tracked without a
    // lookup (its slots follow each other on this CPU). The first slot always looks: this
    // CPU's cache may name an address freed on another CPU, or evicted, and taken since by
    // a packet that is not ours (judged here, `judged_out` then keeps the later slots away).
    let ours = (slot != 0 && crate::maps::devices_cached(skb)) || tracked(skb);
    if !ours && slot != 0 {
        return;
    }
    let off = offsets();
    if off.valid == 0 {
        return;
    }
    if !ours {
        if !scope::at_netfilter(skb, state, &off) {
            scope::mark_out(skb, field(skb, off.skb_len));
            return;
        }
        crate::maps::track_skb(skb, &UNFILTERED);
        scope::forget(skb);
    }
    let Some(mut entry) = EVENTS.reserve::<NfEvent>(0) else {
        crate::maps::count_lost(tracer_common::LostKind::Netfilter);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer record; its `data` is
    // the scratch the struct windows are read into before the packet's bytes overwrite it.
    unsafe {
        let scratch = (*ev).data.as_mut_ptr();
        let st = state_fields(state, &off, scratch as *mut _);
        let sk = skb_fields(skb, &off, scratch as *mut _);
        let (in_ifindex, out_ifindex) = devices(skb, &st, off.dev_ifindex);
        let linear = sk.len.saturating_sub(sk.data_len);
        let cap = if linear < SNAP_LEN as u32 {
            linear
        } else {
            SNAP_LEN as u32
        };
        (*ev).header.kind = EventKind::Nf as u8;
        (*ev).header._pad = [0; 3];
        (*ev).header.cpu = bpf_get_smp_processor_id();
        (*ev).header.ts_ns = bpf_ktime_get_ns();
        (*ev).header.skb = skb;
        (*ev).hook = st.hook;
        (*ev).pf = st.pf;
        (*ev).slot = slot;
        (*ev)._pad = 0;
        (*ev).in_ifindex = in_ifindex;
        (*ev).out_ifindex = out_ifindex;
        (*ev).len = sk.len;
        (*ev).mark = sk.mark;
        let copied = sk.data != 0
            && bpf_probe_read_kernel_buf(sk.data as *const u8, &mut (*ev).data).is_ok();
        (*ev).cap_len = if copied { cap } else { 0 };
    }
    entry.submit(0);
}

/// The ifindex of the hook's devices. A packet meets several slots at one hook, all with the
/// same devices: they are read once for it (`DEV_CACHE`, this CPU's last), not at every slot.
/// The cache is the packet's own: its address and both device pointers must match, and
/// `drops.rs` clears it when the packet is freed on this CPU.
#[inline(always)]
fn devices(skb: u64, st: &StateFields, off_ifindex: u32) -> (u32, u32) {
    let Some(c) = DEV_CACHE.get_ptr_mut(0) else {
        return (
            ifindex(st.in_dev, off_ifindex),
            ifindex(st.out_dev, off_ifindex),
        );
    };
    // SAFETY: this CPU's entry; nothing else runs on this CPU meanwhile.
    unsafe {
        if (*c).skb != skb || (*c).in_dev != st.in_dev || (*c).out_dev != st.out_dev {
            *c = DevCache {
                skb,
                in_dev: st.in_dev,
                out_dev: st.out_dev,
                in_ifindex: ifindex(st.in_dev, off_ifindex),
                out_ifindex: ifindex(st.out_dev, off_ifindex),
            };
        }
        ((*c).in_ifindex, (*c).out_ifindex)
    }
}
