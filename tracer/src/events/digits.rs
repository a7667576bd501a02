//! Numbers written into strings without `fmt`: the text of every shown packet has a dozen
//! (addresses, ports, its time), and `fmt`'s machinery was most of what writing them cost.

/// Short ASCII text built on the stack, then copied into its String in one piece: a shown
/// packet has a dozen addresses and a time, and a push per digit (or a copy per number) was
/// most of what writing them cost (perf).
#[derive(Clone, Copy)]
pub struct Ascii<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Ascii<N> {
    pub const EMPTY: Self = Self {
        buf: [0; N],
        len: 0,
    };

    pub fn new() -> Self {
        Self::EMPTY
    }

    /// An ASCII byte (anything else is left out, so the text stays valid UTF-8); past `N`
    /// bytes, nothing more is kept.
    pub fn byte(&mut self, b: u8) {
        if b.is_ascii() && self.len < N {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    /// `n` in decimal, at least `width` (at most 10) digits, zero-padded; nothing if it does
    /// not fit.
    pub fn number(&mut self, n: u32, width: usize) {
        let count = (n.checked_ilog10().unwrap_or(0) as usize + 1).max(width.min(10));
        let Some(field) = self.buf.get_mut(self.len..self.len + count) else {
            return;
        };
        let mut n = n;
        for d in field.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        self.len += count;
    }

    /// `n` as `format!("{n:#x}")` writes it (`0x` and lower-case digits, no padding): a
    /// packet's skb address; nothing if it does not fit.
    pub fn hex(&mut self, n: u64) {
        let digits = (n.checked_ilog2().unwrap_or(0) / 4 + 1) as usize;
        let Some(field) = self.buf.get_mut(self.len..self.len + 2 + digits) else {
            return;
        };
        field[..2].copy_from_slice(b"0x");
        let mut n = n;
        for d in field[2..].iter_mut().rev() {
            *d = b"0123456789abcdef"[(n & 0xf) as usize];
            n >>= 4;
        }
        self.len += 2 + digits;
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl<const N: usize> Default for Ascii<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_keeps_ascii_up_to_its_size() {
        let mut a = Ascii::<6>::new();
        a.number(172, 1);
        a.byte(b'.');
        a.byte(0xc3); // not ASCII: left out
        a.number(18, 3); // does not fit: left out whole
        assert_eq!(a.as_str(), "172.");
        a.number(18, 1);
        assert_eq!(a.as_str(), "172.18");
    }

    #[test]
    fn hex_as_format_writes_it() {
        let mut all = vec![0u64, 1, 0xf, 0x10, 0xffff_8880_1234_5678, u64::MAX];
        all.extend((0..64).map(|b| 1u64 << b));
        all.extend((1..64).map(|b| (1u64 << b) - 1));
        for n in all {
            let mut s = Ascii::<18>::new();
            s.hex(n);
            assert_eq!(s.as_str(), format!("{n:#x}"));
        }
        let mut short = Ascii::<4>::new();
        short.hex(0x1234);
        assert_eq!(short.as_str(), "", "does not fit: left out whole");
    }

    #[test]
    fn padded_as_format_pads() {
        for n in [0u32, 7, 42, 999, 1000, 65535, u32::MAX] {
            for w in 0..=10 {
                let mut s = Ascii::<10>::new();
                s.number(n, w);
                assert_eq!(s.as_str(), format!("{n:0w$}"));
            }
        }
    }
}
