//! The `envoy.service.auth.v3.Authorization` service.
//!
//! [`CheckService`] does the work of one call: load the current snapshot
//! (a lock-free `ArcSwap` load), translate the request, run
//! [`crate::pipeline::decide`], write the audit line and metrics, and build
//! the response. It always answers with a `CheckResponse`.
//!
//! [`CheckServer`] mounts it on tonic with the [`LenientCodec`], so even a
//! message that fails to decode gets a `request_malformed` denial instead of
//! a gRPC error. `CheckService` also implements the generated
//! [`Authorization`] trait, for embedding with the stock generated server.

use std::sync::Arc;
use std::time::Instant;

use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::codec::{Incoming, LenientCodec};
use super::pb::envoy::service::auth::v3::authorization_server::Authorization;
use super::pb::{CheckRequest, CheckResponse};
use super::response::WireResponse;
use super::{request, response};
use crate::decision::{ChallengeParams, Decision, Deny, Identity, Step, StepOutcome, Verdict};
use crate::field_value::escape_controls;
use crate::pipeline::{self, Deps};
use crate::policy::snapshot::SharedSnapshot;
use crate::reason::Reason;
use crate::request::RequestContext;
use crate::telemetry::app_labels::{AppLabels, OTHER};
use crate::telemetry::handles;

/// The gRPC service name Envoy calls.
pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";
/// The method path of `Check`.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// Largest `CheckRequest` tonic buffers (4 MiB, its default): above the
/// header and body bounds of [`crate::request`], so requests that break
/// those still decode and are denied with a precise reason. A larger
/// message is refused by the gRPC layer (`OUT_OF_RANGE`), which Envoy's
/// `status_on_error` turns into a denial.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Counter of decisions: labels `policy`, `outcome` (`allow`, `deny`,
/// `dry_run_deny`) and `reason` (`none` on allow).
pub const CHECKS_TOTAL: &str = "tollgate_checks_total";
/// Histogram of the time from a decoded request to its response, in seconds.
pub const CHECK_DURATION: &str = "tollgate_check_duration_seconds";
/// Counter of decisions per app (only with `--metrics-app-labels`):
/// labels `app` (bounded, see [`AppLabels`]) and `outcome`.
pub const APP_CHECKS_TOTAL: &str = "tollgate_app_checks_total";

/// Decides `Check` calls against the current snapshot.
#[derive(Clone, Debug)]
pub struct CheckService {
    snapshot: SharedSnapshot,
    deps: Deps,
    app_labels: Arc<AppLabels>,
}

impl CheckService {
    /// A service reading policies from `snapshot` (swapped by the policy
    /// source while serving).
    pub fn new(snapshot: SharedSnapshot, deps: Deps) -> Self {
        Self {
            snapshot,
            deps,
            app_labels: Arc::new(AppLabels::new(0)),
        }
    }

    /// Counts decisions per app too, with these (bounded) labels.
    pub fn with_app_labels(mut self, app_labels: Arc<AppLabels>) -> Self {
        self.app_labels = app_labels;
        self
    }

    /// Answers one `Check` request. Never fails.
    pub async fn check(&self, check: &CheckRequest) -> CheckResponse {
        self.check_owned(check.clone()).await
    }

    /// [`Self::check`] for an owned request, whose strings move into the
    /// request model instead of being copied.
    pub async fn check_owned(&self, check: CheckRequest) -> CheckResponse {
        self.check_wire(check).await.into_check_response()
    }

    /// The server's path: [`Self::check_owned`] with the dynamic metadata
    /// kept for direct encoding ([`WireResponse`]).
    async fn check_wire(&self, check: CheckRequest) -> WireResponse {
        let started = Instant::now();
        let request = request::into_context(check);
        // One load per call: the whole decision sees one snapshot even if a
        // reload swaps it meanwhile.
        let snapshot = self.snapshot.load_full();
        let decision = pipeline::decide(&snapshot, &request, &self.deps).await;
        self.finish(&request, decision, started)
    }

    /// Answers a decoded or undecodable request.
    pub async fn answer(&self, incoming: Incoming) -> WireResponse {
        match incoming {
            Incoming::Request(check) => self.check_wire(*check).await,
            Incoming::Undecodable(error) => {
                let started = Instant::now();
                let detail = format!("the CheckRequest could not be decoded: {error}");
                let decision = Decision {
                    verdict: Verdict::Deny(Deny::new(Reason::RequestMalformed, detail.clone())),
                    identity: Identity::default(),
                    dry_run_denial: None,
                    trace: vec![Step {
                        stage: "decode",
                        outcome: StepOutcome::Deny,
                        note: detail,
                    }],
                };
                self.finish(&RequestContext::default(), decision, started)
            }
        }
    }

