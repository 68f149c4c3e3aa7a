//! Registered apps: each `AppRegistration` compiled on its own
//! ([`CompiledApp`]), and the index the request path looks apps up in
//! ([`AppIndex`]).
//!
//! The two steps are apart so one bad registration never takes the others
//! down: a registration whose Secret is missing fails alone, and the index
//! is built from whichever registrations compiled. Claims two
//! registrations cannot share (an app id in a namespace, an API key, a
//! SPIFFE ID, a certificate fingerprint) go to the older one; the newer is
//! left out of the index whole and reported ([`AppConflict`]), so a new
//! registration can never take over another app's credentials.

use std::collections::HashMap;

use super::api_key::{self, KeyDigest};
use super::certificate;
use super::signature::SigningSecret;
use super::signature::keys::MIN_HMAC_BYTES;
use crate::compile_context::{CompileContext, FieldError};
use crate::origin::Origin;
use crate::policy::types::AppRegistration;

/// One registered app, as the request path sees it.
#[derive(Clone, Debug)]
pub struct App {
    pub namespace: String,
    pub name: String,
    pub app_id: String,
    pub plan: Option<String>,
    /// Policy names (same namespace) that accept the app; empty = all.
    pub policies: Vec<String>,
    pub disabled: bool,
}

/// One `AppRegistration`, compiled: the app and the digests of its
/// credentials (never a plain API key).
#[derive(Clone, Debug)]
pub struct CompiledApp {
    pub app: App,
    api_key: Option<KeyDigest>,
    signing_key: Option<SigningSecret>,
    spiffe_ids: Vec<String>,
    fingerprints: Vec<String>,
}

impl CompiledApp {
    /// Compiles one registration, reading its Secrets through `ctx` (the
    /// registration's namespace). Every field error is returned.
    pub fn compile(
        registration: &AppRegistration,
        ctx: &CompileContext<'_>,
    ) -> Result<Self, Vec<FieldError>> {
        let spec = &registration.spec;
        let mut errors = Vec::new();
        if spec.app_id.is_empty() {
            errors.push(FieldError::new("spec.appId", "must not be empty"));
        } else if !crate::field_value::is_header_safe(&spec.app_id) {
            // Sent upstream as x-tollgate-app and used in log lines.
            errors.push(FieldError::new(
                "spec.appId",
                "must not contain control characters or leading or trailing whitespace",
            ));
        }
        let api_key = spec.api_key.as_ref().and_then(|key_ref| {
            ctx.secret(&key_ref.secret_ref.name, &key_ref.secret_ref.key)
                .and_then(api_key::load)
                .map_err(|e| errors.push(FieldError::new("spec.apiKey", e)))
                .ok()
        });
        let signing_key = spec.signing_key.as_ref().and_then(|key_ref| {
            let checked = ctx
                .secret(&key_ref.secret_ref.name, &key_ref.secret_ref.key)
                .and_then(|bytes| {
                    if bytes.len() < MIN_HMAC_BYTES {
                        Err(format!(
                            "the HMAC key has {} bytes; at least {MIN_HMAC_BYTES} are required",
                            bytes.len()
                        ))
                    } else {
                        Ok(SigningSecret(bytes.to_vec()))
                    }
                });
            checked
                .map_err(|e| errors.push(FieldError::new("spec.signingKey", e)))
                .ok()
        });
        let mut spiffe_ids: Vec<String> = Vec::new();
        let mut fingerprints: Vec<String> = Vec::new();
        if let Some(certs) = &spec.client_certificate {
            for (i, id) in certs.spiffe_ids.iter().enumerate() {
                if spiffe_ids.contains(id) {
                    errors.push(FieldError::new(
                        format!("spec.clientCertificate.spiffeIds[{i}]"),
                        format!("{id} is listed twice"),
                    ));
                } else {
                    spiffe_ids.push(id.clone());
                }
            }
            for (i, fp) in certs.sha256_fingerprints.iter().enumerate() {
                let field = format!("spec.clientCertificate.sha256Fingerprints[{i}]");
                match certificate::normalize_fingerprint(fp) {
                    Ok(fp) if fingerprints.contains(&fp) => {
                        errors.push(FieldError::new(field, "the fingerprint is listed twice"));
                    }
                    Ok(fp) => fingerprints.push(fp),
                    Err(e) => errors.push(FieldError::new(field, e)),
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            app: App {
                namespace: ctx.namespace.to_owned(),
                name: registration.metadata.name.clone().unwrap_or_default(),
                app_id: spec.app_id.clone(),
                plan: spec.plan.clone(),
                policies: spec.policies.clone(),
                disabled: spec.disabled,
            },
            api_key,
            signing_key,
            spiffe_ids,
            fingerprints,
        })
    }
}

/// A registration left out of the index because an older one holds one of
/// its claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppConflict {
    /// (namespace, name) of the registration left out.
    pub refused: (String, String),
    /// (namespace, name) of the older registration that holds the claim.
    pub holder: (String, String),
    pub error: FieldError,
}

