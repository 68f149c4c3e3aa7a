//! Traces end to end: the real Envoy with its OpenTelemetry tracer and
//! tollgate both export over OTLP/gRPC to a receiver the test starts
//! (`support::otlp`); tollgate's Check span must join Envoy's trace under
//! Envoy's span around the ext_authz call.
//!
//! No test here looks at a clock. "Nothing exported" is proven by order:
//! tollgate exports its spans through one FIFO queue, so once a control
//! span started after the requests has arrived, any span of those requests
//! would have arrived too. "Checks keep working with the collector down"
//! is proven by every answer being the right one, with the export queue
//! overflowing and counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::otlp::{OtlpReceiver, ReceivedSpan};
use support::{Stack, Tollgate};

const KEY: &str = "tr4ce-api-key-0123456789abcdef";

fn policy() -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: traced, namespace: e2e }}
spec:
  hosts: [traced.example]
  transport: {{ requireHttps: false }}
  app:
    identify:
      apiKey: {{ header: x-api-key }}
  defaultPlan: free
  plans:
    - name: free
      limits:
        - {{ name: hourly, key: app, rate: {{ requests: 100000, period: 1h }} }}
  routes:
    - {{ name: orders, match: {{ pathPrefix: /orders }} }}
---
apiVersion: v1
kind: Secret
metadata: {{ name: keys, namespace: e2e }}
stringData:
  shop: "{KEY}"
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: shop, namespace: e2e }}
spec:
  appId: shop-ios
  apiKey: {{ secretRef: {{ name: keys, key: shop }} }}
"#
    )
}

/// tollgate exporting to `receiver`, batching for at most 100 ms.
fn traced_stack(receiver: &OtlpReceiver, envoy_sampling: f64, extra: &[&str]) -> Stack {
    let endpoint = receiver.endpoint();
    let mut args = vec!["--otlp-endpoint", endpoint.as_str()];
    args.extend_from_slice(extra);
    Stack::builder(&policy())
        .tollgate_args(&args)
        .tollgate_env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .envoy_tracing(receiver.addr(), envoy_sampling)
        .start()
}

fn tollgate_spans(spans: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|s| s.service == "tollgate").collect()
}

fn check_span_with_request_id<'a>(spans: &'a [ReceivedSpan], id: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| {
        s.service == "tollgate"
            && s.name == "envoy.service.auth.v3.Authorization/Check"
            && s.attribute("tollgate.request_id") == Some(id)
    })
}

