//! The one compile step: documents (+ Secrets) → the immutable
//! [`Snapshot`]. The server (file or Kubernetes source), the `check` CLI
//! and the operator's validation all call it, so a policy means the same
//! thing everywhere.
//!
//! [`compile_policy`] compiles one `ApiPolicy`; the [`super::catalog`]
//! compiles every object on its own with it (and registrations with
//! [`CompiledApp::compile`]) and keeps each at its last good version.
//! [`compile`] is the all-or-nothing form: any error rejects the whole
//! candidate. Each error names the document and the field. A host claimed
//! by two policies is *not* an error: the older policy keeps it, and the
//! conflict becomes a warning so one team's new policy cannot take
//! another's host, nor break everyone's reload.
//!
//! The section compilers live with their stages and are called through
//! fixed signatures: [`UserPolicy::compile`], [`AppPolicy::compile`],
//! [`Plans::compile`] and [`CompiledApp::compile`]; their messages are
//! prefixed here with the document and field.
//!
//! [`CompiledApp::compile`]: crate::authn::registry::CompiledApp::compile

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use ipnet::IpNet;

use super::catalog::{Age, Catalog, Kind, Report};
use super::document::{Document, LoadedDocument};
use super::snapshot::{
    CompiledPolicy, PathMatch, PolicyId, ReplayPolicy, ResponsePolicy, Route, Snapshot, Transport,
};
use super::template::Template;
use super::types::{ApiPolicy, ApiPolicySpec, RouteSpec};
use crate::authn::app::AppPolicy;
use crate::authn::user::UserPolicy;
use crate::limits::Plans;

pub use crate::compile_context::{CompileContext, FieldError, Secrets};

impl Secrets {
    /// Collects the Secret documents of `docs`.
    pub fn from_documents(docs: &[LoadedDocument]) -> Self {
        let mut map = BTreeMap::new();
        for doc in docs {
            if let Document::Secret(secret) = &doc.document {
                let values = secret
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect();
                map.insert(
                    (
                        doc.document.namespace().to_owned(),
                        doc.document.name().to_owned(),
                    ),
                    values,
                );
            }
        }
        Self {
            map,
            missing_hint: None,
        }
    }
}

/// One compile problem: which document, which field, what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    /// The document, as [`LoadedDocument::describe`] names it.
    pub document: String,
    /// The policy the error belongs to, when it is an `ApiPolicy` (the
    /// operator maps errors to status conditions with it).
    pub policy: Option<PolicyId>,
    pub error: FieldError,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.document, self.error)
    }
}

/// Every problem of a rejected compile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct CompileErrors(pub Vec<CompileError>);

impl fmt::Display for CompileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::document::write_lines(f, &self.0)
    }
}

/// Compiles every document into a snapshot numbered `version`, or returns
/// every error found (nothing is half-applied): the all-or-nothing form
/// of the [`Catalog`] for start-up, `tollgate check` and tests. Sources
/// that reload keep a catalog instead, so one object's error keeps only
/// that object at its last good version.
///
/// Contested claims go to the older object: by
/// `metadata.creationTimestamp` when present, else by position (file
/// order, then document order), so in a file the earlier policy keeps a
/// contested host (a warning) and the earlier registration its API key
/// (an error here: nothing has been served yet to keep).
pub fn compile(docs: &[LoadedDocument], version: u64) -> Result<Snapshot, CompileErrors> {
    let mut catalog = Catalog::new(None);
    for (position, doc) in docs.iter().enumerate() {
        catalog.upsert(doc.clone(), Age::of(&doc.document, position as u64));
    }
    let (snapshot, report) = catalog.assemble(version);
    let errors = report_errors(&report);
    if errors.is_empty() {
        for warning in &snapshot.warnings {
            tracing::warn!(%warning, "policy warning");
        }
        Ok(snapshot)
    } else {
        Err(CompileErrors(errors))
    }
}

/// The errors of a report: every object's compile errors, and the
/// registrations refused for claiming what an older one holds. Host
/// conflicts and warnings are not errors.
pub fn report_errors(report: &Report) -> Vec<CompileError> {
    let mut errors = Vec::new();
    for object in &report.objects {
        let policy = (object.object.kind == Kind::ApiPolicy)
            .then(|| PolicyId::new(&object.object.namespace, &object.object.name));
        let refused = object
            .conflicts
            .iter()
            .filter(|_| object.object.kind == Kind::AppRegistration)
            .map(|c| &c.error);
        for error in object.errors.iter().chain(refused) {
            errors.push(CompileError {
                document: object.describe.clone(),
                policy: policy.clone(),
                error: error.clone(),
            });
        }
    }
    errors
}

