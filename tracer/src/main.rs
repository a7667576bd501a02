//! flowtrace: trace a Docker container's packets hop by hop with eBPF.
//! This file only parses the command line, dispatches, and turns errors into one sentence
//! and a hint.

use std::process::ExitCode;

use clap::Parser;
use tracer::{Cli, Command};

/// Every traced packet becomes a few small allocations (its JSON model, strings): mimalloc
/// handles that churn at about half glibc malloc's cost (measured with perf in `cargo xtask bench`'s load),
/// asked the short way (`tracer::allocator::Mimalloc`).
#[global_allocator]
static GLOBAL: tracer::allocator::Mimalloc = tracer::allocator::Mimalloc;

/// Before the allocator's first allocation (the runtime allocates before `main`): see
/// `tracer::allocator::configure`. Priority 101, the first one not reserved for the C library.
#[used]
#[link_section = ".init_array.00101"]
static CONFIGURE_ALLOCATOR: extern "C" fn() = tracer::allocator::configure;

fn main() -> ExitCode {
    // No transparent huge pages: the allocator's arenas would be backed 2 MiB at a time, and
    // a long-running tracer would hold (and zero) far more memory than it uses: 48 of the
    // 77 MiB resident in `--counters` were such pages. A failure only leaves THP as it was.
    // SAFETY: prctl with integer arguments; it changes this process's THP setting alone.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let cli = Cli::parse();
    let (args, read) = match cli.command {
        Some(Command::Trace(a)) => (*a, None),
        Some(Command::Read(r)) => (cli.trace, Some(r)),
        None => (cli.trace, None),
    };
    if read.is_some() {
        // A recording is read with no start-up to speak of.
        tracer::allocator::started();
    }
    let level = match args.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let log_file = match args.log_file.as_deref().map(tracer::logging::create_file) {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => return fail(&e),
    };
    tracer::logging::init(level, log_file);

    // Capabilities are per thread: every worker lowers its own once start-up has lowered
    // the main thread's (see tracer::lower_privileges).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(tracer::apply_lowered_privileges)
        .on_thread_unpark(tracer::apply_lowered_privileges)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flowtrace: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match read {
        Some(r) if r.tui => runtime.block_on(tracer::read_tui(&r)),
        Some(r) => tracer::read(&r),
        None => runtime.block_on(tracer::trace(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// One sentence and a hint.
fn fail(e: &tracer::Error) -> ExitCode {
    eprintln!("flowtrace: {e}");
    if let Some(hint) = e.hint() {
        eprintln!("  hint: {hint}");
    }
    ExitCode::FAILURE
}
