//! One scenario suite, run against every store: in-memory, a single real
//! `redis-server`, and a real 3-primary Redis Cluster on loopback. The
//! stores cannot drift: the same assertions hold on each.
//!
//! Time is injected (`Admission::now_us`), never slept: GCRA refill, month
//! boundaries and DST days are reached by setting the clock.
//!
//! Besides the suite: exactness under concurrency (two store clients, like
//! two tollgate replicas, sharing one Redis), `NOSCRIPT` recovery, start-up
//! with Redis down, and the measurement of Redis commands per request and
//! store latency (printed; run with `--nocapture` to read them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/redis.rs"]
mod redis_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use redis_support::{RedisCluster, RedisServer};
use tollgate::limits::admission::{self, Request, Subject};
use tollgate::limits::{Nonce, Plans};
use tollgate::policy::types::ApiPolicySpec;
use tollgate::store::{
    Admission, Leasing, LimitState, MemoryStore, Outcome, RedisStore, RedisUrl, Retention, Store,
    UsageQuery, Verdict,
};

const SECOND: u64 = 1_000_000;

/// µs since the epoch of an RFC 3339 instant.
fn at(instant: &str) -> u64 {
    u64::try_from(instant.parse::<Timestamp>().unwrap().as_microsecond()).unwrap()
}

fn plans(yaml: &str) -> Plans {
    let value: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    let spec: ApiPolicySpec = serde_json::from_value(value).unwrap();
    Plans::compile(&spec).unwrap()
}

/// A store under test and a way to make a second, independent client of
/// the same backend (a second replica).
struct Backend {
    name: &'static str,
    store: Arc<dyn Store>,
    replica: Box<dyn Fn() -> Arc<dyn Store>>,
}

fn redis_store(urls: &[String], cluster: bool) -> Arc<dyn Store> {
    let urls: Vec<RedisUrl> = urls.iter().map(|u| u.parse().unwrap()).collect();
    Arc::new(
        RedisStore::connect(&urls, cluster, Duration::from_secs(2), Retention::default()).unwrap(),
    )
}

/// One request against `plan` of `plans` at `now`.
struct Call<'a> {
    plans: &'a Plans,
    plan: &'a str,
    app: Option<&'a str>,
    user: Option<(&'a str, &'a str)>,
    ip: Option<std::net::IpAddr>,
    cost: u64,
    nonces: Vec<Nonce>,
    now: u64,
    leasing: Leasing,
}

impl<'a> Call<'a> {
    fn new(plans: &'a Plans, plan: &'a str, app: &'a str, now: u64) -> Self {
        Self {
            plans,
            plan,
            app: Some(app),
            user: None,
            ip: Some("192.0.2.7".parse().unwrap()),
            cost: 1,
            nonces: Vec::new(),
            now,
            leasing: Leasing::Off,
        }
    }

    fn admission(&self) -> (Admission, usize) {
        let plan = self.plans.get(self.plan).unwrap();
        let built = admission::build(&Request {
            policy: "test/scenarios",
            plan: Some(plan),
            subject: Subject {
                app: self.app,
                user: self.user,
                user_digest: None,
                device: None,
                ip: self.ip,
            },
            cost: self.cost,
            nonces: &self.nonces,
            now_us: self.now,
            retention: Retention::default(),
            leasing: self.leasing,
        })
        .unwrap();
        let limits = built.limits.iter().map(Vec::len).sum();
        (built.admission, limits)
    }

    async fn send(&self, store: &dyn Store) -> Outcome {
        let (admission, _) = self.admission();
        store.admit(&admission).await.unwrap()
    }
}

fn states(outcome: &Outcome) -> Vec<LimitState> {
    outcome.limits.iter().flatten().copied().collect()
}

// ---------------------------------------------------------------- scenarios

/// GCRA: `burst` pass at once, the next waits one interval, then exactly
/// one more passes per interval.
async fn gcra_burst_and_refill(store: &dyn Store, app: &str) {
    let p = plans(
        "plans: [{name: p, limits: [{name: ps, rate: {requests: 10, period: 1s, burst: 5}}]}]",
    );
    let t0 = at("2024-05-01T12:00:00Z");
    for i in 0..5u64 {
        let out = Call::new(&p, "p", app, t0).send(store).await;
        assert_eq!(out.verdict, Verdict::Admitted, "burst request {i}");
        assert_eq!(states(&out)[0].remaining, 4 - i);
    }
    let out = Call::new(&p, "p", app, t0).send(store).await;
    assert_eq!(out.verdict, Verdict::Exceeded);
    assert_eq!(states(&out)[0].retry_after_us, 100_000);
    // 99 ms later: still denied; 100 ms: one passes, and only one.
    let out = Call::new(&p, "p", app, t0 + 99_000).send(store).await;
    assert_eq!(out.verdict, Verdict::Exceeded);
    assert_eq!(states(&out)[0].retry_after_us, 1_000);
    let out = Call::new(&p, "p", app, t0 + 100_000).send(store).await;
    assert_eq!(out.verdict, Verdict::Admitted);
    let out = Call::new(&p, "p", app, t0 + 100_000).send(store).await;
    assert_eq!(out.verdict, Verdict::Exceeded);
    // After a full second the whole burst is back.
    for _ in 0..5 {
        let out = Call::new(&p, "p", app, t0 + 2 * SECOND).send(store).await;
        assert_eq!(out.verdict, Verdict::Admitted);
    }
}

/// A denied request consumes nothing, from any limit: the limit that would
/// have passed keeps its units.
async fn denied_requests_consume_nothing(store: &dyn Store, app: &str) {
    let p = plans(
        "plans: [{name: p, limits: [
            {name: ps, rate: {requests: 100, period: 1s, burst: 10}},
            {name: daily, quota: {requests: 2, reset: day}}]}]",
    );
    let t = at("2024-05-02T08:00:00Z");
    for _ in 0..2 {
        assert_eq!(
            Call::new(&p, "p", app, t).send(store).await.verdict,
            Verdict::Admitted
        );
    }
    for _ in 0..5 {
        let out = Call::new(&p, "p", app, t).send(store).await;
        assert_eq!(out.verdict, Verdict::Exceeded);
        let s = states(&out);
        assert!(s[0].allowed && !s[1].allowed);
        // The rate limit still has 10 − 2 consumed − this one = 7 left:
        // the five denials took nothing.
        assert_eq!(s[0].remaining, 7);
        assert_eq!(s[1].remaining, 0);
    }
}