/// Compiles one `ApiPolicy`, collecting every field error. Public so the
/// operator can validate a single resource and report on it.
pub fn compile_policy(
    policy: &ApiPolicy,
    ctx: &CompileContext<'_>,
) -> Result<CompiledPolicy, Vec<FieldError>> {
    let spec = &policy.spec;
    let id = PolicyId::new(
        ctx.namespace,
        policy.metadata.name.as_deref().unwrap_or_default(),
    );
    let mut errors = Vec::new();

    for (i, host) in spec.hosts.iter().enumerate() {
        if let Err(message) = check_host(host) {
            errors.push(FieldError::new(format!("spec.hosts[{i}]"), message));
        } else if spec.hosts[..i].contains(host) {
            errors.push(FieldError::new(
                format!("spec.hosts[{i}]"),
                format!("{host:?} is listed twice"),
            ));
        }
    }

    let transport = Transport {
        require_https: spec.transport.require_https,
        allow: cidrs(
            &spec.transport.allow_cidrs,
            "spec.transport.allowCidrs",
            &mut errors,
        ),
        deny: cidrs(
            &spec.transport.deny_cidrs,
            "spec.transport.denyCidrs",
            &mut errors,
        ),
    };

    let user = match &spec.user {
        None => None,
        Some(user) => match UserPolicy::compile(user, ctx) {
            Ok(u) => Some(u),
            Err(message) => {
                errors.push(split_field("spec.user", &message));
                None
            }
        },
    };
    let app = match &spec.app {
        None => None,
        Some(app) => match AppPolicy::compile(app, ctx) {
            Ok(a) => Some(a),
            Err(message) => {
                errors.push(split_field("spec.app", &message));
                None
            }
        },
    };

    let plan_errors = errors.len();
    let mut plan_names = HashSet::new();
    for (i, plan) in spec.plans.iter().enumerate() {
        if !plan_names.insert(plan.name.as_str()) {
            errors.push(FieldError::new(
                format!("spec.plans[{i}].name"),
                format!("plan {:?} is defined twice", plan.name),
            ));
        }
    }
    match &spec.default_plan {
        Some(name) if !plan_names.contains(name.as_str()) => errors.push(FieldError::new(
            "spec.defaultPlan",
            format!("{name:?} is not one of the policy's plans"),
        )),
        None if !spec.plans.is_empty() => errors.push(FieldError::new(
            "spec.defaultPlan",
            "required when plans are defined (the plan of apps that have none)",
        )),
        _ => {}
    }
    let plans = match Plans::compile(spec) {
        // The plan checks above already explain a bad name or defaultPlan;
        // the section compiler would repeat them.
        Err(_) if errors.len() > plan_errors => None,
        Ok(p) => Some(p),
        Err(message) => {
            // Plans' messages start with their path below spec.
            errors.push(split_field("spec", &message));
            None
        }
    };

    let routes = routes(spec, &mut errors);

    let window = replay_window(spec, user.as_ref(), app.as_ref(), &mut errors);
    let upstream_headers = upstream_headers(spec, &mut errors);

    let (Some(plans), true) = (plans, errors.is_empty()) else {
        return Err(errors);
    };
    Ok(CompiledPolicy {
        id,
        mode: spec.mode,
        transport,
        user,
        app,
        replay: ReplayPolicy {
            window,
            on_store_error: spec.replay.on_store_error,
        },
        plans,
        routes,
        response: ResponsePolicy {
            upstream_headers,
            remove_credentials: spec.response.remove_credentials,
            rate_limit_headers: spec.response.rate_limit_headers,
            disclose_reasons: spec.response.disclose_reasons,
            dynamic_metadata: spec.response.dynamic_metadata,
        },
        on_store_error: spec.on_store_error,
        leases: spec.leases,
    })
}

/// `spec.replay.window` (default 5m, 1s to 1d), checked to cover every
/// acceptance window of the policy's credentials: a remembered nonce is
/// only useful while its credential could still be accepted, and a
/// credential accepted for longer than the window promises would outlive
/// the promise (DESIGN: compile error).
fn replay_window(
    spec: &ApiPolicySpec,
    user: Option<&UserPolicy>,
    app: Option<&AppPolicy>,
    errors: &mut Vec<FieldError>,
) -> Duration {
    let window = match &spec.replay.window {
        None => Duration::from_secs(300),
        Some(w) => match super::bounds::duration(
            "window",
            w.get(),
            Duration::from_secs(1),
            super::bounds::MAX_REPLAY_WINDOW,
        ) {
            Ok(()) => w.get(),
            Err(message) => {
                errors.push(split_field("spec.replay", &message));
                return Duration::ZERO;
            }
        },
    };
    let mut windows = Vec::new();
    if let Some(user) = user
        && user.dpop().mode != super::types::Requirement::Disabled
    {
        windows.push(("spec.user.dpop.maxAge", user.dpop().acceptance_window()));
    }
    if let Some(app) = app {
        windows.extend(app.acceptance_windows());
    }
    for (field, accepted) in windows {
        if accepted > window {
            errors.push(FieldError::new(
                field,
                format!(
                    "{}s exceeds spec.replay.window ({}s): a credential must not stay acceptable longer than its nonce is remembered",
                    accepted.as_secs(),
                    window.as_secs()
                ),
            ));
        }
    }
    window
}

