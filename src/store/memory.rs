//! The in-memory store: the embedded default for a single replica, and the
//! reference the Redis store is tested against (one scenario suite runs on
//! both, `tests/store_scenarios.rs`).
//!
//! One mutex guards the whole map, so a whole [`Admission`] — every group —
//! is checked and consumed atomically: here even cross-group requests are
//! exact. A std `Mutex` is fine: it is never held across an `.await` and
//! every critical section is a handful of map operations. Expired entries
//! are dropped when touched and swept every [`SWEEP_EVERY`] admissions, so
//! memory stays bounded by the live keys.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{
    Admission, BoxFuture, Granted, Group, LimitOp, LimitState, Outcome, Retention, Rule,
    Settlement, Store, StoreError, Unused, UsageQuery, UsageRow, Verdict, keys,
};
use crate::limits::{gcra, lease};

/// The store's incarnation, for quota returns ([`Granted::epoch`]): the
/// memory store lives and dies with the process, and its leases with it.
const EPOCH: u64 = 1;

/// How long a settlement's marker is kept (a re-sent settlement within
/// this time changes nothing).
const SETTLED_US: u64 = 600_000_000;

/// Admissions between two sweeps of expired entries.
const SWEEP_EVERY: u64 = 1024;

/// The in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    retention: Retention,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// The latest `now` seen (µs), for expiring entries on reads.
    last_now: u64,
    admissions: u64,
}

#[derive(Debug)]
struct Entry {
    value: Value,
    /// µs since the epoch.
    expires_us: u64,
}

#[derive(Debug)]
enum Value {
    /// A remembered nonce, holding the attempt id of the admission that
    /// stored it.
    Nonce(String),
    Tat(u64),
    Count(u64),
    Usage {
        requests: u64,
        cost: u64,
    },
    /// A settlement applied ([`keys::settled`]).
    Settled,
}

impl MemoryStore {
    /// An empty store with default usage retention.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store keeping usage as `retention` says.
    pub fn with_retention(retention: Retention) -> Self {
        Self {
            inner: Mutex::default(),
            retention,
        }
    }
}

impl Inner {
    fn live(&self, key: &str, now: u64) -> Option<&Value> {
        self.entries
            .get(key)
            .filter(|e| e.expires_us > now)
            .map(|e| &e.value)
    }

    /// Checks one group; `Err` on a remembered nonce: a replay, or this
    /// very admission applied before (its attempt id is stored).
    fn check(&self, group: &Group, now: u64, attempt: &str) -> Result<Vec<LimitState>, Seen> {
        for (i, nonce) in group.nonces.iter().enumerate() {
            match self.live(&nonce.key, now) {
                None => {}
                Some(Value::Nonce(held)) if !attempt.is_empty() && held == attempt => {
                    return Err(Seen::AppliedBefore);
                }
                Some(_) => return Err(Seen::Replay(i)),
            }
        }
        Ok(group
            .limits
            .iter()
            .map(|limit| self.evaluate(limit, now).0)
            .collect())
    }

    fn tat(&self, key: &str, now: u64) -> Option<u64> {
        match self.live(key, now) {
            Some(Value::Tat(t)) => Some(*t),
            _ => None,
        }
    }

    fn count(&self, key: &str, now: u64) -> u64 {
        match self.live(key, now) {
            Some(Value::Count(c)) => *c,
            _ => 0,
        }
    }

    /// The state of one limit op at `now` and the value it would store
    /// when consumed (a TAT or a count; `None`: nothing to write).
    fn evaluate(&self, limit: &LimitOp, now: u64) -> (LimitState, Option<u64>) {
        match (limit.rule, limit.lease) {
            (Rule::Rate { interval_us, burst }, None) => {
                let v = gcra::check(
                    self.tat(&limit.key, now),
                    now,
                    limit.cost,
                    interval_us,
                    burst,
                );
                let state = LimitState {
                    allowed: v.allowed,
                    remaining: v.remaining,
                    reset_us: v.reset_us,
                    retry_after_us: v.retry_after_us,
                    lease: None,
                };
                (state, Some(v.new_tat))
            }
            (Rule::Rate { interval_us, burst }, Some(ask)) => {
                let mut stored = self.tat(&limit.key, now);
                if let Some(Unused::Rate {
                    top, base, used, ..
                }) = ask.previous
                    && let Some(after) =
                        lease::return_rate(stored, (top, base, used), interval_us, now)
                {
                    stored = after;
                }
                let g = lease::grant_rate(
                    stored,
                    now,
                    limit.cost,
                    ask.want,
                    (interval_us, burst),
                    ask.ends_at_us.max(now),
                );
                (granted_state(&g), Some(g.top))
            }
            (
                Rule::Quota {
                    limit: max,
                    window_end_us,
                    ..
                },
                ask,
            ) => {
                let mut count = self.count(&limit.key, now);
                let reset = window_end_us.saturating_sub(now);
                let Some(ask) = ask else {
                    let state = if count + limit.cost <= max {
                        LimitState {
                            allowed: true,
                            remaining: max - count - limit.cost,
                            reset_us: reset,
                            ..LimitState::default()
                        }
                    } else {
                        LimitState {
                            allowed: false,
                            remaining: max.saturating_sub(count),
                            reset_us: reset,
                            retry_after_us: reset,
                            lease: None,
                        }
                    };
                    return (state, Some(count + limit.cost));
                };
                if let Some(Unused::Quota { units, epoch }) = ask.previous
                    && epoch == EPOCH
                {
                    count = count.saturating_sub(units);
                }
                let g = lease::grant_quota(count, max, limit.cost, ask.want, reset);
                (granted_state(&g), Some(g.top))
            }
        }
    }

