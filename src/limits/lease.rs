//! Lease arithmetic: how many units a replica may reserve of a limit (a
//! *slice*), what a rate's or a quota's stored state becomes when a slice is
//! granted, and when its unused part comes back.
//!
//! One definition for every store: the memory store calls these functions
//! and the Redis scripts (`store/scripts/admit.lua`, `settle.lua`) mirror
//! them line by line, as [`super::gcra`] is mirrored for single requests.
//! The lease layer that decides *when* to lease lives in
//! [`crate::store::lease`]; `docs/store.md` ("Quota leases") states the
//! guarantees proved here and tested by the property tests below.
//!
//! # Calendar quotas
//!
//! A grant adds the slice to the window's counter if it fits, like a
//! request of that cost; a return subtracts the unused units. Every unit a
//! replica admits was counted first, and a lease never outlives its window,
//! so the window's admissions never exceed the quota.
//!
//! # Rates (GCRA)
//!
//! A slice of `k` units granted at `s` for use until the lease end `e`
//! passes when `k` single requests at `s` would:
//! `max(TAT, s) + k × T − s ≤ burst × T`. It then stores
//!
//! ```text
//! TAT' = max(TAT, e) + k × T
//! ```
//!
//! — the units are charged *as if used at the lease's end*, the latest
//! instant the replica may use them. That is what keeps a rate exact: a
//! plain `max(TAT, s) + k × T` would let the bucket refill while the
//! replica still holds units, and a replica using its slice late while
//! another takes a fresh burst would admit up to `(e − s) / T` more than
//! the rate allows in a short window. With the charge at `e`, for any
//! window `[a, b]` the units used in it are at most `(b − a + burst × T) / T`
//! — exactly GCRA's bound for single requests (proved in `docs/store.md`,
//! checked by [`tests::rates_never_exceed_the_gcra_bound`]). The price:
//! while a lease is out and the bucket is less full than `e`, the gap
//! `e − max(TAT, s)` is charged too, so the rate's burst shrinks by up to
//! `(e − s) / T` units. Rate leases are therefore short: at most
//! `burst × T / RATE_LEASE_SHARE` (see [`rate_lease_us`]).
//!
//! Unused units of a rate go back only when nothing was charged on top of
//! the lease since (the stored TAT still equals the lease's `top`): then
//! `TAT' = max(base, r) + used × T`, as if the lease had been granted for
//! the units actually used, ending at the return time `r`. Otherwise the
//! units stay charged (an under-allowance that the refilling bucket
//! absorbs within their `k × T`): moving a TAT back by `u × T` below
//! another replica's later charge could undo *that* charge.

use super::gcra;

/// A slice takes at most this share (1/n) of what is left of a limit, so
/// near the limit slices shrink to single requests and, while one replica
/// holds a slice, the others find most of what was left.
pub const SLICE_SHARE: u64 = 8;

/// A rate's lease lasts at most `burst × T / RATE_LEASE_SHARE`: the gap
/// charged for it (module docs) costs at most that share of the burst.
pub const RATE_LEASE_SHARE: u64 = 8;

/// Leases shorter than this are not worth a store call: such limits (a
/// rate whose `burst × T` is under 80 ms, the last 10 ms of a calendar
/// window) keep the per-request path.
pub const MIN_LEASE_US: u64 = 10_000;

/// The most units one grant reserves, whatever the demand.
pub const MAX_SLICE: u64 = 1 << 30;

/// Units a grant reserves: the request's own `cost` at least, at most
/// what the replica asked for (`want`) and `1/SLICE_SHARE` of the
/// `available` units. `cost ≤ available` is the caller's precondition (the
/// request passes), so the slice never exceeds what is available.
pub fn slice(want: u64, cost: u64, available: u64) -> u64 {
    debug_assert!(cost <= available);
    (available / SLICE_SHARE).min(want).min(MAX_SLICE).max(cost)
}

