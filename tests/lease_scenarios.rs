//! Quota leases against every store: the in-memory store, a real
//! `redis-server` and a real 3-primary Redis Cluster. The Lua scripts must
//! do exactly what `limits::lease` says (a differential run compares every
//! answer with the in-memory store's), and replicas leasing from one Redis
//! — each a `LeasedStore` with its own client, as separate tollgate
//! processes would be — must never admit more than a limit and, with
//! demand above it, reach it: within a window, across a window's end, for
//! a rate over time, and after Redis restarted.
//!
//! Time is injected (`ManualClock`), never slept on; the waits are for
//! processes and are bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/redis.rs"]
mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use redis_support::{RedisCluster, RedisServer};
use tollgate::clock::ManualClock;
use tollgate::limits::admission::{self, Request, Subject};
use tollgate::limits::{Plans, lease};
use tollgate::policy::types::ApiPolicySpec;
use tollgate::store::lease::{LeaseSettings, LeasedStore};
use tollgate::store::{
    Admission, Group, LeaseAsk, LeaseReturn, Leasing, LimitOp, LimitState, MemoryStore, Outcome,
    RedisStore, RedisUrl, Retention, Rule, SettleGroup, Settlement, Store, Unused, UsageCount,
    UsageQuery, Verdict, keys,
};

const MS: u64 = 1_000;
const SECOND: u64 = 1_000_000;

fn at(instant: &str) -> u64 {
    u64::try_from(instant.parse::<Timestamp>().unwrap().as_microsecond()).unwrap()
}

fn plans(yaml: &str) -> Plans {
    let value: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    let spec: ApiPolicySpec = serde_json::from_value(value).unwrap();
    Plans::compile(&spec).unwrap()
}

fn redis_store(urls: &[String], cluster: bool) -> Arc<dyn Store> {
    let urls: Vec<RedisUrl> = urls.iter().map(|u| u.parse().unwrap()).collect();
    Arc::new(
        RedisStore::connect(&urls, cluster, Duration::from_secs(2), Retention::default()).unwrap(),
    )
}

/// A store, and a way to make another client of it (another replica).
struct Backend {
    name: &'static str,
    store: Arc<dyn Store>,
    client: Box<dyn Fn() -> Arc<dyn Store>>,
}

// ------------------------------------------------------------ store level

/// One limit op under `app`'s tag, as the lease layer sends it.
fn op(app: &str, name: &str, rule: Rule, cost: u64, lease: Option<LeaseAsk>) -> (String, LimitOp) {
    let tag = keys::app_tag(app);
    let key = match rule {
        Rule::Rate { .. } => keys::rate(&tag, "t/leases", "p", name, None),
        Rule::Quota { window_end_us, .. } => {
            keys::quota(&tag, "t/leases", "p", name, window_end_us / SECOND, None)
        }
    };
    (
        tag,
        LimitOp {
            key,
            cost,
            rule,
            lease,
        },
    )
}

fn admission(now_us: u64, ops: Vec<(String, LimitOp)>) -> Admission {
    let mut groups: Vec<Group> = Vec::new();
    for (tag, op) in ops {
        match groups.iter_mut().find(|g| g.tag == tag) {
            Some(group) => group.limits.push(op),
            None => groups.push(Group {
                tag,
                limits: vec![op],
                ..Group::default()
            }),
        }
    }
    Admission {
        now_us,
        groups,
        ..Admission::default()
    }
}

fn states(outcome: &Outcome) -> Vec<LimitState> {
    outcome.limits.iter().flatten().copied().collect()
}

fn quota(limit: u64, window_end_us: u64) -> Rule {
    Rule::Quota {
        limit,
        window_end_us,
        expire_at_us: window_end_us + 60 * SECOND,
    }
}

fn ask(want: u64, ends_at_us: u64, previous: Option<Unused>) -> Option<LeaseAsk> {
    Some(LeaseAsk {
        want,
        ends_at_us,
        previous,
    })
}

