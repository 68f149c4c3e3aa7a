//! DPoP: proof of possession for user access tokens (RFC 9449).
//!
//! A DPoP-bound access token carries `cnf.jkt`, the RFC 7638 thumbprint of
//! the client's public key. The client sends it as `Authorization: DPoP
//! <token>` together with a `DPoP` header holding a fresh proof: a JWT it
//! signed with that key, naming the method and URI of this very request,
//! the hash of the token, and a unique `jti`. A stolen token is useless
//! without the private key, and a captured proof is useless twice because
//! its `jti` is remembered (the returned [`Nonce`]) until the proof could
//! no longer be accepted anyway.
//!
//! - [`DpopPolicy::compile`] — `spec.user.dpop`;
//! - [`DpopPolicy::check`] — the mode rules (§7.1, §7.2) for one request;
//! - [`DpopPolicy::verify_proof`] — the proof checks of §4.3, in order;
//! - [`thumbprint`] — the RFC 7638 JWK thumbprint;
//! - [`normalize_uri`] — RFC 3986 §6.2.2–6.2.3 normalisation for `htu`.
//!
//! Server-provided nonces (`DPoP-Nonce`, §8) are not implemented: the
//! `iat` window plus the remembered `jti` give replay protection without
//! the extra round trip.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::jwk::{self, VerifyKey, is_symmetric};
use super::jwt;
use super::mint::{MintError, SigningKey};
use crate::decision::Deny;
use crate::limits::Nonce;
use crate::origin::Origin;
use crate::policy::types::{DpopSpec, Requirement};
use crate::reason::Reason;
use crate::request::RequestContext;

/// The nonce scope of proof `jti`s.
pub const NONCE_SCOPE: &str = "dpop";
/// Default bound on `|now - iat|` (RFC 9449 §11.1 suggests seconds to minutes).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// Longest accepted `max_age`: a longer window makes replay state large and
/// stolen proofs useful for long.
pub const MAX_MAX_AGE: Duration = Duration::from_secs(600);
/// Longest accepted proof. A proof is a header, a key and five claims.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// Longest accepted `jti`.
const MAX_JTI_BYTES: usize = 256;
/// Algorithms accepted when the policy names none (all asymmetric).
const DEFAULT_ALGORITHMS: [Algorithm; 5] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::RS256,
    Algorithm::PS256,
];
/// JWK members that hold private key material (RFC 7518 §6.2.2, §6.3.2,
/// §6.4.1; RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Compiled `spec.user.dpop`.
#[derive(Clone, Debug)]
pub struct DpopPolicy {
    pub mode: Requirement,
    algorithms: Vec<Algorithm>,
    max_age: Duration,
    /// `algs` of the `DPoP` challenge (RFC 9449 §7.1), space-separated.
    algs: String,
}

/// How the access token was presented (RFC 9449 §7.1 / RFC 6750 §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    Dpop,
}

/// A verified proof: the key it was signed with and the `jti` to remember.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 thumbprint of the proof's key (base64url SHA-256).
    pub jkt: String,
    /// The `jti`, under the key's thumbprint, to be remembered until the
    /// proof's acceptance window ends.
    pub nonce: Nonce,
}

/// Why a proof is not acceptable. Messages are client-safe: they never echo
/// proof or token content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the request has no DPoP proof header")]
    Missing,
    #[error("the request has more than one DPoP header")]
    Multiple,
    #[error("the DPoP proof is not a JWT: {0}")]
    Malformed(String),
    #[error("the DPoP proof's typ is not dpop+jwt")]
    Type,
    #[error("the DPoP proof's algorithm is not accepted")]
    Algorithm,
    #[error("the DPoP proof's jwk header is missing or not a usable public key: {0}")]
    Key(String),
    #[error("the DPoP proof's jwk header contains private key material")]
    PrivateKey,
    #[error("the DPoP proof's signature does not verify with its jwk")]
    Signature,
    #[error("the DPoP proof lacks the {0} claim (or it has the wrong type)")]
    Claim(&'static str),
    #[error("the DPoP proof's htm does not match the request method")]
    Method,
    #[error("the DPoP proof's htu does not match the request URI")]
    Uri,
    #[error("the DPoP proof's iat is outside the accepted window of {0}s")]
    Stale(u64),
    #[error("the DPoP proof's ath does not match the access token")]
    AccessTokenHash,
    #[error("the DPoP proof's key is not the key the access token is bound to (cnf.jkt)")]
    KeyMismatch,
}

