//! App identification and authentication.
//!
//! *Which* app is calling is established by an API key ([`super::api_key`]),
//! the client certificate (SPIFFE ID / URI SAN or SHA-256 fingerprint), or a
//! claim of the attestation token; every identification present must name
//! the same app. *Whether it is genuine* is established by the attestation
//! token ([`super::attestation`]) and/or a signed request
//! ([`super::signature`]: an `hmac-sha256` signature whose `keyid` is the
//! app's `appId`, made with its `signingKey`, also identifies the app when
//! `identify.signatureKeyId` is set). Then the registration decides: disabled
//! apps get 403 `app_disabled`, apps not listed for this policy (or from
//! another namespace) 403 `app_not_allowed`.
//!
//! App failures carry tollgate's own `App` challenge naming the expected
//! header, never `Bearer error="invalid_token"`, which would make an OAuth
//! client throw away a valid user token.

use super::api_key;
use super::attestation::{Attestation, AttestationClaims};
pub use super::registry::{App, AppIndex};
use super::signature::base::Message;
use super::signature::{self, SignaturePolicy, Signer};
use super::user::UserIdentity;
use crate::compile_context::CompileContext;
use crate::decision::Deny;
use crate::limits::Nonce;
use crate::origin::Origin;
use crate::policy::snapshot::PolicyId;
use crate::policy::types::AppSpec;
use crate::reason::{Challenge, Reason};
use crate::request::RequestContext;

/// Compiled `spec.app`.
#[derive(Debug)]
pub struct AppPolicy {
    required: bool,
    /// Lower-case API key header, when API keys identify apps.
    api_key_header: Option<String>,
    /// Attestation claim naming the app id.
    token_claim: Option<String>,
    client_certificate: bool,
    attestation: Option<Attestation>,
    /// RFC 9421 request signatures.
    signature: Option<SignaturePolicy>,
    /// A verified signature's `keyid` identifies the app.
    signature_key_id: bool,
}

/// An identified (and, where configured, authenticated) app.
#[derive(Clone, Debug, Default)]
pub struct AppIdentity {
    pub app_id: String,
    /// The app's plan; `None` means the policy's `defaultPlan`.
    pub plan: Option<String>,
    /// The device id (`did` of the attestation token).
    pub device: Option<String>,
    /// The verified attestation token (`jti`, `exp`, `ipk`… for the replay
    /// and signature stages).
    pub attestation: Option<AttestationClaims>,
    /// The verified request signature, if any.
    pub signature: Option<signature::Verified>,
}

/// What app authentication established: the app, if identified, and the
/// nonces the admission stage must remember (a single-use attestation
/// token's `jti`, a signature's `nonce`), which exist even for a request
/// of no identified app.
#[derive(Clone, Debug, Default)]
pub struct AppOutcome {
    pub app: Option<AppIdentity>,
    pub nonces: Vec<Nonce>,
}

impl AppPolicy {
    /// Compiles `spec.app`. Errors name the field relative to `app`.
    pub fn compile(spec: &AppSpec, ctx: &CompileContext<'_>) -> Result<Self, String> {
        let signature = spec
            .signature
            .as_ref()
            .map(|s| SignaturePolicy::compile(s).map_err(|e| format!("signature.{e}")))
            .transpose()?;
        if spec.identify.signature_key_id && signature.is_none() {
            return Err(
                "identify.signatureKeyId: needs signature (the keyid is read from a verified signature)"
                    .into(),
            );
        }
        let attestation = spec
            .attestation
            .as_ref()
            .map(|a| Attestation::compile(a, ctx).map_err(|e| format!("attestation.{e}")))
            .transpose()?;
        let api_key_header = spec
            .identify
            .api_key
            .as_ref()
            .map(|k| k.header.to_ascii_lowercase());
        if api_key_header.as_deref() == Some("") {
            return Err("identify.apiKey.header: must not be empty".into());
        }
        if api_key_header.as_deref() == Some("authorization") {
            return Err("identify.apiKey.header: authorization carries the user token".into());
        }
        if spec.identify.token_claim.is_some() && attestation.is_none() {
            return Err(
                "identify.tokenClaim: needs attestation (the claim is read from the verified app token)"
                    .into(),
            );
        }
        if spec.required
            && api_key_header.is_none()
            && spec.identify.token_claim.is_none()
            && !spec.identify.client_certificate
            && !spec.identify.signature_key_id
        {
            return Err(
                "identify: required apps need at least one of apiKey, tokenClaim, clientCertificate, signatureKeyId (or set required: false for attestation alone)"
                    .into(),
            );
        }
        Ok(Self {
            required: spec.required,
            api_key_header,
            token_claim: spec.identify.token_claim.clone(),
            client_certificate: spec.identify.client_certificate,
            attestation,
            signature,
            signature_key_id: spec.identify.signature_key_id,
        })
    }

