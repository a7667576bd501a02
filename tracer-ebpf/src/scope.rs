//! Is a packet that is not tracked yet one of the traced containers'? The rules are
//! `tracer_common::scope`'s; this is where the tc and netfilter observers look them up.

use aya_ebpf::helpers::bpf_probe_read_kernel_buf;
use tracer_common::{
    flow::fingerprint_at_ip,
    headers::Frame,
    judged::{Judged, Noted},
    scope::{
        addr_bit, dport, flow_mark, judged_at_hook, point_bit, port_bit, word_and_mask, ScopeAddr,
        POINT_ALL, POINT_TRACED,
    },
    Direction, Offsets,
};

use crate::{
    kread::field_of,
    maps::{
        FLOWS, FLOW_MARKS, JUDGED_OUT, SCOPE_ADDRS, SCOPE_ADDR_BITS, SCOPE_POINTS,
        SCOPE_POINT_BITS, SCOPE_PORT_BITS, SCOPE_SCRATCH,
    },
};

/// Is `bit` set in a bitmap of 64-bit words?
#[inline(always)]
fn bit_set(map: &aya_ebpf::maps::Array<u64>, bit: u32) -> bool {
    let (word, mask) = word_and_mask(bit);
    map.get(word).is_some_and(|w| w & mask != 0)
}

/// A traced address: its bit first, then (a hashed bitmap) the address itself.
#[inline(always)]
fn traced_addr(a: &ScopeAddr) -> bool {
    // SAFETY: a lookup with a key the caller holds; the value is not kept.
    bit_set(&SCOPE_ADDR_BITS, addr_bit(a)) && unsafe { SCOPE_ADDRS.get(a).is_some() }
}

#[inline(always)]
fn published(proto: u8, dport: u16) -> bool {
    port_bit(proto, dport).is_some_and(|b| bit_set(&SCOPE_PORT_BITS, b))
}

/// A point where everything is in scope (a traced veth, an `--iface` alone): its bit, or for
/// an ifindex beyond the bitmap its `SCOPE_POINTS` entry.
#[inline(always)]
fn traced_point(ifindex: u32) -> bool {
    match point_bit(ifindex) {
        Some(b) => bit_set(&SCOPE_POINT_BITS, b),
        None => {
            // SAFETY: a lookup with a stack key; the value is not kept.
            let flags = unsafe { SCOPE_POINTS.get(ifindex) }.copied().unwrap_or(0);
            flags & (POINT_TRACED | POINT_ALL) != 0
        }
    }
}

/// In a NAT'd flow the kernel learnt: its mark first, then the flow itself.
#[inline(always)]
fn nat_flow(key: &tracer_common::flow::FlowKey) -> bool {
    let marked = FLOW_MARKS.get(flow_mark(key)).is_some_and(|w| *w != 0);
    // SAFETY: a lookup with a key the caller holds; the value is not kept.
    marked && unsafe { FLOWS.get(key).is_some() }
}

/// Marks a flow put in `FLOWS` (a plain store of 1: concurrent markers agree).
#[inline(always)]
pub fn mark_flow(key: &tracer_common::flow::FlowKey) {
    if let Some(w) = FLOW_MARKS.get_ptr_mut(flow_mark(key)) {
        // SAFETY: an array entry, valid for the program's run.
        unsafe { core::ptr::write_volatile(w, 1) };
    }
}

/// At a tc hop: is the packet in scope? Everything is at a traced veth; elsewhere only IP.
/// The keys are built in `SCOPE_SCRATCH`, not on the stack: this runs as a subprogram of the
/// tc programs, whose frames together must stay within 512 bytes on every kernel.
#[inline(always)]
pub fn at_tc<F: Frame>(frame: &F, ifindex: u32, direction: u8) -> bool {
    if traced_point(ifindex) {
        return true;
    }
    let Some(s) = SCOPE_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let ingress = direction == Direction::Ingress as u8;
    // SAFETY: `s` is this CPU's scratch entry; nothing else runs on this CPU meanwhile.
    let Some((proto, ports)) = (unsafe { (*s).read_frame(frame, ingress) }) else {
        return false;
    };
    // SAFETY: as above; lookups with keys in the scratch entry, values not kept.
    unsafe {
        if traced_addr(&(*s).src) || traced_addr(&(*s).dst) {
            return true;
        }
        if !ingress {
            return false;
        }
        if let Some(p) = ports {
            if published(proto, dport(p)) {
                return true;
            }
        }
        (*s).set_key(proto, ports);
        nat_flow(&(*s).key)
    }
}

