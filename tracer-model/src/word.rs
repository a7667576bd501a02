//! Byte tests eight bytes at a time, for the presenters' checks of text they write (JSON's
//! escaping, the terminal's unsafe characters): each is exact for whether any byte of the
//! word passes it (a borrow can mark a byte after a true one, never a word with none).

const ONES: u64 = u64::from_ne_bytes([1; 8]);
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);

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
