//! The eBPF object, embedded at build time by `build.rs`, and loading it into the kernel with
//! the struct offsets of the running kernel patched in.

use aya::{Ebpf, EbpfLoader};
use tracer_common::Offsets;

use crate::error::{Error, Result};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowtrace-ebpf"));

/// The object's bytes (the netfilter loader parses them again).
pub fn object() -> &'static [u8] {
    OBJECT
}

/// Loads the object's maps into the kernel (programs are loaded when attached), with the
/// running kernel's struct offsets, the bytes to capture per tc hop, and whether to send
/// per-packet events at all (`--counters` does not).
pub fn load(offsets: &Offsets, snaplen: u32, events: bool) -> Result<Ebpf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    if OBJECT.is_empty() {
        return Err(Error::Load(
            "this binary was built without its eBPF object (AYA_BUILD_SKIP was set)".into(),
        ));
    }
    EbpfLoader::new()
        .override_global("OFFSETS", offsets, true)
        .override_global("SNAPLEN", &snaplen, true)
        .override_global("EMIT", &u32::from(events), true)
        .load(OBJECT)
        .map_err(Error::load)
}
