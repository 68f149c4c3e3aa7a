//! Every key tollgate writes to the store, built here and nowhere else.
//!
//! ```text
//! tg:{a:<app>}:r:<policy>:<plan>:<limit>[:<sub>]             GCRA TAT (string, µs), expires at the TAT
//! tg:{a:<app>}:q:<policy>:<plan>:<limit>:<window>[:<sub>]    calendar counter, expires at window end + grace
//! tg:{a:<app>}:n:<scope>:<nonce digest>                      remembered nonce, expires with the credential
//! tg:{a:<app>}:u:<YYYY-MM-DD>                                usage hash {requests, cost}, per app per UTC day
//! tg:{a:<app>}:u:<YYYY-MM-DD>:<user digest>                  usage hash per app-user per day
//! tg:{u:<user digest>}:…   tg:{i:<ip digest>}:…   tg:{anon}:…   the same shapes under other tags
//! ```
//!
//! - **Hash tags.** The part in braces is the Redis Cluster hash tag: only it
//!   decides the slot. Every key of one app (its limits, its users' and
//!   devices' limits, its nonces and usage) carries `{a:<app>}`, so the one
//!   admission script of a request touches one slot. Limits keyed by the
//!   user alone carry `{u:…}` and limits keyed by IP `{i:…}`: they are shared
//!   across apps and so cannot live in an app's slot.
//! - **No injection.** App ids, policy ids and scopes are percent-encoded
//!   (everything outside `A-Z a-z 0-9 . _ - /`), so no value can introduce a
//!   `:`, a brace or a glob character. User (issuer + subject), device, IP
//!   and nonce values are hashed (SHA-256, first 16 bytes in hex): they are
//!   client-influenced and may be personal data.
//! - **Sub-keys** inside an app's tag: `u:<digest>` (app-user), `d:<digest>`
//!   (device), `i:<digest>` (an app-user or device limit on a request without
//!   a user or device falls back to the client address).
//! - `<window>` is the window's start in Unix seconds (unambiguous during a
//!   DST fold, unlike a local date-time).

use std::fmt::Write as _;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// The prefix of every key.
pub const PREFIX: &str = "tg";