/// `spec.response.upstreamHeaders`: valid names (`check_upstream_header`)
/// and templates.
fn upstream_headers(spec: &ApiPolicySpec, errors: &mut Vec<FieldError>) -> Vec<(String, Template)> {
    let mut out = Vec::new();
    for (name, value) in &spec.response.upstream_headers {
        let field = format!("spec.response.upstreamHeaders.{name}");
        if let Err(message) = check_upstream_header(name) {
            errors.push(FieldError::new(field, message));
            continue;
        }
        match Template::parse(value) {
            Ok(template) => out.push((name.clone(), template)),
            Err(message) => errors.push(FieldError::new(field, message)),
        }
    }
    out
}

/// Turns `plans[0].limits[1].rate: …` into a field error under `prefix`
/// (no prefix: the path as is); a message without a leading path is
/// attached to `prefix` itself (or to `spec`).
fn split_field(prefix: &str, message: &str) -> FieldError {
    match message.split_once(": ") {
        Some((path, rest))
            if !path.is_empty()
                && path.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'[' | b']' | b'_' | b'-')
                }) =>
        {
            let field = if prefix.is_empty() {
                path.to_owned()
            } else {
                format!("{prefix}.{path}")
            };
            FieldError::new(field, rest)
        }
        _ if prefix.is_empty() => FieldError::new("spec", message),
        _ => FieldError::new(prefix, message),
    }
}

/// Parses CIDRs; a bare address means that one address.
fn cidrs(list: &[String], field: &str, errors: &mut Vec<FieldError>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, text) in list.iter().enumerate() {
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            // trunc(): `10.1.2.3/8` means `10.0.0.0/8`.
            Ok(net) => out.push(canonical_net(net.trunc())),
            Err(_) => errors.push(FieldError::new(
                format!("{field}[{i}]"),
                format!("{text:?} is not a CIDR (e.g. 10.0.0.0/8, 2001:db8::/32) or an address"),
            )),
        }
    }
    out
}

/// An IPv4-mapped IPv6 network (`::ffff:203.0.113.0/120`, within
/// `::ffff:0:0/96`) as the IPv4 network it maps (`203.0.113.0/24`): client
/// addresses are compared in canonical form (`origin::Origin::client_ip`),
/// so the rule means what its author wrote.
fn canonical_net(net: IpNet) -> IpNet {
    let IpNet::V6(v6) = net else {
        return net;
    };
    match (v6.addr().to_ipv4_mapped(), v6.prefix_len().checked_sub(96)) {
        (Some(v4), Some(len)) => ipnet::Ipv4Net::new(v4, len).map_or(net, IpNet::V4),
        _ => net,
    }
}

/// A host as the host index stores it: lower-case DNS name (or dotted IPv4
/// address), no scheme, no port, no trailing dot; a wildcard only as a
/// leading `*.` label. Requests are matched case-insensitively, so upper
/// case here would only hide a typo.
pub fn check_host(host: &str) -> Result<(), String> {
    if host.contains("://") {
        return Err(format!(
            "{host:?}: write the host name only, without a scheme"
        ));
    }
    if host.contains(':') {
        return Err(format!(
            "{host:?}: write the host name without a port (ports are stripped before matching)"
        ));
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{host:?} must be lower-case"));
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        return Err(format!(
            "{host:?}: a wildcard is only allowed as the whole first label (`*.example.com`)"
        ));
    }
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{host:?} must be 1 to 253 characters"));
    }
    if name.ends_with('.') {
        return Err(format!("{host:?}: remove the trailing dot"));
    }
    for label in name.split('.') {
        let bytes = label.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-');
        if !ok {
            return Err(format!(
                "{host:?} is not a valid host name (labels of a-z, 0-9 and '-', 1 to 63 \
                 characters, not starting or ending with '-')"
            ));
        }
    }
    Ok(())
}

