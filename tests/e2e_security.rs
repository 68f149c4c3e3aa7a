//! The security hardening of issue 17, end to end through the real Envoy
//! (docs/security.md maps each defence to its test): replays keyed by the
//! credential, header-safe identity values, dry runs and default allows
//! that strip like enforcement, path parameters, ports in proof URIs,
//! repeated bound headers and HTTP/2 bodies without a length.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::Stack;

/// Asserts `response` is tollgate's deny with `status` and `reason`.
fn assert_denied(response: &support::Response, status: u16, reason: &str) {
    assert_eq!(
        (response.status, response.reason()),
        (status, Some(reason)),
        "expected a {status} {reason} deny, got {:?} {}",
        response.headers,
        response.text()
    );
}

/// Item 4: a `;` path parameter. Servlet-style backends drop `;…` from a
/// segment before resolving dot-segments, so `/docs/..;/v1/x` is `/v1/x`
/// to them while Envoy (and a prefix route) sees a path under `/docs`;
/// `/admin;x/users` is `/admin/users` to them but matches no `/admin`
/// route. tollgate refuses both as `request_malformed`.
#[test]
fn path_parameters_cannot_reach_around_routes() {
    const POLICY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: docs, namespace: e2e }
spec:
  hosts: [docs.example]
  transport: { requireHttps: false }
  app:
    identify: { apiKey: { header: x-api-key } }
  routes:
    - { name: docs, match: { pathPrefix: /docs }, public: true }
    - { name: admin, match: { pathPrefix: /admin }, deny: true }
"#;
    let stack = Stack::start(POLICY);
    // The controls: the public prefix passes, the private path needs an
    // app, the denied prefix is denied.
    let docs = stack.get("/docs/intro").host("docs.example").send();
    assert_eq!(docs.status, 200, "{}", docs.text());
    let private = stack.get("/v1/x").host("docs.example").send();
    assert_denied(&private, 401, "app_credential_missing");
    let admin = stack.get("/admin/users").host("docs.example").send();
    assert_denied(&admin, 403, "rule_denied");

    // Envoy's own normalisation resolves `..;` as a dot-segment: the
    // request is judged (and forwarded) as `/v1/x`, never as public.
    for path in ["/docs/..;/v1/x", "/docs/..;jsessionid=1/v1/x"] {
        let response = stack.get(path).host("docs.example").send();
        assert_denied(&response, 401, "app_credential_missing");
    }
    // What Envoy passes on with its `;` (or `%3B`) is refused by tollgate.
    for path in [
        "/docs/%2e%2e;/v1/x",
        "/docs/..%3B/v1/x",
        "/admin;x/users",
        "/admin;/users",
        "/admin%3bx/users",
        "/docs;/intro",
    ] {
        let response = stack.get(path).host("docs.example").send();
        assert_denied(&response, 400, "request_malformed");
    }
    assert_eq!(stack.upstream.count(), 1, "{:?}", stack.upstream.received());
}
