//! The allocator (mimalloc) as flowtrace runs it: set up before its first allocation, asked
//! to hand freed pages back, and asked what the process holds.

use std::sync::atomic::{AtomicIsize, Ordering};

use std::{
    alloc::{GlobalAlloc, Layout},
    ffi::c_void,
};

use libmimalloc_sys::{
    mi_collect, mi_free, mi_malloc, mi_malloc_aligned, mi_option_get, mi_option_set, mi_option_t,
    mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};

/// mimalloc as the global allocator. The `mimalloc` crate's own `MiMalloc` asks for every
/// block through `mi_malloc_aligned`, which re-checks the alignment on each call: 64
/// instructions a block here (callgrind, bench-user's `--json` packet, 19 blocks a packet)
/// against about 25 for `mi_malloc`. Every mimalloc block is word-aligned (its size classes are
/// whole words), so what asks no more than that goes the short way; the rest as before.
pub struct Mimalloc;

/// The alignment every mimalloc block has (a word).
const WORD: usize = size_of::<usize>();

/// `short(size)` where the layout asks for a word's alignment or less, else
/// `aligned(size, align)`: the choice `alloc` and `alloc_zeroed` share.
///
/// # Safety
/// `short` and `aligned` are mimalloc's allocation functions of one kind.
#[inline(always)]
unsafe fn either(
    layout: Layout,
    short: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    // SAFETY: mimalloc allocates any size, and its blocks are all word-aligned.
    unsafe {
        if layout.align() <= WORD {
            short(layout.size()).cast()
        } else {
            aligned(layout.size(), layout.align()).cast()
        }
    }
}

