//! The Lua scripts the Redis store runs, and their one argument layout.
//!
//! On a Redis Cluster both scripts take one hash-tag group
//! ([`super::Group`]) at a time, so all their keys sit in one slot; on one
//! Redis server, where hash tags decide nothing, one call takes every group
//! of a request (their nonces, limits and usage, in group order):
//!
//! ```text
//! KEYS = nonce keys (n), then limit keys (l), then usage keys (u)
//! ARGV[1]    now, µs since the Unix epoch (the replica clock)
//! ARGV[2..4] n, l, u
//! ARGV[5]    the admission's attempt id (the value its nonces hold)
//! then per nonce:  ttl_ms
//! then per limit:  kind, cost, then by kind
//!                  "r" (GCRA):  interval_us, burst, 0
//!                  "q" (quota): limit, window_end_us, expire_at_us
//!                  "R" (GCRA lease):  interval_us, burst, ends_at_us, want,
//!                                     prev_top, prev_base, prev_used
//!                  "Q" (quota lease): limit, window_end_us, expire_at_us, want,
//!                                     prev_units, prev_epoch
//! then per usage:  cost, expire_at_s
//! ```
//!
//! (A lease op without a previous lease passes zeros for `prev_*`.)
//!
//! - [`ADMIT`] (`scripts/admit.lua`) checks every nonce (GET: absent, or
//!   holding this attempt's id — an earlier try of this very call already
//!   applied the group, status 3) and every limit (GET), and only when all
//!   pass remembers the nonces (SET <attempt> … PX),
//!   moves the GCRA TATs (SET … PX), counts the quotas (SET … PX when the
//!   window's counter is new, else INCRBY, which keeps its TTL) and the
//!   usage hashes (HINCRBY of `count`, plus `extra` when the cost is not 1;
//!   EXPIRE only when the HINCRBY created the hash's `count`). Reply:
//!   `{status, replay_index, then 4 integers per limit: allowed, remaining,
//!   reset_us, retry_after_us}`, status 0 admitted, 1 replay, 2 exceeded,
//!   3 applied by an earlier attempt (no limit states).
//!   Each command a script runs costs Redis CPU, so the common request (a
//!   rate, a quota and two usage hashes, cost 1) runs six: GET, SET, GET,
//!   INCRBY, HINCRBY, HINCRBY.
//! - [`REFUND`] (`scripts/refund.lua`) undoes an admitted group when another
//!   group of the same request denied (on a Cluster); it forgets only the
//!   nonces that hold this attempt's id, and leaves lease ops alone (the
//!   slice stays with the replica). Reply: 1.
//! - [`SETTLE`] (`scripts/settle.lua`) hands back what the lease layer
//!   held, once per settlement id (a marker key, 10 minutes):
//!
//!   ```text
//!   KEYS = the marker, then return keys (r), then usage keys (u)
//!   ARGV[1] now, ARGV[2..3] r, u
//!   then per return: kind, a, b, c, d
//!                    "r" (GCRA):  interval_us, top, base, used
//!                    "q" (quota): units, epoch, 0, 0
//!   then per usage:  requests, cost, expire_at_s
//!   ```
//!
//!   Reply: `{1}` applied, `{0}` applied before.
//!
//! Scripts are sent once and then invoked by SHA-1 (`EVALSHA`, built by
//! [`invocation`]); after `NOSCRIPT` (a restarted or failed-over Redis, or
//! `SCRIPT FLUSH`) the store loads the script again and retries the call,
//! transparently (on a Cluster `SCRIPT LOAD` goes to every primary).
//! Scripts read no clock and no random source, so they replicate
//! deterministically. Expiries are *relative* (PX, PEXPIRE, EXPIRE computed
//! from the caller's `now`), so they mean the same whatever Redis's own
//! clock says.

use std::sync::LazyLock;

use super::{Group, Rule, SettleGroup, Unused};

/// The admission script.
pub static ADMIT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/admit.lua")));

/// The refund script.
pub static REFUND: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/refund.lua")));

/// The settle script.
pub static SETTLE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/settle.lua")));

/// Bytes reserved per numeric argument (a u64 has at most 20 digits).
const NUMBER_BYTES: usize = 20;

