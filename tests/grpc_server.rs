//! The real server, driven through `tollgate::server::run` on `127.0.0.1:0`
//! (and once through the built binary) with a tonic client generated from
//! the same protos: the decision contract on the wire, gRPC health and
//! reflection, bad input, metrics and graceful drain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate::clock::SystemClock;
use tollgate::grpc::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use tollgate::grpc::pb::{
    AuthorizationClient, CheckRequest, CheckResponse, DeniedHttpResponse, HttpResponse,
    OkHttpResponse,
};
use tollgate::pipeline::{Deps, Settings};
use tollgate::policy::{compile, document};
use tollgate::server::{self, Listeners, Readiness, ServerError, ServerState};
use tollgate::store::MemoryStore;
use tonic::transport::Channel;

/// Bounds every wait so a hung server fails the test instead of hanging
/// the suite (not an assertion on speed).
const LIMIT: Duration = Duration::from_secs(20);

const POLICY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: bikes, namespace: mobility }
spec:
  hosts: [api.bikes.example]
  transport: { requireHttps: true }
  routes:
    - { name: health, match: { path: /healthz }, public: true }
    - { name: rides, match: { pathPrefix: /v1 } }
  response:
    upstreamHeaders:
      x-bikes-policy: "{policy}"
      x-bikes-route: "{route}"
    dynamicMetadata: always
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: trial, namespace: mobility }
spec:
  hosts: [trial.bikes.example]
  mode: dryRun
  transport: { requireHttps: true }
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: plain, namespace: mobility }
spec:
  hosts: [plain.bikes.example]
  transport: { requireHttps: true }
  routes:
    - { name: closed, match: { pathPrefix: /closed }, deny: true }
"#;

// ---------------------------------------------------------------- harness

/// A server started with `run`, stopped by `stop` (or on drop).
struct TestServer {
    grpc: SocketAddr,
    admin: SocketAddr,
    readiness: Readiness,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_with(Readiness::new(true), Duration::from_secs(5)).await
    }

    async fn start_with(readiness: Readiness, drain_timeout: Duration) -> Self {
        let docs = document::parse_documents(Path::new("test-policy.yaml"), POLICY).unwrap();
        let snapshot = compile::compile(&docs, 1).unwrap();
        let deps = Deps {
            store: Arc::new(MemoryStore::new()),
            clock: Arc::new(SystemClock),
            settings: Settings::default(),
        };
        let listeners = Listeners::bind(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let grpc = listeners.grpc_addr().unwrap();
        let admin = listeners.admin_addr().unwrap();
        let mut state = ServerState::new(Arc::new(ArcSwap::from_pointee(snapshot)), deps);
        state.readiness = readiness.clone();
        state.metrics = Some(tollgate::telemetry::prometheus());
        state.drain_timeout = drain_timeout;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listeners, state, async {
            let _ = stopped.await;
        }));
        Self {
            grpc,
            admin,
            readiness,
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self) -> AuthorizationClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect_timeout(LIMIT)
            .connect()
            .await
            .unwrap();
        AuthorizationClient::new(channel)
    }

    async fn check(&self, request: CheckRequest) -> CheckResponse {
        let response = tokio::time::timeout(LIMIT, self.client().await.check(request))
            .await
            .expect("Check answered in time");
        response
            .expect("Check never answers with a gRPC error")
            .into_inner()
    }

    /// Triggers shutdown (does not wait).
    fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and returns what `run` returned.
    async fn stop(mut self) -> Result<(), ServerError> {
        self.begin_shutdown();
        tokio::time::timeout(LIMIT, &mut self.task)
            .await
            .expect("run returned in time")
            .expect("run did not panic")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

use support::check::request as envoy_request;

fn ok(response: &CheckResponse) -> &OkHttpResponse {
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("expected an OK response, got {other:?}"),
    }
}

fn denied(response: &CheckResponse) -> &DeniedHttpResponse {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => denied,
        other => panic!("expected a denied response, got {other:?}"),
    }
}

fn header<'a>(options: &'a [tollgate::grpc::pb::HeaderValueOption], name: &str) -> Option<&'a str> {
    options
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

