use std::path::Path;

use super::*;
use crate::policy::document::parse_documents;

fn policy(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: tollgate.dev/v1alpha1\nkind: ApiPolicy\nmetadata: {{ name: {name}, namespace: mobility }}\nspec:\n{spec}\n"
    )
}

fn docs(text: &str) -> Vec<LoadedDocument> {
    parse_documents(Path::new("p.yaml"), text).unwrap()
}

fn errors(text: &str) -> Vec<String> {
    compile(&docs(text), 1)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn assert_error(spec: &str, expected: &str) {
    let all = errors(&policy("bikes", spec));
    assert!(
        all.iter().any(|e| e.starts_with(&format!(
            "p.yaml: document 1 (ApiPolicy mobility/bikes): {expected}"
        ))),
        "expected {expected:?} in {all:#?}"
    );
}

#[test]
fn compiles_routes_transport_and_response() {
    let text = policy(
        "bikes",
        r#"  hosts: [api.bikes.example, "*.bikes.example"]
  transport: { requireHttps: false, allowCidrs: [10.1.2.3/8, 192.0.2.7], denyCidrs: ["2001:db8::/32", "::ffff:203.0.113.0/120", "::ffff:0:0/95"] }
  defaultPlan: free
  plans: [{ name: free }]
  routes:
    - { name: health, match: { path: /healthz }, public: true }
    - { name: search, match: { pathPrefix: /v1/search, methods: [get, GET, post] }, cost: 5 }
    - { name: rest }
  replay: { window: 2m }
  response: { upstreamHeaders: { x-policy: "{policy}" }, rateLimitHeaders: true }
"#,
    );
    let snapshot = compile(&docs(&text), 7).unwrap();
    assert_eq!(snapshot.version, 7);
    assert!(snapshot.warnings.is_empty());
    let p = snapshot.policy("mobility/bikes").unwrap();
    assert!(!p.transport.require_https);
    assert_eq!(p.transport.allow[0].to_string(), "10.0.0.0/8");
    assert_eq!(p.transport.allow[1].to_string(), "192.0.2.7/32");
    assert_eq!(p.transport.deny[0].to_string(), "2001:db8::/32");
    // An IPv4-mapped network is its IPv4 network; a wider one stays IPv6.
    assert_eq!(p.transport.deny[1].to_string(), "203.0.113.0/24");
    assert_eq!(p.transport.deny[2].to_string(), "::fffe:0:0/95");
    assert_eq!(p.routes.len(), 3);
    assert_eq!(p.routes[0].path, PathMatch::Exact("/healthz".into()));
    assert!(p.routes[0].public);
    assert_eq!(p.routes[0].cost, 1);
    assert_eq!(p.routes[1].methods, ["GET", "POST"]);
    assert_eq!(p.routes[1].cost, 5);
    assert_eq!(p.routes[2].path, PathMatch::Any);
    assert_eq!(p.replay.window, Duration::from_secs(120));
    assert_eq!(p.response.upstream_headers[0].0, "x-policy");
    assert!(p.response.remove_credentials);
    assert_eq!(
        snapshot.hosts.lookup("x.bikes.example"),
        Some(&PolicyId::new("mobility", "bikes"))
    );
}

#[test]
fn defaults() {
    let snapshot = compile(&docs(&policy("bikes", "  hosts: []")), 1).unwrap();
    let p = snapshot.policy("mobility/bikes").unwrap();
    assert!(p.transport.require_https);
    assert_eq!(p.replay.window, Duration::from_secs(300));
    assert!(p.routes.is_empty());
}

#[test]
fn route_errors() {
    assert_error(
        "  routes: [{ name: a, match: { path: /a, pathPrefix: /a } }]",
        "spec.routes[0].match: set path or pathPrefix, not both",
    );
    assert_error(
        "  routes: [{ name: a, cost: 0 }]",
        "spec.routes[0].cost: must be at least 1",
    );
    assert_error(
        "  routes: [{ name: a, public: true, cost: 2 }]",
        "spec.routes[0].cost: a public route consumes no quota",
    );
    assert_error(
        "  routes: [{ name: a, public: true, require: { scopes: [x] } }]",
        "spec.routes[0].require: a public route",
    );
    assert_error(
        "  routes: [{ name: a, require: { scopes: [x] } }]",
        "spec.routes[0].require: scopes and claims come from the user token",
    );
    assert_error(
        "  routes: [{ name: a }, { name: a }]",
        "spec.routes[1].name: route \"a\" is defined twice",
    );
    assert_error(
        "  routes: [{ name: a, match: { path: v1 } }]",
        "spec.routes[0].match.path: \"v1\": must start with '/'",
    );
    assert_error(
        "  routes: [{ name: a, match: { pathPrefix: /a/../b } }]",
        "spec.routes[0].match.pathPrefix: \"/a/../b\": must not contain '.' or '..' segments",
    );
    assert_error(
        "  routes: [{ name: a, match: { path: /a?b=1 } }]",
        "spec.routes[0].match.path: \"/a?b=1\": the query string",
    );
    assert_error(
        "  routes: [{ name: a, match: { path: /a%2Fb } }]",
        "spec.routes[0].match.path: \"/a%2Fb\": must not contain encoded slashes",
    );
    assert_error(
        "  routes: [{ name: a, match: { pathPrefix: \"/a;b\" } }]",
        "spec.routes[0].match.pathPrefix: \"/a;b\": must not contain ';' path parameters",
    );
    assert_error(
        "  routes: [{ name: a, match: { methods: [\"GE T\"] } }]",
        "spec.routes[0].match.methods[0]: \"GE T\" is not a valid method",
    );
}

#[test]
fn host_errors() {
    for (host, message) in [
        ("https://api.example", "without a scheme"),
        ("api.example:443", "without a port"),
        ("API.example", "must be lower-case"),
        ("a.*.example", "a wildcard is only allowed"),
        ("*", "a wildcard is only allowed"),
        ("*example", "a wildcard is only allowed"),
        ("api.example.", "remove the trailing dot"),
        ("api..example", "is not a valid host name"),
        ("-api.example", "is not a valid host name"),
        ("api_x.example", "is not a valid host name"),
    ] {
        assert_error(
            &format!("  hosts: [{host:?}]"),
            &format!("spec.hosts[0]: {host:?}"),
        );
        assert!(check_host(host).unwrap_err().contains(message), "{host}");
    }
    assert_error(
        "  hosts: [a.example, a.example]",
        "spec.hosts[1]: \"a.example\" is listed twice",
    );
    for ok in [
        "api.example",
        "*.bikes.example",
        "*.example",
        "localhost",
        "127.0.0.1",
    ] {
        assert_eq!(check_host(ok), Ok(()), "{ok}");
    }
}

#[test]
fn header_errors() {
    for (name, message) in [
        ("X-User", "must be lower-case"),
        ("x_user", "use '-' instead of '_'"),
        (":path", "pseudo-headers"),
        ("host", "cannot be set"),
        ("transfer-encoding", "cannot be set"),
        ("x-tollgate-user", "reserved"),
        ("x user", "not a valid header name"),
        ("", "not a valid header name"),
    ] {
        assert!(
            check_upstream_header(name).unwrap_err().contains(message),
            "{name}"
        );
    }
    assert_error(
        "  response: { upstreamHeaders: { x-tollgate-app: \"{app.id}\" } }",
        "spec.response.upstreamHeaders.x-tollgate-app: \"x-tollgate-app\": names starting with x-tollgate- are reserved",
    );
    assert_error(
        "  response: { upstreamHeaders: { x-who: \"{nobody}\" } }",
        "spec.response.upstreamHeaders.x-who: unknown placeholder {nobody}",
    );
}

#[test]
fn transport_plan_and_replay_errors() {
    assert_error(
        "  transport: { denyCidrs: [10.0.0.0/8, 10.0.0.0/33] }",
        "spec.transport.denyCidrs[1]: \"10.0.0.0/33\" is not a CIDR",
    );
    assert_error(
        "  plans: [{ name: free }]",
        "spec.defaultPlan: required when plans are defined",
    );
    assert_error(
        "  defaultPlan: gold\n  plans: [{ name: free }]",
        "spec.defaultPlan: \"gold\" is not one of the policy's plans",
    );
    assert_error(
        "  defaultPlan: gold",
        "spec.defaultPlan: \"gold\" is not one of the policy's plans",
    );
    assert_error(
        "  defaultPlan: free\n  plans: [{ name: free }, { name: free }]",
        "spec.plans[1].name: plan \"free\" is defined twice",
    );
    assert_error(
        "  replay: { window: 0s }",
        "spec.replay.window: must be between 1s and 1d",
    );
}

#[test]
fn section_compiler_errors_are_prefixed_with_the_field() {
    // Whatever the section compilers accept today, an unresolvable Secret
    // reference can never compile: the error must name spec.app.
    let all = errors(&policy(
        "bikes",
        "  app:\n    identify: { apiKey: { header: x-api-key } }\n    attestation:\n      keys: { secretRef: { name: missing, key: secret }, encoding: base64 }",
    ));
    assert!(
        all.iter()
            .any(|e| e.starts_with("p.yaml: document 1 (ApiPolicy mobility/bikes): spec.app")),
        "{all:#?}"
    );
    assert_eq!(
        split_field("spec", "plans[1].limits[0].rate.burst: too big"),
        FieldError::new("spec.plans[1].limits[0].rate.burst", "too big")
    );
    assert_eq!(
        split_field("spec.user", "HS256 needs a secret: use secretRef"),
        FieldError::new("spec.user", "HS256 needs a secret: use secretRef")
    );
}

#[test]
fn all_errors_of_all_documents_are_reported() {
    let text = format!(
        "{}{}",
        policy("a", "  hosts: [A.example]"),
        policy("b", "  routes: [{ name: x, cost: 0 }]")
    );
    let all = errors(&text);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all[0].contains("document 1 (ApiPolicy mobility/a)"));
    assert!(all[1].contains("document 2 (ApiPolicy mobility/b)"));
}

