//! GCRA — the Generic Cell Rate Algorithm (ITU-T I.371), the smooth rate
//! behind `rate: {requests, period, burst}`.
//!
//! One value per subject, the *theoretical arrival time* (TAT): the instant
//! the subject's bucket would be empty again if it sent nothing more. With
//! the emission interval `T = period / requests` and the capacity
//! `burst × T`, a request of `cost` units arriving at `now` passes when
//!
//! ```text
//! tat     = max(stored TAT or now, now)
//! new_tat = tat + cost × T
//! pass   ⇔ new_tat − now ≤ burst × T
//! ```
//!
//! and then the store keeps `new_tat` until it is in the past (the key
//! expires at `new_tat`). So `burst` requests pass at once, after which one
//! passes every `T`. A denied request stores nothing.
//!
//! Times are whole microseconds since the Unix epoch. `T` is rounded *up* to
//! a whole microsecond, so rounding can only make a limit stricter, never
//! looser. The Redis script (`store/scripts/admit.lua`) implements exactly
//! [`check`]; Lua numbers are doubles, exact for integers below 2^53, which
//! [`Gcra::new`] guarantees for every value the script computes.

use std::time::Duration;

/// The largest `burst × T` accepted (µs, about 142 years): keeps
/// `now + burst × T` below 2^53 so the Lua script's doubles stay exact.
const MAX_CAPACITY_US: u64 = 1 << 52;

/// A compiled rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gcra {
    pub requests: u64,
    pub period: Duration,
    pub burst: u64,
    /// Emission interval `T` in µs, rounded up.
    pub interval_us: u64,
}

/// Why a rate cannot be compiled: the field (`requests`, `period`, `burst`)
/// and the problem.
#[derive(Debug)]
pub struct GcraError {
    pub field: &'static str,
    pub message: String,
}

impl Gcra {
    /// Compiles `requests` per `period` with `burst` at once.
    pub fn new(requests: u64, period: Duration, burst: u64) -> Result<Self, GcraError> {
        let period_us = super::micros(period);
        if requests == 0 || requests > period_us {
            return Err(GcraError {
                field: "requests",
                message: format!(
                    "{requests} per {period:?} is finer than one request per microsecond"
                ),
            });
        }
        let interval_us = period_us.div_ceil(requests);
        let capacity = burst.saturating_mul(interval_us);
        if burst == 0 || capacity > MAX_CAPACITY_US {
            return Err(GcraError {
                field: "burst",
                message: format!("{burst} is out of range for this rate"),
            });
        }
        Ok(Self {
            requests,
            period,
            burst,
            interval_us,
        })
    }

    /// `burst × T`: how far ahead of now the TAT may run.
    pub fn capacity_us(&self) -> u64 {
        self.burst * self.interval_us
    }
}

/// The result of one GCRA check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The TAT to store when the request is consumed.
    pub new_tat: u64,
    /// Units that could still pass right now (after this request, when
    /// allowed).
    pub remaining: u64,
    /// µs until the bucket is full again (the whole burst available).
    pub reset_us: u64,
    /// µs until this request could pass; 0 when allowed.
    pub retry_after_us: u64,
}

/// Checks a request of `cost` units at `now` against a stored TAT.
pub fn check(
    stored_tat: Option<u64>,
    now: u64,
    cost: u64,
    interval_us: u64,
    burst: u64,
) -> Verdict {
    let capacity = burst.saturating_mul(interval_us);
    let tat = stored_tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(cost.saturating_mul(interval_us));
    if new_tat - now <= capacity {
        Verdict {
            allowed: true,
            new_tat,
            remaining: (capacity - (new_tat - now)) / interval_us,
            reset_us: new_tat - now,
            retry_after_us: 0,
        }
    } else {
        Verdict {
            allowed: false,
            new_tat: tat,
            remaining: capacity.saturating_sub(tat - now) / interval_us,
            reset_us: tat - now,
            retry_after_us: new_tat - now - capacity,
        }
    }
}

/// The TAT after refunding `cost` units: what it would have been without
/// them (a TAT in the past is the same as no TAT).
pub fn refund(stored_tat: u64, cost: u64, interval_us: u64) -> u64 {
    stored_tat.saturating_sub(cost.saturating_mul(interval_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn burst_passes_at_once_then_one_per_interval() {
        let g = Gcra::new(10, Duration::from_secs(1), 5).unwrap();
        assert_eq!(g.interval_us, 100_000);
        let now = 1_700_000_000 * S;
        let mut tat = None;
        for i in 0..5 {
            let v = check(tat, now, 1, g.interval_us, g.burst);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 4 - i);
            tat = Some(v.new_tat);
        }
        let v = check(tat, now, 1, g.interval_us, g.burst);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_us, 100_000);
        assert_eq!(v.remaining, 0);
        // One interval later exactly one more passes.
        let later = now + 100_000;
        let v = check(tat, later, 1, g.interval_us, g.burst);
        assert!(v.allowed);
        let v2 = check(Some(v.new_tat), later, 1, g.interval_us, g.burst);
        assert!(!v2.allowed);
    }

    #[test]
    fn cost_consumes_several_units_and_refund_restores() {
        let g = Gcra::new(10, Duration::from_secs(1), 10).unwrap();
        let now = 5 * S;
        let v = check(None, now, 7, g.interval_us, g.burst);
        assert!(v.allowed);
        assert_eq!(v.remaining, 3);
        let denied = check(Some(v.new_tat), now, 4, g.interval_us, g.burst);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after_us, 100_000);
        assert_eq!(refund(v.new_tat, 7, g.interval_us), now);
    }

    #[test]
    fn rounding_only_makes_limits_stricter() {
        let g = Gcra::new(3, Duration::from_secs(1), 3).unwrap();
        assert_eq!(g.interval_us, 333_334);
        assert!(g.interval_us * 3 >= S);
    }

    #[test]
    fn rejects_rates_finer_than_a_microsecond_and_huge_bursts() {
        assert_eq!(
            Gcra::new(2_000_000, Duration::from_secs(1), 1)
                .unwrap_err()
                .field,
            "requests"
        );
        assert_eq!(
            Gcra::new(1, Duration::from_secs(86_400 * 365), 1_000_000)
                .unwrap_err()
                .field,
            "burst"
        );
    }
}
