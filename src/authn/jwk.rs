//! Verification keys: JWK parsing (RFC 7517), the algorithm allow-list
//! (RFC 7518 §3.1) and signature checks.
//!
//! Every key records its type, and a key verifies only the algorithms of
//! that type: an RSA public key is never used as an HMAC secret, so the
//! classic algorithm-confusion attack (an `HS256` token "signed" with the
//! issuer's public key) cannot work. `none` is not an algorithm here at all.
//!
//! The signature arithmetic is `ring`'s (BoringSSL-derived assembly for
//! P-256, RSA and SHA-2), already in the tree through rustls: a first-sight
//! ES256 token costs a few tens of microseconds instead of the few hundred
//! of the pure-Rust backend. Ed25519 stays on `ed25519-dalek`, whose AVX2
//! backend beats ring's portable Ed25519 code. Key material is decoded
//! once, when the key set is read ([`Material`]); verifying then decodes
//! only the signature, into a stack buffer.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use ring::hmac;
use ring::signature::{self as ring_sig, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::jwt::Jwt;

/// Smallest RSA modulus accepted (NIST SP 800-131A). ring's
/// `RSA_*_2048_8192_*` verifiers refuse smaller moduli too.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted. ring goes to 8192 bits, but a DPoP proof
/// brings its own key, and the cost of a verification grows with the
/// modulus: 4096 bits is the largest any IdP publishes.
pub const MAX_RSA_BITS: usize = 4096;
/// Shortest HMAC secret accepted: RFC 7518 §3.2 asks for a key at least as
/// long as the hash output; 256 bits for HS256. A shorter key than 384 or
/// 512 bits never verifies HS384 or HS512 (same rule, see
/// [`VerifyKey::accepts`]).
pub const MIN_HMAC_BYTES: usize = 32;
/// Longest signature any accepted key produces (RSA-4096).
const MAX_SIGNATURE_BYTES: usize = MAX_RSA_BITS / 8;
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
    material: Material,
}

/// Key material decoded once, in the form ring verifies with.
#[derive(Clone)]
enum Material {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa(RsaPublicKeyComponents<Box<[u8]>>),
    /// An uncompressed SEC1 point `04 ‖ x ‖ y` on P-256.
    P256(Box<[u8]>),
    /// An uncompressed SEC1 point on P-384.
    P384(Box<[u8]>),
    /// The decompressed public key (RFC 8032 §5.1.3), not of small order.
    Ed25519(ed25519_dalek::VerifyingKey),
    /// The secret, keyed once per hash (ring precomputes the HMAC pads).
    Hmac(Arc<HmacKeys>),
}

/// One ring HMAC key per hash. `None` where the secret is shorter than the
/// hash output (RFC 7518 §3.2: such a key must not be used).
struct HmacKeys {
    hs256: hmac::Key,
    hs384: Option<hmac::Key>,
    hs512: Option<hmac::Key>,
}

impl HmacKeys {
    fn new(secret: &[u8]) -> Self {
        let keyed = |alg, min| (secret.len() >= min).then(|| hmac::Key::new(alg, secret));
        Self {
            hs256: hmac::Key::new(hmac::HMAC_SHA256, secret),
            hs384: keyed(hmac::HMAC_SHA384, 48),
            hs512: keyed(hmac::HMAC_SHA512, 64),
        }
    }

    fn for_alg(&self, alg: Algorithm) -> Option<&hmac::Key> {
        match alg {
            Algorithm::HS256 => Some(&self.hs256),
            Algorithm::HS384 => self.hs384.as_ref(),
            Algorithm::HS512 => self.hs512.as_ref(),
            _ => None,
        }
    }
}

