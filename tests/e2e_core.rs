//! End to end through the real Envoy: host, route, scheme and source
//! address decisions, the deny contract (status, `x-tollgate-reason`,
//! problem+json), the upstream header contract (no forged identity header
//! survives), dry runs, fail-closed behaviour and dynamic metadata in
//! Envoy's access log. Each test starts its own upstream, tollgate and
//! Envoy on ephemeral loopback ports (see `docs/testing.md`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::envoy::{self, EscapedSlashes, Route};
use support::{Stack, tls::TestPki};

/// Policies keyed by host, all plain-HTTP friendly except `secure`.
const POLICIES: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: open, namespace: e2e }
spec:
  hosts: [open.example]
  transport: { requireHttps: false }
  routes:
    - { name: health, match: { path: /healthz }, public: true }
    - { name: admin, match: { pathPrefix: /admin }, deny: true }
    - { name: bikes, match: { pathPrefix: /v1/bikes, methods: [GET] } }
  response:
    upstreamHeaders:
      x-policy: "{policy}"
      x-route: "{route}"
      x-user: "{user.sub}"
    dynamicMetadata: always
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: bound, namespace: e2e }
spec:
  hosts: [bound.example]
  transport: { requireHttps: false }
  response:
    upstreamHeaders:
      x-policy: "{policy}"
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: secure, namespace: e2e }
spec:
  hosts: [secure.example]
  response:
    upstreamHeaders:
      x-policy: "{policy}"
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: no-loopback, namespace: e2e }
spec:
  hosts: [no-loopback.example]
  transport: { requireHttps: false, denyCidrs: [127.0.0.0/8] }
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: office-only, namespace: e2e }
spec:
  hosts: [office-only.example]
  transport: { requireHttps: false, allowCidrs: [10.0.0.0/8] }
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: loopback-only, namespace: e2e }
spec:
  hosts: [loopback-only.example]
  transport: { requireHttps: false, allowCidrs: [127.0.0.1/32] }
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: trial, namespace: e2e }
spec:
  hosts: [trial.example]
  mode: dryRun
  transport: { requireHttps: false }
  routes:
    - { name: admin, match: { pathPrefix: /admin }, deny: true }
"#;

/// Asserts `response` is tollgate's deny with `status` and `reason`.
fn assert_denied(response: &support::Response, status: u16, reason: &str) {
    assert_eq!(
        (response.status, response.reason()),
        (status, Some(reason)),
        "expected a {status} {reason} deny, got {:?} {}",
        response.headers,
        response.text()
    );
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json"),
        "RFC 9457 body"
    );
    let problem = response.json();
    assert_eq!(problem["reason"], reason);
    assert_eq!(problem["status"], status);
    assert!(problem["title"].is_string() && problem["type"].is_string());
}

#[test]
fn allowed_by_host_on_plain_http_when_https_is_not_required() {
    let stack = Stack::start(POLICIES);
    let response = stack
        .get("/v1/bikes?near=52.5,13.4")
        .host("open.example")
        .send();
    let upstream = response.upstream();
    assert_eq!(upstream.method, "GET");
    assert_eq!(upstream.path, "/v1/bikes?near=52.5,13.4");
    assert_eq!(upstream.header_once("x-policy"), "e2e/open");
    assert_eq!(upstream.header_once("x-route"), "bikes");
    // The host is matched case-insensitively and without the port.
    let response = stack.get("/v1/bikes").host("OPEN.Example:8080").send();
    assert_eq!(response.upstream().header_once("x-policy"), "e2e/open");
}

#[test]
fn unknown_host_is_denied_no_policy_and_never_reaches_upstream() {
    let stack = Stack::start(POLICIES);
    let response = stack.get("/v1/bikes").host("nobody.example").send();
    assert_denied(&response, 403, "no_policy");
    assert_eq!(stack.upstream.count(), 0);
}

#[test]
fn https_is_required_by_default_and_plain_http_cannot_claim_it() {
    let stack = Stack::builder(POLICIES).tls().start();
    let plain = stack.get("/v1/bikes").host("secure.example").send();
    assert_denied(&plain, 403, "https_required");
    // A client's own X-Forwarded-Proto is not evidence of TLS.
    let claimed = stack
        .get("/v1/bikes")
        .host("secure.example")
        .header("x-forwarded-proto", "https")
        .send();
    assert_denied(&claimed, 403, "https_required");
    assert_eq!(stack.upstream.count(), 0);

    let tls = stack.get("/v1/bikes").host("secure.example").https().send();
    assert_eq!(tls.upstream().header_once("x-policy"), "e2e/secure");
}

