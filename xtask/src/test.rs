//! `cargo xtask test`: everything CI runs. Set up the machine, check formatting and lints,
//! run the unit tests (no root), then bring the lab up, run the privileged end-to-end tests
//! serially against it, and tear the lab down whatever happened; finally boot Debian's 6.1
//! and 6.12 kernels in QEMU and run flowtrace there (`cargo xtask vm-test`), where the
//! fallback attach paths this kernel refuses can run, and the same Docker-shaped guest on this
//! kernel in a throwaway namespace (`--kernel host`).

use anyhow::{bail, Result};

use crate::{cmd::cmd, labguard::LabGuard};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Skip `cargo xtask setup` (the machine is known to be ready).
    #[arg(long)]
    pub no_setup: bool,
    /// Only the unit tests (no root, no lab).
    #[arg(long)]
    pub unit: bool,
    /// Skip formatting and clippy checks.
    #[arg(long)]
    pub no_lint: bool,
    /// Only privileged tests whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Seconds each fuzz target runs (0: no fuzzing).
    #[arg(long, default_value_t = 20)]
    pub fuzz_seconds: u32,
    /// Skip the kernel matrix in QEMU (`cargo xtask vm-test`).
    #[arg(long)]
    pub no_vm: bool,
}

/// The fuzz targets (tracer/fuzz): the pcapng reader, the ring-buffer record decoder,
/// nftables' trace messages and ruleset text, and a recording's packet shown as text and on
/// the dashboard.
const FUZZ_TARGETS: [&str; 4] = [
    "pcapng_reader",
    "event_decoder",
    "nftables",
    "shown_recording",
];

/// A short run of each fuzz target (nightly, sanitizers); a crash fails the test run.
fn fuzz(seconds: u32) -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracer");
    for target in FUZZ_TARGETS {
        crate::out!("test: cargo +nightly fuzz run {target} ({seconds} s)");
        let mut args = vec![
            "+nightly".to_owned(),
            "fuzz".into(),
            "run".into(),
            target.into(),
        ];
        // Seeds (tracer/fuzz/seeds/TARGET) start the search from real inputs: the corpus
        // first (new finds go there), then the seeds.
        let seeds = dir.join("fuzz/seeds").join(target);
        if seeds.is_dir() {
            let corpus = dir.join("fuzz/corpus").join(target);
            std::fs::create_dir_all(&corpus)?;
            args.push(corpus.display().to_string());
            args.push(seeds.display().to_string());
        }
        args.push("--".into());
        args.push(format!("-max_total_time={seconds}"));
        let status = std::process::Command::new("cargo")
            .current_dir(&dir)
            .args(&args)
            .status()?;
        if !status.success() {
            bail!("fuzz target {target} found a crash (see tracer/fuzz/artifacts/{target})");
        }
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    crate::out!("test: cargo {}", args.join(" "));
    cmd("cargo", args).run_visible()
}

pub fn run(args: &TestArgs) -> Result<()> {
    if !args.no_setup && !args.unit {
        crate::setup::run()?;
    }
    if !args.no_lint {
        cargo(&["fmt", "--all", "--check"])?;
        cargo(&[
            "clippy",
            "--workspace",
            "--exclude",
            "tracer-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
        crate::ebpf::clippy()?;
    }
    cargo(&["test", "--workspace", "--exclude", "tracer-ebpf"])?;
    if args.fuzz_seconds > 0 {
        fuzz(args.fuzz_seconds)?;
    }
    if args.unit {
        return Ok(());
    }
    if !crate::setup::is_root() {
        bail!("the privileged end-to-end tests need root (they build the lab and load eBPF)");
    }
    let lab = LabGuard::up()?;
    let mut test = vec![
        "test",
        "-p",
        "tracer",
        // Every integration test binary (lab.rs, record.rs, tui.rs, …), not the unit tests;
        // only the privileged (ignored) tests.
        "--test",
        "*",
        "--",
        "--ignored",
        "--test-threads=1",
    ];
    if let Some(f) = &args.filter {
        test.push(f);
    }
    let result = cargo(&test);
    drop(lab);
    result?;
    if !args.no_vm && args.filter.is_none() {
        crate::vm::run(&crate::vm::VmTestArgs {
            kernels: vec!["6.1".into(), "6.12".into(), "host".into()],
            nf_attach: vec!["auto".into(), "fexit".into(), "kprobe".into()],
            no_build: false,
        })?;
    }
    Ok(())
}
