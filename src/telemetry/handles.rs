//! Metric handles registered once, looked up per call.
//!
//! `metrics::counter!(NAME, "policy" => policy, …)` builds a key on every
//! call: a `String` per dynamic label, a label vector, a hash of the whole
//! key and a lookup in the recorder's registry. On the `Check` path that
//! happened several times per request. Here each label combination is
//! registered with the recorder the first time a thread sees it and its
//! handle kept in that thread's table, so a call costs one lookup on a
//! short `&str`, no allocation, no lock and no atomic shared between
//! threads (each tokio worker has its own table; the handles of one series
//! all count into the recorder's one counter).
//!
//! Handles are only kept once tollgate's own Prometheus recorder is the
//! global one ([`super::prometheus`] says so through [`mark_installed`]).
//! Before that — `tollgate check`, unit tests, a test harness with its own
//! recorder — every call goes through the macros as before, so a handle
//! taken from no recorder (a no-op) is never cached and counts are never
//! lost. The recorder is built without an idle timeout, so a registered
//! series is never dropped behind a kept handle's back.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics::{Counter, Histogram};

/// Set once tollgate's Prometheus recorder is installed globally.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Records that [`super::prometheus`] installed its recorder: from now on
/// handles may be kept.
pub(super) fn mark_installed() {
    INSTALLED.store(true, Ordering::Release);
}

fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// Handles keyed by one dynamic label value (a policy id, a limit name, a
/// store kind) and two static ones (outcome, reason…). Label values come
/// from the loaded policies and the reason table, so the set is bounded by
/// configuration — the recorder keeps a series for each anyway.
///
/// Hashed with foldhash rather than std's SipHash: the keys come from
/// configuration, not from clients, and a `Check` makes five lookups.
struct Cache<H> {
    map: HashMap<Box<str>, Vec<Entry<H>>, foldhash::fast::RandomState>,
}

/// The two static label values and the handle.
type Entry<H> = (&'static str, &'static str, H);

impl<H: Clone> Cache<H> {
    fn new() -> Self {
        Self {
            map: HashMap::default(),
        }
    }

    /// The kept handle for `(dynamic, a, b)`, registered the first time.
    fn kept(
        &mut self,
        dynamic: &str,
        a: &'static str,
        b: &'static str,
        register: impl FnOnce() -> H,
    ) -> H {
        let find = |entries: &Vec<Entry<H>>| {
            entries
                .iter()
                .find(|(x, y, _)| *x == a && *y == b)
                .map(|(_, _, h)| h.clone())
        };
        if let Some(handle) = self.map.get(dynamic).and_then(find) {
            return handle;
        }
        let entries = self.map.entry(dynamic.into()).or_default();
        let handle = register();
        entries.push((a, b, handle.clone()));
        handle
    }
}

/// The handle for `(dynamic, a, b)` from this thread's `cache` when
/// tollgate's recorder is installed; else a fresh `register()`.
fn get<H: Clone + 'static>(
    cache: &'static std::thread::LocalKey<RefCell<Cache<H>>>,
    dynamic: &str,
    a: &'static str,
    b: &'static str,
    register: impl FnOnce() -> H,
) -> H {
    if !installed() {
        return register();
    }
    // `register` never re-enters this cache, so the borrow cannot fail;
    // were it to, the handle is simply not kept.
    cache.with(|cache| match cache.try_borrow_mut() {
        Ok(mut cache) => cache.kept(dynamic, a, b, register),
        Err(_) => register(),
    })
}

thread_local! {
    static CHECKS: RefCell<Cache<Counter>> = RefCell::new(Cache::new());
    static CHECK_DURATION: RefCell<Cache<Histogram>> = RefCell::new(Cache::new());
    static QUOTA_DECISIONS: RefCell<Cache<Counter>> = RefCell::new(Cache::new());
    static STORE_DURATION: RefCell<Cache<Histogram>> = RefCell::new(Cache::new());
    static APP_CHECKS: RefCell<Cache<Counter>> = RefCell::new(Cache::new());
    static TOKEN_CACHE: RefCell<Cache<Counter>> = RefCell::new(Cache::new());
    static ROUND_TRIPS: RefCell<Cache<Counter>> = RefCell::new(Cache::new());
    static LEASES: RefCell<Cache<Counter>> = RefCell::new(Cache::new());
}

/// `tollgate_checks_total{policy, outcome, reason}`.
pub fn checks_total(policy: &str, outcome: &'static str, reason: &'static str) -> Counter {
    get(&CHECKS, policy, outcome, reason, || {
        metrics::counter!(
            crate::grpc::service::CHECKS_TOTAL,
            "policy" => policy.to_owned(),
            "outcome" => outcome,
            "reason" => reason
        )
    })
}

/// `tollgate_check_duration_seconds` (no labels).
pub fn check_duration() -> Histogram {
    get(&CHECK_DURATION, "", "", "", || {
        metrics::histogram!(crate::grpc::service::CHECK_DURATION)
    })
}

/// `tollgate_quota_decisions_total{limit, outcome}`.
pub fn quota_decisions(limit: &str, outcome: &'static str) -> Counter {
    get(&QUOTA_DECISIONS, limit, outcome, "", || {
        metrics::counter!(
            "tollgate_quota_decisions_total",
            "limit" => limit.to_owned(),
            "outcome" => outcome
        )
    })
}

