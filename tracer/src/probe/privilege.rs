//! Least privilege. flowtrace needs root's powers to load and attach eBPF, but not all of
//! them, and not for long: once everything is attached it keeps only what it still uses,
//! sets `no_new_privs`, and runs its helper programs by absolute path. A non-root user with
//! the capabilities below may run it too.
//!
//! Kept after start-up, and why (measured: the e2e tests re-attach after restarts, re-read
//! rulesets, update the nftrace table and the scope maps with exactly these):
//! - CAP_BPF, CAP_PERFMON: attach the loaded programs at a restarted container's new veth;
//! - CAP_NET_ADMIN: tc links and filters, netlink, the nftrace table, `iptables-save`/`nft`;
//! - CAP_NET_RAW: `iptables-legacy-save` reads the legacy tables through a raw socket;
//! - CAP_SYS_ADMIN: enter a restarted container's network namespace (setns);
//! - CAP_SYS_PTRACE: open its `/proc/PID/ns/net` (the container's root holds capabilities
//!   flowtrace no longer has);
//! - CAP_DAC_OVERRIDE only with `--rotate`: new files in a directory root may not own.
//!
//! Everything else (CAP_SYS_MODULE, CAP_SETUID, CAP_CHOWN, CAP_KILL, …) is dropped from every
//! set, the bounding set included, so that the helpers flowtrace runs cannot regain it.

use std::path::PathBuf;

use caps::{CapSet, Capability, CapsHashSet};

/// What start-up needs (loading, attaching, BTF, the ledger) beyond what is kept.
pub const TO_START: &[Capability] = &[
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_SYS_ADMIN,
];

/// What is kept after start-up (see the module's text).
pub fn kept(rotating: bool) -> CapsHashSet {
    let mut set: CapsHashSet = [
        Capability::CAP_BPF,
        Capability::CAP_PERFMON,
        Capability::CAP_NET_ADMIN,
        Capability::CAP_NET_RAW,
        Capability::CAP_SYS_ADMIN,
        Capability::CAP_SYS_PTRACE,
    ]
    .into_iter()
    .collect();
    if rotating {
        set.insert(Capability::CAP_DAC_OVERRIDE);
    }
    set
}

/// Whether this process may start tracing: root, or every capability of [`TO_START`].
pub fn can_start() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    caps::read(None, CapSet::Effective).is_ok_and(|eff| TO_START.iter().all(|c| eff.contains(c)))
}

/// After start-up: keeps only `keep` (in the effective, permitted, inheritable, ambient and
/// bounding sets) and sets `no_new_privs`. Returns what was dropped, for the start-up line.
pub fn drop_to(keep: &CapsHashSet) -> Result<Vec<Capability>, String> {
    let had = caps::read(None, CapSet::Permitted).map_err(|e| e.to_string())?;
    let dropped: Vec<Capability> = caps::all()
        .into_iter()
        .filter(|c| !keep.contains(c))
        .collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    for c in &dropped {
        if caps::has_cap(None, CapSet::Bounding, *c).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, *c).map_err(|e| format!("{c}: {e}"))?;
        }
    }
    let now: CapsHashSet = had.intersection(keep).copied().collect();
    caps::clear(None, CapSet::Ambient).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Effective, &now).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Permitted, &now).map_err(|e| e.to_string())?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    let mut gone: Vec<Capability> = dropped.into_iter().filter(|c| had.contains(c)).collect();
    gone.sort_by_key(|c| c.index());
    Ok(gone)
}

/// Capabilities belong to each thread, not to the process: a lowering is published here and
/// every thread applies it itself (the runtime's workers when they wake, flowtrace's own
/// threads in their loops, new threads at their start) through [`apply_pending`].
static LOWERED: std::sync::OnceLock<CapsHashSet> = std::sync::OnceLock::new();

thread_local! {
    static APPLIED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Publishes the lowering to `keep` and applies it on this thread; the other threads follow.
pub fn lower(keep: CapsHashSet) -> Result<Vec<Capability>, String> {
    let _ = LOWERED.set(keep);
    let keep = LOWERED.get().ok_or("no capability set to lower to")?;
    APPLIED.with(|a| a.set(true));
    drop_to(keep)
}

/// Applies a published lowering on this thread, once (cheap when there is none or it is done).
pub fn apply_pending() {
    let Some(keep) = LOWERED.get() else { return };
    if APPLIED.with(|a| a.replace(true)) {
        return;
    }
    if let Err(e) = drop_to(keep) {
        log::warn!("cannot lower this thread's capabilities: {e}");
    }
}

/// A helper program by absolute path, from the system's directories only (never `PATH`, which
/// whoever runs flowtrace may control); the bare name if none has it (the spawn then fails
/// with a clear error).
pub fn tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_are_found_by_absolute_path_only() {
        let sh = tool("sh");
        assert!(sh.is_absolute(), "{sh:?}");
        assert_eq!(
            tool("no-such-tool-here"),
            PathBuf::from("no-such-tool-here")
        );
    }

    #[test]
    fn what_is_kept_is_what_the_module_says() {
        let k = kept(false);
        assert!(TO_START.iter().all(|c| k.contains(c)));
        assert!(!k.contains(&Capability::CAP_SYS_MODULE));
        assert!(!k.contains(&Capability::CAP_SETUID));
        assert!(!k.contains(&Capability::CAP_DAC_OVERRIDE));
        assert!(kept(true).contains(&Capability::CAP_DAC_OVERRIDE));
    }
}
