//! Verification keys: JWK parsing (RFC 7517), the algorithm allow-list
//! (RFC 7518 §3.1) and signature checks.
//!
//! Every key records its type, and a key verifies only the algorithms of
//! that type: an RSA public key is never used as an HMAC secret, so the
//! classic algorithm-confusion attack (an `HS256` token "signed" with the
//! issuer's public key) cannot work. `none` is not an algorithm here at all.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::jwt::Jwt;

/// Smallest RSA modulus accepted (NIST SP 800-131A).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted (the RSA implementation's own limit).
pub const MAX_RSA_BITS: usize = 4096;
/// Shortest HMAC secret accepted: RFC 7518 §3.2 asks for a key at least as
/// long as the hash output; 256 bits for HS256.
pub const MIN_HMAC_BYTES: usize = 32;
/// Most keys read from one JWKS; IdPs publish a handful.
pub const MAX_KEYS: usize = 64;

/// Parses one algorithm name of a policy's allow-list.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("the unsecured algorithm none is never accepted".to_owned());
    }
    name.parse::<Algorithm>().map_err(|_| {
        format!(
            "unsupported algorithm {name:?} (expected RS256/384/512, PS256/384/512, ES256/384, EdDSA or HS256/384/512)"
        )
    })
}

/// True for the HMAC algorithms, whose keys are shared secrets.
pub fn is_symmetric(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// What kind of key material a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
    Hmac,
}

impl KeyKind {
    /// RFC 7518 §3.1: which `alg` values this kind of key can verify.
    pub fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
            KeyKind::Hmac => matches!(alg, HS256 | HS384 | HS512),
        }
    }
}

