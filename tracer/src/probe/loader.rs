//! The eBPF object, embedded at build time by `build.rs`, and loading it into the kernel with
//! the struct offsets of the running kernel patched in.

use aya::{Ebpf, EbpfLoader};
use tracer_common::Offsets;

use crate::error::{Error, Result};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowtrace-ebpf"));

/// Program `name` of the object as its concrete type (`FEntry`, `KProbe`, …); the error
/// says which program was missing or of another type.
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> std::result::Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("{name} missing from the eBPF object"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| format!("{name}: {e}"))
}

/// The object's bytes (the netfilter loader parses them again).
pub fn object() -> &'static [u8] {
    OBJECT
}

/// Loads the object's maps into the kernel (programs are loaded when attached), with the
/// running kernel's struct offsets, the bytes to capture per tc hop, and whether to send
/// per-packet events at all (`--counters` does not), and whether a filter expression decides
/// which packets they are for (`pcapfilter::kernel::install` loads it).
/// `ring_bytes` sizes the `EVENTS` ring buffer (a power of two, at least a page).
/// `headers_only`: nothing records the packets' bytes, so the kernel may send an IPv4
/// packet's headers alone (`tracer_common::TC_HEADERS`).
pub fn load(
    offsets: &Offsets,
    snaplen: u32,
    events: bool,
    ring_bytes: u32,
    filtering: bool,
    headers_only: bool,
) -> Result<Ebpf> {
    if !super::privilege::can_start() {
        return Err(Error::NotRoot);
    }
    if OBJECT.is_empty() {
        return Err(Error::Load(
            "this binary was built without its eBPF object (AYA_BUILD_SKIP was set)".into(),
        ));
    }
    let (emit, filtering) = (u32::from(events), u32::from(filtering));
    let headers_only = u32::from(headers_only);
    let mut loader = EbpfLoader::new();
    loader
        .override_global("OFFSETS", offsets, true)
        .override_global("SNAPLEN", &snaplen, true)
        .override_global("EMIT", &emit, true)
        .override_global("FILTERING", &filtering, true)
        .override_global("HEADERS_ONLY", &headers_only, true);
    // SAFETY: sysconf takes no pointers.
    let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    // Without events nothing is ever written to the ring buffer: one page (the kernel's
    // smallest ring) instead of megabytes mapped.
    let ring = if events { ring_bytes.max(page) } else { page };
    loader.map_max_entries("EVENTS", ring);
    shrink_tables_for_tests(&mut loader);
    loader.load(OBJECT).map_err(Error::load)
}

/// For the eviction tests: tables small enough to fill with a few packets. Only in the debug
/// builds the tests run, never in a release.
#[cfg(debug_assertions)]
fn shrink_tables_for_tests(loader: &mut EbpfLoader) {
    for (map, var) in [
        ("TRACKED", "FLOWTRACE_TEST_TRACKED_MAX"),
        ("FLOWS", "FLOWTRACE_TEST_FLOWS_MAX"),
    ] {
        if let Some(n) = std::env::var(var).ok().and_then(|v| v.parse().ok()) {
            loader.map_max_entries(map, n);
        }
    }
}

#[cfg(not(debug_assertions))]
fn shrink_tables_for_tests(_: &mut EbpfLoader) {}
