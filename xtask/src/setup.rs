//! `cargo xtask setup`: make a fresh Debian 12 machine (as root) ready to build and test
//! flowtrace. Idempotent; every step first checks whether it is already done.

use crate::cmd::{cmd, have};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Debian packages the build, the lab and the tests need.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "docker.io",
    "busybox-static",
    "iproute2",
    "iptables",
    "tshark",
    "tmux",
    "iperf3",
    "bpftool",
    "tcpdump",
    "netcat-openbsd",
    "jq",
    "libpcap-dev",
    "pkg-config",
    "socat",
    "nftables",
    "python3",
    "qemu-system-x86",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LOG: &str = "/tmp/bpflinker.log";
const DOCKERD_LOG: &str = "/var/log/flowtrace-dockerd.log";
const DOCKERD_WAIT: Duration = Duration::from_secs(60);

fn say(step: &str, what: &str) {
    crate::out!("setup: {step}: {what}");
}

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("setup must run as root (it installs packages and starts dockerd)");
    }
    apt_packages().context("installing apt packages")?;
    rust_src().context("adding rust-src to the nightly toolchain")?;
    bpf_linker().context("installing bpf-linker")?;
    cargo_fuzz().context("installing cargo-fuzz")?;
    ensure_dockerd().context("starting dockerd")?;
    Ok(())
}

