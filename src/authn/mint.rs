//! Development minting: key pairs, JWKS documents, user access tokens and
//! Approov-style app tokens, so a policy can be tried without an IdP or an
//! attestation service (`tollgate token`) and the tests can sign real
//! tokens. Nothing on the request path uses this module.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::traits::PublicKeyParts;
use serde_json::{Map, Value, json};

/// Why minting failed.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("unsupported algorithm {0} (use ES256, RS256, EdDSA, or HS256 with a secret)")]
    Algorithm(String),
    #[error("the private key is not a {0} key in PEM (PKCS#8, or PKCS#1 for RSA)")]
    Key(&'static str),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// The private half of a key pair tollgate can generate.
#[derive(Clone)]
enum Private {
    P256(p256::SecretKey),
    Rsa(Box<rsa::RsaPrivateKey>),
    Ed25519(ed25519_dalek::SigningKey),
}

/// A signing key with its id and algorithm.
#[derive(Clone)]
pub struct SigningKey {
    pub alg: Algorithm,
    pub kid: String,
    private: Private,
    encoding: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Parses `ES256`, `RS256` or `EdDSA` (the generated key types).
pub fn key_algorithm(name: &str) -> Result<Algorithm, MintError> {
    match name {
        "ES256" => Ok(Algorithm::ES256),
        "RS256" => Ok(Algorithm::RS256),
        "PS256" => Ok(Algorithm::PS256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => Err(MintError::Algorithm(other.to_owned())),
    }
}

impl SigningKey {
    /// A fresh key pair for `alg` (ES256, RS256/PS256 with 2048-bit RSA, EdDSA).
    pub fn generate(alg: Algorithm, kid: &str) -> Result<Self, MintError> {
        let mut rng = rand::rngs::OsRng;
        let private = match alg {
            Algorithm::ES256 => Private::P256(p256::SecretKey::random(&mut rng)),
            Algorithm::RS256 | Algorithm::PS256 => Private::Rsa(Box::new(
                rsa::RsaPrivateKey::new(&mut rng, 2048)
                    .map_err(|e| MintError::Sign(e.to_string()))?,
            )),
            Algorithm::EdDSA => Private::Ed25519(ed25519_dalek::SigningKey::generate(&mut rng)),
            other => return Err(MintError::Algorithm(format!("{other:?}"))),
        };
        Self::from_private(alg, kid, private)
    }

    /// Loads a PEM private key for `alg`.
    pub fn from_pem(alg: Algorithm, kid: &str, pem: &str) -> Result<Self, MintError> {
        let private = match alg {
            Algorithm::ES256 => Private::P256(
                p256::SecretKey::from_pkcs8_pem(pem).map_err(|_| MintError::Key("P-256"))?,
            ),
            Algorithm::RS256 | Algorithm::PS256 => Private::Rsa(Box::new(
                rsa::RsaPrivateKey::from_pkcs1_pem(pem)
                    .or_else(|_| rsa::RsaPrivateKey::from_pkcs8_pem(pem))
                    .map_err(|_| MintError::Key("RSA"))?,
            )),
            Algorithm::EdDSA => Private::Ed25519(
                ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
                    .map_err(|_| MintError::Key("Ed25519"))?,
            ),
            other => return Err(MintError::Algorithm(format!("{other:?}"))),
        };
        Self::from_private(alg, kid, private)
    }

    fn from_private(alg: Algorithm, kid: &str, private: Private) -> Result<Self, MintError> {
        let der_error = |e: &dyn std::fmt::Display| MintError::Sign(e.to_string());
        let encoding = match &private {
            Private::P256(key) => {
                EncodingKey::from_ec_der(key.to_pkcs8_der().map_err(|e| der_error(&e))?.as_bytes())
            }
            Private::Rsa(key) => {
                EncodingKey::from_rsa_der(key.to_pkcs1_der().map_err(|e| der_error(&e))?.as_bytes())
            }
            Private::Ed25519(key) => {
                EncodingKey::from_ed_der(key.to_pkcs8_der().map_err(|e| der_error(&e))?.as_bytes())
            }
        };
        Ok(Self {
            alg,
            kid: kid.to_owned(),
            private,
            encoding,
        })
    }

    /// The private key as PEM (PKCS#8; PKCS#1 for RSA).
    pub fn private_pem(&self) -> String {
        let pem = match &self.private {
            Private::P256(key) => key.to_pkcs8_pem(LineEnding::LF).map(|p| p.to_string()).ok(),
            Private::Rsa(key) => key.to_pkcs1_pem(LineEnding::LF).map(|p| p.to_string()).ok(),
            Private::Ed25519(key) => key.to_pkcs8_pem(LineEnding::LF).map(|p| p.to_string()).ok(),
        };
        pem.unwrap_or_default()
    }

    /// The public key as a JWK (RFC 7517 §4, RFC 7518 §6, RFC 8037 §2).
    pub fn public_jwk(&self) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let mut jwk = match &self.private {
            Private::P256(key) => {
                let point = key.public_key().to_encoded_point(false);
                json!({
                    "kty": "EC", "crv": "P-256",
                    "x": b64(point.x().map(|x| x.as_slice()).unwrap_or_default()),
                    "y": b64(point.y().map(|y| y.as_slice()).unwrap_or_default()),
                })
            }
            Private::Rsa(key) => json!({
                "kty": "RSA",
                "n": b64(&key.n().to_bytes_be()),
                "e": b64(&key.e().to_bytes_be()),
            }),
            Private::Ed25519(key) => json!({
                "kty": "OKP", "crv": "Ed25519",
                "x": b64(key.verifying_key().as_bytes()),
            }),
        };
        if let Some(obj) = jwk.as_object_mut() {
            obj.insert("kid".into(), json!(self.kid));
            obj.insert("alg".into(), json!(algorithm_name(self.alg)));
            obj.insert("use".into(), json!("sig"));
        }
        jwk
    }

    /// Signs `claims` as a compact JWS with header `{alg, kid, typ}`.
    pub fn sign(&self, typ: Option<&str>, claims: &Value) -> Result<String, MintError> {
        let mut header = Map::new();
        header.insert("alg".into(), json!(algorithm_name(self.alg)));
        header.insert("kid".into(), json!(self.kid));
        if let Some(typ) = typ {
            header.insert("typ".into(), json!(typ));
        }
        sign_with(&Value::Object(header), claims, &self.encoding, self.alg)
    }
}

/// A JWKS document holding the public keys of `keys`.
pub fn jwks<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> Value {
    json!({ "keys": keys.into_iter().map(SigningKey::public_jwk).collect::<Vec<_>>() })
}

/// Signs `claims` with an HMAC `secret` (HS256/384/512).
pub fn sign_hmac(
    alg: Algorithm,
    secret: &[u8],
    kid: Option<&str>,
    claims: &Value,
) -> Result<String, MintError> {
    let mut header = Map::new();
    header.insert("alg".into(), json!(algorithm_name(alg)));
    header.insert("typ".into(), json!("JWT"));
    if let Some(kid) = kid {
        header.insert("kid".into(), json!(kid));
    }
    sign_with(
        &Value::Object(header),
        claims,
        &EncodingKey::from_secret(secret),
        alg,
    )
}

/// Signs `claims` under an arbitrary `header` (tests craft hostile headers).
pub fn sign_with(
    header: &Value,
    claims: &Value,
    key: &EncodingKey,
    alg: Algorithm,
) -> Result<String, MintError> {
    let encode = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap_or_default());
    let input = format!("{}.{}", encode(header), encode(claims));
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg)
        .map_err(|e| MintError::Sign(e.to_string()))?;
    Ok(format!("{input}.{signature}"))
}

