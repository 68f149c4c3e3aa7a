//! The whole `Check` service path (request translation, decision, audit,
//! metrics, response), with the full policy and the in-memory store, and
//! what tracing adds to it:
//!
//! - `check/tracing_off` — no tracer (the default);
//! - `check/tracing_on_unsampled` — a tracer, and Envoy's context says
//!   "not sampled" (the common case at 1 % sampling);
//! - `check/tracing_on_sampled` — every Check recorded: the span, its
//!   attributes, the store call's child span, and the hand-off to the
//!   export queue (the exporter here drops the batches).
//!
//! `cargo bench --bench check`; figures in `docs/performance.md`. The
//! tracing cases sit between `tracing-cases` markers so the same file,
//! without them, measures a tree from before tracing existed.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tollgate::clock::SystemClock;
use tollgate::grpc::CheckService;
use tollgate::grpc::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use tollgate::grpc::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use tollgate::grpc::pb::{AttributeContext, CheckRequest, HttpResponse};
use tollgate::pipeline::Deps;
use tollgate::store::MemoryStore;

#[path = "support/fixtures.rs"]
mod fixtures;

use fixtures::Fixture;

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    }
}

/// The request as Envoy sends it, with `extra` headers.
fn check_request(credentials: &fixtures::Credentials, extra: &[(&str, &str)]) -> CheckRequest {
    let mut headers: HashMap<String, String> = credentials
        .headers()
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    for (name, value) in [
        (":authority", fixtures::HOST),
        (":path", fixtures::PATH),
        (":method", "GET"),
        (":scheme", "https"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "9b2f6a4e-5c1d-4e2b-8f3a-1d2c3b4a5f6e"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        headers.insert(name.to_owned(), value.to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: None,
                    })),
                }),
                ..Default::default()
            }),
            destination: Some(Peer {
                principal: fixtures::HOST.into(),
                ..Default::default()
            }),
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    id: "1".into(),
                    method: "GET".into(),
                    headers,
                    path: fixtures::PATH.into(),
                    host: fixtures::HOST.into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

fn service(fixture: &Fixture) -> CheckService {
    let snapshot = Arc::new(ArcSwap::from_pointee(fixture.snapshot(1, 1)));
    let deps = Deps {
        store: Arc::new(MemoryStore::new()),
        clock: Arc::new(SystemClock),
        settings: Default::default(),
    };
    CheckService::new(snapshot, deps)
}

/// Measures `service` on `request`, after checking it is allowed (a
/// denial takes a shorter path and would flatter the figures).
fn bench(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    service: &CheckService,
    request: &CheckRequest,
) {
    let response = rt.block_on(service.check(request));
    if !matches!(response.http_response, Some(HttpResponse::OkResponse(_))) {
        panic!("the benchmark request is denied: {response:?}");
    }
    group.bench_function(name, |b| {
        b.to_async(rt).iter_batched(
            || request.clone(),
            |request| async move { black_box(service.check_owned(request).await) },
            BatchSize::SmallInput,
        );
    });
}

fn check(c: &mut Criterion) {
    let rt = runtime();
    let fixture = Fixture::generate();
    let credentials = fixture.credentials(0, fixtures::SUBJECT);
    let plain = check_request(&credentials, &[]);
    let mut group = c.benchmark_group("check");
    bench(&mut group, &rt, "tracing_off", &service(&fixture), &plain);
    // tracing-cases: begin
    tracing_cases(&mut group, &rt, &fixture, &credentials);
    // tracing-cases: end
    group.finish();
}

// tracing-cases: begin
/// An exporter that drops what it gets: the cost measured is tollgate's.
#[derive(Debug)]
struct Discard;

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    async fn export(
        &self,
        _batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

fn tracing_cases(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    fixture: &Fixture,
    credentials: &fixtures::Credentials,
) {
    use tollgate::telemetry::trace::{TraceArgs, Tracing};
    let args = TraceArgs {
        otlp_endpoint: Some("http://127.0.0.1:4317".into()),
        otlp_sampler_ratio: None,
    };
    let settings = match args.settings(|_| None) {
        Ok(Some(settings)) => settings,
        other => panic!("trace settings: {other:?}"),
    };
    let tracing = rt.block_on(async { Tracing::with_exporter(Discard, &settings) });
    let traced = service(fixture).with_tracer(Some(tracing.tracer()));
    let unsampled = check_request(
        credentials,
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )],
    );
    bench(group, rt, "tracing_on_unsampled", &traced, &unsampled);
    let sampled = check_request(
        credentials,
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
    );
    bench(group, rt, "tracing_on_sampled", &traced, &sampled);
}
// tracing-cases: end

criterion_group!(benches, check);
criterion_main!(benches);
