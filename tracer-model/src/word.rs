//! Byte tests eight bytes at a time, for the presenters' checks of text they write (JSON's
//! escaping, the terminal's unsafe characters): each is exact for whether any byte of the
//! word passes it (a borrow can mark a byte after a true one, never a word with none).

const ONES: u64 = u64::from_ne_bytes([1; 8]);
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);

/// `b` as whole eight-byte words, in order, and the bytes after the last one.
pub fn words(b: &[u8]) -> (impl Iterator<Item = u64> + '_, &[u8]) {
    let chunks = b.chunks_exact(8);
    let rest = chunks.remainder();
    // (Every chunk is eight bytes; a zero word would only send it to the byte test.)
    let word = |c: &[u8]| u64::from_ne_bytes(<[u8; 8]>::try_from(c).unwrap_or([0; 8]));
    (chunks.map(word), rest)
}

/// Whether `hit` is true of any eight-byte word of `b`, every byte of `b` in at least one of
/// them: a tail after the last whole word is tested as the last eight bytes (overlapping the
/// word before it), or, in a text shorter than a word, padded with `pad`, which must pass no
/// test. A packet's texts are short (an address, an interface's name): testing their tails a
/// byte at a time was most of the escaping check's time (callgrind, bench-user).
#[inline(always)]
pub fn any_word(b: &[u8], pad: u8, hit: impl Fn(u64) -> bool) -> bool {
    let n = b.len();
    let at = |i: usize| {
        let w = b.get(i..i + 8).and_then(|w| <[u8; 8]>::try_from(w).ok());
        u64::from_ne_bytes(w.unwrap_or([pad; 8]))
    };
    if n < 8 {
        let mut short = [pad; 8];
        for (d, s) in short.iter_mut().zip(b) {
            *d = *s;
        }
        return n > 0 && hit(u64::from_ne_bytes(short));
    }
    let mut i = 0;
    while i + 8 < n {
        if hit(at(i)) {
            return true;
        }
        i += 8;
    }
    hit(at(n - 8))
}

/// Each byte of `v` that is below `n` (exact for n ≤ 0x80) has its high bit set in the result
/// (a borrow may set the high bit of a byte after one that is); 0 if none is.
#[inline(always)]
pub const fn below_bits(v: u64, n: u8) -> u64 {
    v.wrapping_sub(ONES * n as u64) & !v & HIGH
}

/// The same for bytes equal to `x`.
#[inline(always)]
pub const fn is_bits(v: u64, x: u8) -> u64 {
    below_bits(v ^ (ONES * x as u64), 1)
}

/// Whether any byte of `v` is below `n` (exact for n ≤ 0x80).
#[inline(always)]
pub const fn any_below(v: u64, n: u8) -> bool {
    below_bits(v, n) != 0
}

/// Whether any byte of `v` is `x`.
#[inline(always)]
pub const fn any_is(v: u64, x: u8) -> bool {
    is_bits(v, x) != 0
}
