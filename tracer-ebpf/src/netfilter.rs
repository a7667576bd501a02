//! Netfilter observers (BPF_PROG_TYPE_NETFILTER): one program per priority slot, attached at
//! every IPv4 hook by `tracer/src/probe/netfilter.rs`. They report tracked packets, and those
//! in scope at the entry of PREROUTING and OUTPUT (`scope.rs`), copy the first bytes from the
//! IP header, and always return NF_ACCEPT.

use aya_ebpf::helpers::{
    bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
};
use tracer_common::{
    flow::{Tracked, ORIGIN_NONE},
    netfilter::{LAST_SLOT, NFPROTO_IPV4},
    offsets::STATE_WINDOW,
    EventKind, NfEvent, NfHeaders, NfRecord, Offsets,
};

use crate::{
    kread::{field_of, ifindex_of, skb_fields, state_fields, SkbFields, StateFields},
    maps::{headers_only, offsets, EVENTS, NF_NOTE, PRINT_WORDS, UNFILTERED},
    scope,
};

const NF_ACCEPT: i32 = 1;

/// `ctx` is a `struct bpf_nf_ctx { const struct nf_hook_state *state; struct sk_buff *skb; }`:
/// the program type's context ABI, checked by the verifier (not a kernel-internal layout).
#[inline(always)]
pub fn observe(ctx: *mut core::ffi::c_void, slot: u8) -> i32 {
    let ctx = ctx as *const u64;
    // SAFETY: the verifier allows 8-byte reads of both context fields. Rust holds them as
    // numbers (the skb's is a map key); the verifier still knows both as BTF-typed pointers,
    // which is what lets `observe_at::<true>` load their fields directly (`kread::load`).
    let (state, skb) = unsafe { (*ctx, *ctx.add(1)) };
    observe_at::<true>(state, skb, slot);
    NF_ACCEPT
}

