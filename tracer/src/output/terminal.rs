//! Text from elsewhere (recordings, the ruleset, Docker, interface names) is made safe before
//! it reaches a terminal: control characters (C0, DEL, C1) and the bidirectional overrides
//! that reorder what is shown are written as visible escapes (`\x1b`, `\u{202e}`), so a
//! shared recording cannot retitle, clear or reprogram the terminal, or forge lines.

use std::borrow::Cow;

/// Characters that must not reach a terminal as they are.
fn unsafe_char(c: char, keep_newline: bool) -> bool {
    (c.is_control() && !(keep_newline && c == '\n'))
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether `s` has an unsafe character, judged on its UTF-8 bytes: every shown packet's text
/// goes through here, and decoding it char by char cost as much as writing it. C0 and DEL are
/// single bytes; C1 is `C2 80..9F`; the overrides are `E2 80 AA..AE` and `E2 81 A6..A9`.
/// Eight bytes are passed over at a time when none of them can start one (no byte below 0x20,
/// no DEL, no C2, no E2: a line's `µs` and arrows send only their own word to the byte test).
fn has_unsafe(s: &str, keep_newline: bool) -> bool {
    use tracer_model::word::{any_below, any_is, words};
    let b = s.as_bytes();
    let at = |i: usize| match b[i] {
        b'\n' => !keep_newline,
        0..=0x1f | 0x7f => true,
        0xc2 => matches!(b.get(i + 1), Some(0x80..=0x9f)),
        0xe2 => matches!(
            (b.get(i + 1), b.get(i + 2)),
            (Some(0x80), Some(0xaa..=0xae)) | (Some(0x81), Some(0xa6..=0xa9))
        ),
        _ => false,
    };
    let (whole, rest) = words(b);
    let maybe =
        |v: u64| any_below(v, 0x20) || any_is(v, 0x7f) || any_is(v, 0xc2) || any_is(v, 0xe2);
    let found = whole
        .enumerate()
        .any(|(k, v)| maybe(v) && (k * 8..k * 8 + 8).any(at));
    found || (b.len() - rest.len()..b.len()).any(at)
}

/// `s` with every unsafe character escaped (a newline kept if asked: the renderer's own).
pub fn escape(s: &str, keep_newline: bool) -> Cow<'_, str> {
    if !has_unsafe(s, keep_newline) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !unsafe_char(c, keep_newline) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// One field, made safe in place (newlines too: a field is one line).
pub fn clean(s: &mut String) {
    if let Cow::Owned(o) = escape(s, false) {
        *s = o;
    }
}

/// Every text field of a packet, made safe in place.
pub fn clean_packet(p: &mut crate::model::Packet) {
    p.visit_strings(&mut |s| match escape(s, false) {
        Cow::Owned(o) => Some(o),
        Cow::Borrowed(_) => None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-wise check says what the char-wise definition says, for every character of
    /// the first planes (C0, C1, the overrides and their neighbours among them).
    #[test]
    fn the_byte_check_is_the_char_check() {
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            // The character at every place of a word, with and without a µ before it.
            let places = (0..9).flat_map(|pad| ["", "µ"].map(|pre| (pre, pad)));
            for (keep, (pre, pad)) in places.flat_map(|p| [false, true].map(|k| (k, p))) {
                let s = format!("{pre}{}{c}→b", "a".repeat(pad));
                assert_eq!(
                    has_unsafe(&s, keep),
                    s.chars().any(|x| unsafe_char(x, keep)),
                    "{:#x} keep_newline {keep}",
                    c as u32
                );
            }
        }
    }

    #[test]
    fn escapes_and_bidi_overrides_are_made_visible() {
        let hostile = "ens\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m\u{202e}cron\r\nfake";
        let e = escape(hostile, false);
        assert_eq!(
            e,
            "ens\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u{202e}cron\\x0d\\x0afake"
        );
        assert!(!e.chars().any(char::is_control));
        assert_eq!(escape("a\nb\u{1b}", true), "a\nb\\x1b");
        assert!(matches!(escape("plain · text ✗", false), Cow::Borrowed(_)));
    }

    #[test]
    fn every_field_of_a_packet_is_cleaned() {
        let mut p = crate::tui::fixtures::dropped();
        p.container = Some("x\u{1b}[2J".into());
        if let Some(d) = p.drop.as_mut() {
            d.rule = Some("-A X -m comment --comment \"\u{1b}]0;t\u{7}\" -j DROP".into());
        }
        // The fields usually borrowed from flowtrace's own words are a recording's text too.
        for h in &mut p.hops {
            match h {
                crate::model::Hop::Nf(n) => n.table = "f\u{1b}]0;t\u{7}".to_owned().into(),
                crate::model::Hop::Tc(t) => t.dir = "in\u{9b}2J".to_owned().into(),
            }
        }
        clean_packet(&mut p);
        let text = crate::output::text::packet(&p);
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text}");
        assert!(text.contains("x\\x1b[2J"), "{text}");
        let mut fields = Vec::new();
        p.visit_strings(&mut |s| {
            fields.push(s.to_owned());
            None
        });
        assert!(fields.iter().any(|s| s == "f\\x1b]0;t\\x07"), "{fields:?}");
        assert!(fields.iter().any(|s| s == "in\\x9b2J"), "{fields:?}");
        assert!(
            !fields.iter().any(|s| s.chars().any(char::is_control)),
            "{fields:?}"
        );
    }
}
