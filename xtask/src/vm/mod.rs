//! `cargo xtask vm-test`: the real flowtrace on other kernels, in QEMU virtual machines.
//!
//! The kernel here refuses fentry/fexit and has no kprobes, so the netfilter fallbacks (and
//! netlink tc, and older tracepoint forms) can only run on another kernel. For each kernel
//! series asked for, this downloads Debian's `linux-image-<series>.*-amd64` (cached under
//! target/vm), builds an initramfs (busybox, flowtrace, iproute2, iptables, nft, the modules
//! needed) and boots it with QEMU. Inside, two network namespaces joined by a veth pair
//! (203.0.113.0/24, no link out of the guest, and the guest has no network device at all)
//! stand in for a host; an iptables rule drops TCP to 7777, a busybox echo listens on 8080,
//! and flowtrace traces the veth with `--iface --json`. The run passes when:
//! - the start-up says which netfilter mechanism was attached (the one asked for);
//! - the SYN to 7777 is a drop at INPUT/filter, NETFILTER_DROP, with the rule as iptables -S
//!   prints it;
//! - a packet to 8080 has an INPUT/filter accept hop;
//! - nothing is left attached on the veth after flowtrace exits.
//!
//! QEMU runs with TCG: nested KVM on this machine hangs the guest right after boot.

mod image;

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cmd::{cmd, have};

