//! The allocator (mimalloc) as flowtrace runs it: set up before its first allocation, asked
//! to hand freed pages back, and asked what the process holds.

use libmimalloc_sys::{mi_collect, mi_option_set, mi_option_t};

/// `mi_option_arena_reserve` in mimalloc v3's `mi_option_e` (libmimalloc-sys names no
/// constant for it): how much address space each arena reserves, in KiB. A test pins the
/// number against the option's default.
const ARENA_RESERVE: mi_option_t = 23;

/// Runs from `.init_array`, before `main` and before the allocator's first arena (see
/// `main.rs`): no arenas, so each allocator page is its own mapping and goes back to the
/// kernel when it is freed.
///
/// Why: by default mimalloc reserves a 1 GiB arena, commits its first megabytes at once
/// (4 MiB resident before `main` ran a line) and purges freed pages only after a delay, so
/// start-up's two parses of the kernel's BTF (flowtrace's offsets, then aya's loader, which
/// parses it whatever the object needs) stacked up: a peak of 38 MiB in `--counters`. Without
/// arenas the peak is 29 MiB and the steady state 4 MiB less. `cargo xtask bench-user`
/// measured no difference per packet (JSON 2115–2176 ns with arenas, 2134–2155 without;
/// pcapng 4245–4452 and 4265–4381).
pub extern "C" fn configure() {
    // SAFETY: an integer option; mimalloc reads it when it next needs memory.
    unsafe { mi_option_set(ARENA_RESERVE, 0) };
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
    fn the_option_is_the_arena_reserve() {
        // Unit tests do not run `configure` from `.init_array` (only the binaries do), so the
        // option still has mimalloc's default: 1 GiB, in KiB. Another option at 23 would not.
        // SAFETY: reads an integer option.
        assert_eq!(unsafe { mi_option_get(ARENA_RESERVE) }, 1024 * 1024);
    }

    #[test]
    fn memory_is_read() {
        let (rss, peak) = memory_kib().unwrap();
        assert!(rss > 0 && peak >= rss);
    }
}
