//! Every key tollgate writes to the store, built here and nowhere else.
//!
//! ```text
//! tg:{a:<app>}:r:<policy>:<plan>:<limit>[:<sub>]             GCRA TAT (string, µs), expires at the TAT
//! tg:{a:<app>}:q:<policy>:<plan>:<limit>:<window>[:<sub>]    calendar counter, expires at window end + grace
//! tg:{n:<credential digest>}:n:<scope>:<nonce digest>        remembered nonce, expires with the credential
//! tg:{a:<app>}:u:<YYYY-MM-DD>                                usage hash {count[, extra]}, per app per UTC day
//! tg:{a:<app>}:u:<YYYY-MM-DD>:<user digest>                  usage hash per app-user per day
//! tg:{u:<user digest>}:…   tg:{i:<ip digest>}:…   tg:{anon}:…   the same shapes under other tags
//! tg:{<tag>}:s:<settlement id>                               a settlement applied (lease returns, usage), 10 min
//! ```
//!
//! - **Hash tags.** The part in braces is the Redis Cluster hash tag: only it
//!   decides the slot. Every key of one app (its limits, its users' and
//!   devices' limits, its nonces and usage) carries `{a:<app>}`, so the one
//!   admission script of a request touches one slot. Limits keyed by the
//!   user alone carry `{u:…}` and limits keyed by IP `{i:…}`: they are shared
//!   across apps and so cannot live in an app's slot.
//! - **Nonces belong to their credential.** A nonce's tag and key are
//!   derived from the credential that carries it — a DPoP proof's key
//!   thumbprint, a signature's key, a single-use app token's attester key —
//!   never from the app, user or address the rest of the request names: a
//!   client chooses those (another app's API key, none at all, another
//!   address), and a nonce filed under them would be fresh again
//!   (`docs/security.md`). On a Cluster a request with nonces therefore
//!   touches one slot more (a parallel script call); on one Redis server
//!   every group runs in one script call anyway.
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
//! - **Usage hashes** hold `count` (admitted requests) and, once a request
//!   cost more or less than 1, `extra` (the sum of cost − 1): cost = count +
//!   extra. One field per request in the common case keeps metering at one
//!   `HINCRBY` per hash. Hashes of the earlier layout (`requests`, `cost`)
//!   are still read: see [`USAGE_FIELDS`].
//! - Keys are built into one `String` each, sized up front: they are built
//!   on every request.

use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// The prefix of every key.
pub const PREFIX: &str = "tg";

/// The hash tag of requests with no app, user or address at all.
pub const ANONYMOUS_TAG: &str = "{anon}";

/// The fields of a usage hash, in the order [`usage_totals`] reads them:
/// `count` (admitted requests) and `extra` (the sum of cost − 1 over them,
/// absent while every cost was 1), then `requests` and `cost`, the fields
/// of hashes written before this layout (each request added 1 and its
/// cost). A day whose hash holds both layouts (written during a rolling
/// upgrade) still adds up exactly.
pub const USAGE_FIELDS: [&str; 4] = ["count", "extra", "requests", "cost"];

/// (requests, cost) of a usage hash from the values of [`USAGE_FIELDS`]
/// (`HMGET` order; a missing field is `None`).
pub fn usage_totals(values: &[Option<i64>]) -> (u64, u64) {
    let field = |i: usize| values.get(i).copied().flatten().unwrap_or(0);
    let (count, extra, requests, cost) = (field(0), field(1), field(2), field(3));
    let clamp = |v: i64| u64::try_from(v).unwrap_or(0);
    (
        clamp(count.saturating_add(requests)),
        clamp(count.saturating_add(extra).saturating_add(cost)),
    )
}

/// True for the bytes [`escape`] keeps as they are.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/')
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// Appends `value` percent-encoded (everything outside
/// `A-Z a-z 0-9 . _ - /`). Ids that need no encoding, the usual case, are
/// copied in one piece.
pub fn escape_into(out: &mut String, value: &str) {
    if value.bytes().all(is_plain) {
        out.push_str(value);
        return;
    }
    for b in value.bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(b & 0xf)]));
        }
    }
}

/// Percent-encodes everything outside `A-Z a-z 0-9 . _ - /`.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    escape_into(&mut out, value);
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

/// Length of a [`digest`] in hex characters.
pub const DIGEST_LEN: usize = 32;

/// SHA-256 of length-prefixed parts, first 16 bytes in hex. Length
/// prefixes keep `("ab", "c")` and `("a", "bc")` apart.
pub fn digest(parts: &[&str]) -> String {
    let mut out = String::with_capacity(DIGEST_LEN);
    digest_into(&mut out, parts);
    out
}

/// Appends [`digest`] of `parts`.
fn digest_into(out: &mut String, parts: &[&str]) {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let hash = hasher.finalize();
    for &b in &hash[..DIGEST_LEN / 2] {
        out.push(char::from(HEX_LOWER[usize::from(b >> 4)]));
        out.push(char::from(HEX_LOWER[usize::from(b & 0xf)]));
    }
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
    let mut tag = String::with_capacity(app.len() + 4);
    tag.push_str("{a:");
    escape_into(&mut tag, app);
    tag.push('}');
    tag
}

