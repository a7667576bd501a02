//! Writing one little-endian pcapng section, block by block.

use std::io::{self, Write};

use super::{
    Direction, BYTE_ORDER_MAGIC, EPB_FLAGS, EPB_TYPE, IDB_TYPE, IF_DESCRIPTION, IF_NAME,
    IF_TSRESOL, MAX_BLOCK_LEN, OPT_COMMENT, OPT_ENDOFOPT, SHB_TYPE, SHB_USERAPPL,
};

/// Ethernet frames (tc observations).
pub const LINKTYPE_ETHERNET: u16 = 1;
/// Raw IPv4/IPv6 packets with no link-layer header (netfilter observations).
pub const LINKTYPE_RAW: u16 = 101;
/// `if_tsresol` the writer declares: 10^-9 s, so timestamps are plain nanoseconds.
const TSRESOL_NS: u8 = 9;

/// One packet to record.
#[derive(Clone, Copy, Debug)]
pub struct PacketRecord<'a> {
    /// An id returned by [`Writer::add_interface`].
    pub interface: u32,
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The captured bytes (possibly fewer than `orig_len`).
    pub data: &'a [u8],
    /// The packet's length on the wire. A value below `data.len()` is written as `data.len()`.
    pub orig_len: u32,
    pub direction: Option<Direction>,
    /// One `opt_comment` each, UTF-8 text as bytes (a comment built as JSON bytes is not
    /// checked again); each is cut (at a character boundary) to the 65535 bytes an option can
    /// hold.
    pub comments: &'a [&'a [u8]],
}

/// Writes a pcapng section to `W`. Each block goes out with one `write_all`.
pub struct Writer<W: Write> {
    inner: W,
    written: u64,
    interfaces: u32,
    /// The last block's buffer, kept for the next one: a packet block is built in it without
    /// allocating (or growing) a buffer for each.
    spare: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// Starts a section whose `shb_userappl` is "flowtrace <version>". An empty comment is
    /// left out.
    #[cfg(test)]
    pub fn new(w: W, shb_comment: &str) -> io::Result<Self> {
        let app = concat!("flowtrace ", env!("CARGO_PKG_VERSION"));
        Self::new_with_app(w, shb_comment, app)
    }

    /// Starts a section with an explicit `shb_userappl` (left out when empty).
    pub fn new_with_app(w: W, shb_comment: &str, app: &str) -> io::Result<Self> {
        let mut b = BlockBuf::new(Vec::new(), SHB_TYPE);
        b.u32(BYTE_ORDER_MAGIC);
        b.u16(1); // major version
        b.u16(0); // minor version
        b.u64(u64::MAX); // section length -1: not specified
        b.str_option(OPT_COMMENT, shb_comment);
        b.str_option(SHB_USERAPPL, app);
        let mut me = Self {
            inner: w,
            written: 0,
            interfaces: 0,
            spare: Vec::new(),
        };
        me.emit(b)?;
        Ok(me)
    }

    /// Adds an Interface Description Block with nanosecond timestamps and returns its id
    /// (0, 1, 2… in order). `snaplen` 0 means "no limit". Empty name/description are left out.
    pub fn add_interface(
        &mut self,
        name: &str,
        description: &str,
        linktype: u16,
        snaplen: u32,
    ) -> io::Result<u32> {
        let id = self.interfaces;
        let mut b = BlockBuf::new(std::mem::take(&mut self.spare), IDB_TYPE);
        b.u16(linktype);
        b.u16(0); // reserved
        b.u32(snaplen);
        b.str_option(IF_NAME, name);
        b.str_option(IF_DESCRIPTION, description);
        b.option(IF_TSRESOL, &[TSRESOL_NS]);
        self.emit(b)?;
        self.interfaces = id.saturating_add(1);
        Ok(id)
    }