/// Registered apps, indexed for lookup by credential.
#[derive(Debug, Default)]
pub struct AppIndex {
    pub(super) apps: Vec<App>,
    pub(super) by_key: HashMap<KeyDigest, usize>,
    pub(super) by_id: HashMap<(String, String), usize>,
    by_spiffe: HashMap<String, usize>,
    by_fingerprint: HashMap<String, usize>,
    /// (namespace, appId) → the app's HMAC `signingKey` (RFC 9421 `keyid`).
    pub(super) signing_keys: HashMap<(String, String), (usize, SigningSecret)>,
}

impl AppIndex {
    /// Indexes `apps`, oldest first: a registration that claims what an
    /// earlier one holds is left out and reported.
    pub fn build<'a>(apps: impl IntoIterator<Item = &'a CompiledApp>) -> (Self, Vec<AppConflict>) {
        let mut index = AppIndex::default();
        let mut conflicts = Vec::new();
        for compiled in apps {
            match index.first_conflict(compiled) {
                Some((holder, error)) => conflicts.push(AppConflict {
                    refused: (compiled.app.namespace.clone(), compiled.app.name.clone()),
                    holder,
                    error,
                }),
                None => index.insert(compiled),
            }
        }
        (index, conflicts)
    }

    /// The first claim of `compiled` already held by an indexed app.
    fn first_conflict(&self, compiled: &CompiledApp) -> Option<((String, String), FieldError)> {
        let app = &compiled.app;
        let holder = |i: usize| {
            let other = &self.apps[i];
            (other.namespace.clone(), other.name.clone())
        };
        let held = |i: usize| {
            let (namespace, name) = holder(i);
            format!("AppRegistration {namespace}/{name}")
        };
        if let Some(&i) = self.by_id.get(&(app.namespace.clone(), app.app_id.clone())) {
            let message = format!("{} is already registered by {}", app.app_id, held(i));
            return Some((holder(i), FieldError::new("spec.appId", message)));
        }
        if let Some(i) = compiled.api_key.and_then(|k| self.by_key.get(&k).copied()) {
            let message = format!("the same API key is registered for {}", held(i));
            return Some((holder(i), FieldError::new("spec.apiKey", message)));
        }
        for (n, id) in compiled.spiffe_ids.iter().enumerate() {
            if let Some(&i) = self.by_spiffe.get(id) {
                return Some((
                    holder(i),
                    FieldError::new(
                        format!("spec.clientCertificate.spiffeIds[{n}]"),
                        format!("{id} is registered for {}", held(i)),
                    ),
                ));
            }
        }
        for (n, fp) in compiled.fingerprints.iter().enumerate() {
            if let Some(&i) = self.by_fingerprint.get(fp) {
                return Some((
                    holder(i),
                    FieldError::new(
                        format!("spec.clientCertificate.sha256Fingerprints[{n}]"),
                        format!("the fingerprint is registered for {}", held(i)),
                    ),
                ));
            }
        }
        None
    }

    fn insert(&mut self, compiled: &CompiledApp) {
        let position = self.apps.len();
        let app = &compiled.app;
        self.by_id
            .insert((app.namespace.clone(), app.app_id.clone()), position);
        if let Some(key) = compiled.api_key {
            self.by_key.insert(key, position);
        }
        if let Some(secret) = &compiled.signing_key {
            self.signing_keys.insert(
                (app.namespace.clone(), app.app_id.clone()),
                (position, secret.clone()),
            );
        }
        for id in &compiled.spiffe_ids {
            self.by_spiffe.insert(id.clone(), position);
        }
        for fp in &compiled.fingerprints {
            self.by_fingerprint.insert(fp.clone(), position);
        }
        self.apps.push(app.clone());
    }

    /// Number of registered apps.
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    /// True when no app is registered.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// Every indexed app, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &App> {
        self.apps.iter()
    }

    pub(super) fn by_certificate(&self, origin: &Origin) -> Option<usize> {
        if let Some(principal) = &origin.client_principal
            && let Some(i) = self.by_spiffe.get(principal)
        {
            return Some(*i);
        }
        let fp = certificate::fingerprint_hex(origin.client_certificate.as_deref()?)?;
        self.by_fingerprint.get(&fp).copied()
    }
}