#[test]
fn tollgates_span_is_a_child_of_envoys_ext_authz_span() {
    let receiver = OtlpReceiver::start();
    let stack = traced_stack(&receiver, 100.0, &[]);

    let allowed = stack
        .get("/orders/7")
        .host("traced.example")
        .header("x-api-key", KEY)
        .send();
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    let denied = stack.get("/orders/8").host("traced.example").send();
    assert_eq!(denied.reason(), Some("app_credential_missing"));

    for (response, outcome, reason) in [
        (&allowed, "allow", "none"),
        (&denied, "deny", "app_credential_missing"),
    ] {
        let id = response.request_id().to_owned();
        let (check, envoy_parent, envoy_spans) = receiver.wait_for(
            &format!("tollgate's span of {id} and Envoy's spans of its trace"),
            |spans| {
                let check = check_span_with_request_id(spans, &id)?.clone();
                let envoy: Vec<ReceivedSpan> = spans
                    .iter()
                    .filter(|s| s.service == "envoy" && s.trace_id == check.trace_id)
                    .cloned()
                    .collect();
                let parent = envoy
                    .iter()
                    .find(|s| s.span_id == check.parent_span_id)?
                    .clone();
                Some((check, parent, envoy))
            },
        );
        // Envoy's span around the ext_authz call: a client span of the
        // Check method, itself a child of Envoy's span of the request.
        assert!(
            envoy_parent
                .name
                .contains("envoy.service.auth.v3.Authorization"),
            "tollgate's parent is Envoy's ext_authz span: {envoy_parent:?}"
        );
        assert_eq!(envoy_parent.kind, 3, "a client span: {envoy_parent:?}");
        let request_span = envoy_spans
            .iter()
            .find(|s| s.span_id == envoy_parent.parent_span_id)
            .unwrap_or_else(|| panic!("Envoy's request span: {envoy_spans:#?}"));
        assert_eq!(request_span.kind, 2, "{request_span:?}");
        assert_eq!(check.kind, 2, "tollgate's span is a server span");

        assert_eq!(check.attribute("tollgate.policy"), Some("e2e/traced"));
        assert_eq!(check.attribute("tollgate.route"), Some("orders"));
        assert_eq!(check.attribute("tollgate.outcome"), Some(outcome));
        assert_eq!(check.attribute("tollgate.reason"), Some(reason));
        if outcome == "allow" {
            assert_eq!(check.attribute("tollgate.app"), Some("shop-ios"));
            assert_eq!(check.attribute("tollgate.plan"), Some("free"));
            // The store call is the Check's child.
            let store = receiver.wait_for("the store call's span", |spans| {
                spans
                    .iter()
                    .find(|s| s.name == "store admit" && s.parent_span_id == check.span_id)
                    .cloned()
            });
            assert_eq!(store.trace_id, check.trace_id);
            assert_eq!(store.attribute("tollgate.store"), Some("memory"));
        } else {
            // The audit line names the trace, so a denial found in the
            // logs leads to its trace.
            let line = stack
                .tollgate
                .log_lines()
                .into_iter()
                .find(|l| {
                    support::tollgate::log_field(l, "request_id").and_then(|v| v.as_str())
                        == Some(id.as_str())
                })
                .expect("an audit line");
            assert_eq!(
                support::tollgate::log_field(&line, "trace_id").and_then(|v| v.as_str()),
                Some(check.trace_id.as_str()),
                "{line}"
            );
        }
        let text = format!("{check:?}");
        assert!(!text.contains(KEY), "no credential in a span: {text}");
    }
}

/// A trace the client started continues through Envoy into tollgate.
#[test]
fn a_clients_traceparent_is_continued() {
    let receiver = OtlpReceiver::start();
    let stack = traced_stack(&receiver, 100.0, &[]);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let response = stack
        .get("/orders/1")
        .host("traced.example")
        .header("x-api-key", KEY)
        .header("traceparent", &format!("00-{trace}-b7ad6b7169203331-01"))
        .send();
    assert_eq!(response.status, 200);
    let id = response.request_id().to_owned();
    let check = receiver.wait_for("tollgate's span", |spans| {
        check_span_with_request_id(spans, &id).cloned()
    });
    assert_eq!(check.trace_id, trace);
}

/// Envoy samples nothing: its ext_authz span's context says "not
/// sampled", tollgate follows it and exports nothing. The control is a
/// Check sent straight to tollgate with a sampled parent afterwards.
#[test]
fn with_sampling_off_tollgate_exports_nothing() {
    let receiver = OtlpReceiver::start();
    let stack = traced_stack(&receiver, 0.0, &[]);
    for i in 0..20 {
        let response = stack
            .get(&format!("/orders/{i}"))
            .host("traced.example")
            .header("x-api-key", KEY)
            .send();
        assert_eq!(response.status, 200);
    }
    let control = control_check(&stack.tollgate);
    let spans = receiver.wait_for("the control span", |spans| {
        spans
            .iter()
            .any(|s| s.trace_id == control)
            .then(|| spans.to_vec())
    });
    let ours = tollgate_spans(&spans);
    assert!(
        ours.iter().all(|s| s.trace_id == control),
        "only the control trace: {ours:#?}"
    );
    assert!(
        spans.iter().all(|s| s.service != "envoy"),
        "Envoy sampled nothing either"
    );
}

