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

/// Item 3: a request allowed only because the policy is in `dryRun` (or
/// because `--default-decision allow` lets unmatched hosts through) is
/// stripped exactly as an enforced allow is: every configured
/// `upstreamHeaders` name, every `x-tollgate-*` header the client sent and,
/// with `removeCredentials`, its credentials.
#[test]
fn dry_runs_and_default_allows_strip_like_enforcement() {
    const POLICY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: trial, namespace: e2e }
spec:
  hosts: [trial.example]
  mode: dryRun
  transport: { requireHttps: false }
  app:
    identify: { apiKey: { header: x-api-key } }
    attestation:
      required: false
      keys: { secretRef: { name: attester, key: secret } }
  response:
    removeCredentials: true
    upstreamHeaders:
      x-user-sub: "{user.sub}"
      x-app: "{app.id}"
---
apiVersion: v1
kind: Secret
metadata: { name: attester, namespace: e2e }
stringData: { secret: "0123456789abcdef0123456789abcdef" }
"#;
    let stack = Stack::builder(POLICY)
        .tollgate_args(&["--default-decision", "allow"])
        .start();
    let forged = |host: &str| {
        stack
            .get("/v1/bikes")
            .host(host)
            .header("x-user-sub", "admin")
            .header("x-app", "trusted-app")
            .header("x-tollgate-user", "admin")
            .header("x-api-key", "tg_unregistered_Q2Xv0Zk9TmE4yPp1LwR")
            .header("approov-token", "not.a.token")
            .header("dpop", "not-a-proof")
            .header("signature", "sig1=:AAAA:")
            .send()
    };
    // The dry run would deny (unknown API key), and allows.
    let response = forged("trial.example");
    let upstream = response.upstream();
    for name in [
        "x-user-sub",
        "x-app",
        "x-tollgate-user",
        "x-api-key",
        "approov-token",
    ] {
        assert!(
            upstream.lacks(name),
            "{name} reached the upstream: {:?}",
            upstream.headers
        );
    }
    let entry = stack.envoy.access_log_entry(response.request_id());
    assert_eq!(entry["tollgate"]["dry_run"], "app_unknown", "{entry}");

    // No policy serves this host; the default decision allows it, and no
    // header any policy configures (nor x-tollgate-*) passes.
    let response = forged("nobody.example");
    let upstream = response.upstream();
    for name in ["x-user-sub", "x-app", "x-tollgate-user"] {
        assert!(
            upstream.lacks(name),
            "{name} reached the upstream: {:?}",
            upstream.headers
        );
    }
    // Without a policy there is no removeCredentials to apply.
    assert_eq!(
        upstream.header_once("x-api-key"),
        "tg_unregistered_Q2Xv0Zk9TmE4yPp1LwR"
    );
}