#[test]
fn older_policy_keeps_a_contested_host() {
    let text = format!(
        "{}{}",
        policy("first", "  hosts: [api.example, \"*.example\"]"),
        policy("second", "  hosts: [api.example, other.example]")
    );
    let snapshot = compile(&docs(&text), 1).unwrap();
    assert_eq!(
        snapshot.hosts.lookup("api.example"),
        Some(&PolicyId::new("mobility", "first"))
    );
    assert_eq!(
        snapshot.hosts.lookup("other.example"),
        Some(&PolicyId::new("mobility", "second"))
    );
    assert_eq!(snapshot.warnings.len(), 1, "{:?}", snapshot.warnings);
    assert!(snapshot.warnings[0].starts_with(
        "p.yaml: document 2 (ApiPolicy mobility/second): spec.hosts[0]: host \"api.example\" is already served by the older ApiPolicy mobility/first"
    ), "{}", snapshot.warnings[0]);
    // Both policies are still served (by context extension, and the newer
    // one for its uncontested hosts).
    assert_eq!(snapshot.policies.len(), 2);
}

#[test]
fn creation_timestamp_decides_age_before_position() {
    let text = format!(
        "{}{}",
        policy("young", "  hosts: [api.example]").replace(
            "namespace: mobility }",
            "namespace: mobility, creationTimestamp: '2025-01-02T00:00:00Z' }"
        ),
        policy("old", "  hosts: [api.example]").replace(
            "namespace: mobility }",
            "namespace: mobility, creationTimestamp: '2024-01-02T00:00:00Z' }"
        ),
    );
    let snapshot = compile(&docs(&text), 1).unwrap();
    assert_eq!(
        snapshot.hosts.lookup("api.example"),
        Some(&PolicyId::new("mobility", "old"))
    );
    assert!(snapshot.warnings[0].contains("(ApiPolicy mobility/young)"));
}

