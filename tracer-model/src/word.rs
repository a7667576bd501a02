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

/// Whether any byte of `v` is below `n` (exact for n ≤ 0x80).
#[inline(always)]
pub const fn any_below(v: u64, n: u8) -> bool {
    v.wrapping_sub(ONES * n as u64) & !v & HIGH != 0
}

/// Whether any byte of `v` is `x`.
#[inline(always)]
pub const fn any_is(v: u64, x: u8) -> bool {
    any_below(v ^ (ONES * x as u64), 1)
}
