//! Numbers written into strings without `fmt`: the text of every shown packet has a dozen
//! (addresses, ports, its time), and `fmt`'s machinery was most of what writing them cost.

/// `n` in decimal, at least `width` (at most 10) digits, zero-padded.
pub fn push_padded(s: &mut String, n: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let at = at.min(digits.len().saturating_sub(width));
    // ASCII digits only: always valid UTF-8, and one copy instead of a push per digit.
    s.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_as_format_pads() {
        for n in [0u32, 7, 42, 999, 1000, 65535, u32::MAX] {
            for w in 0..=10 {
                let mut s = String::new();
                push_padded(&mut s, n, w);
                assert_eq!(s, format!("{n:0w$}"));
            }
        }
    }
}