#[test]
fn secrets_are_collected_by_namespace_and_name() {
    let text =
        "apiVersion: v1\nkind: Secret\nmetadata: { name: s, namespace: n }\nstringData: { k: v }\n";
    let secrets = Secrets::from_documents(&docs(text));
    assert_eq!(secrets.get("n", "s", "k"), Ok(&b"v"[..]));
    assert!(secrets.get("n", "s", "x").unwrap_err().contains("no key"));
    assert!(
        secrets
            .get("default", "s", "k")
            .unwrap_err()
            .contains("not found")
    );
}

#[test]
fn app_registrations_pointing_nowhere_are_warnings() {
    let text = format!(
        "{}---\napiVersion: tollgate.dev/v1alpha1\nkind: AppRegistration\nmetadata: {{ name: ios, namespace: mobility }}\nspec: {{ appId: ios, plan: gold, policies: [bikes, trains] }}\n",
        policy("bikes", "  defaultPlan: free\n  plans: [{ name: free }]")
    );
    let snapshot = compile(&docs(&text), 1).unwrap();
    assert_eq!(snapshot.warnings.len(), 2, "{:?}", snapshot.warnings);
    assert!(snapshot.warnings.iter().any(|w| {
        w.contains("spec.plan: plan \"gold\" is not defined by ApiPolicy mobility/bikes")
    }));
    assert!(
        snapshot
            .warnings
            .iter()
            .any(|w| w.contains("spec.policies[1]: no ApiPolicy mobility/trains"))
    );
}

