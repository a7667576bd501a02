//! `vm-test --kernel host`: the guest script on this machine's own kernel, inside a throwaway
//! network namespace that plays the host. Its bridge, uplink veth, routes and iptables rules
//! all live in that namespace, which has no link to the real host's, so the host's network and
//! Docker's rules are never touched; every namespace is removed afterwards, even on failure.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};

use crate::cmd::cmd;

const PREFIX: &str = "ftvm-";
const HOST_NS: &str = "ftvm-host";

/// The namespaces a run creates; dropping this kills what runs in them and deletes them.
struct Namespaces;

impl Namespaces {
    fn create() -> Result<Self> {
        let me = Namespaces;
        me.remove(); // what a crashed run left
        cmd("ip", ["netns", "add", HOST_NS]).run()?;
        Ok(me)
    }

    fn remove(&self) {
        for ns in ["ftvm-ctr", "ftvm-inet", HOST_NS] {
            let pids = cmd("ip", ["netns", "pids", ns]).read().unwrap_or_default();
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: plain kill(2) of a process inside our own throwaway namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = cmd("ip", ["netns", "del", ns]).read();
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Runs `script` with `flowtrace` and `--nf-attach mode`; returns what a VM's console would
/// have shown.
pub fn run(flowtrace: &Path, script: &str, mode: &str, work: &Path) -> Result<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the kernel release")?;
    let out = work.join("host-run");
    std::fs::create_dir_all(&out)?;
    let _ns = Namespaces::create()?;
    let result = Command::new("ip")
        .args(["netns", "exec", HOST_NS, "env", "IP=ip", "NC=busybox nc"])
        .arg(format!("FT={}", flowtrace.display()))
        .arg(format!("P={PREFIX}"))
        .arg(format!("OUT={}", out.display()))
        .arg(format!("NF={mode}"))
        .args(["sh", "-c", script])
        .output()
        .context("running the guest script in a namespace")?;
    Ok(format!(
        "vm: kernel {}\n{}{}",
        release.trim(),
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    ))
}
