//! User authentication: OAuth 2.0 / OIDC access tokens (JWT, RFC 9068).
//!
//! Per request: read `Authorization: Bearer` (RFC 6750 §2.1), look the
//! token up in the verified-token cache, else parse it, pick the issuer by
//! its exact `iss`, check the algorithm against the issuer's allow-list,
//! find the key (fetching on an unknown `kid`, rate-limited) and verify the
//! signature. Then, on every use, cached or not: `exp`/`nbf`/`iat` with
//! leeway, `aud` any-of, `typ` (RFC 9068 §4), `sub`, and the `cnf`
//! bindings (RFC 8705 certificate, RFC 9449 DPoP).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::certificate;
use super::dpop::{self, DpopPolicy};
use super::jwk::{self, is_symmetric};
use super::jwt::{self, TimeError};
use super::keys::{self, KeyProvider};
use super::token_cache::{self, TokenCache, Verified};
use crate::compile_context::CompileContext;
use crate::decision::Deny;
use crate::origin::Origin;
use crate::policy::types::{Requirement, UserSpec};
use crate::reason::Reason;
use crate::request::RequestContext;
use crate::telemetry::handles;

/// Default clock skew tolerated on user tokens.
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Compiled `spec.user`.
pub struct UserPolicy {
    required: bool,
    issuers: Vec<Issuer>,
    certificate_binding: Requirement,
    require_access_token_type: bool,
    /// DPoP (RFC 9449); without a `dpop` section, `optional` with the
    /// default settings (bound tokens need proofs, others pass as Bearer).
    dpop: DpopPolicy,
    cache: TokenCache,
    /// Signature verifications performed (a cache hit performs none).
    signature_checks: AtomicU64,
}

impl std::fmt::Debug for UserPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserPolicy")
            .field("required", &self.required)
            .field("issuers", &self.issuers)
            .field("certificate_binding", &self.certificate_binding)
            .field("require_access_token_type", &self.require_access_token_type)
            .field("dpop", &self.dpop)
            .finish_non_exhaustive()
    }
}

/// One trusted issuer, compiled.
#[derive(Debug)]
struct Issuer {
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: f64,
    keys: KeyProvider,
}

/// An authenticated user. Users are identified by issuer and subject
/// together: a `sub` is unique only per issuer.
#[derive(Clone, Debug, Default)]
pub struct UserIdentity {
    pub issuer: String,
    pub subject: String,
    /// The token's claims, shared with the verified-token cache entry.
    pub claims: Arc<Map<String, Value>>,
    /// `cnf.jkt` (RFC 9449 §6.1): the DPoP key the token is bound to.
    pub cnf_jkt: Option<String>,
    /// `cnf.x5t#S256` (RFC 8705 §3.1): the certificate it is bound to.
    pub cnf_x5t_s256: Option<String>,
    /// `exp`, seconds since the epoch (possibly fractional).
    pub expires_at: f64,
    /// `jti`, when the token has one.
    pub jti: Option<String>,
    /// SHA-256 of the whole `Authorization` value (scheme and token): the
    /// verified-token cache key, and the hash an attestation token's
    /// binding to `authorization` alone compares with, so a request hashes
    /// its longest header once.
    pub authorization_sha256: [u8; 32],
    /// The store's digest of this user (`store::keys::user_digest(issuer,
    /// subject)`), computed once per verified token.
    pub store_digest: Option<Arc<str>>,
    /// The verified DPoP proof, when the token came with one: its key
    /// thumbprint and the `jti` the admission stage remembers.
    pub dpop: Option<dpop::Proof>,
}

