//! The lease layer over the in-memory store: when it leases and when it
//! does not, that all limits of a request pass or none is consumed, that
//! replicas sharing a store never admit more than a limit and reach it,
//! what a store failure does, the bounds, and what goes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::limits::Plans;
use crate::limits::admission::{self, Request, Subject};
use crate::policy::types::ApiPolicySpec;
use crate::store::{MemoryStore, Verdict};

const SECOND: u64 = 1_000_000;
/// 2024-05-09T08:00:00Z.
const T0: u64 = 1_715_241_600 * SECOND;

fn plans(yaml: &str) -> Plans {
    let value: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    let spec: ApiPolicySpec = serde_json::from_value(value).unwrap();
    Plans::compile(&spec).unwrap()
}

/// The in-memory store, counting the calls that reach it; it fails every
/// call while `down` is set.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryStore,
    admits: AtomicU64,
    settles: AtomicU64,
    down: AtomicBool,
}

impl Store for Counting {
    fn kind(&self) -> &'static str {
        "counting"
    }

    fn admit<'a>(&'a self, admission: &'a Admission) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        self.admits.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            return Box::pin(async { Err(StoreError::Unavailable("down".into())) });
        }
        self.inner.admit(admission)
    }

    fn settle<'a>(&'a self, settlement: &'a Settlement) -> BoxFuture<'a, Result<(), StoreError>> {
        self.settles.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            return Box::pin(async { Err(StoreError::Unavailable("down".into())) });
        }
        self.inner.settle(settlement)
    }

    fn usage<'a>(
        &'a self,
        query: &'a UsageQuery,
    ) -> BoxFuture<'a, Result<Vec<UsageRow>, StoreError>> {
        self.inner.usage(query)
    }
}

struct Replica {
    store: LeasedStore,
    clock: Arc<ManualClock>,
}

fn replica(inner: &Arc<Counting>, settings: LeaseSettings) -> Replica {
    let clock = Arc::new(ManualClock::new(Duration::from_micros(T0)));
    Replica {
        store: LeasedStore::new(inner.clone(), clock.clone(), settings),
        clock,
    }
}

fn settings(hot_after: u32) -> LeaseSettings {
    LeaseSettings {
        hot_after,
        ..LeaseSettings::default()
    }
}

impl Replica {
    fn now(&self) -> u64 {
        admission::now_us(self.clock.now())
    }

    /// One request of app `app` (and client address `ip`) against plan `p`.
    async fn send(&self, plans: &Plans, app: &str, ip: &str) -> Outcome {
        let admission = request(plans, app, Some(ip), 1, self.now(), Leasing::Auto);
        self.store.admit(&admission).await.unwrap()
    }
}

/// The admission of one request of `app` (from `ip`) against plan `p`.
fn request(
    plans: &Plans,
    app: &str,
    ip: Option<&str>,
    cost: u64,
    now_us: u64,
    leasing: Leasing,
) -> Admission {
    admission::build(&Request {
        policy: "t/leases",
        plan: plans.get("p"),
        subject: Subject {
            app: Some(app),
            ip: ip.map(|ip| ip.parse().unwrap()),
            ..Subject::default()
        },
        cost,
        nonces: &[],
        now_us,
        retention: Retention::default(),
        leasing,
    })
    .unwrap()
    .admission
}

/// The quota counter and usage the store holds for `app` on T0's day.
async fn state(inner: &Counting, app: &str) -> (u64, u64) {
    let p = plans(
        "plans: [{name: p, limits: [{name: daily, quota: {requests: 1000000, reset: day}}]}]",
    );
    // A cost-0 request reads the counter without moving it.
    let mut admission = request(&p, app, None, 0, T0, Leasing::Off);
    admission.groups[0].usage.clear();
    let outcome = inner.inner.admit(&admission).await.unwrap();
    let used = 1_000_000 - outcome.limits[0][0].remaining;
    let rows = inner
        .usage(&UsageQuery {
            app: Some(app.into()),
            from: "2024-05-09".into(),
            to: "2024-05-09".into(),
            users: false,
        })
        .await
        .unwrap();
    (used, rows.first().map_or(0, |r| r.requests))
}

