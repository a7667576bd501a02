//! `cargo xtask bench-user`: user space's CPU time per shown packet, on one core and without a
//! kernel. tracer/examples/user_cost.rs feeds a forwarded UDP packet's records (3 tc hops, the
//! netfilter observers of Docker's ruleset, its consume) through decoding, joining, explaining
//! and printing, as `flowtrace` does with the ring buffer's, and reports its thread's CPU time
//! per packet. Needs no root and no lab, so it can be profiled (`perf record` on the example)
//! and compared before and after a change; `cargo xtask bench` gives the live figures.

use anyhow::{Context, Result};
use serde_json::Value;

use super::report::workspace_root;
use crate::cmd::cmd;

#[derive(clap::Args, Debug)]
pub struct BenchUserArgs {
    /// Packets per run.
    #[arg(long, default_value_t = 200_000)]
    pub packets: u64,
    /// Runs per output; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub repeat: u32,
}

/// The outputs measured: `--json`, text, and text with `--write` (as the bench's pcapng row).
const OUTPUTS: [&str; 3] = ["json", "text", "pcapng"];

pub fn run(args: &BenchUserArgs) -> Result<()> {
    let root = workspace_root();
    cmd(
        "cargo",
        [
            "build",
            "--release",
            "-p",
            "tracer",
            "--example",
            "user_cost",
        ],
    )
    .current_dir(&root)
    .run_visible()?;
    let example = root.join("target/release/examples/user_cost");
    let mut figures = Vec::new();
    println!(
        "user space per shown packet ({} packets a run, median of {}):",
        args.packets, args.repeat
    );
    for output in OUTPUTS {
        let mut ns = Vec::new();
        for _ in 0..args.repeat.max(1) {
            let line = cmd(
                &example.to_string_lossy(),
                [args.packets.to_string().as_str(), output],
            )
            .read()?;
            let v: Value = serde_json::from_str(line.trim())
                .with_context(|| format!("user_cost printed {line:?}"))?;
            ns.push(v["ns_per_packet"].as_f64().context("no ns_per_packet")?);
        }
        ns.sort_by(f64::total_cmp);
        let median = ns[ns.len() / 2];
        println!(
            "  {output:<7} {:>7.2} µs  (runs: {})",
            median / 1000.0,
            ns.iter()
                .map(|x| format!("{:.2}", x / 1000.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        figures.push(serde_json::json!({"output": output, "median_ns": median, "runs_ns": ns}));
    }
    let out = root.join("target/bench-user.json");
    std::fs::write(&out, serde_json::to_string_pretty(&figures)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("figures: {}", out.display());
    Ok(())
}