    /// How long credentials this section remembers stay acceptable: a
    /// signature's `maxAge`, a single-use attestation token's lifetime.
    /// The policy's replay window must cover each (checked at compile).
    pub fn acceptance_windows(&self) -> Vec<(&'static str, std::time::Duration)> {
        let mut windows = Vec::new();
        if let Some(s) = &self.signature {
            windows.push(("spec.app.signature.maxAge", s.acceptance_window()));
        }
        if let Some(w) = self
            .attestation
            .as_ref()
            .and_then(Attestation::single_use_window)
        {
            windows.push(("spec.app.attestation.maxLifetime", w));
        }
        windows
    }

    /// The API key header, if API keys identify apps (for credential
    /// stripping).
    pub fn api_key_header(&self) -> Option<&str> {
        self.api_key_header.as_deref()
    }

    /// The attestation token header, if attestation is configured.
    pub fn attestation_header(&self) -> Option<&str> {
        self.attestation.as_ref().map(|a| a.header.as_str())
    }

    /// Identifies and authenticates the app of `request` for `policy`.
    /// `app: None`: no app credential and none required (an attestation
    /// token, if any, was still verified).
    pub async fn authenticate(
        &self,
        request: &RequestContext,
        origin: &Origin,
        user: Option<&UserIdentity>,
        apps: &AppIndex,
        policy: &PolicyId,
        now: std::time::Duration,
    ) -> Result<AppOutcome, Deny> {
        // The user stage's hash of the Authorization value, which an
        // attestation binding to that header reuses.
        let authorization_sha256 = user.map(|u| &u.authorization_sha256);
        self.identify(request, origin, apps, policy, now, authorization_sha256)
            .await
            .map_err(|deny| self.challenge(deny))
    }

    /// The steps of app authentication, in order: the credentials that
    /// identify (API key, certificate), the attestation token, the request
    /// signature, the token's app claim, then the registration's rules.
    async fn identify(
        &self,
        request: &RequestContext,
        origin: &Origin,
        apps: &AppIndex,
        policy: &PolicyId,
        now: std::time::Duration,
        authorization_sha256: Option<&[u8; 32]>,
    ) -> Result<AppOutcome, Deny> {
        let (namespace, _) = split_policy(policy);
        // 1–2. The API key and the client certificate.
        let presented = self.presented(request, origin, apps)?;
        if self.required && presented.app.is_none() && !presented.any_credential {
            return Err(Deny::new(
                Reason::AppCredentialMissing,
                "this API requires an app credential",
            ));
        }
        // 3. The attestation token; a single-use one leaves its jti.
        let claims = match &self.attestation {
            Some(attestation) => {
                attestation
                    .verify(request, now, authorization_sha256)
                    .await?
            }
            None => None,
        };
        let mut nonces = Vec::new();
        if let (Some(attestation), Some(claims)) = (&self.attestation, &claims)
            && let Some(nonce) = attestation.single_use_nonce(claims, now)?
        {
            nonces.push(nonce);
        }
        // 3b. The request signature (RFC 9421), with the app's signingKey or
        // the attestation's installation key.
        let verified =
            self.verify_signature(request, origin, apps, namespace, claims.as_ref(), now)?;
        let mut found = self.signing_app(presented.app, verified.as_ref())?;
        nonces.extend(verified.as_ref().and_then(|v| v.nonce.clone()));
        // 4. The app id claim of the verified attestation token.
        if let Some(claims) = &claims {
            found = self.claimed_app(found, claims, apps, namespace)?;
        }

        let Some(index) = found else {
            if !self.required {
                return Ok(AppOutcome { app: None, nonces });
            }
            return Err(if self.client_certificate && presented.certificate {
                Deny::new(
                    Reason::AppUnknown,
                    "the client certificate is not registered",
                )
            } else {
                Deny::new(
                    Reason::AppCredentialMissing,
                    "no credential identifies the app",
                )
            });
        };
        let app = registered(apps, index, policy)?;
        Ok(AppOutcome {
            app: Some(AppIdentity {
                app_id: app.app_id.clone(),
                plan: app.plan.clone(),
                device: claims.as_ref().and_then(|c| c.device.clone()),
                attestation: claims,
                signature: verified,
            }),
            nonces,
        })
    }

