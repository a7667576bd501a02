//! What can be wrong with a pcapng file, in sentences a user can act on.

use std::io;

use super::MAX_BLOCK_LEN;

/// Why reading a pcapng file stopped. Offsets are byte offsets from the start of the input.
#[derive(Debug, thiserror::Error)]
pub enum PcapngError {
    #[error("I/O error reading at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },

    #[error("the file is empty (a pcapng file starts with a Section Header Block 0x0A0D0D0A)")]
    Empty,

    #[error(
        "not a pcapng file (first block type 0x{found:08X}, expected a Section Header Block \
         0x0A0D0D0A){hint}"
    )]
    NotPcapng { found: u32, hint: &'static str },

    #[error(
        "the Section Header Block at byte {offset} has byte-order magic 0x{found:08X}, \
         expected 0x1A2B3C4D in either byte order"
    )]
    BadByteOrderMagic { offset: u64, found: u32 },

    #[error(
        "the Section Header Block at byte {offset} is pcapng version {major}.{minor}; only \
         version 1.x is supported"
    )]
    UnsupportedVersion { offset: u64, major: u16, minor: u16 },

    /// The input ends inside a block: what was read before it is complete and valid.
    #[error("{}", truncated_msg(*.offset, *.claimed, *.available))]
    Truncated {
        offset: u64,
        /// The block's length field, if the input got that far.
        claimed: Option<u32>,
        /// How many bytes of the block the input holds.
        available: u64,
    },

    #[error("block at byte {offset} claims length {length}, which is not a multiple of 4")]
    UnalignedLength { offset: u64, length: u32 },

    #[error(
        "block at byte {offset} claims length {length}, less than the {min} bytes a {kind} \
         needs"
    )]
    TooShort {
        offset: u64,
        kind: &'static str,
        length: u32,
        min: u32,
    },

    #[error(
        "block at byte {offset} claims length {length}, over the {} bytes (256 MiB) this \
         reader accepts for one block; the file is probably corrupt",
        MAX_BLOCK_LEN
    )]
    TooLarge { offset: u64, length: u32 },

    #[error(
        "block at byte {offset} starts with length {leading} but ends with length {trailing}; \
         the file is corrupt"
    )]
    TrailerMismatch {
        offset: u64,
        leading: u32,
        trailing: u32,
    },

    #[error(
        "option {code} in the block at byte {offset} claims {len} bytes (padded to 4) but only \
         {remaining} remain in the block"
    )]
    OptionOverrun {
        offset: u64,
        code: u16,
        len: u16,
        remaining: usize,
    },

    #[error(
        "the options of the block at byte {offset} end with {remaining} stray bytes (an option \
         header needs 4)"
    )]
    StrayOptionBytes { offset: u64, remaining: usize },

    #[error("option {code} in the block at byte {offset} has length {len}, expected {expected}")]
    BadOptionLength {
        offset: u64,
        code: u16,
        len: usize,
        expected: usize,
    },

    #[error(
        "packet at byte {offset} claims {caplen} captured bytes but its block only has room \
         for {room}"
    )]
    CaptureOverrun {
        offset: u64,
        caplen: u32,
        room: usize,
    },

    #[error("packet at byte {offset} refers to interface {id} but the section has {count}")]
    UnknownInterface { offset: u64, id: u32, count: usize },

    #[error(
        "packet at byte {offset} has a timestamp that is not representable as nanoseconds \
         since 1970 (before the epoch or after 2554)"
    )]
    TimestampRange { offset: u64 },
}

impl PcapngError {
    /// True when the input simply ends inside a block (a recording cut off mid-write): the
    /// blocks read before are complete, so callers can show them and then warn.
    pub fn is_truncation(&self) -> bool {
        matches!(self, Self::Truncated { .. })
    }
}

fn truncated_msg(offset: u64, claimed: Option<u32>, available: u64) -> String {
    match claimed {
        Some(n) => format!(
            "block at byte {offset} claims length {n} but the file ends after {available} \
             bytes of it (cut off mid-write?)"
        ),
        None => format!(
            "the file ends {available} bytes into the block header at byte {offset} (cut off \
             mid-write?)"
        ),
    }
}
