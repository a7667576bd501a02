//! The allocator (mimalloc) as flowtrace runs it: set up before its first allocation, asked
//! to hand freed pages back, and asked what the process holds.

use std::sync::atomic::{AtomicIsize, Ordering};

use libmimalloc_sys::{mi_collect, mi_option_get, mi_option_set, mi_option_t};

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
    fn memory_is_read() {
        let (rss, peak) = memory_kib().unwrap();
        assert!(rss > 0 && peak >= rss);
    }
}
