//! Types shared by the eBPF programs (`tracer-ebpf`) and the user-space tracer (`tracer`).
//!
//! Everything here is `no_std` and `#[repr(C)]`: the kernel side writes these structs into the
//! ring buffer and per-CPU maps, the user side reads the same bytes back. Field order keeps
//! every field naturally aligned so the layout is identical on both sides without padding
//! surprises; the unit tests pin the sizes.
#![cfg_attr(not(test), no_std)]

pub mod counters;
pub mod event;
pub mod flow;
pub mod headers;
pub mod judged;
pub mod netfilter;
pub mod offsets;
pub mod scope;
pub mod tracked;

/// Varied bytes for the tests that hold a fast path equal to the walk (xorshift64).
#[cfg(test)]
pub(crate) fn test_bytes(mut seed: u64) -> impl FnMut() -> u8 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as u8
    }
}

pub use counters::{
    HopCounter, LostKind, PointKey, TableOp, LOST_KINDS, MAX_HOP_COUNTERS, TABLE_OPS,
};
pub use event::{
    Direction, EventHeader, EventKind, NfEvent, NfHeaders, NfRecord, SkbEndEvent, TcEvent, TcFixed,
    TcHead, TcHeaders, TcSmall, DEFAULT_SNAP, MAX_SNAP, NF_HEADERS, SNAP_LEN, TC_HEADERS,
    TC_HEAD_LEN,
};
pub use offsets::Offsets;