/// A quota grant reserves an eighth of what is left at most; a renewal
/// returns the previous lease's unused units first; a settlement returns
/// units to the store that granted them — not to a store with another
/// epoch — and the counter then holds exactly what was used.
async fn quota_slices_and_returns(store: &dyn Store, app: &str) {
    let now = at("2024-07-01T10:00:00Z");
    let end = at("2024-07-02T00:00:00Z");
    let (tag, first) = op(
        app,
        "daily",
        quota(100, end),
        1,
        ask(20, now + SECOND, None),
    );
    let out = store
        .admit(&admission(now, vec![(tag.clone(), first)]))
        .await
        .unwrap();
    assert_eq!(out.verdict, Verdict::Admitted);
    let s = states(&out)[0];
    assert_eq!(
        (s.remaining, s.reset_us),
        (99, end - now),
        "a single request's view"
    );
    let g = s.lease.expect("a slice");
    assert_eq!(
        (g.units, g.base, g.top),
        (12, 0, 12),
        "100 / 8, capped by want 20"
    );
    // Renewed with 5 of the 12 unused: 7 counted, then a slice of 93 / 8.
    let prev = Unused::Quota {
        units: 5,
        epoch: g.epoch,
    };
    let (_, renew) = op(
        app,
        "daily",
        quota(100, end),
        1,
        ask(20, now + SECOND, Some(prev)),
    );
    let out = store
        .admit(&admission(now, vec![(tag.clone(), renew)]))
        .await
        .unwrap();
    let g2 = states(&out)[0].lease.expect("a slice");
    assert_eq!((g2.units, g2.base, g2.top), (11, 7, 18));
    assert_eq!(g2.epoch, g.epoch);
    // Returned: 4 of the 11 used. A return stamped with another epoch (a
    // restarted Redis) is ignored.
    let (_, read) = op(app, "daily", quota(100, end), 0, None);
    let settle = |epoch, id: &str| Settlement {
        now_us: now,
        id: id.into(),
        groups: vec![SettleGroup {
            tag: tag.clone(),
            returns: vec![LeaseReturn {
                key: read.key.clone(),
                unused: Unused::Quota { units: 7, epoch },
            }],
            usage: Vec::new(),
        }],
    };
    store
        .settle(&settle(g.epoch ^ 1, "other-epoch"))
        .await
        .unwrap();
    let count = |out: Outcome| 100 - states(&out)[0].remaining;
    let out = store
        .admit(&admission(now, vec![(tag.clone(), read.clone())]))
        .await
        .unwrap();
    assert_eq!(
        count(out),
        18,
        "nothing went back to another epoch's counter"
    );
    store.settle(&settle(g.epoch, "same-epoch")).await.unwrap();
    let out = store
        .admit(&admission(now, vec![(tag.clone(), read.clone())]))
        .await
        .unwrap();
    assert_eq!(count(out), 11, "7 + 4 used");
}

/// A rate grant charges its slice at the lease's end; a return undoes the
/// unused part while nothing was charged on top, and does nothing after.
async fn rate_slices_charge_at_the_end(store: &dyn Store, app: &str) {
    let now = at("2024-07-01T10:00:00Z");
    // 1000 per second, burst 1000: T = 1 ms; leases of 125 ms.
    let rule = Rule::Rate {
        interval_us: MS,
        burst: 1000,
    };
    let lease_us = lease::rate_lease_us(MS, 1000, SECOND).unwrap();
    assert_eq!(lease_us, 125 * MS);
    let (tag, first) = op(app, "ps", rule, 1, ask(50, now + lease_us, None));
    let out = store
        .admit(&admission(now, vec![(tag.clone(), first)]))
        .await
        .unwrap();
    let s = states(&out)[0];
    assert_eq!(
        (s.remaining, s.reset_us),
        (999, MS),
        "a single request's view"
    );
    let g = s.lease.expect("a slice");
    assert_eq!((g.units, g.base), (50, 0));
    assert_eq!(
        g.top,
        now + lease_us + 50 * MS,
        "charged at the lease's end"
    );
    // A cost-0 request reads the TAT (reset = TAT − now); a single request
    // sees the slice and the rest of the lease used.
    let (_, peek) = op(app, "ps", rule, 0, None);
    let tat = async |now_us| {
        let out = store
            .admit(&admission(now_us, vec![(tag.clone(), peek.clone())]))
            .await
            .unwrap();
        now_us + states(&out)[0].reset_us
    };
    assert_eq!(tat(now).await, g.top);
    let returned = |g: tollgate::store::Granted, used, now_us, id: &str| Settlement {
        now_us,
        id: id.into(),
        groups: vec![SettleGroup {
            tag: tag.clone(),
            returns: vec![LeaseReturn {
                key: peek.key.clone(),
                unused: Unused::Rate {
                    interval_us: MS,
                    top: g.top,
                    base: g.base,
                    used,
                },
            }],
            usage: Vec::new(),
        }],
    };
    // Returned 10 ms later with 10 used: charged as a lease ending then.
    let later = now + 10 * MS;
    store.settle(&returned(g, 10, later, "kept")).await.unwrap();
    assert_eq!(tat(later).await, later + 10 * MS);
    // A second grant, then a single request on top of it: the grant's
    // return finds another TAT and changes nothing.
    let (_, second) = op(app, "ps", rule, 1, ask(50, later + lease_us, None));
    let out = store
        .admit(&admission(later, vec![(tag.clone(), second)]))
        .await
        .unwrap();
    let g2 = states(&out)[0].lease.expect("a slice");
    assert_eq!(g2.top, later + lease_us + 50 * MS);
    let (_, single) = op(app, "ps", rule, 1, None);
    let out = store
        .admit(&admission(later, vec![(tag.clone(), single)]))
        .await
        .unwrap();
    assert_eq!(states(&out)[0].remaining, 1000 - 125 - 50 - 1);
    store
        .settle(&returned(g2, 1, later, "moved"))
        .await
        .unwrap();
    assert_eq!(tat(later).await, g2.top + MS, "unchanged");
}

