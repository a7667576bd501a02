//! nftables tracing ("nftrace"): a table owned by our netlink socket marks the targets'
//! packets with `meta nftrace set 1`, and a monitor reads the trace events the kernel then
//! sends for every nftables rule those packets meet (iptables-nft rules included).
//!
//! Everything speaks raw netlink (NETLINK_NETFILTER) with hand-written TLVs (see `wire`):
//! the netlink crates at hand frame messages but know neither NFT_TABLE_F_OWNER tables nor
//! NFT_MSG_TRACE events.

mod expr;
mod marker;
mod monitor;
mod rules;
mod ruleset;
mod trace;
mod wants;
mod wire;

pub use marker::Marker;
pub use monitor::{Batch, Monitor};
/// The trace-event parser, for a fuzz target (lib.rs `parsers`); Monitor uses it internally.
pub use trace::parse;
pub use trace::{TraceEvent, TraceKind};
pub use wants::Wants;

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum NftraceError {
    #[error("cannot use a netfilter netlink socket: {0}")]
    Socket(#[source] io::Error),

    #[error(
        "this kernel cannot tie an nftables table to its creator (NFT_TABLE_F_OWNER, Linux ≥ 5.12)"
    )]
    OwnerUnsupported,

    #[error(
        "the kernel refused the nftables table {table} ({what}): {}",
        io::Error::from_raw_os_error(*errno)
    )]
    Refused {
        table: String,
        what: String,
        errno: i32,
    },

    #[error("the kernel did not answer every request about the nftables table {table}")]
    NoAnswer { table: String },

    #[error("cannot start the thread that reads nftables trace events: {0}")]
    Thread(#[source] io::Error),
}
