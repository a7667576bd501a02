//! `cargo xtask soak`: flowtrace's memory over a long run with many distinct flows.
//!
//! flowtrace (release build, `--json` to a pipe that is drained and discarded) traces
//! `ens_monitor_cron` while a generator in the container's network namespace sends one UDP
//! datagram per flow to the lab's internet namespace, cycling through `--flows` distinct
//! 5-tuples (source port × destination port) at `--rate` flows per second. The internet
//! namespace answers each with ICMP port unreachable (or the echo on 9999), so every flow has a
//! reply too. Every `--every` seconds the tracer's RSS and CPU time are sampled.
//!
//! The in-flight packet table and the flow table are bounded (65,536 each), so RSS must rise
//! while they fill and then stay flat: the verdict compares the last sample with the sample
//! taken once the warm-up (`--warmup` seconds) is over.
//!
//! Network safety: the lab's safety check runs before the generator starts and every minute;
//! the generator is bound to the container's eth0 and sends only to 198.51.100.2.

use std::{path::PathBuf, process::Command, time::Duration, time::Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{
    measure::{cpu_seconds, peak_rss_kib, safety, status_kib},
    report::workspace_root,
    Proc,
};
use crate::{cmd::cmd, lab, labguard::LabGuard};

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 10)]
    pub minutes: u32,
    /// Distinct flows (5-tuples) the generator cycles through.
    #[arg(long, default_value_t = 100_000)]
    pub flows: u32,
    /// New flows per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    pub every: u32,
    /// Seconds after which the tables are expected to be full (the reference sample).
    #[arg(long, default_value_t = 120)]
    pub warmup: u32,
    /// Where to write the samples (default: target/soak.json in the workspace).
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<PathBuf>,
    /// Use target/release/flowtrace as it is.
    #[arg(long)]
    pub no_build: bool,
}