impl Material {
    /// Verifies `signature` over `message` with `alg`: false unless the
    /// pair is one RFC 7518 §3.1 defines for this kind of key.
    fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        use Algorithm::*;
        let rsa = |key: &RsaPublicKeyComponents<Box<[u8]>>, params: &ring_sig::RsaParameters| {
            key.verify(params, message, signature).is_ok()
        };
        let public = |algorithm: &'static dyn ring_sig::VerificationAlgorithm, key: &[u8]| {
            UnparsedPublicKey::new(algorithm, key)
                .verify(message, signature)
                .is_ok()
        };
        match (self, alg) {
            // RFC 7518 §3.3: RSASSA-PKCS1-v1_5.
            (Material::Rsa(key), RS256) => rsa(key, &ring_sig::RSA_PKCS1_2048_8192_SHA256),
            (Material::Rsa(key), RS384) => rsa(key, &ring_sig::RSA_PKCS1_2048_8192_SHA384),
            (Material::Rsa(key), RS512) => rsa(key, &ring_sig::RSA_PKCS1_2048_8192_SHA512),
            // RFC 7518 §3.5: RSASSA-PSS with MGF1 of the same hash and a
            // salt as long as the hash, which is what ring verifies.
            (Material::Rsa(key), PS256) => rsa(key, &ring_sig::RSA_PSS_2048_8192_SHA256),
            (Material::Rsa(key), PS384) => rsa(key, &ring_sig::RSA_PSS_2048_8192_SHA384),
            (Material::Rsa(key), PS512) => rsa(key, &ring_sig::RSA_PSS_2048_8192_SHA512),
            // RFC 7518 §3.4: the JWS signature is the fixed-size R ‖ S, never
            // DER; ring's `_FIXED` verifiers take exactly that length.
            (Material::P256(point), ES256) => public(&ring_sig::ECDSA_P256_SHA256_FIXED, point),
            (Material::P384(point), ES384) => public(&ring_sig::ECDSA_P384_SHA384_FIXED, point),
            // RFC 8037 §3.1; `verify_strict` also refuses S ≥ L and
            // small-order R (RFC 8032 §5.1.7 and the malleability it allows).
            (Material::Ed25519(key), EdDSA) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify_strict(message, &sig).is_ok()),
            // RFC 7518 §3.2: ring compares the MAC in constant time.
            (Material::Hmac(keys), HS256 | HS384 | HS512) => keys
                .for_alg(alg)
                .is_some_and(|key| hmac::verify(key, message, signature).is_ok()),
            _ => false,
        }
    }
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
            material: Material::Hmac(Arc::new(HmacKeys::new(secret))),
        })
    }

    /// True when this key may verify a token signed with `alg`: the JWK's
    /// own `alg` (if any) and the key type allow it, and an HMAC secret is
    /// at least as long as the hash output (RFC 7518 §3.2).
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.alg.is_none_or(|a| a == alg)
            && self.kind.verifies(alg)
            && match &self.material {
                Material::Hmac(keys) => keys.for_alg(alg).is_some(),
                _ => true,
            }
    }

    /// Verifies the signature of `jwt` with `alg` (RFC 7515 §5.2 step 8).
    /// False for any failure, including a key of the wrong type.
    pub fn verify(&self, jwt: &Jwt<'_>, alg: Algorithm) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        // The decoder wants room for its estimate (up to 2 bytes more than
        // the data); a longer signature than any key makes fails here.
        let mut buffer = [0u8; MAX_SIGNATURE_BYTES + 3];
        let Ok(len) = URL_SAFE_NO_PAD.decode_slice(jwt.signature, &mut buffer) else {
            return false;
        };
        self.material
            .verify(alg, jwt.signing_input.as_bytes(), &buffer[..len])
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
        let (kind, material, fp) = match kty {
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
                // An RSA modulus is odd (the product of two odd primes).
                if n_trimmed.last().is_none_or(|b| b & 1 == 0) {
                    return Err("RSA modulus is even".to_owned());
                }
                // What ring accepts (RFC 8017 §3.1 asks 3 ≤ e < n, odd):
                // an odd exponent from 3 to 2^33 - 1.
                let e_trimmed = trim_leading_zeros(&e);
                let e_value = (e_trimmed.len() <= 8).then(|| {
                    e_trimmed
                        .iter()
                        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
                });
                if !e_value.is_some_and(|e| (3..1 << 33).contains(&e) && e & 1 == 1) {
                    return Err("RSA exponent is out of range".to_owned());
                }
                let fp = fingerprint("RSA", &[n_trimmed, e_trimmed]);
                let components = RsaPublicKeyComponents {
                    n: n_trimmed.into(),
                    e: e_trimmed.into(),
                };
                (KeyKind::Rsa, Material::Rsa(components), fp)
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
                let point = point.into_boxed_slice();
                let material = match kind {
                    KeyKind::P256 => Material::P256(point),
                    _ => Material::P384(point),
                };
                (kind, material, fp)
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
                let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map_err(|_| "Ed25519 public key is not a valid point".to_owned())?;
                // A small-order key lets one signature verify for many
                // messages; a DPoP client could then "prove" a key it never
                // held. (`verify_strict` would refuse it too; this says why.)
                if key.is_weak() {
                    return Err("Ed25519 public key is of small order".to_owned());
                }
                (
                    KeyKind::Ed25519,
                    Material::Ed25519(key),
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
            material,
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
    fn small_order_ed25519_keys_are_refused() {
        // The identity point (y = 1): with it, R = identity and S = 0
        // would verify for every message.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let jwk = json!({"kty":"OKP","crv":"Ed25519","x": URL_SAFE_NO_PAD.encode(identity)});
        let err = VerifyKey::from_jwk(&jwk, false).unwrap_err();
        assert!(err.contains("small order"), "{err}");
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

    use crate::authn::jwt::{self, Header, Jwt};
    use crate::authn::mint::{self, SigningKey};
    use jsonwebtoken::EncodingKey;

    const RSA_A: &str = include_str!("../../tests/fixtures/authn/rsa-2048-a.pem");
    const RSA_B: &str = include_str!("../../tests/fixtures/authn/rsa-2048-b.pem");

    /// A key of `alg`'s kind: signing with jsonwebtoken's RustCrypto
    /// backend (independent of ring, which verifies) and the verification
    /// key tollgate reads from the public JWK (or the secret). `which`
    /// picks one of two different keys.
    fn key_pair(alg: Algorithm, which: u8) -> (EncodingKey, VerifyKey) {
        use Algorithm::*;
        match alg {
            ES256 | EdDSA => {
                let key = SigningKey::generate(alg, "k").unwrap();
                let pem = key.private_pem();
                let encoding = if alg == ES256 {
                    EncodingKey::from_ec_pem(pem.as_bytes())
                } else {
                    EncodingKey::from_ed_pem(pem.as_bytes())
                };
                let verify = VerifyKey::from_jwk(&key.public_jwk(), false).unwrap();
                (encoding.unwrap(), verify)
            }
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
                let pem = if which == 0 { RSA_A } else { RSA_B };
                let key = SigningKey::from_pem(RS256, "k", pem).unwrap();
                let mut jwk = key.public_jwk();
                jwk.as_object_mut().unwrap().remove("alg");
                let verify = VerifyKey::from_jwk(&jwk, false).unwrap();
                (EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(), verify)
            }
            ES384 => {
                use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
                let rng = ring::rand::SystemRandom::new();
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
                let pair = EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P384_SHA384_FIXED_SIGNING,
                    pkcs8.as_ref(),
                    &rng,
                )
                .unwrap();
                let point = pair.public_key().as_ref();
                let jwk = json!({"kty":"EC","crv":"P-384",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..49]),
                    "y": URL_SAFE_NO_PAD.encode(&point[49..])});
                let verify = VerifyKey::from_jwk(&jwk, false).unwrap();
                (EncodingKey::from_ec_der(pkcs8.as_ref()), verify)
            }
            HS256 | HS384 | HS512 => {
                let secret = [which + 1; 64];
                (
                    EncodingKey::from_secret(&secret),
                    VerifyKey::hmac(&secret, None).unwrap(),
                )
            }
            other => panic!("no test key for {other:?}"),
        }
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        mint::sign_with(&json!({"alg": mint::algorithm_name(alg)}), claims, key, alg).unwrap()
    }

    /// `token` with its signature replaced by `signature` bytes.
    fn with_signature(token: &str, signature: &[u8]) -> String {
        let input = &token[..token.rfind('.').unwrap()];
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn signature_of(token: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(&token[token.rfind('.').unwrap() + 1..])
            .unwrap()
    }

    fn verifies(key: &VerifyKey, token: &str, alg: Algorithm) -> bool {
        key.verify(&jwt::parse(token).unwrap(), alg)
    }

    #[test]
    fn every_algorithm_verifies_only_the_right_key_message_and_signature() {
        use Algorithm::*;
        let claims = json!({"sub": "alice", "exp": 4_000_000_000u64});
        let other_claims = json!({"sub": "mallory", "exp": 4_000_000_000u64});
        for alg in [
            ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA, HS256, HS384, HS512,
        ] {
            let (signing, key) = key_pair(alg, 0);
            let (other_signing, other_key) = key_pair(alg, 1);
            let token = sign(alg, &signing, &claims);
            assert!(verifies(&key, &token, alg), "{alg:?}: the right key");
            assert!(!verifies(&other_key, &token, alg), "{alg:?}: another key");

            // A signature of the right length by another key.
            let foreign = signature_of(&sign(alg, &other_signing, &claims));
            assert_eq!(foreign.len(), signature_of(&token).len(), "{alg:?}");
            assert!(
                !verifies(&key, &with_signature(&token, &foreign), alg),
                "{alg:?}: another key's signature"
            );
            // The signature of another message.
            let moved = signature_of(&sign(alg, &signing, &other_claims));
            assert!(
                !verifies(&key, &with_signature(&token, &moved), alg),
                "{alg:?}: another message's signature"
            );
            // One bit flipped anywhere: first, middle and last byte.
            let signature = signature_of(&token);
            for at in [0, signature.len() / 2, signature.len() - 1] {
                let mut flipped = signature.clone();
                flipped[at] ^= 0x01;
                assert!(
                    !verifies(&key, &with_signature(&token, &flipped), alg),
                    "{alg:?}: bit flipped in byte {at}"
                );
            }
            // Truncated, extended, empty.
            let short = &signature[..signature.len() - 1];
            assert!(!verifies(&key, &with_signature(&token, short), alg));
            let mut long = signature.clone();
            long.push(0);
            assert!(!verifies(&key, &with_signature(&token, &long), alg));
        }
    }

    #[test]
    fn a_key_never_verifies_another_algorithm_with_a_valid_signature() {
        use Algorithm::*;
        let claims = json!({"sub": "alice"});
        // Same key, same signature, another algorithm of the same family.
        for (signed, claimed) in [
            (RS256, PS256),
            (PS256, RS256),
            (RS256, RS384),
            (HS256, HS512),
            (HS512, HS256),
        ] {
            let (signing, key) = key_pair(signed, 0);
            let token = sign(signed, &signing, &claims);
            assert!(verifies(&key, &token, signed));
            assert!(
                !verifies(&key, &token, claimed),
                "{signed:?} as {claimed:?}"
            );
        }
        // Across key types: no key verifies an algorithm of another type.
        for alg in [ES256, ES384, RS256, EdDSA, HS256] {
            let (signing, _) = key_pair(alg, 0);
            let token = sign(alg, &signing, &claims);
            for other in [ES256, ES384, RS256, EdDSA, HS256] {
                if other != alg {
                    let (_, key) = key_pair(other, 0);
                    assert!(!verifies(&key, &token, alg), "{other:?} key, {alg:?} token");
                }
            }
        }
    }

    #[test]
    fn hmac_with_an_rsa_public_key_as_secret_is_refused() {
        // The algorithm-confusion attack: an HS256 token "signed" with the
        // bytes of the issuer's public key, which everyone has.
        let pem = RSA_A;
        let rsa = SigningKey::from_pem(Algorithm::RS256, "rsa", pem).unwrap();
        let jwk = rsa.public_jwk();
        let key = VerifyKey::from_jwk(&jwk, false).unwrap();
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        let mut keys = KeySet::default();
        keys.keys.push(key.clone());
        for secret in [n.as_slice(), pem.as_bytes()] {
            let forged =
                mint::sign_hmac(Algorithm::HS256, secret, Some("rsa"), &json!({})).unwrap();
            let jwt = jwt::parse(&forged).unwrap();
            assert!(!key.verify(&jwt, Algorithm::HS256));
            assert!(keys.verify(&jwt, Algorithm::HS256).is_none());
        }
    }

    #[test]
    fn es256_signatures_must_be_fixed_size_not_der() {
        let signing = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let pem = {
            use p256::pkcs8::EncodePrivateKey;
            signing.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap()
        };
        let point = signing.verifying_key().to_encoded_point(false);
        let jwk = json!({"kty":"EC","crv":"P-256",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())});
        let key = VerifyKey::from_jwk(&jwk, false).unwrap();
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        let token = sign(Algorithm::ES256, &encoding, &json!({"sub": "alice"}));
        assert!(verifies(&key, &token, Algorithm::ES256));
        let fixed = p256::ecdsa::Signature::from_slice(&signature_of(&token)).unwrap();
        let der = fixed.to_der();
        // The DER form is the same signature (p256 accepts it)...
        {
            use p256::ecdsa::signature::Verifier;
            let input = &token[..token.rfind('.').unwrap()];
            let parsed = p256::ecdsa::Signature::from_der(der.as_bytes()).unwrap();
            assert!(
                signing
                    .verifying_key()
                    .verify(input.as_bytes(), &parsed)
                    .is_ok()
            );
        }
        // ...but RFC 7518 §3.4 says R ‖ S, so the JWS is refused.
        let token_der = with_signature(&token, der.as_bytes());
        assert!(!verifies(&key, &token_der, Algorithm::ES256));
    }

    #[test]
    fn rfc7515_a3_es256_and_rfc8037_a4_ed25519_examples_verify() {
        // RFC 7515 Appendix A.3.
        let jwk = json!({"kty":"EC","crv":"P-256",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        let key = VerifyKey::from_jwk(&jwk, false).unwrap();
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
        assert!(verifies(&key, token, Algorithm::ES256));
        assert!(!verifies(
            &key,
            &token.replace(".DtE", ".DtF"),
            Algorithm::ES256
        ));

        // RFC 8037 Appendix A.4 (the payload is not JSON, so the JWS is
        // assembled by hand rather than parsed as a JWT).
        let jwk = json!({"kty":"OKP","crv":"Ed25519",
            "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let key = VerifyKey::from_jwk(&jwk, false).unwrap();
        let jws = |signature| Jwt {
            header: Header {
                alg: "EdDSA".into(),
                ..Header::default()
            },
            claims: serde_json::Map::new(),
            signing_input: "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc",
            signature,
        };
        let signature = "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
        assert!(key.verify(&jws(signature), Algorithm::EdDSA));
        let tampered = signature.replacen('h', "i", 1);
        assert!(!key.verify(&jws(&tampered), Algorithm::EdDSA));
    }

    #[test]
    fn hmac_keys_shorter_than_the_hash_do_not_verify_hs384_or_hs512() {
        // RFC 7518 §3.2: the key is at least as long as the hash output.
        let claims = json!({"sub": "alice"});
        for (len, alg, ok) in [
            (32, Algorithm::HS256, true),
            (32, Algorithm::HS384, false),
            (47, Algorithm::HS384, false),
            (48, Algorithm::HS384, true),
            (48, Algorithm::HS512, false),
            (63, Algorithm::HS512, false),
            (64, Algorithm::HS512, true),
        ] {
            let secret = vec![9u8; len];
            let key = VerifyKey::hmac(&secret, None).unwrap();
            let token = sign(alg, &EncodingKey::from_secret(&secret), &claims);
            assert_eq!(key.accepts(alg), ok, "{len} bytes, {alg:?}");
            assert_eq!(verifies(&key, &token, alg), ok, "{len} bytes, {alg:?}");
        }
    }

    #[test]
    fn rsa_keys_outside_the_accepted_range_are_refused_at_load() {
        let jwk = |n: &[u8], e: &[u8]| json!({"kty":"RSA","n": URL_SAFE_NO_PAD.encode(n),"e": URL_SAFE_NO_PAD.encode(e)});
        let mut n_2047 = vec![0xffu8; 256];
        n_2047[0] = 0x7f;
        let n_2048 = vec![0xffu8; 256];
        let n_4097 = [&[0x01u8][..], &[0xffu8; 512][..]].concat();
        let mut n_even = n_2048.clone();
        n_even[255] = 0xfe;
        let f4 = [0x01, 0x00, 0x01];
        assert!(VerifyKey::from_jwk(&jwk(&n_2048, &f4), false).is_ok());
        // Leading zero bytes do not count as bits.
        let padded = [&[0u8, 0][..], &n_2048[..]].concat();
        assert!(VerifyKey::from_jwk(&jwk(&padded, &f4), false).is_ok());
        for (n, e, why) in [
            (&n_2047, &f4[..], "2047 bits"),
            (&n_4097, &f4[..], "4097 bits"),
            (&n_even, &f4[..], "even"),
            (&n_2048, &[1][..], "exponent"),
            (&n_2048, &[2][..], "exponent"),
            (&n_2048, &[0x01, 0x00, 0x00][..], "exponent"),
            (&n_2048, &[0x02, 0x00, 0x00, 0x00, 0x01][..], "exponent"),
            (&n_2048, &[][..], "exponent"),
        ] {
            let err = VerifyKey::from_jwk(&jwk(n, e), false).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
        // The largest exponent ring takes, 2^33 - 1, is accepted.
        let e_max = [0x01, 0xff, 0xff, 0xff, 0xff];
        assert!(VerifyKey::from_jwk(&jwk(&n_2048, &e_max), false).is_ok());
    }
}