    /// Writes an Enhanced Packet Block.
    pub fn packet(&mut self, p: &PacketRecord) -> io::Result<()> {
        if p.interface >= self.interfaces {
            return Err(invalid(format!(
                "packet refers to interface {} but only {} were added",
                p.interface, self.interfaces
            )));
        }
        let caplen = u32::try_from(p.data.len())
            .ok()
            .filter(|&n| n < MAX_BLOCK_LEN - 1024)
            .ok_or_else(|| invalid(format!("packet of {} bytes is too large", p.data.len())))?;
        let mut b = BlockBuf::new(std::mem::take(&mut self.spare), EPB_TYPE);
        b.u32(p.interface);
        b.u32((p.ts_ns >> 32) as u32);
        b.u32(p.ts_ns as u32);
        b.u32(caplen);
        b.u32(p.orig_len.max(caplen));
        b.padded(p.data);
        for c in p.comments {
            b.text_option(OPT_COMMENT, c);
        }
        if let Some(d) = p.direction {
            let flags: u32 = match d {
                Direction::Inbound => 0b01,
                Direction::Outbound => 0b10,
            };
            b.option(EPB_FLAGS, &flags.to_le_bytes());
        }
        self.emit(b)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Bytes of complete blocks handed to the sink so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    fn emit(&mut self, b: BlockBuf) -> io::Result<()> {
        let block = b.finish()?;
        let sent = self.inner.write_all(&block);
        let len = block.len() as u64;
        self.spare = block;
        sent?;
        self.written += len;
        Ok(())
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// A block being built: type, a placeholder length, the body, then options.
struct BlockBuf {
    buf: Vec<u8>,
    has_options: bool,
}

impl BlockBuf {
    /// Starts a block in `buf` (emptied first; its capacity is what is reused).
    fn new(mut buf: Vec<u8>, block_type: u32) -> Self {
        buf.clear();
        buf.extend_from_slice(&block_type.to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        Self {
            buf,
            has_options: false,
        }
    }

    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Bytes followed by zeros up to the next multiple of 4.
    fn padded(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
        let pad = (4 - v.len() % 4) % 4;
        self.buf.extend_from_slice(&[0; 3][..pad]);
    }

    /// An option; `value` must fit in a u16 length (callers cut strings first).
    fn option(&mut self, code: u16, value: &[u8]) {
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        let value = &value[..usize::from(len)];
        self.u16(code);
        self.u16(len);
        self.padded(value);
        self.has_options = true;
    }

    /// A UTF-8 option, cut at a character boundary to fit; left out when empty.
    fn str_option(&mut self, code: u16, s: &str) {
        self.text_option(code, s.as_bytes());
    }

    /// `str_option` for UTF-8 text held as bytes.
    fn text_option(&mut self, code: u16, s: &[u8]) {
        if !s.is_empty() {
            self.option(code, clamp_utf8(s, usize::from(u16::MAX)));
        }
    }

    /// Ends the options, fills in both length fields and returns the whole block.
    fn finish(mut self) -> io::Result<Vec<u8>> {
        if self.has_options {
            self.u16(OPT_ENDOFOPT);
            self.u16(0);
        }
        let total = u32::try_from(self.buf.len() + 4)
            .ok()
            .filter(|&n| n <= MAX_BLOCK_LEN)
            .ok_or_else(|| invalid(format!("block of {} bytes is too large", self.buf.len())))?;
        self.buf[4..8].copy_from_slice(&total.to_le_bytes());
        self.u32(total);
        Ok(self.buf)
    }
}

/// The longest prefix of UTF-8 text `s` of at most `max` bytes that ends at a character
/// boundary: before a byte that does not continue a character (`0b10xx_xxxx`).
fn clamp_utf8(s: &[u8], max: usize) -> &[u8] {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && s[end] & 0xc0 == 0x80 {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn clamp_keeps_whole_characters() {
        let clamp = |s: &str, max| String::from_utf8(clamp_utf8(s.as_bytes(), max).to_vec());
        assert_eq!(clamp("a→b", 2).as_deref(), Ok("a"));
        assert_eq!(clamp("a→b", 3).as_deref(), Ok("a"));
        assert_eq!(clamp("a→b", 4).as_deref(), Ok("a→"));
        assert_eq!(clamp("ab", 9).as_deref(), Ok("ab"));
        assert_eq!(clamp("→", 2).as_deref(), Ok(""));
        // Every cut of mixed text is whole characters, the longest that fits.
        let text = "x→é😀y".repeat(3);
        for max in 0..=text.len() {
            let cut = clamp(&text, max).expect("whole characters");
            assert!(cut.len() <= max && text.starts_with(&cut), "{max}");
            let next = text[cut.len()..].chars().next().map_or(0, char::len_utf8);
            assert!(
                cut.len() == text.len() || cut.len() + next > max,
                "the longest: {max}"
            );
        }
    }

    #[test]
    fn empty_section_layout() {
        let w = Writer::new_with_app(Vec::new(), "", "").unwrap();
        assert_eq!(w.bytes_written(), 28);
        let b = w.into_inner();
        assert_eq!(&b[0..4], &[0x0A, 0x0D, 0x0D, 0x0A]);
        assert_eq!(&b[4..8], &28u32.to_le_bytes());
        assert_eq!(&b[8..12], &[0x4D, 0x3C, 0x2B, 0x1A]);
        assert_eq!(&b[16..24], &[0xFF; 8]);
        assert_eq!(&b[24..28], &28u32.to_le_bytes());
    }

    #[test]
    fn packet_on_unknown_interface_is_refused() {
        let mut w = Writer::new(Vec::new(), "x").unwrap();
        let before = w.bytes_written();
        let p = PacketRecord {
            interface: 0,
            ts_ns: 1,
            data: &[1],
            orig_len: 1,
            direction: None,
            comments: &[],
        };
        let e = w.packet(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(w.bytes_written(), before);
    }
}