/// Judged out of scope on this CPU, on its way through (`JUDGED_OUT`)? For the netfilter
/// observers, by its address.
#[inline(always)]
pub fn judged_out(skb: u64) -> bool {
    JUDGED_OUT.get(0).is_some_and(|j| j.skb == skb)
}

/// For a tc observer, this CPU's notes of it (`Judged::of`): judged out (by its address and
/// length, and not at a traced point), or taken in here at an earlier hop and now at an
/// ingress. One lookup for both.
#[inline(always)]
pub fn noted_at(skb: u64, len: u32, ifindex: u32, egress: bool) -> Noted {
    match JUDGED_OUT.get(0).map(|j| j.of(skb, len, egress)) {
        Some(Noted::Out) if traced_point(ifindex) => Noted::Nothing,
        Some(n) => n,
        None => Noted::Nothing,
    }
}

/// Taken in by a tc observer: no longer judged out, and noted for its next ingress.
#[inline(always)]
pub fn taken_in(skb: u64, len: u32) {
    if let Some(j) = JUDGED_OUT.get_ptr_mut(0) {
        // SAFETY: this CPU's entry; volatile as in `set_out`.
        unsafe {
            clear_out(j, skb);
            core::ptr::write_volatile(&mut (*j).taken, skb);
            core::ptr::write_volatile(&mut (*j).taken_len, len);
        }
    }
}

/// Judged out with the full rules: remembered for the next observers on this CPU.
#[inline(always)]
pub fn mark_out(skb: u64, len: u32) {
    judge(skb, len, 0);
}

/// Not matched by the filter expression at a traced veth's ingress (nor, with NAT, by its
/// view): remembered for the netfilter observers on this CPU, which would otherwise take
/// it in by its address at PREROUTING's entry, and run for it at every slot.
#[inline(always)]
pub fn mark_filtered(skb: u64, len: u32) {
    judge(skb, len, 1);
}

#[inline(always)]
fn judge(skb: u64, len: u32, by_filter: u32) {
    if let Some(j) = JUDGED_OUT.get_ptr_mut(0) {
        // SAFETY: this CPU's entry.
        unsafe { set_out(j, skb, len, by_filter) };
    }
}

/// Writes the judged-out note. Volatile: the compiler would otherwise turn its zeroing into a
/// call of a `memset` subprogram that loops byte by byte.
///
/// # Safety
/// `j` is this CPU's `JUDGED_OUT` entry.
#[inline(always)]
unsafe fn set_out(j: *mut Judged, skb: u64, len: u32, by_filter: u32) {
    core::ptr::write_volatile(&mut (*j).skb, skb);
    core::ptr::write_volatile(&mut (*j).len, len);
    core::ptr::write_volatile(&mut (*j).by_filter, by_filter);
}

/// Clears the judged-out note if it names `skb`.
///
/// # Safety
/// `j` is this CPU's `JUDGED_OUT` entry.
#[inline(always)]
unsafe fn clear_out(j: *mut Judged, skb: u64) {
    if (*j).skb == skb {
        set_out(j, 0, 0, 0);
    }
}

/// A packet at this address is taken in (by a netfilter observer), or freed: no longer
/// judged out, nor noted as taken in.
#[inline(always)]
pub fn forget(skb: u64) {
    if let Some(j) = JUDGED_OUT.get_ptr_mut(0) {
        // SAFETY: this CPU's entry; volatile as in `set_out`.
        unsafe {
            clear_out(j, skb);
            if (*j).taken == skb {
                core::ptr::write_volatile(&mut (*j).taken, 0);
            }
        }
    }
}