#[test]
fn app_index_errors_name_the_registration_document() {
    let text = "apiVersion: v1\nkind: Secret\nmetadata: { name: k, namespace: mobility }\nstringData: { apiKey: short }\n---\napiVersion: tollgate.dev/v1alpha1\nkind: AppRegistration\nmetadata: { name: ios, namespace: mobility }\nspec: { appId: ios, apiKey: { secretRef: { name: k, key: apiKey } } }\n";
    let all = errors(text);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0].starts_with("p.yaml: document 2 (AppRegistration mobility/ios): spec.apiKey: "),
        "{}",
        all[0]
    );
    assert!(
        !all[0].contains("short"),
        "the key must not be shown: {}",
        all[0]
    );
}

/// The shipped examples: bikes.yaml runs as is (no credentials, no
/// limits); bikes-full.yaml is the complete design.
#[test]
fn shipped_examples_compile() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let docs = crate::policy::document::load_files(&[dir.join("bikes.yaml")]).unwrap();
    let snapshot = compile(&docs, 1).unwrap();
    assert!(snapshot.warnings.is_empty(), "{:?}", snapshot.warnings);
    let p = snapshot.policy("mobility/bikes").unwrap();
    assert!(p.user.is_none() && p.app.is_none());
    assert!(p.routes.iter().any(|r| r.name == "health" && r.public));
    assert_eq!(
        snapshot.hosts.lookup("api.bikes.example"),
        Some(&PolicyId::new("mobility", "bikes"))
    );

    let docs = crate::policy::document::load_files(&[dir.join("bikes-full.yaml")])
        .unwrap_or_else(|e| panic!("{e}"));
    let snapshot = compile(&docs, 1).unwrap_or_else(|e| panic!("{e}"));
    assert!(snapshot.warnings.is_empty(), "{:?}", snapshot.warnings);
    let p = snapshot.policy("mobility/bikes").unwrap();
    assert!(p.user.is_some() && p.app.is_some());
    assert_eq!(snapshot.apps.len(), 1);
}

#[test]
fn debug_output_never_shows_secret_values() {
    let text = "apiVersion: v1\nkind: Secret\nmetadata: { name: s, namespace: n }\nstringData: { k: hunter2-very-secret }\n";
    let docs = docs(text);
    let secrets = Secrets::from_documents(&docs);
    for shown in [format!("{docs:?}"), format!("{secrets:?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("104, 117"), "bytes of the value: {shown}");
        assert!(shown.contains('k'), "{shown}");
    }
}

const FULL_EXAMPLE: &str = include_str!("../../../deploy/examples/bikes-full.yaml");

proptest::proptest! {
    /// Edits of the full example (a character inserted, a span deleted)
    /// never panic the reader or the compile step, whatever they break.
    #[test]
    fn edited_policies_never_panic(
        at in 0usize..FULL_EXAMPLE.len(),
        delete in 0usize..40,
        insert in "[ -~\n]{0,8}",
    ) {
        let mut text = FULL_EXAMPLE.to_owned();
        let end = (at + delete).min(text.len());
        if text.is_char_boundary(at) && text.is_char_boundary(end) {
            text.replace_range(at..end, &insert);
        }
        if let Ok(docs) = parse_documents(Path::new("p.yaml"), &text) {
            let _ = compile(&docs, 1);
        }
    }
}
