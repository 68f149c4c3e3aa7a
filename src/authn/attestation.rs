//! App attestation tokens in the style of Approov: a short-lived JWT the app
//! obtains from an attestation service after proving it is genuine, sent in
//! a header (default `approov-token`).
//!
//! - Keys: HMAC secrets from a Secret (Approov's default is a base64
//!   secret: `encoding: base64`; several keys for rotation), or a JWKS for
//!   asymmetric keys.
//! - `exp` is required and may be fractional (Approov emits
//!   `4708683205.891912`); `maxLifetime` bounds how far ahead it may lie.
//! - Token binding: the `pay` claim is the standard base64 (padded) SHA-256
//!   of the bound headers' values concatenated in order; for
//!   `authorization` the whole value including `Bearer `. A header sent
//!   more than once counts as its lines' values joined with `, `. A bound
//!   header that is absent fails the binding (never the hash of an empty
//!   string). Compared in constant time.
//! - Verified tokens are cached like user tokens ([`token_cache`]): a
//!   repeat token skips the parse and the signature check, never the time
//!   claims, `maxLifetime`, the issuer or the binding, which are checked
//!   on every request against its own headers.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::jwk::{self, is_symmetric};
use super::jwt::{self, TimeError};
use super::keys::{self, KeyProvider};
use super::token_cache::{self, TokenCache, Verified};
use crate::compile_context::CompileContext;
use crate::decision::Deny;
use crate::limits::Nonce;
use crate::policy::bounds;
use crate::policy::types::AttestationSpec;
use crate::reason::Reason;
use crate::request::RequestContext;

/// Default header of the attestation token.
pub const DEFAULT_HEADER: &str = "approov-token";
/// Default bound on `exp - now`.
const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(600);

/// Compiled `spec.app.attestation`.
#[derive(Debug)]
pub struct Attestation {
    pub required: bool,
    pub header: String,
    keys: KeyProvider,
    algorithms: Vec<Algorithm>,
    max_lifetime: f64,
    issuer: Option<String>,
    /// Accepted `aud` values; empty: `aud` is not checked.
    audiences: Vec<String>,
    /// Required `typ` header, lower-case, without `application/`.
    typ: Option<String>,
    binding: Option<Binding>,
    pub single_use: bool,
    leeway: f64,
    /// Verified signatures of this compiled policy (a new snapshot starts
    /// empty; an entry whose key left the key set is dropped).
    cache: TokenCache,
}

/// Compiled token binding.
#[derive(Clone, Debug)]
pub struct Binding {
    pub claim: String,
    /// Lower-case header names, in hashing order.
    pub headers: Vec<String>,
    pub required: bool,
}

/// What a verified attestation token says.
#[derive(Clone, Debug, Default)]
pub struct AttestationClaims {
    /// Shared with the verified-token cache entry.
    pub claims: Arc<Map<String, Value>>,
    /// `exp`, possibly fractional.
    pub exp: f64,
    /// `jti`, for single-use checks.
    pub jti: Option<String>,
    /// `did`: the device id.
    pub device: Option<String>,
    /// `ipk`: the installation public key (used by message signing).
    pub ipk: Option<String>,
    /// The fingerprint of the attester key that verified the token: a
    /// single-use token's `jti` is remembered under it.
    pub key: [u8; 32],
}