/// A grant in a request another limit denies writes nothing: no slice,
/// the counter unchanged, the previous lease not returned (the lease
/// layer sends it on).
async fn a_denied_request_reserves_nothing(store: &dyn Store, app: &str) {
    let now = at("2024-07-01T11:00:00Z");
    let end = at("2024-07-02T00:00:00Z");
    let (tag, full) = op(app, "tiny", quota(1, end), 1, None);
    store
        .admit(&admission(now, vec![(tag.clone(), full.clone())]))
        .await
        .unwrap();
    let prev = Unused::Quota { units: 3, epoch: 0 };
    let (_, grant) = op(
        app,
        "daily",
        quota(100, end),
        1,
        ask(20, now + SECOND, Some(prev)),
    );
    let out = store
        .admit(&admission(
            now,
            vec![(tag.clone(), grant), (tag.clone(), full)],
        ))
        .await
        .unwrap();
    assert_eq!(out.verdict, Verdict::Exceeded);
    let s = states(&out);
    assert!(s[0].allowed && s[0].lease.is_none(), "{s:?}");
    let (_, read) = op(app, "daily", quota(100, end), 0, None);
    let out = store
        .admit(&admission(now, vec![(tag, read)]))
        .await
        .unwrap();
    assert_eq!(states(&out)[0].remaining, 100);
}

/// A settlement is applied once per id: the lease layer resends a failed
/// one with the same id, and a client library may resend a call.
async fn a_settlement_is_applied_once(store: &dyn Store, app: &str) {
    let now = at("2024-07-03T10:00:00Z");
    let tag = keys::app_tag(app);
    let usage = |id: &str| Settlement {
        now_us: now,
        id: id.into(),
        groups: vec![SettleGroup {
            tag: tag.clone(),
            returns: Vec::new(),
            usage: vec![UsageCount {
                key: keys::usage_app(&tag, "2024-07-03"),
                requests: 5,
                cost: 7,
                expire_at_s: now / SECOND + 86_400,
            }],
        }],
    };
    store.settle(&usage("first")).await.unwrap();
    store.settle(&usage("first")).await.unwrap();
    store.settle(&usage("second")).await.unwrap();
    let rows = store
        .usage(&UsageQuery {
            app: Some(app.into()),
            from: "2024-07-03".into(),
            to: "2024-07-03".into(),
            users: false,
        })
        .await
        .unwrap();
    assert_eq!((rows[0].requests, rows[0].cost), (10, 14));
}

async fn store_suite(backend: &Backend) {
    let name = backend.name;
    let store = backend.store.as_ref();
    quota_slices_and_returns(store, &format!("{name}-quota")).await;
    rate_slices_charge_at_the_end(store, &format!("{name}-rate")).await;
    a_denied_request_reserves_nothing(store, &format!("{name}-denied")).await;
    a_settlement_is_applied_once(store, &format!("{name}-once")).await;
}

