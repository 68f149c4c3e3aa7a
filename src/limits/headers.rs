//! The `RateLimit-Policy` and `RateLimit` response fields of the IETF
//! httpapi draft "RateLimit header fields for HTTP"
//! (draft-ietf-httpapi-ratelimit-headers-10, whose syntax -11 keeps): RFC 8941
//! structured fields, a List of Items named by a String.
//!
//! ```text
//! RateLimit-Policy: "per-second";q=10;w=1;tollgate-burst=20, "daily";q=10000;w=86400
//! RateLimit: "daily";r=17;t=3600
//! ```
//!
//! - `RateLimit-Policy` lists every limit of the plan: `q` the quota, `w` the
//!   window in seconds (a rate's period, rounded up; a calendar window's
//!   current length, so 82800 on a 23-hour DST day), and for rates the
//!   vendor parameter `tollgate-burst`.
//! - `RateLimit` names one limit, as the draft asks when several windows
//!   apply: the one with the fewest remaining units (on a denial, the
//!   limit that denied with the longest wait). `r` is what remains, `t` the
//!   seconds until it resets — on a denial the same instant as
//!   `Retry-After`.

use std::fmt::Write;

use super::admission::Counted;
use super::{LimitKind, ceil_secs};
use crate::store::LimitState;

/// The `RateLimit-Policy` value for the counted limits, written into one
/// string (no string per item).
pub fn policy(counted: &[&Counted<'_>]) -> Option<String> {
    if counted.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(48 * counted.len());
    for (i, c) in counted.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = match &c.limit.kind {
            LimitKind::Rate(gcra) => write!(
                out,
                "\"{}\";q={};w={};tollgate-burst={}",
                c.limit.name,
                gcra.requests,
                ceil_secs(super::micros(gcra.period)).max(1),
                gcra.burst
            ),
            LimitKind::Quota(calendar) => write!(
                out,
                "\"{}\";q={};w={}",
                c.limit.name,
                calendar.requests,
                c.window.map_or(0, |w| w.len_secs())
            ),
        };
    }
    Some(out)
}

/// The `RateLimit` value: the most constraining limit.
pub fn current(counted: &[&Counted<'_>], states: &[&LimitState]) -> Option<String> {
    let pairs = counted.iter().zip(states.iter());
    let denied = pairs
        .clone()
        .filter(|(_, s)| !s.allowed)
        .max_by_key(|(_, s)| s.retry_after_us);
    let (counted, state) = match denied {
        Some(pair) => pair,
        None => pairs.min_by_key(|(_, s)| s.remaining)?,
    };
    let t = if state.allowed {
        ceil_secs(state.reset_us)
    } else {
        ceil_secs(state.retry_after_us)
    };
    Some(format!(
        "\"{}\";r={};t={}",
        counted.limit.name, state.remaining, t
    ))
}