/// A route's cost is consumed from every limit; a request whose cost no
/// longer fits is denied while a cheaper one still passes.
async fn cost_is_consumed_from_every_limit(store: &dyn Store, app: &str) {
    let p = plans(
        "plans: [{name: p, limits: [
            {name: ps, rate: {requests: 10, period: 1s, burst: 10}},
            {name: daily, quota: {requests: 12, reset: day}}]}]",
    );
    let t = at("2024-05-03T08:00:00Z");
    let mut call = Call::new(&p, "p", app, t);
    call.cost = 5;
    let out = call.send(store).await;
    assert_eq!(out.verdict, Verdict::Admitted);
    assert_eq!(
        states(&out).iter().map(|s| s.remaining).collect::<Vec<_>>(),
        [5, 7]
    );
    // A second cost-5 request drains the rate burst (10 of 10).
    call.now = t + 1;
    assert_eq!(call.send(store).await.verdict, Verdict::Admitted);
    // A third is denied by both; a cost-2 one after a 0.2 s refill passes
    // the rate but the quota has 2 left: it passes exactly.
    assert_eq!(call.send(store).await.verdict, Verdict::Exceeded);
    call.cost = 2;
    call.now = t + 200_001;
    let out = call.send(store).await;
    assert_eq!(out.verdict, Verdict::Admitted, "{out:?}");
    assert_eq!(states(&out)[1].remaining, 0);
    call.cost = 1;
    assert_eq!(call.send(store).await.verdict, Verdict::Exceeded);
}

/// A monthly quota resets at the calendar month boundary, not 30 days
/// after the first request.
async fn month_boundary_resets(store: &dyn Store, app: &str) {
    let p =
        plans("plans: [{name: p, limits: [{name: monthly, quota: {requests: 2, reset: month}}]}]");
    let end = at("2024-02-29T23:59:59Z");
    for _ in 0..2 {
        assert_eq!(
            Call::new(&p, "p", app, end).send(store).await.verdict,
            Verdict::Admitted
        );
    }
    let out = Call::new(&p, "p", app, end).send(store).await;
    assert_eq!(out.verdict, Verdict::Exceeded);
    assert_eq!(states(&out)[0].retry_after_us, SECOND);
    let march = at("2024-03-01T00:00:00Z");
    let out = Call::new(&p, "p", app, march).send(store).await;
    assert_eq!(out.verdict, Verdict::Admitted);
    assert_eq!(states(&out)[0].remaining, 1);
}

/// A daily quota in a zone with DST: 2024-03-10 in New York is 23 hours
/// long (05:00Z to 04:00Z next day).
async fn dst_day_in_new_york(store: &dyn Store, app: &str) {
    let p = plans(
        "plans: [{name: p, limits: [{name: daily, quota: {requests: 1, reset: day, timeZone: America/New_York}}]}]",
    );
    let start = at("2024-03-10T05:00:00Z");
    assert_eq!(
        Call::new(&p, "p", app, start).send(store).await.verdict,
        Verdict::Admitted
    );
    let last = at("2024-03-11T03:59:59Z");
    let out = Call::new(&p, "p", app, last).send(store).await;
    assert_eq!(out.verdict, Verdict::Exceeded, "still 10 March in New York");
    assert_eq!(states(&out)[0].retry_after_us, SECOND);
    let next = at("2024-03-11T04:00:00Z");
    assert_eq!(
        Call::new(&p, "p", app, next).send(store).await.verdict,
        Verdict::Admitted
    );
}

/// Nonces: fresh once, then a replay; scopes do not collide; a request
/// denied by a quota does not remember its nonce.
async fn nonces_refuse_replays(store: &dyn Store, app: &str) {
    let p = plans("plans: [{name: p, limits: [{name: daily, quota: {requests: 2, reset: day}}]}]");
    let t = at("2024-05-04T08:00:00Z");
    let nonce = |scope: &str, value: &str| Nonce {
        scope: scope.to_owned(),
        credential: "key-1".to_owned(),
        value: value.to_owned(),
        ttl: Duration::from_secs(300),
    };
    let mut call = Call::new(&p, "p", app, t);
    call.nonces = vec![nonce("dpop", "jti-1")];
    assert_eq!(call.send(store).await.verdict, Verdict::Admitted);
    let out = call.send(store).await;
    assert!(
        matches!(out.verdict, Verdict::Replay { index: 0, .. }),
        "{out:?}"
    );
    call.nonces = vec![nonce("attestation", "jti-1")];
    assert_eq!(call.send(store).await.verdict, Verdict::Admitted);
    // The quota is now used up: a request with a new nonce is denied by the
    // quota and its nonce is not remembered…
    call.nonces = vec![nonce("dpop", "jti-2")];
    assert_eq!(call.send(store).await.verdict, Verdict::Exceeded);
    // …so the next day the same nonce is still fresh.
    call.now = at("2024-05-05T08:00:00Z");
    assert_eq!(call.send(store).await.verdict, Verdict::Admitted);
    // A replayed nonce consumes nothing either.
    let out = call.send(store).await;
    assert!(matches!(out.verdict, Verdict::Replay { .. }));
    call.nonces = vec![nonce("dpop", "jti-3")];
    assert_eq!(call.send(store).await.verdict, Verdict::Admitted);
    // A nonce belongs to its credential, not to the app, user or address
    // that came with it: sent by another app, or anonymously, it is still
    // a replay; the same value of another credential is fresh.
    let other_app = format!("{app}-other");
    let mut replayed = Call::new(&p, "p", &other_app, t);
    replayed.now = call.now;
    replayed.nonces = vec![nonce("dpop", "jti-3")];
    assert!(matches!(
        replayed.send(store).await.verdict,
        Verdict::Replay { .. }
    ));
    replayed.app = None;
    replayed.ip = Some("203.0.113.50".parse().unwrap());
    assert!(matches!(
        replayed.send(store).await.verdict,
        Verdict::Replay { .. }
    ));
    replayed.nonces[0].credential = "key-2".to_owned();
    assert_eq!(replayed.send(store).await.verdict, Verdict::Admitted);
}

