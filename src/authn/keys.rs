//! Where verification keys come from, and keeping them current.
//!
//! A [`KeyProvider`] is either a fixed [`KeySet`] (inline JWKS, a Secret) or
//! a [`RemoteKeys`]: a JWKS fetched over HTTPS (directly, or through OIDC
//! discovery) and refreshed in the background.
//!
//! Remote key sets live in a process-wide registry keyed by their source, so
//! a policy reload reuses the keys already fetched instead of starting from
//! nothing: a reload during an IdP outage must not log every user out. The
//! registry holds weak references; a key set (and its refresh task) goes
//! away with the last policy that uses it.
//!
//! Rules (issue 3, issue 17):
//! - background refresh every `Cache-Control: max-age`, at least
//!   [`MIN_REFRESH`] and at most the source's `maxCacheAge`
//!   ([`DEFAULT_MAX_CACHE_AGE`], one hour, unless the policy says
//!   otherwise), [`DEFAULT_REFRESH`] without one ([`refresh_interval`]):
//!   a key the IdP removes stops verifying within the cap, whatever the
//!   IdP's caching headers say — they may shorten it, never lengthen it;
//!   failures retry with backoff up to [`MAX_RETRY`];
//! - a token with an unknown `kid` triggers one refetch, at most once per
//!   key set every [`KID_REFETCH_INTERVAL`], so random kids cannot make
//!   tollgate flood the IdP;
//! - a failed fetch keeps the last good keys;
//! - no usable keys and the IdP unreachable → the caller answers 503
//!   `keys_unavailable`, never 401.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use reqwest::Url;
use serde_json::Value;
use tokio::time::Instant;

use super::jwk::{KeySet, VerifyKey};
use crate::compile_context::CompileContext;
use crate::policy::types::{KeyEncoding, KeySource};

/// Refresh interval when the JWKS response has no `max-age`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Shortest refresh interval, whatever `max-age` says.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
/// How long fetched keys are used at most before they are fetched again,
/// when the policy does not set `maxCacheAge`.
pub const DEFAULT_MAX_CACHE_AGE: Duration = Duration::from_secs(3600);
/// The longest `maxCacheAge` a policy may set.
pub const MAX_CACHE_AGE_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// When fetched keys are fetched again: the response's `max-age`
/// ([`DEFAULT_REFRESH`] without one), never later than `cap` (the
/// source's `maxCacheAge`), never sooner than [`MIN_REFRESH`].
pub fn refresh_interval(max_age: Option<Duration>, cap: Duration) -> Duration {
    max_age.unwrap_or(DEFAULT_REFRESH).min(cap).max(MIN_REFRESH)
}
/// Longest wait between retries after failed fetches.
pub const MAX_RETRY: Duration = Duration::from_secs(60);
/// At most one unknown-`kid` refetch per key set in this interval.
pub const KID_REFETCH_INTERVAL: Duration = Duration::from_secs(5);
/// After a failed fetch, requests finding no keys at all do not retry
/// inline for this long (they get 503 at once).
const EMPTY_RETRY: Duration = Duration::from_secs(1);
/// How long a request waits for an inline fetch.
const INLINE_FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest discovery document or JWKS read.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// A source of verification keys.
#[derive(Clone, Debug)]
pub enum KeyProvider {
    Static(Arc<KeySet>),
    Remote(Arc<RemoteKeys>),
}

/// Keys to verify one token with.
#[derive(Clone, Debug)]
pub struct Keys {
    pub set: Arc<KeySet>,
    /// The last fetch failed: these are the last good keys. A token whose
    /// key is not among them may be signed by a key tollgate cannot fetch.
    pub degraded: bool,
}

impl KeyProvider {
    /// Keys for a token with `kid`, fetching when there are none yet or
    /// when `kid` is unknown (rate-limited). `Err` says why no keys are
    /// available (→ `keys_unavailable`).
    pub async fn keys_for(&self, kid: Option<&str>) -> Result<Keys, String> {
        match self {
            KeyProvider::Static(set) => Ok(Keys {
                set: set.clone(),
                degraded: false,
            }),
            KeyProvider::Remote(remote) => remote.keys_for(kid).await,
        }
    }