impl UserPolicy {
    /// Compiles `spec.user`. Errors name the field relative to `user`.
    pub fn compile(spec: &UserSpec, ctx: &CompileContext<'_>) -> Result<Self, String> {
        let dpop = DpopPolicy::compile(&spec.dpop.clone().unwrap_or_default())
            .map_err(|e| format!("dpop.{e}"))?;
        if spec.issuers.is_empty() {
            return Err("issuers: at least one issuer is required".to_owned());
        }
        let mut issuers = Vec::with_capacity(spec.issuers.len());
        for (i, issuer_spec) in spec.issuers.iter().enumerate() {
            let at = |field: &str, e: String| format!("issuers[{i}].{field}: {e}");
            if issuer_spec.issuer.is_empty() {
                return Err(at("issuer", "must not be empty".into()));
            }
            if spec.issuers[..i]
                .iter()
                .any(|other| other.issuer == issuer_spec.issuer)
            {
                return Err(at(
                    "issuer",
                    format!("{} is listed twice", issuer_spec.issuer),
                ));
            }
            if issuer_spec.audiences.is_empty() {
                return Err(at(
                    "audiences",
                    "at least one audience is required, so a token minted for another API cannot pass"
                        .into(),
                ));
            }
            if issuer_spec.algorithms.is_empty() {
                return Err(at(
                    "algorithms",
                    "at least one algorithm is required".into(),
                ));
            }
            let mut algorithms = Vec::new();
            for name in &issuer_spec.algorithms {
                algorithms.push(jwk::parse_algorithm(name).map_err(|e| at("algorithms", e))?);
            }
            let source = keys::compile_source(&issuer_spec.jwks, ctx, Some(&issuer_spec.issuer))
                .map_err(|e| format!("issuers[{i}].{}", keys::nest("jwks", &e)))?;
            if let Some(alg) = algorithms.iter().find(|a| is_symmetric(**a))
                && !source.from_secret
            {
                return Err(at(
                    "algorithms",
                    format!("{alg:?} needs a secretRef key (HMAC keys come only from Secrets)"),
                ));
            }
            let leeway = issuer_spec
                .leeway
                .as_ref()
                .map_or(DEFAULT_LEEWAY, |l| l.get());
            crate::policy::bounds::duration(
                &format!("issuers[{i}].leeway"),
                leeway,
                Duration::ZERO,
                crate::policy::bounds::MAX_LEEWAY,
            )?;
            issuers.push(Issuer {
                issuer: issuer_spec.issuer.clone(),
                audiences: issuer_spec.audiences.clone(),
                algorithms,
                leeway: leeway.as_secs_f64(),
                keys: source.provider,
            });
        }
        Ok(Self {
            required: spec.required,
            issuers,
            certificate_binding: spec.certificate_binding,
            require_access_token_type: spec.require_access_token_type,
            dpop,
            cache: TokenCache::new(token_cache::DEFAULT_CAPACITY),
            signature_checks: AtomicU64::new(0),
        })
    }

