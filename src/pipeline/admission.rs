//! Stage 7: admission — replay nonces, every quota check, consumption and
//! usage metering in one store call (one Redis round trip per hash tag).
//!
//! Inputs: the policy's plans, the app's plan (else `defaultPlan`), the
//! route's cost, the app, user, device and client address, and the nonces
//! the authentication stages collected. Outcomes:
//!
//! - admitted → allow, with `RateLimit-Policy` / `RateLimit` response
//!   headers when `response.rateLimitHeaders` is set;
//! - a remembered nonce → 401 `replay_detected`;
//! - a limit exceeded → 429 `quota_exceeded` with `Retry-After`, the limit
//!   named in the detail, and the RateLimit headers when enabled; nothing
//!   was consumed;
//! - a store failure → the policy's `onStoreError` (`deny`: 503
//!   `store_unavailable`; `allow`: the request passes unchecked, counted
//!   and logged). Nonces follow `replay.onStoreError` instead, so failing
//!   open on quotas never opens replays.

use std::time::Instant;

use crate::authn::app::AppIdentity;
use crate::authn::user::UserIdentity;
use crate::decision::{Deny, StepOutcome};
use crate::limits::admission::{self, Counted, Request, Subject};
use crate::limits::{Nonce, ceil_secs, headers};
use crate::origin::Origin;
use crate::policy::snapshot::{CompiledPolicy, Route};
use crate::policy::types::{LeaseMode, StoreErrorAction};
use crate::reason::Reason;
use crate::store::{Leasing, LimitState, Outcome, StoreError, Verdict};
use crate::telemetry::{handles, trace};
use opentelemetry::trace::SpanKind;

use super::{Deps, Run};

/// What an admitted request adds to the response.
pub(super) type ResponseHeaders = Vec<(String, String)>;

/// The identities and credentials the stage works from.
pub(super) struct Inputs<'a> {
    pub route: Option<&'a Route>,
    pub user: Option<&'a UserIdentity>,
    pub app: Option<&'a AppIdentity>,
    pub origin: &'a Origin,
    /// Nonces to remember (DPoP `jti`, single-use app token `jti`,
    /// signature `nonce`), collected by the authentication stages.
    pub nonces: &'a [Nonce],
}

/// Runs the stage: build the admission, ask the store, and turn its
/// verdict (or its failure) into the answer.
pub(super) async fn check(
    policy: &CompiledPolicy,
    inputs: Inputs<'_>,
    deps: &Deps,
    run: &mut Run,
) -> Result<ResponseHeaders, Deny> {
    let plan = policy
        .plans
        .resolve(inputs.app.and_then(|a| a.plan.as_deref()));
    let cost = inputs.route.map_or(1, |r| r.cost);
    let request = Request {
        policy: policy.id.as_str(),
        plan,
        subject: Subject {
            app: inputs.app.map(|a| a.app_id.as_str()),
            user: inputs.user.map(|u| (u.issuer.as_str(), u.subject.as_str())),
            user_digest: inputs.user.and_then(|u| u.store_digest.as_deref()),
            device: inputs.app.and_then(|a| a.device.as_deref()),
            ip: inputs
                .origin
                .client_ip
                .map(|ip| deps.settings.ipv6_limit_prefix.network_of(ip)),
        },
        cost,
        nonces: inputs.nonces,
        now_us: admission::now_us(deps.clock.now()),
        retention: deps.store.retention(),
        leasing: match policy.leases {
            LeaseMode::Auto => Leasing::Auto,
            LeaseMode::Off => Leasing::Off,
        },
    };
    let built = match admission::build(&request) {
        Ok(built) => built,
        Err(e) => {
            let deny = Deny::new(
                Reason::StoreUnavailable,
                format!("cannot compute quota windows: {e}"),
            );
            run.note("admission", StepOutcome::Deny, || deny.detail.clone());
            return Err(deny);
        }
    };
    if built.admission.is_empty() {
        run.note(
            "admission",
            StepOutcome::Skip,
            || "no limits, nonces or usage for this request",
        );
        return Ok(Vec::new());
    }

    let store = deps.store.kind();
    let mut span = trace::child("store admit", SpanKind::Client);
    span.set("tollgate.store", store);
    span.set("db.operation.name", "admit");
    let started = Instant::now();
    let result = deps.store.admit(&built.admission).await;
    handles::store_duration(store, "admit").record(started.elapsed().as_secs_f64());
    match &result {
        Ok(outcome) => span.set("tollgate.store.verdict", verdict_label(&outcome.verdict)),
        Err(e) => span.fail(e.kind_label()),
    }
    drop(span);
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(e) => return store_failed(policy, &built, inputs.nonces, (store, &e), run),
    };
    let answer = Answer {
        policy,
        built: &built,
        outcome: &outcome,
        nonces: inputs.nonces,
        plan_name: plan.map_or("-", |p| p.name.as_str()),
        cost,
    };
    match outcome.verdict {
        Verdict::Admitted => Ok(answer.admitted(run)),
        Verdict::Replay { group, index } => Err(answer.replay(group, index, run)),
        Verdict::Exceeded => Err(answer.exceeded(run)),
    }
}

