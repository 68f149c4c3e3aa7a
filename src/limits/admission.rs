//! From a plan and a request's subjects to the store's [`Admission`]: which
//! key each limit counts, under which hash tag, plus the nonces to remember
//! and the usage counters to bump.
//!
//! The *primary* tag is the app's (`{a:<app>}`); a request without an app
//! uses its user's tag, else its address's, else `{anon}`. Nonces and usage
//! go to the primary group. Limits by subject:
//!
//! | key        | with the subject                | without it (anonymous / missing)          |
//! |------------|---------------------------------|-------------------------------------------|
//! | `app`      | app tag                         | primary tag (user, else IP)               |
//! | `app-user` | app tag, sub-key `u:<user>`     | app tag + `i:<ip>`; no app: primary       |
//! | `device`   | app tag, sub-key `d:<device>`   | app tag + `i:<ip>`; no app: primary       |
//! | `user`     | user tag                        | IP tag, else `{anon}`                     |
//! | `ip`       | IP tag                          | `{anon}`                                  |
//!
//! So an anonymous request is still limited per client, never by one bucket
//! shared by every anonymous caller.

use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::calendar::Window;
use super::{Limit, LimitKind, Plan, micros};
use crate::policy::types::LimitKey;
use crate::store::{
    Admission, Group, LimitOp, NonceOp, QUOTA_KEY_GRACE_US, Retention, Rule, UsageOp, keys,
};

/// Who a request is, as far as limits care.
#[derive(Clone, Copy, Debug, Default)]
pub struct Subject<'a> {
    pub app: Option<&'a str>,
    /// (issuer, subject) of the authenticated user.
    pub user: Option<(&'a str, &'a str)>,
    pub device: Option<&'a str>,
    /// The client address from the trusted origin.
    pub ip: Option<IpAddr>,
}

/// A nonce to remember: a DPoP proof's `jti`, an app token's `jti` under
/// `attestation.singleUse`, a signature's `nonce`. `ttl` must cover the
/// credential's whole acceptance window (its `exp`, or `iat` + max age,
/// plus leeway): never shorter, or the credential could be replayed after
/// its nonce expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nonce {
    /// What kind of nonce (`dpop`, `attestation`, `signature`): nonces of
    /// different kinds never collide.
    pub scope: String,
    pub value: String,
    pub ttl: Duration,
}

/// What to build an admission from.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The policy id (`namespace/name`): limits of different policies never
    /// share counters.
    pub policy: &'a str,
    pub plan: Option<&'a Plan>,
    pub subject: Subject<'a>,
    /// The route's cost (default 1).
    pub cost: u64,
    pub nonces: &'a [Nonce],
    /// µs since the Unix epoch.
    pub now_us: u64,
    pub retention: Retention,
}

/// A built admission and, parallel to each group's `limits`, the plan limit
/// (and calendar window) each op checks.
#[derive(Debug)]
pub struct Built<'p> {
    pub admission: Admission,
    pub limits: Vec<Vec<Counted<'p>>>,
}

/// One plan limit as counted for this request.
#[derive(Clone, Copy, Debug)]
pub struct Counted<'p> {
    pub limit: &'p Limit,
    /// The calendar window, for quotas.
    pub window: Option<Window>,
}

