//! Quota leases with real processes: three `tollgate serve` binaries
//! sharing one real `redis-server` (or a 3-primary Redis Cluster), driven
//! over gRPC as Envoy drives them. Whatever happens — leases ending and
//! renewed, a quota window ending, a replica killed with SIGKILL while it
//! holds a lease, Redis killed and restarted — the replicas together never
//! admit more than the limit, and with demand above it they admit exactly
//! the limit (less, after a SIGKILL, exactly the units the killed replica
//! held, which the test reads from its metrics before killing it).
//!
//! Counts are asserted, never timings; every wait is bounded and says what
//! it waited for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::check::{Checked, check_on, connect};
use support::redis::{RedisCluster, RedisServer};
use support::tollgate::Tollgate;
use support::wait_for;

const HOST: &str = "leases.example";

/// A quota keyed by the client address (every test request comes from
/// 198.51.100.20, so all replicas count one key), RateLimit headers on.
fn policy(limit: &str) -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: leases, namespace: e2e }}
spec:
  hosts: [{HOST}]
  defaultPlan: p
  plans:
    - name: p
      limits: [{limit}]
  response: {{ rateLimitHeaders: true }}
  onStoreError: deny
"#
    )
}

fn daily(requests: u64) -> String {
    policy(&format!(
        "{{ name: daily, key: ip, quota: {{ requests: {requests}, reset: day }} }}"
    ))
}

/// Three replicas on `redis` (URLs; several mean a Cluster), with
/// `extra` flags.
fn replicas(redis: &[String], extra: &[&str], policy: &str) -> Vec<Tollgate> {
    let mut args: Vec<&str> = Vec::new();
    for url in redis {
        args.extend(["--redis", url.as_str()]);
    }
    args.extend(["--store-timeout", "200ms"]);
    args.extend(extra);
    (0..3)
        .map(|_| Tollgate::start_with(policy, &args))
        .collect()
}

/// Allowed and refused requests, counted across senders.
#[derive(Default)]
struct Tally {
    allowed: AtomicU64,
    refused: AtomicU64,
    unavailable: AtomicU64,
}

