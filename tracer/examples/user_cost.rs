//! `user_cost [PACKETS] [json|text|pcapng]`: user space's CPU time per shown packet, on one core and
//! without a kernel (see tracer/src/user_cost.rs). `cargo xtask bench-user` runs it.

use tracer::user_cost::{measure, Output};

/// The allocator flowtrace itself uses (main.rs).
#[global_allocator]
static GLOBAL: tracer::allocator::Mimalloc = tracer::allocator::Mimalloc;

/// Set up as flowtrace's (main.rs).
#[used]
#[link_section = ".init_array.00101"]
static CONFIGURE_ALLOCATOR: extern "C" fn() = tracer::allocator::configure;

fn main() -> std::process::ExitCode {
    // Without transparent huge pages, as flowtrace runs (main.rs): with them, zeroing the
    // allocator's fresh 2 MiB pages was 8% of this example's time and none of flowtrace's.
    // SAFETY: prctl with integer arguments; it changes this process's THP setting alone.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    // Measured as flowtrace runs once started.
    tracer::allocator::started();
    let mut args = std::env::args().skip(1);
    let packets = match args.next().map(|a| a.parse::<u64>()) {
        None => 200_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: user_cost [PACKETS] [json|text|pcapng]: PACKETS is a count above 0");
            return std::process::ExitCode::from(2);
        }
    };
    let output = match args.next().as_deref() {
        None | Some("json") => Output::Json,
        Some("text") => Output::Text,
        Some("pcapng") => {
            let path =
                std::env::temp_dir().join(format!("user_cost-{}.pcapng", std::process::id()));
            Output::Pcapng(path)
        }
        Some(other) => {
            eprintln!("usage: user_cost [PACKETS] [json|text|pcapng]: no output {other:?}");
            return std::process::ExitCode::from(2);
        }
    };
    let name = match &output {
        Output::Json => "json",
        Output::Text => "text",
        Output::Pcapng(_) => "pcapng",
    };
    let written = match &output {
        Output::Pcapng(path) => Some(path.clone()),
        _ => None,
    };
    let result = measure(packets, output);
    if let Some(path) = written {
        let _ = std::fs::remove_file(path);
    }
    match result {
        Ok(c) => {
            println!(
                "{{\"output\":\"{}\",\"packets\":{},\"shown\":{},\"records\":{},\"cpu_ns\":{},\"ns_per_packet\":{:.0},\"bytes_out\":{}}}",
                name,
                c.packets,
                c.shown,
                c.records,
                c.cpu_ns,
                c.ns_per_packet(),
                c.bytes_out
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("user_cost: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