/// The JOSE name of `alg`.
pub fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

/// The claims of a development user access token (RFC 9068 §2.2).
#[derive(Clone, Debug)]
pub struct UserClaims {
    pub issuer: String,
    pub audience: String,
    pub subject: String,
    /// Seconds since the epoch.
    pub now: f64,
    pub lifetime_secs: f64,
    pub scope: Option<String>,
    /// `cnf.x5t#S256`, binding the token to a client certificate.
    pub cnf_x5t_s256: Option<String>,
    /// `cnf.jkt`, binding the token to a DPoP key.
    pub cnf_jkt: Option<String>,
}

impl UserClaims {
    /// The claims as JSON.
    pub fn to_json(&self) -> Value {
        let now = self.now.floor();
        let mut claims = json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": self.subject,
            "iat": now as u64,
            "exp": (now + self.lifetime_secs) as u64,
            "jti": random_id(),
        });
        if let Some(obj) = claims.as_object_mut() {
            if let Some(scope) = &self.scope {
                obj.insert("scope".into(), json!(scope));
            }
            let mut cnf = Map::new();
            if let Some(x5t) = &self.cnf_x5t_s256 {
                cnf.insert("x5t#S256".into(), json!(x5t));
            }
            if let Some(jkt) = &self.cnf_jkt {
                cnf.insert("jkt".into(), json!(jkt));
            }
            if !cnf.is_empty() {
                obj.insert("cnf".into(), Value::Object(cnf));
            }
        }
        claims
    }
}

