//! Signature algorithms and keys (RFC 9421 §3.3): `hmac-sha256`,
//! `ed25519` and `ecdsa-p256-sha256` (raw `r‖s`, §3.3.4).
//!
//! ECDSA and HMAC verification run on `ring` (as JWS signatures do, see
//! [`crate::authn::jwk`]); Ed25519 on `ed25519-dalek`, faster here than
//! ring's portable code. The RustCrypto crates parse key encodings and sign
//! for `tollgate token sign`.
//!
//! A key always knows its algorithm: an app's `signingKey` is an HMAC
//! secret, an attestation `ipk` is a public key whose type decides Ed25519
//! or ECDSA. The `alg` a message names is only checked against that, never
//! used to choose (RFC 9421 §3.2 step 6, §7.3.6): otherwise an attacker
//! would "HMAC" a request with the public `ipk` as the secret.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer;
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use sha2::Sha256;

/// Shortest HMAC secret accepted: RFC 9421 §3.3.3 leaves the length to the
/// application; RFC 2104 §3 asks for at least the hash output (32 bytes).
pub const MIN_HMAC_BYTES: usize = 32;

/// The algorithms tollgate verifies (RFC 9421 §6.2.2 registry names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    HmacSha256,
    Ed25519,
    EcdsaP256Sha256,
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: [Algorithm; 3] = [
        Algorithm::HmacSha256,
        Algorithm::Ed25519,
        Algorithm::EcdsaP256Sha256,
    ];

    /// The registry name (`alg` parameter value).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::Ed25519 => "ed25519",
            Algorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
        }
    }

    /// Parses a registry name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A key to verify with, tied to its algorithm.
#[derive(Clone)]
pub enum VerifyingKey<'a> {
    /// An app's shared secret.
    Hmac(&'a [u8]),
    /// A decompressed public key, not of small order (checked by
    /// [`install_key`]).
    Ed25519(ed25519_dalek::VerifyingKey),
    /// The uncompressed SEC1 point `04 ‖ x ‖ y`, on the curve.
    P256([u8; 65]),
}

impl std::fmt::Debug for VerifyingKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyingKey({})", self.algorithm().name())
    }
}

impl VerifyingKey<'_> {
    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            VerifyingKey::Hmac(_) => Algorithm::HmacSha256,
            VerifyingKey::Ed25519(_) => Algorithm::Ed25519,
            VerifyingKey::P256(_) => Algorithm::EcdsaP256Sha256,
        }
    }

    /// Verifies `signature` over `base` (RFC 9421 §3.3.3–§3.3.6). HMAC is
    /// compared in constant time (ring); ECDSA signatures are the 64-byte
    /// `r‖s` (§3.3.4), never DER; Ed25519 is verified strictly (`S ≥ L`
    /// and small-order points refused, RFC 8032 §5.1.7).
    pub fn verify(&self, base: &[u8], signature: &[u8]) -> bool {
        match self {
            VerifyingKey::Hmac(secret) => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
                ring::hmac::verify(&key, base, signature).is_ok()
            }
            VerifyingKey::Ed25519(key) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify_strict(base, &sig).is_ok()),
            VerifyingKey::P256(point) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(base, signature)
                .is_ok(),
        }
    }
}

/// Decodes base64 in any of its usual spellings (standard or URL-safe,
/// padded or not).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    let unpadded = text.trim_end_matches('=');
    STANDARD
        .decode(text)
        .ok()
        .or_else(|| URL_SAFE_NO_PAD.decode(unpadded).ok())
        .or_else(|| {
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(unpadded)
                .ok()
        })
}