    /// The keys known now, without fetching.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        match self {
            KeyProvider::Static(set) => Some(set.clone()),
            KeyProvider::Remote(remote) => remote.lock().keys.clone(),
        }
    }
}

/// A compiled key source.
#[derive(Debug)]
pub struct CompiledSource {
    pub provider: KeyProvider,
    /// The keys come from a Secret (the only place HMAC keys may come from).
    pub from_secret: bool,
}

/// Compiles a policy's key source. `issuer` is the issuer URL used for
/// discovery. Errors name the field relative to the source.
pub fn compile_source(
    source: &KeySource,
    ctx: &CompileContext<'_>,
    issuer: Option<&str>,
) -> Result<CompiledSource, String> {
    let set = usize::from(source.discovery)
        + usize::from(source.uri.is_some())
        + usize::from(source.inline.is_some())
        + usize::from(source.secret_ref.is_some());
    if set != 1 {
        return Err("exactly one of discovery, uri, inline and secretRef must be set".to_owned());
    }
    if source.encoding.is_some() && source.secret_ref.is_none() {
        return Err("encoding: only applies to secretRef".to_owned());
    }
    let max_cache_age = match &source.max_cache_age {
        None => DEFAULT_MAX_CACHE_AGE,
        Some(_) if !source.discovery && source.uri.is_none() => {
            return Err("maxCacheAge: only applies to discovery and uri".to_owned());
        }
        Some(age) if !(MIN_REFRESH..=MAX_CACHE_AGE_LIMIT).contains(&age.get()) => {
            return Err(format!(
                "maxCacheAge: {age} is outside {}s to {}h",
                MIN_REFRESH.as_secs(),
                MAX_CACHE_AGE_LIMIT.as_secs() / 3600
            ));
        }
        Some(age) => age.get(),
    };
    let remote_source = |remote: RemoteSource| CompiledSource {
        provider: KeyProvider::Remote(remote_keys(remote, max_cache_age)),
        from_secret: false,
    };
    if source.discovery {
        let issuer = issuer.ok_or("discovery: needs an issuer to discover")?;
        check_url(&format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ))
        .map_err(|e| format!("discovery: {e}"))?;
        return Ok(remote_source(RemoteSource::Discovery {
            issuer: issuer.to_owned(),
        }));
    }
    if let Some(uri) = &source.uri {
        let uri = check_url(uri).map_err(|e| format!("uri: {e}"))?;
        return Ok(remote_source(RemoteSource::Jwks { uri }));
    }
    if let Some(inline) = &source.inline {
        let set = KeySet::from_jwks(inline, false).map_err(|e| format!("inline: {e}"))?;
        if set.keys.is_empty() {
            return Err(format!(
                "inline: no usable key ({})",
                set.skipped.join("; ")
            ));
        }
        return Ok(CompiledSource {
            provider: KeyProvider::Static(Arc::new(set)),
            from_secret: false,
        });
    }
    let secret_ref = source
        .secret_ref
        .as_ref()
        .ok_or("exactly one of discovery, uri, inline and secretRef must be set")?;
    let bytes = ctx
        .secret(&secret_ref.name, &secret_ref.key)
        .map_err(|e| format!("secretRef: {e}"))?;
    let set = match source.encoding.unwrap_or(KeyEncoding::Raw) {
        KeyEncoding::Raw => KeySet {
            keys: vec![VerifyKey::hmac(bytes, None).map_err(|e| format!("secretRef: {e}"))?],
            skipped: Vec::new(),
        },
        KeyEncoding::Base64 => {
            use base64::Engine;
            let text = std::str::from_utf8(bytes)
                .map_err(|_| "secretRef: the base64 value is not text".to_owned())?;
            let mut keys = Vec::new();
            // Several keys (separated by whitespace or commas) let a secret
            // be rotated without downtime.
            for (i, part) in text
                .split(|c: char| c.is_ascii_whitespace() || c == ',')
                .filter(|p| !p.is_empty())
                .enumerate()
            {
                let key = base64::engine::general_purpose::STANDARD
                    .decode(part)
                    .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(part))
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(part))
                    .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part))
                    .map_err(|_| format!("secretRef: key {i} is not base64"))?;
                keys.push(
                    VerifyKey::hmac(&key, None).map_err(|e| format!("secretRef: key {i}: {e}"))?,
                );
            }
            if keys.is_empty() {
                return Err("secretRef: the Secret value holds no key".to_owned());
            }
            KeySet {
                keys,
                skipped: Vec::new(),
            }
        }
        KeyEncoding::Jwks => {
            let doc: Value = serde_json::from_slice(bytes)
                .map_err(|_| "secretRef: the Secret value is not a JWKS".to_owned())?;
            let set = KeySet::from_jwks(&doc, true).map_err(|e| format!("secretRef: {e}"))?;
            if set.keys.is_empty() {
                return Err(format!(
                    "secretRef: no usable key ({})",
                    set.skipped.join("; ")
                ));
            }
            set
        }
    };
    Ok(CompiledSource {
        provider: KeyProvider::Static(Arc::new(set)),
        from_secret: true,
    })
}

