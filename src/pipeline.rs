//! The decision core: `decide(snapshot, request, deps) -> Decision`.
//!
//! Stages run in a fixed order, each in its own module:
//!
//! 1. [`validate`] — malformed requests (unnormalised paths, duplicate
//!    credential headers, translation defects) → `request_malformed`;
//! 2. [`select`] — which policy: the `tollgate.dev/policy` context extension,
//!    else the host → `no_policy`;
//! 3. [`transport`] — HTTPS and client address checks via the trusted origin;
//! 4. [`route`] — the first matching route (public routes skip 5–7);
//! 5. user authentication ([`crate::authn::user`]);
//! 6. app identification and authentication ([`crate::authn::app`]);
//!    then the route's scope/claim requirements;
//! 7. admission — replay nonces and quotas in one store call;
//! 8. [`respond`] — upstream identity headers, credential stripping.
//!
//! Nothing here imports tonic, Envoy protos or kube types.

mod admission;
mod respond;
mod route;
mod select;
mod transport;
mod validate;

use std::sync::Arc;

use crate::clock::Clock;
use crate::decision::{Decision, Deny, Identity, Step, StepOutcome, Verdict};
use crate::origin::{self, TrustedOrigin};
use crate::policy::snapshot::{CompiledPolicy, Snapshot};
use crate::policy::types::Mode;
use crate::reason::Reason;
use crate::request::RequestContext;
use crate::store::Store;

/// What a request that matches no policy gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultDecision {
    #[default]
    Deny,
    Allow,
}

/// Server-wide settings of the decision core.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub trusted_origin: TrustedOrigin,
    /// Refuse host matching: only the context extension selects a policy.
    pub require_policy_extension: bool,
    pub default_decision: DefaultDecision,
    /// How limits count IPv6 clients (default: per /64).
    pub ipv6_limit_prefix: crate::limits::admission::Ipv6Prefix,
    /// Record a note per stage in [`Decision::trace`]. Only `tollgate check`
    /// (and tests) read the trace; the server leaves it off, so no note is
    /// formatted on its hot path. Verdicts and identities do not depend on it.
    pub trace: bool,
}

/// What `decide` needs besides the snapshot and the request.
#[derive(Clone, Debug)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
}

/// Collects the trace and identity while stages run.
struct Run {
    /// Whether notes are recorded ([`Settings::trace`]).
    tracing: bool,
    trace: Vec<Step>,
    identity: Identity,
}

impl Run {
    /// Records a stage's note; `note` is only called when tracing, so the
    /// server formats no note at all.
    fn note<N: Into<String>>(
        &mut self,
        stage: &'static str,
        outcome: StepOutcome,
        note: impl FnOnce() -> N,
    ) {
        if self.tracing {
            self.trace.push(Step {
                stage,
                outcome,
                note: note().into(),
            });
        }
    }

    /// Records a stage's result: the pass note from `pass`, a denial as
    /// `reason: detail`.
    fn stage<T>(
        &mut self,
        stage: &'static str,
        result: &Result<T, Deny>,
        pass: impl FnOnce(&T) -> String,
    ) {
        match result {
            Ok(value) => self.note(stage, StepOutcome::Pass, || pass(value)),
            Err(deny) => self.note(stage, StepOutcome::Deny, || {
                format!("{}: {}", deny.reason, deny.detail)
            }),
        }
    }

    fn finish(self, verdict: Verdict) -> Decision {
        Decision {
            verdict,
            identity: self.identity,
            dry_run_denial: None,
            trace: self.trace,
        }
    }
}