/// The claims of a development app attestation token (Approov style).
#[derive(Clone, Debug, Default)]
pub struct AppClaims {
    /// `exp`, seconds since the epoch; fractional like Approov's.
    pub exp: f64,
    /// The `Authorization` value (or other bound header values, in order)
    /// the `pay` claim binds the token to.
    pub bound_values: Vec<String>,
    /// `did`: the device id.
    pub device: Option<String>,
    /// Extra claims (an app id claim, `iss`, `ipk`…).
    pub extra: Map<String, Value>,
}

impl AppClaims {
    /// The claims as JSON; `pay` is present when values are bound.
    pub fn to_json(&self) -> Value {
        let mut claims = self.extra.clone();
        claims.insert("exp".into(), json!(self.exp));
        if !self.bound_values.is_empty() {
            let pay =
                super::attestation::binding_hash(self.bound_values.iter().map(String::as_str));
            claims.insert("pay".into(), json!(pay));
        }
        if let Some(did) = &self.device {
            claims.insert("did".into(), json!(did));
        }
        Value::Object(claims)
    }
}

/// A random 128-bit id, base64url.
pub fn random_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::jwk::KeySet;
    use crate::authn::jwt;

    #[test]
    fn generated_keys_sign_tokens_their_jwks_verify() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA] {
            let key = SigningKey::generate(alg, "k1").unwrap();
            let token = key.sign(Some("at+jwt"), &json!({"sub": "u"})).unwrap();
            let set = KeySet::from_jwks(&jwks([&key]), false).unwrap();
            assert_eq!(set.keys.len(), 1, "{:?}", set.skipped);
            let parsed = jwt::parse(&token).unwrap();
            assert!(set.verify(&parsed, alg).is_some(), "{alg:?}");
            let reloaded = SigningKey::from_pem(alg, "k1", &key.private_pem()).unwrap();
            assert_eq!(reloaded.public_jwk(), key.public_jwk());
        }
    }

    #[test]
    fn app_claims_bind_the_authorization_value() {
        let claims = AppClaims {
            exp: 4708683205.891912,
            bound_values: vec!["Bearer abc".into()],
            device: Some("dev-1".into()),
            extra: Map::new(),
        }
        .to_json();
        assert_eq!(
            claims["pay"],
            "w1Xc6WwWEogNEZQP/dkBTThsJT4MNlKmzQanIm970rY="
        );
        assert_eq!(claims["exp"].as_f64(), Some(4708683205.891912));
        assert_eq!(claims["did"], "dev-1");
    }
}