/// At the entry of PREROUTING or OUTPUT, where a packet's way through netfilter starts: is
/// the tracked packet at this address the one whose fingerprint its entry holds (`print`)?
/// Some frees pass no tracepoint (TCP's deferred free; UDP's on 6.18), so an entry can
/// outlive its packet, and the slab gives the address to the host's next one. Where the
/// fingerprint cannot be read, the entry is believed. At the other hooks a packet has passed
/// one of these two, where a stale entry was found out and ended.
#[inline(never)]
pub fn same_life<const DIRECT: bool>(skb: u64, state: u64, print: u64, off: &Offsets) -> bool {
    // SAFETY: as in `at_netfilter`.
    let hook: u8 = unsafe { field_of::<_, DIRECT>(state, off.state_hook) };
    if !judged_at_hook(u32::from(hook)) {
        return true;
    }
    // SAFETY: as above.
    let data: u64 = unsafe { field_of::<_, DIRECT>(skb, off.skb_data) };
    let Some(s) = SCOPE_SCRATCH.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's scratch entry; bpf_probe_read_kernel_buf fails cleanly.
    unsafe {
        if data == 0 || bpf_probe_read_kernel_buf(data as *const u8, &mut (*s).head).is_err() {
            return true;
        }
        let (now, known) = fingerprint_at_ip(&(*s).head);
        !known || now == print
    }
}

/// The fingerprint of the packet [`at_netfilter`] just judged in on this CPU, and whether its
/// bytes held it (see `fingerprint_at_ip`).
#[inline(always)]
pub fn judged_print() -> (u64, bool) {
    match SCOPE_SCRATCH.get_ptr(0) {
        // SAFETY: this CPU's scratch entry, as `at_netfilter` left it.
        Some(s) => unsafe { fingerprint_at_ip(&(*s).head) },
        None => (0, false),
    }
}

/// At a netfilter observer, for a packet no tc observer took: judged only at the entry of
/// PREROUTING and OUTPUT (`judged_at_hook`), the first hook every packet passes, so a packet
/// from an interface flowtrace is not attached to (another Docker network's bridge) or sent
/// by the host is in scope from there on.
///
/// With `DIRECT` (a BPF netfilter link's typed `skb` and `state`, see `kread::load`), its
/// fields are loaded directly, not with a helper call each: this runs for every packet the host
/// sends, and every one from an interface flowtrace is not attached to.
#[inline(never)]
pub fn at_netfilter<const DIRECT: bool>(skb: u64, state: u64, off: &Offsets) -> bool {
    // SAFETY: with DIRECT, `skb` and `state` are the context's BTF-typed pointers (a static
    // subprogram is verified with its caller's argument types) and the offsets the loader's.
    let (hook, pf): (u8, u8) = unsafe {
        (
            field_of::<_, DIRECT>(state, off.state_hook),
            field_of::<_, DIRECT>(state, off.state_pf),
        )
    };
    if !judged_at_hook(u32::from(hook)) || !(pf == 2 || pf == 10) {
        return false;
    }
    // SAFETY: as above.
    let data: u64 = unsafe { field_of::<_, DIRECT>(skb, off.skb_data) };
    if data == 0 {
        return false;
    }
    let Some(s) = SCOPE_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: `s` is this CPU's scratch entry; nothing else runs on this CPU meanwhile.
    // bpf_probe_read_kernel_buf checks the address and fails cleanly.
    unsafe {
        if bpf_probe_read_kernel_buf(data as *const u8, &mut (*s).head).is_err() {
            return false;
        }
        let Some((proto, ports)) = (*s).parse_head() else {
            return false;
        };
        if traced_addr(&(*s).src) || traced_addr(&(*s).dst) {
            return true;
        }
        if let Some(p) = ports {
            if published(proto, dport(p)) {
                return true;
            }
        }
        (*s).set_key(proto, ports);
        nat_flow(&(*s).key)
    }
}