impl Attestation {
    /// Compiles `attestation`. Errors name the field relative to it.
    pub fn compile(spec: &AttestationSpec, ctx: &CompileContext<'_>) -> Result<Self, String> {
        let names = if spec.algorithms.is_empty() {
            vec!["HS256".to_owned()]
        } else {
            spec.algorithms.clone()
        };
        let mut algorithms = Vec::new();
        for name in &names {
            algorithms.push(jwk::parse_algorithm(name).map_err(|e| format!("algorithms: {e}"))?);
        }
        let source = keys::compile_source(&spec.keys, ctx, spec.issuer.as_deref())
            .map_err(|e| keys::nest("keys", &e))?;
        if let Some(alg) = algorithms.iter().find(|a| is_symmetric(**a))
            && !source.from_secret
        {
            return Err(format!(
                "algorithms: {alg:?} needs a secretRef key (HMAC keys come only from Secrets)"
            ));
        }
        let header = spec
            .header
            .as_deref()
            .unwrap_or(DEFAULT_HEADER)
            .to_ascii_lowercase();
        if header.is_empty() || header == "authorization" {
            return Err("header: must name a dedicated header".to_owned());
        }
        let binding = match &spec.binding {
            None => None,
            Some(b) => {
                if b.claim.is_empty() {
                    return Err("binding.claim: must not be empty".to_owned());
                }
                if b.headers.is_empty() {
                    return Err("binding.headers: at least one header is required".to_owned());
                }
                let headers: Vec<String> =
                    b.headers.iter().map(|h| h.to_ascii_lowercase()).collect();
                if headers.contains(&header) {
                    return Err("binding.headers: the token cannot bind its own header".to_owned());
                }
                Some(Binding {
                    claim: b.claim.clone(),
                    headers,
                    required: b.required,
                })
            }
        };
        let max_lifetime = spec
            .max_lifetime
            .as_ref()
            .map_or(DEFAULT_MAX_LIFETIME, |d| d.get());
        bounds::duration(
            "maxLifetime",
            max_lifetime,
            Duration::from_secs(1),
            bounds::MAX_APP_TOKEN_LIFETIME,
        )?;
        let leeway = spec.leeway.as_ref().map_or(Duration::ZERO, |d| d.get());
        bounds::duration("leeway", leeway, Duration::ZERO, bounds::MAX_LEEWAY)?;
        Ok(Self {
            required: spec.required,
            header,
            keys: source.provider,
            algorithms,
            max_lifetime: max_lifetime.as_secs_f64(),
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            typ: match spec.typ.as_deref().map(media_type) {
                Some("") => return Err("typ: must not be empty".to_owned()),
                typ => typ.map(str::to_ascii_lowercase),
            },
            binding,
            single_use: spec.single_use,
            leeway: leeway.as_secs_f64(),
            cache: TokenCache::new(token_cache::DEFAULT_CAPACITY),
        })
    }

    /// Verifies the attestation token of `request`; `Ok(None)` when none was
    /// sent and none is required. `authorization_sha256`: the SHA-256 of the
    /// request's `Authorization` value when the user stage already hashed
    /// it ([`super::user::UserIdentity::authorization_sha256`]); a binding
    /// to `authorization` alone then compares with it instead of hashing
    /// the value again.
    pub async fn verify(
        &self,
        request: &RequestContext,
        now: Duration,
        authorization_sha256: Option<&[u8; 32]>,
    ) -> Result<Option<AttestationClaims>, Deny> {
        let invalid = |detail: String| Deny::new(Reason::AttestationInvalid, detail);
        let mut values = request.headers.get_all(&self.header);
        let Some(token) = values.next() else {
            return if self.required {
                Err(Deny::new(
                    Reason::AttestationMissing,
                    format!("the app attestation token ({}) is missing", self.header),
                ))
            } else {
                Ok(None)
            };
        };
        if values.next().is_some() {
            return Err(Deny::new(
                Reason::RequestMalformed,
                format!("the {} header appears more than once", self.header),
            ));
        }
        let verified = self.verified(token.trim(), now).await?;
        let claims = &verified.claims;
        let now = now.as_secs_f64();
        let times = jwt::check_times(claims, now, self.leeway).map_err(|e| match e {
            TimeError::Expired => Deny::new(Reason::AttestationExpired, "the app token expired"),
            other => invalid(format!("app token: {other}")),
        })?;
        if times.exp - now > self.max_lifetime + self.leeway {
            return Err(invalid(
                "the app token's exp lies further ahead than the policy's maxLifetime".into(),
            ));
        }
        if let Some(expected) = &self.issuer
            && jwt::string_claim(claims, "iss") != Some(expected.as_str())
        {
            return Err(invalid("the app token's issuer is not accepted".into()));
        }
        // RFC 7519 §4.1.3: a token for another audience is not for us.
        if !self.audiences.is_empty() && !jwt::audience_matches(claims, &self.audiences) {
            return Err(invalid(
                "the app token is not issued for this API (aud)".into(),
            ));
        }
        if let Some(expected) = &self.typ
            && !verified
                .typ
                .as_deref()
                .map(media_type)
                .is_some_and(|typ| typ.eq_ignore_ascii_case(expected))
        {
            return Err(invalid(format!(
                "the app token's typ header is not {expected}"
            )));
        }
        if let Some(binding) = &self.binding {
            check_binding(binding, claims, request, authorization_sha256)?;
        }
        Ok(Some(AttestationClaims {
            exp: times.exp,
            jti: jwt::string_claim(claims, "jti").map(str::to_owned),
            device: jwt::string_claim(claims, "did").map(str::to_owned),
            ipk: jwt::string_claim(claims, "ipk").map(str::to_owned),
            claims: Arc::clone(claims),
            key: verified.key,
        }))
    }