#[test]
fn client_certificates_are_accepted_on_the_tls_listener() {
    let stack = Stack::builder(POLICIES).tls().start();
    let pki: &TestPki = stack.envoy.pki().unwrap();
    let client = pki.client(
        "commuter-ios",
        Some("spiffe://bikes.example/app/commuter-ios"),
    );
    let response = stack
        .get("/v1/bikes")
        .host("secure.example")
        .tls_config(pki.client_config(Some(&client)))
        .send();
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn source_address_is_checked_against_deny_and_allow_lists() {
    let stack = Stack::start(POLICIES);
    // Tests connect from 127.0.0.1.
    let denied = stack.get("/").host("no-loopback.example").send();
    assert_denied(&denied, 403, "ip_denied");
    let outside = stack.get("/").host("office-only.example").send();
    assert_denied(&outside, 403, "ip_denied");
    let inside = stack.get("/").host("loopback-only.example").send();
    assert_eq!(inside.status, 200, "{}", inside.text());
    assert_eq!(stack.upstream.count(), 1);
}

#[test]
fn x_forwarded_for_cannot_spoof_the_source_address() {
    let stack = Stack::start(POLICIES);
    // ext_authz reports the connection's peer as the source; a client's
    // X-Forwarded-For is never taken for it (tollgate's default origin).
    let spoofed_in = stack
        .get("/")
        .host("office-only.example")
        .header("x-forwarded-for", "10.1.2.3")
        .send();
    assert_denied(&spoofed_in, 403, "ip_denied");
    let spoofed_out = stack
        .get("/")
        .host("no-loopback.example")
        .header("x-forwarded-for", "198.51.100.7")
        .send();
    assert_denied(&spoofed_out, 403, "ip_denied");
    assert_eq!(stack.upstream.count(), 0);
}

#[test]
fn public_route_passes_and_denied_route_is_rule_denied() {
    let stack = Stack::start(POLICIES);
    let health = stack.get("/healthz").host("open.example").send();
    assert_eq!(health.upstream().header_once("x-route"), "health");
    let admin = stack.get("/admin/users").host("open.example").send();
    assert_denied(&admin, 403, "rule_denied");
    assert!(!stack.upstream.saw_path_prefix("/admin"));
}

#[test]
fn context_extension_binding_beats_the_host() {
    let stack = Stack::builder(POLICIES)
        .route(Route::prefix("/bound").policy("e2e/bound"))
        .route(Route::prefix("/missing").policy("e2e/missing"))
        .start();
    // The route names e2e/bound; the client's Host names e2e/open.
    let response = stack.get("/bound/x").host("open.example").send();
    assert_eq!(response.upstream().header_once("x-policy"), "e2e/bound");
    // Even an unknown host is served by the bound policy.
    let response = stack.get("/bound/x").host("nobody.example").send();
    assert_eq!(response.status, 200, "{}", response.text());
    // A route bound to a policy that is not loaded is denied, whatever
    // the host says.
    let response = stack.get("/missing/x").host("open.example").send();
    assert_denied(&response, 403, "no_policy");
}

#[test]
fn escaped_slash_cannot_reach_a_private_route_through_a_public_one() {
    // Envoy as shipped rejects the path before tollgate sees it.
    let stack = Stack::start(POLICIES);
    for path in [
        "/healthz/..%2Fadmin/users",
        "/healthz/..%2fadmin/users",
        "/healthz%2F..%2Fadmin",
    ] {
        let response = stack.get(path).host("open.example").send();
        assert_ne!(response.status, 200, "{path}: {}", response.text());
    }
    // Plain dot-segments are resolved by Envoy, then the real route decides.
    let response = stack
        .get("/healthz/../admin/users")
        .host("open.example")
        .send();
    assert_denied(&response, 403, "rule_denied");
    assert_eq!(stack.upstream.count(), 0, "{:?}", stack.upstream.received());
    drop(stack);

    // An Envoy that passes escaped slashes on: tollgate refuses them itself.
    let stack = Stack::builder(POLICIES)
        .escaped_slashes(EscapedSlashes::KeepUnchanged)
        .start();
    let response = stack
        .get("/healthz/..%2Fadmin/users")
        .host("open.example")
        .send();
    assert_denied(&response, 400, "request_malformed");
    assert_eq!(stack.upstream.count(), 0);
}

#[test]
fn duplicate_authorization_header_is_request_malformed() {
    let stack = Stack::start(POLICIES);
    let response = stack
        .get("/v1/bikes")
        .host("open.example")
        .header("authorization", "Bearer first")
        .header("authorization", "Bearer second")
        .send();
    assert_denied(&response, 400, "request_malformed");
    assert_eq!(stack.upstream.count(), 0);
}

#[test]
fn forged_identity_headers_never_reach_the_upstream() {
    let stack = Stack::start(POLICIES);
    let response = stack
        .get("/v1/bikes")
        .host("open.example")
        .header("x-tollgate-user", "mallory")
        .header("X-Tollgate-User", "mallory-again")
        .header("x-tollgate-app", "stolen-app")
        .header("x-tollgate-plan", "gold")
        .header("x-tollgate-device", "device-1")
        .header("x-tollgate-whatever", "anything")
        .header("x-tollgate-policy", "e2e/forged")
        .header("x-policy", "e2e/forged")
        .header("x-route", "forged")
        .header("x-user", "mallory")
        .send();
    let upstream = response.upstream();
    // No identity is known without user/app authentication, so no
    // x-tollgate-* header arrives at all; configured headers arrive once,
    // with tollgate's value.
    assert_eq!(
        upstream.names_with_prefix("x-tollgate-"),
        Vec::<&str>::new(),
        "{:?}",
        upstream.headers
    );
    assert_eq!(upstream.header_once("x-policy"), "e2e/open");
    assert_eq!(upstream.header_once("x-route"), "bikes");
    // A configured header without a value for this request ({user.sub}
    // with no user) is removed, not passed through.
    assert!(upstream.lacks("x-user"), "{:?}", upstream.headers);

    // Underscore spellings (which some frameworks fold into dashes) are
    // refused by Envoy outright.
    let response = stack
        .get("/v1/bikes")
        .host("open.example")
        .header("x_tollgate_user", "mallory")
        .send();
    assert_eq!(response.status, 400);
    assert_eq!(stack.upstream.count(), 1);
}

#[test]
fn dry_run_allows_a_request_it_would_deny_and_logs_the_would_be_reason() {
    let stack = Stack::start(POLICIES);
    let response = stack
        .get("/admin/users")
        .host("trial.example")
        .header("x-tollgate-user", "mallory")
        .send();
    let upstream = response.upstream();
    assert_eq!(upstream.path, "/admin/users");
    assert!(upstream.lacks("x-tollgate-user"), "{:?}", upstream.headers);
    let entry = stack.envoy.access_log_entry(response.request_id());
    assert_eq!(entry["tollgate"]["dry_run"], "rule_denied", "{entry}");
    assert_eq!(entry["tollgate"]["policy"], "e2e/trial", "{entry}");
}

#[test]
fn dynamic_metadata_reaches_envoys_access_log() {
    let stack = Stack::start(POLICIES);
    let allowed = stack.get("/v1/bikes").host("open.example").send();
    assert_eq!(allowed.status, 200);
    let entry = stack.envoy.access_log_entry(allowed.request_id());
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["tollgate"]["decision"], "allow", "{entry}");
    assert_eq!(entry["tollgate"]["policy"], "e2e/open", "{entry}");
    assert_eq!(entry["tollgate"]["route"], "bikes", "{entry}");

    let denied = stack.get("/admin/x").host("open.example").send();
    assert_eq!(denied.status, 403);
    let entry = stack.envoy.access_log_entry(denied.request_id());
    assert_eq!(entry["status"], 403);
    assert_eq!(entry["tollgate"]["decision"], "deny", "{entry}");
    assert_eq!(entry["tollgate"]["reason"], "rule_denied", "{entry}");

    // e2e/bound does not ask for metadata on allows: Envoy logs none.
    let quiet = stack.get("/v1/bikes").host("bound.example").send();
    assert_eq!(quiet.status, 200, "{}", quiet.text());
    let entry = stack.envoy.access_log_entry(quiet.request_id());
    assert_eq!(entry["status"], 200);
    assert!(
        entry["tollgate"]["decision"].is_null() && entry["tollgate"]["policy"].is_null(),
        "an allow whose policy does not ask carries no metadata: {entry}"
    );
}