fn metadata(response: &CheckResponse, key: &str) -> Option<String> {
    use prost_types::value::Kind;
    match response
        .dynamic_metadata
        .as_ref()?
        .fields
        .get(key)?
        .kind
        .as_ref()?
    {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// Asserts a `request_malformed` denial whose detail mentions `needle`.
fn assert_malformed(response: &CheckResponse, needle: &str) {
    assert_eq!(
        response.status.as_ref().unwrap().code,
        3,
        "INVALID_ARGUMENT"
    );
    let denied = denied(response);
    assert_eq!(denied.status.unwrap().code, 400);
    assert_eq!(
        header(&denied.headers, "x-tollgate-reason"),
        Some("request_malformed")
    );
    let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(body["reason"], "request_malformed");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains(needle),
        "detail {detail:?} lacks {needle:?}"
    );
}

/// GET on the admin port: (status, body).
async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::time::timeout(LIMIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `probe` every 20 ms, at most [`LIMIT`].
async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !probe().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn health(addr: SocketAddr, service: &str) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

// ---------------------------------------------------------------- contract

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_sets_identity_headers_with_overwrite_and_removes_forged_ones() {
    let server = TestServer::start().await;
    let response = server
        .check(envoy_request(
            "api.bikes.example",
            "/v1/rides?near=here",
            &[
                ("x-tollgate-user", "forged"),
                ("x-tollgate-anything", "forged"),
                ("x-bikes-route", "forged"),
            ],
            true,
        ))
        .await;
    assert_eq!(response.status.as_ref().unwrap().code, 0);
    let ok = ok(&response);
    assert_eq!(
        header(&ok.headers, "x-bikes-policy"),
        Some("mobility/bikes")
    );
    assert_eq!(header(&ok.headers, "x-bikes-route"), Some("rides"));
    for option in &ok.headers {
        assert_eq!(option.append_action, 2, "OVERWRITE_IF_EXISTS_OR_ADD");
        assert_eq!(option.append, None, "the deprecated append is never set");
        let name = &option.header.as_ref().unwrap().key;
        assert!(
            !ok.headers_to_remove.contains(name),
            "{name} is both set and removed: Envoy would remove tollgate's value"
        );
    }
    for forged in ["x-tollgate-user", "x-tollgate-anything"] {
        assert!(
            ok.headers_to_remove.iter().any(|h| h == forged),
            "{forged} not removed: {:?}",
            ok.headers_to_remove
        );
    }
    assert_eq!(
        metadata(&response, "policy").as_deref(),
        Some("mobility/bikes")
    );
    assert_eq!(metadata(&response, "route").as_deref(), Some("rides"));
    assert_eq!(metadata(&response, "decision").as_deref(), Some("allow"));
    server.stop().await.unwrap();
}

/// Dynamic metadata costs Envoy work on every request, so an allow carries
/// none unless its policy asks (`response.dynamicMetadata: always`, as
/// mobility/bikes does above); denials always carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allows_carry_dynamic_metadata_only_when_the_policy_asks() {
    let server = TestServer::start().await;
    let allowed = server
        .check(envoy_request("plain.bikes.example", "/v1/rides", &[], true))
        .await;
    assert_eq!(allowed.status.as_ref().unwrap().code, 0);
    assert_eq!(
        allowed.dynamic_metadata, None,
        "no metadata unless the policy asks"
    );
    let denied = server
        .check(envoy_request("plain.bikes.example", "/closed/x", &[], true))
        .await;
    assert_eq!(denied.status.as_ref().unwrap().code, 7, "PERMISSION_DENIED");
    assert_eq!(metadata(&denied, "decision").as_deref(), Some("deny"));
    assert_eq!(metadata(&denied, "reason").as_deref(), Some("rule_denied"));
    assert_eq!(
        metadata(&denied, "policy").as_deref(),
        Some("mobility/plain")
    );
    let asked = server
        .check(envoy_request("api.bikes.example", "/v1/rides", &[], true))
        .await;
    assert_eq!(metadata(&asked, "decision").as_deref(), Some("allow"));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_carries_http_status_problem_body_reason_header_and_grpc_code() {
    let server = TestServer::start().await;
    // Plaintext (no TLS evidence) although the client claims :scheme https.
    let response = server
        .check(envoy_request("api.bikes.example", "/v1/rides", &[], false))
        .await;
    assert_eq!(
        response.status.as_ref().unwrap().code,
        7,
        "PERMISSION_DENIED"
    );
    let deny = denied(&response);
    assert_eq!(deny.status.unwrap().code, 403);
    assert_eq!(
        header(&deny.headers, "x-tollgate-reason"),
        Some("https_required")
    );
    assert_eq!(
        header(&deny.headers, "content-type"),
        Some("application/problem+json")
    );
    assert!(deny.headers.iter().all(|h| h.append_action == 2));
    let body: serde_json::Value = serde_json::from_str(&deny.body).unwrap();
    assert_eq!(body["status"], 403);
    assert_eq!(body["reason"], "https_required");
    assert_eq!(body["type"], "https://tollgate.dev/problems/https_required");
    assert_eq!(
        metadata(&response, "reason").as_deref(),
        Some("https_required")
    );

    let response = server
        .check(envoy_request("unknown.example", "/", &[], true))
        .await;
    assert_eq!(
        header(&denied(&response).headers, "x-tollgate-reason"),
        Some("no_policy")
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_allows_reports_and_counts_the_denial() {
    let server = TestServer::start().await;
    let response = server
        .check(envoy_request("trial.bikes.example", "/", &[], false))
        .await;
    assert_eq!(response.status.as_ref().unwrap().code, 0);
    ok(&response);
    assert_eq!(
        metadata(&response, "dry_run").as_deref(),
        Some("https_required")
    );
    let (status, metrics) = admin_get(server.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tollgate_checks_total")
                && l.contains(r#"outcome="dry_run_deny""#)
                && l.contains(r#"policy="mobility/trial""#)
                && l.contains(r#"reason="https_required""#)),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_decisions_and_time_them_in_sub_ms_buckets() {
    let server = TestServer::start().await;
    server
        .check(envoy_request("api.bikes.example", "/healthz", &[], true))
        .await;
    let (status, metrics) = admin_get(server.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tollgate_checks_total")
                && l.contains(r#"outcome="allow""#)
                && l.contains(r#"policy="mobility/bikes""#)
                && l.contains(r#"reason="none""#)),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tollgate_check_duration_seconds_bucket{le="0.0001"}"#),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

// ---------------------------------------------------------------- health, reflection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_follow_the_snapshot_then_the_drain() {
    let mut server =
        TestServer::start_with(Readiness::new(false), Duration::from_millis(300)).await;
    let service = "envoy.service.auth.v3.Authorization";
    assert_eq!(health(server.grpc, "").await, NOT_SERVING);
    assert_eq!(health(server.grpc, service).await, NOT_SERVING);
    assert_eq!(admin_get(server.admin, "/readyz").await.0, 503);
    assert_eq!(admin_get(server.admin, "/healthz").await.0, 200);

    server.readiness.set_snapshot_loaded();
    let grpc = server.grpc;
    eventually("health SERVING", || async move {
        health(grpc, "").await == SERVING && health(grpc, service).await == SERVING
    })
    .await;
    assert_eq!(
        admin_get(server.admin, "/readyz").await,
        (200, "ready\n".into())
    );

    // A Watch stream (as a long-lived health checker holds) sees readiness
    // fail when shutdown starts, before the drain ends.
    let channel = Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = tonic_health::pb::health_client::HealthClient::new(channel)
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(LIMIT, watch.message()).await.unwrap();
    assert_eq!(first.unwrap().unwrap().status, SERVING);
    server.begin_shutdown();
    let next = tokio::time::timeout(LIMIT, watch.message()).await.unwrap();
    assert_eq!(next.unwrap().unwrap().status, NOT_SERVING);
    let admin = server.admin;
    eventually("/readyz 503 while draining", || async move {
        admin_get(admin, "/readyz").await.0 == 503
    })
    .await;
    // The open Watch stream holds the drain until its timeout.
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_and_describes_check() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = TestServer::start().await;
    let channel = Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("envoy.service.auth.v3.CheckRequest".into()),
    ]
    .map(|message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    });
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();

    let first = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("expected a service list, got {first:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"envoy.service.auth.v3.Authorization"),
        "{names:?}"
    );
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let second = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else {
        panic!("expected file descriptors, got {second:?}");
    };
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .unwrap();
    assert_eq!(file.package(), "envoy.service.auth.v3");
    server.stop().await.unwrap();
}

// ---------------------------------------------------------------- bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_request_malformed_denial_never_a_grpc_error() {
    let server = TestServer::start().await;

    let response = server.check(CheckRequest { attributes: None }).await;
    assert_malformed(&response, "no attributes");

    let mut no_http = envoy_request("api.bikes.example", "/v1/rides", &[], true);
    no_http.attributes.as_mut().unwrap().request = None;
    assert_malformed(&server.check(no_http).await, "no HTTP request");

    let big = "b".repeat(tollgate::request::MAX_HEADER_BYTES);
    let oversized = envoy_request("api.bikes.example", "/v1/rides", &[("x-big", &big)], true);
    assert_malformed(&server.check(oversized).await, "exceed");

    let names: Vec<String> = (0..=tollgate::request::MAX_HEADER_COUNT)
        .map(|i| format!("x-h-{i}"))
        .collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let crowded = envoy_request("api.bikes.example", "/v1/rides", &many, true);
    assert_malformed(&server.check(crowded).await, "more than");

    // encode_raw_headers: a raw value that is not UTF-8.
    let mut raw = envoy_request("api.bikes.example", "/v1/rides", &[], true);
    let http = raw
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    http.header_map = Some(HeaderMap {
        headers: vec![HeaderValue {
            key: "x-city".into(),
            value: String::new(),
            raw_value: b"Espa\xF1a".to_vec(),
        }],
    });
    assert_malformed(&server.check(raw).await, "not valid UTF-8");

    let mut body = envoy_request("api.bikes.example", "/v1/rides", &[], true);
    body.attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap()
        .raw_body = vec![b'x'; tollgate::request::MAX_BODY_BYTES + 1];
    assert_malformed(&server.check(body).await, "body exceeds");

    let dotted = envoy_request("api.bikes.example", "/healthz/..%2Fv1/rides", &[], true);
    assert_malformed(&server.check(dotted).await, "encoded slash");
    server.stop().await.unwrap();
}

/// A raw HTTP/2 gRPC client: sends bytes no generated client would, and
/// holds a stream open across shutdown.
struct RawCall {
    send: h2::SendStream<Bytes>,
    response: h2::client::ResponseFuture,
    ping: h2::PingPong,
}

impl RawCall {
    /// Opens a `Check` stream and sends its headers; returns once the
    /// server has read them (a PING sent after them was answered).
    async fn open(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
        let ping = connection.ping_pong().unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.unwrap();
        let request = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{addr}/envoy.service.auth.v3.Authorization/Check"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, send) = client.send_request(request, false).unwrap();
        let mut call = Self {
            send,
            response,
            ping,
        };
        tokio::time::timeout(LIMIT, call.ping.ping(h2::Ping::opaque()))
            .await
            .unwrap()
            .unwrap();
        call
    }

    /// Sends `message` as the only gRPC frame and reads the response:
    /// (grpc-status, decoded CheckResponse).
    async fn finish(mut self, message: &[u8]) -> (String, CheckResponse) {
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(message);
        self.send.send_data(Bytes::from(frame), true).unwrap();
        let response = tokio::time::timeout(LIMIT, self.response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = tokio::time::timeout(LIMIT, body.data()).await.unwrap() {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = tokio::time::timeout(LIMIT, body.trailers())
            .await
            .unwrap()
            .unwrap()
            .unwrap_or_default();
        let status = trailers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(data.len() >= 5, "no gRPC message (status {status})");
        let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
        let decoded = CheckResponse::decode(&data[5..5 + len]).unwrap();
        (status, decoded)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_get_a_check_response_not_a_grpc_error() {
    let server = TestServer::start().await;

    // attributes.request.http.method = 0xFF: invalid UTF-8 in a string field.
    // HttpRequest{2: [FF]} → Request{2: ..} → AttributeContext{4: ..} → CheckRequest{1: ..}
    let http = [0x12, 0x01, 0xFF];
    let request = [&[0x12, http.len() as u8][..], &http].concat();
    let attributes = [&[0x22, request.len() as u8][..], &request].concat();
    let check = [&[0x0A, attributes.len() as u8][..], &attributes].concat();
    let (status, response) = RawCall::open(server.grpc).await.finish(&check).await;
    assert_eq!(status, "0", "transport status OK");
    assert_malformed(&response, "could not be decoded");

    // Not protobuf at all.
    let (status, response) = RawCall::open(server.grpc)
        .await
        .finish(&[0xFF, 0xFF, 0xFF, 0xFF])
        .await;
    assert_eq!(status, "0");
    assert_malformed(&response, "could not be decoded");
    server.stop().await.unwrap();
}

// ---------------------------------------------------------------- shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_readiness_then_lets_in_flight_checks_finish() {
    let mut server = TestServer::start().await;
    let in_flight = RawCall::open(server.grpc).await;

    server.begin_shutdown();
    let admin = server.admin;
    eventually("/readyz 503", || async move {
        admin_get(admin, "/readyz").await.0 == 503
    })
    .await;

    // The call accepted before shutdown still gets its decision.
    let message = envoy_request("api.bikes.example", "/healthz", &[], true).encode_to_vec();
    let (status, response) = in_flight.finish(&message).await;
    assert_eq!(status, "0");
    assert_eq!(response.status.as_ref().unwrap().code, 0);
    ok(&response);

    let grpc = server.grpc;
    server.stop().await.unwrap();
    assert!(
        TcpStream::connect(grpc).await.is_err(),
        "the gRPC listener is closed after the drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_is_bounded_by_the_drain_timeout() {
    let server = TestServer::start_with(Readiness::new(true), Duration::from_millis(200)).await;
    // Headers sent, body never: a call that would never finish.
    let stuck = RawCall::open(server.grpc).await;
    server.stop().await.unwrap();
    drop(stuck);
}

// ---------------------------------------------------------------- the binary

/// The built binary with no `TOLLGATE_*` variable inherited: each test sets
/// exactly the settings it means.
fn tollgate_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TOLLGATE_") {
            command.env_remove(name);
        }
    }
    command
}

/// `tollgate serve` as deployed: settings from the environment, ports
/// from the `listening` line, SIGTERM to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_from_env_config_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut child = tollgate_command()
        .arg("serve")
        .env("TOLLGATE_POLICY_FILE", &policy)
        .env("TOLLGATE_GRPC_ADDR", "127.0.0.1:0")
        .env("TOLLGATE_ADMIN_ADDR", "127.0.0.1:0")
        .env("TOLLGATE_LOG_FORMAT", "json")
        .env("TOLLGATE_DRAIN_TIMEOUT", "2s")
        .env_remove("RUST_LOG")
        .env_remove("TOLLGATE_LOG_LEVEL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Kill by PID whatever happens below.
    struct Guard(u32);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _guard = Guard(pid);

    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::<serde_json::Value>::new();
    let (grpc, admin) = loop {
        let line = lines_rx
            .recv_timeout(LIMIT)
            .expect("a `listening` log line");
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        log.push(value.clone());
        if value["message"] == "listening" {
            let addr = |key: &str| -> SocketAddr { value[key].as_str().unwrap().parse().unwrap() };
            break (addr("grpc_addr"), addr("admin_addr"));
        }
    };
    assert_eq!(admin_get(admin, "/readyz").await.0, 200);

    let channel = Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AuthorizationClient::new(channel);
    let allowed = client
        .check(envoy_request("api.bikes.example", "/healthz", &[], true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed.status.unwrap().code, 0);
    let secret = "Bearer sk-live-do-not-log-0123456789";
    let denied = client
        .check(envoy_request(
            "api.bikes.example",
            "/v1/rides",
            &[("authorization", secret)],
            false,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.status.unwrap().code, 7);

    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status after SIGTERM: {exit}");

    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(1)) {
        log.push(serde_json::from_str(&line).unwrap());
    }
    let audit = log
        .iter()
        .find(|l| l["message"] == "denied")
        .expect("an audit line for the denial");
    assert_eq!(audit["target"], "tollgate::audit");
    assert_eq!(audit["reason"], "https_required");
    assert_eq!(audit["policy"], "mobility/bikes");
    assert_eq!(audit["request_id"], "test-request-1");
    let everything = serde_json::to_string(&log).unwrap();
    assert!(
        !everything.contains("sk-live-do-not-log"),
        "a credential was logged"
    );
    let messages: Vec<&str> = log.iter().filter_map(|l| l["message"].as_str()).collect();
    let position = |m: &str| {
        messages
            .iter()
            .position(|x| *x == m)
            .unwrap_or_else(|| panic!("no {m:?} in {messages:?}"))
    };
    assert!(position("shutting down") < position("draining"));
    assert!(position("draining") < position("stopped"));
}

#[test]
fn the_binary_refuses_a_broken_policy_naming_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("broken.yaml");
    std::fs::write(
        &policy,
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiPolicy\nmetadata: { name: bikes, namespace: mobility }\nspec:\n  hosts: [api.bikes.example]\n  routes:\n    - { name: r, match: { path: /x }, costt: 5 }\n",
    )
    .unwrap();
    let output = tollgate_command()
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .arg("--policy-file")
        .arg(&policy)
        .env_remove("TOLLGATE_POLICY_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broken.yaml"), "{stderr}");
    assert!(stderr.contains("ApiPolicy mobility/bikes"), "{stderr}");
    assert!(stderr.contains("costt"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}
