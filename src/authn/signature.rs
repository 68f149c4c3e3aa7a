//! Signed requests: HTTP Message Signatures (RFC 9421).
//!
//! The client signs chosen parts of the request (method, authority, path,
//! header fields such as `content-digest`) and sends `Signature-Input`
//! (what it covered, when, with which key) and `Signature`. tollgate
//! rebuilds the signature base from the request as Envoy saw it and
//! verifies it with a key whose algorithm follows from where the key came
//! from:
//!
//! - `hmac-sha256` with the `signingKey` Secret of the app named by
//!   `keyid` (the app's `appId`);
//! - `ed25519` or `ecdsa-p256-sha256` with the installation public key
//!   in the verified attestation token's `ipk` claim, for the signature
//!   labelled `install` (Approov's message-signing profile).
//!
//! The policy (`spec.app.signature`) decides which components must be
//! covered, how old `created` may be (`maxAge`), and whether a `nonce` is
//! required; a nonce is remembered by the admission stage, so a replay is
//! `replay_detected`. A covered `content-digest` is checked against the
//! body ([`digest`]).
//!
//! - [`fields`] — `Signature-Input` / `Signature` parsing (RFC 8941, `sfv`);
//! - [`base`] — the signature base (§2.5);
//! - [`keys`] — algorithms, verifying and signing keys;
//! - [`digest`] — `Content-Digest` (RFC 9530).

pub mod base;
pub mod digest;
pub mod fields;
pub mod keys;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sfv::{BareItem, FieldType, InnerList, Item, Parameters, Parser, Version};

use self::base::{BaseError, Message};
use self::fields::{FieldError, SignatureInput};
use self::keys::{Algorithm, VerifyingKey};
use crate::decision::Deny;
use crate::limits::Nonce;
use crate::policy::types::SignatureSpec;
use crate::reason::Reason;
use crate::request::RequestContext;

/// The nonce scope of signature nonces.
pub const NONCE_SCOPE: &str = "signature";
/// The label of the signature made with the attestation's installation key.
pub const INSTALL_LABEL: &str = "install";
/// Default bound on the age of `created`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// Components covered when the policy names none.
pub const DEFAULT_COMPONENTS: [&str; 3] = ["@method", "@authority", "@path"];
/// Longest accepted nonce.
const MAX_NONCE_BYTES: usize = 256;

/// An app's HMAC signing secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(pub Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningSecret({} bytes)", self.0.len())
    }
}

/// Where verification keys come from for one request.
pub trait KeySource {
    /// The HMAC secret registered under `keyid` (an app's `signingKey`),
    /// with the app's index for the caller.
    fn hmac(&self, keyid: &str) -> Option<(usize, &[u8])>;
    /// The verified attestation token's `ipk` claim, if any.
    fn install_key(&self) -> Option<&str>;
    /// Where `keyid`s are looked up (the policy's namespace): with the
    /// `keyid` it names the HMAC key a nonce belongs to.
    fn keyid_scope(&self) -> &str {
        ""
    }
}

/// Compiled `spec.app.signature`.
#[derive(Clone, Debug)]
pub struct SignaturePolicy {
    pub required: bool,
    algorithms: Vec<Algorithm>,
    /// Serialised component identifiers every signature must cover.
    components: Vec<String>,
    max_age: Duration,
    require_nonce: bool,
}

/// Which key verified a signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signer {
    /// The app with this index in the app index (its `signingKey`).
    App(usize),
    /// The attestation token's installation key.
    Install,
}

/// A verified signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub label: String,
    pub keyid: Option<String>,
    pub algorithm: Algorithm,
    pub signer: Signer,
    /// The `nonce`, to be remembered until the signature expires.
    pub nonce: Option<Nonce>,
}

