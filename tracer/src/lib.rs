//! flowtrace as a library: everything but the command-line entry point (`main.rs`). The
//! modules are the crate's own; what the binary, the fuzz targets (tracer/fuzz) and the
//! integration tests reach is re-exported below, and nothing else.

pub mod allocator;
mod cli;
mod correlate;
mod error;
mod events;
mod input;
pub mod logging;
pub mod model;
mod nftrace;
mod output;
mod pcapfilter;
mod pcapng;
mod pipeline;
mod probe;
mod select;
mod session;
mod sink;
mod target;
mod tui;
pub mod user_cost;

pub use cli::{Cli, Command};
pub use error::{Error, Result};
pub use input::replay::{read, read_tui};
pub use probe::privilege::apply_pending as apply_lowered_privileges;
pub use session::trace;

/// The parsers of untrusted input, for the fuzz targets.
pub mod parsers {
    pub use crate::events::{decode::decode, packet::parse_ethernet};
    pub use crate::pcapng::Reader;
    /// A recording's packet line shown as text and on the dashboard.
    pub use crate::tui::show_untrusted_line;
    /// nftables: trace events from the kernel, their walks, and ruleset text.
    pub use crate::{
        correlate::traversal::Assembler, nftrace::parse as parse_trace,
        target::rule_text::RuleTexts,
    };
}

/// What the privileged filter test drives in the real kernel.
pub mod kernel_filter {
    pub use crate::pcapfilter::{corpus, libpcap::Program, CompiledFilter, Insn, Plan, Source};
    pub use crate::probe::bpf_sys;
}
