//! Reading pcapng block by block, defensively: any input yields blocks or an error, never a
//! panic. Lengths are checked against `MAX_BLOCK_LEN` before reading, and a block's buffer only
//! grows as its bytes actually arrive, so a lying length field cannot force a huge allocation.

use std::io::{self, Read};

use super::decode::{fixed, hint_for, text, to_ns, u32_of, Cur, IfClock};
use super::{
    Direction, PcapngError, BYTE_ORDER_MAGIC, DEFAULT_TSRESOL, EPB_FLAGS, EPB_TYPE, IDB_TYPE,
    IF_DESCRIPTION, IF_NAME, IF_TSOFFSET, IF_TSRESOL, MAX_BLOCK_LEN, OPT_COMMENT, SHB_TYPE,
    SHB_USERAPPL,
};

/// One block of a pcapng file, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    /// A Section Header Block: a new section starts and interface ids restart at 0.
    Section {
        comment: Option<String>,
        app: Option<String>,
    },
    /// An Interface Description Block; `id` counts within the section.
    Interface {
        id: u32,
        name: Option<String>,
        description: Option<String>,
        linktype: u16,
        snaplen: u32,
        /// The raw `if_tsresol` (6, microseconds, when absent).
        tsresol: u8,
    },
    /// An Enhanced Packet Block, its timestamp converted to ns since the epoch.
    Packet {
        interface: u32,
        ts_ns: u64,
        data: Vec<u8>,
        orig_len: u32,
        direction: Option<Direction>,
        comments: Vec<String>,
    },
    /// Any other block (Simple Packet, Name Resolution, statistics, custom…), skipped.
    Other { block_type: u32 },
}

/// Iterates the blocks of a pcapng stream. After the first error (or the end) it returns
/// `Ok(None)`.
pub struct Reader<R: Read> {
    inner: R,
    offset: u64,
    big_endian: bool,
    in_section: bool,
    interfaces: Vec<IfClock>,
    done: bool,
}

