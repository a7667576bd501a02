//! Maps shared with user space. Names are part of the contract with `tracer/src/probe`.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuHashMap, RingBuf},
};
use tracer_common::{HopCounter, PointKey};

/// Per-packet observations. 8 MiB: ~45k 176-byte events of headroom.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Per-hop packet/byte/lost counters, one entry per attached (ifindex, direction).
/// User space inserts the keys when it attaches; the programs only increment existing entries.
#[map(name = "HOP_COUNTERS")]
pub static HOP_COUNTERS: PerCpuHashMap<PointKey, HopCounter> =
    PerCpuHashMap::with_max_entries(256, 0);