/// Reads an installation public key (the attestation token's `ipk`):
/// base64 of a DER SubjectPublicKeyInfo (P-256 or Ed25519), or of a raw
/// key (65-byte uncompressed P-256 point, 32-byte Ed25519 key).
pub fn install_key(ipk: &str) -> Result<VerifyingKey<'static>, String> {
    let bytes = decode_base64(ipk).ok_or("the ipk claim is not base64")?;
    if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(&bytes) {
        return p256_key(&key);
    }
    if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_der(&bytes) {
        return ed25519_key(&key);
    }
    if bytes.len() == 65
        && let Ok(key) = p256::ecdsa::VerifyingKey::from_sec1_bytes(&bytes)
    {
        return p256_key(&key);
    }
    if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice())
        && let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&raw)
    {
        return ed25519_key(&key);
    }
    Err("the ipk claim is not a P-256 or Ed25519 public key".into())
}

/// A parsed (so on-curve) P-256 key as the uncompressed point ring takes.
fn p256_key(key: &p256::ecdsa::VerifyingKey) -> Result<VerifyingKey<'static>, String> {
    let point = key.to_encoded_point(false);
    <[u8; 65]>::try_from(point.as_bytes())
        .map(VerifyingKey::P256)
        .map_err(|_| "the ipk claim is not a P-256 or Ed25519 public key".into())
}

/// A parsed Ed25519 key, refused when of small order: such a key lets one
/// signature verify for many messages (`verify_strict` would fail every
/// signature; refusing the key up front says why).
fn ed25519_key(key: &ed25519_dalek::VerifyingKey) -> Result<VerifyingKey<'static>, String> {
    if key.is_weak() {
        return Err("the ipk claim is a weak (small-order) Ed25519 key".into());
    }
    Ok(VerifyingKey::Ed25519(*key))
}

/// A key to sign with (`tollgate token sign`, tests).
#[derive(Clone)]
pub enum SigningKey {
    Hmac(Vec<u8>),
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.algorithm().name())
    }
}

impl SigningKey {
    /// A private key in PEM (PKCS#8, as `tollgate token keygen` writes, or
    /// SEC1 for P-256).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        if let Ok(key) = p256::SecretKey::from_pkcs8_pem(pem) {
            return Ok(SigningKey::P256(key.into()));
        }
        if let Ok(key) = p256::SecretKey::from_sec1_pem(pem) {
            return Ok(SigningKey::P256(key.into()));
        }
        if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            return Ok(SigningKey::Ed25519(key));
        }
        Err("the private key is not a P-256 or Ed25519 key in PEM".into())
    }

    /// The algorithm of this key.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            SigningKey::Hmac(_) => Algorithm::HmacSha256,
            SigningKey::Ed25519(_) => Algorithm::Ed25519,
            SigningKey::P256(_) => Algorithm::EcdsaP256Sha256,
        }
    }

    /// Signs `base`: HMAC-SHA256, Ed25519, or deterministic ECDSA P-256
    /// (RFC 6979) as `r‖s`.
    pub fn sign(&self, base: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::Hmac(secret) => {
                // HMAC accepts keys of any length; new_from_slice cannot fail.
                match Hmac::<Sha256>::new_from_slice(secret) {
                    Ok(mut mac) => {
                        mac.update(base);
                        mac.finalize().into_bytes().to_vec()
                    }
                    Err(_) => Vec::new(),
                }
            }
            SigningKey::Ed25519(key) => key.sign(base).to_bytes().to_vec(),
            SigningKey::P256(key) => {
                let signature: p256::ecdsa::Signature = key.sign(base);
                signature.to_bytes().to_vec()
            }
        }
    }

    /// The public key as the attestation `ipk` claim carries it: standard
    /// base64 of the DER SubjectPublicKeyInfo. `None` for HMAC.
    pub fn ipk(&self) -> Option<String> {
        use p256::pkcs8::EncodePublicKey;
        let der = match self {
            SigningKey::Hmac(_) => return None,
            SigningKey::Ed25519(key) => key.verifying_key().to_public_key_der().ok()?,
            SigningKey::P256(key) => key.verifying_key().to_public_key_der().ok()?,
        };
        Some(STANDARD.encode(der.as_bytes()))
    }
}
