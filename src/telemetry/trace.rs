//! OpenTelemetry traces: one span per `Check`, joined to Envoy's trace.
//!
//! Off unless an OTLP endpoint is configured (`--otlp-endpoint`, else
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`).
//! When off, the `Check` path does no tracing work at all: the service holds
//! no [`CheckTracer`], and [`child`] returns after one relaxed atomic load.
//!
//! When on:
//!
//! - each `Check` starts a server span named
//!   `envoy.service.auth.v3.Authorization/Check`, a child of the context
//!   [`propagation`] finds in the gRPC call's metadata (Envoy's span around
//!   the ext_authz call) or else in the described HTTP request's headers;
//! - sampling is parent-based: a sampled parent samples the Check, an
//!   unsampled one drops it, and spans without a parent are sampled at the
//!   root ratio (`--otlp-sampler-ratio`, else `OTEL_TRACES_SAMPLER` /
//!   `OTEL_TRACES_SAMPLER_ARG`, else always);
//! - the span carries the policy, route, app, plan, outcome, reason and the
//!   request id — identifiers and codes, never a credential or a user;
//! - store calls and JWKS fetches made for the Check become child spans
//!   ([`child`]), found through the OpenTelemetry context the Check's
//!   future carries;
//! - ended spans go through [`export`]'s bounded queue to the OTLP/gRPC
//!   exporter, off the request path.

pub mod export;
pub mod propagation;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, Tracer as _, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, ShouldSample};

use crate::decision::{Decision, Verdict};
use crate::request::RequestContext;
pub use propagation::Parent;

/// The name of the span of one `Check`: `{rpc.service}/{rpc.method}`, as
/// the OpenTelemetry RPC conventions name server spans.
pub const CHECK_SPAN: &str = "envoy.service.auth.v3.Authorization/Check";
/// The instrumentation scope of tollgate's spans.
const SCOPE: &str = "tollgate";
/// How long shutdown waits for the last spans to be exported.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

/// True once a tracer exists in this process: lets [`child`] skip even the
/// context lookup when tracing is off.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The tracing flags of `tollgate serve`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TraceArgs {
    /// OTLP/gRPC collector to export traces to (`http://host:4317`).
    /// Absent: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; none of them → no tracing.
    #[arg(long, env = "TOLLGATE_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Fraction (0 to 1) of Checks without a sampled or unsampled parent
    /// that start a trace; a parent's decision is always followed.
    /// Absent: `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`, else 1.
    #[arg(long, env = "TOLLGATE_OTLP_SAMPLER_RATIO", value_name = "RATIO")]
    pub otlp_sampler_ratio: Option<f64>,
}

/// How root spans are sampled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

/// Which spans are sampled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerSetting {
    /// Follow a parent's decision (`parentbased_*`, the default).
    pub parent_based: bool,
    /// The decision without a parent (or for every span when not
    /// parent-based).
    pub root: Root,
}

impl Default for SamplerSetting {
    fn default() -> Self {
        Self {
            parent_based: true,
            root: Root::AlwaysOn,
        }
    }
}

impl SamplerSetting {
    fn root_sampler(self) -> Sampler {
        match self.root {
            Root::AlwaysOn => Sampler::AlwaysOn,
            Root::AlwaysOff => Sampler::AlwaysOff,
            Root::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
        }
    }

    fn sampler(self) -> Sampler {
        if self.parent_based {
            Sampler::ParentBased(Box::new(self.root_sampler()))
        } else {
            self.root_sampler()
        }
    }
}

/// Resolved tracing settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    pub endpoint: String,
    pub sampler: SamplerSetting,
    pub queue: export::QueueSettings,
    pub service_name: Option<String>,
}

impl TraceArgs {
    /// The settings these flags and the `OTEL_*` variables `var` returns
    /// describe; `None` when tracing is off. Errors name the setting.
    pub fn settings(
        &self,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<TraceSettings>, String> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let from_env = || {
            if var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none") {
                return None;
            }
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        };
        let Some(endpoint) = self.otlp_endpoint.clone().or_else(from_env) else {
            return Ok(None);
        };
        check_endpoint(&endpoint)?;
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = var(name)
                && protocol.trim() != "grpc"
            {
                return Err(format!(
                    "{name}={protocol:?}: tollgate exports OTLP over gRPC only (\"grpc\")"
                ));
            }
        }
        let sampler = match self.otlp_sampler_ratio {
            Some(ratio) => SamplerSetting {
                parent_based: true,
                root: Root::Ratio(check_ratio("--otlp-sampler-ratio", ratio)?),
            },
            None => match var("OTEL_TRACES_SAMPLER") {
                Some(name) => parse_sampler(&name, var("OTEL_TRACES_SAMPLER_ARG").as_deref())?,
                None => SamplerSetting::default(),
            },
        };
        let has_service_name = var("OTEL_SERVICE_NAME").is_some()
            || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
                attrs
                    .split(',')
                    .any(|a| a.trim().starts_with("service.name="))
            });
        Ok(Some(TraceSettings {
            endpoint,
            sampler,
            queue: export::QueueSettings::from_env(var)?,
            service_name: (!has_service_name).then(|| SCOPE.to_owned()),
        }))
    }
}