    /// The signature half: from the cache, or parsed, verified and cached.
    async fn verified(&self, token: &str, now: Duration) -> Result<Arc<Verified>, Deny> {
        let invalid = |detail: String| Deny::new(Reason::AttestationInvalid, detail);
        let digest = token_cache::digest(token);
        if let Some(hit) = self.cache.get(&digest) {
            if self
                .keys
                .current()
                .is_some_and(|set| set.contains(&hit.key))
            {
                return Ok(hit);
            }
            self.cache.remove(&digest);
        }
        let jwt = jwt::parse(token).map_err(|e| invalid(e.to_string()))?;
        let alg = jwk::parse_algorithm(&jwt.header.alg).map_err(invalid)?;
        if !self.algorithms.contains(&alg) {
            return Err(invalid(format!(
                "algorithm {alg:?} is not accepted for app tokens"
            )));
        }
        let kid = jwt.header.kid.as_deref();
        let keys = self.keys.keys_for(kid).await.map_err(|why| {
            tracing::warn!("attestation keys unavailable: {why}");
            Deny::new(
                Reason::KeysUnavailable,
                "the app attestation keys cannot be fetched right now",
            )
            .with_header("retry-after", "5")
        })?;
        let Some(key) = keys
            .set
            .candidates(kid, alg)
            .into_iter()
            .find(|key| key.verify(&jwt, alg))
        else {
            return Err(invalid("the app token signature does not verify".into()));
        };
        // Cached no longer than the token lives (an `exp` the per-request
        // checks refuse makes a zero TTL: not cached).
        let ttl = jwt::numeric_date(&jwt.claims, "exp")
            .ok()
            .flatten()
            .map_or(Duration::ZERO, |exp| {
                Duration::try_from_secs_f64(exp - now.as_secs_f64()).unwrap_or(Duration::ZERO)
            });
        let verified = Arc::new(Verified {
            issuer: 0,
            key: key.fingerprint,
            typ: jwt.header.typ.clone(),
            claims: Arc::new(jwt.claims),
            ttl,
            subject_digest: None,
        });
        self.cache.insert(digest, Arc::clone(&verified));
        Ok(verified)
    }
}

impl Attestation {
    /// Under `singleUse`, how long a token stays acceptable (at most
    /// `maxLifetime` plus leeway): the replay window must cover it.
    pub fn single_use_window(&self) -> Option<Duration> {
        self.single_use
            .then(|| Duration::from_secs_f64(self.max_lifetime + self.leeway))
    }

    /// Under `singleUse`, the token's `jti` as a nonce remembered until the
    /// token expires (`exp` plus leeway); a token without `jti` cannot be
    /// used once and is refused.
    pub fn single_use_nonce(
        &self,
        claims: &AttestationClaims,
        now: Duration,
    ) -> Result<Option<Nonce>, Deny> {
        if !self.single_use {
            return Ok(None);
        }
        let Some(jti) = claims
            .jti
            .as_deref()
            .filter(|j| !j.is_empty() && j.len() <= 256)
        else {
            return Err(Deny::new(
                Reason::AttestationInvalid,
                "this API accepts single-use app tokens only, and the app token has no jti",
            ));
        };
        let remaining = (claims.exp + self.leeway - now.as_secs_f64()).max(0.0);
        Ok(Some(Nonce {
            scope: SINGLE_USE_SCOPE.to_owned(),
            // The jti is unique per attester key; a token is remembered
            // under the key that signed it, whatever app key comes with it.
            credential: crate::authn::certificate::hex(claims.key),
            value: jti.to_owned(),
            ttl: Duration::from_secs(remaining.ceil() as u64 + 1),
        }))
    }
}