/// `tollgate_app_checks_total{app, outcome}` (`--metrics-app-labels`),
/// kept per app id: `label` (the bounded label value of
/// [`crate::telemetry::app_labels::AppLabels`], which takes a lock and
/// allocates) runs only the first time a thread sees the app. An app's
/// label never changes once given, so keeping the handle keeps the
/// label. App ids come from the registered apps, so the table is bounded
/// by configuration like the others.
pub fn app_checks(app: &str, outcome: &'static str, label: impl FnOnce() -> String) -> Counter {
    get(&APP_CHECKS, app, outcome, "", || {
        metrics::counter!(
            crate::grpc::service::APP_CHECKS_TOTAL,
            "app" => label(),
            "outcome" => outcome
        )
    })
}

/// `tollgate_token_cache_total{result}` (`hit`, `miss`).
pub fn token_cache(result: &'static str) -> Counter {
    get(
        &TOKEN_CACHE,
        "",
        result,
        "",
        || metrics::counter!("tollgate_token_cache_total", "result" => result),
    )
}

/// `tollgate_store_round_trips_total{store, op}` (`admit`, `refund`,
/// `settle`): calls that went to the store over the network.
pub fn round_trips(store: &'static str, op: &'static str) -> Counter {
    get(
        &ROUND_TRIPS,
        store,
        op,
        "",
        || metrics::counter!("tollgate_store_round_trips_total", "store" => store, "op" => op),
    )
}

/// `tollgate_lease_local_admissions_total`: requests whose every limit
/// was admitted from leases, with no store call.
pub fn local_admissions() -> Counter {
    get(&LEASES, "", "local", "", || {
        metrics::counter!("tollgate_lease_local_admissions_total")
    })
}

/// `tollgate_leases_total{event}` (`taken`, `renewed`, `returned`,
/// `dropped`).
pub fn lease_events(event: &'static str) -> Counter {
    get(
        &LEASES,
        "",
        "events",
        event,
        || metrics::counter!("tollgate_leases_total", "event" => event),
    )
}

/// `tollgate_lease_units_total{event}` (`granted`, `returned`, `dropped`).
pub fn lease_units(event: &'static str) -> Counter {
    get(
        &LEASES,
        "",
        "units",
        event,
        || metrics::counter!("tollgate_lease_units_total", "event" => event),
    )
}

/// `tollgate_store_duration_seconds{store, op}`.
pub fn store_duration(store: &'static str, op: &'static str) -> Histogram {
    get(
        &STORE_DURATION,
        store,
        op,
        "",
        || metrics::histogram!("tollgate_store_duration_seconds", "store" => store, "op" => op),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_each_combination_once() {
        let mut cache: Cache<u32> = Cache::new();
        let mut registered = 0;
        let mut get = |dynamic: &str, a: &'static str, b: &'static str| {
            cache.kept(dynamic, a, b, || {
                registered += 1;
                registered
            })
        };
        assert_eq!(get("p", "allow", "none"), 1);
        assert_eq!(get("p", "allow", "none"), 1, "kept, not registered again");
        assert_eq!(get("p", "deny", "ip_denied"), 2);
        assert_eq!(get("q", "allow", "none"), 3);
        assert_eq!(get("p", "deny", "ip_denied"), 2);
    }

    /// The value of the one rendered series of `name` carrying all `labels`.
    fn series(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Kept handles count into the very series the macros name, with the
    /// labels `/metrics` has always shown.
    #[test]
    fn kept_handles_count_into_the_same_series_as_the_macros() {
        let prometheus = crate::telemetry::prometheus();
        assert!(installed(), "tollgate's recorder is the global one");
        metrics::counter!(
            crate::grpc::service::CHECKS_TOTAL,
            "policy" => "handles/test",
            "outcome" => "allow",
            "reason" => "none"
        )
        .increment(1);
        for _ in 0..3 {
            checks_total("handles/test", "allow", "none").increment(1);
        }
        // Another thread keeps its own handle, of the same series.
        std::thread::spawn(|| checks_total("handles/test", "allow", "none").increment(1))
            .join()
            .unwrap();
        checks_total("handles/test", "deny", "ip_denied").increment(1);
        quota_decisions("handles-limit", "allowed").increment(2);
        quota_decisions("handles-limit", "allowed").increment(2);
        store_duration("memory", "handles-op").record(0.000_03);
        check_duration().record(0.000_03);

        let text = prometheus.render();
        let checks = |outcome: &str, reason: &str| {
            series(
                &text,
                "tollgate_checks_total",
                &[
                    r#"policy="handles/test""#,
                    &format!(r#"outcome="{outcome}""#),
                    &format!(r#"reason="{reason}""#),
                ],
            )
        };
        assert_eq!(checks("allow", "none"), Some(5.0), "{text}");
        assert_eq!(checks("deny", "ip_denied"), Some(1.0), "{text}");
        assert_eq!(
            series(
                &text,
                "tollgate_quota_decisions_total",
                &[r#"limit="handles-limit""#, r#"outcome="allowed""#]
            ),
            Some(4.0),
            "{text}"
        );
        assert!(
            series(
                &text,
                "tollgate_store_duration_seconds_count",
                &[r#"store="memory""#, r#"op="handles-op""#]
            ) >= Some(1.0),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("tollgate_check_duration_seconds_count ")),
            "{text}"
        );
    }
}