// ------------------------------------------------------- the lease layer

fn leased(store: Arc<dyn Store>, now: u64, hot_after: u32) -> (Arc<LeasedStore>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(Duration::from_micros(now)));
    // Waits for a grant in flight as long as the store may take, as
    // `serve` sets it (the store timeout).
    let settings = LeaseSettings {
        hot_after,
        wait: Duration::from_secs(2),
        ..LeaseSettings::default()
    };
    (
        Arc::new(LeasedStore::new(store, clock.clone(), settings)),
        clock,
    )
}

fn request(plans: &Plans, app: &str, now_us: u64) -> Admission {
    admission::build(&Request {
        policy: "t/leases",
        plan: plans.get("p"),
        subject: Subject {
            app: Some(app),
            ..Subject::default()
        },
        cost: 1,
        nonces: &[],
        now_us,
        retention: Retention::default(),
        leasing: Leasing::Auto,
    })
    .unwrap()
    .admission
}

/// The quota's counter and the app's usage, read without leases.
async fn counted(store: &dyn Store, plans: &Plans, app: &str, now_us: u64) -> (u64, u64) {
    let mut read = request(plans, app, now_us);
    read.leasing = Leasing::Off;
    let limit = match read.groups[0].limits[0].rule {
        Rule::Quota { limit, .. } => limit,
        Rule::Rate { .. } => unreachable!("a quota plan"),
    };
    read.groups[0].limits[0].cost = 0;
    read.groups[0].usage.clear();
    let out = store.admit(&read).await.unwrap();
    let day = admission::utc_day(now_us).unwrap().0;
    let rows = store
        .usage(&UsageQuery {
            app: Some(app.into()),
            from: day.clone(),
            to: day,
            users: false,
        })
        .await
        .unwrap();
    (
        limit - states(&out)[0].remaining,
        rows.first().map_or(0, |r| r.requests),
    )
}

/// Three replicas, each its own client of the store, 900 concurrent
/// requests against a quota of 300: exactly 300 pass, and once every
/// lease is back the store counts 300 and meters 300.
async fn replicas_reach_the_quota_exactly(backend: &Backend, app: &str) {
    let now = at("2024-07-04T10:00:00Z");
    let p = Arc::new(plans(
        "plans: [{name: p, limits: [{name: daily, key: app, quota: {requests: 300, reset: day}}]}]",
    ));
    let replicas: Vec<_> = (0..3)
        .map(|_| leased((backend.client)(), now, 2).0)
        .collect();
    let mut tasks = Vec::new();
    for i in 0..900 {
        let (replica, p, app) = (replicas[i % 3].clone(), p.clone(), app.to_owned());
        tasks.push(tokio::spawn(async move {
            let out = replica.admit(&request(&p, &app, now)).await.unwrap();
            out.verdict == Verdict::Admitted
        }));
    }
    let mut allowed = 0;
    for task in tasks {
        allowed += u64::from(task.await.unwrap());
    }
    assert_eq!(allowed, 300, "{}: exactly the quota", backend.name);
    for replica in &replicas {
        replica.settle_all().await;
    }
    assert_eq!(
        counted(backend.store.as_ref(), &p, app, now).await,
        (300, 300),
        "{}: counted and metered exactly",
        backend.name
    );
}