pub fn is_root() -> bool {
    cmd("id", ["-u"])
        .read()
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

fn installed(pkg: &str) -> bool {
    cmd("dpkg-query", ["-W", "-f=${Status}", pkg])
        .read()
        .map(|s| s.trim() == "install ok installed")
        .unwrap_or(false)
}

fn apt_packages() -> Result<()> {
    const STEP: &str = "apt packages";
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        say(STEP, "already done");
        return Ok(());
    }
    say(STEP, &format!("installing {}", missing.join(" ")));
    // tshark asks whether non-root users may capture; answer "no" up front so it never blocks.
    cmd("debconf-set-selections", Vec::<&str>::new())
        .run_with_input("wireshark-common wireshark-common/install-setuid boolean false\n")?;
    cmd("apt-get", ["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run_visible()?;
    // Drop packages this distribution does not know instead of failing the whole install.
    let mut available = Vec::new();
    for p in &missing {
        if cmd("apt-cache", ["show", p]).ok()? {
            available.push(*p);
        } else {
            crate::err!("setup: warning: package {p} does not exist here, skipping it");
        }
    }
    if !available.is_empty() {
        let available = pin_to_installed(available);
        // What apt would remove to install these (e.g. a preinstalled qemu-utils that the
        // distribution's qemu-system-x86 conflicts with): said before it happens.
        let removed = apt_removals(&available);
        for r in &removed {
            crate::err!(
                "setup: note: apt removes {r} to install {}",
                available.join(" ")
            );
        }
        cmd(
            "apt-get",
            ["install", "-y", "-q", "--no-install-recommends"],
        )
        .args(&available)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run_visible()?;
        if !removed.is_empty() {
            say(STEP, &format!("removed on the way: {}", removed.join(", ")));
        }
    }
    say(STEP, "installed");
    Ok(())
}

/// Packages whose companion is already installed at a version apt also offers for them are
/// asked for at that version (`qemu-system-x86=V` beside a preinstalled `qemu-utils` V), so
/// that apt does not replace the preinstalled one.
fn pin_to_installed(pkgs: Vec<&str>) -> Vec<String> {
    const COMPANIONS: &[(&str, &str)] = &[("qemu-system-x86", "qemu-utils")];
    pkgs.into_iter()
        .map(|p| {
            let pinned = COMPANIONS
                .iter()
                .find(|(want, _)| *want == p)
                .and_then(|(_, have)| cmd("dpkg-query", ["-W", "-f=${Version}", have]).read().ok())
                .map(|v| v.trim().to_owned())
                .filter(|v| {
                    !v.is_empty()
                        && cmd("apt-cache", ["madison", p]).read().is_ok_and(|m| {
                            m.lines()
                                .any(|l| l.split('|').nth(1).map(str::trim) == Some(v))
                        })
                });
            match pinned {
                Some(v) => format!("{p}={v}"),
                None => p.to_owned(),
            }
        })
        .collect()
}

/// The packages `apt-get install PKGS` would remove (from a simulated run: its `Remv` lines).
fn apt_removals(pkgs: &[String]) -> Vec<String> {
    let sim = cmd(
        "apt-get",
        ["-s", "install", "-y", "--no-install-recommends"],
    )
    .args(pkgs)
    .env("DEBIAN_FRONTEND", "noninteractive")
    .read()
    .unwrap_or_default();
    parse_removals(&sim)
}

fn parse_removals(simulated: &str) -> Vec<String> {
    simulated
        .lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// cargo-fuzz, for the short fuzzing runs of `cargo xtask test`.
fn cargo_fuzz() -> Result<()> {
    const STEP: &str = "cargo-fuzz";
    if cmd("cargo", ["fuzz", "--version"]).ok()? {
        say(STEP, "already done");
        return Ok(());
    }
    cmd("cargo", ["+1.95.0", "install", "cargo-fuzz", "--locked"]).run_visible()?;
    say(STEP, "installed");
    Ok(())
}

fn rust_src() -> Result<()> {
    const STEP: &str = "rust-src (nightly)";
    let list = cmd(
        "rustup",
        ["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .read()?;
    if list.lines().any(|l| l.trim().starts_with("rust-src")) {
        say(STEP, "already done");
        return Ok(());
    }
    cmd(
        "rustup",
        ["component", "add", "rust-src", "--toolchain", "nightly"],
    )
    .run_visible()?;
    say(STEP, "installed");
    Ok(())
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin").join(name)
}

fn bpf_linker_version() -> Option<String> {
    let bin = cargo_bin("bpf-linker");
    let prog = if bin.exists() {
        bin.to_string_lossy().into_owned()
    } else if have("bpf-linker") {
        "bpf-linker".to_string()
    } else {
        return None;
    };
    cmd(&prog, ["--version"]).read().ok()
}

/// An install started by someone else (logging to /tmp/bpflinker.log) is still running
/// while that log has no `rc=` line.
fn foreign_install_running() -> bool {
    match std::fs::read_to_string(BPF_LINKER_LOG) {
        Ok(log) => !log.lines().any(|l| l.starts_with("rc=")),
        Err(_) => false,
    }
}

fn bpf_linker() -> Result<()> {
    const STEP: &str = "bpf-linker 0.13.0";
    let ok = |v: &Option<String>| v.as_deref().is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    let mut version = bpf_linker_version();
    if !ok(&version) && foreign_install_running() {
        say(
            STEP,
            &format!("waiting for the install logging to {BPF_LINKER_LOG}"),
        );
        let start = Instant::now();
        while foreign_install_running() && start.elapsed() < Duration::from_secs(900) {
            std::thread::sleep(Duration::from_secs(2));
        }
        version = bpf_linker_version();
    }
    if ok(&version) {
        say(STEP, "already done");
        return Ok(());
    }
    cmd(
        "cargo",
        [
            "+1.95.0",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ],
    )
    .env("LLVM_PREFIX", "/usr/lib/llvm-22")
    .run_visible()?;
    let version = bpf_linker_version();
    if !ok(&version) {
        bail!("bpf-linker still reports {version:?} after installing");
    }
    say(STEP, "installed");
    Ok(())
}

pub fn docker_answers() -> bool {
    cmd("docker", ["info", "--format", "{{.ServerVersion}}"])
        .ok()
        .unwrap_or(false)
}

/// Start dockerd in the background if nothing answers; never restart one that answers.
pub fn ensure_dockerd() -> Result<()> {
    const STEP: &str = "dockerd";
    if docker_answers() {
        say(STEP, "already done");
        return Ok(());
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(DOCKERD_LOG)
        .with_context(|| format!("opening {DOCKERD_LOG}"))?;
    let log2 = log.try_clone().context("duplicating the log file handle")?;
    let (mut command, line) = cmd("nohup", ["dockerd"]).into_command();
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: a Ctrl-C aimed at `cargo xtask` must not reach dockerd.
        command.process_group(0);
    }
    command
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let start = Instant::now();
    while start.elapsed() < DOCKERD_WAIT {
        std::thread::sleep(Duration::from_millis(500));
        if docker_answers() {
            say(STEP, "started");
            return Ok(());
        }
    }
    bail!(
        "dockerd did not answer `docker info` within {} s; see {DOCKERD_LOG}",
        DOCKERD_WAIT.as_secs()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn removals_are_read_from_a_simulated_install() {
        let sim = "NOTE: This is only a simulation!\nRemv qemu-utils [1:7.2+dfsg-7+deb12u6]\n\
                   Inst qemu-system-x86 (1:7.2+dfsg-7+deb12u16 Debian:12.12/oldstable [amd64])\n";
        assert_eq!(super::parse_removals(sim), ["qemu-utils"]);
        assert!(super::parse_removals("Inst a (1 x)\n").is_empty());
    }
}
