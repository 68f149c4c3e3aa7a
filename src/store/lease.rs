//! Quota leases: a [`Store`] in front of another (Redis) that admits the
//! limits a replica serves often from slices it reserved, without a store
//! call, and counts usage locally.
//!
//! - [`table`] — the leases one replica holds (bounded), which keys are hot,
//!   and what a request takes from them;
//! - [`keeper`] — the background task that returns expired and idle
//!   leases and flushes usage, and the last settlement on shutdown.
//!
//! A request under a policy with `leases: auto` goes like this:
//!
//! 1. Each limit is taken from this replica's live lease on its key when it
//!    holds one with enough units left; that is a *local* op.
//! 2. A limit whose lease is spent or ended, or whose key became hot (at
//!    least [`LeaseSettings::hot_after`] requests here within one lease
//!    duration), asks for a new slice in the request's store call (a
//!    *grant* op; the previous lease's unused units go back in the same
//!    call). Other limits — cold keys (per-user limits with many users),
//!    rates too tight to lease — are checked in the store as before. While
//!    a grant for a key is in flight, the key's other requests wait for it
//!    (at most the store timeout in all) instead of each calling the store:
//!    one round trip per renewal, and no request refused while this replica
//!    is about to hold units for it.
//! 3. Without any store op and without nonces (replay nonces always go to
//!    the store) the request is admitted here. Otherwise the store call
//!    carries the rest, and what was taken locally is kept only if the
//!    store admits the request; if it denies, the units go back into the
//!    local slices. So all limits of a request pass or none is consumed,
//!    and nothing is admitted beyond units the store reserved.
//!
//! The guarantees, their proofs and what a crash loses are in
//! `docs/store.md` ("Quota leases"); the arithmetic is
//! [`crate::limits::lease`].

mod keeper;
mod table;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use self::table::{Planned, Table};
use super::{Admission, BoxFuture, Leasing, Outcome, Retention, Settlement, Store, StoreError};
use super::{UsageQuery, UsageRow};
use crate::clock::Clock;
use crate::telemetry::handles;

/// How leasing behaves (`serve` flags `--quota-leases`,
/// `--quota-lease-duration`, `--max-quota-leases`, `--usage-flush-interval`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// The longest a lease lasts (a rate's is shorter, a quota's ends
    /// with its window: `limits::lease`).
    pub duration: Duration,
    /// Most leases one replica holds; keys beyond stay per request.
    pub max_leases: usize,
    /// A key is leased once this many of its requests reached this
    /// replica within one lease duration.
    pub hot_after: u32,
    /// How often usage counted locally is written to the store.
    pub usage_flush: Duration,
    /// How long a request may wait, in all, for grants of its keys already
    /// in flight here before calling the store itself: the store timeout.
    pub wait: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(1),
            max_leases: 10_000,
            hot_after: 8,
            usage_flush: Duration::from_secs(1),
            wait: Duration::from_millis(50),
        }
    }
}

/// A store that admits hot limits from leases ([module docs](self)).
pub struct LeasedStore {
    shared: Arc<Shared>,
    keeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the request path and the keeper share.
struct Shared {
    inner: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: LeaseSettings,
    /// A std `Mutex`: never held across an `.await`, and every critical
    /// section is a few map operations.
    table: Mutex<Table>,
    /// Settlements waiting for the store; held across the store call, so
    /// one tick runs at a time.
    queue: tokio::sync::Mutex<keeper::Queue>,
}

impl std::fmt::Debug for LeasedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedStore")
            .field("inner", &self.shared.inner)
            .field("settings", &self.shared.settings)
            .finish()
    }
}

impl LeasedStore {
    /// Leases in front of `inner`, timed by `clock` (the decision clock:
    /// lease ends and returns are stamped with it). Spawns the keeper, so
    /// it must run inside a Tokio runtime.
    pub fn new(inner: Arc<dyn Store>, clock: Arc<dyn Clock>, settings: LeaseSettings) -> Self {
        let shared = Arc::new(Shared {
            table: Mutex::new(Table::new(&settings)),
            queue: tokio::sync::Mutex::default(),
            inner,
            clock,
            settings,
        });
        let keeper = tokio::spawn(keeper::run(Arc::downgrade(&shared)));
        Self {
            shared,
            keeper: Mutex::new(Some(keeper)),
        }
    }

    /// Returns what is due now (expired leases, usage past its flush
    /// interval) without waiting for the keeper's next tick; the number of
    /// settlements still waiting for the store.
    pub async fn settle_due(&self) -> usize {
        keeper::tick(&self.shared, keeper::Scope::Due).await
    }

    /// Returns every lease and flushes all usage, as on shutdown; leasing
    /// goes on afterwards (tests use it to read the store's exact state).
    /// The number of settlements still waiting for the store.
    pub async fn settle_all(&self) -> usize {
        keeper::tick(&self.shared, keeper::Scope::Everything).await
    }

    /// (leases held, their unused units).
    pub fn held(&self) -> (usize, u64) {
        self.shared.lock().held()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The request path under `leases: auto` ([module docs](self)).
    async fn admit(&self, admission: &Admission) -> Result<Outcome, StoreError> {
        let deadline = tokio::time::Instant::now() + self.settings.wait;
        let (plan, started) = loop {
            let started = tokio::time::Instant::now();
            let planned = self.lock().plan(admission, started, started < deadline);
            match planned {
                Planned::Ready(plan) => break (plan, started),
                Planned::Wait(mut done) => {
                    let _ = tokio::time::timeout_at(deadline, done.changed()).await;
                }
            }
        };
        if !plan.needs_store(admission) {
            let outcome = self.lock().admitted_here(admission, &plan);
            handles::local_admissions().increment(1);
            return Ok(outcome);
        }
        let remote = plan.remote(admission);
        let result = self.inner.admit(&remote).await;
        self.lock()
            .answered(admission, &plan, &remote, result, started)
    }
}

impl Store for LeasedStore {
    fn kind(&self) -> &'static str {
        self.shared.inner.kind()
    }

    fn admit<'a>(&'a self, admission: &'a Admission) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        match admission.leasing {
            Leasing::Off => self.shared.inner.admit(admission),
            Leasing::Auto => Box::pin(self.shared.admit(admission)),
        }
    }

    fn settle<'a>(&'a self, settlement: &'a Settlement) -> BoxFuture<'a, Result<(), StoreError>> {
        self.shared.inner.settle(settlement)
    }

    /// Stops the keeper, then returns every lease and flushes all usage
    /// (bounded: a store that does not answer loses what was held).
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let keeper = self.keeper.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(keeper) = keeper {
                keeper.abort();
                let _ = keeper.await;
            }
            keeper::last(&self.shared).await;
            self.shared.inner.shutdown().await;
        })
    }

    fn usage<'a>(
        &'a self,
        query: &'a UsageQuery,
    ) -> BoxFuture<'a, Result<Vec<UsageRow>, StoreError>> {
        self.shared.inner.usage(query)
    }

    fn retention(&self) -> Retention {
        self.shared.inner.retention()
    }
}

impl Drop for LeasedStore {
    fn drop(&mut self) {
        if let Some(keeper) = self
            .keeper
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            keeper.abort();
        }
    }
}

#[cfg(test)]
mod tests;
