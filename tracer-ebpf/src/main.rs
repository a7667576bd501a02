//! flowtrace's eBPF programs. Each entry point is a thin wrapper over a module that says
//! what it observes: `tc.rs` (interfaces), `netfilter.rs` (hooks and tables), `drops.rs`
//! (the end of a packet's life); `maps.rs` holds what is shared with user space.
#![no_std]
#![no_main]

mod drops;
mod kread;
mod maps;
mod netfilter;
mod scope;
mod tc;

use aya_ebpf::{
    macros::{btf_tracepoint, classifier, fentry, fexit, kprobe, kretprobe, raw_tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RawTracePointContext,
        RetProbeContext, TcContext,
    },
};
use tracer_common::{Direction, EventKind};

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    tc::observe(&ctx, Direction::Ingress as u8)
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    tc::observe(&ctx, Direction::Egress as u8)
}

/// Tail-called by the translated filter expression on a match (`tracer_common::flow`).
#[classifier]
pub fn tc_ingress_matched(ctx: TcContext) -> i32 {
    tc::observe_matched(&ctx, Direction::Ingress as u8)
}

#[classifier]
pub fn tc_egress_matched(ctx: TcContext) -> i32 {
    tc::observe_matched(&ctx, Direction::Egress as u8)
}

/// Tail-called by the translated ingress filter when the packet as it is does not match.
#[classifier]
pub fn tc_ingress_miss(ctx: TcContext) -> i32 {
    tc::observe_miss(&ctx)
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_btf(ctx: BtfTracePointContext) -> i32 {
    drops::end(ctx.arg(0), ctx.arg(1), ctx.arg(2), EventKind::Drop)
}

#[btf_tracepoint(function = "consume_skb")]
pub fn consume_skb_btf(ctx: BtfTracePointContext) -> i32 {
    drops::end(ctx.arg(0), ctx.arg(1), 0, EventKind::Consume)
}

/// `consume_skb(skb)` before Linux 6.3 had no location argument: reading it would be refused.
#[btf_tracepoint(function = "consume_skb")]
pub fn consume_skb_btf_old(ctx: BtfTracePointContext) -> i32 {
    drops::end(ctx.arg(0), 0, 0, EventKind::Consume)
}

#[raw_tracepoint(tracepoint = "consume_skb")]
pub fn consume_skb_raw_old(ctx: RawTracePointContext) -> i32 {
    drops::end(ctx.arg(0), 0, 0, EventKind::Consume)
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb_raw(ctx: RawTracePointContext) -> i32 {
    drops::end(ctx.arg(0), ctx.arg(1), ctx.arg(2), EventKind::Drop)
}

#[raw_tracepoint(tracepoint = "consume_skb")]
pub fn consume_skb_raw(ctx: RawTracePointContext) -> i32 {
    drops::end(ctx.arg(0), ctx.arg(1), 0, EventKind::Consume)
}

/// Loaded (never attached) at start-up to learn whether this kernel allows fentry/fexit
/// trampolines, so the start-up lines can say which netfilter mechanisms it offers.
#[fexit(function = "nf_hook_slow")]
pub fn probe_fexit(_ctx: FExitContext) -> i32 {
    0
}

/// Netfilter at hook level, where the kernel has no BPF netfilter links (before 6.4):
/// `nf_hook_slow(skb, state, entries, index)` runs a hook's tables; at its entry the packet is
/// as the hook got it, and when it returns 1 every table accepted it (a drop is reported by
/// the `kfree_skb` tracepoint). fentry/fexit where the kernel allows trampolines…
#[fentry(function = "nf_hook_slow")]
pub fn nf_hook_entry(ctx: FEntryContext) -> i32 {
    netfilter::observe_hook(ctx.arg(0), ctx.arg(1), true);
    0
}

#[fexit(function = "nf_hook_slow")]
pub fn nf_hook_exit(ctx: FExitContext) -> i32 {
    let ret: i32 = ctx.arg(4);
    if ret == 1 {
        netfilter::observe_hook(ctx.arg(0), ctx.arg(1), false);
    }
    0
}

/// …else kprobes. A kretprobe sees only the return value, so the entry keeps (skb, state)
/// on a small per-CPU stack (hooks nest: a REJECT's reply runs OUTPUT inside INPUT).
#[kprobe]
pub fn nf_hook_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(skb), Some(state)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    maps::hook_stack_push(skb, state);
    netfilter::observe_hook(skb, state, true);
    0
}

#[kretprobe]
pub fn nf_hook_kretprobe(ctx: RetProbeContext) -> u32 {
    let Some((skb, state)) = maps::hook_stack_pop() else {
        return 0;
    };
    if ctx.ret::<i32>() == 1 {
        netfilter::observe_hook(skb, state, false);
    }
    0
}

/// Netfilter observers, one per priority slot (see `tracer_common::netfilter`). aya 0.14 has
/// no netfilter program type: aya parses these sections as socket filters and never loads
/// them; `tracer/src/probe/netfilter.rs` loads them as BPF_PROG_TYPE_NETFILTER.
macro_rules! nf_slot {
    ($name:ident, $section:literal, $slot:literal) => {
        #[unsafe(no_mangle)]
        #[unsafe(link_section = $section)]
        pub fn $name(ctx: *mut core::ffi::c_void) -> i32 {
            netfilter::observe(ctx, $slot)
        }
    };
}
nf_slot!(nf_slot0, "socket/nf_slot0", 0);
nf_slot!(nf_slot1, "socket/nf_slot1", 1);
nf_slot!(nf_slot2, "socket/nf_slot2", 2);
nf_slot!(nf_slot3, "socket/nf_slot3", 3);
nf_slot!(nf_slot4, "socket/nf_slot4", 4);
nf_slot!(nf_slot5, "socket/nf_slot5", 5);
nf_slot!(nf_slot6, "socket/nf_slot6", 6);
nf_slot!(nf_slot7, "socket/nf_slot7", 7);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
