//! Developer tasks for flowtrace, as a library and the `cargo xtask` binary (as aya's xtask
//! is): the lab, its state and its network safety check, and the expectations on flowtrace's
//! output that both the privileged e2e tests (`tracer/tests`) and the VM matrix hold it to.

/// `println!` that ignores a closed stdout (e.g. `| head`) instead of panicking, so that a
/// teardown never stops halfway because nobody reads its progress lines.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed stderr.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod bench;
pub mod cmd;
pub mod demo;
pub mod ebpf;
pub mod expect;
pub mod lab;
pub mod labguard;
pub mod setup;
pub mod test;
pub mod vm;