/// Why a signature is refused. Client-safe messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the request is not signed (Signature-Input and Signature)")]
    Missing,
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error("Signature-Input {0} has no matching Signature")]
    Unmatched(String),
    #[error(
        "no signature uses a key tollgate knows: keyid must name an app with a signingKey, or the label must be install with an attestation ipk"
    )]
    UnknownKey,
    #[error("signature {0}: the attestation token has no usable ipk: {1}")]
    InstallKey(String, String),
    #[error("signature {0}: alg {1} does not fit the key (the key decides the algorithm)")]
    AlgorithmMismatch(String, String),
    #[error("signature {0}: algorithm {1} is not accepted by this API")]
    Algorithm(String, &'static str),
    #[error("signature {0}: has no created parameter")]
    NoCreated(String),
    #[error("signature {0}: created lies more than {1}s from now")]
    Stale(String, u64),
    #[error("signature {0}: expired")]
    Expired(String),
    #[error("signature {0}: does not cover {1}, which this API requires")]
    NotCovered(String, String),
    #[error("signature {0}: this API requires a nonce parameter")]
    NoNonce(String),
    #[error("signature {0}: the nonce is empty or longer than 256 bytes")]
    BadNonce(String),
    #[error("signature {0}: {1}")]
    Base(String, BaseError),
    #[error("signature {0}: does not verify")]
    Invalid(String),
    #[error("signature {0}: {1}")]
    Digest(String, digest::DigestError),
}

impl SignatureError {
    /// The denial for this error.
    pub fn deny(&self) -> Deny {
        let reason = match self {
            SignatureError::Missing => Reason::SignatureMissing,
            _ => Reason::SignatureInvalid,
        };
        Deny::new(reason, self.to_string())
    }
}

