//! Human-readable text that reaches a terminal or a page: what the API accepts
//! ([`check_label`]) and how it is shown ([`escape_terminal`], [`escape_html`]).
//!
//! A label (a tenant's or a key's name, a model's description...) holds at most
//! its field's number of characters and none of: control characters (C0, DEL,
//! C1: NUL, ESC and the rest), line and paragraph separators, bidirectional
//! controls (the embeddings and overrides U+202A-U+202E, isolates
//! U+2066-U+2069, the marks U+200E, U+200F, U+061C), zero-width and other
//! invisible format characters (U+200B-U+200D, U+2060-U+2064, U+FEFF, U+00AD,
//! U+180E), interlinear annotation and tag characters, and noncharacters.
//! Those are what lets stored text rewrite a terminal (`ESC[31m`), hide or
//! reorder what an operator reads (a right-to-left override), or split a line.

use std::borrow::Cow;
use std::fmt::Write;

use crate::error::{ApiError, ApiResult};

/// Why a character may not appear in a label (`None`: it may).
pub fn forbidden(c: char) -> Option<&'static str> {
    let u = u32::from(c);
    match u {
        0x00..=0x1f | 0x7f..=0x9f => Some("a control character"),
        0x2028 | 0x2029 => Some("a line or paragraph separator"),
        0x202a..=0x202e | 0x2066..=0x2069 | 0x200e | 0x200f | 0x061c => {
            Some("a bidirectional control character")
        }
        0x200b..=0x200d | 0x2060..=0x2064 | 0xfeff | 0x00ad | 0x180e | 0x034f => {
            Some("an invisible formatting character")
        }
        0xfff9..=0xfffb | 0xe0000..=0xe007f => Some("an invisible formatting character"),
        0xfdd0..=0xfdef => Some("a noncharacter"),
        _ if u & 0xfffe == 0xfffe => Some("a noncharacter"),
        _ => None,
    }
}

/// Checks a human-readable field: trimmed, 1 to `max_chars` characters, none
/// of them [`forbidden`]. Returns the trimmed text; a 400 names the field.
pub fn check_label(field: &'static str, value: &str, max_chars: usize) -> ApiResult<String> {
    let trimmed = value.trim();
    let n = trimmed.chars().count();
    if n == 0 || n > max_chars {
        return Err(ApiError::invalid_param(
            field,
            format!("{field} must hold 1 to {max_chars} characters"),
        ));
    }
    if let Some((at, why)) = trimmed
        .chars()
        .enumerate()
        .find_map(|(i, c)| forbidden(c).map(|why| (i, why)))
    {
        return Err(ApiError::invalid_param(
            field,
            format!("{field} holds {why} at character {at}; control, bidirectional and invisible characters are not allowed"),
        ));
    }
    Ok(trimmed.to_string())
}

/// Text made safe to print on a terminal: every [`forbidden`] character is
/// written as a visible escape (`\u{1b}`), and so is a backslash that would
/// otherwise start one, so what is printed can be read back unambiguously.
pub fn escape_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || forbidden(c).is_some()) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if forbidden(c).is_some() {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Text made safe to place in HTML (element content or a quoted attribute):
/// markup characters as entities, and [`forbidden`] characters as visible
/// escapes, as on a terminal.
pub fn escape_html(s: &str) -> String {
    escape_markup(&escape_terminal(s))
}

/// Markup characters (`& < > " '`) as XML/HTML entities, nothing else changed.
pub fn escape_markup(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_refuse_control_bidi_and_invisible_characters() {
        assert_eq!(
            check_label("name", "  Acme GmbH  ", 200).unwrap(),
            "Acme GmbH"
        );
        assert_eq!(
            check_label("name", "東京 株式会社 🚀", 200).unwrap(),
            "東京 株式会社 🚀"
        );
        for bad in [
            "a\0b",
            "\u{1b}[31mred",
            "evil\u{202e}txt.exe",
            "a\u{2066}b",
            "zero\u{200b}width",
            "line\nbreak",
            "tab\there",
            "del\u{7f}",
            "c1\u{9b}31m",
            "sep\u{2028}x",
            "bom\u{feff}",
            "tag\u{e0041}",
            "",
            "   ",
        ] {
            let err = check_label("name", bad, 200).unwrap_err();
            assert_eq!(err.status(), 400, "{bad:?}");
        }
        assert!(check_label("name", &"x".repeat(201), 200).is_err());
        assert!(check_label("name", &"é".repeat(200), 200).is_ok());
    }

    #[test]
    fn escaping_leaves_no_control_characters() {
        assert_eq!(escape_terminal("plain"), "plain");
        assert_eq!(escape_terminal("\u{1b}[31m"), "\\u{1b}[31m");
        assert_eq!(escape_terminal("a\u{202e}b\\"), "a\\u{202e}b\\\\");
        assert_eq!(
            escape_html("<b a='1'>&\u{0}"),
            "&lt;b a=&#39;1&#39;&gt;&amp;\\u{0}"
        );
    }
}