#[test]
fn envoy_fails_closed_when_tollgate_is_down() {
    let mut stack = Stack::start(POLICIES);
    let before = stack.get("/v1/bikes").host("open.example").send();
    assert_eq!(before.status, 200);
    stack.tollgate.kill();
    let after = stack.get("/v1/bikes").host("open.example").send();
    assert_eq!(
        after.status, 503,
        "status_on_error: 503, failure_mode_allow: false"
    );
    assert_eq!(stack.upstream.count(), 1);
}

#[test]
fn shipped_example_policy_behind_the_shipped_front_proxy() {
    let upstream = support::Upstream::start();
    let policy = std::fs::read_to_string(support::repo_path("deploy/examples/bikes.yaml")).unwrap();
    let tollgate = support::Tollgate::start(&policy);
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate();
    let files = pki.write_server_files(dir.path());
    let bootstrap = envoy::adapt_example(
        "deploy/envoy/front-proxy.yaml",
        dir.path(),
        tollgate.grpc_addr(),
        upstream.addr(),
        Some(&files),
        &["https", "http"],
    );
    let envoy = support::Envoy::start_bootstrap(dir, &bootstrap, Some(pki));
    let https = |path: &str| envoy.get(path).https().host("api.bikes.example").send();

    let health = https("/healthz");
    assert_eq!(health.upstream().header_once("x-bikes-route"), "health");
    let search = https("/v1/search?q=station");
    assert_eq!(search.upstream().header_once("x-bikes-route"), "search");
    assert_denied(&https("/admin/fleet"), 403, "rule_denied");
    // Plain HTTP is redirected to HTTPS, never proxied.
    let plain = envoy.get("/healthz").host("api.bikes.example").send();
    assert_eq!(plain.status, 301, "{:?}", plain.headers);
    assert_eq!(
        plain.header("location"),
        Some("https://api.bikes.example:8443/healthz")
    );
    assert_eq!(upstream.count(), 2);
}