impl SignaturePolicy {
    /// Compiles `signature`. Errors name the field relative to it.
    pub fn compile(spec: &SignatureSpec) -> Result<Self, String> {
        let algorithms = if spec.algorithms.is_empty() {
            Algorithm::ALL.to_vec()
        } else {
            let mut algorithms = Vec::new();
            for name in &spec.algorithms {
                let alg = Algorithm::parse(name).ok_or_else(|| {
                    format!(
                        "algorithms: unsupported algorithm {name:?} (expected hmac-sha256, ed25519 or ecdsa-p256-sha256)"
                    )
                })?;
                if !algorithms.contains(&alg) {
                    algorithms.push(alg);
                }
            }
            algorithms
        };
        let names: Vec<String> = if spec.components.is_empty() {
            DEFAULT_COMPONENTS.map(String::from).to_vec()
        } else {
            spec.components.clone()
        };
        let mut components = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            components
                .push(component_identifier(name).map_err(|e| format!("components[{i}]: {e}"))?);
        }
        let max_age = spec.max_age.as_ref().map_or(DEFAULT_MAX_AGE, |d| d.get());
        crate::policy::bounds::duration(
            "maxAge",
            max_age,
            Duration::from_secs(1),
            crate::policy::bounds::MAX_SIGNATURE_AGE,
        )?;
        Ok(Self {
            required: spec.required,
            algorithms,
            components,
            max_age,
            require_nonce: spec.require_nonce,
        })
    }

    /// How long a signature is accepted after (and before) its `created`:
    /// the replay window must cover it.
    pub fn acceptance_window(&self) -> Duration {
        self.max_age
    }

    /// True when the request carries signature fields.
    pub fn is_signed(request: &RequestContext) -> bool {
        request.headers.get("signature-input").is_some()
            || request.headers.get("signature").is_some()
    }

    /// Verifies the request's signatures: the first one tollgate holds a
    /// key for and that passes every check wins; when none passes, the
    /// first failure is reported. `Ok(None)` when the request is unsigned
    /// and signatures are optional.
    pub fn verify(
        &self,
        request: &RequestContext,
        message: &Message<'_>,
        keys: &dyn KeySource,
        now: Duration,
    ) -> Result<Option<Verified>, SignatureError> {
        let inputs: Vec<&str> = request.headers.get_all("signature-input").collect();
        let signatures: Vec<&str> = request.headers.get_all("signature").collect();
        if inputs.is_empty() && signatures.is_empty() {
            return if self.required {
                Err(SignatureError::Missing)
            } else {
                Ok(None)
            };
        }
        let inputs = fields::parse_inputs(&inputs)?;
        let signatures = fields::parse_signatures(&signatures)?;
        if inputs.is_empty() {
            return Err(SignatureError::Missing);
        }
        let mut first_error = None;
        for input in &inputs {
            let Some((_, signature)) = signatures.iter().find(|(l, _)| *l == input.label) else {
                first_error.get_or_insert(SignatureError::Unmatched(input.label.clone()));
                continue;
            };
            let (key, signer, credential) = match self.key_for(input, keys) {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            let signer = (signer, credential.as_str());
            match self.check_one(request, message, input, signature, &key, signer, now) {
                Ok(verified) => return Ok(Some(verified)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(SignatureError::UnknownKey))
    }

    /// The key of one signature, by where it comes from: the `install`
    /// label → the attestation's `ipk`; a `keyid` → that app's secret.
    /// `Ok(None)`: a signature for someone else (unknown key).
    /// The key's credential id (what its nonces are remembered under):
    /// `hmac:<namespace>/<keyid>`, or `ipk:<ipk>` for the installation key.
    fn key_for<'k>(
        &self,
        input: &SignatureInput,
        keys: &'k dyn KeySource,
    ) -> Result<Option<(VerifyingKey<'k>, Signer, String)>, SignatureError> {
        if input.label == INSTALL_LABEL {
            let Some(ipk) = keys.install_key() else {
                return Err(SignatureError::InstallKey(
                    input.label.clone(),
                    "no verified attestation token with an ipk claim".into(),
                ));
            };
            let key = keys::install_key(ipk)
                .map_err(|e| SignatureError::InstallKey(input.label.clone(), e))?;
            return Ok(Some((key, Signer::Install, format!("ipk:{ipk}"))));
        }
        let Some(keyid) = input.keyid.as_deref() else {
            return Ok(None);
        };
        Ok(keys.hmac(keyid).map(|(app, secret)| {
            let credential = format!("hmac:{}/{keyid}", keys.keyid_scope());
            (VerifyingKey::Hmac(secret), Signer::App(app), credential)
        }))
    }

    /// Every check of one signature (RFC 9421 §3.2), cheapest first.
    /// `signer`: which key verified it, and that key's credential id.
    #[allow(clippy::too_many_arguments)]
    fn check_one(
        &self,
        request: &RequestContext,
        message: &Message<'_>,
        input: &SignatureInput,
        signature: &[u8],
        key: &VerifyingKey<'_>,
        (signer, credential): (Signer, &str),
        now: Duration,
    ) -> Result<Verified, SignatureError> {
        let label = || input.label.clone();
        let algorithm = key.algorithm();
        // §3.2 step 6: the algorithm comes from the key; a stated alg must
        // agree with it.
        if let Some(alg) = &input.alg
            && alg != algorithm.name()
        {
            return Err(SignatureError::AlgorithmMismatch(label(), alg.clone()));
        }
        if !self.algorithms.contains(&algorithm) {
            return Err(SignatureError::Algorithm(label(), algorithm.name()));
        }
        // §3.2 step 5 / §7.2.4: freshness by the verifier's policy.
        let now_secs = now.as_secs_f64();
        let created = input
            .created
            .ok_or_else(|| SignatureError::NoCreated(label()))?;
        let max_age = self.max_age.as_secs_f64();
        if (now_secs - created as f64).abs() > max_age {
            return Err(SignatureError::Stale(label(), self.max_age.as_secs()));
        }
        if let Some(expires) = input.expires
            && now_secs >= expires as f64
        {
            return Err(SignatureError::Expired(label()));
        }
        // The policy's components must all be covered.
        let covered: Vec<String> = input.components.iter().map(FieldType::serialize).collect();
        if let Some(missing) = self.components.iter().find(|c| !covered.contains(c)) {
            return Err(SignatureError::NotCovered(label(), missing.clone()));
        }
        let nonce = match &input.nonce {
            None if self.require_nonce => return Err(SignatureError::NoNonce(label())),
            None => None,
            Some(n) if n.is_empty() || n.len() > MAX_NONCE_BYTES => {
                return Err(SignatureError::BadNonce(label()));
            }
            Some(n) => Some(n.as_str()),
        };
        // §3.2 steps 7–8: rebuild the base and verify.
        let base = base::signature_base(message, &input.components, &input.params_line)
            .map_err(|e| SignatureError::Base(label(), e))?;
        if !key.verify(base.as_bytes(), signature) {
            return Err(SignatureError::Invalid(label()));
        }
        // RFC 9530: a covered Content-Digest must describe this body.
        if covered.iter().any(|c| c == "\"content-digest\"") {
            digest::check(&request.headers, request.body.as_ref(), &request.protocol)
                .map_err(|e| SignatureError::Digest(label(), e))?;
        }
        // Remember the nonce until the signature can no longer be accepted:
        // created + maxAge, or expires if sooner.
        let mut end = created as f64 + max_age;
        if let Some(expires) = input.expires {
            end = end.min(expires as f64);
        }
        let ttl = Duration::from_secs((end - now_secs).max(0.0).ceil() as u64 + 1);
        Ok(Verified {
            label: input.label.clone(),
            keyid: input.keyid.clone(),
            algorithm,
            signer,
            // The nonce belongs to the key that verified the signature,
            // whatever else the request carries.
            nonce: nonce.map(|n| Nonce {
                scope: NONCE_SCOPE.to_owned(),
                credential: credential.to_owned(),
                value: n.to_owned(),
                ttl,
            }),
        })
    }
}

/// Parses a policy's component name (`@method`, `content-digest`) into the
/// serialised identifier signatures are compared against.
fn component_identifier(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{name:?} must be a lower-case component name"));
    }
    // Policies may write `"@query-param";name="x"` style identifiers too.
    let item: Item = if name.starts_with('"') {
        Parser::new(name.as_bytes())
            .with_version(Version::Rfc8941)
            .parse()
            .map_err(|_| format!("{name:?} is not a component identifier"))?
    } else {
        let string = sfv::String::from_string(name.to_owned())
            .map_err(|_| format!("{name:?} is not a component identifier"))?;
        Item::new(string)
    };
    if item.params.is_empty()
        && let Some(s) = item.bare_item.as_string()
        && s.as_str() == "@signature-params"
    {
        return Err("@signature-params is never a covered component".into());
    }
    Ok(item.serialize())
}