/// The `EVALSHA` of `script` for `groups` (one on a Cluster, every group
/// of the request on one server) at `now_us`, KEYS and ARGV in the layout
/// above. Everything is written straight into the command's one buffer,
/// numbers in decimal without an intermediate `String`: building this call
/// runs once per admitted request.
pub fn invocation(
    script: &redis::Script,
    groups: &[&Group],
    now_us: u64,
    attempt: &str,
) -> redis::Cmd {
    let nonces = || groups.iter().flat_map(|g| g.nonces.iter());
    let limits = || groups.iter().flat_map(|g| g.limits.iter());
    let usage = || groups.iter().flat_map(|g| g.usage.iter());
    let (n, l, u) = (nonces().count(), limits().count(), usage().count());
    let key_bytes: usize = nonces().map(|x| x.key.len()).sum::<usize>()
        + limits().map(|x| x.key.len()).sum::<usize>()
        + usage().map(|x| x.key.len()).sum::<usize>();
    let leases = limits().filter(|x| x.lease.is_some()).count();
    let numbers = 4 + n + 5 * l + 3 * leases + 2 * u;
    let hash = script.get_hash();
    let mut cmd = redis::Cmd::with_capacity(
        4 + n + l + u + numbers,
        "EVALSHA".len()
            + hash.len()
            + NUMBER_BYTES
            + key_bytes
            + attempt.len()
            + numbers * NUMBER_BYTES,
    );
    cmd.arg("EVALSHA").arg(hash).arg(n + l + u);
    for nonce in nonces() {
        cmd.arg(nonce.key.as_str());
    }
    for limit in limits() {
        cmd.arg(limit.key.as_str());
    }
    for usage in usage() {
        cmd.arg(usage.key.as_str());
    }
    cmd.arg(now_us).arg(n).arg(l).arg(u).arg(attempt);
    for nonce in nonces() {
        cmd.arg(nonce.ttl_ms.max(1));
    }
    for limit in limits() {
        let lease = limit.lease;
        match (limit.rule, lease) {
            (Rule::Rate { interval_us, burst }, None) => {
                cmd.arg("r")
                    .arg(limit.cost)
                    .arg(interval_us)
                    .arg(burst)
                    .arg(0);
            }
            (Rule::Rate { interval_us, burst }, Some(ask)) => {
                let (top, base, used) = match ask.previous {
                    Some(Unused::Rate {
                        top, base, used, ..
                    }) => (top, base, used),
                    _ => (0, 0, 0),
                };
                cmd.arg("R")
                    .arg(limit.cost)
                    .arg(interval_us)
                    .arg(burst)
                    .arg(ask.ends_at_us)
                    .arg(ask.want)
                    .arg(top)
                    .arg(base)
                    .arg(used);
            }
            (
                Rule::Quota {
                    limit: max,
                    window_end_us,
                    expire_at_us,
                },
                lease,
            ) => {
                cmd.arg(if lease.is_some() { "Q" } else { "q" })
                    .arg(limit.cost)
                    .arg(max)
                    .arg(window_end_us)
                    .arg(expire_at_us);
                if let Some(ask) = lease {
                    let (units, epoch) = match ask.previous {
                        Some(Unused::Quota { units, epoch }) => (units, epoch),
                        _ => (0, 0),
                    };
                    cmd.arg(ask.want).arg(units).arg(epoch);
                }
            }
        }
    }
    for usage in usage() {
        cmd.arg(usage.cost).arg(usage.expire_at_s);
    }
    cmd
}

/// The `EVALSHA` of [`SETTLE`] for `groups` (one on a Cluster, all on one
/// server), `marker` the settlement's key ([`super::keys::settled`]) under
/// the first group's tag.
pub fn settlement(groups: &[&SettleGroup], marker: &str, now_us: u64) -> redis::Cmd {
    let returns = || groups.iter().flat_map(|g| g.returns.iter());
    let usage = || groups.iter().flat_map(|g| g.usage.iter());
    let (r, u) = (returns().count(), usage().count());
    let hash = SETTLE.get_hash();
    let mut cmd = redis::Cmd::with_capacity(
        6 + 6 * r + 4 * u,
        "EVALSHA".len()
            + hash.len()
            + marker.len()
            + 64 * (r + u)
            + NUMBER_BYTES * (3 + 5 * r + 3 * u),
    );
    cmd.arg("EVALSHA").arg(hash).arg(1 + r + u).arg(marker);
    for returned in returns() {
        cmd.arg(returned.key.as_str());
    }
    for usage in usage() {
        cmd.arg(usage.key.as_str());
    }
    cmd.arg(now_us).arg(r).arg(u);
    for returned in returns() {
        match returned.unused {
            Unused::Rate {
                interval_us,
                top,
                base,
                used,
            } => cmd.arg("r").arg(interval_us).arg(top).arg(base).arg(used),
            Unused::Quota { units, epoch } => cmd.arg("q").arg(units).arg(epoch).arg(0).arg(0),
        };
    }
    for usage in usage() {
        cmd.arg(usage.requests)
            .arg(usage.cost)
            .arg(usage.expire_at_s);
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LimitOp, NonceOp, UsageOp};

    #[test]
    fn invocation_follows_the_layout() {
        let group = Group {
            tag: "{a:x}".into(),
            nonces: vec![NonceOp {
                key: "tg:{a:x}:n:dpop:d".into(),
                ttl_ms: 0,
            }],
            limits: vec![
                LimitOp {
                    key: "tg:{a:x}:r:p:free:ps".into(),
                    cost: 2,
                    rule: Rule::Rate {
                        interval_us: 100_000,
                        burst: 5,
                    },
                    lease: None,
                },
                LimitOp {
                    key: "tg:{a:x}:q:p:free:daily:1714521600".into(),
                    cost: 2,
                    rule: Rule::Quota {
                        limit: 10_000,
                        window_end_us: 1_714_608_000_000_000,
                        expire_at_us: 1_714_608_060_000_000,
                    },
                    lease: None,
                },
            ],
            usage: vec![UsageOp {
                key: "tg:{a:x}:u:2024-05-01".into(),
                cost: 2,
                expire_at_s: 1_749_168_000,
            }],
        };
        let cmd = invocation(&ADMIT, &[&group], 1_714_560_000_123_456, "a1");
        let args: Vec<String> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
                _ => "<not a plain argument>".to_owned(),
            })
            .collect();
        let expected = [
            "EVALSHA",
            ADMIT.get_hash(),
            "4",
            "tg:{a:x}:n:dpop:d",
            "tg:{a:x}:r:p:free:ps",
            "tg:{a:x}:q:p:free:daily:1714521600",
            "tg:{a:x}:u:2024-05-01",
            "1714560000123456",
            "1",
            "2",
            "1",
            "a1",
            // The nonce's TTL is at least 1 ms.
            "1",
            "r",
            "2",
            "100000",
            "5",
            "0",
            "q",
            "2",
            "10000",
            "1714608000000000",
            "1714608060000000",
            "2",
            "1749168000",
        ];
        assert_eq!(args, expected);
    }
}