    /// Audit, metrics and the response.
    fn finish(
        &self,
        request: &RequestContext,
        decision: Decision,
        started: Instant,
    ) -> WireResponse {
        audit(request, &decision);
        count(&decision, &self.app_labels);
        // SEAM (authentication work): per-policy challenge parameters; stages
        // that know better put their own `WWW-Authenticate` on the denial.
        let response = response::into_wire_response(decision, &ChallengeParams::default());
        // The latency covers building the response too.
        handles::check_duration().record(started.elapsed().as_secs_f64());
        response
    }
}

/// One structured line per denial (and per dry-run denial): request id,
/// policy, app, user subject and reason. Details are client-safe by
/// contract (`Deny::detail`); credentials never reach this line. Values
/// that come from claims have their control characters escaped
/// ([`escape_controls`]): in the text format a line break in a subject
/// would start a forged log line.
fn audit(request: &RequestContext, decision: &Decision) {
    let identity = &decision.identity;
    let field =
        |value: &Option<String>| escape_controls(value.as_deref().unwrap_or_default()).into_owned();
    if let Some(deny) = decision.denial() {
        tracing::info!(
            target: "tollgate::audit",
            request_id = %request.id,
            policy = %field(&identity.policy),
            app = %field(&identity.app),
            user = %field(&identity.user),
            reason = deny.reason.code(),
            status = deny.public_reason().http_status(),
            detail = %escape_controls(&deny.detail),
            "denied"
        );
    } else if let Some(deny) = &decision.dry_run_denial {
        tracing::info!(
            target: "tollgate::audit",
            request_id = %request.id,
            policy = %field(&identity.policy),
            app = %field(&identity.app),
            user = %field(&identity.user),
            reason = deny.reason.code(),
            detail = %escape_controls(&deny.detail),
            "dry run: would deny"
        );
    } else {
        tracing::debug!(
            request_id = %request.id,
            policy = %field(&identity.policy),
            app = %field(&identity.app),
            "allowed"
        );
    }
}

/// Counts the decision. Handles come from [`handles`], registered once per
/// label combination, so counting allocates nothing.
fn count(decision: &Decision, app_labels: &AppLabels) {
    let policy = decision.identity.policy.as_deref().unwrap_or("none");
    let (outcome, reason) = match (&decision.verdict, &decision.dry_run_denial) {
        (Verdict::Deny(deny), _) => ("deny", deny.reason.code()),
        (Verdict::Allow(_), Some(deny)) => ("dry_run_deny", deny.reason.code()),
        (Verdict::Allow(_), None) => ("allow", "none"),
    };
    handles::checks_total(policy, outcome, reason).increment(1);
    if app_labels.enabled()
        && let Some(app) = decision.identity.app.as_deref()
    {
        handles::app_checks(app, outcome, || {
            app_labels.label(app).unwrap_or_else(|| OTHER.to_owned())
        })
        .increment(1);
    }
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(
            CheckService::check_owned(self, request.into_inner()).await,
        ))
    }
}

/// The tonic service for `Authorization/Check` with the lenient codec.
#[derive(Clone, Debug)]
pub struct CheckServer {
    inner: Arc<CheckService>,
}

impl CheckServer {
    pub fn new(service: CheckService) -> Self {
        Self {
            inner: Arc::new(service),
        }
    }
}

impl NamedService for CheckServer {
    const NAME: &'static str = SERVICE_NAME;
}

/// One unary call.
struct CheckCall(Arc<CheckService>);

impl UnaryService<Incoming> for CheckCall {
    type Response = WireResponse;
    type Future = BoxFuture<Response<WireResponse>, Status>;

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let service = Arc::clone(&self.0);
        Box::pin(async move {
            let response = service.answer(request.into_inner()).await;
            Ok(Response::new(response))
        })
    }
}

impl<B> Service<http::Request<B>> for CheckServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            return Box::pin(async { Ok(Status::unimplemented("unknown method").into_http()) });
        }
        let call = CheckCall(Arc::clone(&self.inner));
        Box::pin(async move {
            let mut grpc = Grpc::new(LenientCodec)
                .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), None);
            Ok(grpc.unary(call, request).await)
        })
    }
}