/// A store call that a client library re-sends after losing the reply (a
/// Redis Cluster client retries on a dropped connection) finds the nonce
/// its first attempt stored: that is the same admission, admitted once and
/// consumed once, never a replay. Another admission with the nonce is.
async fn a_retried_call_is_not_a_replay(store: &dyn Store, app: &str) {
    let p = plans("plans: [{name: p, limits: [{name: daily, quota: {requests: 5, reset: day}}]}]");
    let t = at("2024-05-04T09:00:00Z");
    let mut call = Call::new(&p, "p", app, t);
    call.nonces = vec![Nonce {
        scope: "dpop".into(),
        credential: format!("{app}-key"),
        value: "jti-1".into(),
        ttl: Duration::from_secs(300),
    }];
    let (admission, _) = call.admission();
    assert_eq!(
        store.admit(&admission).await.unwrap().verdict,
        Verdict::Admitted
    );
    // The nonce's call again, as a client library re-sends it (on a
    // Cluster that call is the nonce's group alone; on one server the
    // call held every group): admitted, nothing consumed twice.
    let retried = Admission {
        groups: admission
            .groups
            .iter()
            .filter(|g| !g.nonces.is_empty())
            .cloned()
            .collect(),
        ..admission.clone()
    };
    let again = store.admit(&retried).await.unwrap();
    assert_eq!(again.verdict, Verdict::Admitted, "{again:?}");
    // A new admission with the same nonce is a replay…
    let replay = call.send(store).await;
    assert!(
        matches!(replay.verdict, Verdict::Replay { .. }),
        "{replay:?}"
    );
    // …and the quota counted the first call once: 5 − 1 − this one = 3.
    call.nonces.clear();
    let out = call.send(store).await;
    assert_eq!(out.verdict, Verdict::Admitted);
    assert_eq!(states(&out)[0].remaining, 3);
}

/// A limit keyed by IP lives under its own hash tag: when it denies, what
/// the app's group consumed is refunded.
async fn cross_tag_deny_refunds(store: &dyn Store, app: &str) {
    let p = plans(
        "plans: [{name: p, limits: [
            {name: app-rate, key: app, rate: {requests: 10, period: 1s, burst: 10}},
            {name: per-ip, key: ip, quota: {requests: 1, reset: day}}]}]",
    );
    let t = at("2024-05-06T08:00:00Z");
    let mut call = Call::new(&p, "p", app, t);
    call.ip = Some(format!("198.51.100.{}", app.len()).parse().unwrap());
    let (admission, _) = call.admission();
    assert_eq!(admission.groups.len(), 2, "app and ip tags");
    assert_eq!(call.send(store).await.verdict, Verdict::Admitted);
    for _ in 0..3 {
        let out = call.send(store).await;
        assert_eq!(out.verdict, Verdict::Exceeded);
    }
    // Only the one admitted request is left on the app's rate: 9 remain
    // after this next request from another address (8 after it).
    call.ip = Some("203.0.113.99".parse().unwrap());
    let out = call.send(store).await;
    assert_eq!(out.verdict, Verdict::Admitted);
    assert_eq!(
        states(&out)[0].remaining,
        8,
        "denied requests were refunded"
    );
}

/// Usage: allowed requests and their cost, per app per day and per
/// app-user per day; denied requests are not metered.
async fn usage_is_metered(store: &dyn Store, app: &str) {
    let p = plans("plans: [{name: p, limits: [{name: daily, quota: {requests: 10, reset: day}}]}]");
    let t = at("2024-05-07T08:00:00Z");
    let mut call = Call::new(&p, "p", app, t);
    call.user = Some(("https://id.example/", "alice"));
    call.cost = 3;
    for _ in 0..4 {
        call.send(store).await; // 3 pass (9 units), the 4th is denied
    }
    call.now = at("2024-05-08T08:00:00Z");
    call.cost = 1;
    call.send(store).await;
    let rows = store
        .usage(&UsageQuery {
            app: Some(app.to_owned()),
            from: "2024-05-01".into(),
            to: "2024-05-31".into(),
            users: true,
        })
        .await
        .unwrap();
    let summary: Vec<(String, bool, u64, u64)> = rows
        .iter()
        .map(|r| (r.day.clone(), r.user.is_some(), r.requests, r.cost))
        .collect();
    assert_eq!(
        summary,
        [
            ("2024-05-07".into(), false, 3, 9),
            ("2024-05-07".into(), true, 3, 9),
            ("2024-05-08".into(), false, 1, 1),
            ("2024-05-08".into(), true, 1, 1),
        ]
    );
    let only_apps = store
        .usage(&UsageQuery {
            app: None,
            from: "2024-05-08".into(),
            to: "2024-05-08".into(),
            users: false,
        })
        .await
        .unwrap();
    assert!(only_apps.iter().any(|r| r.app == app && r.requests == 1));
    assert!(only_apps.iter().all(|r| r.user.is_none()));
}

/// A request refunded because a limit under another tag denied it is not
/// metered either: usage goes back with the quota (cost included).
async fn refunded_requests_are_not_metered(store: &dyn Store, app: &str) {
    let p = plans(
        "plans: [{name: p, limits: [
            {name: app-daily, key: app, quota: {requests: 100, reset: day}},
            {name: per-ip, key: ip, quota: {requests: 3, reset: day}}]}]",
    );
    let t = at("2024-05-13T08:00:00Z");
    let mut call = Call::new(&p, "p", app, t);
    call.user = Some(("https://id.example/", "carol"));
    call.ip = Some("198.51.100.200".parse().unwrap());
    call.cost = 3;
    assert_eq!(call.send(store).await.verdict, Verdict::Admitted);
    // The address has no units left for a second cost-3 request: its
    // group denies, and the app's group (limits and usage) is refunded.
    let out = call.send(store).await;
    assert_eq!(out.verdict, Verdict::Exceeded);
    call.cost = 1;
    call.ip = Some("198.51.100.201".parse().unwrap());
    let out = call.send(store).await;
    assert_eq!(out.verdict, Verdict::Admitted);
    assert_eq!(states(&out)[0].remaining, 96, "app-daily: 3 + 1 used");
    let rows = store
        .usage(&UsageQuery {
            app: Some(app.to_owned()),
            from: "2024-05-13".into(),
            to: "2024-05-13".into(),
            users: true,
        })
        .await
        .unwrap();
    let summary: Vec<(bool, u64, u64)> = rows
        .iter()
        .map(|r| (r.user.is_some(), r.requests, r.cost))
        .collect();
    assert_eq!(summary, [(false, 2, 4), (true, 2, 4)]);
}

