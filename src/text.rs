//! Cutting and escaping text that comes from outside: worker output, error
//! messages, titles.
//!
//! Two rules, kept here so every place that cuts or prints such text
//! follows them the same way:
//!
//! - **Cut at character boundaries.** `String::truncate` panics in the
//!   middle of a multi-byte character, and a byte slice cut there turns
//!   into a replacement character (or worse, invalid UTF-8 in a title).
//!   [`truncate_at_char_boundary`], [`cut`] and [`utf8_cut_point`] never
//!   split a character.
//! - **One event, one line, no terminal tricks.** A carriage return, a
//!   newline, a NUL or an escape sequence written raw into a log lets
//!   whoever controls the text forge log lines or repaint the operator's
//!   terminal. [`escape_line`] and [`escape_controls`] show every control
//!   character visibly instead (`\r`, `\n`, `\0`, `\x1b`, `\u{9b}`), except
//!   the tab, which can neither end a line nor move back over it, and keeps
//!   tab-separated output readable. A backslash itself is left alone: the
//!   aim is that nothing invisible or line-breaking gets through, not a
//!   reversible encoding.

use std::borrow::Cow;

/// The longest line kept from a worker's output, in bytes; longer ones are
/// cut (at a character boundary) and marked with [`CUT_MARK`].
pub const MAX_LINE: usize = 16 * 1024;

/// Appended to text that was cut.
pub const CUT_MARK: &str = " [cut]";

/// The largest `n <= max` at which `s` can be cut without splitting a
/// character.
pub fn floor_char_boundary(s: &str, max: usize) -> usize {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// Shortens `s` to at most `max_bytes` bytes, cutting at a character
/// boundary (so possibly a few bytes shorter). Never panics.
pub fn truncate_at_char_boundary(s: &mut String, max_bytes: usize) {
    let n = floor_char_boundary(s, max_bytes);
    s.truncate(n);
}

/// The first at most `max_bytes` bytes of `s`, cut at a character boundary.
pub fn cut(s: &str, max_bytes: usize) -> &str {
    &s[..floor_char_boundary(s, max_bytes)]
}

/// Where to cut raw bytes (a pipe's buffer, not yet known to be UTF-8) to
/// at most `max` bytes without splitting a UTF-8 sequence: `max` itself,
/// or up to three bytes less when `max` falls inside a multi-byte
/// character. Bytes that are not UTF-8 anyway are cut at `max`. Returns
/// `bytes.len()` when that is not more than `max`; never returns 0 for a
/// `max` of 4 or more, so a loop cutting a long buffer always progresses.
pub fn utf8_cut_point(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    // A continuation byte is 0b10xx_xxxx. Back up to the start of the
    // character that straddles `max`, if it is a well-formed one.
    let mut start = max;
    while start > 0 && max - start < 3 && bytes[start] & 0xC0 == 0x80 {
        start -= 1;
    }
    if start == max {
        return max;
    }
    let lead = bytes[start];
    let width = match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return max, // not the start of a UTF-8 sequence: plain bytes
    };
    if start + width > max && start > 0 {
        start
    } else {
        max
    }
}

