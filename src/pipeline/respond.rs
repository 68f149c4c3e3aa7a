//! Stage 8: shape an allowed request for the upstream.
//!
//! tollgate's identity headers are set with overwrite semantics, and every
//! other `x-tollgate-*` header the client sent is removed, so a client can
//! never forge an identity header. Envoy applies removals after additions,
//! so a name tollgate sets is never also listed for removal. A configured
//! upstream header whose template has no value for this request is removed,
//! so a client-sent copy cannot pass through either. Only names the request
//! carries are listed for removal: removing an absent header is a no-op for
//! Envoy, and listing it would cost both sides work on every request.

use crate::authn::user::UserIdentity;
use crate::decision::{Allow, Identity};
use crate::policy::snapshot::{CompiledPolicy, Snapshot};
use crate::policy::template::{Var, Vars};
use crate::request::RequestContext;

/// The prefix of tollgate's own headers.
pub const IDENTITY_PREFIX: &str = "x-tollgate-";

/// The allow for a request under `policy`.
pub(super) fn allow(
    policy: &CompiledPolicy,
    request: &RequestContext,
    identity: &Identity,
    user: Option<&UserIdentity>,
) -> Allow {
    let upstream = &policy.response.upstream_headers;
    let mut set: Vec<(String, String)> = Vec::with_capacity(4 + upstream.len());
    let mut unset: Vec<&str> = Vec::new();
    let own = [
        ("x-tollgate-user", identity.user.as_ref()),
        ("x-tollgate-app", identity.app.as_ref()),
        ("x-tollgate-plan", identity.plan.as_ref()),
        ("x-tollgate-device", identity.device.as_ref()),
    ];
    for (name, value) in own {
        match value {
            Some(value) => set.push((name.to_owned(), value.clone())),
            None => unset.push(name),
        }
    }
    let vars = TemplateVars { identity, user };
    for (name, template) in upstream {
        match template.render(&vars) {
            Some(value) => {
                set.retain(|(n, _)| n != name);
                unset.retain(|n| n != name);
                set.push((name.clone(), value));
            }
            None => unset.push(name),
        }
    }
    let credentials = if policy.response.remove_credentials {
        credential_headers(policy)
    } else {
        Vec::new()
    };
    let candidates = client_identity_headers(request)
        .chain(unset)
        .chain(credentials);
    finish(request, set, candidates)
}

/// The allow of a request that a `dryRun` policy would have denied: no
/// identity is vouched for, so nothing is set, and everything an enforced
/// allow would strip is stripped — every configured upstream header name
/// (a template left without a value is removed under enforcement too),
/// every client-sent `x-tollgate-*` header and, with `removeCredentials`,
/// the credentials. Otherwise a client's own `x-user-sub: admin` would
/// reach an upstream that trusts the header, exactly while a policy is
/// being rolled out.
pub(super) fn dry_run_allow(policy: &CompiledPolicy, request: &RequestContext) -> Allow {
    let configured = policy
        .response
        .upstream_headers
        .iter()
        .map(|(name, _)| name.as_str());
    let credentials = if policy.response.remove_credentials {
        credential_headers(policy)
    } else {
        Vec::new()
    };
    let candidates = client_identity_headers(request)
        .chain(configured)
        .chain(credentials);
    finish(request, Vec::new(), candidates)
}

/// The allow of a request no policy serves, under `--default-decision
/// allow`: nothing is set, and no client-sent `x-tollgate-*` header nor any
/// header name some policy configures passes (the upstream behind a
/// catch-all may be one that trusts them). No policy says
/// `removeCredentials`, so credentials stay.
pub(super) fn default_allow(snapshot: &Snapshot, request: &RequestContext) -> Allow {
    let configured = snapshot.upstream_header_names.iter().map(String::as_str);
    finish(
        request,
        Vec::new(),
        client_identity_headers(request).chain(configured),
    )
}

/// The allow with `set`, removing those of the `candidates` the request
/// carries and tollgate does not set. Only the names that end up removed
/// are allocated.
fn finish<'a>(
    request: &RequestContext,
    set: Vec<(String, String)>,
    candidates: impl Iterator<Item = &'a str>,
) -> Allow {
    let mut remove: Vec<String> = candidates
        .filter(|name| request.headers.get(name).is_some() && !set.iter().any(|(n, _)| n == name))
        .map(str::to_owned)
        .collect();
    remove.sort();
    remove.dedup();
    Allow {
        set_upstream: set,
        remove_upstream: remove,
        response_headers: Vec::new(),
    }
}

/// Every `x-tollgate-*` header name the client sent.
fn client_identity_headers(request: &RequestContext) -> impl Iterator<Item = &str> {
    request
        .headers
        .iter()
        .filter(|(name, _)| name.starts_with(IDENTITY_PREFIX))
        .map(|(name, _)| name)
}

/// Headers carrying credentials the upstream does not need (app token, API
/// key, DPoP proof, signatures). The user's `Authorization` stays: the
/// upstream may need the token.
fn credential_headers(policy: &CompiledPolicy) -> Vec<&str> {
    let mut names = Vec::with_capacity(5);
    if policy.user.is_some() {
        names.push("dpop");
    }
    if let Some(app) = &policy.app {
        names.extend(["signature", "signature-input"]);
        names.extend(app.api_key_header());
        names.extend(app.attestation_header());
    }
    names
}

struct TemplateVars<'a> {
    identity: &'a Identity,
    user: Option<&'a UserIdentity>,
}

impl Vars for TemplateVars<'_> {
    fn value(&self, var: &Var) -> Option<String> {
        match var {
            Var::UserSub => self.identity.user.clone(),
            Var::UserIssuer => self.identity.issuer.clone(),
            Var::UserClaim(name) => self.user?.claims.get(name).and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }),
            Var::AppId => self.identity.app.clone(),
            Var::Plan => self.identity.plan.clone(),
            Var::Policy => self.identity.policy.clone(),
            Var::Route => self.identity.route.clone(),
            Var::DeviceId => self.identity.device.clone(),
        }
    }
}