/// A rate served by three replicas for ten (injected) seconds with demand
/// twelve times the rate: every window obeys GCRA's bound, and the rate is
/// reached — after the first burst, one request per interval.
async fn replicas_hold_a_rate(backend: &Backend, app: &str) {
    let start = at("2024-07-05T10:00:00Z");
    // 100 per second, burst 100: T = 10 ms; leases of 125 ms.
    let p = plans(
        "plans: [{name: p, limits: [{name: ps, key: app, rate: {requests: 100, period: 1s, burst: 100}}]}]",
    );
    let replicas: Vec<_> = (0..3)
        .map(|_| leased((backend.client)(), start, 2))
        .collect();
    let step = 5 * MS;
    let mut admitted: Vec<u64> = Vec::new();
    for i in 0..2_000u64 {
        let now = start + i * step;
        for (replica, clock) in &replicas {
            clock.set(Duration::from_micros(now));
            for _ in 0..2 {
                if replica.admit(&request(&p, app, now)).await.unwrap().verdict == Verdict::Admitted
                {
                    admitted.push(now);
                }
            }
        }
        if i % 20 == 0 {
            for (replica, _) in &replicas {
                replica.settle_due().await;
            }
        }
    }
    // GCRA's bound on every window (all clocks agree here).
    for (i, &from) in admitted.iter().enumerate() {
        for (n, &to) in admitted[i..].iter().enumerate() {
            assert!(
                (n as u64 + 1) * 10 * MS <= to - from + SECOND,
                "{}: {} requests in {} µs",
                backend.name,
                n + 1,
                to - from
            );
        }
    }
    // Reached: the last 9 seconds admit their 900.
    let late = admitted.iter().filter(|&&t| t >= start + SECOND).count();
    assert!(
        late >= 899,
        "{}: {late} admitted in the last 9 s, the rate allows 900",
        backend.name
    );
}

/// A minute quota across the minute's end, three replicas with demand in
/// both windows: each window admits exactly its quota, counted in its own
/// counter — no unit leased in the first window is used in the second.
async fn each_window_admits_its_quota(backend: &Backend, app: &str) {
    let start = at("2024-07-08T10:00:58Z");
    let boundary = at("2024-07-08T10:01:00Z");
    let p = plans(
        "plans: [{name: p, limits: [{name: minute, key: app, quota: {requests: 100, reset: minute}}]}]",
    );
    let replicas: Vec<_> = (0..3)
        .map(|_| leased((backend.client)(), start, 2))
        .collect();
    let (mut first, mut second) = (0, 0);
    for i in 0..400u64 {
        let now = start + i * 10 * MS;
        for (replica, clock) in &replicas {
            clock.set(Duration::from_micros(now));
            for _ in 0..2 {
                let out = replica.admit(&request(&p, app, now)).await.unwrap();
                if out.verdict == Verdict::Admitted {
                    *(if now < boundary {
                        &mut first
                    } else {
                        &mut second
                    }) += 1;
                }
            }
        }
    }
    assert_eq!((first, second), (100, 100), "{}", backend.name);
    for (replica, _) in &replicas {
        replica.settle_all().await;
    }
    for window in [start, boundary] {
        assert_eq!(
            counted(backend.store.as_ref(), &p, app, window).await.0,
            100,
            "{}: the counter of the window at {window}",
            backend.name
        );
    }
}