    /// Signature verifications performed so far (tests and metrics: a
    /// repeat token is served from the cache and adds none).
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// Authenticates the user of `request`; `Ok(None)` when no token was
    /// sent and none is required.
    pub async fn authenticate(
        &self,
        request: &RequestContext,
        origin: &Origin,
        now: Duration,
    ) -> Result<Option<UserIdentity>, Deny> {
        let invalid = |detail: &str| Deny::new(Reason::UserTokenInvalid, detail);
        let mut values = request.headers.get_all("authorization");
        let Some(value) = values.next() else {
            return if self.required {
                Err(Deny::new(
                    Reason::UserTokenMissing,
                    "this API requires a user access token (Authorization: Bearer)",
                ))
            } else {
                Ok(None)
            };
        };
        if values.next().is_some() {
            return Err(Deny::new(
                Reason::RequestMalformed,
                "the authorization header appears more than once",
            ));
        }
        let (scheme, token) = match value.split_once(' ') {
            Some((scheme, token)) => (scheme, token.trim_start_matches(' ')),
            None => (value, ""),
        };
        let scheme = if scheme.eq_ignore_ascii_case("bearer") {
            dpop::Scheme::Bearer
        } else if scheme.eq_ignore_ascii_case("dpop") {
            dpop::Scheme::Dpop
        } else {
            return Err(invalid(
                "the Authorization header does not carry a Bearer or DPoP token",
            ));
        };
        if token.is_empty() {
            return Err(invalid("the access token is empty"));
        }
        let now_secs = now.as_secs_f64();
        // The whole value, not just the token: the attestation binding
        // hashes exactly this value, and reuses this hash.
        let digest = token_cache::digest(value);
        // RFC 9449 §7.1: a token sent under the DPoP scheme is challenged
        // with the DPoP scheme when it fails.
        let challenge = |deny: Deny| match scheme {
            dpop::Scheme::Dpop => self.dpop.token_challenge(deny),
            dpop::Scheme::Bearer => deny,
        };
        let verified = self
            .verify(token, digest, now_secs)
            .await
            .map_err(challenge)?;
        let issuer = self
            .issuers
            .get(verified.issuer)
            .ok_or_else(|| invalid("the token's issuer is not trusted"))?;
        let mut user = self
            .check_claims(&verified, issuer, origin, now_secs, digest)
            .map_err(challenge)?;
        // RFC 9449: the binding and the proof, after the token itself
        // verified (a proof for a forged token proves nothing).
        user.dpop =
            self.dpop
                .check(request, origin, scheme, token, user.cnf_jkt.as_deref(), now)?;
        Ok(Some(user))
    }

    /// The DPoP settings (for the replay-window check at compile time).
    pub fn dpop(&self) -> &DpopPolicy {
        &self.dpop
    }

    /// The signature half: from the cache, or verified and cached.
    async fn verify(
        &self,
        token: &str,
        digest: token_cache::TokenDigest,
        now: f64,
    ) -> Result<Arc<Verified>, Deny> {
        let invalid = |detail: String| Deny::new(Reason::UserTokenInvalid, detail);
        if let Some(hit) = self.cache.get(&digest) {
            let key_still_served = self
                .issuers
                .get(hit.issuer)
                .and_then(|issuer| issuer.keys.current())
                .is_some_and(|set| set.contains(&hit.key));
            if key_still_served {
                handles::token_cache("hit").increment(1);
                return Ok(hit);
            }
            self.cache.remove(&digest);
        }
        handles::token_cache("miss").increment(1);

        let jwt = jwt::parse(token).map_err(|e| invalid(e.to_string()))?;
        let Some(iss) = jwt::string_claim(&jwt.claims, "iss") else {
            return Err(invalid("the token has no iss claim".into()));
        };
        let Some(index) = self.issuers.iter().position(|i| i.issuer == iss) else {
            return Err(invalid(
                "the token's issuer is not trusted by this API".into(),
            ));
        };
        let issuer = &self.issuers[index];
        let alg = jwk::parse_algorithm(&jwt.header.alg).map_err(|e| invalid(e.to_string()))?;
        if !issuer.algorithms.contains(&alg) {
            return Err(invalid(format!(
                "algorithm {alg:?} is not accepted for this issuer"
            )));
        }
        let kid = jwt.header.kid.as_deref();
        let keys = issuer.keys.keys_for(kid).await.map_err(|why| {
            tracing::warn!(issuer = %issuer.issuer, "keys unavailable: {why}");
            keys_unavailable(&issuer.issuer)
        })?;
        let candidates = keys.set.candidates(kid, alg);
        if candidates.is_empty() {
            return Err(if keys.degraded {
                // The key may exist at an IdP tollgate cannot reach now.
                keys_unavailable(&issuer.issuer)
            } else if kid.is_some() {
                invalid("no key of the issuer has the token's kid".into())
            } else {
                invalid(format!("no key of the issuer can verify {alg:?}"))
            });
        }
        self.signature_checks.fetch_add(1, Ordering::Relaxed);
        let Some(key) = candidates.into_iter().find(|key| key.verify(&jwt, alg)) else {
            return Err(invalid("the token signature does not verify".into()));
        };
        let ttl = jwt::numeric_date(&jwt.claims, "exp")
            .ok()
            .flatten()
            .map_or(Duration::ZERO, |exp| {
                Duration::try_from_secs_f64(exp - now).unwrap_or(Duration::ZERO)
            });
        // Derived from the verified claims once; `check_claims` still
        // refuses a token without a `sub` on every use.
        let subject_digest = jwt::string_claim(&jwt.claims, "sub")
            .filter(|sub| !sub.is_empty())
            .map(|sub| Arc::from(crate::store::keys::user_digest(&issuer.issuer, sub)));
        let verified = Arc::new(Verified {
            issuer: index,
            key: key.fingerprint,
            typ: jwt.header.typ.clone(),
            claims: Arc::new(jwt.claims),
            ttl,
            subject_digest,
        });
        self.cache.insert(digest, verified.clone());
        Ok(verified)
    }