/// Two replicas, hundreds of concurrent requests, a quota of 100: exactly
/// 100 pass.
async fn exact_under_concurrency(backend: &Backend, app: &str) {
    let p = Arc::new(plans(
        "plans: [{name: p, limits: [{name: daily, quota: {requests: 100, reset: day}}]}]",
    ));
    let t = at("2024-05-09T08:00:00Z");
    let replicas = [backend.store.clone(), (backend.replica)()];
    let mut tasks = Vec::new();
    for i in 0..300 {
        let store = replicas[i % 2].clone();
        let p = p.clone();
        let app = app.to_owned();
        tasks.push(tokio::spawn(async move {
            let call = Call::new(&p, "p", &app, t + i as u64);
            call.send(store.as_ref()).await.verdict == Verdict::Admitted
        }));
    }
    let mut allowed = 0;
    for task in tasks {
        if task.await.unwrap() {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 100, "{}: exactly the quota passes", backend.name);
}

async fn run_suite(backend: Backend) {
    // Each scenario uses its own app id, so they share one server.
    let tag = backend.name;
    gcra_burst_and_refill(backend.store.as_ref(), &format!("{tag}-gcra")).await;
    denied_requests_consume_nothing(backend.store.as_ref(), &format!("{tag}-denied")).await;
    cost_is_consumed_from_every_limit(backend.store.as_ref(), &format!("{tag}-cost")).await;
    month_boundary_resets(backend.store.as_ref(), &format!("{tag}-month")).await;
    dst_day_in_new_york(backend.store.as_ref(), &format!("{tag}-dst")).await;
    nonces_refuse_replays(backend.store.as_ref(), &format!("{tag}-nonce")).await;
    a_retried_call_is_not_a_replay(backend.store.as_ref(), &format!("{tag}-retry")).await;
    cross_tag_deny_refunds(backend.store.as_ref(), &format!("{tag}-cross")).await;
    usage_is_metered(backend.store.as_ref(), &format!("{tag}-usage")).await;
    refunded_requests_are_not_metered(backend.store.as_ref(), &format!("{tag}-refund")).await;
    exact_under_concurrency(&backend, &format!("{tag}-exact")).await;
}

#[tokio::test]
async fn scenarios_in_memory() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let shared = store.clone();
    run_suite(Backend {
        name: "memory",
        store,
        // In memory, a second "replica" can only be the same store.
        replica: Box::new(move || shared.clone()),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_on_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    run_suite(Backend {
        name: "redis",
        store: redis_store(std::slice::from_ref(&url), false),
        replica: Box::new(move || redis_store(std::slice::from_ref(&url), false)),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_on_redis_cluster() {
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    let store = redis_store(&urls, true);
    assert_eq!(store.kind(), "redis-cluster");
    run_suite(Backend {
        name: "cluster",
        store,
        replica: Box::new(move || redis_store(&urls, true)),
    })
    .await;
    // The suite's keys really were spread over the primaries.
    let spread = cluster
        .nodes
        .iter()
        .filter(|n| {
            let size: u64 = redis::cmd("DBSIZE").query(&mut n.connection()).unwrap();
            size > 0
        })
        .count();
    assert!(spread >= 2, "keys landed on {spread} of 3 primaries");
}

/// On a Cluster a request's hash tags are separate calls. A definite answer
/// from one — a replay, a limit exceeded — stands when another fails (here
/// a key of the user's tag holding the wrong type makes its script fail):
/// the request is denied, never an error that `onStoreError: allow` would
/// turn into an allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definite_denial_stands_when_another_group_fails() {
    let cluster = RedisCluster::start(3);
    let store = redis_store(&cluster.urls(), true);
    let p = plans(
        "plans: [{name: p, limits: [
            {name: daily, key: app, quota: {requests: 1, reset: day}},
            {name: per-user, key: user, rate: {requests: 10, period: 1s}}]}]",
    );
    let t = at("2024-05-20T08:00:00Z");
    let mut call = Call::new(&p, "p", "broken", t);
    call.user = Some(("https://id.example/", "bob"));
    call.nonces = vec![Nonce {
        scope: "dpop".into(),
        credential: "jkt".into(),
        value: "jti-1".into(),
        ttl: Duration::from_secs(60),
    }];
    let (admission, _) = call.admission();
    assert_eq!(admission.groups.len(), 3, "app, user and nonce tags");
    assert_eq!(
        store.admit(&admission).await.unwrap().verdict,
        Verdict::Admitted
    );

    // Break the user's group: its rate key now holds a hash.
    let user_key = admission
        .groups
        .iter()
        .find(|g| g.tag.starts_with("{u:"))
        .map(|g| g.limits[0].key.clone())
        .unwrap();
    let nodes: Vec<&RedisServer> = cluster.nodes.iter().collect();
    let _: i64 = on_owner(&nodes, redis::cmd("DEL").arg(&user_key));
    let _: i64 = on_owner(&nodes, redis::cmd("HSET").arg(&user_key).arg("f").arg("v"));
    call.nonces.clear();
    let (broken, _) = call.admission();
    // Without a definite answer elsewhere, the failure is an error…
    call.now = at("2024-05-21T08:00:00Z");
    let (only_error, _) = call.admission();
    assert!(
        store.admit(&only_error).await.is_err(),
        "a failing group is an error"
    );
    // …but the app's exceeded quota stands…
    let out = store.admit(&broken).await.unwrap();
    assert_eq!(out.verdict, Verdict::Exceeded, "{out:?}");
    // …and so does a replayed nonce.
    let replay = Admission {
        attempt: "another".into(),
        ..admission
    };
    let out = store.admit(&replay).await.unwrap();
    assert!(matches!(out.verdict, Verdict::Replay { .. }), "{out:?}");
}

// ------------------------------------------------------ what Redis holds

/// Runs a keyed command on the node that owns the key: a single server owns
/// every key; a Cluster node answers `MOVED` for keys it does not own.
fn on_owner<T: redis::FromRedisValue>(nodes: &[&RedisServer], cmd: &redis::Cmd) -> T {
    let mut errors = Vec::new();
    for node in nodes {
        match cmd.query(&mut node.connection()) {
            Ok(value) => return value,
            Err(e) => errors.push(e.to_string()),
        }
    }
    panic!("no node answered {cmd:?}: {errors:?}")
}

fn hash(nodes: &[&RedisServer], key: &str) -> std::collections::BTreeMap<String, i64> {
    on_owner(nodes, redis::cmd("HGETALL").arg(key))
}

fn ttl_s(nodes: &[&RedisServer], key: &str) -> i64 {
    on_owner(nodes, redis::cmd("TTL").arg(key))
}

fn pttl_ms(nodes: &[&RedisServer], key: &str) -> i64 {
    on_owner(nodes, redis::cmd("PTTL").arg(key))
}

/// Asserts a TTL lies in `(expected − slack, expected]`: set, relative to
/// the injected clock, and not reset to something else. The slack covers
/// the test's own running time (the TTL counts down in real time).
fn assert_ttl(what: &str, actual: i64, expected: i64, slack: i64) {
    assert!(
        actual <= expected && actual > expected - slack,
        "{what}: TTL {actual}, expected {expected} (within {slack})"
    );
}

/// The keys, values and TTLs the admit and refund scripts leave in Redis:
/// usage hashes hold `count` (plus `extra` once a cost was not 1) and get
/// their TTL on the first request of the day, and keep it; a quota counter
/// gets its TTL when the window's first request creates it and keeps it
/// through `INCRBY` and refunds; hashes of the earlier layout (`requests`,
/// `cost`) still add up.
async fn redis_holds_the_documented_state(store: &dyn Store, nodes: &[&RedisServer], app: &str) {
    let p = plans(
        "plans: [{name: p, limits: [
            {name: hourly, key: app, rate: {requests: 10, period: 1h}},
            {name: daily, key: app, quota: {requests: 100, reset: day}},
            {name: per-ip, key: ip, quota: {requests: 6, reset: day}}]}]",
    );
    let t = at("2024-05-14T08:00:00Z");
    let mut call = Call::new(&p, "p", app, t);
    let user = ("https://id.example/", "dave");
    call.user = Some(user);
    let (admission, _) = call.admission();
    let group = &admission.groups[0];
    let (rate_key, quota_key) = (group.limits[0].key.clone(), group.limits[1].key.clone());
    let (app_usage, user_usage) = (group.usage[0].key.clone(), group.usage[1].key.clone());
    assert!(app_usage.ends_with(":u:2024-05-14"), "{app_usage}");
    assert!(user_usage.contains(":u:2024-05-14:"), "{user_usage}");
    // 16 h to the end of the day, then the retention (400 / 31 days); the
    // daily counter lives to the day's end plus 60 s of grace; one request
    // moves the rate's TAT one interval (360 s) ahead.
    let app_ttl = 16 * 3600 + 400 * 86_400;
    let user_ttl = 16 * 3600 + 31 * 86_400;
    let quota_pttl = (16 * 3600 + 60) * 1000;
    let slack_s = 30;

    assert_eq!(call.send(store).await.verdict, Verdict::Admitted);
    let one = std::collections::BTreeMap::from([("count".to_owned(), 1)]);
    assert_eq!(hash(nodes, &app_usage), one);
    assert_eq!(hash(nodes, &user_usage), one);
    assert_ttl("app usage", ttl_s(nodes, &app_usage), app_ttl, slack_s);
    assert_ttl("user usage", ttl_s(nodes, &user_usage), user_ttl, slack_s);
    let count: i64 = on_owner(nodes, redis::cmd("GET").arg(&quota_key));
    assert_eq!(count, 1);
    assert_ttl(
        "quota",
        pttl_ms(nodes, &quota_key),
        quota_pttl,
        slack_s * 1000,
    );
    assert_ttl("rate", pttl_ms(nodes, &rate_key), 360_000, slack_s * 1000);

    // Later requests (one of cost 3) count on, and every TTL stays set:
    // the usage hashes' and the counter's from their first request.
    call.now = t + SECOND;
    assert_eq!(call.send(store).await.verdict, Verdict::Admitted);
    call.now = t + 2 * SECOND;
    call.cost = 3;
    assert_eq!(call.send(store).await.verdict, Verdict::Admitted);
    let expected =
        std::collections::BTreeMap::from([("count".to_owned(), 3), ("extra".to_owned(), 2)]);
    assert_eq!(hash(nodes, &app_usage), expected);
    assert_eq!(hash(nodes, &user_usage), expected);
    assert_ttl("app usage", ttl_s(nodes, &app_usage), app_ttl, slack_s);
    assert_ttl("user usage", ttl_s(nodes, &user_usage), user_ttl, slack_s);
    let count: i64 = on_owner(nodes, redis::cmd("GET").arg(&quota_key));
    assert_eq!(count, 5);
    assert_ttl(
        "quota",
        pttl_ms(nodes, &quota_key),
        quota_pttl,
        slack_s * 1000,
    );
    // 5 units at 360 s each, 2 s after the first.
    assert_ttl(
        "rate",
        pttl_ms(nodes, &rate_key),
        5 * 360_000 - 2_000,
        slack_s * 1000,
    );

    // The address has 1 of its 6 left: a cost-3 request is denied by the
    // per-ip group and the app's group is refunded, TTLs kept.
    let out = call.send(store).await;
    assert_eq!(out.verdict, Verdict::Exceeded);
    assert_eq!(hash(nodes, &app_usage), expected);
    assert_eq!(hash(nodes, &user_usage), expected);
    assert_ttl("app usage", ttl_s(nodes, &app_usage), app_ttl, slack_s);
    assert_ttl("user usage", ttl_s(nodes, &user_usage), user_ttl, slack_s);
    let count: i64 = on_owner(nodes, redis::cmd("GET").arg(&quota_key));
    assert_eq!(count, 5, "refunded");
    assert_ttl(
        "quota",
        pttl_ms(nodes, &quota_key),
        quota_pttl,
        slack_s * 1000,
    );

    // A day whose hash was written by an earlier tollgate (`requests`,
    // `cost`): the new fields add to the old ones.
    let (day2, day2_key) = ("2024-05-15", app_usage.replace("2024-05-14", "2024-05-15"));
    let _: () = on_owner(
        nodes,
        redis::cmd("HSET")
            .arg(&day2_key)
            .arg("requests")
            .arg(2)
            .arg("cost")
            .arg(7),
    );
    let _: () = on_owner(nodes, redis::cmd("EXPIRE").arg(&day2_key).arg(3600));
    call.now = at("2024-05-15T08:00:00Z");
    call.cost = 1;
    call.ip = Some("198.51.100.250".parse().unwrap());
    assert_eq!(call.send(store).await.verdict, Verdict::Admitted);
    let rows = store
        .usage(&UsageQuery {
            app: Some(app.to_owned()),
            from: day2.into(),
            to: day2.into(),
            users: false,
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].requests, rows[0].cost), (3, 8));
    // Its first request under the new layout gave it the new layout's TTL.
    assert_ttl("upgraded day", ttl_s(nodes, &day2_key), app_ttl, slack_s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_state_on_redis_and_cluster() {
    let redis = RedisServer::start();
    let store = redis_store(&[redis.url()], false);
    redis_holds_the_documented_state(store.as_ref(), &[&redis], "state").await;

    let cluster = RedisCluster::start(3);
    let store = redis_store(&cluster.urls(), true);
    let nodes: Vec<&RedisServer> = cluster.nodes.iter().collect();
    redis_holds_the_documented_state(store.as_ref(), &nodes, "state").await;
}

// ------------------------------------------------------- Redis-only faults

/// `SCRIPT FLUSH` (what a restart or failover does to the script cache):
/// the next call gets `NOSCRIPT`, reloads the script and succeeds.
#[tokio::test]
async fn noscript_is_reloaded_transparently() {
    let redis = RedisServer::start();
    let store = redis_store(&[redis.url()], false);
    let p = plans("plans: [{name: p, limits: [{name: daily, quota: {requests: 5, reset: day}}]}]");
    let t = at("2024-05-10T08:00:00Z");
    assert_eq!(
        Call::new(&p, "p", "ns", t)
            .send(store.as_ref())
            .await
            .verdict,
        Verdict::Admitted
    );
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut redis.connection())
        .unwrap();
    redis.reset_stats();
    let out = Call::new(&p, "p", "ns", t).send(store.as_ref()).await;
    assert_eq!(out.verdict, Verdict::Admitted);
    assert_eq!(
        states(&out)[0].remaining,
        3,
        "the first request still counts"
    );
    let stats = redis.command_stats();
    assert_eq!(stats.get("script|load").copied(), Some(1), "{stats:?}");
    assert_eq!(
        stats.get("evalsha").copied(),
        Some(2),
        "one NOSCRIPT, one retry"
    );
}