/// Prefixes an error of a nested section with `field`: `uri: bad` under
/// `jwks` becomes `jwks.uri: bad`, a message without a field `jwks: …`.
pub fn nest(field: &str, error: &str) -> String {
    match error.split_once(": ") {
        Some((inner, rest))
            if !inner.is_empty()
                && inner
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '[' | ']')) =>
        {
            format!("{field}.{inner}: {rest}")
        }
        _ => format!("{field}: {error}"),
    }
}

/// Where a remote JWKS is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteSource {
    /// OpenID Connect Discovery 1.0 §4: `{issuer}/.well-known/openid-configuration`.
    Discovery { issuer: String },
    /// A JWKS URL.
    Jwks { uri: Url },
}

impl RemoteSource {
    fn registry_key(&self) -> String {
        match self {
            RemoteSource::Discovery { issuer } => format!("discovery {issuer}"),
            RemoteSource::Jwks { uri } => format!("jwks {uri}"),
        }
    }
}

/// Checks a key URL: HTTPS, or plain HTTP to a loopback address only.
pub fn check_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(&parsed) => Ok(parsed),
        "http" => Err(format!(
            "{url} uses plain HTTP; keys are fetched over HTTPS (plain HTTP only for loopback addresses)"
        )),
        other => Err(format!("{url} has unsupported scheme {other:?}")),
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The shared remote key set for `source`, fetched again at least every
/// `max_cache_age`: the one already in use, or a new one whose first fetch
/// starts at once when a runtime is running.
pub fn remote_keys(source: RemoteSource, max_cache_age: Duration) -> Arc<RemoteKeys> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<RemoteKeys>>>> = OnceLock::new();
    let registry = REGISTRY.get_or_init(Default::default);
    let mut map = registry.lock().unwrap_or_else(|e| e.into_inner());
    map.retain(|_, weak| weak.strong_count() > 0);
    let key = format!("{} max-cache-age {max_cache_age:?}", source.registry_key());
    if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
        return existing;
    }
    // Both outcomes exist from the first key set on, so the first failure
    // is an increase a `rate()` or `increase()` can see.
    for outcome in ["success", "failure"] {
        metrics::counter!("tollgate_jwks_fetches_total", "outcome" => outcome).increment(0);
    }
    let keys = Arc::new(RemoteKeys::new(source, max_cache_age));
    keys.start_refresher();
    map.insert(key, Arc::downgrade(&keys));
    keys
}

/// A remote JWKS with its cache state and background refresh.
#[derive(Debug)]
pub struct RemoteKeys {
    source: RemoteSource,
    /// The longest the fetched keys are used before the next fetch.
    max_cache_age: Duration,
    client: reqwest::Client,
    state: Mutex<State>,
    /// Single flight: one fetch at a time; waiters reuse its result.
    fetching: tokio::sync::Mutex<()>,
    refresher_started: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    /// Completed fetch attempts.
    attempts: u64,
    last_error: Option<String>,
    last_attempt: Option<Instant>,
    last_kid_refetch: Option<Instant>,
    consecutive_failures: u32,
    refresh_after: Option<Duration>,
}

