//! Quotas end to end: HTTP through the real Envoy to tollgate (with a real
//! `redis-server` behind it) and the echo upstream.
//!
//! The limits refill slowly (one unit per hour) so wall-clock time passing
//! during a test cannot change any outcome: no sleeps, no timing.
//!
//! Requests are anonymous (no app identification) and limits are keyed by
//! the client address, which is 127.0.0.1 for every request through Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::Stack;
use support::redis::RedisServer;

const POLICY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: metered, namespace: e2e }
spec:
  hosts: [metered.example]
  transport: { requireHttps: false }
  defaultPlan: anon
  plans:
    - name: anon
      limits:
        - { name: hourly, key: ip, rate: { requests: 1, period: 1h, burst: 5 } }
  routes:
    - { name: search, match: { pathPrefix: /search }, cost: 3 }
    - { name: health, match: { path: /healthz }, public: true }
  response: { rateLimitHeaders: true }
"#;

fn stack(redis: &RedisServer) -> Stack {
    Stack::builder(POLICY)
        .tollgate_args(&["--redis", &redis.url(), "--store-timeout", "200ms"])
        .start()
}

fn assert_quota_exceeded(response: &support::Response, limit: &str) {
    assert_eq!(
        (response.status, response.reason()),
        (429, Some("quota_exceeded")),
        "{:?} {}",
        response.headers,
        response.text()
    );
    let retry: u64 = response
        .header("retry-after")
        .expect("Retry-After on 429")
        .parse()
        .expect("Retry-After in seconds");
    // The next unit arrives within the hour.
    assert!((1..=3600).contains(&retry), "Retry-After {retry}");
    let problem = response.json();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("\"{limit}\"")),
        "the limit is named: {problem}"
    );
}

/// A burst of 6 against `burst: 5`: five reach the upstream with RateLimit
/// headers counting down, the sixth is 429 with Retry-After and never
/// reaches it.
#[test]
fn sixth_request_of_a_burst_of_six_is_429() {
    let redis = RedisServer::start();
    let stack = stack(&redis);
    for i in 0..5u64 {
        let response = stack.get("/items").host("metered.example").send();
        assert_eq!(response.status, 200, "request {i}: {}", response.text());
        let got = response.header("ratelimit").unwrap();
        assert!(
            got.starts_with(&format!("\"hourly\";r={};t=", 4 - i)),
            "{got}"
        );
        assert_eq!(
            response.header("ratelimit-policy"),
            Some("\"hourly\";q=1;w=3600;tollgate-burst=5")
        );
    }
    let response = stack.get("/items").host("metered.example").send();
    assert_quota_exceeded(&response, "hourly");
    assert_eq!(
        response
            .header("ratelimit")
            .map(|v| v.starts_with("\"hourly\";r=0;t=")),
        Some(true)
    );
    assert_eq!(stack.upstream.count(), 5);
    // Public routes consume nothing and are never limited.
    let response = stack.get("/healthz").host("metered.example").send();
    assert_eq!(response.status, 200);
}

/// Route costs consume accordingly, and denied requests consume nothing:
/// after a cost-3 search, a second search (3 > 2 left) is denied — three
/// times — and the two remaining units still serve two cost-1 requests.
#[test]
fn route_cost_and_denials_consume_nothing() {
    let redis = RedisServer::start();
    let stack = stack(&redis);
    let search = || stack.get("/search?q=x").host("metered.example").send();
    let response = search();
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("ratelimit")
            .unwrap()
            .starts_with("\"hourly\";r=2;")
    );
    for _ in 0..3 {
        assert_quota_exceeded(&search(), "hourly");
    }
    for left in [1, 0] {
        let response = stack.get("/items").host("metered.example").send();
        assert_eq!(response.status, 200, "{}", response.text());
        let expected = format!("\"hourly\";r={left};");
        assert!(response.header("ratelimit").unwrap().starts_with(&expected));
    }
    assert_quota_exceeded(
        &stack.get("/items").host("metered.example").send(),
        "hourly",
    );
    assert_eq!(stack.upstream.count(), 3);
    // One EVALSHA per allowed or denied request (plus the one answered
    // NOSCRIPT before the script was first loaded), nothing more.
    let stats = redis.command_stats();
    let loads = stats.get("script|load").copied().unwrap_or(0);
    assert_eq!(stats.get("evalsha").copied(), Some(7 + loads), "{stats:?}");
}