#[test]
fn shipped_envoy_examples_pass_envoys_validation() {
    let dir = tempfile::tempdir().unwrap();
    let files = TestPki::generate().write_server_files(dir.path());
    let examples: Vec<_> = std::fs::read_dir(support::repo_path("deploy/envoy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(
        examples.len() >= 3,
        "front-proxy.yaml, front-proxy-mtls.yaml and sidecar.yaml"
    );
    for example in examples {
        let relative = example.strip_prefix(support::repo_root()).unwrap();
        // Validate the file as shipped, only its certificate paths changed.
        let mut bootstrap = envoy::read_example(relative.to_str().unwrap());
        envoy::replace_tls_files(&mut bootstrap, &files);
        envoy::localize_sds(&mut bootstrap, dir.path(), &files);
        let path = dir.path().join("validate.json");
        std::fs::write(&path, serde_json::to_vec(&bootstrap).unwrap()).unwrap();
        let output = std::process::Command::new(envoy::binary())
            .args([
                "--mode",
                "validate",
                "--disable-hot-restart",
                "--config-path",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{} does not validate:\n{}{}",
            example.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn shipped_sidecar_example_works_behind_a_gateway() {
    // The sidecar trusts the gateway's X-Forwarded-For/-Proto, and tollgate
    // runs with the forwarded origin, one trusted hop (docs/envoy.md).
    const SIDECAR_POLICY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: bikes, namespace: mobility }
spec:
  transport: { denyCidrs: [203.0.113.0/24] }
  response: { upstreamHeaders: { x-policy: "{policy}" } }
"#;
    let upstream = support::Upstream::start();
    let tollgate = support::Tollgate::start_with(
        SIDECAR_POLICY,
        &["--trusted-origin", "forwarded", "--trusted-hops", "1"],
    );
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = envoy::adapt_example(
        "deploy/envoy/sidecar.yaml",
        dir.path(),
        tollgate.grpc_addr(),
        upstream.addr(),
        None,
        &["http"],
    );
    let envoy = support::Envoy::start_bootstrap(dir, &bootstrap, None);
    // What the gateway sends after terminating the client's TLS.
    let from_gateway = |client: &str, proto: &str| {
        support::Request::new(envoy.http_addr(), "GET", "/v1/bikes")
            .host("api.bikes.example")
            .header("x-forwarded-for", client)
            .header("x-forwarded-proto", proto)
            .send()
    };
    let allowed = from_gateway("198.51.100.7", "https");
    assert_eq!(allowed.upstream().header_once("x-policy"), "mobility/bikes");
    assert_denied(&from_gateway("203.0.113.5", "https"), 403, "ip_denied");
    assert_denied(&from_gateway("198.51.100.7", "http"), 403, "https_required");
    assert_eq!(upstream.count(), 1);
}
