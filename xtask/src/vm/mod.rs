//! `cargo xtask vm-test`: the real flowtrace on other kernels, in QEMU virtual machines.
//!
//! The kernel here refuses fentry/fexit and has no kprobes, so the netfilter fallbacks (and
//! netlink tc, and older tracepoint forms) can only run on another kernel. For each kernel
//! series asked for, this downloads Debian's `linux-image-<series>.*-amd64` (cached under
//! target/vm), builds an initramfs (busybox, flowtrace, iproute2, iptables, nft, the modules
//! needed) and boots it with QEMU; the guest has no network device at all. Inside, the guest
//! builds a Docker-shaped host (see `topology.rs`) and runs the lab's assertions on
//! flowtrace's JSON: hop order, MASQUERADE and the reply's de-NAT, a published port's DNAT, a
//! DOCKER-USER drop with its rule, a filter expression, and nothing left attached. Each boot
//! must also say which mechanism every layer got (tc, netfilter, drops), what auto mode left
//! out, and the struct offsets it read from that kernel's BTF. `--kernel host` runs the same
//! script on this machine's kernel, in a throwaway namespace (`host.rs`).
//!
//! QEMU runs with TCG: nested KVM on this machine hangs the guest right after boot.

mod host;
mod image;
mod topology;

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use tracer_model::{Line, Packet};

use crate::cmd::{cmd, have};

#[derive(clap::Args, Debug)]
pub struct VmTestArgs {
    /// Debian kernel series to boot, or `host` for this machine's kernel (in a throwaway
    /// namespace, no VM) (repeatable).
    #[arg(long = "kernel", default_values = ["6.1", "6.12", "host"])]
    pub kernels: Vec<String>,
    /// Passed to flowtrace as --nf-attach (auto, fexit, kprobe; repeatable: one boot each).
    #[arg(long = "nf-attach", default_values = ["auto", "fexit", "kprobe"])]
    pub nf_attach: Vec<String>,
    /// Use target/release/flowtrace as it is.
    #[arg(long)]
    pub no_build: bool,
}

const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs run /run; mkdir -p /run/netns
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
echo "vm: kernel $(uname -r)"
for m in MODULES; do modprobe $m >/dev/null 2>&1; done
# busybox sh prefers its own applets: iproute2's `ip` is called by path.
IP=/usr/bin/ip FT=/usr/bin/flowtrace NC="busybox nc" P= OUT=/tmp \
  NF=$(sed -n 's/.*ftnf=\([a-z]*\).*/\1/p' /proc/cmdline) sh /test.sh 2>&1
echo "vm: done"
poweroff -f
"#;

/// What one boot showed.
#[derive(Debug, Default)]
pub struct Outcome {
    pub release: String,
    pub stderr: Vec<String>,
    pub packets: Vec<Packet>,
    /// The packets of the run with a filter expression, and its stderr.
    pub filtered: Vec<Packet>,
    /// Output lines that are not lines of the contract (each one a failure).
    pub unreadable: Vec<String>,
    pub filter_stderr: Vec<String>,
    pub leftovers: Vec<String>,
}

/// Splits the guest's console output into its sections.
pub fn parse(console: &str) -> Outcome {
    let mut o = Outcome::default();
    let mut section = "";
    for line in console.lines().map(|l| l.trim_end_matches('\r')) {
        // The console may put terminal escapes before the first line.
        if let Some((_, r)) = line.split_once("vm: kernel ") {
            o.release = r.trim().to_owned();
        } else if let Some(s) = line.strip_prefix("vm: --- ") {
            section = match s.trim() {
                "stderr" => "stderr",
                "stdout" => "stdout",
                "filtered" => "filtered",
                "filter-stderr" => "filter-stderr",
                "leftovers" => "leftovers",
                _ => "",
            };
        } else if line.starts_with("vm: ") {
            section = "";
        } else {
            match section {
                "stderr" => o.stderr.push(line.to_owned()),
                "filter-stderr" => o.filter_stderr.push(line.to_owned()),
                "stdout" | "filtered" => match Line::parse(line) {
                    Ok(Line::Packet(p)) if section == "stdout" => o.packets.push(p),
                    Ok(Line::Packet(p)) => o.filtered.push(p),
                    Ok(_) => {}
                    Err(e) => o.unreadable.push(format!("{e}: {line}")),
                },
                "leftovers" if !line.trim().is_empty() => o.leftovers.push(line.to_owned()),
                _ => {}
            }
        }
    }
    o
}