impl RemoteKeys {
    fn new(source: RemoteSource, max_cache_age: Duration) -> Self {
        let client = reqwest::Client::builder()
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= 3 {
                    attempt.error("too many redirects")
                } else if check_url(attempt.url().as_str()).is_err() {
                    attempt.error("redirect to a non-HTTPS URL")
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .unwrap_or_default();
        Self {
            source,
            max_cache_age,
            client,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
            refresher_started: AtomicBool::new(false),
        }
    }

    /// A description of the source for logs and details.
    pub fn describe(&self) -> String {
        match &self.source {
            RemoteSource::Discovery { issuer } => format!("the discovery document of {issuer}"),
            RemoteSource::Jwks { uri } => format!("the JWKS at {uri}"),
        }
    }

    /// Completed fetch attempts (for tests and metrics).
    pub fn fetch_attempts(&self) -> u64 {
        self.lock().attempts
    }

    /// When the keys are fetched again after the last good fetch
    /// ([`refresh_interval`]); `None` before one.
    pub fn refresh_interval(&self) -> Option<Duration> {
        self.lock().refresh_after
    }

    // A std Mutex is fine: it is never held across an await.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot(&self) -> Result<Keys, String> {
        let state = self.lock();
        match &state.keys {
            Some(set) => Ok(Keys {
                set: set.clone(),
                degraded: state.last_error.is_some(),
            }),
            None => Err(format!(
                "no keys could be fetched from {}{}",
                self.describe(),
                state
                    .last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )),
        }
    }

    async fn keys_for(self: &Arc<Self>, kid: Option<&str>) -> Result<Keys, String> {
        self.start_refresher();
        let (have_keys, kid_unknown, may_fetch) = {
            let mut state = self.lock();
            let now = Instant::now();
            match &state.keys {
                None => {
                    let recently_failed = state.last_error.is_some()
                        && state
                            .last_attempt
                            .is_some_and(|at| now.duration_since(at) < EMPTY_RETRY);
                    (false, false, !recently_failed)
                }
                Some(set) => {
                    let unknown = kid.is_some_and(|kid| !set.has_kid(kid));
                    let allowed = unknown
                        && state
                            .last_kid_refetch
                            .is_none_or(|at| now.duration_since(at) >= KID_REFETCH_INTERVAL);
                    if allowed {
                        state.last_kid_refetch = Some(now);
                    }
                    (true, unknown, allowed)
                }
            }
        };
        if (!have_keys || kid_unknown) && may_fetch {
            if kid_unknown {
                tracing::debug!(source = %self.describe(), "unknown kid: refetching keys");
            }
            let _ = tokio::time::timeout(INLINE_FETCH_TIMEOUT, self.refresh()).await;
        }
        self.snapshot()
    }

    /// Fetches the keys once (single flight). True when the keys are good
    /// after it.
    pub async fn refresh(&self) -> bool {
        let attempts_before = self.lock().attempts;
        let _flight = self.fetching.lock().await;
        {
            let state = self.lock();
            if state.attempts != attempts_before {
                // Another caller fetched while this one waited.
                return state.last_error.is_none();
            }
        }
        // A child span when a Check waits for this fetch (first keys, an
        // unknown kid); background refreshes have no Check to belong to.
        let mut span =
            crate::telemetry::trace::child("jwks fetch", opentelemetry::trace::SpanKind::Client);
        if span.is_recording() {
            span.set("tollgate.keys.source", self.describe());
        }
        let result = self.fetch().await;
        if let Err(error) = &result {
            span.fail(error.clone());
        }
        drop(span);
        let mut state = self.lock();
        state.attempts += 1;
        state.last_attempt = Some(Instant::now());
        metrics::counter!(
            "tollgate_jwks_fetches_total",
            "outcome" => if result.is_ok() { "success" } else { "failure" }
        )
        .increment(1);
        match result {
            Ok((set, max_age)) => {
                for skipped in &set.skipped {
                    tracing::info!(source = %self.describe(), "key skipped: {skipped}");
                }
                state.keys = Some(Arc::new(set));
                state.last_error = None;
                state.consecutive_failures = 0;
                state.refresh_after = Some(refresh_interval(max_age, self.max_cache_age));
                true
            }
            Err(error) => {
                tracing::warn!(
                    source = %self.describe(),
                    kept_last_good = state.keys.is_some(),
                    "fetching keys failed: {error}"
                );
                state.last_error = Some(error);
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                false
            }
        }
    }