/// A JOSE `typ` value without `application/` (RFC 7515 §4.1.9 lets it be
/// left out); compared case-insensitively.
fn media_type(typ: &str) -> &str {
    let typ = typ.trim();
    match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    }
}

/// The nonce scope of single-use app token `jti`s.
pub const SINGLE_USE_SCOPE: &str = "attestation";

/// The binding value of `values`: standard base64 (padded) of the SHA-256
/// of their concatenation.
pub fn binding_hash<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let mut hash = Sha256::new();
    for value in values {
        hash.update(value.as_bytes());
    }
    STANDARD.encode(hash.finalize())
}

/// The value a binding hashes for header `name`: its one field line's
/// value as sent, or — when the header is sent more than once — every
/// line's value, in order, joined with `, ` (the combined field value of
/// RFC 9110 §5.3, what a recipient that combines the lines reads). So a
/// second line cannot ride along with a token bound to the first one, and
/// a token bound to both passes. `None` when the header is absent.
fn bound_value<'r>(request: &'r RequestContext, name: &'r str) -> Option<Cow<'r, str>> {
    let mut lines = request.headers.get_all(name);
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut joined = format!("{first}, {second}");
    for line in lines {
        joined.push_str(", ");
        joined.push_str(line);
    }
    Some(Cow::Owned(joined))
}

/// Checks the binding claim against this request's headers.
/// `authorization_sha256` must be the SHA-256 of this request's
/// `Authorization` value (the user stage's, over the same header); it
/// stands in for hashing when the binding names `authorization` alone.
fn check_binding(
    binding: &Binding,
    claims: &Map<String, Value>,
    request: &RequestContext,
    authorization_sha256: Option<&[u8; 32]>,
) -> Result<(), Deny> {
    let mismatch = |detail: String| Deny::new(Reason::TokenBindingMismatch, detail);
    let Some(claimed) = claims.get(&binding.claim) else {
        return if binding.required {
            Err(mismatch(format!(
                "the app token has no {} claim binding it to the request",
                binding.claim
            )))
        } else {
            Ok(())
        };
    };
    let Some(claimed) = claimed.as_str() else {
        return Err(mismatch(format!(
            "the app token's {} claim is not a string",
            binding.claim
        )));
    };
    let mut values: Vec<Cow<'_, str>> = Vec::with_capacity(binding.headers.len());
    let mut repeated = false;
    for name in &binding.headers {
        match bound_value(request, name) {
            Some(value) => {
                repeated |= matches!(value, Cow::Owned(_));
                values.push(value);
            }
            None => {
                return Err(mismatch(format!(
                    "the app token is bound to the {name} header, which the request lacks"
                )));
            }
        }
    }
    let expected = match (binding.headers.as_slice(), authorization_sha256) {
        ([only], Some(digest)) if only == "authorization" && !repeated => STANDARD.encode(digest),
        _ => binding_hash(values.iter().map(|v| v.as_ref())),
    };
    if bool::from(expected.as_bytes().ct_eq(claimed.as_bytes())) {
        Ok(())
    } else {
        Err(mismatch(format!(
            "the app token's {} claim does not match the request's {}",
            binding.claim,
            binding.headers.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_hash_is_padded_standard_base64_of_the_concatenation() {
        // SHA-256("Bearer abc") computed independently (coreutils sha256sum | base64).
        let one = binding_hash(["Bearer abc"]);
        assert_eq!(one, "w1Xc6WwWEogNEZQP/dkBTThsJT4MNlKmzQanIm970rY=");
        assert_eq!(binding_hash(["Bearer ", "abc"]), one);
        assert_ne!(binding_hash(["Bearer abd"]), one);
    }
}