/// Percent-encodes everything outside `A-Z a-z 0-9 . _ - /`.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Reverses [`escape`]; `None` for malformed input.
pub fn unescape(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// SHA-256 of length-prefixed parts, first 16 bytes in hex. Length
/// prefixes keep `("ab", "c")` and `("a", "bc")` apart.
pub fn digest(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let hash = hasher.finalize();
    let mut out = String::with_capacity(32);
    for b in &hash[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The digest of a user: issuer and subject together (a subject is only
/// unique within its issuer).
pub fn user_digest(issuer: &str, subject: &str) -> String {
    digest(&["user", issuer, subject])
}

/// The digest of a device id.
pub fn device_digest(device: &str) -> String {
    digest(&["device", device])
}

/// The digest of a client address.
pub fn ip_digest(ip: IpAddr) -> String {
    digest(&["ip", &ip.to_string()])
}

/// The hash tag of an app.
pub fn app_tag(app: &str) -> String {
    format!("{{a:{}}}", escape(app))
}

/// The hash tag of a user (limits keyed by `user`).
pub fn user_tag(issuer: &str, subject: &str) -> String {
    format!("{{u:{}}}", user_digest(issuer, subject))
}

/// The hash tag of a client address (limits keyed by `ip`).
pub fn ip_tag(ip: IpAddr) -> String {
    format!("{{i:{}}}", ip_digest(ip))
}

/// The hash tag of requests with no app, user or address at all.
pub fn anonymous_tag() -> String {
    "{anon}".to_owned()
}

fn with_sub(mut key: String, sub: Option<&str>) -> String {
    if let Some(sub) = sub {
        key.push(':');
        key.push_str(sub);
    }
    key
}

/// A GCRA key.
pub fn rate(tag: &str, policy: &str, plan: &str, limit: &str, sub: Option<&str>) -> String {
    with_sub(
        format!(
            "{PREFIX}:{tag}:r:{}:{}:{}",
            escape(policy),
            escape(plan),
            escape(limit)
        ),
        sub,
    )
}

/// A calendar-quota counter key for the window starting at `window_id`
/// (Unix seconds).
pub fn quota(
    tag: &str,
    policy: &str,
    plan: &str,
    limit: &str,
    window_id: u64,
    sub: Option<&str>,
) -> String {
    with_sub(
        format!(
            "{PREFIX}:{tag}:q:{}:{}:{}:{window_id}",
            escape(policy),
            escape(plan),
            escape(limit)
        ),
        sub,
    )
}

/// A remembered nonce. `scope` separates kinds of nonces (`dpop`,
/// `attestation`, `signature`…); the value is hashed.
pub fn nonce(tag: &str, scope: &str, value: &str) -> String {
    format!(
        "{PREFIX}:{tag}:n:{}:{}",
        escape(scope),
        digest(&["nonce", scope, value])
    )
}

/// The per-app usage hash of a UTC day (`YYYY-MM-DD`).
pub fn usage_app(app: &str, day: &str) -> String {
    format!("{PREFIX}:{}:u:{day}", app_tag(app))
}

/// The per-app-user usage hash of a UTC day.
pub fn usage_user(app: &str, day: &str, user_digest: &str) -> String {
    format!("{PREFIX}:{}:u:{day}:{user_digest}", app_tag(app))
}

/// A `SCAN MATCH` pattern for usage keys (of one app, or of all apps).
pub fn usage_pattern(app: Option<&str>) -> String {
    match app {
        Some(app) => format!("{PREFIX}:{}:u:*", app_tag(app)),
        None => format!("{PREFIX}:{{a:*}}:u:*"),
    }
}

/// A usage key taken apart: (app, day, user digest).
pub fn parse_usage(key: &str) -> Option<(String, String, Option<String>)> {
    let rest = key.strip_prefix(PREFIX)?.strip_prefix(":{a:")?;
    let (app, rest) = rest.split_once("}:u:")?;
    let app = unescape(app)?;
    let (day, user) = match rest.split_once(':') {
        Some((day, user)) => (day, Some(user.to_owned())),
        None => (rest, None),
    };
    let valid_day = day.len() == 10 && day.bytes().all(|b| b.is_ascii_digit() || b == b'-');
    valid_day.then(|| (app, day.to_owned(), user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cannot_inject_separators_or_tags() {
        let key = rate(&app_tag("evil}:{x"), "ns/p", "free", "daily", None);
        assert_eq!(key, "tg:{a:evil%7D%3A%7Bx}:r:ns/p:free:daily");
        assert_eq!(key.matches('{').count(), 1);
        assert_eq!(key.matches('}').count(), 1);
        assert_eq!(escape("a*b?[c]"), "a%2Ab%3F%5Bc%5D");
    }

    #[test]
    fn escape_round_trips() {
        for value in ["plain", "weird:{}*%/", "ünïcode"] {
            assert_eq!(unescape(&escape(value)).as_deref(), Some(value));
        }
    }

    #[test]
    fn digests_separate_parts() {
        assert_ne!(digest(&["ab", "c"]), digest(&["a", "bc"]));
        assert_ne!(
            user_digest("https://a/", "x"),
            user_digest("https://b/", "x")
        );
        assert_eq!(user_digest("i", "s").len(), 32);
    }

    #[test]
    fn usage_keys_parse_back() {
        let key = usage_app("my app", "2024-03-07");
        assert_eq!(
            parse_usage(&key),
            Some(("my app".into(), "2024-03-07".into(), None))
        );
        let key = usage_user("a", "2024-03-07", "abcd");
        assert_eq!(
            parse_usage(&key),
            Some(("a".into(), "2024-03-07".into(), Some("abcd".into())))
        );
        assert_eq!(parse_usage("tg:{a:x}:r:p:q:l"), None);
    }
}