    /// Starts the background refresh (once, and only inside a runtime).
    fn start_refresher(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refresher_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                let Some(keys) = weak.upgrade() else { break };
                let ok = keys.refresh().await;
                let delay = {
                    let state = keys.lock();
                    if ok {
                        state.refresh_after.unwrap_or(DEFAULT_REFRESH)
                    } else {
                        let exp = state.consecutive_failures.min(6);
                        Duration::from_secs(1u64 << exp).min(MAX_RETRY)
                    }
                };
                drop(keys);
                tokio::time::sleep(delay).await;
            }
        });
    }

    async fn fetch(&self) -> Result<(KeySet, Option<Duration>), String> {
        let jwks_uri = match &self.source {
            RemoteSource::Jwks { uri } => uri.clone(),
            RemoteSource::Discovery { issuer } => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let url = check_url(&url)?;
                let (doc, _) = self.get_json(url).await?;
                // OpenID Connect Discovery 1.0 §4.3: the issuer in the
                // document must be exactly the one it was fetched for.
                match doc.get("issuer").and_then(Value::as_str) {
                    Some(found) if found == issuer => {}
                    Some(found) => {
                        return Err(format!(
                            "the discovery document names issuer {found:?}, not {issuer:?}"
                        ));
                    }
                    None => return Err("the discovery document has no issuer".to_owned()),
                }
                let uri = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or("the discovery document has no jwks_uri")?;
                check_url(uri)?
            }
        };
        let (doc, max_age) = self.get_json(jwks_uri).await?;
        let set = KeySet::from_jwks(&doc, false)?;
        if set.keys.is_empty() {
            return Err(format!(
                "the JWKS has no usable signing key ({})",
                set.skipped.join("; ")
            ));
        }
        Ok((set, max_age))
    }

    async fn get_json(&self, url: Url) -> Result<(Value, Option<Duration>), String> {
        let mut response = self
            .client
            .get(url.clone())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", response.status()));
        }
        let max_age = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age);
        if response
            .content_length()
            .is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(format!("GET {url}: the document is too large"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("GET {url}: the document is too large"));
            }
            body.extend_from_slice(&chunk);
        }
        let doc = serde_json::from_slice(&body)
            .map_err(|e| format!("GET {url}: the response is not JSON: {e}"))?;
        Ok((doc, max_age))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The `max-age` of a `Cache-Control` value (RFC 9111 §5.2.2.1);
/// `no-store`/`no-cache` count as zero (the minimum interval applies).
pub fn parse_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-store" || directive == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(secs) = directive.strip_prefix("max-age=") {
            max_age = secs
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_except_loopback() {
        assert!(check_url("https://id.example/jwks").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://[::1]:8080/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        assert!(
            check_url("http://id.example/jwks")
                .unwrap_err()
                .contains("HTTPS")
        );
        assert!(check_url("http://10.0.0.1/jwks").is_err());
        assert!(check_url("file:///etc/passwd").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn nested_field_paths() {
        assert_eq!(nest("jwks", "uri: plain HTTP"), "jwks.uri: plain HTTP");
        assert_eq!(
            nest("jwks", "exactly one of a, b"),
            "jwks: exactly one of a, b"
        );
        assert_eq!(
            nest("jwks", "Secret m/x not found"),
            "jwks: Secret m/x not found"
        );
    }

    #[test]
    fn cache_control_shortens_the_cache_age_but_never_lengthens_it() {
        let hour = DEFAULT_MAX_CACHE_AGE;
        let secs = Duration::from_secs;
        assert_eq!(refresh_interval(Some(secs(86_400)), hour), hour);
        assert_eq!(refresh_interval(Some(secs(600)), hour), secs(600));
        assert_eq!(refresh_interval(None, hour), DEFAULT_REFRESH);
        assert_eq!(refresh_interval(Some(Duration::ZERO), hour), MIN_REFRESH);
        assert_eq!(refresh_interval(Some(secs(86_400)), secs(1800)), secs(1800));
        assert_eq!(refresh_interval(None, secs(120)), secs(120));
    }

    #[test]
    fn max_age_is_read() {
        assert_eq!(
            parse_max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=abc"), None);
    }
}
