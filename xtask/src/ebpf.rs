//! The eBPF crate is built for bpfel-unknown-none with nightly, so it is linted on its own
//! (as aya's template does), not by the workspace's clippy run.

use anyhow::Result;

use crate::cmd::cmd;

pub fn clippy() -> Result<()> {
    crate::out!("test: clippy tracer-ebpf (nightly, bpfel-unknown-none)");
    cmd(
        "rustup",
        [
            "run",
            "nightly",
            "cargo",
            "clippy",
            "-p",
            "tracer-ebpf",
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            "target/ebpf-clippy",
            "--",
            "-D",
            "warnings",
        ],
    )
    .run_visible()
}