/// `{<kind>:<digest>}`.
fn digest_tag(kind: &str, digest: &str) -> String {
    let mut tag = String::with_capacity(kind.len() + digest.len() + 3);
    tag.push('{');
    tag.push_str(kind);
    tag.push(':');
    tag.push_str(digest);
    tag.push('}');
    tag
}

/// The hash tag of a user (limits keyed by `user`).
pub fn user_tag(issuer: &str, subject: &str) -> String {
    user_tag_of(&user_digest(issuer, subject))
}

/// The hash tag of a user from its [`user_digest`].
pub fn user_tag_of(user_digest: &str) -> String {
    digest_tag("u", user_digest)
}

/// The hash tag of a client address (limits keyed by `ip`).
pub fn ip_tag(ip: IpAddr) -> String {
    ip_tag_of(&ip_digest(ip))
}

/// The hash tag of a client address from its [`ip_digest`].
pub fn ip_tag_of(ip_digest: &str) -> String {
    digest_tag("i", ip_digest)
}

/// The hash tag of requests with no app, user or address at all.
pub fn anonymous_tag() -> String {
    ANONYMOUS_TAG.to_owned()
}

/// The sub-key of a limit inside an app's tag: whose counter of the app it
/// is (each value a digest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub<'a> {
    /// `u:<user digest>` (`app-user`).
    User(&'a str),
    /// `d:<device digest>` (`device`).
    Device(&'a str),
    /// `i:<ip digest>` (an `app-user` or `device` limit without a user or
    /// device).
    Ip(&'a str),
}

impl<'a> Sub<'a> {
    /// The separator with the sub-key's kind, and its digest.
    fn split(self) -> (&'static str, &'a str) {
        match self {
            Sub::User(d) => (":u:", d),
            Sub::Device(d) => (":d:", d),
            Sub::Ip(d) => (":i:", d),
        }
    }

    fn len(self) -> usize {
        let (kind, digest) = self.split();
        kind.len() + digest.len()
    }

    fn push(self, key: &mut String) {
        let (kind, digest) = self.split();
        key.push_str(kind);
        key.push_str(digest);
    }
}

/// `tg:<tag>:<kind>:<policy>:<plan>:<limit>`, with room for what follows.
fn limit_key(kind: &str, tag: &str, policy: &str, plan: &str, limit: &str, more: usize) -> String {
    let mut key = String::with_capacity(
        PREFIX.len() + tag.len() + kind.len() + policy.len() + plan.len() + limit.len() + 4 + more,
    );
    key.push_str(PREFIX);
    key.push(':');
    key.push_str(tag);
    key.push_str(kind);
    escape_into(&mut key, policy);
    key.push(':');
    escape_into(&mut key, plan);
    key.push(':');
    escape_into(&mut key, limit);
    key
}

fn sub_len(sub: Option<Sub<'_>>) -> usize {
    sub.map_or(0, Sub::len)
}

/// A GCRA key.
pub fn rate(tag: &str, policy: &str, plan: &str, limit: &str, sub: Option<Sub<'_>>) -> String {
    let mut key = limit_key(":r:", tag, policy, plan, limit, sub_len(sub));
    if let Some(sub) = sub {
        sub.push(&mut key);
    }
    key
}

/// A calendar-quota counter key for the window starting at `window_id`
/// (Unix seconds).
pub fn quota(
    tag: &str,
    policy: &str,
    plan: &str,
    limit: &str,
    window_id: u64,
    sub: Option<Sub<'_>>,
) -> String {
    let mut key = limit_key(":q:", tag, policy, plan, limit, 21 + sub_len(sub));
    key.push(':');
    push_decimal(&mut key, window_id);
    if let Some(sub) = sub {
        sub.push(&mut key);
    }
    key
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// The hash tag of the nonces of one credential (`{n:<digest>}`): the
/// credential (a DPoP key's thumbprint, a signature key, an attester key)
/// of kind `scope`, hashed with it.
pub fn nonce_tag(scope: &str, credential: &str) -> String {
    let mut tag = String::with_capacity(DIGEST_LEN + 4);
    tag.push_str("{n:");
    digest_into(&mut tag, &["credential", scope, credential]);
    tag.push('}');
    tag
}

/// A remembered nonce under its credential's [`nonce_tag`]. `scope`
/// separates kinds of nonces (`dpop`, `attestation`, `signature`…); the
/// credential and the value are hashed together, so the same value of two
/// credentials never collides.
pub fn nonce(tag: &str, scope: &str, credential: &str, value: &str) -> String {
    let mut key = String::with_capacity(PREFIX.len() + tag.len() + scope.len() + DIGEST_LEN + 5);
    key.push_str(PREFIX);
    key.push(':');
    key.push_str(tag);
    key.push_str(":n:");
    escape_into(&mut key, scope);
    key.push(':');
    digest_into(&mut key, &["nonce", scope, credential, value]);
    key
}

/// The per-app usage hash of a UTC day (`YYYY-MM-DD`); `app_tag` is the
/// app's [`app_tag`].
pub fn usage_app(app_tag: &str, day: &str) -> String {
    usage_key(app_tag, day, None)
}

/// The marker of a settlement applied under `tag` (`Store::settle`):
/// present, a re-sent settlement changes nothing. The id is the lease
/// layer's random hex, so it needs no escaping.
pub fn settled(tag: &str, id: &str) -> String {
    let mut key = String::with_capacity(PREFIX.len() + tag.len() + id.len() + 4);
    key.push_str(PREFIX);
    key.push(':');
    key.push_str(tag);
    key.push_str(":s:");
    key.push_str(id);
    key
}

/// The per-app-user usage hash of a UTC day.
pub fn usage_user(app_tag: &str, day: &str, user_digest: &str) -> String {
    usage_key(app_tag, day, Some(user_digest))
}

fn usage_key(app_tag: &str, day: &str, user_digest: Option<&str>) -> String {
    let user_len = user_digest.map_or(0, |u| u.len() + 1);
    let mut key = String::with_capacity(PREFIX.len() + app_tag.len() + day.len() + 4 + user_len);
    key.push_str(PREFIX);
    key.push(':');
    key.push_str(app_tag);
    key.push_str(":u:");
    key.push_str(day);
    if let Some(user) = user_digest {
        key.push(':');
        key.push_str(user);
    }
    key
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
    fn keys_have_their_documented_shape() {
        let tag = app_tag("my app");
        assert_eq!(tag, "{a:my%20app}");
        assert_eq!(
            rate(&tag, "ns/p", "free", "ps", None),
            "tg:{a:my%20app}:r:ns/p:free:ps"
        );
        let user = user_digest("https://id.example/", "alice");
        assert_eq!(
            rate(&tag, "ns/p", "free", "ps", Some(Sub::User(&user))),
            format!("tg:{{a:my%20app}}:r:ns/p:free:ps:u:{user}")
        );
        assert_eq!(
            quota(&tag, "n s/p", "free", "daily", 1_714_521_600, None),
            "tg:{a:my%20app}:q:n%20s/p:free:daily:1714521600"
        );
        assert_eq!(
            quota(&tag, "ns/p", "free", "daily", 0, Some(Sub::Device("dd"))),
            "tg:{a:my%20app}:q:ns/p:free:daily:0:d:dd"
        );
        assert_eq!(
            quota(&tag, "ns/p", "free", "daily", u64::MAX, Some(Sub::Ip("ii"))),
            format!("tg:{{a:my%20app}}:q:ns/p:free:daily:{}:i:ii", u64::MAX)
        );
        assert_eq!(
            user_tag("https://id.example/", "alice"),
            format!("{{u:{user}}}")
        );
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(ip_tag(ip), format!("{{i:{}}}", ip_digest(ip)));
        let tag = nonce_tag("dpop", "jkt-1");
        assert_eq!(
            tag,
            format!("{{n:{}}}", digest(&["credential", "dpop", "jkt-1"]))
        );
        assert_eq!(
            nonce(&tag, "dpop", "jkt-1", "jti"),
            format!(
                "tg:{tag}:n:dpop:{}",
                digest(&["nonce", "dpop", "jkt-1", "jti"])
            )
        );
        assert_ne!(nonce_tag("dpop", "jkt-1"), nonce_tag("dpop", "jkt-2"));
        assert_ne!(
            nonce(&tag, "dpop", "jkt-1", "jti"),
            nonce(&tag, "dpop", "jkt-2", "jti")
        );
        // The digest is the first 16 bytes of SHA-256 over length-prefixed
        // parts, in lower-case hex.
        let mut hasher = Sha256::new();
        hasher.update(2u64.to_be_bytes());
        hasher.update(b"ip");
        let expected: String = hasher.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(digest(&["ip"]), expected);
    }

    #[test]
    fn usage_totals_add_both_layouts() {
        // Current layout: count, and extra only once a cost was not 1.
        assert_eq!(usage_totals(&[Some(3), None, None, None]), (3, 3));
        assert_eq!(usage_totals(&[Some(3), Some(6), None, None]), (3, 9));
        // Earlier layout: requests and cost.
        assert_eq!(usage_totals(&[None, None, Some(2), Some(7)]), (2, 7));
        // A day written by both (a rolling upgrade): 2 requests of cost 1
        // and 5 before, 3 requests costing 9 after.
        assert_eq!(usage_totals(&[Some(3), Some(6), Some(2), Some(6)]), (5, 15));
        assert_eq!(usage_totals(&[]), (0, 0));
        assert_eq!(usage_totals(&[Some(-1), None, None, None]), (0, 0));
    }

    #[test]
    fn usage_keys_parse_back() {
        let key = usage_app(&app_tag("my app"), "2024-03-07");
        assert_eq!(
            parse_usage(&key),
            Some(("my app".into(), "2024-03-07".into(), None))
        );
        let key = usage_user(&app_tag("a"), "2024-03-07", "abcd");
        assert_eq!(
            parse_usage(&key),
            Some(("a".into(), "2024-03-07".into(), Some("abcd".into())))
        );
        assert_eq!(parse_usage("tg:{a:x}:r:p:q:l"), None);
    }
}
