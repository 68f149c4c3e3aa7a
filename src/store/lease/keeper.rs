//! The keeper: a background task that hands back what the lease layer
//! holds — leases whose time is up (their unused units), and usage counted
//! locally, at the flush interval — in one [`Settlement`] per tick, and
//! everything when the server stops.
//!
//! A settlement that fails (Redis down, a timeout) is kept and sent again
//! with the same id at the next ticks: the store applies an id once, so a
//! settlement that did arrive before its reply was lost is not counted
//! twice. At most [`MAX_QUEUED`] wait; beyond that the oldest is dropped
//! (its usage lost, its units under-allowing until their window or burst
//! period passes) and counted.

use std::collections::VecDeque;
use std::sync::Weak;

use tokio::time::{Duration, Instant};

use super::Shared;
use crate::store::{SettleGroup, Settlement};
use crate::telemetry::handles;

/// Settlements kept for another try while the store is unreachable.
const MAX_QUEUED: usize = 64;

/// How long the last settlement on shutdown may take, in all.
const LAST_SETTLEMENT: Duration = Duration::from_secs(2);

/// Settlements not yet acknowledged by the store, oldest first.
#[derive(Default)]
pub(super) struct Queue {
    waiting: VecDeque<Settlement>,
}

/// What one tick hands back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// Leases that ended, usage whose flush interval passed.
    Due,
    /// Every lease and all usage (shutdown).
    Everything,
}

/// Ticks until the store it serves is dropped.
pub(super) async fn run(shared: Weak<Shared>) {
    let every = match shared.upgrade() {
        Some(shared) => (shared.settings.duration / 4)
            .min(Duration::from_millis(100))
            .max(Duration::from_millis(5)),
        None => return,
    };
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        tick(&shared, Scope::Due).await;
    }
}

/// One tick: collect what is due, then send every waiting settlement in
/// order, stopping at the first failure. Returns how many still wait.
pub(super) async fn tick(shared: &Shared, scope: Scope) -> usize {
    let mut queue = shared.queue.lock().await;
    let mono = Instant::now();
    let now_us = crate::limits::admission::now_us(shared.clock.now());
    let due = {
        let mut table = shared.lock();
        let flush = mono.duration_since(table.flushed_at) >= shared.settings.usage_flush;
        table.take_due(mono, now_us, scope == Scope::Everything, flush)
    };
    if let Some(settlement) = settlement(now_us, due) {
        if queue.waiting.len() >= MAX_QUEUED
            && let Some(dropped) = queue.waiting.pop_front()
        {
            count_dropped(&dropped);
        }
        queue.waiting.push_back(settlement);
    }
    while let Some(next) = queue.waiting.front() {
        match shared.inner.settle(next).await {
            Ok(()) => {
                count_returned(next);
                queue.waiting.pop_front();
            }
            Err(e) => {
                tracing::debug!(error = %e, waiting = queue.waiting.len(), "settlement failed; kept for the next tick");
                break;
            }
        }
    }
    let (leases, units) = shared.lock().held();
    metrics::gauge!("tollgate_leases_held").set(leases as f64);
    metrics::gauge!("tollgate_lease_units_held").set(units as f64);
    metrics::gauge!("tollgate_settlements_waiting").set(queue.waiting.len() as f64);
    queue.waiting.len()
}

/// The last settlement, on shutdown: everything, with a few tries within
/// [`LAST_SETTLEMENT`]. What cannot be sent is lost (logged): unused units
/// under-allow, usage goes uncounted.
pub(super) async fn last(shared: &Shared) {
    let deadline = Instant::now() + LAST_SETTLEMENT;
    let mut scope = Scope::Everything;
    loop {
        let waiting = tick(shared, scope).await;
        scope = Scope::Due;
        if waiting == 0 {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                settlements = waiting,
                "leases and usage could not be handed back before stopping; unused units stay \
                 counted until their window or burst period passes, and this usage is lost"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Groups what is due by hash tag into one settlement with a fresh id.
fn settlement(now_us: u64, due: super::table::Due) -> Option<Settlement> {
    if due.returns.is_empty() && due.usage.is_empty() {
        return None;
    }
    let mut groups: Vec<SettleGroup> = Vec::new();
    for (tag, returned) in due.returns {
        group(&mut groups, tag).returns.push(returned);
    }
    for (tag, usage) in due.usage {
        group(&mut groups, tag).usage.push(usage);
    }
    Some(Settlement {
        now_us,
        id: format!("{:032x}", rand::random::<u128>()),
        groups,
    })
}

/// The group of `tag`, added when missing.
fn group(groups: &mut Vec<SettleGroup>, tag: String) -> &mut SettleGroup {
    let index = match groups.iter().position(|g| g.tag == tag) {
        Some(index) => index,
        None => {
            groups.push(SettleGroup {
                tag,
                ..SettleGroup::default()
            });
            groups.len() - 1
        }
    };
    &mut groups[index]
}

fn count_returned(settlement: &Settlement) {
    let returns = settlement.groups.iter().flat_map(|g| g.returns.iter());
    let mut leases = 0;
    for returned in returns {
        leases += 1;
        if let crate::store::Unused::Quota { units, .. } = returned.unused {
            handles::lease_units("returned").increment(units);
        }
    }
    handles::lease_events("returned").increment(leases);
}

fn count_dropped(settlement: &Settlement) {
    let leases = settlement
        .groups
        .iter()
        .map(|g| g.returns.len())
        .sum::<usize>();
    handles::lease_events("dropped").increment(leases as u64);
    tracing::warn!(
        id = %settlement.id,
        leases,
        "a settlement waited too long for the store and was dropped: its usage is lost"
    );
}