const DAILY: &str =
    "plans: [{name: p, limits: [{name: daily, key: app, quota: {requests: 1000000, reset: day}}]}]";

#[tokio::test]
async fn a_key_is_leased_once_hot_and_then_admitted_without_store_calls() {
    let inner = Arc::new(Counting::default());
    let r = replica(&inner, settings(4));
    let p = plans(DAILY);
    for i in 1..=3 {
        assert_eq!(
            r.send(&p, "hot", "192.0.2.1").await.verdict,
            Verdict::Admitted
        );
        assert_eq!(
            inner.admits.load(Ordering::Relaxed),
            i,
            "cold: one call each"
        );
    }
    // The 4th turns it hot: a grant, in the request's own call.
    r.send(&p, "hot", "192.0.2.1").await;
    assert_eq!(inner.admits.load(Ordering::Relaxed), 4);
    let (leases, units) = r.store.held();
    assert_eq!(leases, 1);
    assert!(units > 0, "a slice beyond the request's unit");
    for _ in 0..units {
        assert_eq!(
            r.send(&p, "hot", "192.0.2.1").await.verdict,
            Verdict::Admitted
        );
    }
    assert_eq!(
        inner.admits.load(Ordering::Relaxed),
        4,
        "all from the lease"
    );
    assert_eq!(r.store.held(), (1, 0));
    // Spent: the next request renews, sized by the demand seen.
    r.send(&p, "hot", "192.0.2.1").await;
    assert_eq!(inner.admits.load(Ordering::Relaxed), 5);
    assert!(r.store.held().1 > units, "a bigger slice for a busy key");
    // What the store counts once everything went back: exactly the
    // requests admitted, and their usage.
    let admitted = 4 + units + 1;
    r.store.settle_all().await;
    assert_eq!(state(&inner, "hot").await, (admitted, admitted));
}

/// A request whose leased limit passes locally but whose per-request limit
/// (a cold key) denies is denied, and the leased unit goes back into the
/// slice: all limits pass or none is consumed.
#[tokio::test]
async fn a_denial_elsewhere_gives_the_local_unit_back() {
    let inner = Arc::new(Counting::default());
    let r = replica(&inner, settings(1));
    let p = plans(
        "plans: [{name: p, limits: [
            {name: daily, key: app, quota: {requests: 1000, reset: day}},
            {name: per-ip, key: ip, quota: {requests: 1, reset: day}}]}]",
    );
    // Both keys lease at once (hot after one request); the ip quota of 1
    // gives a slice of exactly its one unit.
    assert_eq!(
        r.send(&p, "mixed", "192.0.2.9").await.verdict,
        Verdict::Admitted
    );
    let (_, held) = r.store.held();
    let out = r.send(&p, "mixed", "192.0.2.9").await;
    assert_eq!(out.verdict, Verdict::Exceeded);
    assert_eq!(r.store.held().1, held, "the app's unit was given back");
    // Another address passes and uses the app's slice.
    assert_eq!(
        r.send(&p, "mixed", "192.0.2.10").await.verdict,
        Verdict::Admitted
    );
    r.store.settle_all().await;
    assert_eq!(
        state(&inner, "mixed").await,
        (2, 2),
        "the denied request is neither counted nor metered"
    );
}

