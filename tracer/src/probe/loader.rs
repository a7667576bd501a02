//! The eBPF object, embedded at build time by `build.rs`, and loading it into the kernel.

use aya::{Ebpf, EbpfLoader};

use crate::error::{Error, Result};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowtrace-ebpf"));

/// Loads the object's maps into the kernel (programs are loaded when attached).
pub fn load() -> Result<Ebpf> {
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
        .load(OBJECT)
        .map_err(|e| Error::Load(format!("{e}")))
}
