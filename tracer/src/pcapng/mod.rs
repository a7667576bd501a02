//! pcapng files: what `--write trace.pcapng` records and `flowtrace read` reads back.
//!
//! The format is the IETF opsawg pcapng draft. [`writer::Writer`] writes one little-endian
//! section: a Section Header Block (comment and application name), one Interface Description
//! Block per observation point (nanosecond timestamps, `if_tsresol` = 9), and one Enhanced
//! Packet Block per packet (per-packet comments and the direction in `epb_flags`). Every block
//! is built in memory and handed to the sink with a single `write_all`, so a recording killed
//! mid-write ends at a block boundary or with one partial trailing block.
//!
//! [`reader::Reader`] reads any pcapng file (either byte order, several sections, any
//! `if_tsresol`), never panics on malformed input, and reports a cut-off last block as a
//! distinct error ([`PcapngError::is_truncation`]) after yielding every complete block.
//!
//! Wireshark, tshark and capinfos open what the writer produces (see the interop test).

mod decode;
pub mod error;
pub mod reader;
pub mod writer;

#[cfg(test)]
mod foreign_tests;
#[cfg(test)]
mod interop_tests;
#[cfg(test)]
mod tests;

pub use error::PcapngError;
pub use reader::{Block, Reader};
pub use writer::{PacketRecord, Writer, LINKTYPE_ETHERNET, LINKTYPE_RAW};

/// Which way a packet was going at its observation point (`epb_flags` bits 0-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Arriving at the interface (flag value 01).
    Inbound,
    /// Leaving through the interface (flag value 10).
    Outbound,
}

/// Section Header Block.
pub(crate) const SHB_TYPE: u32 = 0x0A0D_0D0A;
/// Interface Description Block.
pub(crate) const IDB_TYPE: u32 = 0x0000_0001;
/// Enhanced Packet Block.
pub(crate) const EPB_TYPE: u32 = 0x0000_0006;
/// Byte-order magic in the SHB, as written by the section's own byte order.
pub(crate) const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
/// The largest block either side accepts. Real blocks are at most a few hundred KiB; the cap
/// keeps a corrupt length from making the reader allocate gigabytes.
pub const MAX_BLOCK_LEN: u32 = 256 * 1024 * 1024;

pub(crate) const OPT_ENDOFOPT: u16 = 0;
pub(crate) const OPT_COMMENT: u16 = 1;
pub(crate) const SHB_USERAPPL: u16 = 4;
pub(crate) const IF_NAME: u16 = 2;
pub(crate) const IF_DESCRIPTION: u16 = 3;
pub(crate) const IF_TSRESOL: u16 = 9;
pub(crate) const IF_TSOFFSET: u16 = 14;
pub(crate) const EPB_FLAGS: u16 = 2;
/// `if_tsresol` when the option is absent: microseconds.
pub(crate) const DEFAULT_TSRESOL: u8 = 6;