/// One datagram per flow: source ports from 20000 upwards × destination ports from 30000
/// upwards, so `flows` distinct 5-tuples, cycled for `seconds` at `rate` per second.
const GENERATOR_PY: &str = r#"
import socket, sys, time
dst, flows, rate, seconds, dev = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
sports = 40000
dports = (flows + sports - 1) // sports
t0 = time.monotonic()
sent = 0
i = 0
while True:
    now = time.monotonic() - t0
    if now >= seconds:
        break
    due = int(now * rate)
    while sent < due:
        k = i % flows
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("", 20000 + k % sports))
            s.sendto(b"flowtrace-soak", (dst, 30000 + k // sports))
        except OSError:
            pass
        finally:
            s.close()
        sent += 1
        i += 1
    time.sleep(0.002)
print(sent)
"#;

pub fn run(args: &SoakArgs) -> Result<()> {
    if !crate::setup::is_root() {
        bail!("the soak needs root (the lab, BPF)");
    }
    if args.minutes == 0 || args.rate == 0 || args.flows == 0 || args.every == 0 {
        bail!("--minutes, --rate, --flows and --every must be positive");
    }
    let root = workspace_root();
    if !args.no_build {
        cmd("cargo", ["build", "--release", "-p", "tracer"]).run_visible()?;
    }
    let bin = root.join("target/release/flowtrace");
    let out_path = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/soak.json"));
    let _lab = LabGuard::up()?;
    safety()?;

    let mut c = Command::new(&bin);
    c.args(["-c", lab::CONTAINER, "--json"]);
    let mut tracer = Proc::spawn(c, "flowtrace", Some("tracing…"))?;
    tracer.wait_ready(Duration::from_secs(60))?;
    let pid = tracer.pid();

    let seconds = u64::from(args.minutes) * 60;
    let cpid = lab::docker::container_pid(lab::CONTAINER)?.to_string();
    let mut g = Command::new("nsenter");
    g.args([
        "-n",
        "-t",
        &cpid,
        "python3",
        "-c",
        GENERATOR_PY,
        lab::INET_IP,
    ]);
    g.args([
        args.flows.to_string(),
        args.rate.to_string(),
        seconds.to_string(),
        lab::INET_NS_IF.to_owned(),
    ]);
    let generator = Proc::spawn(g, "flow generator", None)?;
    crate::out!(
        "soak: {} min, {} distinct flows at {}/s, flowtrace pid {pid}",
        args.minutes,
        args.flows,
        args.rate
    );
    crate::out!("| t (s) | RSS (MiB) | CPU (s) |");
    crate::out!("| ---: | ---: | ---: |");

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut last_check = Instant::now();
    while started.elapsed().as_secs() < seconds {
        std::thread::sleep(Duration::from_secs(u64::from(args.every)));
        if last_check.elapsed() >= Duration::from_secs(60) {
            safety().context("the lab's safety check failed during the soak")?;
            last_check = Instant::now();
        }
        let t = started.elapsed().as_secs();
        let rss = status_kib(pid, "VmRSS");
        if rss == 0 {
            bail!(
                "flowtrace exited during the soak:\n{}",
                tracer.stderr_text()
            );
        }
        let cpu = cpu_seconds(pid).unwrap_or(0.0);
        crate::out!("| {t} | {:.1} | {cpu:.1} |", rss as f64 / 1024.0);
        samples.push(json!({"t_s": t, "rss_kib": rss, "cpu_s": cpu}));
    }
    let gen = generator.finish(None, Duration::from_secs(30))?;
    let sent: u64 = String::from_utf8_lossy(&gen.out.tail)
        .trim()
        .parse()
        .unwrap_or(0);
    let peak = peak_rss_kib(pid);
    let done = tracer.finish(Some(libc::SIGINT), Duration::from_secs(30))?;
    // flowtrace's last line: its summary, read as the contract's type.
    let summary = String::from_utf8_lossy(&done.out.tail)
        .lines()
        .rev()
        .find_map(|l| match tracer_model::Line::parse(l) {
            Ok(tracer_model::Line::Summary(s)) => Some(s),
            _ => None,
        });
    let (packets, flows, lost) = summary
        .as_ref()
        .map_or((0, 0, 0), |s| (s.packets, s.flows, s.lost));

    let at = |t: u64| {
        samples
            .iter()
            .find(|s| s["t_s"].as_u64().unwrap_or(0) >= t)
            .and_then(|s| s["rss_kib"].as_u64())
    };
    let reference = at(u64::from(args.warmup)).unwrap_or(0);
    let last = samples
        .last()
        .and_then(|s| s["rss_kib"].as_u64())
        .unwrap_or(0);
    let after_warmup_max = samples
        .iter()
        .filter(|s| s["t_s"].as_u64().unwrap_or(0) >= u64::from(args.warmup))
        .filter_map(|s| s["rss_kib"].as_u64())
        .max()
        .unwrap_or(0);
    let growth = if reference > 0 {
        (last as f64 - reference as f64) / reference as f64
    } else {
        0.0
    };
    crate::out!(
        "soak: {sent} datagrams sent ({} flows); flowtrace saw {} packets, {} flows, {} events lost; \
         exit {}",
        args.flows,
        packets,
        flows,
        lost,
        done.exit
    );
    crate::out!(
        "soak: RSS {:.1} MiB at {} s, {:.1} MiB at the end ({:+.1}%), at most {:.1} MiB after \
         the warm-up, peak {:.1} MiB",
        reference as f64 / 1024.0,
        args.warmup,
        last as f64 / 1024.0,
        growth * 100.0,
        after_warmup_max as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    let report = json!({
        "minutes": args.minutes, "flows": args.flows, "rate": args.rate, "sent": sent,
        "samples": samples, "reference_rss_kib": reference, "last_rss_kib": last,
        "max_after_warmup_kib": after_warmup_max, "peak_rss_kib": peak, "growth": growth,
        "summary": summary, "exit": done.exit,
    });
    std::fs::write(&out_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out_path.display()))?;
    crate::out!("soak: samples written to {}", out_path.display());
    Ok(())
}