/// Only plain `http://` gRPC endpoints: TLS to the collector is not built in
/// (a node-local collector or a sidecar is the usual hop).
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("OTLP endpoint {endpoint:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(()),
        Some("https") => Err(format!(
            "OTLP endpoint {endpoint:?}: TLS to the collector is not supported; use an \
             http:// endpoint (a collector on the node or in the pod)"
        )),
        _ => Err(format!(
            "OTLP endpoint {endpoint:?} must be http://host:port"
        )),
    }
}

fn check_ratio(what: &str, ratio: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("{what} must be between 0 and 1, got {ratio}"))
    }
}

/// `OTEL_TRACES_SAMPLER` and its argument (OpenTelemetry SDK
/// configuration, "General SDK Configuration").
fn parse_sampler(name: &str, arg: Option<&str>) -> Result<SamplerSetting, String> {
    let ratio = || match arg {
        None => Ok(1.0),
        Some(text) => text
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("OTEL_TRACES_SAMPLER_ARG={text:?} is not a number"))
            .and_then(|r| check_ratio("OTEL_TRACES_SAMPLER_ARG", r)),
    };
    let (parent_based, root) = match name.trim() {
        "always_on" => (false, Root::AlwaysOn),
        "always_off" => (false, Root::AlwaysOff),
        "traceidratio" => (false, Root::Ratio(ratio()?)),
        "parentbased_always_on" => (true, Root::AlwaysOn),
        "parentbased_always_off" => (true, Root::AlwaysOff),
        "parentbased_traceidratio" => (true, Root::Ratio(ratio()?)),
        other => {
            return Err(format!(
                "OTEL_TRACES_SAMPLER={other:?} is not supported (always_on, always_off, \
                 traceidratio, parentbased_always_on, parentbased_always_off, \
                 parentbased_traceidratio)"
            ));
        }
    };
    Ok(SamplerSetting { parent_based, root })
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP trace exporter: {0}")]
pub struct TraceError(String);

/// The running trace pipeline: the tracer the service uses and the export
/// task behind it.
#[derive(Debug)]
pub struct Tracing {
    tracer: CheckTracer,
    flusher: export::Flusher,
    _provider: SdkTracerProvider,
}

impl Tracing {
    /// Builds the exporter and starts the export task. Must run inside the
    /// tokio runtime (the gRPC channel and the task live on it). The
    /// exporter connects lazily: a collector that is down at start-up only
    /// costs spans.
    pub fn start(settings: &TraceSettings) -> Result<Self, TraceError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .build()
            .map_err(|e| TraceError(e.to_string()))?;
        Ok(Self::with_exporter(exporter, settings))
    }

    /// [`Tracing::start`] with any exporter (tests use an in-memory one).
    pub fn with_exporter<E: opentelemetry_sdk::trace::SpanExporter + 'static>(
        mut exporter: E,
        settings: &TraceSettings,
    ) -> Self {
        let mut resource = Resource::builder()
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        if let Some(name) = &settings.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let resource = resource.build();
        // The exporter moves into the export task, so it learns the
        // resource here (the provider would tell its processors, and the
        // queue has no way to pass it on).
        exporter.set_resource(&resource);
        let (processor, flusher) = export::spawn(exporter, settings.queue.clone());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(settings.sampler.sampler())
            .with_resource(resource)
            .build();
        let tracer = CheckTracer {
            tracer: provider.tracer(SCOPE),
            root: settings.sampler.root,
        };
        ACTIVE.store(true, Ordering::Release);
        Self {
            tracer,
            flusher,
            _provider: provider,
        }
    }

    /// The tracer for the `Check` service.
    pub fn tracer(&self) -> CheckTracer {
        self.tracer.clone()
    }

    /// Exports what is queued (bounded wait), for shutdown and tests.
    pub async fn flush(&self) -> bool {
        self.flusher.flush(SHUTDOWN_FLUSH).await
    }
}

/// Starts the span of each `Check`.
#[derive(Clone, Debug)]
pub struct CheckTracer {
    tracer: SdkTracer,
    root: Root,
}

/// The tracer, carried in the Check's context so [`child`] finds it.
#[derive(Clone, Debug)]
struct Carried(SdkTracer);