/// How long a lease of a rate with this `interval_us` and `burst` may
/// last, at most `duration_us`; `None` when that is under
/// [`MIN_LEASE_US`] (the rate keeps the per-request path).
pub fn rate_lease_us(interval_us: u64, burst: u64, duration_us: u64) -> Option<u64> {
    let capacity = burst.saturating_mul(interval_us);
    let lease = duration_us.min(capacity / RATE_LEASE_SHARE);
    (lease >= MIN_LEASE_US).then_some(lease)
}

/// How long a lease of a calendar quota may last from `now_us`: at most
/// `duration_us` and never past the window's end; `None` when under
/// [`MIN_LEASE_US`].
pub fn quota_lease_us(window_end_us: u64, now_us: u64, duration_us: u64) -> Option<u64> {
    let lease = duration_us.min(window_end_us.saturating_sub(now_us));
    (lease >= MIN_LEASE_US).then_some(lease)
}

/// The outcome of a grant: the request's own view (as a single request
/// of `cost` would see it) and, when it passed, the slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The request's `cost` fits (and the slice, which includes it, was
    /// reserved).
    pub allowed: bool,
    /// Units reserved, the request's cost included; 0 when denied.
    pub granted: u64,
    /// The stored state before the grant (a rate's TAT, 0 when none; a
    /// quota's count).
    pub base: u64,
    /// The stored state after it (what a rate's return compares with).
    pub top: u64,
    /// What a single request of `cost` would have left and waited, for
    /// the RateLimit headers and `Retry-After`.
    pub remaining: u64,
    pub reset_us: u64,
    pub retry_after_us: u64,
}

/// A grant on a rate at `now`: up to `want` units (at least `cost`) for
/// use until `ends_at` (≥ `now`), charged at `ends_at` (module docs).
pub fn grant_rate(
    stored: Option<u64>,
    now: u64,
    cost: u64,
    want: u64,
    (interval_us, burst): (u64, u64),
    ends_at: u64,
) -> Grant {
    // A TAT in the past is no TAT (Redis may still hold the key a little).
    let stored = stored.filter(|&tat| tat > now);
    let single = gcra::check(stored, now, cost, interval_us, burst);
    let base = stored.unwrap_or(0);
    if !single.allowed {
        return Grant {
            allowed: false,
            granted: 0,
            base,
            top: base,
            remaining: single.remaining,
            reset_us: single.reset_us,
            retry_after_us: single.retry_after_us,
        };
    }
    let capacity = burst.saturating_mul(interval_us);
    let tat = base.max(now);
    let available = capacity.saturating_sub(tat - now) / interval_us;
    let granted = slice(want, cost, available);
    Grant {
        allowed: true,
        granted,
        base,
        top: tat.max(ends_at) + granted * interval_us,
        remaining: single.remaining,
        reset_us: single.reset_us,
        retry_after_us: 0,
    }
}

/// The TAT after returning a rate lease whose grant left `top` and found
/// `base`, of which `used` units were admitted, at `now`: `None` when the
/// stored TAT moved since or is past (the units stay charged), `Some(None)`
/// when nothing is left charged (delete the key), `Some(Some(tat))`
/// otherwise. A return never moves the TAT forward.
pub fn return_rate(
    stored: Option<u64>,
    (top, base, used): (u64, u64, u64),
    interval_us: u64,
    now: u64,
) -> Option<Option<u64>> {
    if stored != Some(top) || top <= now {
        return None;
    }
    let tat = (base.max(now) + used * interval_us).min(top);
    Some((tat > now).then_some(tat))
}

/// A grant on a calendar quota holding `count` of `limit`.
pub fn grant_quota(count: u64, limit: u64, cost: u64, want: u64, reset_us: u64) -> Grant {
    let available = limit.saturating_sub(count);
    if cost > available {
        return Grant {
            allowed: false,
            granted: 0,
            base: count,
            top: count,
            remaining: available,
            reset_us,
            retry_after_us: reset_us,
        };
    }
    let granted = slice(want, cost, available);
    Grant {
        allowed: true,
        granted,
        base: count,
        top: count + granted,
        remaining: available - cost,
        reset_us,
        retry_after_us: 0,
    }
}

#[cfg(test)]
mod tests;
