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
use crate::decision::{Allow, Deny, Identity};
use crate::field_value::is_header_safe;
use crate::policy::snapshot::{CompiledPolicy, Snapshot};
use crate::policy::template::{Var, Vars};
use crate::policy::types::DynamicMetadata;
use crate::reason::Reason;
use crate::request::RequestContext;

/// The prefix of tollgate's own headers.
pub const IDENTITY_PREFIX: &str = "x-tollgate-";

/// The allow for a request under `policy`, or the denial of a request
/// whose identity cannot be sent upstream: every value tollgate sets must
/// pass [`is_header_safe`], and one that does not is blamed on the
/// credential it came from ([`Source`]). Called before the admission
/// stage, so such a request consumes no quota and no nonce.
pub(super) fn allow(
    policy: &CompiledPolicy,
    request: &RequestContext,
    identity: &Identity,
    user: Option<&UserIdentity>,
) -> Result<Allow, Deny> {
    let upstream = &policy.response.upstream_headers;
    let mut set: Vec<(String, String)> = Vec::with_capacity(4 + upstream.len());
    let mut unset: Vec<&str> = Vec::new();
    let own = [
        ("x-tollgate-user", &identity.user, Source::UserToken("sub")),
        ("x-tollgate-app", &identity.app, Source::Policy),
        ("x-tollgate-plan", &identity.plan, Source::Policy),
        (
            "x-tollgate-device",
            &identity.device,
            Source::AppToken("did"),
        ),
    ];
    for (name, value, source) in own {
        match value {
            Some(value) => set.push((name.to_owned(), source.check(name, value)?.to_owned())),
            None => unset.push(name),
        }
    }
    let vars = TemplateVars { identity, user };
    for (name, template) in upstream {
        match template.render(&HeaderVars { vars: &vars, name })? {
            // An empty value counts as none: Envoy drops an empty header
            // it is asked to set (`keep_empty_value: false`), which would
            // leave a client-sent copy in place.
            Some(value) if !value.is_empty() => set.push((name.clone(), value)),
            _ => unset.push(name),
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
    Ok(Allow {
        metadata: policy.response.dynamic_metadata == DynamicMetadata::Always,
        ..finish(request, set, candidates)
    })
}

/// Where a value sent upstream comes from: the credential a value that is
/// not header-safe is blamed on.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// A claim of the user's access token → `user_token_invalid`.
    UserToken(&'static str),
    /// A claim of the user's access token named by a template.
    UserClaim,
    /// A claim of the app attestation token → `attestation_invalid`.
    AppToken(&'static str),
    /// The policy or an `AppRegistration` (ids, plan and route names are
    /// checked at compile time, so this is a defect, denied
    /// `rule_denied`).
    Policy,
}

impl Source {
    /// `value` when it is header-safe, else the denial for header `name`.
    fn check<'v>(self, name: &str, value: &'v str) -> Result<&'v str, Deny> {
        if is_header_safe(value) {
            return Ok(value);
        }
        const WHY: &str = "holds a control character or leading or trailing whitespace, \
                           so it cannot be sent upstream";
        Err(match self {
            Source::UserToken(claim) => Deny::new(
                Reason::UserTokenInvalid,
                format!("the user token's {claim} claim {WHY} ({name})"),
            ),
            Source::UserClaim => Deny::new(
                Reason::UserTokenInvalid,
                format!("a user token claim named by the policy {WHY} ({name})"),
            ),
            Source::AppToken(claim) => Deny::new(
                Reason::AttestationInvalid,
                format!("the app token's {claim} claim {WHY} ({name})"),
            ),
            Source::Policy => Deny::new(
                Reason::RuleDenied,
                format!("the policy's value for {name} {WHY}"),
            ),
        })
    }
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
        metadata: false,
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

impl TemplateVars<'_> {
    /// The value of `var` and where it comes from.
    fn value(&self, var: &Var) -> (Option<String>, Source) {
        match var {
            Var::UserSub => (self.identity.user.clone(), Source::UserToken("sub")),
            Var::UserIssuer => (self.identity.issuer.clone(), Source::UserToken("iss")),
            Var::UserClaim(name) => {
                let value = self
                    .user
                    .and_then(|u| u.claims.get(name))
                    .and_then(|v| match v {
                        serde_json::Value::String(s) => Some(s.clone()),
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        serde_json::Value::Bool(b) => Some(b.to_string()),
                        _ => None,
                    });
                (value, Source::UserClaim)
            }
            Var::AppId => (self.identity.app.clone(), Source::Policy),
            Var::Plan => (self.identity.plan.clone(), Source::Policy),
            Var::Policy => (self.identity.policy.clone(), Source::Policy),
            Var::Route => (self.identity.route.clone(), Source::Policy),
            Var::DeviceId => (self.identity.device.clone(), Source::AppToken("did")),
        }
    }
}

/// The template values of one upstream header, each checked with
/// [`is_header_safe`] (template text is checked at compile time).
struct HeaderVars<'a> {
    vars: &'a TemplateVars<'a>,
    name: &'a str,
}

impl Vars for HeaderVars<'_> {
    type Error = Deny;

    fn value(&self, var: &Var) -> Result<Option<String>, Deny> {
        let (value, source) = self.vars.value(var);
        match value {
            Some(value) => {
                source.check(self.name, &value)?;
                Ok(Some(value))
            }
            None => Ok(None),
        }
    }
}