/// One verification key.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    /// The JWK's own `alg`, when it names one: then only that algorithm.
    pub alg: Option<Algorithm>,
    pub kind: KeyKind,
    /// SHA-256 over the key type and material: identifies the key in the
    /// verified-token cache without keeping the material twice.
    pub fingerprint: [u8; 32],
    key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// An HMAC key from secret bytes (from a Secret only).
    pub fn hmac(secret: &[u8], kid: Option<String>) -> Result<Self, String> {
        if secret.len() < MIN_HMAC_BYTES {
            return Err(format!(
                "the HMAC secret has {} bytes; at least {MIN_HMAC_BYTES} are required",
                secret.len()
            ));
        }
        Ok(Self {
            kid,
            alg: None,
            kind: KeyKind::Hmac,
            fingerprint: fingerprint("oct", &[secret]),
            key: DecodingKey::from_secret(secret),
        })
    }

    /// True when this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.alg.is_none_or(|a| a == alg) && self.kind.verifies(alg)
    }

    /// Verifies the signature of `jwt` with `alg` (RFC 7515 §5.2 step 8).
    /// False for any failure, including a key of the wrong type.
    pub fn verify(&self, jwt: &Jwt<'_>, alg: Algorithm) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        jsonwebtoken::crypto::verify(jwt.signature, jwt.signing_input.as_bytes(), &self.key, alg)
            .unwrap_or(false)
    }

    /// Parses one JWK (RFC 7517 §4). HMAC (`oct`) keys are accepted only
    /// when `allow_symmetric` (keys read from a Secret).
    pub fn from_jwk(jwk: &Value, allow_symmetric: bool) -> Result<Self, String> {
        let obj = jwk.as_object().ok_or("a JWK must be a JSON object")?;
        let text = |name: &str| -> Result<Option<&str>, String> {
            match obj.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(format!("JWK member {name} must be a string")),
            }
        };
        let b64 = |name: &str| -> Result<Vec<u8>, String> {
            let value = text(name)?.ok_or_else(|| format!("JWK member {name} is missing"))?;
            URL_SAFE_NO_PAD
                .decode(value)
                .map_err(|_| format!("JWK member {name} is not base64url"))
        };
        let kid = text("kid")?.map(str::to_owned);
        if let Some(use_) = text("use")?
            && use_ != "sig"
        {
            return Err(format!("key use {use_:?} is not for signatures"));
        }
        let alg = match text("alg")? {
            Some(name) => Some(parse_algorithm(name)?),
            None => None,
        };
        let kty = text("kty")?.ok_or("JWK member kty is missing")?;
        let (kind, key, fp) = match kty {
            "RSA" => {
                let n = b64("n")?;
                let e = b64("e")?;
                let n_trimmed = trim_leading_zeros(&n);
                let bits = n_trimmed.len() * 8
                    - n_trimmed.first().map_or(8, |b| b.leading_zeros() as usize);
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                    return Err(format!(
                        "RSA modulus has {bits} bits; {MIN_RSA_BITS}–{MAX_RSA_BITS} are accepted"
                    ));
                }
                let e_trimmed = trim_leading_zeros(&e);
                if e_trimmed.is_empty() || e_trimmed.len() > 8 {
                    return Err("RSA exponent is out of range".to_owned());
                }
                let fp = fingerprint("RSA", &[n_trimmed, e_trimmed]);
                (
                    KeyKind::Rsa,
                    DecodingKey::from_rsa_raw_components(n_trimmed, e_trimmed),
                    fp,
                )
            }
            "EC" => {
                let crv = text("crv")?.ok_or("JWK member crv is missing")?;
                let (kind, len) = match crv {
                    "P-256" => (KeyKind::P256, 32),
                    "P-384" => (KeyKind::P384, 48),
                    other => return Err(format!("unsupported EC curve {other:?}")),
                };
                let x = b64("x")?;
                let y = b64("y")?;
                if x.len() != len || y.len() != len {
                    return Err(format!("EC coordinates must be {len} bytes for {crv}"));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                if kind == KeyKind::P256 && p256::PublicKey::from_sec1_bytes(&point).is_err() {
                    return Err("EC point is not on curve P-256".to_owned());
                }
                let fp = fingerprint(crv, &[&x, &y]);
                (kind, DecodingKey::from_ec_der(&point), fp)
            }
            "OKP" => {
                let crv = text("crv")?.ok_or("JWK member crv is missing")?;
                if crv != "Ed25519" {
                    return Err(format!("unsupported OKP curve {crv:?}"));
                }
                let x = b64("x")?;
                let bytes: [u8; 32] = x
                    .as_slice()
                    .try_into()
                    .map_err(|_| "Ed25519 public key must be 32 bytes".to_owned())?;
                if ed25519_dalek::VerifyingKey::from_bytes(&bytes).is_err() {
                    return Err("Ed25519 public key is not a valid point".to_owned());
                }
                (
                    KeyKind::Ed25519,
                    DecodingKey::from_ed_der(&bytes),
                    fingerprint("Ed25519", &[&bytes]),
                )
            }
            "oct" if allow_symmetric => {
                let k = b64("k")?;
                let mut key = VerifyKey::hmac(&k, kid)?;
                key.alg = alg.filter(|a| is_symmetric(*a));
                return Ok(key);
            }
            "oct" => {
                return Err(
                    "symmetric (oct) keys are accepted only from a Secret, never from a JWKS URL or inline JWKS"
                        .to_owned(),
                );
            }
            other => return Err(format!("unsupported key type {other:?}")),
        };
        if let Some(alg) = alg
            && !kind.verifies(alg)
        {
            return Err(format!("key type {kty} cannot verify {alg:?}"));
        }
        Ok(Self {
            kid,
            alg,
            kind,
            fingerprint: fp,
            key,
        })
    }
}

fn trim_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn fingerprint(kty: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(kty.as_bytes());
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// A set of verification keys (one JWKS, or the keys of a Secret).
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
    /// Keys of the document that were skipped, with why (for logs).
    pub skipped: Vec<String>,
}

impl KeySet {
    /// Parses a JWKS document (RFC 7517 §5). Keys tollgate cannot use
    /// (encryption keys, unknown types, weak RSA) are skipped and noted;
    /// a document that is not a JWKS at all is an error.
    pub fn from_jwks(doc: &Value, allow_symmetric: bool) -> Result<Self, String> {
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("a JWKS must be an object with a keys array")?;
        let mut set = KeySet::default();
        for (i, jwk) in keys.iter().enumerate().take(MAX_KEYS) {
            match VerifyKey::from_jwk(jwk, allow_symmetric) {
                Ok(key) => set.keys.push(key),
                Err(why) => set.skipped.push(format!("keys[{i}]: {why}")),
            }
        }
        if keys.len() > MAX_KEYS {
            set.skipped
                .push(format!("only the first {MAX_KEYS} keys are read"));
        }
        Ok(set)
    }