/// The mechanism line the start-up prints for `--nf-attach mode`.
fn expected_mechanism(mode: &str) -> &'static str {
    match mode {
        "kprobe" => "via kprobe/kretprobe on nf_hook_slow",
        "links" => "via BPF netfilter links",
        _ => "via fentry/fexit on nf_hook_slow",
    }
}

/// Checks one boot; returns the mechanisms chosen per layer, or what failed.
pub fn check(o: &Outcome, mode: &str) -> Result<Vec<String>> {
    let err = o.stderr.join("\n");
    // The table's cells: tc, netfilter, drops, what auto left out, sk_buff offsets.
    let after = |prefix: &str, cut: &[char]| -> String {
        let mut found: Vec<String> = o
            .stderr
            .iter()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(|r| r.split(cut).next().unwrap_or(r).trim().to_owned())
            .collect();
        found.dedup();
        found.join(", ")
    };
    let attached = vec![
        after("attached tc ingress+egress on ", &[])
            .split(", ")
            .filter_map(|l| l.rsplit_once(" via ").map(|(_, m)| m.to_owned()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", "),
        after("attached netfilter observers via ", &[':', '(', ';']),
        after("attached kfree_skb via ", &[]),
        after("other netfilter mechanisms: ", &[]),
        after("struct offsets from this kernel's BTF: ", &[';']),
    ];
    // auto: BPF netfilter links where the kernel has them (≥ 6.4), else fentry/fexit.
    let ok = err.contains(expected_mechanism(mode))
        || (mode == "auto" && err.contains(expected_mechanism("links")));
    if !ok {
        bail!(
            "expected netfilter {}, got:\n{err}",
            expected_mechanism(mode)
        );
    }
    // Every layer's mechanism is named, and in auto mode what the kernel does not offer too.
    for layer in [
        "attached tc ",
        "attached kfree_skb via ",
        "struct offsets from ",
    ] {
        if !err.contains(layer) {
            bail!("the start-up does not say `{layer}…`:\n{err}");
        }
    }
    if mode == "auto" && !err.contains("other netfilter mechanisms: ") {
        bail!("auto mode does not say which netfilter mechanisms it left out:\n{err}");
    }
    topology::check_docker_host(o)?;
    Ok(attached)
}

fn ensure_tools() -> Result<()> {
    if !have("qemu-system-x86_64") || !std::path::Path::new("/bin/busybox").exists() {
        crate::out!("vm-test: installing qemu-system-x86 and busybox-static");
        cmd(
            "apt-get",
            ["install", "-y", "-q", "qemu-system-x86", "busybox-static"],
        )
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    }
    Ok(())
}

fn boot(vmlinuz: &std::path::Path, initrd: &std::path::Path, mode: &str) -> Result<String> {
    let mut c = Command::new("timeout");
    c.args(["600", "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max"]);
    c.args(["-smp", "2", "-m", "2048", "-nographic", "-no-reboot"]);
    c.args(["-net", "none", "-kernel"]).arg(vmlinuz);
    c.arg("-initrd").arg(initrd);
    c.args([
        "-append",
        &format!("console=ttyS0 panic=-1 quiet ftnf={mode}"),
    ]);
    let out = c.output().context("starting qemu-system-x86_64")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run(args: &VmTestArgs) -> Result<()> {
    if !crate::setup::is_root() {
        bail!("vm-test needs root (apt-get, the kernel packages)");
    }
    ensure_tools()?;
    let root = crate::bench::workspace_root();
    if !args.no_build {
        cmd("cargo", ["build", "--release", "-p", "tracer"]).run_visible()?;
    }
    let flowtrace = root.join("target/release/flowtrace");
    let work: PathBuf = root.join("target/vm");
    let init = INIT.replace("MODULES", &image::MODULES.join(" "));
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut judge = |console: String, mode: &str, took: Duration| -> Result<()> {
        let outcome = parse(&console);
        let release = outcome.release.clone();
        std::fs::write(work.join(format!("console-{release}-{mode}.log")), &console)?;
        match check(&outcome, mode) {
            Ok(mechanisms) => {
                crate::out!(
                    "vm-test: {release} --nf-attach {mode}: passed in {:.0?}",
                    Duration::from_secs(took.as_secs())
                );
                rows.push((release, mode.to_owned(), mechanisms));
            }
            Err(e) => {
                crate::err!("vm-test: {release} --nf-attach {mode}: FAILED: {e:#}");
                failures.push(format!("{release} {mode}"));
            }
        }
        Ok(())
    };
    for series in &args.kernels {
        if series == "host" {
            // This kernel refuses fentry and has no kprobes: auto must say so and use links.
            let started = std::time::Instant::now();
            let console = host::run(&flowtrace, topology::TEST, "auto", &work)?;
            judge(console, "auto", started.elapsed())?;
            continue;
        }
        let kernel = image::kernel(series, &work.join("cache"))?;
        let initrd = image::initramfs(&kernel, &flowtrace, &init, topology::TEST, &work)?;
        for mode in &args.nf_attach {
            let started = std::time::Instant::now();
            let console = boot(&kernel.vmlinuz(), &initrd, mode)?;
            judge(console, mode, started.elapsed())?;
        }
    }
    crate::out!(
        "\n| kernel | --nf-attach | tc | netfilter | drops | auto left out | sk_buff offsets (BTF) |\n| --- | --- | --- | --- | --- | --- | --- |"
    );
    for (k, mode, m) in &rows {
        crate::out!("| {k} | {mode} | {} |", m.join(" | "));
    }
    if !failures.is_empty() {
        bail!("vm-test failed on: {}", failures.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real boot's console (6.1, `--nf-attach kprobe`), cut to the lines the checks read.
    const CONSOLE: &str = include_str!("fixture-6.1-kprobe.txt");

    #[test]
    fn a_real_boot_passes_and_names_every_layer() {
        let o = parse(CONSOLE);
        assert_eq!(o.release, "6.1.0-56-amd64");
        let row = check(&o, "kprobe").expect("passes");
        assert_eq!(row[0], "clsact/netlink");
        assert!(
            row[1].starts_with("kprobe/kretprobe on nf_hook_slow"),
            "{row:?}"
        );
        assert_eq!(row[2], "tp_btf");
        assert!(row[4].starts_with("sk_buff.len +112"), "{row:?}");
        assert!(
            check(&o, "fexit").is_err(),
            "the mechanism asked for is checked"
        );
    }

    #[test]
    fn a_wrong_drop_nat_path_filter_or_a_leftover_fails() {
        let broken = [
            (
                "\"table\":\"filter\",\"rule\"",
                "\"table\":\"nat\",\"rule\"",
            ),
            ("\"kind\":\"snat\"", "\"kind\":\"none\""),
            ("\"iface\":\"br-ft\"", "\"iface\":\"br-xx\""),
            (
                "\"dnat\",\"from\":\"198.51.100.1:8080\"",
                "\"dnat\",\"from\":\"198.51.100.1:8081\"",
            ),
            ("filter `tcp port 9000`", "filter `tcp`"),
            (
                "vm: --- leftovers\n",
                "vm: --- leftovers\nfilter protocol all pref 49152 bpf\n",
            ),
            ("attached kfree_skb via", "attached kfree_skb by"),
        ];
        for (from, to) in broken {
            assert!(CONSOLE.contains(from), "the fixture has `{from}`");
            let o = parse(&CONSOLE.replace(from, to));
            assert!(check(&o, "kprobe").is_err(), "`{from}` → `{to}` passed");
        }
    }
}