/// Without any parent, `--otlp-sampler-ratio 0` starts no trace.
#[test]
fn a_zero_root_ratio_starts_no_trace() {
    let receiver = OtlpReceiver::start();
    let endpoint = receiver.endpoint();
    let tollgate = Tollgate::start_env(
        &policy(),
        &["--otlp-endpoint", &endpoint, "--otlp-sampler-ratio", "0"],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for _ in 0..10 {
        let checked = runtime.block_on(support::check::check(
            tollgate.grpc_addr(),
            "traced.example",
            "/orders/1",
            &[("x-api-key", KEY)],
        ));
        assert_eq!(checked.outcome(), "allow");
    }
    let control = control_check(&tollgate);
    let spans = receiver.wait_for("the control span", |spans| {
        spans
            .iter()
            .any(|s| s.trace_id == control)
            .then(|| spans.to_vec())
    });
    assert!(spans.iter().all(|s| s.trace_id == control), "{spans:#?}");
}

/// A Check sent straight to tollgate whose request carries a sampled W3C
/// parent; returns its trace id.
fn control_check(tollgate: &Tollgate) -> String {
    let trace = "5b8aa5a2d2c872e8321cf37308d69df2";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let checked = runtime.block_on(support::check::check(
        tollgate.grpc_addr(),
        "traced.example",
        "/orders/control",
        &[
            ("x-api-key", KEY),
            ("traceparent", &format!("00-{trace}-051581bf3cb55c13-01")),
        ],
    ));
    assert_eq!(checked.outcome(), "allow");
    trace.to_owned()
}

/// The value of a series in Prometheus text, 0 when absent.
fn series(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A collector that takes calls and never answers: tollgate's export
/// queue (4 spans here) fills, further spans are dropped and counted, and
/// every Check is still answered, and answered right.
#[test]
fn a_stuck_collector_costs_spans_never_checks() {
    let receiver = OtlpReceiver::hanging();
    let stack = Stack::builder(&policy())
        .tollgate_args(&["--otlp-endpoint", &receiver.endpoint()])
        .tollgate_env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .tollgate_env("OTEL_BSP_MAX_QUEUE_SIZE", "4")
        .tollgate_env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
        .tollgate_env("OTEL_BSP_EXPORT_TIMEOUT", "600000")
        .envoy_tracing(receiver.addr(), 100.0)
        .start();
    for i in 0..60 {
        let key = if i % 3 == 0 {
            "wrong-key-0123456789"
        } else {
            KEY
        };
        let response = stack
            .get(&format!("/orders/{i}"))
            .host("traced.example")
            .header("x-api-key", key)
            .send();
        let expected = if i % 3 == 0 { 401 } else { 200 };
        assert_eq!(
            response.status,
            expected,
            "request {i}: {}",
            response.text()
        );
    }
    let metrics = stack.tollgate.metrics();
    let dropped = series(
        &metrics,
        "tollgate_trace_spans_dropped_total{reason=\"queue_full\"}",
    );
    assert!(
        dropped > 0.0,
        "spans beyond the queue are counted:\n{metrics}"
    );
    assert!(receiver.calls() >= 1, "tollgate did try to export");
}

/// A collector that is down (its port closed after the first spans):
/// every Check is answered, and the failed exports are counted.
#[test]
fn a_stopped_receiver_never_fails_a_check() {
    let mut receiver = OtlpReceiver::start();
    let stack = traced_stack(&receiver, 100.0, &[]);
    let first = stack
        .get("/orders/first")
        .host("traced.example")
        .header("x-api-key", KEY)
        .send();
    let id = first.request_id().to_owned();
    receiver.wait_for("the first span", |spans| {
        check_span_with_request_id(spans, &id).map(|_| ())
    });
    receiver.stop();
    for i in 0..40 {
        let response = stack
            .get(&format!("/orders/{i}"))
            .host("traced.example")
            .header("x-api-key", KEY)
            .send();
        assert_eq!(response.status, 200, "request {i}: {}", response.text());
    }
    let failed = support::wait_for(
        "tollgate to count the spans its failed exports dropped",
        std::time::Duration::from_secs(60),
        || {
            let value = series(
                &stack.tollgate.metrics(),
                "tollgate_trace_spans_dropped_total{reason=\"export_failed\"}",
            );
            (value > 0.0).then_some(value)
        },
    );
    assert!(failed >= 1.0);
}