async fn leased_suite(backend: &Backend) {
    let name = backend.name;
    replicas_reach_the_quota_exactly(backend, &format!("{name}-exact")).await;
    replicas_hold_a_rate(backend, &format!("{name}-rate")).await;
    each_window_admits_its_quota(backend, &format!("{name}-window")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_in_memory() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let shared = store.clone();
    let backend = Backend {
        name: "memory",
        store,
        client: Box::new(move || shared.clone()),
    };
    store_suite(&backend).await;
    leased_suite(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_on_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let backend = Backend {
        name: "redis",
        store: redis_store(std::slice::from_ref(&url), false),
        client: Box::new(move || redis_store(std::slice::from_ref(&url), false)),
    };
    store_suite(&backend).await;
    leased_suite(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_on_redis_cluster() {
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    let backend = Backend {
        name: "cluster",
        store: redis_store(&urls, true),
        client: Box::new(move || redis_store(&urls, true)),
    };
    store_suite(&backend).await;
    leased_suite(&backend).await;
}

/// Redis restarted without its data while a replica held a lease: during
/// the outage the replica admits no more than the units it held; after
/// it, the old lease's unused units are not taken off the new counter
/// (another epoch), and the new counter counts exactly what it granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_never_corrupts_new_counters() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let client = || -> Arc<dyn Store> {
        let urls = [url.parse::<RedisUrl>().unwrap()];
        Arc::new(
            RedisStore::connect(
                &urls,
                false,
                Duration::from_millis(200),
                Retention::default(),
            )
            .unwrap(),
        )
    };
    let now = at("2024-07-09T10:00:00Z");
    let p = plans(
        "plans: [{name: p, limits: [{name: daily, key: app, quota: {requests: 1000, reset: day}}]}]",
    );
    let (a, _) = leased(client(), now, 4);
    let (b, _) = leased(client(), now, 4);
    let send = async |replica: &LeasedStore| replica.admit(&request(&p, "restart", now)).await;
    // Hot after four requests: the fourth takes a slice of eight.
    for _ in 0..4 {
        assert_eq!(send(&a).await.unwrap().verdict, Verdict::Admitted);
    }
    assert_eq!(a.held(), (1, 7));
    redis.kill();
    // Down: one unit from the lease, then errors once B has nothing.
    assert_eq!(send(&a).await.unwrap().verdict, Verdict::Admitted);
    assert!(send(&b).await.is_err(), "nothing leased: the store's error");
    redis.restart();
    // B leases from the new, empty counter once Redis is back.
    let mut after = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while after < 20 {
        match send(&b).await {
            Ok(out) if out.verdict == Verdict::Admitted => after += 1,
            Ok(out) => panic!("{out:?}"),
            Err(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "Redis did not come back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    b.settle_all().await;
    let store = client();
    assert_eq!(counted(store.as_ref(), &p, "restart", now).await.0, 20);
    // A hands its lease back (its client reconnects first): granted by the
    // old Redis, its units are not taken off the new counter.
    let mut waiting = a.settle_all().await;
    while waiting > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "A's settlement never went through"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waiting = a.settle_due().await;
    }
    assert_eq!(counted(store.as_ref(), &p, "restart", now).await.0, 20);
}

/// The scripts against `limits::lease`: the same pseudo-random run of
/// grants (with and without a previous lease), single requests and
/// returns, on a rate and a quota, answered by the in-memory store (which
/// calls `limits::lease`) and by Redis — every state equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripts_do_what_limits_lease_says() {
    let redis = RedisServer::start();
    let stores: [Arc<dyn Store>; 2] = [
        Arc::new(MemoryStore::new()),
        redis_store(&[redis.url()], false),
    ];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let start = at("2024-07-06T10:00:00Z");
    let end = at("2024-07-07T00:00:00Z");
    let rate = Rule::Rate {
        interval_us: 2 * MS,
        burst: 60,
    };
    // Per store: the last grant on each limit (a previous lease to return).
    let mut last: [[Option<Unused>; 2]; 2] = [[None; 2]; 2];
    let mut now = start;
    for step in 0..600 {
        now += next(8) * MS;
        let which = usize::from(next(2) == 0);
        let cost = 1 + next(3);
        let want = next(40);
        let lease = next(4) != 0;
        let with_previous = next(2) == 0;
        let returning = next(10) == 0;
        let used_share = next(1001);
        let mut answers = Vec::new();
        for (s, store) in stores.iter().enumerate() {
            let rule = if which == 0 { rate } else { quota(150, end) };
            let previous = if with_previous {
                last[s][which].take()
            } else {
                None
            };
            let ask = lease.then_some(LeaseAsk {
                want,
                ends_at_us: now + 15 * MS,
                previous,
            });
            let (tag, op) = op("diff", if which == 0 { "r" } else { "q" }, rule, cost, ask);
            if returning && let Some(unused) = last[s][which].take() {
                let settlement = Settlement {
                    now_us: now,
                    id: format!("s{step}"),
                    groups: vec![SettleGroup {
                        tag: tag.clone(),
                        returns: vec![LeaseReturn {
                            key: op.key.clone(),
                            unused,
                        }],
                        usage: Vec::new(),
                    }],
                };
                store.settle(&settlement).await.unwrap();
            }
            let out = store.admit(&admission(now, vec![(tag, op)])).await.unwrap();
            let mut state = states(&out)[0];
            if let Some(g) = state.lease.as_mut() {
                last[s][which] = Some(match rule {
                    Rule::Rate { interval_us, .. } => Unused::Rate {
                        interval_us,
                        top: g.top,
                        base: g.base,
                        used: g.units * used_share / 1000,
                    },
                    Rule::Quota { .. } => Unused::Quota {
                        units: g.units - cost,
                        epoch: g.epoch,
                    },
                });
                // Each store has its own epoch.
                g.epoch = 0;
            }
            answers.push((out.verdict, state));
        }
        assert_eq!(answers[0], answers[1], "step {step}: memory vs Redis");
    }
}