    /// Steps 1–2: the app the API key and the client certificate name (they
    /// must agree), and whether any app credential was presented at all.
    fn presented(
        &self,
        request: &RequestContext,
        origin: &Origin,
        apps: &AppIndex,
    ) -> Result<Presented, Deny> {
        let mut key_app = None;
        let mut key_present = false;
        if let Some(header) = &self.api_key_header {
            let mut values = request.headers.get_all(header);
            if let Some(key) = values.next() {
                if values.next().is_some() {
                    return Err(Deny::new(
                        Reason::RequestMalformed,
                        format!("the {header} header appears more than once"),
                    ));
                }
                key_present = true;
                let digest = api_key::digest(key.as_bytes());
                key_app = Some(*apps.by_key.get(&digest).ok_or_else(|| {
                    Deny::new(Reason::AppUnknown, "the API key is not registered")
                })?);
            }
        }
        let certificate = origin.client_certificate.is_some() || origin.client_principal.is_some();
        let cert_app = if self.client_certificate {
            apps.by_certificate(origin)
        } else {
            None
        };
        if let (Some(a), Some(b)) = (key_app, cert_app)
            && a != b
        {
            return Err(Deny::new(
                Reason::AppUnknown,
                "the API key and the client certificate belong to different apps",
            ));
        }
        let attestation_sent = self
            .attestation
            .as_ref()
            .is_some_and(|a| request.headers.get(&a.header).is_some());
        let signature_sent = self.signature_key_id && SignaturePolicy::is_signed(request);
        Ok(Presented {
            app: key_app.or(cert_app),
            any_credential: key_present
                || attestation_sent
                || signature_sent
                || (self.client_certificate && certificate),
            certificate,
        })
    }

    /// Step 3b: the request's signature, verified with the keys this
    /// request may use (`Ok(None)`: unsigned, and signatures are optional).
    fn verify_signature(
        &self,
        request: &RequestContext,
        origin: &Origin,
        apps: &AppIndex,
        namespace: &str,
        claims: Option<&AttestationClaims>,
        now: std::time::Duration,
    ) -> Result<Option<signature::Verified>, Deny> {
        let Some(policy) = &self.signature else {
            return Ok(None);
        };
        let keys = SignatureKeys {
            apps,
            namespace,
            ipk: claims.and_then(|c| c.ipk.as_deref()),
        };
        let message = Message::from_request(request, origin);
        policy
            .verify(request, &message, &keys, now)
            .map_err(|e| e.deny())
    }

    /// The app after the signature: an HMAC signature made with another
    /// app's key than the one identified is refused; with
    /// `identify.signatureKeyId` the signing app is the app.
    fn signing_app(
        &self,
        found: Option<usize>,
        verified: Option<&signature::Verified>,
    ) -> Result<Option<usize>, Deny> {
        let Some(Signer::App(signer)) = verified.map(|v| v.signer) else {
            return Ok(found);
        };
        if found.is_some_and(|f| f != signer) {
            return Err(Deny::new(
                Reason::SignatureInvalid,
                "the request is signed with the key of a different app than the one identified",
            ));
        }
        Ok(if self.signature_key_id {
            Some(signer)
        } else {
            found
        })
    }