/// tollgate starts while Redis is down: calls fail fast (within the store
/// timeout) instead of hanging, and the same store heals once Redis is up.
#[tokio::test]
async fn starts_with_redis_down_and_heals() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let timeout = Duration::from_millis(200);
    let store: Arc<dyn Store> = Arc::new(
        RedisStore::connect(
            &[url.parse().unwrap()],
            false,
            timeout,
            Retention::default(),
        )
        .unwrap(),
    );
    let p = plans("plans: [{name: p, limits: [{name: daily, quota: {requests: 5, reset: day}}]}]");
    let t = at("2024-05-11T08:00:00Z");
    let (admission, _) = Call::new(&p, "p", "down", t).admission();
    let started = Instant::now();
    let err = store.admit(&admission).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        started.elapsed() < timeout * 5,
        "failed fast: {:?}",
        started.elapsed()
    );
    redis.restart();
    let healed = wait_until_admitted(store.as_ref(), &admission, Duration::from_secs(15)).await;
    println!("store healed {healed:?} after redis-server came back");
}

/// Retries `admission` until it is admitted; the bound is generous (a
/// broken reconnect fails the test, a slow machine does not).
async fn wait_until_admitted(
    store: &dyn Store,
    admission: &Admission,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(out) = store.admit(admission).await {
            assert_eq!(out.verdict, Verdict::Admitted);
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "store did not recover within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Measures what one allowed request costs Redis and how long a store
/// call takes on loopback; printed for the docs (`--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_commands_and_latency() {
    let redis = RedisServer::start();
    let store = redis_store(&[redis.url()], false);
    let p = plans(
        "plans: [{name: p, limits: [
            {name: ps, rate: {requests: 100000, period: 1s, burst: 100000}},
            {name: daily, quota: {requests: 1000000, reset: day}}]}]",
    );
    let t = at("2024-05-12T08:00:00Z");
    // Warm up (loads the script once).
    Call::new(&p, "p", "m", t).send(store.as_ref()).await;
    redis.reset_stats();
    let n = 1000u64;
    let mut latencies = Vec::with_capacity(1000);
    for i in 0..n {
        let mut call = Call::new(&p, "p", "m", t + i);
        call.user = Some(("https://id.example/", "u"));
        call.nonces = vec![Nonce {
            scope: "dpop".into(),
            credential: "jkt".into(),
            value: format!("jti-{i}"),
            ttl: Duration::from_secs(60),
        }];
        let (admission, _) = call.admission();
        let started = Instant::now();
        let out = store.admit(&admission).await.unwrap();
        latencies.push(started.elapsed());
        assert_eq!(out.verdict, Verdict::Admitted);
    }
    let stats = redis.command_stats();
    let client_calls: u64 = stats
        .iter()
        .filter(|(name, _)| !name.starts_with("config") && !name.starts_with("info"))
        .filter(|(name, _)| ["evalsha", "eval", "script|load"].contains(&name.as_str()))
        .map(|(_, calls)| calls)
        .sum();
    let inside: u64 = stats
        .iter()
        .filter(|(name, _)| {
            !["evalsha", "eval", "script|load", "config|resetstat", "info"].contains(&name.as_str())
        })
        .map(|(_, calls)| calls)
        .sum();
    latencies.sort();
    let pct = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    println!(
        "per allowed request (1 nonce, 2 limits, app+user usage): {:.2} client commands \
         (round trips), {:.2} commands inside the script; store latency p50 {:?} p99 {:?} max {:?}",
        client_calls as f64 / n as f64,
        inside as f64 / n as f64,
        pct(0.5),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    println!("commandstats: {stats:?}");
    assert_eq!(client_calls, n, "one EVALSHA per request");
    // Inside the script, per request: the nonce (GET, SET PX), the rate
    // (GET, SET PX), the quota (GET, then INCRBY: the warm-up created the
    // day's counter) and one HINCRBY per usage hash. The only EXPIRE is
    // the user hash's, made by the first measured request; the app hash
    // and the counter keep the TTLs the warm-up gave them.
    let calls = |name: &str| stats.get(name).copied().unwrap_or(0);
    assert_eq!(
        (
            calls("exists"),
            calls("get"),
            calls("set"),
            calls("incrby"),
            calls("hincrby"),
            calls("expire"),
            calls("pexpire"),
        ),
        (0, 3 * n, 2 * n, n, 2 * n, 1, 0),
        "{stats:?}"
    );
    assert_eq!(inside, 8 * n + 1, "{stats:?}");
}