/// Whether `c` is shown escaped: C0 controls but the tab, DEL and C1
/// controls.
fn is_escaped(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// Appends the visible form of the control character `c` to `out`.
fn push_escaped(out: &mut String, c: char) {
    use std::fmt::Write;
    match c {
        '\r' => out.push_str("\\r"),
        '\n' => out.push_str("\\n"),
        '\0' => out.push_str("\\0"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// `s` with every control character shown escaped, borrowed when there is
/// none (the common case costs one scan and no allocation).
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    let Some(first) = s.find(is_escaped) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 8);
    out.push_str(&s[..first]);
    for c in s[first..].chars() {
        if is_escaped(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One line of a worker's captured output (without its newline), as it may
/// be logged: invalid UTF-8 replaced (lossy), control characters escaped,
/// and cut at a character boundary to [`MAX_LINE`] bytes (with
/// [`CUT_MARK`]).
#[cfg(test)]
pub fn escape_line(bytes: &[u8]) -> String {
    escape_line_max(bytes, MAX_LINE)
}

/// [`escape_line`] with a chosen maximum length in bytes (the result,
/// [`CUT_MARK`] included, is at most `max.max(CUT_MARK.len())` bytes). An
/// escape sequence is never split.
pub fn escape_line_max(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let escaped = escape_controls(&text);
    if escaped.len() <= max {
        return escaped.into_owned();
    }
    // Cut again on the escaped form, without splitting an escape: rebuild
    // up to the budget.
    let budget = max.saturating_sub(CUT_MARK.len());
    let mut out = String::with_capacity(budget + CUT_MARK.len());
    let mut piece = String::new();
    for c in text.chars() {
        piece.clear();
        if is_escaped(c) {
            push_escaped(&mut piece, c);
        } else {
            piece.push(c);
        }
        if out.len() + piece.len() > budget {
            break;
        }
        out.push_str(&piece);
    }
    out.push_str(CUT_MARK);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_never_splits_a_character() {
        let mut s = "é".repeat(1000); // 2000 bytes
        truncate_at_char_boundary(&mut s, 999);
        assert_eq!(s.len(), 998);
        assert!(s.chars().all(|c| c == 'é'));
        let mut s = String::from("a€b"); // € is 3 bytes
        for max in 0..=6 {
            let mut t = s.clone();
            truncate_at_char_boundary(&mut t, max);
            assert!(t.len() <= max, "{max}");
            assert!(s.starts_with(&t));
        }
        truncate_at_char_boundary(&mut s, 100);
        assert_eq!(s, "a€b");
        assert_eq!(cut("a€b", 3), "a");
        assert_eq!(cut("a€b", 4), "a€");
        assert_eq!(cut("", 4), "");
    }

    #[test]
    fn raw_cut_points_respect_utf8_sequences() {
        let e = "é".repeat(10); // 20 bytes, each char 2
        assert_eq!(utf8_cut_point(e.as_bytes(), 7), 6);
        assert_eq!(utf8_cut_point(e.as_bytes(), 8), 8);
        assert_eq!(utf8_cut_point(e.as_bytes(), 100), 20);
        let emoji = "😀😀"; // 4 + 4
        for max in 4..8 {
            assert_eq!(utf8_cut_point(emoji.as_bytes(), max), 4, "{max}");
        }
        // Not UTF-8: cut where asked.
        let junk = [0x80u8; 20];
        assert_eq!(utf8_cut_point(&junk, 7), 7);
        let junk = [0xFFu8; 20];
        assert_eq!(utf8_cut_point(&junk, 7), 7);
        // Always progresses.
        let s = "😀".repeat(100);
        let mut rest = s.as_bytes();
        while !rest.is_empty() {
            let n = utf8_cut_point(rest, 5);
            assert!(n > 0);
            assert!(std::str::from_utf8(&rest[..n]).is_ok());
            rest = &rest[n..];
        }
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(
            escape_line(b"ok\r2026-11-23T21:19:34.123Z ERROR [1] parent: forged"),
            "ok\\r2026-11-23T21:19:34.123Z ERROR [1] parent: forged"
        );
        assert_eq!(
            escape_line(b"a\0b\x1b[31mred\x7f\tx\n"),
            "a\\0b\\x1b[31mred\\x7f\tx\\n"
        );
        assert_eq!(escape_line("c1 \u{9b}2J".as_bytes()), "c1 \\u{9b}2J");
        assert_eq!(escape_line(b"bad \xff utf8"), "bad \u{fffd} utf8");
        assert_eq!(escape_line("plain é 😀 \\ text".as_bytes()), "plain é 😀 \\ text");
        assert!(matches!(escape_controls("nothing to do"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("two\nlines"), "two\\nlines");
    }

    #[test]
    fn long_lines_are_cut_whole_characters_and_escapes() {
        let line = "é".repeat(100);
        let out = escape_line_max(line.as_bytes(), 51);
        assert!(out.ends_with(CUT_MARK), "{out}");
        assert!(out.len() <= 51);
        assert!(out.trim_end_matches(CUT_MARK).chars().all(|c| c == 'é'));

        let line = "\x1b".repeat(100);
        let out = escape_line_max(line.as_bytes(), 30);
        let body = out.trim_end_matches(CUT_MARK);
        assert_eq!(body, "\\x1b".repeat(6), "escapes are never split");

        let line = "x".repeat(10);
        assert_eq!(escape_line_max(line.as_bytes(), 10), line);
    }
}
