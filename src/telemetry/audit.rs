//! The audit log: one structured line per denial (target
//! `tollgate::audit`), and optionally a sample of allows.
//!
//! Fields: `request_id` (Envoy's `x-request-id`), `policy`, `route`,
//! `app`, `plan`, the user (`user` and `issuer`, or `user_hash`, or
//! nothing: `--audit-user`), `client` (the address the trusted origin
//! gives), `reason`, `status`, `detail` (the client-safe explanation) and,
//! when the Check was traced, `trace_id`. The time is the log line's own
//! `timestamp`.
//!
//! What never gets here: a token, an API key, a proof, a signature or a
//! secret. The line is built only from the decision's identity (ids and
//! names), the reason table and the denial's client-safe detail — never
//! from request headers other than `x-request-id`.
//!
//! Values that come from requests (the request id, a token's subject and
//! issuer, details quoting a claim) are [`escape`]d: control characters,
//! line and paragraph separators and bidirectional overrides become Rust
//! escapes (`\n`, `\u{1b}`, `\u{202e}`, as the access log's metadata
//! writes them, `crate::field_value::escape_controls`), and a backslash
//! becomes `\\`, so a crafted value can neither
//! start a forged line in a text log nor hide text from whoever reads it.
//! Long values are cut at [`MAX_VALUE_CHARS`].

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::decision::{Decision, Deny};
use crate::request::RequestContext;

/// The log target of audit lines (`--log-level info,tollgate::audit=off`
/// turns them off).
pub const TARGET: &str = "tollgate::audit";
/// Longest value written, in characters; longer ones end with `…`.
pub const MAX_VALUE_CHARS: usize = 256;

/// How the user appears in audit lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditUser {
    /// `user` (the token's `sub`) and `issuer`, as they are.
    #[default]
    Plain,
    /// `user_hash`: a SHA-256 of issuer and subject (32 hex digits), the
    /// same on every replica, so one user's lines can be found without
    /// the logs naming anyone.
    Hashed,
    /// No user field at all.
    Omit,
}

/// The audit flags of `tollgate serve`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AuditArgs {
    /// How audit lines name the user: `plain` (subject and issuer),
    /// `hashed` (`user_hash`, pseudonymous) or `omit`.
    #[arg(long, env = "TOLLGATE_AUDIT_USER", value_enum, default_value_t = AuditUser::Plain)]
    pub audit_user: AuditUser,

    /// Fraction (0 to 1) of allowed requests that also get an audit line
    /// (`allowed`). 0, the default, logs denials only.
    #[arg(
        long,
        env = "TOLLGATE_AUDIT_ALLOW_RATIO",
        default_value_t = 0.0,
        value_name = "RATIO"
    )]
    pub audit_allow_ratio: f64,
}

impl AuditArgs {
    /// The audit settings, or why the flags are unusable.
    pub fn settings(&self) -> Result<Audit, String> {
        if !(0.0..=1.0).contains(&self.audit_allow_ratio) {
            return Err(format!(
                "--audit-allow-ratio must be between 0 and 1, got {}",
                self.audit_allow_ratio
            ));
        }
        Ok(Audit {
            user: self.audit_user,
            allow_ratio: self.audit_allow_ratio,
        })
    }
}

/// Writes audit lines.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Audit {
    pub user: AuditUser,
    pub allow_ratio: f64,
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            user: AuditUser::Plain,
            allow_ratio: 0.0,
        }
    }
}

/// What kind of line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Denied,
    DryRun,
    Allowed,
}

