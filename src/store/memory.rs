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
    Admission, BoxFuture, Group, LimitState, Outcome, Retention, Rule, Store, StoreError,
    UsageQuery, UsageRow, Verdict, keys,
};
use crate::limits::gcra;

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
            .map(|limit| match limit.rule {
                Rule::Rate { interval_us, burst } => {
                    let tat = match self.live(&limit.key, now) {
                        Some(Value::Tat(t)) => Some(*t),
                        _ => None,
                    };
                    let v = gcra::check(tat, now, limit.cost, interval_us, burst);
                    LimitState {
                        allowed: v.allowed,
                        remaining: v.remaining,
                        reset_us: v.reset_us,
                        retry_after_us: v.retry_after_us,
                    }
                }
                Rule::Quota {
                    limit: max,
                    window_end_us,
                    ..
                } => {
                    let count = match self.live(&limit.key, now) {
                        Some(Value::Count(c)) => *c,
                        _ => 0,
                    };
                    let reset = window_end_us.saturating_sub(now);
                    if count + limit.cost <= max {
                        LimitState {
                            allowed: true,
                            remaining: max - count - limit.cost,
                            reset_us: reset,
                            retry_after_us: 0,
                        }
                    } else {
                        LimitState {
                            allowed: false,
                            remaining: max.saturating_sub(count),
                            reset_us: reset,
                            retry_after_us: reset,
                        }
                    }
                }
            })
            .collect())
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
            match limit.rule {
                Rule::Rate { interval_us, burst } => {
                    let tat = match self.live(&limit.key, now) {
                        Some(Value::Tat(t)) => Some(*t),
                        _ => None,
                    };
                    let v = gcra::check(tat, now, limit.cost, interval_us, burst);
                    self.entries.insert(
                        limit.key.clone(),
                        Entry {
                            value: Value::Tat(v.new_tat),
                            expires_us: v.new_tat,
                        },
                    );
                }
                Rule::Quota { expire_at_us, .. } => {
                    let count = match self.live(&limit.key, now) {
                        Some(Value::Count(c)) => *c,
                        _ => 0,
                    };
                    self.entries.insert(
                        limit.key.clone(),
                        Entry {
                            value: Value::Count(count + limit.cost),
                            expires_us: expire_at_us,
                        },
                    );
                }
            }
        }
        for usage in &group.usage {
            let (requests, cost) = match self.live(&usage.key, now) {
                Some(Value::Usage { requests, cost }) => (*requests, *cost),
                _ => (0, 0),
            };
            self.entries.insert(
                usage.key.clone(),
                Entry {
                    value: Value::Usage {
                        requests: requests + 1,
                        cost: cost + usage.cost,
                    },
                    expires_us: usage.expire_at_s.saturating_mul(1_000_000),
                },
            );
        }
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
        }
        Outcome {
            verdict,
            limits: states,
        }
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
