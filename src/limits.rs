//! Plans and their limits, compiled from a policy's `plans`.
//!
//! - [`gcra`] — the smooth rate (Generic Cell Rate Algorithm) math, the one
//!   definition both stores follow (the Lua script mirrors it line by line);
//! - [`calendar`] — calendar windows (minute … month) in IANA time zones;
//! - [`headers`] — the IETF `RateLimit-Policy` / `RateLimit` fields;
//! - [`lease`] — quota leases: slice sizes, and what a grant and a return
//!   do to a rate's TAT and a quota's counter (mirrored by the scripts);
//! - [`admission`] — turns a plan, the request's subjects and its nonces into
//!   the store's [`crate::store::Admission`] (keys, hash-tag groups).
//!
//! A plan is a named list of limits; each limit counts one subject (`app`,
//! `user`, `app-user`, `device` or `ip`) and is either a rate
//! (`requests` per `period`, `burst` at once) or a calendar quota
//! (`requests` per minute/hour/day/week/month in a time zone).

pub mod admission;
pub mod calendar;
pub mod gcra;
pub mod headers;
pub mod lease;

use std::time::Duration;

use crate::policy::types::{ApiPolicySpec, LimitKey, LimitSpec};

pub use admission::{Nonce, Subject};
pub use calendar::Calendar;
pub use gcra::Gcra;

/// The compiled plans of one policy.
#[derive(Debug, Default)]
pub struct Plans {
    plans: Vec<Plan>,
    /// Index of `defaultPlan` in `plans`.
    default: Option<usize>,
}

/// One plan: the limits an app on it gets.
#[derive(Debug)]
pub struct Plan {
    pub name: String,
    pub limits: Vec<Limit>,
}

/// One limit of a plan.
#[derive(Debug)]
pub struct Limit {
    /// The limit's name: part of store keys, metrics labels and headers, so
    /// restricted to `[A-Za-z0-9._-]`.
    pub name: String,
    pub key: LimitKey,
    pub kind: LimitKind,
}

/// A rate or a calendar quota.
#[derive(Debug)]
pub enum LimitKind {
    Rate(Gcra),
    Quota(Calendar),
}

impl Limit {
    /// The most a single request may cost under this limit: a request costing
    /// more could never pass, so such a route is a compile error.
    pub fn capacity(&self) -> u64 {
        match &self.kind {
            LimitKind::Rate(gcra) => gcra.burst,
            LimitKind::Quota(calendar) => calendar.requests,
        }
    }
}

/// Longest accepted plan or limit name.
const MAX_NAME: usize = 63;

fn check_name(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: {name:?} must be 1–{MAX_NAME} characters of A-Z a-z 0-9 . _ - \
             (it is part of store keys and RateLimit headers)"
        ))
    }
}

impl Plans {
    /// Compiles a policy's plans, checking `defaultPlan` and every route's
    /// `cost` against every limit (a cost above a limit's burst or quota
    /// could never pass). Errors name the field, e.g.
    /// `plans[1].limits[0].rate.burst: …`.
    pub fn compile(spec: &ApiPolicySpec) -> Result<Self, String> {
        let mut plans: Vec<Plan> = Vec::with_capacity(spec.plans.len());
        for (i, plan) in spec.plans.iter().enumerate() {
            let field = format!("plans[{i}]");
            check_name(&format!("{field}.name"), &plan.name)?;
            if plans.iter().any(|p| p.name == plan.name) {
                return Err(format!(
                    "{field}.name: plan {:?} is defined twice",
                    plan.name
                ));
            }
            let mut limits: Vec<Limit> = Vec::with_capacity(plan.limits.len());
            for (j, limit) in plan.limits.iter().enumerate() {
                let field = format!("{field}.limits[{j}]");
                let compiled = compile_limit(&field, limit)?;
                if limits.iter().any(|l| l.name == compiled.name) {
                    return Err(format!(
                        "{field}.name: limit {:?} is defined twice in plan {:?}",
                        compiled.name, plan.name
                    ));
                }
                limits.push(compiled);
            }
            plans.push(Plan {
                name: plan.name.clone(),
                limits,
            });
        }
        let default = match &spec.default_plan {
            None => None,
            Some(name) => Some(
                plans
                    .iter()
                    .position(|p| &p.name == name)
                    .ok_or_else(|| format!("defaultPlan: unknown plan {name:?}"))?,
            ),
        };
        for (r, route) in spec.routes.iter().enumerate() {
            let cost = route.cost.unwrap_or(1);
            for (i, plan) in plans.iter().enumerate() {
                for (j, limit) in plan.limits.iter().enumerate() {
                    if cost > limit.capacity() {
                        let what = match limit.kind {
                            LimitKind::Rate(_) => "burst",
                            LimitKind::Quota(_) => "quota",
                        };
                        return Err(format!(
                            "routes[{r}].cost: {cost} exceeds the {what} {} of \
                             plans[{i}].limits[{j}] ({}/{}); such a request could never pass",
                            limit.capacity(),
                            plan.name,
                            limit.name
                        ));
                    }
                }
            }
        }
        Ok(Self { plans, default })
    }