    fn consume(&mut self, group: &Group, now: u64, attempt: &str) {
        for nonce in &group.nonces {
            self.entries.insert(
                nonce.key.clone(),
                Entry {
                    value: Value::Nonce(attempt.to_owned()),
                    expires_us: now.saturating_add(nonce.ttl_ms.max(1).saturating_mul(1000)),
                },
            );
        }
        for limit in &group.limits {
            let (_, value) = self.evaluate(limit, now);
            let (value, expires_us) = match (limit.rule, value) {
                (_, None) => continue,
                (Rule::Rate { .. }, Some(tat)) => (Value::Tat(tat), tat),
                (Rule::Quota { expire_at_us, .. }, Some(count)) => {
                    (Value::Count(count), expire_at_us)
                }
            };
            self.entries
                .insert(limit.key.clone(), Entry { value, expires_us });
        }
        for usage in &group.usage {
            self.add_usage(&usage.key, 1, usage.cost, usage.expire_at_s, now);
        }
    }

    /// Applies a settlement once: rate returns as `limits::lease`
    /// says, quota units taken off their counter, usage added.
    fn settle(&mut self, settlement: &Settlement) {
        let now = settlement.now_us;
        self.last_now = self.last_now.max(now);
        let Some(first) = settlement.groups.first() else {
            return;
        };
        let marker = keys::settled(&first.tag, &settlement.id);
        if self.live(&marker, now).is_some() {
            return;
        }
        self.entries.insert(
            marker,
            Entry {
                value: Value::Settled,
                expires_us: now.saturating_add(SETTLED_US),
            },
        );
        for group in &settlement.groups {
            for returned in &group.returns {
                match returned.unused {
                    Unused::Rate {
                        interval_us,
                        top,
                        base,
                        used,
                    } => {
                        let stored = self.tat(&returned.key, now);
                        match lease::return_rate(stored, (top, base, used), interval_us, now) {
                            None => {}
                            Some(None) => {
                                self.entries.remove(&returned.key);
                            }
                            Some(Some(tat)) => {
                                self.entries.insert(
                                    returned.key.clone(),
                                    Entry {
                                        value: Value::Tat(tat),
                                        expires_us: tat,
                                    },
                                );
                            }
                        }
                    }
                    Unused::Quota { units, epoch } => {
                        if epoch == EPOCH
                            && let Some(entry) = self.entries.get_mut(&returned.key)
                            && entry.expires_us > now
                            && let Value::Count(count) = &mut entry.value
                        {
                            *count = count.saturating_sub(units);
                        }
                    }
                }
            }
            for usage in &group.usage {
                self.add_usage(
                    &usage.key,
                    usage.requests,
                    usage.cost,
                    usage.expire_at_s,
                    now,
                );
            }
        }
    }

    fn add_usage(&mut self, key: &str, requests: u64, cost: u64, expire_at_s: u64, now: u64) {
        let (before, spent) = match self.live(key, now) {
            Some(Value::Usage { requests, cost }) => (*requests, *cost),
            _ => (0, 0),
        };
        self.entries.insert(
            key.to_owned(),
            Entry {
                value: Value::Usage {
                    requests: before + requests,
                    cost: spent + cost,
                },
                expires_us: expire_at_s.saturating_mul(1_000_000),
            },
        );
    }