/// A block's total length: a multiple of 4, within bounds, and at least its kind's minimum.
fn check_length(start: u64, block_type: u32, length: u32) -> Result<(), PcapngError> {
    if !length.is_multiple_of(4) {
        return Err(PcapngError::UnalignedLength {
            offset: start,
            length,
        });
    }
    if length > MAX_BLOCK_LEN {
        return Err(PcapngError::TooLarge {
            offset: start,
            length,
        });
    }
    let (kind, min) = match block_type {
        SHB_TYPE => ("Section Header Block", 28),
        IDB_TYPE => ("Interface Description Block", 20),
        EPB_TYPE => ("Enhanced Packet Block", 32),
        _ => ("block", 12),
    };
    if length < min {
        return Err(PcapngError::TooShort {
            offset: start,
            kind,
            length,
            min,
        });
    }
    Ok(())
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            big_endian: false,
            in_section: false,
            interfaces: Vec::new(),
            done: false,
        }
    }

    /// The next block, `Ok(None)` at a clean end of input, or why the input is unusable.
    pub fn next_block(&mut self) -> Result<Option<Block>, PcapngError> {
        if self.done {
            return Ok(None);
        }
        let r = self.read_block();
        if !matches!(r, Ok(Some(_))) {
            self.done = true;
        }
        r
    }

    fn read_block(&mut self) -> Result<Option<Block>, PcapngError> {
        let start = self.offset;
        let mut head = [0u8; 12];
        let n = self.fill(&mut head[..8])?;
        if n == 0 {
            return if self.in_section {
                Ok(None)
            } else {
                Err(PcapngError::Empty)
            };
        }
        let is_shb = head[..4] == SHB_TYPE.to_le_bytes();
        if n >= 4 && !self.in_section && !is_shb {
            let found = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            return Err(PcapngError::NotPcapng {
                found,
                hint: hint_for(found),
            });
        }
        let truncated = |available: usize| PcapngError::Truncated {
            offset: start,
            claimed: None,
            available: available as u64,
        };
        if n < 8 {
            return Err(truncated(n));
        }
        let mut head_len = 8;
        if is_shb {
            let m = self.fill(&mut head[8..12])?;
            if m < 4 {
                return Err(truncated(8 + m));
            }
            let bom = [head[8], head[9], head[10], head[11]];
            self.big_endian = if bom == BYTE_ORDER_MAGIC.to_le_bytes() {
                false
            } else if bom == BYTE_ORDER_MAGIC.to_be_bytes() {
                true
            } else {
                return Err(PcapngError::BadByteOrderMagic {
                    offset: start,
                    found: u32::from_le_bytes(bom),
                });
            };
            head_len = 12;
        }
        let be = self.big_endian;
        let block_type = u32_of(be, [head[0], head[1], head[2], head[3]]);
        let length = u32_of(be, [head[4], head[5], head[6], head[7]]);
        check_length(start, block_type, length)?;
        let body = self.body(start, head_len, length)?;
        let content = &body[..body.len().saturating_sub(4)];
        let cur = Cur {
            buf: content,
            be,
            offset: start,
        };
        let block = match block_type {
            SHB_TYPE => self.section(cur)?,
            IDB_TYPE => self.interface(cur)?,
            EPB_TYPE => self.packet(cur)?,
            _ => Block::Other { block_type },
        };
        if is_shb {
            self.in_section = true;
        }
        Ok(Some(block))
    }

    /// The rest of a block of `length` whose first `head_len` bytes are read, with its
    /// trailing length checked. `take` + `read_to_end` grows the buffer only as data arrives.
    fn body(&mut self, start: u64, head_len: usize, length: u32) -> Result<Vec<u8>, PcapngError> {
        let rest = u64::from(length) - head_len as u64;
        let mut body = Vec::new();
        let got = (&mut self.inner)
            .take(rest)
            .read_to_end(&mut body)
            .map_err(|source| PcapngError::Io {
                offset: start + head_len as u64,
                source,
            })?;
        self.offset = start + head_len as u64 + got as u64;
        if (got as u64) < rest {
            return Err(PcapngError::Truncated {
                offset: start,
                claimed: Some(length),
                available: head_len as u64 + got as u64,
            });
        }
        let trailer = &body[body.len().saturating_sub(4)..];
        let trailing = u32_of(self.big_endian, trailer.try_into().unwrap_or([0; 4]));
        if trailing != length {
            return Err(PcapngError::TrailerMismatch {
                offset: start,
                leading: length,
                trailing,
            });
        }
        Ok(body)
    }

    /// `content` starts after the byte-order magic.
    fn section(&mut self, mut c: Cur) -> Result<Block, PcapngError> {
        let major = c.u16()?;
        let minor = c.u16()?;
        c.take(8)?; // section length, unused
        if major != 1 {
            return Err(PcapngError::UnsupportedVersion {
                offset: c.offset,
                major,
                minor,
            });
        }
        let (mut comment, mut app) = (None, None);
        c.options(|code, v| {
            match code {
                OPT_COMMENT if comment.is_none() => comment = Some(text(v)),
                SHB_USERAPPL => app = Some(text(v)),
                _ => {}
            }
            Ok(())
        })?;
        self.interfaces.clear();
        Ok(Block::Section { comment, app })
    }

    fn interface(&mut self, mut c: Cur) -> Result<Block, PcapngError> {
        let linktype = c.u16()?;
        c.u16()?; // reserved
        let snaplen = c.u32()?;
        let (be, offset) = (c.be, c.offset);
        let (mut name, mut description) = (None, None);
        let mut clock = IfClock {
            tsresol: DEFAULT_TSRESOL,
            tsoffset_s: 0,
        };
        c.options(|code, v| {
            match code {
                IF_NAME => name = Some(text(v)),
                IF_DESCRIPTION => description = Some(text(v)),
                IF_TSRESOL => [clock.tsresol] = fixed::<1>(offset, code, v)?,
                IF_TSOFFSET => {
                    let b = fixed::<8>(offset, code, v)?;
                    clock.tsoffset_s = if be {
                        i64::from_be_bytes(b)
                    } else {
                        i64::from_le_bytes(b)
                    };
                }
                _ => {}
            }
            Ok(())
        })?;
        let id = u32::try_from(self.interfaces.len()).unwrap_or(u32::MAX);
        self.interfaces.push(clock);
        Ok(Block::Interface {
            id,
            name,
            description,
            linktype,
            snaplen,
            tsresol: clock.tsresol,
        })
    }

    fn packet(&mut self, mut c: Cur) -> Result<Block, PcapngError> {
        let offset = c.offset;
        let interface = c.u32()?;
        let ts_high = c.u32()?;
        let ts_low = c.u32()?;
        let caplen = c.u32()?;
        let orig_len = c.u32()?;
        let clock = usize::try_from(interface)
            .ok()
            .and_then(|i| self.interfaces.get(i))
            .copied()
            .ok_or(PcapngError::UnknownInterface {
                offset,
                id: interface,
                count: self.interfaces.len(),
            })?;
        let room = c.buf.len();
        let padded = usize::try_from(caplen)
            .ok()
            .and_then(|n| n.checked_add(3))
            .map(|n| n & !3)
            .filter(|&n| n <= room)
            .ok_or(PcapngError::CaptureOverrun {
                offset,
                caplen,
                room,
            })?;
        let data = c
            .take(padded)?
            .get(..caplen as usize)
            .unwrap_or(&[])
            .to_vec();
        let ts = (u64::from(ts_high) << 32) | u64::from(ts_low);
        let ts_ns = to_ns(ts, clock).ok_or(PcapngError::TimestampRange { offset })?;
        let be = c.be;
        let mut comments = Vec::new();
        let mut direction = None;
        c.options(|code, v| {
            match code {
                OPT_COMMENT => comments.push(text(v)),
                EPB_FLAGS => {
                    let b = fixed::<4>(offset, code, v)?;
                    direction = match u32_of(be, b) & 0b11 {
                        0b01 => Some(Direction::Inbound),
                        0b10 => Some(Direction::Outbound),
                        _ => None,
                    };
                }
                _ => {}
            }
            Ok(())
        })?;
        Ok(Block::Packet {
            interface,
            ts_ns,
            data,
            orig_len,
            direction,
            comments,
        })
    }

    /// Reads until `buf` is full or the input ends; returns how many bytes were read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, PcapngError> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k.min(buf.len() - n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(PcapngError::Io {
                        offset: self.offset + n as u64,
                        source,
                    })
                }
            }
        }
        self.offset += n as u64;
        Ok(n)
    }
}