/// Redis's own time in `EVALSHA` (µs) summed over `nodes`
/// (`INFO commandstats`, `usec`).
fn evalsha_usec(nodes: &[&RedisServer]) -> u64 {
    nodes
        .iter()
        .map(|node| {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut node.connection())
                .unwrap();
            info.lines()
                .find_map(|line| line.strip_prefix("cmdstat_evalsha:"))
                .and_then(|rest| rest.split(',').find_map(|kv| kv.strip_prefix("usec=")))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// What a request's nonce costs now that it lives under its credential's
/// hash tag: on one server nothing more (the one script call takes every
/// group), on a Cluster one more `EVALSHA`, run concurrently with the
/// app's. Printed for `docs/performance.md` (`--nocapture`); the counts
/// are asserted, the times never are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_the_nonce_tag() {
    let redis = RedisServer::start();
    let cluster = RedisCluster::start(3);
    let single: Vec<&RedisServer> = vec![&redis];
    let nodes: Vec<&RedisServer> = cluster.nodes.iter().collect();
    let backends = [
        ("redis", redis_store(&[redis.url()], false), &single),
        ("cluster", redis_store(&cluster.urls(), true), &nodes),
    ];
    let p = plans(
        "plans: [{name: p, limits: [
            {name: ps, rate: {requests: 100000, period: 1s, burst: 100000}},
            {name: daily, quota: {requests: 10000000, reset: day}}]}]",
    );
    let t = at("2024-05-13T08:00:00Z");
    let n = 2000u64;
    for (name, store, nodes) in &backends {
        for with_nonce in [false, true] {
            Call::new(&p, "p", "m", t).send(store.as_ref()).await;
            for node in nodes.iter() {
                node.reset_stats();
            }
            let mut latencies = Vec::with_capacity(n as usize);
            for i in 0..n {
                let mut call = Call::new(&p, "p", "m", t + i);
                if with_nonce {
                    call.nonces = vec![Nonce {
                        scope: "dpop".into(),
                        credential: "jkt".into(),
                        value: format!("{name}-jti-{i}"),
                        ttl: Duration::from_secs(60),
                    }];
                }
                let (admission, _) = call.admission();
                let started = Instant::now();
                let out = store.admit(&admission).await.unwrap();
                latencies.push(started.elapsed());
                assert_eq!(out.verdict, Verdict::Admitted);
            }
            let calls: u64 = nodes
                .iter()
                .map(|node| node.command_stats().get("evalsha").copied().unwrap_or(0))
                .sum();
            let usec = evalsha_usec(nodes);
            latencies.sort();
            let pct = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
            println!(
                "{name}, {}: {:.2} EVALSHA per request, Redis {:.2} µs per request in EVALSHA; \
                 store latency p50 {:?} p99 {:?}",
                if with_nonce {
                    "rate + quota + DPoP nonce"
                } else {
                    "rate + quota"
                },
                calls as f64 / n as f64,
                usec as f64 / n as f64,
                pct(0.5),
                pct(0.99),
            );
            let expected = if with_nonce && *name == "cluster" {
                2
            } else {
                1
            };
            assert_eq!(calls, expected * n, "{name}, nonce {with_nonce}");
        }
    }
}

