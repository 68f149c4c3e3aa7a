//! The Check span, its parent, its attributes and its children, through
//! a capturing exporter (the real OTLP path is tested end to end in
//! `tests/e2e_tracing.rs`).

use std::sync::{Arc, Mutex};

use opentelemetry::Value;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::*;
use crate::decision::{Deny, Identity};
use crate::reason::Reason;

#[derive(Clone, Debug, Default)]
struct Capture(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Capture {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

impl Capture {
    fn spans(&self) -> Vec<SpanData> {
        self.0.lock().unwrap().clone()
    }
}

fn settings(sampler: SamplerSetting) -> TraceSettings {
    TraceSettings {
        endpoint: "http://127.0.0.1:4317".into(),
        sampler,
        queue: export::QueueSettings::default(),
        service_name: Some("tollgate".into()),
    }
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const ENVOY_SPAN: &str = "00f067aa0ba902b7";

fn request_with(headers: &[(&str, &str)]) -> RequestContext {
    let mut request = RequestContext {
        id: "req-1".into(),
        ..RequestContext::default()
    };
    for (name, value) in headers {
        request.headers.push(name, *value);
    }
    request
}

fn denied() -> Decision {
    Decision {
        verdict: Verdict::Deny(Deny::new(Reason::StoreUnavailable, "store down")),
        identity: Identity {
            policy: Some("shop/orders".into()),
            route: Some("checkout".into()),
            app: Some("ios".into()),
            plan: Some("gold".into()),
            user: Some("alice".into()),
            ..Identity::default()
        },
        dry_run_denial: None,
        trace: Vec::new(),
    }
}

#[tokio::test]
async fn the_check_span_joins_the_grpc_parent_and_carries_the_decision() {
    let capture = Capture::default();
    let tracing = Tracing::with_exporter(capture.clone(), &settings(SamplerSetting::default()));
    let grpc_parent = propagation::extract(|name| {
        (name == "traceparent").then_some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    });
    // The request's own traceparent (the client's) loses to the gRPC one.
    let request = request_with(&[(
        "traceparent",
        "00-11111111111111111111111111111111-2222222222222222-01",
    )]);
    let span = tracing.tracer().start(grpc_parent, &request);
    let trace_id = span.trace_id().expect("sampled");
    assert_eq!(trace_id.to_string(), TRACE);

    // A store call made inside the Check's context is its child.
    let cx = span.context().cloned().unwrap();
    async {
        let mut store = child("store admit", SpanKind::Client);
        assert!(store.is_recording());
        store.set("tollgate.store", "redis");
    }
    .with_context(cx)
    .await;
    // Outside any Check, no span.
    assert!(!child("store admit", SpanKind::Client).is_recording());

    span.finish(&denied());
    assert!(tracing.flush().await);

    let spans = capture.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let check = spans.iter().find(|s| s.name == CHECK_SPAN).unwrap();
    let store = spans.iter().find(|s| s.name == "store admit").unwrap();
    assert_eq!(check.span_context.trace_id().to_string(), TRACE);
    assert_eq!(check.parent_span_id.to_string(), ENVOY_SPAN);
    assert!(check.parent_span_is_remote);
    assert_eq!(check.span_kind, SpanKind::Server);
    assert_eq!(store.parent_span_id, check.span_context.span_id());
    assert_eq!(store.span_context.trace_id(), check.span_context.trace_id());
    for (key, value) in [
        ("tollgate.policy", "shop/orders"),
        ("tollgate.route", "checkout"),
        ("tollgate.app", "ios"),
        ("tollgate.plan", "gold"),
        ("tollgate.outcome", "deny"),
        ("tollgate.reason", "store_unavailable"),
        ("tollgate.request_id", "req-1"),
    ] {
        assert_eq!(
            attribute(check, key).map(|v| v.as_str().into_owned()),
            Some(value.to_owned()),
            "{key}"
        );
    }
    assert_eq!(
        attribute(check, "http.response.status_code"),
        Some(&Value::I64(503))
    );
    assert!(matches!(check.status, Status::Error { .. }));
    // The user is not an attribute.
    assert!(
        !check
            .attributes
            .iter()
            .any(|kv| kv.value.as_str().contains("alice"))
    );
}

#[tokio::test]
async fn the_request_headers_are_the_fallback_parent_and_b3_works() {
    let capture = Capture::default();
    let tracing = Tracing::with_exporter(capture.clone(), &settings(SamplerSetting::default()));
    let request = request_with(&[("b3", &format!("{TRACE}-{ENVOY_SPAN}-1"))]);
    let span = tracing.tracer().start(None, &request);
    assert_eq!(span.trace_id().unwrap().to_string(), TRACE);
    span.finish(&denied());
    assert!(tracing.flush().await);
    assert_eq!(capture.spans()[0].parent_span_id.to_string(), ENVOY_SPAN);
}

#[tokio::test]
async fn an_unsampled_parent_or_a_zero_ratio_exports_nothing() {
    let capture = Capture::default();
    let never_root = SamplerSetting {
        parent_based: true,
        root: Root::Ratio(0.0),
    };
    let tracing = Tracing::with_exporter(capture.clone(), &settings(never_root));
    let tracer = tracing.tracer();
    let unsampled = request_with(&[("traceparent", &format!("00-{TRACE}-{ENVOY_SPAN}-00"))]);
    let span = tracer.start(None, &unsampled);
    assert!(span.context().is_none() && span.trace_id().is_none());
    span.finish(&denied());
    // No parent and a root ratio of 0.
    tracer.start(None, &request_with(&[])).finish(&denied());
    // A sampled parent is followed even so.
    let sampled = request_with(&[("traceparent", &format!("00-{TRACE}-{ENVOY_SPAN}-01"))]);
    tracer.start(None, &sampled).finish(&denied());
    // B3 that defers the decision: the root ratio (0) decides.
    let deferred = request_with(&[("x-b3-traceid", TRACE), ("x-b3-spanid", ENVOY_SPAN)]);
    assert!(tracer.start(None, &deferred).context().is_none());
    assert!(tracing.flush().await);
    assert_eq!(capture.spans().len(), 1, "only the sampled parent's Check");
}

fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

#[test]
fn settings_from_flags_and_otel_variables() {
    let none = TraceArgs::default();
    assert_eq!(none.settings(env(&[])), Ok(None), "off by default");

    let from_env = none
        .settings(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_SERVICE_NAME", "authz"),
        ]))
        .unwrap()
        .unwrap();
    assert_eq!(from_env.endpoint, "http://collector:4317");
    assert_eq!(
        from_env.sampler,
        SamplerSetting {
            parent_based: true,
            root: Root::Ratio(0.25)
        }
    );
    assert_eq!(from_env.service_name, None, "OTEL_SERVICE_NAME is kept");

    let traces_endpoint_wins = none
        .settings(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
        ]))
        .unwrap()
        .unwrap();
    assert_eq!(traces_endpoint_wins.endpoint, "http://b:4317");
    assert_eq!(
        traces_endpoint_wins.service_name.as_deref(),
        Some("tollgate")
    );

    let flags = TraceArgs {
        otlp_endpoint: Some("http://127.0.0.1:4317".into()),
        otlp_sampler_ratio: Some(0.01),
    };
    let set = flags
        .settings(env(&[("OTEL_TRACES_SAMPLER", "always_off")]))
        .unwrap()
        .unwrap();
    assert_eq!(set.sampler.root, Root::Ratio(0.01), "the flag wins");
    assert!(set.sampler.parent_based);

    assert_eq!(
        flags.settings(env(&[("OTEL_SDK_DISABLED", "true")])),
        Ok(None)
    );
    assert_eq!(
        none.settings(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])),
        Ok(None)
    );
}

#[test]
fn unusable_settings_are_refused() {
    let endpoint = |url: &str| TraceArgs {
        otlp_endpoint: Some(url.into()),
        otlp_sampler_ratio: None,
    };
    for bad in [
        "https://collector:4317",
        "collector:4317",
        "not a url",
        "ftp://x",
    ] {
        assert!(endpoint(bad).settings(env(&[])).is_err(), "{bad}");
    }
    let ok = endpoint("http://127.0.0.1:4317");
    for vars in [
        &[("OTEL_TRACES_SAMPLER", "jaeger_remote")][..],
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ],
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "x"),
        ],
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
        &[("OTEL_BSP_MAX_QUEUE_SIZE", "-1")],
    ] {
        let vars: &'static [(&'static str, &'static str)] = vars;
        assert!(ok.settings(env(vars)).is_err(), "{vars:?}");
    }
    let ratio = TraceArgs {
        otlp_endpoint: Some("http://127.0.0.1:4317".into()),
        otlp_sampler_ratio: Some(1.5),
    };
    assert!(ratio.settings(env(&[])).is_err());
}
