//! The leases one replica holds, which keys are hot here, the usage
//! counted locally, and what one request takes from them.
//!
//! Bounded: at most [`super::LeaseSettings::max_leases`] leases (keys
//! beyond stay per request), a fixed-size sketch of recent demand, usage
//! cleared at every flush. Leases end by themselves within one lease
//! duration; the keeper returns them.

use std::collections::HashMap;
use std::hash::BuildHasher;

use tokio::time::{Duration, Instant};

use super::LeaseSettings;
use crate::limits::lease;
use crate::store::{
    Admission, Group, LeaseAsk, LeaseReturn, LimitOp, LimitState, Outcome, Rule, StoreError,
    Unused, UsageCount, Verdict,
};
use crate::telemetry::handles;

type Map<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Cells of the demand sketch ([`Heat`]).
const HEAT_CELLS: usize = 4096;

/// Usage keys counted locally that make the keeper flush at its next tick
/// rather than at the flush interval.
pub(super) const FLUSH_AT_KEYS: usize = 10_000;

pub(super) struct Table {
    slots: Map<Slot>,
    heat: Heat,
    /// Usage counted locally, per usage key, until the next flush.
    usage: Map<(String, UsageCount)>,
    /// Unused units the request path retired (a grant that did not go
    /// through), for the keeper to send: (tag, return).
    returns: Vec<(String, LeaseReturn)>,
    next_id: u64,
    max_leases: usize,
    hot_after: u32,
    duration_us: u64,
    /// When usage was last taken for a flush.
    pub(super) flushed_at: Instant,
}

enum Slot {
    Held(Lease),
    /// A grant for this key is in flight: other requests for the key wait
    /// for it (a bounded wait) rather than each calling the store, and
    /// wake when the slot changes (the sender is dropped with it). Cleared
    /// by the keeper if never answered (a cancelled request).
    Granting {
        id: u64,
        since: Instant,
        done: tokio::sync::watch::Sender<()>,
    },
}

/// One lease: a slice of one limit key, reserved in the store.
struct Lease {
    id: u64,
    /// The hash tag of the key (where its return goes).
    tag: String,
    kind: Kind,
    granted: u64,
    used: u64,
    granted_at: Instant,
    /// Monotonic: no wall-clock jump stretches a lease.
    deadline: Instant,
    /// The wall-clock end the store charged (rates) or the window's end
    /// bound (quotas); a local wall clock past it stops the lease too.
    ends_at_us: u64,
    /// The latest wall-clock instant a unit was used (a return is stamped
    /// no earlier).
    last_use_us: u64,
}

enum Kind {
    Rate {
        interval_us: u64,
        burst: u64,
        top: u64,
        base: u64,
        /// The TAT a single-request world would hold for this replica's
        /// own use: the RateLimit headers' view.
        view_tat: u64,
    },
    Quota {
        epoch: u64,
        window_end_us: u64,
        /// What was left when granted, less this replica's use since.
        view_left: u64,
    },
}

impl Lease {
    fn alive(&self, mono: Instant, now_us: u64) -> bool {
        mono < self.deadline && now_us <= self.ends_at_us
    }

    fn left(&self) -> u64 {
        self.granted.saturating_sub(self.used)
    }

    /// Takes `cost` units at `now_us`, returning the state the request's
    /// headers show.
    fn take(&mut self, cost: u64, now_us: u64) -> LimitState {
        self.used += cost;
        self.last_use_us = self.last_use_us.max(now_us);
        match &mut self.kind {
            Kind::Rate {
                interval_us,
                burst,
                view_tat,
                ..
            } => {
                *view_tat = (*view_tat).max(now_us) + cost * *interval_us;
                let capacity = *burst * *interval_us;
                LimitState {
                    allowed: true,
                    remaining: capacity.saturating_sub(*view_tat - now_us) / *interval_us,
                    reset_us: *view_tat - now_us,
                    ..LimitState::default()
                }
            }
            Kind::Quota {
                window_end_us,
                view_left,
                ..
            } => {
                *view_left = view_left.saturating_sub(cost);
                LimitState {
                    allowed: true,
                    remaining: *view_left,
                    reset_us: window_end_us.saturating_sub(now_us),
                    ..LimitState::default()
                }
            }
        }
    }