/// The same record from `nf_hook_slow` (fentry/fexit or kprobes, on kernels without BPF
/// netfilter links): at the entry of a hook as the first slot, after all its tables accepted
/// as the last one.
#[inline(always)]
pub fn observe_hook(skb: u64, state: u64, entry: bool) {
    let slot = if entry { 0 } else { LAST_SLOT };
    observe_at::<false>(state, scalar(skb), slot);
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
fn observe_at<const DIRECT: bool>(state: u64, skb: u64, slot: u8) {
    // Judged out at a hook's entry: the rest of its way costs this comparison alone.
    if scope::judged_out(skb) {
        return;
    }
    // Not seen by a tc observer: in scope only if it is to or from a traced container (it came
    // in by an interface flowtrace is not attached to, or the host sent it), judged at a
    // hook's entry. Both checks come before the offsets are copied out.
    // After a hook's first slot, the packet this CPU last reported is tracked without a
    // lookup (its slots follow each other on this CPU). The first slot always looks: this
    // CPU's note may name an address freed on another CPU, or evicted, and taken since by
    // a packet that is not ours (judged here, `judged_out` then keeps the later slots away).
    let noted = slot != 0 && crate::maps::devices_cached(skb);
    let entry = if noted {
        None
    } else {
        crate::maps::tracked_entry(skb)
    };
    let mut ours = noted || entry.is_some();
    if !ours && slot != 0 {
        return;
    }
    let off = offsets();
    if off.valid == 0 {
        return;
    }
    if noted && unchanged::<DIRECT>(skb, slot, &off) {
        return;
    }
    if let Some(t) = entry {
        // SAFETY: the map's entry, read once (LRU entries stay valid during the program).
        let (known, print) = unsafe { ((*t).has_origin, (*t).fingerprint) };
        if known != ORIGIN_NONE && !scope::same_life::<DIRECT>(skb, state, print, &off) {
            // Another packet at a freed one's address: the entry is removed, and the packet
            // judged on its own.
            let _ = crate::maps::untrack_skb(skb);
            if slot != 0 {
                return;
            }
            ours = false;
        }
    }
    if !ours {
        if !scope::at_netfilter::<DIRECT>(skb, state, &off) {
            // SAFETY: with DIRECT, `skb` is the context's BTF-typed pointer (`kread::load`).
            scope::mark_out(skb, unsafe { field_of::<u32, DIRECT>(skb, off.skb_len) });
            return;
        }
        let taken = match scope::judged_print() {
            (print, true) => Tracked::fingerprinted(print),
            _ => UNFILTERED,
        };
        crate::maps::track_skb(skb, &taken);
        scope::forget(skb);
    }
    record::<DIRECT>(state, skb, slot, &off);
}

/// Reports the packet at this slot, and notes what it carried for the hook's later slots.
/// When nothing records the bytes (`headers_only`), an IPv4 packet without IP options is sent
/// with its headers alone (`NfHeaders`); any other, or with a recording, with `SNAP_LEN` bytes.
#[inline(always)]
fn record<const DIRECT: bool>(state: u64, skb: u64, slot: u8, off: &Offsets) {
    let Some(c) = NF_NOTE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's note, whose window is scratch outside `unchanged` (nothing else runs
    // on this CPU meanwhile); STATE_WINDOW ≤ SKB_WINDOW.
    let (st, sk) = unsafe {
        let w = &mut (*c).window;
        let st = state_fields::<DIRECT>(
            state,
            off,
            w.as_mut_ptr() as *mut [u8; STATE_WINDOW as usize],
        );
        (st, skb_fields::<DIRECT>(skb, off, w))
    };
    if headers_only() && st.pf == NFPROTO_IPV4 {
        let Some(mut entry) = EVENTS.reserve::<NfHeaders>(0) else {
            lost(skb);
            return;
        };
        let ev = entry.as_mut_ptr();
        // SAFETY: a reserved, exclusively owned ring-buffer record.
        if unsafe {
            fill::<_, DIRECT>(ev, skb, slot, &st, &sk, off.dev_ifindex) && (*ev).data[0] == 0x45
        } {
            entry.submit(0);
            return;
        }
        entry.discard(0);
    }
    let Some(mut entry) = EVENTS.reserve::<NfEvent>(0) else {
        lost(skb);
        return;
    };
    // SAFETY: as above.
    unsafe { fill::<_, DIRECT>(entry.as_mut_ptr(), skb, slot, &st, &sk, off.dev_ifindex) };
    entry.submit(0);
}

/// A record that did not fit: counted, and the note's print is no longer what was last
/// reported (it may be another hook's), so the next slots compare with nothing and report.
#[inline(always)]
fn lost(skb: u64) {
    crate::maps::count_lost(tracer_common::LostKind::Netfilter);
    if let Some(c) = NF_NOTE.get_ptr_mut(0) {
        // SAFETY: this CPU's entry.
        unsafe {
            if (*c).skb == skb {
                (*c).printed = 0;
            }
        }
    }
}

/// Fills a record with the packet's first N bytes from its IP header, and notes it; false if
/// the bytes could not be read.
///
/// # Safety
/// `ev` must point at a reserved, exclusively owned ring-buffer record.
#[inline(always)]
unsafe fn fill<const N: usize, const DIRECT: bool>(
    ev: *mut NfRecord<N>,
    skb: u64,
    slot: u8,
    st: &StateFields,
    sk: &SkbFields,
    off_ifindex: u32,
) -> bool {
    let (in_ifindex, out_ifindex) = devices::<DIRECT>(skb, st, off_ifindex);
    let linear = sk.len.saturating_sub(sk.data_len);
    let cap = if linear < N as u32 { linear } else { N as u32 };
    (*ev).header.fill(
        EventKind::Nf,
        bpf_get_smp_processor_id(),
        bpf_ktime_get_ns(),
        skb,
    );
    (*ev).hook = st.hook;
    (*ev).pf = st.pf;
    (*ev).slot = slot;
    (*ev)._pad = 0;
    (*ev).in_ifindex = in_ifindex;
    (*ev).out_ifindex = out_ifindex;
    (*ev).len = sk.len;
    (*ev).mark = sk.mark;
    let copied =
        sk.data != 0 && bpf_probe_read_kernel_buf(sk.data as *const u8, &mut (*ev).data).is_ok();
    (*ev).cap_len = if copied { cap } else { 0 };
    if let Some(c) = NF_NOTE.get_ptr_mut(0) {
        if (*c).skb == skb {
            (*c).hook = st.hook;
            (*c).slot = slot;
            (*c).len = sk.len;
            (*c).mark = sk.mark;
            (*c).printed = u8::from(copied);
            // Word by word: a copy of the array would be a byte-by-byte `memcpy` subprogram.
            // `data` is 8-aligned in the record (a unit test pins it), and holds at least
            // PRINT_WORDS words (NF_HEADERS ≥ 40).
            let words = (*ev).data.as_ptr() as *const u64;
            let mut i = 0;
            while i < PRINT_WORDS {
                (*c).print[i] = *words.add(i);
                i += 1;
            }
        }
    }
    copied
}

/// Does a later slot of the hook see the packet as its last record there left it: the same
/// length, mark, and first bytes (the IPv4 header, which a rewrite of it changes, checksum
/// included, and the next 20 bytes, which hold the ports and the TCP, UDP or ICMP checksum
/// that a rewrite of them changes too)? Then no table before this slot touched it: the slot
/// is noted as passed, not reported, and user space gives it the last record's view. A
/// header with options is always reported (its ports lie beyond the print).
#[inline(always)]
fn unchanged<const DIRECT: bool>(skb: u64, slot: u8, off: &Offsets) -> bool {
    let Some(c) = NF_NOTE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's entry; nothing else runs on this CPU meanwhile. `window` is its
    // own scratch of SKB_WINDOW bytes.
    unsafe {
        if (*c).printed == 0 || (*c).slot >= slot {
            return false;
        }
        let sk = skb_fields::<DIRECT>(skb, off, &mut (*c).window);
        if sk.data == 0 || sk.len != (*c).len || sk.mark != (*c).mark {
            return false;
        }
        let Ok(now) = bpf_probe_read_kernel(sk.data as *const [u64; PRINT_WORDS]) else {
            return false;
        };
        // The first byte: version 4, a 20-byte header.
        if now[0] as u8 != 0x45 {
            return false;
        }
        let mut i = 0;
        while i < PRINT_WORDS {
            if now[i] != (*c).print[i] {
                return false;
            }
            i += 1;
        }
        (*c).slot = slot;
    }
    true
}

/// The ifindex of the hook's devices. A packet meets several slots at one hook, all with the
/// same devices: they are read once for it (`NF_NOTE`, this CPU's last), not at every slot.
/// The note is the packet's own: its address and both device pointers must match, and
/// `drops.rs` clears it when the packet is freed on this CPU. Noting another packet keeps the
/// one before as `prev`.
#[inline(always)]
fn devices<const DIRECT: bool>(skb: u64, st: &StateFields, off_ifindex: u32) -> (u32, u32) {
    let Some(c) = NF_NOTE.get_ptr_mut(0) else {
        // SAFETY: with DIRECT, the devices came from a BTF-typed `nf_hook_state` (`load`).
        return unsafe {
            (
                ifindex_of::<DIRECT>(st.in_dev, off_ifindex),
                ifindex_of::<DIRECT>(st.out_dev, off_ifindex),
            )
        };
    };
    // SAFETY: this CPU's entry; nothing else runs on this CPU meanwhile.
    unsafe {
        let other = (*c).skb != skb;
        if other {
            if (*c).skb != 0 {
                (*c).prev_skb = (*c).skb;
                (*c).prev_hook = (*c).hook;
                (*c).prev_slot = (*c).slot;
            }
            (*c).skb = skb;
            (*c).printed = 0;
        }
        if other || (*c).in_dev != st.in_dev || (*c).out_dev != st.out_dev {
            (*c).in_dev = st.in_dev;
            (*c).out_dev = st.out_dev;
            (*c).in_ifindex = ifindex_of::<DIRECT>(st.in_dev, off_ifindex);
            (*c).out_ifindex = ifindex_of::<DIRECT>(st.out_dev, off_ifindex);
        }
        ((*c).in_ifindex, (*c).out_ifindex)
    }
}
