//! Decoding helpers for the reader: byte order, options, timestamp units.

use super::{PcapngError, OPT_ENDOFOPT};

/// Timestamp settings of one interface of the current section.
#[derive(Clone, Copy)]
pub(super) struct IfClock {
    pub(super) tsresol: u8,
    pub(super) tsoffset_s: i64,
}

/// A note for files that are clearly something else.
pub(super) fn hint_for(found: u32) -> &'static str {
    match found {
        0xD4C3_B2A1 | 0xA1B2_C3D4 | 0x4D3C_B2A1 | 0xA1B2_3C4D => {
            "; this is a classic pcap file, not pcapng"
        }
        _ => "",
    }
}

pub(super) fn u32_of(be: bool, b: [u8; 4]) -> u32 {
    if be {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    }
}

pub(super) fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

pub(super) fn fixed<const N: usize>(
    offset: u64,
    code: u16,
    v: &[u8],
) -> Result<[u8; N], PcapngError> {
    v.try_into().map_err(|_| PcapngError::BadOptionLength {
        offset,
        code,
        len: v.len(),
        expected: N,
    })
}

/// Timestamp units to ns since the epoch: `if_tsresol` is 10^-v s (high bit clear) or 2^-v s
/// (high bit set); `if_tsoffset` adds whole seconds.
pub(super) fn to_ns(ts: u64, clock: IfClock) -> Option<u64> {
    let v = u32::from(clock.tsresol & 0x7F);
    let ts = u128::from(ts);
    let ns: u128 = if clock.tsresol & 0x80 != 0 {
        (ts * 1_000_000_000) >> v
    } else if v <= 9 {
        ts * 10u128.pow(9 - v)
    } else {
        10u128.checked_pow(v - 9).map_or(0, |d| ts / d)
    };
    let total = i128::try_from(ns).ok()? + i128::from(clock.tsoffset_s) * 1_000_000_000;
    u64::try_from(total).ok()
}

/// A little cursor over a block's content that turns running out into an option/length error.
pub(super) struct Cur<'a> {
    pub(super) buf: &'a [u8],
    pub(super) be: bool,
    /// Where the block starts, for error messages.
    pub(super) offset: u64,
}

impl<'a> Cur<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], PcapngError> {
        if n > self.buf.len() {
            return Err(PcapngError::StrayOptionBytes {
                offset: self.offset,
                remaining: self.buf.len(),
            });
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    pub(super) fn u16(&mut self) -> Result<u16, PcapngError> {
        let b: [u8; 2] = self.take(2)?.try_into().unwrap_or([0; 2]);
        Ok(if self.be {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    pub(super) fn u32(&mut self) -> Result<u32, PcapngError> {
        let b: [u8; 4] = self.take(4)?.try_into().unwrap_or([0; 4]);
        Ok(u32_of(self.be, b))
    }

    /// Calls `f(code, value)` for each option up to opt_endofopt or the end of the block.
    pub(super) fn options(
        mut self,
        mut f: impl FnMut(u16, &[u8]) -> Result<(), PcapngError>,
    ) -> Result<(), PcapngError> {
        while !self.buf.is_empty() {
            if self.buf.len() < 4 {
                return Err(PcapngError::StrayOptionBytes {
                    offset: self.offset,
                    remaining: self.buf.len(),
                });
            }
            let code = self.u16()?;
            let len = self.u16()?;
            if code == OPT_ENDOFOPT {
                return Ok(());
            }
            let padded = (usize::from(len) + 3) & !3;
            if padded > self.buf.len() {
                return Err(PcapngError::OptionOverrun {
                    offset: self.offset,
                    code,
                    len,
                    remaining: self.buf.len(),
                });
            }
            let value = self.take(padded)?;
            f(code, value.get(..usize::from(len)).unwrap_or(&[]))?;
        }
        Ok(())
    }
}