    /// The checks that depend on time, this policy and this request; run on
    /// every use, cached or not.
    fn check_claims(
        &self,
        verified: &Verified,
        issuer: &Issuer,
        origin: &Origin,
        now: f64,
        digest: token_cache::TokenDigest,
    ) -> Result<UserIdentity, Deny> {
        let invalid = |detail: &str| Deny::new(Reason::UserTokenInvalid, detail);
        let claims = &verified.claims;
        let times = jwt::check_times(claims, now, issuer.leeway).map_err(|e| match e {
            TimeError::Expired => Deny::new(Reason::UserTokenExpired, "the user token expired"),
            other => invalid(&other.to_string()),
        })?;
        if !jwt::audience_matches(claims, &issuer.audiences) {
            return Err(invalid("the token is not issued for this API (aud)"));
        }
        // RFC 9068 §4: the typ must be at+jwt (or application/at+jwt).
        if self.require_access_token_type {
            let typ = verified
                .typ
                .as_deref()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if typ != "at+jwt" && typ != "application/at+jwt" {
                return Err(invalid("the token is not an access token (typ at+jwt)"));
            }
        }
        let Some(subject) = jwt::string_claim(claims, "sub").filter(|s| !s.is_empty()) else {
            return Err(invalid("the token has no sub claim"));
        };
        let cnf = claims.get("cnf").and_then(Value::as_object);
        let cnf_text = |name: &str| -> Result<Option<String>, Deny> {
            match cnf.and_then(|c| c.get(name)) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(invalid("the token's cnf claim is malformed")),
            }
        };
        let cnf_jkt = cnf_text("jkt")?;
        let cnf_x5t = cnf_text("x5t#S256")?;
        match (&cnf_x5t, self.certificate_binding) {
            (_, Requirement::Disabled) => {}
            (Some(expected), _) => {
                certificate::check_binding(expected, origin.client_certificate.as_deref())
                    .map_err(|e| Deny::new(Reason::CertificateBindingMismatch, e.to_string()))?;
            }
            (None, Requirement::Required) => {
                return Err(Deny::new(
                    Reason::CertificateBindingMismatch,
                    "this API requires a certificate-bound token (cnf.x5t#S256)",
                ));
            }
            (None, Requirement::Optional) => {}
        }
        Ok(UserIdentity {
            issuer: issuer.issuer.clone(),
            subject: subject.to_owned(),
            claims: Arc::clone(claims),
            cnf_jkt,
            cnf_x5t_s256: cnf_x5t,
            expires_at: times.exp,
            jti: jwt::string_claim(claims, "jti").map(str::to_owned),
            authorization_sha256: digest,
            store_digest: verified.subject_digest.clone(),
            dpop: None,
        })
    }
}

fn keys_unavailable(issuer: &str) -> Deny {
    Deny::new(
        Reason::KeysUnavailable,
        format!("the verification keys of issuer {issuer} cannot be fetched right now"),
    )
    .with_header("retry-after", "5")
}