/// What to sign (`tollgate token sign`, tests).
#[derive(Clone, Debug)]
pub struct SignOptions<'a> {
    /// The signature's label (`install` for the attestation key).
    pub label: &'a str,
    /// Component names in order (`@method`, `content-digest`…).
    pub components: &'a [String],
    pub created: i64,
    pub expires: Option<i64>,
    pub nonce: Option<&'a str>,
    pub keyid: Option<&'a str>,
    /// Add the `alg` parameter.
    pub include_alg: bool,
}

/// The fields of a signed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedFields {
    pub signature_input: String,
    pub signature: String,
}

/// Signs `message` (RFC 9421 §3.1): builds `Signature-Input` and the
/// signature base, signs it, and returns both fields. Covered header
/// fields must already be in the message (a `content-digest` too).
pub fn sign(
    message: &Message<'_>,
    options: &SignOptions<'_>,
    key: &keys::SigningKey,
) -> Result<SignedFields, String> {
    let mut items = Vec::with_capacity(options.components.len());
    for name in options.components {
        let identifier = component_identifier(name)?;
        let item: Item = Parser::new(identifier.as_bytes())
            .with_version(Version::Rfc8941)
            .parse()
            .map_err(|_| format!("{name:?} is not a component identifier"))?;
        items.push(item);
    }
    let mut params = Parameters::new();
    let key_of =
        |k: &'static str| sfv::Key::from_string(k.to_owned()).map_err(|(e, _)| e.to_string());
    let text = |v: &str| -> Result<BareItem, String> {
        sfv::String::from_string(v.to_owned())
            .map(BareItem::String)
            .map_err(|(e, _)| e.to_string())
    };
    params.insert(
        key_of("created")?,
        BareItem::Integer(integer(options.created)?),
    );
    if let Some(expires) = options.expires {
        params.insert(key_of("expires")?, BareItem::Integer(integer(expires)?));
    }
    if let Some(keyid) = options.keyid {
        params.insert(key_of("keyid")?, text(keyid)?);
    }
    if let Some(nonce) = options.nonce {
        params.insert(key_of("nonce")?, text(nonce)?);
    }
    if options.include_alg {
        params.insert(key_of("alg")?, text(key.algorithm().name())?);
    }
    let list = InnerList::with_params(items, params);
    let params_line = fields::params_line(&list);
    let base =
        base::signature_base(message, &list.items, &params_line).map_err(|e| e.to_string())?;
    let signature = key.sign(base.as_bytes());
    sfv::Key::from_string(options.label.to_owned())
        .map_err(|_| format!("{:?} is not a valid label", options.label))?;
    Ok(SignedFields {
        signature_input: format!("{}={params_line}", options.label),
        signature: format!("{}=:{}:", options.label, STANDARD.encode(signature)),
    })
}

fn integer(value: i64) -> Result<sfv::Integer, String> {
    sfv::Integer::try_from(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