/// Three replicas on one store, 600 concurrent requests against a quota of
/// 250: exactly 250 pass (the limit is never exceeded and, with demand
/// above it, reached), and once the leases are back the counter is 250.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_admit_exactly_the_quota() {
    let inner = Arc::new(Counting::default());
    let replicas: Vec<Arc<Replica>> = (0..3)
        .map(|_| Arc::new(replica(&inner, settings(2))))
        .collect();
    let p = Arc::new(plans(
        "plans: [{name: p, limits: [{name: daily, key: app, quota: {requests: 250, reset: day}}]}]",
    ));
    let mut tasks = Vec::new();
    for i in 0..600 {
        let r = replicas[i % 3].clone();
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            r.send(&p, "exact", "192.0.2.1").await.verdict == Verdict::Admitted
        }));
    }
    let mut allowed = 0;
    for task in tasks {
        allowed += u64::from(task.await.unwrap());
    }
    // Every replica kept demand to the end, so no slice was left unused.
    assert_eq!(allowed, 250);
    for r in &replicas {
        r.store.settle_all().await;
    }
    assert_eq!(state(&inner, "exact").await, (250, 250));
}

/// The store down: units already leased still admit (they were reserved),
/// nothing more — the next grant is an error the pipeline maps to
/// `onStoreError`. Back up, leasing resumes, and a settlement that failed
/// meanwhile is sent again.
#[tokio::test]
async fn a_store_outage_admits_no_more_than_the_units_leased() {
    let inner = Arc::new(Counting::default());
    let r = replica(&inner, settings(1));
    let p = plans(DAILY);
    r.send(&p, "outage", "192.0.2.1").await;
    let (_, units) = r.store.held();
    assert!(units > 0);
    inner.down.store(true, Ordering::Relaxed);
    let built = |now_us| request(&p, "outage", None, 1, now_us, Leasing::Auto);
    let mut admitted = 0;
    for _ in 0..units + 5 {
        match r.store.admit(&built(r.now())).await {
            Ok(out) if out.verdict == Verdict::Admitted => admitted += 1,
            Ok(out) => panic!("{out:?}"),
            Err(_) => {}
        }
    }
    assert_eq!(admitted, units, "exactly the units already leased");
    // Usage counted meanwhile cannot be flushed; it waits.
    r.store.settle_all().await;
    inner.down.store(false, Ordering::Relaxed);
    r.store.settle_due().await;
    assert_eq!(state(&inner, "outage").await.1, 1 + units);
}

/// No more leases than `max_leases`: further hot keys stay per request.
#[tokio::test]
async fn leases_are_bounded() {
    let inner = Arc::new(Counting::default());
    let r = replica(
        &inner,
        LeaseSettings {
            max_leases: 3,
            hot_after: 1,
            ..LeaseSettings::default()
        },
    );
    let p = plans(DAILY);
    for app in 0..20 {
        r.send(&p, &format!("app-{app}"), "192.0.2.1").await;
    }
    assert_eq!(r.store.held().0, 3);
    // Keys beyond the bound are checked in the store, every time.
    let before = inner.admits.load(Ordering::Relaxed);
    r.send(&p, "app-19", "192.0.2.1").await;
    assert_eq!(inner.admits.load(Ordering::Relaxed), before + 1);
}

/// A quota lease ends with its window: the last request of a day and the
/// first of the next count in their own windows, and a lease taken just
/// before midnight is never used after it.
#[tokio::test]
async fn a_quota_lease_never_outlives_its_window() {
    let inner = Arc::new(Counting::default());
    let r = replica(&inner, settings(1));
    let p = plans(
        "plans: [{name: p, limits: [{name: daily, key: app, quota: {requests: 50, reset: day}}]}]",
    );
    // 0.5 s before midnight: a lease of at most 0.5 s.
    r.clock
        .set(Duration::from_micros(T0 + 16 * 3600 * SECOND - SECOND / 2));
    assert_eq!(
        r.send(&p, "edge", "192.0.2.1").await.verdict,
        Verdict::Admitted
    );
    let (_, units) = r.store.held();
    assert!(units > 0);
    // Midnight: the old day's lease is not used, the new day leases anew.
    r.clock.advance(Duration::from_secs(1));
    let calls = inner.admits.load(Ordering::Relaxed);
    assert_eq!(
        r.send(&p, "edge", "192.0.2.1").await.verdict,
        Verdict::Admitted
    );
    assert_eq!(
        inner.admits.load(Ordering::Relaxed),
        calls + 1,
        "a new window's key"
    );
    // Each day admits at most 50, however the leases fall.
    let mut second_day = 1;
    while r.send(&p, "edge", "192.0.2.1").await.verdict == Verdict::Admitted {
        second_day += 1;
    }
    assert_eq!(second_day, 50);
}

