//! `cargo xtask <command>`: flowtrace's developer tasks (the library is `xtask`).

use xtask::{bench, demo, lab, setup, test, vm};

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "xtask", about = "flowtrace developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make this machine (Debian 12, root) ready: packages, rust-src, bpf-linker, dockerd.
    Setup,
    /// The lab: the seed's Docker host in miniature, with a namespaced "internet".
    #[command(subcommand)]
    Lab(lab::LabCmd),
    /// Run every test: lints, unit tests, then the privileged e2e tests in the lab.
    Test(test::TestArgs),
    /// The main job on the built-in demo: flowtrace on ens_monitor_cron while traffic flows.
    Demo(demo::DemoArgs),
    /// Measure flowtrace's overhead in the lab, side by side with a baseline and tcpdump.
    Bench(bench::BenchArgs),
    /// flowtrace's memory over a long run with many distinct flows (RSS must stay flat).
    Soak(bench::soak::SoakArgs),
    /// User space's CPU time per shown packet, on one core, without a kernel (no root).
    BenchUser(bench::user::BenchUserArgs),
    /// Run the real flowtrace on other kernels (Debian's, in QEMU): the fallback attach paths.
    VmTest(vm::VmTestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Setup => setup::run(),
        Command::Lab(cmd) => lab::run(cmd),
        Command::Test(args) => test::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Soak(args) => bench::soak::run(&args),
        Command::BenchUser(args) => bench::user::run(&args),
        Command::VmTest(args) => vm::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with causes), no backtrace even under RUST_BACKTRACE=1.
            xtask::err!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