    /// Gives back `cost` units a request took but did not keep.
    fn untake(&mut self, cost: u64) {
        self.used = self.used.saturating_sub(cost);
        match &mut self.kind {
            Kind::Rate {
                interval_us,
                view_tat,
                ..
            } => *view_tat = view_tat.saturating_sub(cost * *interval_us),
            Kind::Quota { view_left, .. } => *view_left += cost,
        }
    }

    /// What goes back to the store: a rate's lease always (a return with
    /// nothing unused still drops the charge for the rest of its time), a
    /// quota's when units are left and its window has not ended.
    fn unused(&self, now_us: u64) -> Option<Unused> {
        match self.kind {
            Kind::Rate {
                interval_us,
                top,
                base,
                ..
            } => Some(Unused::Rate {
                interval_us,
                top,
                base,
                used: self.used.min(self.granted),
            }),
            Kind::Quota {
                epoch,
                window_end_us,
                ..
            } => (self.left() > 0 && now_us < window_end_us).then_some(Unused::Quota {
                units: self.left(),
                epoch,
            }),
        }
    }

    /// Units to ask for next: this lease's rate of use over a lease of
    /// `lease_us`, with a quarter more, plus the request's cost.
    fn next_want(&self, mono: Instant, lease_us: u64, cost: u64) -> u64 {
        let elapsed = mono.duration_since(self.granted_at).as_micros().max(1_000) as f64;
        let per_lease = self.used as f64 / elapsed * lease_us as f64 * 1.25;
        cost.saturating_add(per_lease.ceil().min(lease::MAX_SLICE as f64) as u64)
    }
}

/// Recent demand per key, in a fixed number of cells: a cell counts the
/// requests of the keys hashed to it within one lease duration. A cold
/// key sharing a cell with a hot one may be leased too, which costs a
/// slot, never correctness.
struct Heat {
    cells: Box<[u64]>,
    hasher: foldhash::fast::RandomState,
    origin: Instant,
    period_us: u64,
}

impl Heat {
    fn new(period_us: u64) -> Self {
        Self {
            cells: vec![0; HEAT_CELLS].into_boxed_slice(),
            hasher: foldhash::fast::RandomState::default(),
            origin: Instant::now(),
            period_us: period_us.max(1),
        }
    }

    /// Counts one request for `key`; the count of its cell in this period.
    fn bump(&mut self, key: &str, mono: Instant) -> u32 {
        let period = (mono.duration_since(self.origin).as_micros() as u64 / self.period_us) as u32;
        let index = (self.hasher.hash_one(key) as usize) % self.cells.len();
        let cell = &mut self.cells[index];
        let count = if (*cell >> 32) as u32 == period {
            (*cell as u32).saturating_add(1)
        } else {
            1
        };
        *cell = (u64::from(period) << 32) | u64::from(count);
        count
    }
}

/// What the request path decided for each limit op of one admission.
pub(super) struct Plan {
    /// Per group, per limit op.
    choices: Vec<Vec<Choice>>,
}

pub(super) enum Choice {
    /// Taken from the lease `id` on this replica.
    Local { id: u64, state: LimitState },
    /// A new slice asked for in the store call (the marker `id`).
    Grant {
        id: u64,
        ask: LeaseAsk,
        lease_us: u64,
    },
    /// Checked in the store, as without leases.
    Store,
}

impl Plan {
    /// True when some op, or a nonce, needs the store.
    pub(super) fn needs_store(&self, admission: &Admission) -> bool {
        admission.groups.iter().any(|g| !g.nonces.is_empty())
            || self
                .choices
                .iter()
                .flatten()
                .any(|c| !matches!(c, Choice::Local { .. }))
    }

    /// True when group `g` goes to the store (then its usage goes with it).
    fn group_remote(&self, admission: &Admission, g: usize) -> bool {
        !admission.groups[g].nonces.is_empty()
            || self.choices[g]
                .iter()
                .any(|c| !matches!(c, Choice::Local { .. }))
    }