impl CheckTracer {
    /// The span of one Check: a child of `grpc_parent` (found in the gRPC
    /// metadata), else of the context in the request's headers, else a
    /// root span. Not recording when the sampler drops it.
    pub fn start(&self, grpc_parent: Option<Parent>, request: &RequestContext) -> CheckSpan {
        let parent = grpc_parent.or_else(|| propagation::extract(|name| request.headers.get(name)));
        let parent_cx = match parent {
            Some(parent) => {
                let mut context = parent.context;
                if parent.deferred && self.samples_root(context.trace_id()) {
                    context = opentelemetry::trace::SpanContext::new(
                        context.trace_id(),
                        context.span_id(),
                        TraceFlags::SAMPLED,
                        true,
                        context.trace_state().clone(),
                    );
                }
                Context::new().with_remote_span_context(context)
            }
            None => Context::new(),
        };
        let mut span = self
            .tracer
            .span_builder(CHECK_SPAN)
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent_cx);
        if !span.is_recording() {
            return CheckSpan { cx: None };
        }
        span.set_attributes([
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", "envoy.service.auth.v3.Authorization"),
            KeyValue::new("rpc.method", "Check"),
            KeyValue::new("tollgate.request_id", bounded(&request.id)),
        ]);
        let cx = parent_cx
            .with_span(span)
            .with_value(Carried(self.tracer.clone()));
        CheckSpan { cx: Some(cx) }
    }

    /// The root sampler's decision for a B3 parent that deferred it.
    fn samples_root(&self, trace_id: TraceId) -> bool {
        let decision = match self.root {
            Root::AlwaysOn => return true,
            Root::AlwaysOff => return false,
            Root::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio).should_sample(
                None,
                trace_id,
                CHECK_SPAN,
                &SpanKind::Server,
                &[],
                &[],
            ),
        };
        decision.decision == opentelemetry_sdk::trace::SamplingDecision::RecordAndSample
    }
}

/// The span of one Check (nothing when not sampled).
#[derive(Debug)]
pub struct CheckSpan {
    cx: Option<Context>,
}

impl CheckSpan {
    /// The context to run the decision in, when the span records.
    pub fn context(&self) -> Option<&Context> {
        self.cx.as_ref()
    }

    /// The trace id, when the span records (for the audit line).
    pub fn trace_id(&self) -> Option<TraceId> {
        self.cx
            .as_ref()
            .map(|cx| cx.span().span_context().trace_id())
    }

    /// Records the decision and ends the span.
    pub fn finish(self, decision: &Decision) {
        let Some(cx) = self.cx else { return };
        let span = cx.span();
        let identity = &decision.identity;
        let fields = [
            ("tollgate.policy", &identity.policy),
            ("tollgate.route", &identity.route),
            ("tollgate.app", &identity.app),
            ("tollgate.plan", &identity.plan),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                span.set_attribute(KeyValue::new(key, bounded(value)));
            }
        }
        let (outcome, deny) = match (&decision.verdict, &decision.dry_run_denial) {
            (Verdict::Deny(deny), _) => ("deny", Some(deny)),
            (Verdict::Allow(_), Some(deny)) => ("dry_run_deny", Some(deny)),
            (Verdict::Allow(_), None) => ("allow", None),
        };
        span.set_attribute(KeyValue::new("tollgate.outcome", outcome));
        let reason = deny.map_or("none", |d| d.reason.code());
        span.set_attribute(KeyValue::new("tollgate.reason", reason));
        if let Some(deny) = decision.denial() {
            let status = deny.public_reason().http_status();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                // The authorizer could not decide (store or keys down):
                // an error of the service, unlike a refusal.
                span.set_status(Status::error(reason));
            }
        }
        span.end();
    }
}

/// Attribute values from requests are bounded, so one odd request id
/// cannot make a span (or a collector's index) balloon.
fn bounded(value: &str) -> String {
    const MAX: usize = 256;
    if value.len() <= MAX {
        return value.to_owned();
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

/// A child span of the current Check (store calls, JWKS fetches); nothing
/// when tracing is off or the Check is not sampled. Ends when dropped.
pub fn child(name: &'static str, kind: SpanKind) -> ChildSpan {
    if !ACTIVE.load(Ordering::Relaxed) {
        return ChildSpan(None);
    }
    ChildSpan(Context::map_current(|cx| {
        let Carried(tracer) = cx.get::<Carried>()?;
        Some(
            tracer
                .span_builder(name)
                .with_kind(kind)
                .start_with_context(tracer, cx),
        )
    }))
}

/// See [`child`].
#[derive(Debug)]
pub struct ChildSpan(Option<opentelemetry_sdk::trace::Span>);

impl ChildSpan {
    /// True when the span records (attributes worth computing).
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// Sets an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<Cow<'static, str>>) {
        if let Some(span) = &mut self.0 {
            let value: Cow<'static, str> = value.into();
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed with a short description (no credentials).
    pub fn fail(&mut self, description: impl Into<Cow<'static, str>>) {
        if let Some(span) = &mut self.0 {
            span.set_status(Status::error(description));
        }
    }
}

#[cfg(test)]
mod tests;