    /// Step 4: with `identify.tokenClaim`, the verified app token names its
    /// app in that claim, a string. A token without it (or with another
    /// type) is refused rather than ignored: it cannot vouch for the app
    /// another credential names, and a token issued to some other app
    /// family must not pass for this one.
    fn claimed_app(
        &self,
        found: Option<usize>,
        claims: &AttestationClaims,
        apps: &AppIndex,
        namespace: &str,
    ) -> Result<Option<usize>, Deny> {
        let Some(claim) = &self.token_claim else {
            return Ok(found);
        };
        let Some(app_id) = claims.claims.get(claim).and_then(|v| v.as_str()) else {
            return Err(Deny::new(
                Reason::AttestationInvalid,
                format!("the app token has no string {claim} claim naming its app"),
            ));
        };
        let claimed = *apps
            .by_id
            .get(&(namespace.to_owned(), app_id.to_owned()))
            .ok_or_else(|| {
                Deny::new(
                    Reason::AppUnknown,
                    "the app named by the app token is not registered",
                )
            })?;
        if found.is_some_and(|f| f != claimed) {
            return Err(Deny::new(
                Reason::AttestationInvalid,
                "the app token was issued to a different app than the one identified",
            ));
        }
        Ok(Some(claimed))
    }

    /// Adds the `App` challenge (naming the header the client should send)
    /// to 401s of app failures.
    fn challenge(&self, deny: Deny) -> Deny {
        if deny.reason.challenge() != Some(Challenge::App) || deny.reason.http_status() != 401 {
            return deny;
        }
        let attestation_reason = deny.reason.is_attestation_detail();
        let header = if attestation_reason {
            self.attestation_header().or(self.api_key_header())
        } else {
            self.api_key_header().or(self.attestation_header())
        };
        let value = match header {
            Some(header) => format!(r#"App realm="tollgate", header="{header}""#),
            None => r#"App realm="tollgate""#.to_owned(),
        };
        deny.with_header("www-authenticate", value)
    }
}

/// Signature keys for one request: apps' signing keys in the policy's
/// namespace, and the verified attestation token's `ipk`.
struct SignatureKeys<'a> {
    apps: &'a AppIndex,
    namespace: &'a str,
    ipk: Option<&'a str>,
}

impl signature::KeySource for SignatureKeys<'_> {
    fn hmac(&self, keyid: &str) -> Option<(usize, &[u8])> {
        self.apps
            .signing_keys
            .get(&(self.namespace.to_owned(), keyid.to_owned()))
            .map(|(index, secret)| (*index, secret.0.as_slice()))
    }

    fn install_key(&self) -> Option<&str> {
        self.ipk
    }

    fn keyid_scope(&self) -> &str {
        self.namespace
    }
}

/// What steps 1–2 found.
struct Presented {
    /// The app the API key or the client certificate names.
    app: Option<usize>,
    /// Some app credential was sent (a key, a token, a signature or a
    /// certificate), registered or not.
    any_credential: bool,
    /// The client presented a certificate.
    certificate: bool,
}

/// The registration's own rules: a disabled app is `app_disabled`, an app
/// of another namespace or not listed for this policy `app_not_allowed`.
fn registered<'a>(apps: &'a AppIndex, index: usize, policy: &PolicyId) -> Result<&'a App, Deny> {
    let app = &apps.apps[index];
    if app.disabled {
        return Err(Deny::new(
            Reason::AppDisabled,
            format!("app {} is disabled", app.app_id),
        ));
    }
    let (namespace, name) = split_policy(policy);
    if app.namespace != namespace
        || !(app.policies.is_empty() || app.policies.iter().any(|p| p == name))
    {
        return Err(Deny::new(
            Reason::AppNotAllowed,
            format!("app {} is not registered for this API", app.app_id),
        ));
    }
    Ok(app)
}

fn split_policy(policy: &PolicyId) -> (&str, &str) {
    policy
        .as_str()
        .split_once('/')
        .unwrap_or(("default", policy.as_str()))
}
