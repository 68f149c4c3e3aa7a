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

fn assert_quota_exceeded(response: &support::Response) {
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
        problem["detail"].as_str().unwrap().contains("\"hourly\""),
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
    assert_quota_exceeded(&response);
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
        assert_quota_exceeded(&search());
    }
    for left in [1, 0] {
        let response = stack.get("/items").host("metered.example").send();
        assert_eq!(response.status, 200, "{}", response.text());
        let expected = format!("\"hourly\";r={left};");
        assert!(response.header("ratelimit").unwrap().starts_with(&expected));
    }
    assert_quota_exceeded(&stack.get("/items").host("metered.example").send());
    assert_eq!(stack.upstream.count(), 3);
    // One EVALSHA per allowed or denied request (plus the one answered
    // NOSCRIPT before the script was first loaded), nothing more.
    let stats = redis.command_stats();
    let loads = stats.get("script|load").copied().unwrap_or(0);
    assert_eq!(stats.get("evalsha").copied(), Some(7 + loads), "{stats:?}");
}