#[derive(clap::Args, Debug)]
pub struct VmTestArgs {
    /// Debian kernel series to boot (repeatable).
    #[arg(long = "kernel", default_values = ["6.1", "6.12"])]
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
NF=$(sed -n 's/.*ftnf=\([a-z]*\).*/\1/p' /proc/cmdline) sh /test.sh 2>&1
echo "vm: done"
poweroff -f
"#;

/// busybox sh prefers its own applets: iproute2's `ip` is called by path.
const TEST: &str = r#"IP=/usr/bin/ip
$IP netns add a; $IP netns add b
$IP -n a link add va type veth peer name vb netns b
$IP -n a addr add 203.0.113.1/24 dev va; $IP -n b addr add 203.0.113.2/24 dev vb
for n in a b; do $IP -n $n link set lo up; done
$IP -n a link set va up; $IP -n b link set vb up
$IP netns exec a /usr/sbin/iptables -A INPUT -p tcp --dport 7777 -j DROP
$IP netns exec a sh -c 'nc -ll -p 8080 -e cat >/dev/null 2>&1 &'
$IP netns exec a /usr/bin/flowtrace --iface va --json --duration 120s --nf-attach $NF > /tmp/out.json 2>/tmp/err.txt &
FT=$!
i=0; while ! grep -q "tracing" /tmp/err.txt && kill -0 $FT 2>/dev/null && [ $i -lt 90 ]; do sleep 1; i=$((i+1)); done
$IP netns exec b sh -c 'echo x | nc -w 3 203.0.113.1 7777' >/dev/null 2>&1
$IP netns exec b sh -c 'echo hello | nc -w 3 203.0.113.1 8080' >/dev/null 2>&1
sleep 2
kill -INT $FT; i=0; while kill -0 $FT 2>/dev/null && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done
echo "vm: --- stderr"; cat /tmp/err.txt
echo "vm: --- stdout"; cat /tmp/out.json
echo "vm: --- leftovers"; $IP netns exec a /usr/sbin/tc filter show dev va ingress; $IP netns exec a /usr/sbin/tc filter show dev va egress
echo "vm: --- end"
"#;

/// What one boot showed.
#[derive(Debug, Default)]
pub struct Outcome {
    pub release: String,
    pub stderr: Vec<String>,
    pub packets: Vec<Value>,
    pub leftovers: Vec<String>,
}

/// Splits the guest's console output into its sections.
pub fn parse(console: &str) -> Outcome {
    let mut o = Outcome::default();
    let mut section = "";
    for line in console.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(r) = line.strip_prefix("vm: kernel ") {
            o.release = r.trim().to_owned();
        } else if let Some(s) = line.strip_prefix("vm: --- ") {
            section = match s.trim() {
                "stderr" => "stderr",
                "stdout" => "stdout",
                "leftovers" => "leftovers",
                _ => "",
            };
        } else if line.starts_with("vm: ") {
            section = "";
        } else {
            match section {
                "stderr" => o.stderr.push(line.to_owned()),
                "stdout" => {
                    if let Ok(v) = serde_json::from_str::<Value>(line) {
                        if v["type"] == "packet" {
                            o.packets.push(v);
                        }
                    }
                }
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
    let attached: Vec<String> = o
        .stderr
        .iter()
        .filter(|l| l.starts_with("attached ") || l.starts_with("not attached"))
        .map(|l| l.split(':').next().unwrap_or(l).to_owned())
        .collect();
    // auto: BPF netfilter links where the kernel has them (≥ 6.4), else fentry/fexit.
    let ok = err.contains(expected_mechanism(mode))
        || (mode == "auto" && err.contains(expected_mechanism("links")));
    if !ok {
        bail!(
            "expected netfilter {}, got:\n{err}",
            expected_mechanism(mode)
        );
    }
    fn to<'a>(o: &'a Outcome, port: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        o.packets
            .iter()
            .filter(move |p| p["dst"].as_str().is_some_and(|d| d.ends_with(port)))
    }
    let drop = to(o, ":7777")
        .find(|p| !p["drop"].is_null())
        .with_context(|| format!("no dropped packet to :7777; stderr:\n{err}"))?;
    let d = &drop["drop"];
    let want = (
        Some("NETFILTER_DROP"),
        Some("INPUT"),
        Some("filter"),
        Some("-A INPUT -p tcp -m tcp --dport 7777 -j DROP"),
    );
    let got = (
        d["reason"].as_str(),
        d["hook"].as_str(),
        d["table"].as_str(),
        d["rule"].as_str(),
    );
    if got != want {
        bail!("the drop at :7777 is {d}");
    }
    let accepted = to(o, ":8080").any(|p| {
        p["hops"].as_array().is_some_and(|hops| {
            hops.iter()
                .any(|h| h["hook"] == "INPUT" && h["table"] == "filter" && h["verdict"] == "accept")
        })
    });
    if !accepted {
        bail!("no packet to :8080 with an INPUT/filter accept hop");
    }
    if !o.leftovers.is_empty() {
        bail!("left attached after exit:\n{}", o.leftovers.join("\n"));
    }
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
    for series in &args.kernels {
        let kernel = image::kernel(series, &work.join("cache"))?;
        let initrd = image::initramfs(&kernel, &flowtrace, &init, TEST, &work)?;
        for mode in &args.nf_attach {
            let started = std::time::Instant::now();
            let console = boot(&kernel.vmlinuz(), &initrd, mode)?;
            std::fs::write(
                work.join(format!("console-{}-{mode}.log", kernel.release)),
                &console,
            )?;
            let outcome = parse(&console);
            let took = started.elapsed();
            match check(&outcome, mode) {
                Ok(mechanisms) => {
                    crate::out!(
                        "vm-test: {} --nf-attach {mode}: passed in {:.0?}",
                        kernel.release,
                        Duration::from_secs(took.as_secs())
                    );
                    rows.push((kernel.release.clone(), mode.clone(), mechanisms));
                }
                Err(e) => {
                    crate::err!(
                        "vm-test: {} --nf-attach {mode}: FAILED: {e:#}",
                        kernel.release
                    );
                    failures.push(format!("{} {mode}", kernel.release));
                }
            }
        }
    }
    crate::out!("\n| kernel | --nf-attach | attached |\n| --- | --- | --- |");
    for (k, mode, m) in &rows {
        crate::out!("| {k} | {mode} | {} |", m.join("; "));
    }
    if !failures.is_empty() {
        bail!("vm-test failed on: {}", failures.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "noise\r\nvm: kernel 6.1.0-50-amd64\r\nvm: --- stderr\r\n\
        attached tc ingress+egress on va (iface, ifindex 2) via clsact/netlink\r\n\
        attached netfilter observers via fentry/fexit on nf_hook_slow: hook level\r\n\
        vm: --- stdout\r\n\
        {\"type\":\"packet\",\"dst\":\"203.0.113.1:7777\",\"hops\":[],\"drop\":{\"reason\":\"NETFILTER_DROP\",\"hook\":\"INPUT\",\"table\":\"filter\",\"rule\":\"-A INPUT -p tcp -m tcp --dport 7777 -j DROP\"}}\r\n\
        {\"type\":\"packet\",\"dst\":\"203.0.113.1:8080\",\"hops\":[{\"hook\":\"INPUT\",\"table\":\"filter\",\"verdict\":\"accept\"}],\"drop\":null}\r\n\
        {\"type\":\"summary\"}\r\nvm: --- leftovers\r\nvm: --- end\r\n";

    #[test]
    fn a_good_boot_passes_and_names_its_mechanisms() {
        let o = parse(CONSOLE);
        assert_eq!(o.release, "6.1.0-50-amd64");
        assert_eq!(o.packets.len(), 2);
        let m = check(&o, "auto").expect("passes");
        assert_eq!(
            m,
            vec![
                "attached tc ingress+egress on va (iface, ifindex 2) via clsact/netlink",
                "attached netfilter observers via fentry/fexit on nf_hook_slow"
            ]
        );
        assert!(
            check(&o, "kprobe").is_err(),
            "the mechanism asked for is checked"
        );
    }

    #[test]
    fn a_wrong_drop_or_a_leftover_fails() {
        let o = parse(&CONSOLE.replace(
            "\"table\":\"filter\",\"rule\"",
            "\"table\":\"nat\",\"rule\"",
        ));
        assert!(check(&o, "auto").is_err());
        let o = parse(&CONSOLE.replace(
            "vm: --- leftovers\r\n",
            "vm: --- leftovers\r\nfilter protocol all pref 49152 bpf\r\n",
        ));
        assert!(check(&o, "auto").is_err());
    }
}