/// Builds the admission of one request.
pub fn build<'p>(request: &Request<'p>) -> Result<Built<'p>, String> {
    let s = request.subject;
    let user_digest = s.user.map(|(iss, sub)| keys::user_digest(iss, sub));
    // The IP digests are computed only when a key needs them (most plans
    // key by app): hashing the address costs more than the rest of a key.
    let ip_tag = || s.ip.map(keys::ip_tag);
    let ip_sub = || s.ip.map(|ip| format!("i:{}", keys::ip_digest(ip)));
    let app_tag = s.app.map(keys::app_tag);
    let primary = app_tag
        .clone()
        .or_else(|| s.user.map(|(iss, sub)| keys::user_tag(iss, sub)))
        .or_else(ip_tag)
        .unwrap_or_else(keys::anonymous_tag);

    let mut built = Built {
        admission: Admission {
            now_us: request.now_us,
            groups: Vec::new(),
        },
        limits: Vec::new(),
    };
    let primary_index = group_index(&mut built, &primary);

    for nonce in request.nonces {
        let ttl_ms = u64::try_from(nonce.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        built.admission.groups[primary_index].nonces.push(NonceOp {
            key: keys::nonce(&primary, &nonce.scope, &nonce.value),
            ttl_ms,
        });
    }

    if let Some(plan) = request.plan {
        for limit in &plan.limits {
            let (tag, sub): (String, Option<String>) = match limit.key {
                LimitKey::App => (app_tag.clone().unwrap_or_else(|| primary.clone()), None),
                LimitKey::AppUser => match (&app_tag, &user_digest) {
                    (Some(tag), Some(user)) => (tag.clone(), Some(format!("u:{user}"))),
                    (Some(tag), None) => (tag.clone(), ip_sub()),
                    (None, _) => (primary.clone(), None),
                },
                LimitKey::Device => match (&app_tag, s.device) {
                    (Some(tag), Some(device)) => (
                        tag.clone(),
                        Some(format!("d:{}", keys::device_digest(device))),
                    ),
                    (Some(tag), None) => (tag.clone(), ip_sub()),
                    (None, _) => (primary.clone(), None),
                },
                LimitKey::User => (
                    s.user
                        .map(|(iss, sub)| keys::user_tag(iss, sub))
                        .or_else(ip_tag)
                        .unwrap_or_else(keys::anonymous_tag),
                    None,
                ),
                LimitKey::Ip => (ip_tag().unwrap_or_else(keys::anonymous_tag), None),
            };
            let sub = sub.as_deref();
            let (key, rule, window) = match &limit.kind {
                LimitKind::Rate(gcra) => (
                    keys::rate(&tag, request.policy, &plan.name, &limit.name, sub),
                    Rule::Rate {
                        interval_us: gcra.interval_us,
                        burst: gcra.burst,
                    },
                    None,
                ),
                LimitKind::Quota(calendar) => {
                    let window = calendar.window_at(request.now_us)?;
                    (
                        keys::quota(
                            &tag,
                            request.policy,
                            &plan.name,
                            &limit.name,
                            window.id(),
                            sub,
                        ),
                        Rule::Quota {
                            limit: calendar.requests,
                            window_end_us: window.end_us,
                            expire_at_us: window.end_us + QUOTA_KEY_GRACE_US,
                        },
                        Some(window),
                    )
                }
            };
            let g = group_index(&mut built, &tag);
            built.admission.groups[g].limits.push(LimitOp {
                key,
                cost: request.cost,
                rule,
            });
            built.limits[g].push(Counted { limit, window });
        }
    }

    if let Some(app) = s.app {
        let (day, day_end_s) = utc_day(request.now_us)?;
        let retention = request.retention;
        let usage = &mut built.admission.groups[primary_index].usage;
        usage.push(UsageOp {
            key: keys::usage_app(app, &day),
            cost: request.cost,
            expire_at_s: day_end_s + u64::from(retention.app_days) * 86_400,
        });
        if let Some(user) = &user_digest
            && retention.user_days > 0
        {
            usage.push(UsageOp {
                key: keys::usage_user(app, &day, user),
                cost: request.cost,
                expire_at_s: day_end_s + u64::from(retention.user_days) * 86_400,
            });
        }
    }

    // Drop a primary group left empty (an anonymous request whose only
    // limits live under other tags).
    if built.admission.groups[primary_index]
        == (Group {
            tag: primary.clone(),
            ..Group::default()
        })
    {
        built.admission.groups.remove(primary_index);
        built.limits.remove(primary_index);
    }
    Ok(built)
}

fn group_index(built: &mut Built<'_>, tag: &str) -> usize {
    if let Some(i) = built.admission.groups.iter().position(|g| g.tag == tag) {
        return i;
    }
    built.admission.groups.push(Group {
        tag: tag.to_owned(),
        ..Group::default()
    });
    built.limits.push(Vec::new());
    built.admission.groups.len() - 1
}

/// The UTC day (`YYYY-MM-DD`) of `now_us` and the Unix second it ends at.
pub fn utc_day(now_us: u64) -> Result<(String, u64), String> {
    let ts = Timestamp::from_microsecond(i64::try_from(now_us).unwrap_or(i64::MAX))
        .map_err(|e| e.to_string())?;
    let date = ts.to_zoned_datetime(TimeZone::UTC).date();
    let start = micros_of_day(date)?;
    Ok((date.to_string(), start / 1_000_000 + 86_400))
}

fn micros_of_day(date: jiff::civil::Date) -> Result<u64, String> {
    let zdt = date
        .to_zoned_datetime(TimeZone::UTC)
        .map_err(|e| e.to_string())?;
    u64::try_from(zdt.timestamp().as_microsecond()).map_err(|e| e.to_string())
}

/// A `Duration` since the epoch as µs (for callers holding a clock reading).
pub fn now_us(now: Duration) -> u64 {
    micros(now)
}