/// The store failed: the request follows `onStoreError` for its limits and
/// `replay.onStoreError` for its nonces — denied if either says `deny`.
fn store_failed(
    policy: &CompiledPolicy,
    built: &admission::Built<'_>,
    nonces: &[Nonce],
    (store, e): (&'static str, &StoreError),
    run: &mut Run,
) -> Result<ResponseHeaders, Deny> {
    metrics::counter!("tollgate_store_errors_total", "store" => store, "kind" => e.kind_label())
        .increment(1);
    let has_limits = built.admission.groups.iter().any(|g| !g.limits.is_empty());
    let replay_denies =
        !nonces.is_empty() && policy.replay.on_store_error == StoreErrorAction::Deny;
    let quota_denies = has_limits && policy.on_store_error == StoreErrorAction::Deny;
    let counted = built.limits.iter().flatten();
    if replay_denies || quota_denies {
        for c in counted {
            decision_metric(&c.limit.name, "store_error");
        }
        let deny = Deny::new(
            Reason::StoreUnavailable,
            "quota and replay checks are unavailable; retry shortly",
        );
        run.note("admission", StepOutcome::Deny, || {
            format!("store error: {e}")
        });
        return Err(deny);
    }
    for c in counted {
        decision_metric(&c.limit.name, "skipped");
    }
    tracing::warn!(
        policy = %policy.id,
        error = %e,
        "store unavailable: request allowed without quota/replay checks (onStoreError: allow)"
    );
    run.note("admission", StepOutcome::Skip, || {
        format!("store error ({e}); onStoreError allow: checks skipped")
    });
    Ok(Vec::new())
}

/// What the store answered, with what the answer is read against.
struct Answer<'a> {
    policy: &'a CompiledPolicy,
    built: &'a admission::Built<'a>,
    outcome: &'a Outcome,
    nonces: &'a [Nonce],
    plan_name: &'a str,
    cost: u64,
}

