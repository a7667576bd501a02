//! flowtrace's eBPF programs. Each entry point is a thin wrapper over a module that says
//! what it observes: `tc.rs` (interfaces), `netfilter.rs` (hooks and tables), `drops.rs`
//! (the end of a packet's life); `maps.rs` holds what is shared with user space.
#![no_std]
#![no_main]

mod drops;
mod kread;
mod maps;
mod netfilter;
mod tc;

use aya_ebpf::{
    macros::{btf_tracepoint, classifier, fexit, raw_tracepoint},
    programs::{BtfTracePointContext, FExitContext, RawTracePointContext, TcContext},
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

#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_btf(ctx: BtfTracePointContext) -> i32 {
    drops::end(ctx.arg(0), ctx.arg(1), ctx.arg(2), EventKind::Drop)
}

#[btf_tracepoint(function = "consume_skb")]
pub fn consume_skb_btf(ctx: BtfTracePointContext) -> i32 {
    drops::end(ctx.arg(0), ctx.arg(1), 0, EventKind::Consume)
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