// SAFETY: every path hands the layout to mimalloc, whose blocks meet it: the short paths only
// for alignments a word or less, which every block has.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's plain and aligned allocation.
        unsafe { either(layout, mi_malloc, mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's plain and aligned zeroed allocation.
        unsafe { either(layout, mi_zalloc, mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract); the
        // new block keeps its alignment as `alloc` does.
        unsafe {
            if layout.align() <= WORD {
                mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

// Options of mimalloc v3's `mi_option_e` that libmimalloc-sys names no constant for. A test
// pins each number against its option's default.
/// Commit an arena's memory when it is reserved.
const ARENA_EAGER_COMMIT: mi_option_t = 4;
/// Milliseconds before freed pages are handed back to the kernel.
const PURGE_DELAY: mi_option_t = 15;

/// The purge delay start-up set aside (mimalloc's default, or `MIMALLOC_PURGE_DELAY`, which
/// may be negative: never). `NOT_SET` until [`configure`] ran. (A C `long` is as wide as a
/// pointer on Linux.)
static PURGE_DELAY_MS: AtomicIsize = AtomicIsize::new(NOT_SET);
const NOT_SET: isize = isize::MIN;

/// Runs from `.init_array`, before `main` and before the allocator's first arena (see
/// `main.rs`): arenas are committed as they are used (for the whole run), and during start-up
/// freed pages go back to the kernel at once.
///
/// Why: by default mimalloc commits its first 1 GiB arena when it reserves it (4 MiB resident
/// before `main` ran a line) and hands freed pages back only after a second, so start-up's two
/// parses of the kernel's BTF (flowtrace's offsets, then aya's loader, which parses it whatever
/// the object needs) stacked up: `--counters` peaked at 38 MiB; with this, 30 MiB, and it
/// holds 21 MiB instead of 25. [`started`] restores the delay: without it, the traced load
/// cost flowtrace 36,000 page faults a second instead of 1,000 (`--write` under the UDP
/// flood: more CPU, more events lost), as would running without arenas at all.
pub extern "C" fn configure() {
    // SAFETY: integer options, read before mimalloc's first allocation.
    unsafe {
        mi_option_set(ARENA_EAGER_COMMIT, 0);
        PURGE_DELAY_MS.store(mi_option_get(PURGE_DELAY) as isize, Ordering::Relaxed);
        mi_option_set(PURGE_DELAY, 0);
    }
}

/// Start-up is over: freed pages are kept for reuse again, as long as mimalloc usually keeps
/// them (nothing to do when [`configure`] did not run).
pub fn started() {
    let ms = PURGE_DELAY_MS.swap(NOT_SET, Ordering::Relaxed);
    if ms != NOT_SET {
        // SAFETY: an integer option. The value was a c_long when `configure` read it.
        unsafe { mi_option_set(PURGE_DELAY, ms as std::os::raw::c_long) };
    }
}

/// Hands the allocator's free pages back to the kernel now, rather than after its purge
/// delay: start-up parses the kernel's BTF more than once and frees each at once.
pub fn release_freed() {
    // SAFETY: mi_collect takes no pointers; it only returns free pages of the allocator.
    unsafe { mi_collect(true) };
}

/// This process's resident memory and its peak (VmRSS, VmHWM), in KiB.
pub fn memory_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use libmimalloc_sys::mi_option_get;

    use super::*;

    #[test]
    fn the_options_are_the_ones_meant() {
        // Unit tests do not run `configure` from `.init_array` (only the binaries do), so the
        // options still have mimalloc's defaults, which tell them apart: eager commit "on
        // systems that overcommit" (2), and a purge delay of 1000 ms.
        // SAFETY: reads integer options.
        unsafe {
            assert_eq!(mi_option_get(ARENA_EAGER_COMMIT), 2);
            assert_eq!(mi_option_get(PURGE_DELAY), 1000);
        }
        // (In the same test: the options are process-wide.) `started` restores the purge
        // delay that `configure` set aside.
        // SAFETY: integer options.
        let delay = || unsafe { mi_option_get(PURGE_DELAY) };
        let before = delay();
        configure();
        assert_eq!(delay(), 0);
        started();
        assert_eq!(delay(), before);
        // Once only: a second call leaves it alone.
        // SAFETY: an integer option.
        unsafe { mi_option_set(PURGE_DELAY, 7) };
        started();
        assert_eq!(delay(), 7);
        // A negative delay (never purge) is restored too.
        // SAFETY: an integer option.
        unsafe { mi_option_set(PURGE_DELAY, -1) };
        configure();
        started();
        assert_eq!(delay(), -1);
        // SAFETY: an integer option.
        unsafe { mi_option_set(PURGE_DELAY, before) };
    }

    #[test]
    fn every_block_has_the_alignment_asked_for() {
        // Many blocks of each size class, so that blocks after a page's first (the only ones
        // aligned past a word) are among them: word-sized classes such as 24 or 40 bytes
        // break a 16-byte alignment the short path does not promise.
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in (1..=200).chain([1000, 5000, 70_000]) {
                let layout = Layout::from_size_align(size, align).unwrap();
                let blocks: Vec<*mut u8> = (0..16)
                    .map(|i| {
                        // SAFETY: a non-zero size; each block is freed below with its layout.
                        let p = unsafe {
                            if i % 2 == 0 {
                                a.alloc(layout)
                            } else {
                                a.alloc_zeroed(layout)
                            }
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "{size} bytes aligned {align}");
                        if i % 2 == 1 {
                            // SAFETY: `size` bytes were allocated zeroed.
                            let b = unsafe { std::slice::from_raw_parts(p, size) };
                            assert!(b.iter().all(|x| *x == 0));
                        }
                        p
                    })
                    .collect();
                for p in blocks {
                    // SAFETY: the block is `size` bytes; it grows, keeping its bytes and
                    // alignment, and is freed with its new layout.
                    unsafe {
                        p.write_bytes(0xa5, size);
                        let q = a.realloc(p, layout, size * 3);
                        assert_eq!(
                            q as usize % align,
                            0,
                            "{size} bytes regrown aligned {align}"
                        );
                        assert!(std::slice::from_raw_parts(q, size)
                            .iter()
                            .all(|x| *x == 0xa5));
                        a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    }
                }
            }
        }
    }

    #[test]
    fn memory_is_read() {
        let (rss, peak) = memory_kib().unwrap();
        assert!(rss > 0 && peak >= rss);
    }
}