    /// True when a plan of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.plans.iter().any(|p| p.name == name)
    }

    /// The plan named `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.name == name)
    }

    /// The `defaultPlan`, if set.
    pub fn default_plan(&self) -> Option<&Plan> {
        self.default.and_then(|i| self.plans.get(i))
    }

    /// The plan of a request: the app's plan when this policy defines it,
    /// else the policy's `defaultPlan`. An app plan this policy does not
    /// define (an `AppRegistration` shared by several policies) falls back to
    /// the default plan, so it is never left without limits when a default
    /// exists.
    pub fn resolve(&self, app_plan: Option<&str>) -> Option<&Plan> {
        app_plan
            .and_then(|name| self.get(name))
            .or_else(|| self.default_plan())
    }

    /// Checks an `AppRegistration.plan` against this policy's plans; the
    /// error names the plan.
    pub fn check_app_plan(&self, plan: &str) -> Result<(), String> {
        if self.contains(plan) {
            Ok(())
        } else {
            Err(format!("plan: unknown plan {plan:?}"))
        }
    }

    /// Every plan, in policy order.
    pub fn iter(&self) -> impl Iterator<Item = &Plan> {
        self.plans.iter()
    }
}

fn compile_limit(field: &str, spec: &LimitSpec) -> Result<Limit, String> {
    check_name(&format!("{field}.name"), &spec.name)?;
    let kind = match (&spec.rate, &spec.quota) {
        (Some(rate), None) => {
            let requests = rate.requests;
            if requests == 0 {
                return Err(format!("{field}.rate.requests: must be at least 1"));
            }
            let period = rate.period.get();
            if period.is_zero() {
                return Err(format!("{field}.rate.period: must be longer than 0s"));
            }
            let burst = rate.burst.unwrap_or(requests);
            if burst == 0 {
                return Err(format!("{field}.rate.burst: must be at least 1"));
            }
            LimitKind::Rate(
                Gcra::new(requests, period, burst)
                    .map_err(|e| format!("{field}.rate.{}: {}", e.field, e.message))?,
            )
        }
        (None, Some(quota)) => {
            if quota.requests == 0 {
                return Err(format!("{field}.quota.requests: must be at least 1"));
            }
            if quota.requests > crate::policy::bounds::MAX_QUOTA_REQUESTS {
                return Err(format!(
                    "{field}.quota.requests: at most 2^53 ({})",
                    crate::policy::bounds::MAX_QUOTA_REQUESTS
                ));
            }
            let zone = quota.time_zone.as_deref().unwrap_or("UTC");
            LimitKind::Quota(
                Calendar::new(quota.requests, quota.reset, zone)
                    .map_err(|e| format!("{field}.quota.timeZone: {e}"))?,
            )
        }
        (Some(_), Some(_)) => {
            return Err(format!(
                "{field}: set exactly one of rate and quota, not both"
            ));
        }
        (None, None) => {
            return Err(format!("{field}: set one of rate and quota"));
        }
    };
    Ok(Limit {
        name: spec.name.clone(),
        key: spec.key,
        kind,
    })
}

/// Whole seconds, rounded up, at least one (`Retry-After`, header `t`).
pub(crate) fn ceil_secs(micros: u64) -> u64 {
    micros.div_ceil(1_000_000)
}

/// A `Duration` as whole microseconds, saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