// ------------------------------------------------------------ through decide

mod through_decide {
    //! The admission stage inside the real decision core: policies compiled
    //! from YAML, requests decided by `pipeline::decide`.

    use super::*;
    use tollgate::clock::ManualClock;
    use tollgate::decision::Decision;
    use tollgate::pipeline::{Deps, Settings, decide};
    use tollgate::policy::snapshot::Snapshot;
    use tollgate::request::RequestContext;

    const POLICIES: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: closed, namespace: q }
spec:
  hosts: [closed.example]
  transport: { requireHttps: false }
  defaultPlan: anon
  plans:
    - name: anon
      limits:
        - { name: per-ip, key: ip, rate: { requests: 10, period: 1s, burst: 5 } }
        - { name: daily, key: ip, quota: { requests: 100, reset: day } }
  routes:
    - { name: search, match: { pathPrefix: /search }, cost: 3 }
  response: { rateLimitHeaders: true }
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: open, namespace: q }
spec:
  hosts: [open.example]
  transport: { requireHttps: false }
  defaultPlan: anon
  plans:
    - name: anon
      limits:
        - { name: daily, key: ip, quota: { requests: 1000, reset: day } }
  onStoreError: allow
"#;

    fn snapshot() -> Snapshot {
        let docs = tollgate::policy::document::parse_documents(
            std::path::Path::new("quota.yaml"),
            POLICIES,
        )
        .unwrap();
        tollgate::policy::compile::compile(&docs, 1).unwrap()
    }

    fn deps(store: Arc<dyn Store>, now: u64) -> Deps {
        Deps {
            store,
            clock: Arc::new(ManualClock::new(Duration::from_micros(now))),
            // One scenario reads the decision trace.
            settings: Settings {
                trace: true,
                ..Settings::default()
            },
        }
    }

    fn request(host: &str, path: &str, ip: &str) -> RequestContext {
        RequestContext {
            method: "GET".into(),
            scheme: "http".into(),
            authority: host.into(),
            path: path.into(),
            peer_ip: Some(ip.parse().unwrap()),
            ..Default::default()
        }
    }

    fn header<'a>(decision: &'a Decision, name: &str) -> Option<&'a str> {
        let headers = match &decision.verdict {
            tollgate::decision::Verdict::Allow(allow) => &allow.response_headers,
            tollgate::decision::Verdict::Deny(deny) => &deny.headers,
        };
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn reason(decision: &Decision) -> Option<&'static str> {
        decision.denial().map(|d| d.reason.code())
    }

    /// Burst of 6 against `burst: 5`: the 6th is 429 with Retry-After, the
    /// limit named, RateLimit headers on both; cost 3 routes consume 3.
    #[tokio::test]
    async fn quota_denial_contract() {
        let snap = snapshot();
        let t = at("2024-06-03T10:00:00Z");
        let deps = deps(Arc::new(MemoryStore::new()), t);
        let req = request("closed.example", "/items", "192.0.2.1");
        for i in 0..5u64 {
            let d = decide(&snap, &req, &deps).await;
            assert!(d.is_allow(), "request {i}: {:?}", d.denial());
            assert_eq!(d.identity.plan.as_deref(), Some("anon"));
            let expected = format!("\"per-ip\";r={};t=1", 4 - i);
            assert_eq!(header(&d, "ratelimit"), Some(expected.as_str()));
        }
        let d = decide(&snap, &req, &deps).await;
        let deny = d.denial().expect("6th denied");
        assert_eq!(deny.reason.code(), "quota_exceeded");
        assert_eq!(deny.reason.http_status(), 429);
        assert!(deny.detail.contains("\"per-ip\""), "{}", deny.detail);
        assert_eq!(header(&d, "retry-after"), Some("1"));
        assert_eq!(
            header(&d, "ratelimit-policy"),
            Some("\"per-ip\";q=10;w=1;tollgate-burst=5, \"daily\";q=100;w=86400")
        );
        assert_eq!(header(&d, "ratelimit"), Some("\"per-ip\";r=0;t=1"));
        // Route cost: a fresh address, one cost-3 search leaves 2 of 5.
        let search = request("closed.example", "/search", "192.0.2.3");
        let d = decide(&snap, &search, &deps).await;
        assert!(d.is_allow());
        assert_eq!(header(&d, "ratelimit"), Some("\"per-ip\";r=2;t=1"));
        let d = decide(&snap, &search, &deps).await;
        assert_eq!(reason(&d), Some("quota_exceeded"));
    }

    /// Two tollgate replicas (two decision cores, two Redis clients) share
    /// one Redis: 300 concurrent requests against a daily quota of 100 from
    /// one address → exactly 100 allowed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_exactly_100() {
        let redis = RedisServer::start();
        let t = at("2024-06-04T10:00:00Z");
        let replicas = [
            Arc::new(deps(redis_store(&[redis.url()], false), t)),
            Arc::new(deps(redis_store(&[redis.url()], false), t)),
        ];
        let exact = exact_policy();
        let mut tasks = Vec::new();
        for i in 0..300 {
            let deps = replicas[i % 2].clone();
            let snap = exact.clone();
            tasks.push(tokio::spawn(async move {
                let req = request("exact.example", "/items", "192.0.2.60");
                decide(&snap, &req, &deps).await.is_allow()
            }));
        }
        let mut allowed = 0;
        for task in tasks {
            allowed += usize::from(task.await.unwrap());
        }
        assert_eq!(allowed, 100);
    }

    fn exact_policy() -> Arc<Snapshot> {
        let yaml = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: exact, namespace: q }
