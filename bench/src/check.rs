//! The `CheckRequest` of the direct gRPC mode, shaped like the one Envoy
//! sends for the load benchmark's HTTP request (`encode_raw_headers: true`:
//! headers in `header_map` with raw values, pseudo-headers included), and
//! the null servers' answer.

use tollgate::grpc::pb::envoy::config::core::v3::{
    Address, SocketAddress, address, socket_address,
};
use tollgate::grpc::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttrRequest,
};
use tollgate::grpc::pb::{AttributeContext, CheckRequest, CheckResponse, HeaderMap, HeaderValue};

use crate::fixtures::{self, Credentials, Fixture};

fn peer(ip: &str, port: u32) -> Peer {
    Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.to_owned(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            })),
        }),
        ..Default::default()
    }
}

/// The headers Envoy forwards for the benchmark request, in its order.
pub fn envoy_headers<'a>(credentials: &'a Credentials, host: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![
        (":authority", host),
        (":path", fixtures::PATH),
        (":method", "GET"),
        (":scheme", "http"),
        ("user-agent", "tollgate-bench/1.0"),
        ("accept", "application/json"),
    ];
    headers.extend(credentials.headers());
    headers.extend([
        ("x-forwarded-proto", "http"),
        ("x-request-id", "6c0e2a4d-9f1b-4c5e-8d7a-3b2f1e0d9c8b"),
    ]);
    headers
}

/// A `CheckRequest` carrying `credentials` for policy 0's host.
pub fn request(credentials: &Credentials) -> CheckRequest {
    let headers = envoy_headers(credentials, fixtures::HOST)
        .into_iter()
        .map(|(key, value)| HeaderValue {
            key: key.to_owned(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        })
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("127.0.0.1", 40_000)),
            destination: Some(peer("127.0.0.1", 10_000)),
            request: Some(AttrRequest {
                time: Some(prost_types::Timestamp {
                    seconds: fixtures::now() as i64,
                    nanos: 0,
                }),
                http: Some(HttpRequest {
                    id: "12345678901234567890".to_owned(),
                    method: "GET".to_owned(),
                    header_map: Some(HeaderMap { headers }),
                    path: fixtures::PATH.to_owned(),
                    host: fixtures::HOST.to_owned(),
                    scheme: "http".to_owned(),
                    protocol: "HTTP/1.1".to_owned(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

/// What tollgate answers for the benchmark request (decided in process
/// with the in-memory store): the null servers send exactly this, so
/// Envoy applies the same header mutations behind them as behind tollgate.
/// With `metadata`, the answer carries the dynamic metadata a policy with
/// `response.dynamicMetadata: always` adds (the benchmark policy does not
/// ask for it, so tollgate's own answer has none).
pub async fn tollgate_allow_response(metadata: bool) -> anyhow::Result<CheckResponse> {
    let fixture = Fixture::generate();
    let snapshot = fixture.snapshot(1, 1);
    let deps = tollgate::pipeline::Deps {
        store: std::sync::Arc::new(tollgate::store::MemoryStore::new()),
        clock: std::sync::Arc::new(tollgate::clock::SystemClock),
        settings: Default::default(),
    };
    let credentials = fixture.credentials(0, fixtures::SUBJECT);
    let context = tollgate::grpc::request::to_context(&request(&credentials));
    let mut decision = tollgate::pipeline::decide(&snapshot, &context, &deps).await;
    if let Some(deny) = decision.denial() {
        anyhow::bail!(
            "the benchmark request is denied: {} ({})",
            deny.reason.code(),
            deny.detail
        );
    }
    if let tollgate::decision::Verdict::Allow(allow) = &mut decision.verdict {
        allow.metadata = metadata;
    }
    Ok(tollgate::grpc::response::to_check_response(
        &decision,
        &tollgate::decision::ChallengeParams::default(),
    ))
}

/// A part of tollgate's allow answer, which a null server can leave out
/// (`tollgate-bench answer` measures what each costs Envoy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Headers set on the upstream request (`x-tollgate-*`, the policy's
    /// `upstreamHeaders`).
    Headers,
    /// Request headers removed upstream (credentials, forged identity).
    Removals,
    /// `RateLimit-Policy` / `RateLimit` headers for the client.
    Ratelimit,
}

/// `response` without `part`.
pub fn without(mut response: CheckResponse, part: Part) -> CheckResponse {
    use tollgate::grpc::pb::envoy::service::auth::v3::check_response::HttpResponse;
    if let Some(HttpResponse::OkResponse(ok)) = &mut response.http_response {
        match part {
            Part::Headers => ok.headers.clear(),
            Part::Removals => ok.headers_to_remove.clear(),
            Part::Ratelimit => ok.response_headers_to_add.clear(),
        }
    }
    response
}