impl Audit {
    /// Writes the line for `decision`, if it gets one. `trace_id` is the
    /// Check's trace when it was sampled.
    pub fn record(&self, request: &RequestContext, decision: &Decision, trace_id: Option<String>) {
        let (kind, deny) = if let Some(deny) = decision.denial() {
            (Kind::Denied, Some(deny))
        } else if let Some(deny) = &decision.dry_run_denial {
            (Kind::DryRun, Some(deny))
        } else if self.samples_allow() {
            (Kind::Allowed, None)
        } else {
            // The unsampled allows stay available at debug level.
            if tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
                let line = Line::new(self, request, decision, None, trace_id);
                tracing::debug!(
                    target: TARGET,
                    request_id = %line.request_id,
                    policy = %line.policy,
                    app = %line.app,
                    "allowed"
                );
            }
            return;
        };
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return;
        }
        let line = Line::new(self, request, decision, deny, trace_id);
        line.write(kind);
    }

    fn samples_allow(&self) -> bool {
        self.allow_ratio >= 1.0
            || (self.allow_ratio > 0.0 && rand::random::<f64>() < self.allow_ratio)
    }
}

/// The fields of one line, escaped.
struct Line<'a> {
    request_id: Cow<'a, str>,
    policy: Cow<'a, str>,
    route: Cow<'a, str>,
    app: Cow<'a, str>,
    plan: Cow<'a, str>,
    user: Option<Cow<'a, str>>,
    issuer: Option<Cow<'a, str>>,
    user_hash: Option<String>,
    client: Option<IpAddr>,
    reason: &'static str,
    status: u16,
    detail: Cow<'a, str>,
    trace_id: Option<String>,
}

impl<'a> Line<'a> {
    fn new(
        audit: &Audit,
        request: &'a RequestContext,
        decision: &'a Decision,
        deny: Option<&'a Deny>,
        trace_id: Option<String>,
    ) -> Self {
        let identity = &decision.identity;
        let field = |value: &'a Option<String>| escape(value.as_deref().unwrap_or_default());
        let (user, issuer, user_hash) = match (audit.user, &identity.user) {
            (_, None) | (AuditUser::Omit, _) => (None, None, None),
            (AuditUser::Plain, Some(user)) => (
                Some(escape(user)),
                identity.issuer.as_deref().map(escape),
                None,
            ),
            (AuditUser::Hashed, Some(user)) => (
                None,
                None,
                Some(user_hash(
                    identity.issuer.as_deref().unwrap_or_default(),
                    user,
                )),
            ),
        };
        Self {
            request_id: escape(&request.id),
            policy: field(&identity.policy),
            route: field(&identity.route),
            app: field(&identity.app),
            plan: field(&identity.plan),
            user,
            issuer,
            user_hash,
            client: identity.client,
            reason: deny.map_or("none", |d| d.reason.code()),
            status: deny.map_or(200, |d| d.public_reason().http_status()),
            detail: deny.map_or(Cow::Borrowed(""), |d| escape(&d.detail)),
            trace_id,
        }
    }

    fn write(&self, kind: Kind) {
        let message = match kind {
            Kind::Denied => "denied",
            Kind::DryRun => "dry run: would deny",
            Kind::Allowed => "allowed",
        };
        tracing::info!(
            target: TARGET,
            request_id = %self.request_id,
            policy = %self.policy,
            route = %self.route,
            app = %self.app,
            plan = %self.plan,
            user = self.user.as_deref(),
            issuer = self.issuer.as_deref(),
            user_hash = self.user_hash.as_deref(),
            client = self.client.map(tracing::field::display),
            reason = self.reason,
            status = self.status,
            detail = %self.detail,
            trace_id = self.trace_id.as_deref(),
            "{message}"
        );
    }
}