    fn admit(&mut self, admission: &Admission) -> Outcome {
        let now = admission.now_us;
        self.last_now = self.last_now.max(now);
        self.admissions += 1;
        if self.admissions.is_multiple_of(SWEEP_EVERY) {
            self.entries.retain(|_, e| e.expires_us > now);
        }
        let mut states = Vec::with_capacity(admission.groups.len());
        let mut verdict = Verdict::Admitted;
        let mut applied_before = false;
        let attempt = admission.attempt.as_str();
        for (g, group) in admission.groups.iter().enumerate() {
            match self.check(group, now, attempt) {
                Ok(s) => {
                    if verdict == Verdict::Admitted && s.iter().any(|l| !l.allowed) {
                        verdict = Verdict::Exceeded;
                    }
                    states.push(s);
                }
                Err(Seen::Replay(index)) => {
                    if !matches!(verdict, Verdict::Replay { .. }) {
                        verdict = Verdict::Replay { group: g, index };
                    }
                    states.push(Vec::new());
                }
                Err(Seen::AppliedBefore) => {
                    applied_before = true;
                    states.push(Vec::new());
                }
            }
        }
        // Every group is applied under one lock: a nonce holding this
        // attempt's id means all of them were, by this same admission.
        if applied_before && !matches!(verdict, Verdict::Replay { .. }) {
            return Outcome {
                verdict: Verdict::Admitted,
                limits: admission.groups.iter().map(|_| Vec::new()).collect(),
            };
        }
        if verdict == Verdict::Admitted {
            for group in &admission.groups {
                self.consume(group, now, attempt);
            }
        } else {
            // Nothing was written: no slice was reserved.
            for state in states.iter_mut().flatten() {
                state.lease = None;
            }
        }
        Outcome {
            verdict,
            limits: states,
        }
    }
}

/// The state a lease op reports (`LimitState::lease` set when it passed).
fn granted_state(g: &lease::Grant) -> LimitState {
    LimitState {
        allowed: g.allowed,
        remaining: g.remaining,
        reset_us: g.reset_us,
        retry_after_us: g.retry_after_us,
        lease: g.allowed.then_some(Granted {
            units: g.granted,
            base: g.base,
            top: g.top,
            epoch: EPOCH,
        }),
    }
}

/// A remembered nonce found by [`Inner::check`].
enum Seen {
    /// Another admission's: `nonces[index]` is replayed.
    Replay(usize),
    /// This admission's own (its attempt id): it was applied before.
    AppliedBefore,
}

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn admit<'a>(&'a self, admission: &'a Admission) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        let outcome = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(admission);
        Box::pin(async move { Ok(outcome) })
    }

    fn settle<'a>(&'a self, settlement: &'a Settlement) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .settle(settlement);
        Box::pin(async { Ok(()) })
    }

    fn usage<'a>(
        &'a self,
        query: &'a UsageQuery,
    ) -> BoxFuture<'a, Result<Vec<UsageRow>, StoreError>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<UsageRow> = inner
            .entries
            .iter()
            .filter(|(_, e)| e.expires_us > inner.last_now)
            .filter_map(|(key, e)| match e.value {
                Value::Usage { requests, cost } => {
                    let (app, day, user) = keys::parse_usage(key)?;
                    Some(UsageRow {
                        app,
                        day,
                        user,
                        requests,
                        cost,
                    })
                }
                _ => None,
            })
            .filter(|row| super::usage_matches(query, row))
            .collect();
        drop(inner);
        super::sort_usage(&mut rows);
        Box::pin(async move { Ok(rows) })
    }

    fn retention(&self) -> Retention {
        self.retention
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Group, NonceOp};

    fn with_nonce(now_us: u64) -> Admission {
        Admission {
            now_us,
            attempt: format!("attempt-{now_us}"),
            groups: vec![Group {
                tag: "{a:x}".into(),
                nonces: vec![NonceOp {
                    key: "tg:{a:x}:n:dpop:abc".into(),
                    ttl_ms: 1_000,
                }],
                ..Group::default()
            }],
            ..Admission::default()
        }
    }

    #[tokio::test]
    async fn nonces_expire_with_their_ttl_on_the_injected_clock() {
        let store = MemoryStore::new();
        let t = 1_000_000_000;
        assert_eq!(
            store.admit(&with_nonce(t)).await.unwrap().verdict,
            Verdict::Admitted
        );
        let again = store.admit(&with_nonce(t + 999_999)).await.unwrap();
        assert_eq!(again.verdict, Verdict::Replay { group: 0, index: 0 });
        let later = store.admit(&with_nonce(t + 1_000_000)).await.unwrap();
        assert_eq!(later.verdict, Verdict::Admitted);
    }
}
