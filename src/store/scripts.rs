//! The Lua scripts the Redis store runs, and their one argument layout.
//!
//! Both scripts take one hash-tag group ([`super::Group`]) at a time, so all
//! their keys sit in one Redis Cluster slot:
//!
//! ```text
//! KEYS = nonce keys (n), then limit keys (l), then usage keys (u)
//! ARGV[1]    now, µs since the Unix epoch (the replica clock)
//! ARGV[2..4] n, l, u
//! then per nonce:  ttl_ms
//! then per limit:  kind, cost, a, b, c
//!                  "r" (GCRA):  a = interval_us, b = burst, c = 0
//!                  "q" (quota): a = limit, b = window_end_us, c = expire_at_us
//! then per usage:  cost, expire_at_s
//! ```
//!
//! - [`ADMIT`] (`scripts/admit.lua`) checks every nonce (EXISTS) and every
//!   limit, and only when all pass remembers the nonces (SET … PX), moves the
//!   GCRA TATs (SET … PX), increments the quota counters (INCRBY +
//!   PEXPIRE) and the usage hashes (HINCRBY + EXPIRE). Reply: `{status,
//!   replay_index, then 4 integers per limit: allowed, remaining, reset_us,
//!   retry_after_us}`, status 0 admitted, 1 replay, 2 exceeded.
//! - [`REFUND`] (`scripts/refund.lua`) undoes an admitted group when another
//!   group of the same request denied. Reply: 1.
//!
//! Scripts are sent once and then invoked by SHA-1 (`EVALSHA`); after
//! `NOSCRIPT` (a restarted or failed-over Redis, or `SCRIPT FLUSH`) the
//! script is loaded again and the call retried, transparently
//! (`redis::Script::invoke_async`; on a Cluster `SCRIPT LOAD` goes to every
//! primary). Scripts read no clock and no random source, so they replicate
//! deterministically. Expiries are *relative* (PX, PEXPIRE, EXPIRE computed
//! from the caller's `now`), so they mean the same whatever Redis's own
//! clock says.

use std::sync::LazyLock;

use super::{Group, Rule};

/// The admission script.
pub static ADMIT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/admit.lua")));

/// The refund script.
pub static REFUND: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/refund.lua")));

/// KEYS and ARGV of `group` at `now_us`, in the layout above.
pub fn layout(group: &Group, now_us: u64) -> (Vec<&str>, Vec<String>) {
    let mut keys: Vec<&str> =
        Vec::with_capacity(group.nonces.len() + group.limits.len() + group.usage.len());
    let mut argv: Vec<String> =
        Vec::with_capacity(4 + group.nonces.len() + 5 * group.limits.len() + 2 * group.usage.len());
    argv.push(now_us.to_string());
    argv.push(group.nonces.len().to_string());
    argv.push(group.limits.len().to_string());
    argv.push(group.usage.len().to_string());
    for nonce in &group.nonces {
        keys.push(&nonce.key);
        argv.push(nonce.ttl_ms.max(1).to_string());
    }
    for limit in &group.limits {
        keys.push(&limit.key);
        let (kind, a, b, c) = match limit.rule {
            Rule::Rate { interval_us, burst } => ("r", interval_us, burst, 0),
            Rule::Quota {
                limit,
                window_end_us,
                expire_at_us,
            } => ("q", limit, window_end_us, expire_at_us),
        };
        argv.push(kind.to_owned());
        argv.push(limit.cost.to_string());
        argv.push(a.to_string());
        argv.push(b.to_string());
        argv.push(c.to_string());
    }
    for usage in &group.usage {
        keys.push(&usage.key);
        argv.push(usage.cost.to_string());
        argv.push(usage.expire_at_s.to_string());
    }
    (keys, argv)
}