/// Decides on one request.
pub async fn decide(snapshot: &Snapshot, request: &RequestContext, deps: &Deps) -> Decision {
    let mut run = Run {
        tracing: deps.settings.trace,
        trace: Vec::new(),
        identity: Identity::default(),
    };

    if let Err(deny) = validate::check(request) {
        run.note("validate", StepOutcome::Deny, || deny.detail.clone());
        return run.finish(Verdict::Deny(deny));
    }
    run.note("validate", StepOutcome::Pass, || "request well-formed");

    let origin = origin::resolve(request, deps.settings.trusted_origin);
    run.identity.client = origin.client_ip;
    let policy = match select::policy(snapshot, request, &origin, &deps.settings) {
        Ok(policy) => policy,
        Err(select::NoPolicy(detail)) => {
            return match deps.settings.default_decision {
                DefaultDecision::Deny => {
                    run.note("select", StepOutcome::Deny, || detail.clone());
                    run.finish(Verdict::Deny(Deny::new(Reason::NoPolicy, detail)))
                }
                DefaultDecision::Allow => {
                    run.note("select", StepOutcome::Skip, || {
                        format!("{detail}; default allow")
                    });
                    let allow = respond::default_allow(snapshot, request);
                    run.finish(Verdict::Allow(allow))
                }
            };
        }
    };
    run.identity.policy = Some(policy.id.as_str().to_owned());
    run.note("select", StepOutcome::Pass, || {
        format!("policy {}", policy.id)
    });

    let verdict = enforce(policy, snapshot, request, &origin, deps, &mut run).await;
    let mut decision = run.finish(Verdict::Allow(Default::default()));
    match verdict {
        Ok(allow) => decision.verdict = Verdict::Allow(allow),
        Err(deny) if policy.mode == Mode::DryRun => {
            if deps.settings.trace {
                decision.trace.push(Step {
                    stage: "mode",
                    outcome: StepOutcome::Skip,
                    note: format!("dry run: would deny {}, allowed", deny.reason),
                });
            }
            decision.dry_run_denial = Some(deny);
            decision.verdict = Verdict::Allow(respond::dry_run_allow(policy, request));
        }
        Err(mut deny) => {
            if !policy.response.disclose_reasons && deny.reason.is_attestation_detail() {
                deny.disclosed_as = Some(Reason::AttestationInvalid);
            }
            decision.verdict = Verdict::Deny(deny);
        }
    }
    decision
}

/// Stages 3–8 for a selected policy.
async fn enforce(
    policy: &Arc<CompiledPolicy>,
    snapshot: &Snapshot,
    request: &RequestContext,
    origin: &origin::Origin,
    deps: &Deps,
    run: &mut Run,
) -> Result<crate::decision::Allow, Deny> {
    let result = transport::check(&policy.transport, origin);
    run.stage("transport", &result, |from| match from {
        Some(ip) => format!("{} from {ip}", origin.scheme),
        None => format!("{} from any address", origin.scheme),
    });
    result?;

    let route = match route_stage(policy, request, run)? {
        RouteStep::Public => return respond::allow(policy, request, &run.identity, None),
        RouteStep::Continue(route) => route,
    };

    let now = deps.clock.now();
    let user = user_stage(policy, request, origin, now, run).await?;
    // Nonces the authentication stages collected (DPoP jti, single-use app
    // token jti, signature nonce), remembered by the admission stage.
    let mut nonces: Vec<crate::limits::Nonce> = Vec::new();
    nonces.extend(
        user.as_ref()
            .and_then(|u| u.dpop.as_ref())
            .map(|p| p.nonce.clone()),
    );
    let app = match app_stage(policy, snapshot, request, origin, user.as_ref(), now, run).await? {
        Some(outcome) => {
            nonces.extend(outcome.nonces);
            outcome.app
        }
        None => None,
    };

    if let Some(require) = route.and_then(|r| r.require.as_ref()) {
        let result = crate::authn::scope::check(require, user.as_ref());
        run.stage("scope", &result, |()| "route requirements met".to_owned());
        result?;
    }

    // The plan of a request without an app (or whose app has none):
    // `defaultPlan`.
    if run.identity.plan.is_none() {
        run.identity.plan = policy.plans.default_plan().map(|p| p.name.clone());
    }
    // What goes upstream is decided before admission: a value that cannot
    // be sent (`field_value::is_header_safe`) denies the request before it
    // consumes quota or remembers a nonce.
    let allow = respond::allow(policy, request, &run.identity, user.as_ref());
    if allow.is_err() {
        run.stage("respond", &allow, |_| String::new());
    }
    let mut allow = allow?;

    let rate_headers = admission::check(
        policy,
        admission::Inputs {
            route,
            user: user.as_ref(),
            app: app.as_ref(),
            origin,
            nonces: &nonces,
        },
        deps,
        run,
    )
    .await?;
    allow.response_headers.extend(rate_headers);
    Ok(allow)
}