    /// The admission the store gets: the same groups (so a replay's group
    /// index still names the request's), without the ops taken locally,
    /// grants as lease ops, and usage only with a group that goes anyway.
    pub(super) fn remote(&self, admission: &Admission) -> Admission {
        let groups = admission
            .groups
            .iter()
            .enumerate()
            .map(|(g, group)| {
                let remote = self.group_remote(admission, g);
                Group {
                    tag: group.tag.clone(),
                    nonces: group.nonces.clone(),
                    limits: group
                        .limits
                        .iter()
                        .zip(&self.choices[g])
                        .filter_map(|(op, choice)| match choice {
                            Choice::Local { .. } => None,
                            Choice::Store => Some(op.clone()),
                            Choice::Grant { ask, .. } => Some(LimitOp {
                                lease: Some(*ask),
                                ..op.clone()
                            }),
                        })
                        .collect(),
                    usage: if remote {
                        group.usage.clone()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        Admission {
            now_us: admission.now_us,
            groups,
            attempt: admission.attempt.clone(),
            leasing: admission.leasing,
        }
    }
}

/// What planning a request found.
pub(super) enum Planned {
    Ready(Plan),
    /// A grant for one of the request's keys is in flight here: wait for
    /// it, then plan again.
    Wait(tokio::sync::watch::Receiver<()>),
}

impl Table {
    pub(super) fn new(settings: &LeaseSettings) -> Self {
        let duration_us = u64::try_from(settings.duration.as_micros()).unwrap_or(u64::MAX);
        Self {
            slots: Map::default(),
            heat: Heat::new(duration_us),
            usage: Map::default(),
            returns: Vec::new(),
            next_id: 0,
            max_leases: settings.max_leases,
            hot_after: settings.hot_after.max(1),
            duration_us,
            flushed_at: Instant::now(),
        }
    }

    /// (leases held, their unused units).
    pub(super) fn held(&self) -> (usize, u64) {
        self.slots
            .values()
            .filter_map(|s| match s {
                Slot::Held(lease) => Some(lease.left()),
                Slot::Granting { .. } => None,
            })
            .fold((0, 0), |(n, units), left| (n + 1, units + left))
    }

    /// Decides every limit op of `admission` at `mono`, or, when `wait`
    /// and a grant for one of its keys is in flight, says what to wait
    /// for (nothing taken yet).
    pub(super) fn plan(&mut self, admission: &Admission, mono: Instant, wait: bool) -> Planned {
        if wait {
            let in_flight = admission
                .groups
                .iter()
                .flat_map(|g| g.limits.iter())
                .find_map(|op| match self.slots.get(&op.key) {
                    Some(Slot::Granting { done, .. }) => Some(done.subscribe()),
                    _ => None,
                });
            if let Some(done) = in_flight {
                return Planned::Wait(done);
            }
        }
        let choices = admission
            .groups
            .iter()
            .map(|group| {
                group
                    .limits
                    .iter()
                    .map(|op| self.choose(op, admission.now_us, mono))
                    .collect()
            })
            .collect();
        Planned::Ready(Plan { choices })
    }

    /// One op: local when a live lease has the units, a grant when its
    /// lease is spent or ended or its key turned hot, else the store.
    fn choose(&mut self, op: &LimitOp, now_us: u64, mono: Instant) -> Choice {
        let lease_us = match op.rule {
            Rule::Rate { interval_us, burst } => {
                lease::rate_lease_us(interval_us, burst, self.duration_us)
            }
            Rule::Quota { window_end_us, .. } => {
                lease::quota_lease_us(window_end_us, now_us, self.duration_us)
            }
        };
        let Some(lease_us) = lease_us else {
            return Choice::Store;
        };
        let (want, previous) = match self.slots.get_mut(&op.key) {
            Some(Slot::Held(lease)) => {
                if lease.alive(mono, now_us) && lease.left() >= op.cost {
                    let state = lease.take(op.cost, now_us);
                    return Choice::Local {
                        id: lease.id,
                        state,
                    };
                }
                let when = now_us.max(lease.last_use_us);
                (lease.next_want(mono, lease_us, op.cost), lease.unused(when))
            }
            Some(Slot::Granting { .. }) => return Choice::Store,
            None => {
                if self.heat.bump(&op.key, mono) < self.hot_after
                    || self.slots.len() >= self.max_leases
                {
                    return Choice::Store;
                }
                (
                    op.cost
                        .saturating_mul(2 * u64::from(self.hot_after))
                        .min(lease::MAX_SLICE),
                    None,
                )
            }
        };
        self.next_id += 1;
        let id = self.next_id;
        self.slots.insert(
            op.key.clone(),
            Slot::Granting {
                id,
                since: mono,
                done: tokio::sync::watch::Sender::new(()),
            },
        );
        Choice::Grant {
            id,
            ask: LeaseAsk {
                want,
                ends_at_us: now_us.saturating_add(lease_us),
                previous,
            },
            lease_us,
        }
    }

    /// A request admitted with no store call: its usage is counted here.
    pub(super) fn admitted_here(&mut self, admission: &Admission, plan: &Plan) -> Outcome {
        for group in &admission.groups {
            self.count_usage(group);
        }
        Outcome {
            verdict: Verdict::Admitted,
            limits: plan
                .choices
                .iter()
                .map(|group| {
                    group
                        .iter()
                        .map(|c| match c {
                            Choice::Local { state, .. } => *state,
                            _ => LimitState::default(),
                        })
                        .collect()
                })
                .collect(),
        }
    }

    fn count_usage(&mut self, group: &Group) {
        for op in &group.usage {
            let (_, count) = self.usage.entry(op.key.clone()).or_insert_with(|| {
                (
                    group.tag.clone(),
                    UsageCount {
                        key: op.key.clone(),
                        requests: 0,
                        cost: 0,
                        expire_at_s: op.expire_at_s,
                    },
                )
            });
            count.requests += 1;
            count.cost += op.cost;
        }
    }

    /// The store answered the `remote` part of `admission`: keep or give
    /// back what was taken locally, install the slices granted, count
    /// usage, and put the states back in the request's order.
    pub(super) fn answered(
        &mut self,
        admission: &Admission,
        plan: &Plan,
        remote: &Admission,
        result: Result<Outcome, StoreError>,
        started: Instant,
    ) -> Result<Outcome, StoreError> {
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                self.failed(admission, plan);
                return Err(e);
            }
        };
        let admitted = outcome.verdict == Verdict::Admitted;
        let mut limits = Vec::with_capacity(admission.groups.len());
        for (g, group) in admission.groups.iter().enumerate() {
            let answered: &[LimitState] = outcome.limits.get(g).map_or(&[], Vec::as_slice);
            let complete = answered.len() == remote.groups[g].limits.len();
            let mut from_store = answered.iter();
            let mut states = Vec::with_capacity(group.limits.len());
            for (op, choice) in group.limits.iter().zip(&plan.choices[g]) {
                let state = match choice {
                    Choice::Local { id, state } => {
                        if !admitted {
                            self.untake(&op.key, *id, op.cost);
                        }
                        Some(*state)
                    }
                    Choice::Store => from_store.next().copied(),
                    Choice::Grant { id, ask, lease_us } => {
                        let state = from_store.next().copied();
                        let grant = Granting {
                            id: *id,
                            ask,
                            lease_us: *lease_us,
                            tag: &group.tag,
                        };
                        self.granted(op, grant, state, admitted, started);
                        state
                    }
                };
                states.extend(state);
            }
            if !complete && !remote.groups[g].limits.is_empty() {
                states.clear();
            }
            if admitted && !plan.group_remote(admission, g) {
                self.count_usage(group);
            }
            limits.push(states);
        }
        Ok(Outcome {
            verdict: outcome.verdict,
            limits,
        })
    }

    /// The store call failed: give back what was taken locally, clear the
    /// grant markers. A previous lease that went with a grant may or may
    /// not have been returned; it is not sent again (a quota's units
    /// returned twice would be an over-allowance), so its units are lost.
    fn failed(&mut self, admission: &Admission, plan: &Plan) {
        for (group, choices) in admission.groups.iter().zip(&plan.choices) {
            for (op, choice) in group.limits.iter().zip(choices) {
                match choice {
                    Choice::Local { id, .. } => self.untake(&op.key, *id, op.cost),
                    Choice::Grant { id, ask, .. } => {
                        self.clear_marker(&op.key, *id);
                        if ask.previous.is_some() {
                            handles::lease_events("dropped").increment(1);
                        }
                    }
                    Choice::Store => {}
                }
            }
        }
    }

    fn untake(&mut self, key: &str, id: u64, cost: u64) {
        if let Some(Slot::Held(lease)) = self.slots.get_mut(key)
            && lease.id == id
        {
            lease.untake(cost);
        }
    }

    fn clear_marker(&mut self, key: &str, id: u64) {
        if matches!(self.slots.get(key), Some(Slot::Granting { id: marker, .. }) if *marker == id) {
            self.slots.remove(key);
        }
    }

    /// One grant's answer. A slice in the state means the store reserved
    /// it (and took the previous lease back): install it. A definite
    /// answer without one means nothing was written: the previous lease
    /// goes back through the keeper. No answer: see [`Self::failed`].
    fn granted(
        &mut self,
        op: &LimitOp,
        grant: Granting<'_>,
        state: Option<LimitState>,
        admitted: bool,
        started: Instant,
    ) {
        let slice = state.and_then(|s| s.lease).filter(|g| g.units > 0);
        let Some((state, slice)) = state.zip(slice) else {
            self.clear_marker(&op.key, grant.id);
            match (state, grant.ask.previous) {
                (Some(_), Some(unused)) => self.returns.push((
                    grant.tag.to_owned(),
                    LeaseReturn {
                        key: op.key.clone(),
                        unused,
                    },
                )),
                (None, Some(_)) if !admitted => {
                    handles::lease_events("dropped").increment(1);
                }
                _ => {}
            }
            return;
        };
        let used = if admitted { op.cost } else { 0 };
        let now_us = grant.ask.ends_at_us.saturating_sub(grant.lease_us);
        let kind = match op.rule {
            Rule::Rate { interval_us, burst } => Kind::Rate {
                interval_us,
                burst,
                top: slice.top,
                base: slice.base,
                view_tat: slice.base.max(now_us) + used * interval_us,
            },
            Rule::Quota { window_end_us, .. } => Kind::Quota {
                epoch: slice.epoch,
                window_end_us,
                view_left: if admitted {
                    state.remaining
                } else {
                    state.remaining + op.cost
                },
            },
        };
        let lease = Lease {
            id: grant.id,
            tag: grant.tag.to_owned(),
            kind,
            granted: slice.units,
            used,
            granted_at: started,
            deadline: started + Duration::from_micros(grant.lease_us),
            ends_at_us: grant.ask.ends_at_us,
            last_use_us: now_us,
        };
        handles::lease_units("granted").increment(slice.units);
        handles::lease_events(if grant.ask.previous.is_some() {
            "renewed"
        } else {
            "taken"
        })
        .increment(1);
        match self.slots.get(&op.key) {
            None | Some(Slot::Granting { .. }) => {
                self.slots.insert(op.key.clone(), Slot::Held(lease));
            }
            // Another grant won the slot meanwhile: this slice goes back.
            Some(Slot::Held(_)) => {
                if let Some(unused) = lease.unused(now_us) {
                    self.returns.push((
                        lease.tag,
                        LeaseReturn {
                            key: op.key.clone(),
                            unused,
                        },
                    ));
                }
            }
        }
    }

    /// Takes what the keeper should send: the leases ended by `mono` /
    /// `now_us` (all of them when `everything`), the returns queued by
    /// the request path, and, when `flush`, the usage counted here.
    pub(super) fn take_due(
        &mut self,
        mono: Instant,
        now_us: u64,
        everything: bool,
        flush: bool,
    ) -> Due {
        let mut due = Due {
            returns: std::mem::take(&mut self.returns),
            usage: Vec::new(),
        };
        let stale = Duration::from_micros(self.duration_us).max(Duration::from_secs(1));
        self.slots.retain(|key, slot| match slot {
            Slot::Held(lease) => {
                if !everything && lease.alive(mono, now_us) {
                    return true;
                }
                if let Some(unused) = lease.unused(now_us.max(lease.last_use_us)) {
                    due.returns.push((
                        lease.tag.clone(),
                        LeaseReturn {
                            key: key.clone(),
                            unused,
                        },
                    ));
                }
                false
            }
            Slot::Granting { since, .. } => mono.duration_since(*since) < stale,
        });
        if flush || everything || self.usage.len() >= FLUSH_AT_KEYS {
            due.usage = self.usage.drain().map(|(_, v)| v).collect();
            self.flushed_at = mono;
        }
        due
    }
}

/// A grant being answered.
struct Granting<'a> {
    id: u64,
    ask: &'a LeaseAsk,
    lease_us: u64,
    tag: &'a str,
}

/// What the keeper sends in one settlement: (tag, item).
pub(super) struct Due {
    pub(super) returns: Vec<(String, LeaseReturn)>,
    pub(super) usage: Vec<(String, UsageCount)>,
}