impl Answer<'_> {
    /// The RateLimit headers (`response.rateLimitHeaders`), when every
    /// limit's state came back.
    fn rate_headers(&self) -> ResponseHeaders {
        let counted: Vec<&Counted<'_>> = self.built.limits.iter().flatten().collect();
        let states: Vec<&LimitState> = self.outcome.limits.iter().flatten().collect();
        let mut out = Vec::new();
        if self.policy.response.rate_limit_headers && counted.len() == states.len() {
            if let Some(value) = headers::policy(&counted) {
                out.push(("ratelimit-policy".to_owned(), value));
            }
            if let Some(value) = headers::current(&counted, &states) {
                out.push(("ratelimit".to_owned(), value));
            }
        }
        out
    }

    /// Everything passed and was consumed.
    fn admitted(&self, run: &mut Run) -> ResponseHeaders {
        let counted = self.built.limits.iter().flatten();
        let mut limits = 0;
        for c in counted {
            decision_metric(&c.limit.name, "allowed");
            limits += 1;
        }
        run.note("admission", StepOutcome::Pass, || {
            format!(
                "plan {}: {limits} limit(s) passed, cost {}; {} nonce(s) fresh",
                self.plan_name,
                self.cost,
                self.nonces.len()
            )
        });
        self.rate_headers()
    }

    /// `nonces[index]` of group `group` was remembered: 401
    /// `replay_detected`, with the challenge of the replayed credential.
    fn replay(&self, group: usize, index: usize, run: &mut Run) -> Deny {
        let scope = self
            .built
            .nonce_index(group, index)
            .and_then(|i| self.nonces.get(i))
            .map_or("nonce", |n| n.scope.as_str());
        let deny = Deny::new(
            Reason::ReplayDetected,
            format!("this {scope} was already used; send a fresh credential"),
        )
        .with_header("www-authenticate", replay_challenge(self.policy, scope));
        run.note("admission", StepOutcome::Deny, || deny.detail.clone());
        deny
    }

    /// A limit denied; nothing was consumed: 429 `quota_exceeded` with
    /// `Retry-After` (the longest wait of the denying limits).
    fn exceeded(&self, run: &mut Run) -> Deny {
        // Group by group: a group the store could not answer for has no
        // states (another group's denial stands without them).
        let mut denied: Vec<(&str, u64)> = Vec::new();
        for (counted, states) in self.built.limits.iter().zip(self.outcome.limits.iter()) {
            if counted.len() != states.len() {
                continue;
            }
            for (c, s) in counted.iter().zip(states.iter()) {
                if s.allowed {
                    decision_metric(&c.limit.name, "allowed_but_not_consumed");
                } else {
                    decision_metric(&c.limit.name, "denied");
                    denied.push((c.limit.name.as_str(), s.retry_after_us));
                }
            }
        }
        let retry_us = denied.iter().map(|(_, r)| *r).max().unwrap_or(1_000_000);
        let retry = ceil_secs(retry_us).max(1);
        let names: Vec<String> = denied.iter().map(|(n, _)| format!("{n:?}")).collect();
        let mut deny = Deny::new(
            Reason::QuotaExceeded,
            format!(
                "limit {} of plan {:?} exceeded (cost {}); retry in {retry}s",
                names.join(", "),
                self.plan_name,
                self.cost
            ),
        )
        .with_header("retry-after", retry.to_string());
        for (name, value) in self.rate_headers() {
            deny = deny.with_header(&name, value);
        }
        run.note("admission", StepOutcome::Deny, || deny.detail.clone());
        deny
    }
}

/// A 401 carries a challenge (RFC 9110 §15.5.2): the one of the credential
/// that was replayed.
fn replay_challenge(policy: &CompiledPolicy, scope: &str) -> String {
    match scope {
        crate::authn::dpop::NONCE_SCOPE => match &policy.user {
            Some(user) => user.dpop().replay_challenge(),
            None => r#"DPoP error="invalid_dpop_proof""#.to_owned(),
        },
        crate::authn::signature::NONCE_SCOPE => r#"Signature realm="tollgate""#.to_owned(),
        _ => match policy.app.as_ref().and_then(|a| a.attestation_header()) {
            Some(header) => format!(r#"App realm="tollgate", header="{header}""#),
            None => r#"App realm="tollgate""#.to_owned(),
        },
    }
}

/// The store's verdict, for the store call's span.
fn verdict_label(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Admitted => "admitted",
        Verdict::Replay { .. } => "replay",
        Verdict::Exceeded => "exceeded",
    }
}

/// `tollgate_quota_decisions_total{limit, outcome}` (a handle registered
/// once per label pair).
fn decision_metric(limit: &str, outcome: &'static str) {
    handles::quota_decisions(limit, outcome).increment(1);
}
