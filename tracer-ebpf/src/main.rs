//! flowtrace's eBPF programs. Each entry point is a thin wrapper over a module that says
//! what it observes; see `tc.rs` and `maps.rs`.
#![no_std]
#![no_main]

mod maps;
mod tc;

use aya_ebpf::{macros::classifier, programs::TcContext};
use tracer_common::Direction;

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    tc::observe(&ctx, Direction::Ingress as u8)
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    tc::observe(&ctx, Direction::Egress as u8)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