const APPS: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: apps, namespace: e2e }
spec:
  hosts: [apps.example]
  transport: { requireHttps: false }
  app:
    required: true
    identify: { apiKey: { header: x-api-key } }
  defaultPlan: free
  plans:
    - name: free
      limits: [{ name: burst, key: app, rate: { requests: 1, period: 1h, burst: 2 } }]
    - name: gold
      limits: [{ name: burst, key: app, rate: { requests: 1, period: 1h, burst: 4 } }]
  response:
    upstreamHeaders: { x-plan: "{plan}" }
---
apiVersion: v1
kind: Secret
metadata: { name: keys, namespace: e2e }
stringData: { gold: "gold-7f3a9c2e5b8d1f4a6c0e9b2d5f8a1c3e", free: "free-4e8b1d7a3f9c2e6b0d5a8f1c4e7b2d9a" }
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: { name: gold, namespace: e2e }
spec:
  appId: gold-app
  plan: gold
  apiKey: { secretRef: { name: keys, key: gold } }
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: { name: free, namespace: e2e }
spec:
  appId: free-app
  apiKey: { secretRef: { name: keys, key: free } }
"#;

/// Limits keyed by app: each app has its own bucket sized by its plan
/// (`plan` of the registration, else `defaultPlan`), and `tollgate usage`
/// reads what each app consumed from the same Redis.
#[test]
fn per_app_plans_and_usage_cli() {
    let redis = RedisServer::start();
    let stack = Stack::builder(APPS)
        .tollgate_args(&[
            "--redis",
            &redis.url(),
            "--store-timeout",
            "200ms",
            "--metrics-app-labels",
            "1",
        ])
        .start();
    let send = |key: &str| {
        stack
            .get("/items")
            .host("apps.example")
            .header("x-api-key", key)
            .send()
    };
    let mut passed = std::collections::BTreeMap::new();
    for (app, key) in [
        ("gold-app", "gold-7f3a9c2e5b8d1f4a6c0e9b2d5f8a1c3e"),
        ("free-app", "free-4e8b1d7a3f9c2e6b0d5a8f1c4e7b2d9a"),
    ] {
        let mut n = 0;
        for _ in 0..6 {
            let response = send(key);
            match response.status {
                200 => {
                    n += 1;
                    let plan = if app == "gold-app" { "gold" } else { "free" };
                    assert_eq!(response.upstream().header_once("x-plan"), plan);
                }
                429 => assert_quota_exceeded(&response, "burst"),
                other => panic!("{app}: unexpected {other}: {}", response.text()),
            }
        }
        passed.insert(app, n);
    }
    assert_eq!(passed["gold-app"], 4);
    assert_eq!(passed["free-app"], 2);

    // Per-app metrics, bounded to one app label: the second app seen is
    // counted under `_other`.
    let metrics = stack.tollgate.metrics();
    let series = |app: &str, outcome: &str| {
        metrics.lines().any(|l| {
            l.starts_with("tollgate_app_checks_total{")
                && l.contains(&format!(r#"app="{app}""#))
                && l.contains(&format!(r#"outcome="{outcome}""#))
        })
    };
    assert!(
        series("gold-app", "allow") && series("gold-app", "deny"),
        "{metrics}"
    );
    assert!(
        series("_other", "allow") && series("_other", "deny"),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"app="free-app""#), "{metrics}");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["usage", "--redis", &redis.url(), "--format", "json"])
        .output()
        .expect("run tollgate usage");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let summary: Vec<(String, u64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["app"].as_str().unwrap().to_owned(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("free-app".to_owned(), 2), ("gold-app".to_owned(), 4)],
        "denied requests are not metered"
    );
}
