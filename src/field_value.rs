//! Values tollgate writes where a byte can change their meaning: HTTP
//! header field values sent upstream, and log lines.
//!
//! Identity values come from credentials a client presents (a token's
//! `sub`, a templated claim, an app token's device id): a signed value is
//! authentic, not harmless. [`is_header_safe`] decides whether a value may
//! be sent upstream as it is (the pipeline denies the request otherwise,
//! `docs/security.md`); [`escape_controls`] makes any value fit for one
//! log line.

use std::borrow::Cow;

/// Whether `value` can be sent as a header field value exactly as it is:
/// no control character — RFC 9110 §5.5 allows none in a field value but
/// HTAB, Envoy refuses CR, LF and NUL outright (a 503 for the whole
/// request), and the others confuse logs and upstream parsers; HTAB and C1
/// controls are refused too, no identifier needs them — and no leading or trailing whitespace, which HTTP
/// parsers strip (RFC 9110 §5.5: the OWS around a field value is not part
/// of it), so a subject `" admin"` would reach the upstream as `admin`.
pub fn is_header_safe(value: &str) -> bool {
    !value.chars().any(char::is_control) && value.trim_matches([' ', '\t']).len() == value.len()
}

/// `value` with every control character (C0, DEL, C1) written as a Rust
/// escape (`\n`, `\u{1b}`), and `\` doubled so an escape cannot be
/// forged: one log line stays one line, and a terminal shows what was
/// sent instead of obeying it. Borrows when there is nothing to escape,
/// the usual case.
pub fn escape_controls(value: &str) -> Cow<'_, str> {
    escape_where(value, |c| c.is_control() || c == '\\', usize::MAX)
}

/// `value` with each character `must_escape` picks written as its Rust
/// escape (`char::escape_default`: `\n`, `\u{202e}`, `\\`), cut after
/// `max_chars` characters with `…`. Borrows when nothing is escaped or
/// cut. `must_escape` should pick `\`, or an escape could be forged.
pub fn escape_where(
    value: &str,
    must_escape: impl Fn(char) -> bool,
    max_chars: usize,
) -> Cow<'_, str> {
    let too_long = value.len() > max_chars && value.chars().count() > max_chars;
    if !too_long && !value.chars().any(&must_escape) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len().min(max_chars.saturating_mul(2)) + 8);
    for (i, c) in value.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        if must_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_safe_values() {
        for safe in ["alice", "a b", "ünïcode", "auth0|5f7c", "x=1;y=2"] {
            assert!(is_header_safe(safe), "{safe:?}");
        }
        for unsafe_ in [
            "alice\r\nx-admin: yes",
            "a\nb",
            "a\0b",
            "a\x01b",
            "a\x7fb",
            "a\u{85}b",
            " admin",
            "admin ",
            "\tadmin",
            "a\tb",
        ] {
            assert!(!is_header_safe(unsafe_), "{unsafe_:?}");
        }
    }

    #[test]
    fn escapes_controls_and_backslashes_only() {
        assert!(matches!(escape_controls("alice"), Cow::Borrowed("alice")));
        assert_eq!(escape_controls("a\nb"), "a\\nb");
        assert_eq!(escape_controls("a\r\n\x1b[31m"), "a\\r\\n\\u{1b}[31m");
        assert_eq!(escape_controls("a\\nb"), "a\\\\nb");
        assert_eq!(escape_controls("ünï\u{85}"), "ünï\\u{85}");
        assert!(
            !escape_controls("x\u{0}y\u{7f}")
                .chars()
                .any(char::is_control)
        );
    }
}