spec:
  hosts: [exact.example]
  transport: { requireHttps: false }
  defaultPlan: anon
  plans: [{ name: anon, limits: [{ name: daily, key: ip, quota: { requests: 100, reset: day } }] }]
"#;
        let docs =
            tollgate::policy::document::parse_documents(std::path::Path::new("exact.yaml"), yaml)
                .unwrap();
        Arc::new(tollgate::policy::compile::compile(&docs, 1).unwrap())
    }

    /// Redis killed mid-traffic: `store_unavailable` (503) within the store
    /// timeout under `onStoreError: deny`, allowed under `allow`; Redis
    /// restarted on the same port: allowed again within seconds, same
    /// process, same store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_killed_then_restarted() {
        let mut redis = RedisServer::start();
        let timeout = Duration::from_millis(50);
        let store: Arc<dyn Store> = Arc::new(
            RedisStore::connect(
                &[redis.url().parse().unwrap()],
                false,
                timeout,
                Retention::default(),
            )
            .unwrap(),
        );
        let snap = snapshot();
        let deps = deps(store, at("2024-06-05T10:00:00Z"));
        let closed = request("closed.example", "/items", "192.0.2.70");
        let open = request("open.example", "/items", "192.0.2.70");
        for _ in 0..3 {
            assert!(decide(&snap, &closed, &deps).await.is_allow());
            assert!(decide(&snap, &open, &deps).await.is_allow());
        }
        redis.kill();
        let mut slowest = Duration::ZERO;
        for _ in 0..5 {
            let started = Instant::now();
            let d = decide(&snap, &closed, &deps).await;
            slowest = slowest.max(started.elapsed());
            assert_eq!(reason(&d), Some("store_unavailable"));
            assert_eq!(d.denial().unwrap().reason.http_status(), 503);
            let d = decide(&snap, &open, &deps).await;
            assert!(d.is_allow(), "onStoreError: allow lets it pass");
            assert!(
                d.trace
                    .iter()
                    .any(|s| s.note.contains("onStoreError allow"))
            );
        }
        println!("slowest decision with Redis down: {slowest:?} (store timeout {timeout:?})");
        // A bound against hanging, not a speed assertion: far below
        // Envoy's ext_authz timeout.
        assert!(slowest < Duration::from_secs(1), "{slowest:?}");
        redis.restart();
        let started = Instant::now();
        loop {
            if decide(&snap, &closed, &deps).await.is_allow() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "did not recover"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("allowed again {:?} after the restart", started.elapsed());
    }
}