impl DpopPolicy {
    /// Compiles `dpop`. Errors name the field relative to it.
    pub fn compile(spec: &DpopSpec) -> Result<Self, String> {
        let algorithms = if spec.algorithms.is_empty() {
            DEFAULT_ALGORITHMS.to_vec()
        } else {
            let mut algorithms = Vec::new();
            for name in &spec.algorithms {
                let alg = jwk::parse_algorithm(name).map_err(|e| format!("algorithms: {e}"))?;
                // RFC 9449 §4.3 step 5: a proof must use an asymmetric
                // algorithm; a shared secret proves nothing about a client.
                if is_symmetric(alg) {
                    return Err(format!(
                        "algorithms: {name} is symmetric; DPoP proofs use asymmetric keys"
                    ));
                }
                if !algorithms.contains(&alg) {
                    algorithms.push(alg);
                }
            }
            algorithms
        };
        let max_age = spec.max_age.as_ref().map_or(DEFAULT_MAX_AGE, |d| d.get());
        if max_age.is_zero() {
            return Err("maxAge: must be more than 0s".to_owned());
        }
        if max_age > MAX_MAX_AGE {
            return Err(format!(
                "maxAge: at most {}s (a proof is meant for one request, now)",
                MAX_MAX_AGE.as_secs()
            ));
        }
        let algs = algorithms
            .iter()
            .map(|a| super::mint::algorithm_name(*a))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Self {
            mode: spec.mode,
            algorithms,
            max_age,
            algs,
        })
    }

    /// How long a proof is accepted after (and before) its `iat`: the
    /// replay window must cover it.
    pub fn acceptance_window(&self) -> Duration {
        self.max_age
    }

    /// The `algs` parameter of the `DPoP` challenge.
    pub fn challenge_algs(&self) -> &str {
        &self.algs
    }

    /// Applies the policy to a request whose access token verified.
    /// `token` is the access token as sent, `cnf_jkt` its `cnf.jkt`.
    /// `Ok(Some(proof))`: a proof verified (its `jti` must be remembered);
    /// `Ok(None)`: no proof was needed.
    pub fn check(
        &self,
        request: &RequestContext,
        origin: &Origin,
        scheme: Scheme,
        token: &str,
        cnf_jkt: Option<&str>,
        now: Duration,
    ) -> Result<Option<Proof>, Deny> {
        match (scheme, cnf_jkt) {
            // RFC 9449 §7.2: a DPoP-aware resource server must not accept a
            // DPoP-bound token as a bearer token; that is what a thief does.
            (Scheme::Bearer, Some(_)) => Err(self.token_error(
                "DPoP-bound token presented as Bearer; send it as Authorization: DPoP with a proof",
            )),
            (Scheme::Bearer, None) if self.mode == Requirement::Required => Err(self.deny(
                Reason::DpopProofMissing,
                "this API requires DPoP-bound tokens (Authorization: DPoP and a DPoP proof)",
            )),
            (Scheme::Bearer, None) => Ok(None),
            (Scheme::Dpop, _) if self.mode == Requirement::Disabled => Err(Deny::new(
                Reason::UserTokenInvalid,
                "the DPoP authorization scheme is not accepted by this API",
            )),
            // §7.1: the DPoP scheme carries DPoP-bound tokens only.
            (Scheme::Dpop, None) => Err(self.token_error(
                "the token is not DPoP-bound (no cnf.jkt) but was sent with the DPoP scheme",
            )),
            (Scheme::Dpop, Some(jkt)) => {
                let proof = self
                    .verify_proof(request, origin, Some(token), now)
                    .map_err(|e| self.proof_error(&e))?;
                // §4.3 step 12: the proof's key is the key the token is bound to.
                if !bool::from(proof.jkt.as_bytes().ct_eq(jkt.as_bytes())) {
                    return Err(self.proof_error(&ProofError::KeyMismatch));
                }
                Ok(Some(proof))
            }
        }
    }

    /// The denial for a proof error, with the RFC 9449 §7.1 challenge.
    pub fn proof_error(&self, error: &ProofError) -> Deny {
        let reason = match error {
            ProofError::Missing => Reason::DpopProofMissing,
            _ => Reason::DpopProofInvalid,
        };
        self.deny(reason, error.to_string())
    }

    fn deny(&self, reason: Reason, detail: impl Into<String>) -> Deny {
        let challenge = if reason == Reason::DpopProofMissing {
            format!(r#"DPoP algs="{}""#, self.algs)
        } else {
            format!(r#"DPoP error="invalid_dpop_proof", algs="{}""#, self.algs)
        };
        Deny::new(reason, detail).with_header("www-authenticate", challenge)
    }

    /// The challenge of a replayed proof (`replay_detected`, found by the
    /// admission stage).
    pub fn replay_challenge(&self) -> String {
        format!(r#"DPoP error="invalid_dpop_proof", algs="{}""#, self.algs)
    }

    /// A token misuse under DPoP: `user_token_invalid`, with the `DPoP`
    /// challenge (§7.1 `invalid_token`) so the client learns the scheme.
    fn token_error(&self, detail: &str) -> Deny {
        Deny::new(Reason::UserTokenInvalid, detail).with_header(
            "www-authenticate",
            format!(r#"DPoP error="invalid_token", algs="{}""#, self.algs),
        )
    }

    /// Gives a failed access token under the DPoP scheme the `DPoP`
    /// challenge (RFC 9449 §7.1) instead of `Bearer`; other denials (503
    /// `keys_unavailable`…) are left as they are.
    pub fn token_challenge(&self, deny: Deny) -> Deny {
        if deny.reason.challenge() != Some(crate::reason::Challenge::Bearer)
            || deny.reason.http_status() != 401
            || deny.headers.iter().any(|(n, _)| n == "www-authenticate")
        {
            return deny;
        }
        deny.with_header(
            "www-authenticate",
            format!(r#"DPoP error="invalid_token", algs="{}""#, self.algs),
        )
    }

    /// Verifies the request's DPoP proof as RFC 9449 §4.3 lists, in order.
    /// With `token`, the proof must also carry its hash (`ath`, step 11).
    pub fn verify_proof(
        &self,
        request: &RequestContext,
        origin: &Origin,
        token: Option<&str>,
        now: Duration,
    ) -> Result<Proof, ProofError> {
        // Step 1: exactly one DPoP header.
        let mut values = request.headers.get_all("dpop");
        let value = values.next().ok_or(ProofError::Missing)?;
        if values.next().is_some() {
            return Err(ProofError::Multiple);
        }
        let value = value.trim();
        if value.len() > MAX_PROOF_BYTES {
            return Err(ProofError::Malformed("longer than 8 KiB".into()));
        }
        // Step 2: a well-formed JWT.
        let parsed = jwt::parse(value).map_err(|e| ProofError::Malformed(e.to_string()))?;
        let header = full_header(value)?;

        // Step 4: typ is dpop+jwt (media types compare case-insensitively,
        // RFC 7515 §4.1.9).
        if !parsed
            .header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
        {
            return Err(ProofError::Type);
        }
        // Step 5: an asymmetric algorithm the policy accepts (never none).
        let alg = jwk::parse_algorithm(&parsed.header.alg).map_err(|_| ProofError::Algorithm)?;
        if is_symmetric(alg) || !self.algorithms.contains(&alg) {
            return Err(ProofError::Algorithm);
        }
        // Step 7: the jwk header is a public key.
        let jwk_value = header
            .get("jwk")
            .ok_or_else(|| ProofError::Key("no jwk header".into()))?;
        let jwk_object = jwk_value
            .as_object()
            .ok_or_else(|| ProofError::Key("not a JSON object".into()))?;
        if PRIVATE_MEMBERS.iter().any(|m| jwk_object.contains_key(*m)) {
            return Err(ProofError::PrivateKey);
        }
        let key = VerifyKey::from_jwk(jwk_value, false).map_err(ProofError::Key)?;
        // Step 6: the signature verifies with that key.
        if !key.verify(&parsed, alg) {
            return Err(ProofError::Signature);
        }
        let jkt = thumbprint(jwk_object).map_err(ProofError::Key)?;

        // Step 3 (required claims), then steps 8–11.
        let claims = &parsed.claims;
        let text = |name: &'static str| match claims.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.as_str()),
            _ => Err(ProofError::Claim(name)),
        };
        let jti = text("jti")?;
        if jti.len() > MAX_JTI_BYTES {
            return Err(ProofError::Claim("jti"));
        }
        // Step 8: htm is the request method (methods are case-sensitive,
        // RFC 9110 §9.1).
        if text("htm")? != request.method {
            return Err(ProofError::Method);
        }
        // Step 9: htu is this request's URI, without query and fragment,
        // both sides normalised (RFC 3986 §6.2.2, §6.2.3).
        let htu = normalize_uri(text("htu")?).ok_or(ProofError::Uri)?;
        let expected = request_uri(request, origin).ok_or(ProofError::Uri)?;
        if htu != expected {
            return Err(ProofError::Uri);
        }
        // Step 11 (timeliness, §11.1): iat within max_age either way.
        let iat = jwt::numeric_date(claims, "iat")
            .ok()
            .flatten()
            .ok_or(ProofError::Claim("iat"))?;
        let now_secs = now.as_secs_f64();
        let max_age = self.max_age.as_secs_f64();
        if (now_secs - iat).abs() > max_age {
            return Err(ProofError::Stale(self.max_age.as_secs()));
        }
        // Step 10 (with an access token): ath is base64url(SHA-256(token)).
        if let Some(token) = token {
            let ath = text("ath").map_err(|_| ProofError::Claim("ath"))?;
            let expected = access_token_hash(token);
            if !bool::from(ath.as_bytes().ct_eq(expected.as_bytes())) {
                return Err(ProofError::AccessTokenHash);
            }
        }
        // The proof is accepted until iat + max_age; remember its jti at
        // least that long (rounded up, plus a second for clock granularity).
        let remaining = (iat + max_age - now_secs).max(0.0);
        let ttl = Duration::from_secs(remaining.ceil() as u64 + 1);
        Ok(Proof {
            // The jti belongs to the proof's key (RFC 9449 §11.1: "per
            // key"), and is remembered under it alone.
            nonce: Nonce {
                scope: NONCE_SCOPE.to_owned(),
                credential: jkt.clone(),
                value: jti.to_owned(),
                ttl,
            },
            jkt,
        })
    }
}

/// What a development proof says (`tollgate token dpop`, tests).
#[derive(Clone, Debug)]
pub struct ProofClaims<'a> {
    pub method: &'a str,
    /// The target URI; query and fragment may be present (they are ignored
    /// by verifiers).
    pub url: &'a str,
    /// The access token the proof accompanies (`ath`), if any.
    pub access_token: Option<&'a str>,
    /// `iat`, seconds since the epoch.
    pub iat: u64,
    pub jti: String,
}

/// Mints a DPoP proof (RFC 9449 §4.2) signed by `key`, whose public JWK goes
/// in the header. For development and tests; nothing on the request path
/// mints proofs.
pub fn mint_proof(key: &SigningKey, claims: &ProofClaims<'_>) -> Result<String, MintError> {
    let pem = key.private_pem();
    let encoding = match key.alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .map_err(|e| MintError::Sign(e.to_string()))?;
    let mut jwk = key.public_jwk();
    if let Some(obj) = jwk.as_object_mut() {
        obj.remove("kid");
    }
    let header = json!({
        "typ": "dpop+jwt",
        "alg": super::mint::algorithm_name(key.alg),
        "jwk": jwk,
    });
    let mut body = json!({
        "jti": claims.jti,
        "htm": claims.method,
        "htu": claims.url,
        "iat": claims.iat,
    });
    if let (Some(token), Some(obj)) = (claims.access_token, body.as_object_mut()) {
        obj.insert("ath".into(), json!(access_token_hash(token)));
    }
    super::mint::sign_with(&header, &body, &encoding, key.alg)
}

/// The RFC 7638 thumbprint of a development key (the `cnf.jkt` a token
/// bound to it carries).
pub fn key_thumbprint(key: &SigningKey) -> Result<String, String> {
    match key.public_jwk() {
        Value::Object(jwk) => thumbprint(&jwk),
        _ => Err("the key has no JWK".into()),
    }
}

/// The proof's JOSE header as a JSON object (the shared parser keeps only
/// `alg`, `kid` and `typ`; DPoP needs `jwk`).
fn full_header(token: &str) -> Result<Map<String, Value>, ProofError> {
    let segment = token.split('.').next().unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| ProofError::Malformed("header is not base64url".into()))?;
    serde_json::from_slice(&bytes).map_err(|_| ProofError::Malformed("header is not JSON".into()))
}

/// `ath`: base64url (no padding) of the SHA-256 of the access token's ASCII
/// bytes (RFC 9449 §4.2).
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// The RFC 7638 JWK thumbprint: base64url SHA-256 of the JSON object of the
/// key type's required members only, in lexicographic order, without
/// whitespace (§3.2, §3.3). OKP members from RFC 8037 §2.
pub fn thumbprint(jwk: &Map<String, Value>) -> Result<String, String> {
    let kty = match jwk.get("kty") {
        Some(Value::String(kty)) => kty.as_str(),
        _ => return Err("JWK member kty is missing".into()),
    };
    let members: &[&str] = match kty {
        "RSA" => &["e", "kty", "n"],
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "oct" => &["k", "kty"],
        other => return Err(format!("no thumbprint rule for key type {other:?}")),
    };
    let mut canonical = String::from("{");
    for (i, name) in members.iter().enumerate() {
        let Some(Value::String(value)) = jwk.get(*name) else {
            return Err(format!("JWK member {name} is missing"));
        };
        if i > 0 {
            canonical.push(',');
        }
        // serde_json writes JSON strings with the minimal escaping §3.3 asks.
        canonical.push_str(&serde_json::to_string(name).map_err(|e| e.to_string())?);
        canonical.push(':');
        canonical.push_str(&serde_json::to_string(value).map_err(|e| e.to_string())?);
    }
    canonical.push('}');
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// The URI of `request` as the client addressed it: the external scheme and
/// host from the trusted origin, the `:authority` port, and the path;
/// normalised like `htu`.
pub fn request_uri(request: &RequestContext, origin: &Origin) -> Option<String> {
    let host = if origin.host.contains(':') {
        format!("[{}]", origin.host)
    } else {
        origin.host.clone()
    };
    let authority = match origin.port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    };
    let path = if request.path.is_empty() {
        "/"
    } else {
        &request.path
    };
    normalize_uri(&format!("{}://{authority}{path}", origin.scheme))
}

/// Normalises an absolute `http`/`https` URI for comparison and drops its
/// query and fragment (RFC 9449 §4.3 step 9): scheme and host lower-cased
/// (RFC 3986 §6.2.2.1), percent-encodings upper-cased and unreserved
/// characters decoded (§6.2.2.2), dot-segments removed (§6.2.2.3), the
/// default port and an empty port dropped and an empty path made `/`
/// (§6.2.3). `None` for anything else: userinfo, other schemes, bad
/// percent-encodings, a missing host.
pub fn normalize_uri(uri: &str) -> Option<String> {
    let uri = uri.split('#').next()?;
    let uri = uri.split('?').next()?;
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => "443",
        "http" => "80",
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (inside, tail) = v6.split_once(']')?;
        let port = match tail {
            "" => None,
            t => Some(t.strip_prefix(':')?),
        };
        (format!("[{}]", inside.to_ascii_lowercase()), port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host.to_ascii_lowercase(), Some(port)),
            None => (authority.to_ascii_lowercase(), None),
        }
    };
    if host.is_empty() || host.contains(['%', ' ']) {
        return None;
    }
    let port = match port {
        None | Some("") => None,
        Some(p) if p == default_port => None,
        Some(p) => {
            // Leading zeros are the same port (§6.2.3 compares numbers).
            let n: u16 = p
                .parse()
                .ok()
                .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))?;
            (n.to_string() != default_port).then(|| n.to_string())
        }
    };
    let path = normalize_percent(path)?;
    let path = remove_dot_segments(if path.is_empty() { "/" } else { &path });
    let mut out = format!("{scheme}://{host}");
    if let Some(port) = port {
        out.push(':');
        out.push_str(&port);
    }
    out.push_str(&path);
    Some(out)
}

/// RFC 3986 §6.2.2.2: upper-case the hex digits of percent-encodings and
/// decode those of unreserved characters. `None` on a malformed `%`.
fn normalize_percent(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(hex, 16).ok()?;
            if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(value));
            } else {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
        } else {
            let ch = text[i..].chars().next()?;
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    Some(out)
}

/// RFC 3986 §5.2.4 `remove_dot_segments` for an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => trailing_slash = i == last,
            ".." => {
                output.pop();
                trailing_slash = i == last;
            }
            s => {
                output.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::new();
    for segment in &output {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests;
