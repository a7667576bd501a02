//! Numbers written into strings without `fmt`: the text of every shown packet has a dozen
//! (addresses, ports, its time), and `fmt`'s machinery was most of what writing them cost.

/// Short ASCII text built on the stack, then copied into its String in one piece: a shown
/// packet has a dozen addresses and a time, and a push per digit (or a copy per number) was
/// most of what writing them cost (perf).
pub struct Ascii<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Ascii<N> {
    pub fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
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
