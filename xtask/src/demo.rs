//! `cargo xtask demo`: the main job on the built-in demo. Builds flowtrace, brings the lab up
//! (the seed's host in miniature, with a deliberate DROP in DOCKER-USER), runs
//! `flowtrace --container ens_monitor_cron` while sending real traffic, and tears the lab down.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    cmd::cmd,
    lab::{self, send},
    labguard::LabGuard,
};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    pub no_setup: bool,
    /// Extra arguments for flowtrace (e.g. `--json`, `--flows`), after `--`.
    #[arg(last = true)]
    pub flowtrace_args: Vec<String>,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn traffic(
    proto: send::Proto,
    from: &str,
    dst: &str,
    port: Option<u16>,
    count: u32,
    expect_fail: bool,
) -> Result<()> {
    send::send(&send::SendArgs {
        proto,
        dst: dst.parse().context("lab address")?,
        port,
        count,
        from: from.to_owned(),
        expect_fail,
        timeout: 1,
    })
}

pub fn run(args: &DemoArgs) -> Result<()> {
    if !args.no_setup {
        crate::setup::run()?;
    }
    let root = workspace_root();
    cmd("cargo", ["build", "--release", "-p", "tracer"]).run_visible()?;
    let bin = root.join("target/release/flowtrace");
    let _lab = LabGuard::up()?;

    let mut child = Command::new(&bin)
        .args(["--container", lab::CONTAINER])
        .args(&args.flowtrace_args)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let (ready_tx, ready_rx) = mpsc::channel();
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                crate::err!("{line}");
                if line.contains("tracing…") {
                    let _ = ready_tx.send(());
                }
            }
        });
    }
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        bail!("flowtrace did not start tracing within 30 s");
    }

    crate::err!("demo: TCP to the internet (MASQUERADE), UDP, ping, a DOCKER-USER drop, the published port, container to container");
    let inet = lab::INET_IP;
    traffic(send::Proto::Tcp, lab::CONTAINER, inet, Some(8080), 1, false)?;
    traffic(
        send::Proto::Udp,
        lab::CONTAINER,
        inet,
        Some(lab::UDP_PORT),
        1,
        false,
    )?;
    traffic(send::Proto::Icmp, lab::CONTAINER, inet, None, 1, false)?;
    traffic(
        send::Proto::Tcp,
        lab::CONTAINER,
        inet,
        Some(lab::DROP_PORT),
        1,
        true,
    )?;
    traffic(
        send::Proto::Tcp,
        "inet",
        lab::UPLINK_IP,
        Some(lab::PUBLISHED_HOST_PORT),
        1,
        false,
    )?;
    traffic(
        send::Proto::Tcp,
        lab::PEER,
        lab::CONTAINER_IP,
        Some(lab::CONTAINER_PORT),
        1,
        false,
    )?;
    std::thread::sleep(Duration::from_millis(500));

    // SAFETY: plain kill(2) on our own child: the Ctrl-C path flowtrace users take.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().context("waiting for flowtrace")?;
    if !status.success() {
        bail!("flowtrace exited with {status}");
    }
    Ok(())
}