/// A wall clock set back does not stretch a lease (its end is monotonic),
/// and no clock lets a replica use more units than it was granted.
#[tokio::test(start_paused = true)]
async fn clock_jumps_never_stretch_a_lease() {
    let inner = Arc::new(Counting::default());
    let r = replica(&inner, settings(1));
    let p = plans(DAILY);
    r.send(&p, "jump", "192.0.2.1").await;
    let (_, units) = r.store.held();
    let calls = inner.admits.load(Ordering::Relaxed);
    // The wall clock goes back an hour: the lease still holds its units
    // and no more.
    r.clock.set(Duration::from_micros(T0 - 3600 * SECOND));
    for _ in 0..units {
        r.send(&p, "jump", "192.0.2.1").await;
    }
    assert_eq!(inner.admits.load(Ordering::Relaxed), calls);
    r.send(&p, "jump", "192.0.2.1").await;
    assert_eq!(
        inner.admits.load(Ordering::Relaxed),
        calls + 1,
        "spent: a grant"
    );
    // Monotonic time passes the lease's end: the next request renews, even
    // with units left and the wall clock stopped.
    let (_, left) = r.store.held();
    assert!(left > 0);
    tokio::time::advance(Duration::from_secs(2)).await;
    r.send(&p, "jump", "192.0.2.1").await;
    assert_eq!(inner.admits.load(Ordering::Relaxed), calls + 2);
}

/// A wall clock jumping forward past a lease's end stops the lease at
/// once (monotonic time has not reached its deadline): the next request
/// asks the store for a new grant instead of using the old units late, the
/// old lease's unused units go back, and the store ends up counting
/// exactly what was admitted.
#[tokio::test(start_paused = true)]
async fn a_forward_clock_jump_ends_a_lease() {
    let inner = Arc::new(Counting::default());
    let r = replica(&inner, settings(1));
    let p = plans(DAILY);
    r.send(&p, "ahead", "192.0.2.1").await;
    let (_, units) = r.store.held();
    // Units left that the request below would take locally, were the
    // lease still alive.
    assert!(units >= 1, "the grant left units: {units}");
    let calls = inner.admits.load(Ordering::Relaxed);
    // Half an hour ahead, the same UTC day.
    r.clock.set(Duration::from_micros(T0 + 1800 * SECOND));
    r.send(&p, "ahead", "192.0.2.1").await;
    assert_eq!(
        inner.admits.load(Ordering::Relaxed),
        calls + 1,
        "the lease ended with the wall clock: a new grant"
    );
    r.store.settle_all().await;
    assert_eq!(r.store.held(), (0, 0), "every lease handed back");
    assert_eq!(state(&inner, "ahead").await, (2, 2));
}

/// Shutdown hands everything back: no lease is left, the store counts
/// exactly what was admitted, and usage is flushed.
#[tokio::test]
async fn shutdown_returns_every_lease_and_flushes_usage() {
    let inner = Arc::new(Counting::default());
    let r = replica(&inner, settings(1));
    let p = plans(DAILY);
    for _ in 0..10 {
        r.send(&p, "bye", "192.0.2.1").await;
    }
    assert!(r.store.held().1 > 0);
    r.store.shutdown().await;
    assert_eq!(r.store.held(), (0, 0));
    assert_eq!(state(&inner, "bye").await, (10, 10));
}