/// A pseudonym of a user: 32 hex digits of SHA-256 over a domain tag,
/// the issuer and the subject. Not anonymous: whoever knows a subject can
/// compute its pseudonym, which is how an operator finds one user's lines.
pub fn user_hash(issuer: &str, subject: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"tollgate audit user\0");
    hash.update(issuer.as_bytes());
    hash.update(b"\0");
    hash.update(subject.as_bytes());
    let digest = hash.finalize();
    let mut out = String::with_capacity(32);
    for byte in &digest[..16] {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// True for characters a log line must not carry as they are: C0 and C1
/// controls and DEL (`char::is_control`), the line and paragraph
/// separators, and the bidirectional formatting characters that reorder
/// what a reader sees (Unicode TR #9: LRE, RLE, PDF, LRO, RLO, LRI, RLI,
/// FSI, PDI, LRM, RLM, ALM).
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\\' | '\u{2028}'
                | '\u{2029}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{061c}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `value` safe for a log line: see the module docs. Borrowed (no
/// allocation) when nothing needs escaping or cutting.
pub fn escape(value: &str) -> Cow<'_, str> {
    // Rust's escapes, as `field_value::escape_controls` writes them for
    // the access log: `\n`, `\u{1b}`, `\u{202e}`, `\\`.
    crate::field_value::escape_where(value, must_escape, MAX_VALUE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_what_could_forge_or_hide_a_line() {
        assert!(matches!(escape("alice@example.com"), Cow::Borrowed(_)));
        assert_eq!(
            escape("alice\nINFO tollgate::audit: allowed"),
            "alice\\nINFO tollgate::audit: allowed"
        );
        assert_eq!(
            escape("a\r\u{1b}[31mred\u{7f}"),
            "a\\r\\u{1b}[31mred\\u{7f}"
        );
        assert_eq!(escape("x\u{85}y\u{2028}z"), "x\\u{85}y\\u{2028}z");
        // "admin" shown reversed by a right-to-left override.
        assert_eq!(escape("\u{202e}nimda"), "\\u{202e}nimda");
        // A literal backslash sequence cannot pass for an escaped one.
        assert_eq!(escape("\\n"), "\\\\n");
        assert_eq!(escape("tab\there"), "tab\\there");
        // The access log's escaping, for what both escape.
        for value in ["a\nb", "\u{1b}[2K", "back\\slash", "plain"] {
            assert_eq!(escape(value), crate::field_value::escape_controls(value));
        }
    }

    #[test]
    fn long_values_are_cut() {
        let long = "é".repeat(MAX_VALUE_CHARS + 10);
        let cut = escape(&long);
        assert_eq!(cut.chars().count(), MAX_VALUE_CHARS + 1);
        assert!(cut.ends_with('…'));
        let fits = "é".repeat(MAX_VALUE_CHARS);
        assert!(matches!(escape(&fits), Cow::Borrowed(_)));
    }

    #[test]
    fn user_hash_is_stable_and_keyed_by_issuer_too() {
        let a = user_hash("https://id.example/", "alice");
        assert_eq!(a.len(), 32);
        assert_eq!(a, user_hash("https://id.example/", "alice"));
        assert_ne!(a, user_hash("https://other.example/", "alice"));
        assert_ne!(user_hash("ab", "c"), user_hash("a", "bc"));
    }

    #[test]
    fn allow_ratio_bounds() {
        let args = |ratio| AuditArgs {
            audit_user: AuditUser::Plain,
            audit_allow_ratio: ratio,
        };
        assert!(args(1.5).settings().is_err());
        assert!(args(-0.1).settings().is_err());
        assert!(args(f64::NAN).settings().is_err());
        assert!(args(1.0).settings().unwrap().samples_allow());
        assert!(!args(0.0).settings().unwrap().samples_allow());
    }

    proptest! {
        /// Whatever comes in, what goes out has no control, separator or
        /// bidi character, and is bounded.
        #[test]
        fn escaped_values_are_inert(value in "\\PC{0,300}|[\\x00-\\x1f\\x7f-\\u{9f}\\u{2028}\\u{202e}a\\\\]{0,300}") {
            let out = escape(&value);
            prop_assert!(!out.chars().any(|c| must_escape(c) && c != '\\'));
            prop_assert!(out.chars().count() <= MAX_VALUE_CHARS * 12 + 1);
        }
    }
}