/// What the route stage decided.
enum RouteStep<'p> {
    /// A public route: no credentials, no quota.
    Public,
    /// Go on, under this route (or the policy's defaults).
    Continue(Option<&'p crate::policy::snapshot::Route>),
}

/// Stage 4: the first matching route; a `deny` route denies, a public one
/// ends the checks.
fn route_stage<'p>(
    policy: &'p CompiledPolicy,
    request: &RequestContext,
    run: &mut Run,
) -> Result<RouteStep<'p>, Deny> {
    let Some(route) = route::select(policy, request) else {
        run.note(
            "route",
            StepOutcome::Pass,
            || "no route refinement matched; policy defaults apply",
        );
        return Ok(RouteStep::Continue(None));
    };
    run.identity.route = Some(route.name.clone());
    if route.deny {
        let deny = Deny::new(
            Reason::RuleDenied,
            format!("route {} denies all requests", route.name),
        );
        run.note("route", StepOutcome::Deny, || deny.detail.clone());
        return Err(deny);
    }
    if route.public {
        run.note("route", StepOutcome::Pass, || {
            format!("route {} is public: no credentials, no quota", route.name)
        });
        return Ok(RouteStep::Public);
    }
    run.note("route", StepOutcome::Pass, || {
        format!("route {}", route.name)
    });
    Ok(RouteStep::Continue(Some(route)))
}

/// Stage 5: the user, when the policy authenticates users.
async fn user_stage(
    policy: &CompiledPolicy,
    request: &RequestContext,
    origin: &origin::Origin,
    now: std::time::Duration,
    run: &mut Run,
) -> Result<Option<crate::authn::user::UserIdentity>, Deny> {
    let Some(user_policy) = &policy.user else {
        run.note(
            "user",
            StepOutcome::Skip,
            || "policy has no user authentication",
        );
        return Ok(None);
    };
    let user = user_policy.authenticate(request, origin, now).await;
    run.stage("user", &user, |u| match u {
        Some(u) => format!(
            "user {} from {}",
            crate::field_value::escape_controls(&u.subject),
            u.issuer
        ),
        None => "no user token (optional)".to_owned(),
    });
    let user = user?;
    if let Some(u) = &user {
        run.identity.user = Some(u.subject.clone());
        run.identity.issuer = Some(u.issuer.clone());
    }
    Ok(user)
}

/// Stage 6: the app, when the policy identifies apps (`None` when it does
/// not); records the app, its plan and its device in the identity.
async fn app_stage(
    policy: &CompiledPolicy,
    snapshot: &Snapshot,
    request: &RequestContext,
    origin: &origin::Origin,
    user: Option<&crate::authn::user::UserIdentity>,
    now: std::time::Duration,
    run: &mut Run,
) -> Result<Option<crate::authn::app::AppOutcome>, Deny> {
    let Some(app_policy) = &policy.app else {
        run.note(
            "app",
            StepOutcome::Skip,
            || "policy has no app authentication",
        );
        return Ok(None);
    };
    let app = app_policy
        .authenticate(request, origin, user, &snapshot.apps, &policy.id, now)
        .await;
    run.stage("app", &app, |outcome| {
        let mut note = match &outcome.app {
            Some(a) => format!("app {}", a.app_id),
            None => "no app credential (optional)".to_owned(),
        };
        if let Some(s) = outcome.app.as_ref().and_then(|a| a.signature.as_ref()) {
            note.push_str(&format!(
                "; signature {} ({}) verified",
                s.label,
                s.algorithm.name()
            ));
        }
        note
    });
    let outcome = app?;
    if let Some(a) = &outcome.app {
        run.identity.app = Some(a.app_id.clone());
        // The app's plan when this policy defines it, else `defaultPlan`.
        run.identity.plan = policy
            .plans
            .resolve(a.plan.as_deref())
            .map(|p| p.name.clone())
            .or_else(|| a.plan.clone());
        run.identity.device = a.device.clone();
    }
    Ok(Some(outcome))
}