/// HTTP token characters (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Headers tollgate must not set upstream: hop-by-hop and framing headers
/// (RFC 9110 §7.6.1) that Envoy owns or refuses to change.
const FORBIDDEN_UPSTREAM: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// An upstream header name: a lower-case token without underscores (the
/// Envoy examples reject underscores), not a pseudo-header, not a
/// hop-by-hop header, and outside tollgate's own `x-tollgate-` names,
/// which only tollgate sets so clients can never forge them.
pub fn check_upstream_header(name: &str) -> Result<(), String> {
    if name.starts_with(':') {
        return Err(format!("{name:?}: pseudo-headers cannot be set"));
    }
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{name:?} must be lower-case"));
    }
    if name.contains('_') {
        return Err(format!(
            "{name:?}: use '-' instead of '_' (proxies drop or reject underscores)"
        ));
    }
    if FORBIDDEN_UPSTREAM.contains(&name) {
        return Err(format!("{name:?} cannot be set by tollgate"));
    }
    if name.starts_with("x-tollgate-") {
        return Err(format!(
            "{name:?}: names starting with x-tollgate- are reserved for tollgate's own headers"
        ));
    }
    Ok(())
}

/// Compiles `spec.routes`.
fn routes(spec: &ApiPolicySpec, errors: &mut Vec<FieldError>) -> Vec<Route> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (i, route) in spec.routes.iter().enumerate() {
        let field = format!("spec.routes[{i}]");
        let before = errors.len();
        if route.name.is_empty() {
            errors.push(FieldError::new(
                format!("{field}.name"),
                "must not be empty",
            ));
        } else if !crate::field_value::is_header_safe(&route.name) {
            // `{route}` may be sent upstream.
            errors.push(FieldError::new(
                format!("{field}.name"),
                "must not contain control characters or leading or trailing whitespace",
            ));
        } else if !names.insert(route.name.as_str()) {
            errors.push(FieldError::new(
                format!("{field}.name"),
                format!("route {:?} is defined twice", route.name),
            ));
        }
        let path = route_path(route, &field, errors);
        let mut methods: Vec<String> = Vec::new();
        for (j, method) in route.matches.methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(is_tchar) {
                errors.push(FieldError::new(
                    format!("{field}.match.methods[{j}]"),
                    format!("{method:?} is not a valid method"),
                ));
                continue;
            }
            let upper = method.to_ascii_uppercase();
            if !methods.contains(&upper) {
                methods.push(upper);
            }
        }
        if route.cost == Some(0) {
            errors.push(FieldError::new(
                format!("{field}.cost"),
                "must be at least 1",
            ));
        }
        if route.public {
            if route.cost.is_some() {
                errors.push(FieldError::new(
                    format!("{field}.cost"),
                    "a public route consumes no quota; remove cost or public",
                ));
            }
            if route.require.is_some() {
                errors.push(FieldError::new(
                    format!("{field}.require"),
                    "a public route checks no credentials; remove require or public",
                ));
            }
            if route.deny {
                errors.push(FieldError::new(
                    format!("{field}.deny"),
                    "a route cannot be both public and deny",
                ));
            }
        }
        if let Some(require) = &route.require
            && (!require.scopes.is_empty() || !require.claims.is_empty())
            && spec.user.is_none()
        {
            errors.push(FieldError::new(
                format!("{field}.require"),
                "scopes and claims come from the user token: set spec.user",
            ));
        }
        if errors.len() == before {
            out.push(Route {
                name: route.name.clone(),
                path,
                methods,
                cost: route.cost.unwrap_or(1),
                public: route.public,
                deny: route.deny,
                require: route.require.clone(),
            });
        }
    }
    out
}

/// `match.path` / `match.pathPrefix`: at most one; an absolute path with no
/// query, fragment, dot-segment, encoded slash or `;` — requests carrying those
/// are refused (`request_malformed`), so such a route could never match.
fn route_path(route: &RouteSpec, field: &str, errors: &mut Vec<FieldError>) -> PathMatch {
    let (text, exact, which) = match (&route.matches.path, &route.matches.path_prefix) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                format!("{field}.match"),
                "set path or pathPrefix, not both",
            ));
            return PathMatch::Any;
        }
        (None, None) => return PathMatch::Any,
        (Some(p), None) => (p, true, "path"),
        (None, Some(p)) => (p, false, "pathPrefix"),
    };
    let field = format!("{field}.match.{which}");
    let lower = text.to_ascii_lowercase();
    let problem = if !text.starts_with('/') {
        Some("must start with '/'")
    } else if text.contains(['?', '#']) {
        Some("the query string and fragment are not part of the path")
    } else if text.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        Some("must not contain spaces or control characters")
    } else if text.split('/').any(|s| s == "." || s == "..") {
        Some("must not contain '.' or '..' segments")
    } else if lower.contains("%2f") || lower.contains("%5c") {
        Some("must not contain encoded slashes")
    } else if lower.contains(';') || lower.contains("%3b") {
        Some("must not contain ';' path parameters")
    } else {
        None
    };
    if let Some(problem) = problem {
        errors.push(FieldError::new(field, format!("{text:?}: {problem}")));
        return PathMatch::Any;
    }
    if exact {
        PathMatch::Exact(text.clone())
    } else {
        PathMatch::Prefix(text.clone())
    }
}

#[cfg(test)]
mod tests;