    /// Keys that may verify a token with `kid` and `alg`. RFC 7515 §4.1.4:
    /// with a `kid`, only keys of that id; without one, every key of a
    /// matching type.
    pub fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<&VerifyKey> {
        self.keys
            .iter()
            .filter(|k| k.accepts(alg))
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .collect()
    }

    /// True when a key of that id is in the set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// True when the key with this fingerprint is (still) in the set.
    pub fn contains(&self, fingerprint: &[u8; 32]) -> bool {
        self.keys.iter().any(|k| &k.fingerprint == fingerprint)
    }

    /// Verifies `jwt` against the candidate keys; the key that verified.
    pub fn verify(&self, jwt: &Jwt<'_>, alg: Algorithm) -> Option<&VerifyKey> {
        self.candidates(jwt.header.kid.as_deref(), alg)
            .into_iter()
            .find(|key| key.verify(jwt, alg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn none_and_unknown_algorithms_are_refused() {
        assert!(parse_algorithm("none").unwrap_err().contains("never"));
        assert!(parse_algorithm("NONE").is_err());
        assert!(parse_algorithm("ES512").is_err());
        assert_eq!(parse_algorithm("EdDSA"), Ok(Algorithm::EdDSA));
    }

    #[test]
    fn key_types_verify_only_their_algorithms() {
        assert!(KeyKind::Rsa.verifies(Algorithm::PS256));
        assert!(!KeyKind::Rsa.verifies(Algorithm::HS256));
        assert!(!KeyKind::P256.verifies(Algorithm::ES384));
        assert!(!KeyKind::Ed25519.verifies(Algorithm::ES256));
        assert!(!KeyKind::Hmac.verifies(Algorithm::RS256));
    }

    #[test]
    fn oct_keys_only_from_secrets() {
        let jwk = json!({"kty":"oct","k": URL_SAFE_NO_PAD.encode([7u8; 32])});
        assert!(
            VerifyKey::from_jwk(&jwk, false)
                .unwrap_err()
                .contains("Secret")
        );
        let key = VerifyKey::from_jwk(&jwk, true).unwrap();
        assert_eq!(key.kind, KeyKind::Hmac);
        let short = json!({"kty":"oct","k": URL_SAFE_NO_PAD.encode([7u8; 16])});
        assert!(VerifyKey::from_jwk(&short, true).is_err());
    }

    #[test]
    fn weak_rsa_and_bad_points_are_skipped() {
        let weak = json!({"kty":"RSA","n": URL_SAFE_NO_PAD.encode([0xffu8; 128]),"e":"AQAB"});
        assert!(
            VerifyKey::from_jwk(&weak, false)
                .unwrap_err()
                .contains("1024 bits")
        );
        let off_curve = json!({"kty":"EC","crv":"P-256",
            "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])});
        assert!(VerifyKey::from_jwk(&off_curve, false).is_err());
        let enc = json!({"kty":"RSA","use":"enc","n":"AA","e":"AQAB"});
        assert!(
            VerifyKey::from_jwk(&enc, false)
                .unwrap_err()
                .contains("not for signatures")
        );
        let set = KeySet::from_jwks(&json!({"keys":[weak, enc]}), false).unwrap();
        assert!(set.keys.is_empty());
        assert_eq!(set.skipped.len(), 2);
        assert!(KeySet::from_jwks(&json!([1]), false).is_err());
    }

    #[test]
    fn jwk_alg_must_fit_the_key_type() {
        let jwk = json!({"kty":"OKP","crv":"Ed25519","alg":"RS256",
            "x": URL_SAFE_NO_PAD.encode(ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]).verifying_key().as_bytes())});
        assert!(
            VerifyKey::from_jwk(&jwk, false)
                .unwrap_err()
                .contains("cannot verify")
        );
    }
}