impl Tally {
    fn count(&self, checked: &Checked) {
        match checked.outcome() {
            "allow" => &self.allowed,
            "quota_exceeded" => &self.refused,
            "store_unavailable" => &self.unavailable,
            other => panic!("unexpected answer {other}: {checked:?}"),
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    fn allowed(&self) -> u64 {
        self.allowed.load(Ordering::Relaxed)
    }
}

/// Sends `per_replica` requests to each replica, `in_flight` at a time per
/// replica, and counts the answers.
async fn load(
    targets: &[std::net::SocketAddr],
    per_replica: u64,
    in_flight: u64,
    tally: &Arc<Tally>,
) {
    let mut tasks = Vec::new();
    for &addr in targets {
        for worker in 0..in_flight {
            let tally = tally.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = connect(addr).await;
                let mut sent = worker;
                while sent < per_replica {
                    let checked = check_on(&mut client, HOST, "/items", &[]).await;
                    tally.count(&checked);
                    sent += in_flight;
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Units the replica holds in leases (its `tollgate_lease_units_held`,
/// updated every keeper tick).
fn held(tollgate: &Tollgate) -> f64 {
    tollgate.metric("tollgate_lease_units_held", &[])
}

/// Waits until no replica holds leased units: every lease ended and was
/// handed back.
fn wait_drained(replicas: &[&Tollgate]) {
    wait_for(
        "every replica's leases to end and go back",
        Duration::from_secs(20),
        || replicas.iter().all(|t| held(t) == 0.0).then_some(()),
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The value of every quota counter Redis holds (one per window).
fn counters(nodes: &[&RedisServer]) -> Vec<i64> {
    let mut values = Vec::new();
    for node in nodes {
        let mut conn = node.connection();
        let keys: Vec<String> = redis::cmd("KEYS").arg("tg:*:q:*").query(&mut conn).unwrap();
        for key in keys {
            values.push(redis::cmd("GET").arg(&key).query(&mut conn).unwrap());
        }
    }
    values.sort_unstable();
    values
}

/// Within a window and across lease expiry: demand below the limit for a
/// while (leases of 200 ms end, go back and are taken again many times),
/// then far above it. Together the replicas admit exactly the quota; once
/// they stop (SIGTERM: every lease handed back) Redis counts exactly what
/// was admitted. On one Redis and on a Cluster.
#[test]
fn three_replicas_admit_exactly_the_quota() {
    let redis = RedisServer::start();
    exactly_the_quota(&[redis.url()], &[&redis]);
    let cluster = RedisCluster::start(3);
    let nodes: Vec<&RedisServer> = cluster.nodes.iter().collect();
    exactly_the_quota(&cluster.urls(), &nodes);
}

fn exactly_the_quota(redis: &[String], nodes: &[&RedisServer]) {
    let mut servers = replicas(redis, &["--quota-lease-duration", "200ms"], &daily(1_000));
    let targets: Vec<_> = servers.iter().map(Tollgate::grpc_addr).collect();
    let rt = runtime();
    let tally = Arc::new(Tally::default());
    // Below the limit, in rounds spread over more than a second: every
    // request passes.
    for _ in 0..6 {
        rt.block_on(load(&targets, 40, 4, &tally));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(tally.allowed(), 720, "below the limit everything passes");
    let leases = |event| -> f64 {
        servers
            .iter()
            .map(|t| t.metric("tollgate_leases_total", &[("event", event)]))
            .sum()
    };
    let (taken, returned) = (leases("taken") + leases("renewed"), leases("returned"));
    assert!(
        taken >= 6.0 && returned >= 3.0,
        "leases ended, went back and were taken again: {taken} taken, {returned} returned"
    );
    // Far above it.
    rt.block_on(load(&targets, 400, 16, &tally));
    // Whatever slices were still held go back; then nothing more passes.
    let refs: Vec<&Tollgate> = servers.iter().collect();
    wait_drained(&refs);
    rt.block_on(load(&targets, 20, 2, &tally));
    assert_eq!(tally.allowed(), 1_000, "exactly the quota");
    for server in &mut servers {
        assert!(server.terminate().success());
    }
    assert_eq!(
        counters(nodes),
        [1_000],
        "Redis counts exactly what was admitted"
    );
}

/// A replica killed (SIGKILL) while it holds a lease: its unused units are
/// lost — the others admit the quota less exactly those units, never more
/// — and Redis still counts them as used.
#[test]
fn a_replica_killed_holding_a_lease_loses_only_its_units() {
    let redis = RedisServer::start();
    // Leases long enough to be held when the replica dies.
    let mut servers = replicas(
        &[redis.url()],
        &["--quota-lease-duration", "30s"],
        &daily(600),
    );
    let rt = runtime();
    let tally = Arc::new(Tally::default());
    // The victim serves enough to lease, then stops getting traffic.
    let victim = servers[2].grpc_addr();
    rt.block_on(load(&[victim], 40, 4, &tally));
    let lost = wait_for(
        "the victim to report its lease",
        Duration::from_secs(10),
        || {
            let units = held(&servers[2]);
            (units > 0.0).then_some(units as u64)
        },
    );
    assert!(
        lost <= 600 / 8,
        "a slice is at most an eighth of what was left: {lost}"
    );
    servers[2].kill();
    // The survivors: demand far above what is left.
    let survivors = [servers[0].grpc_addr(), servers[1].grpc_addr()];
    rt.block_on(load(&survivors, 500, 16, &tally));
    for server in &mut servers[..2] {
        assert!(server.terminate().success());
    }
    assert_eq!(
        tally.allowed(),
        600 - lost,
        "the quota less exactly what the killed replica held"
    );
    assert_eq!(counters(&[&redis]), [600], "the lost units stay counted");
}

/// A quota window ends while three replicas are busy: each window admits
/// exactly its quota (told apart by the RateLimit header's `t`, the
/// seconds left in the window that admitted the request), and Redis holds
/// one counter per window at exactly the quota. The test waits for a
/// minute's end (at most a minute).
#[test]
fn each_minute_admits_exactly_its_quota() {
    let redis = RedisServer::start();
    let policy = policy("{ name: minute, key: ip, quota: { requests: 150, reset: minute } }");
    let mut servers = replicas(
        &[redis.url()],
        &["--quota-lease-duration", "500ms"],
        &policy,
    );
    let targets: Vec<_> = servers.iter().map(Tollgate::grpc_addr).collect();
    // Start 2 s before a minute ends (a full minute later if that is too
    // close already).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into_minute = now.as_millis() % 60_000;
    let wait = (58_000 + 60_000 - into_minute) % 60_000;
    std::thread::sleep(Duration::from_millis(u64::try_from(wait).unwrap()));
    let rt = runtime();
    let (first, second) = rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let windows = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let mut tasks = Vec::new();
        for &addr in &targets {
            for _ in 0..4 {
                let (stop, windows) = (stop.clone(), windows.clone());
                tasks.push(tokio::spawn(async move {
                    let mut client = connect(addr).await;
                    while !stop.load(Ordering::Relaxed) {
                        let checked = check_on(&mut client, HOST, "/items", &[]).await;
                        if checked.status == 200 {
                            windows[window_of(&checked)].fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }));
            }
        }
        // Two seconds before and three after the minute's end.
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.unwrap();
        }
        (
            windows[0].load(Ordering::Relaxed),
            windows[1].load(Ordering::Relaxed),
        )
    });
    for server in &mut servers {
        assert!(server.terminate().success());
    }
    assert_eq!((first, second), (150, 150), "each window admits its quota");
    assert_eq!(counters(&[&redis]), [150, 150], "one counter per window");
}

/// 0 for a request admitted late in a window (`t` ≤ 30 s left), 1 for one
/// admitted early in the next.
fn window_of(checked: &Checked) -> usize {
    let ratelimit = checked
        .client_headers
        .iter()
        .find(|(name, _)| name == "ratelimit")
        .map(|(_, value)| value.as_str())
        .expect("a RateLimit header");
    let t: u64 = ratelimit
        .rsplit_once(";t=")
        .and_then(|(_, t)| t.parse().ok())
        .unwrap_or_else(|| panic!("no t in {ratelimit:?}"));
    usize::from(t > 30)
}

/// Redis killed while the replicas hold leases: they admit no more than
/// the units they held (read from their metrics), then deny with
/// `store_unavailable` (`onStoreError: deny`) — never an allow beyond what
/// was leased. Redis back (empty): the replicas heal by themselves and the
/// new counter never goes past the quota.
#[test]
fn redis_killed_and_restarted_under_leases() {
    let mut redis = RedisServer::start();
    let mut servers = replicas(
        &[redis.url()],
        &["--quota-lease-duration", "30s"],
        &daily(900),
    );
    let targets: Vec<_> = servers.iter().map(Tollgate::grpc_addr).collect();
    let rt = runtime();
    let before = Arc::new(Tally::default());
    rt.block_on(load(&targets, 60, 4, &before));
    assert_eq!(before.allowed(), 180);
    // The gauge is written at the keeper's ticks (every ≤ 100 ms): a
    // value read while the load ran may predate its last grant, so take
    // one that two reads half a second apart agree on.
    let held: Vec<u64> = servers
        .iter()
        .map(|t| {
            wait_for(
                "a replica to report its lease, settled",
                Duration::from_secs(10),
                || {
                    let first = held(t);
                    std::thread::sleep(Duration::from_millis(500));
                    let units = held(t);
                    (units > 0.0 && units == first).then_some(units as u64)
                },
            )
        })
        .collect();
    redis.kill();
    let during = Arc::new(Tally::default());
    rt.block_on(load(&targets, 150, 4, &during));
    assert!(
        during.allowed() <= held.iter().sum::<u64>(),
        "{} admitted with Redis down, {held:?} held",
        during.allowed()
    );
    assert!(
        during.unavailable.load(Ordering::Relaxed) > 0,
        "then fail closed"
    );
    redis.restart();
    // Healed within the same processes.
    rt.block_on(async {
        for &addr in &targets {
            let mut client = connect(addr).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while check_on(&mut client, HOST, "/items", &[]).await.status != 200 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{addr} did not heal"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let after = Arc::new(Tally::default());
    rt.block_on(load(&targets, 500, 16, &after));
    for server in &mut servers {
        assert!(server.terminate().success());
    }
    let counters = counters(&[&redis]);
    assert_eq!(counters.len(), 1);
    assert!(counters[0] <= 900, "the new counter: {counters:?}");
    assert_eq!(
        counters[0], 900,
        "demand above the quota after the restart reaches it"
    );
}
