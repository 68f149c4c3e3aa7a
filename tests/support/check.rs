//! `Check` over gRPC, the way Envoy calls it, for tests that decide
//! without an Envoy in front (Kubernetes source tests, where what matters
//! is which policy version decides).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tollgate::grpc::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use tollgate::grpc::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use tollgate::grpc::pb::{
    AttributeContext, AuthorizationClient, CheckRequest, HeaderValueOption, HttpResponse,
};
use tonic::transport::Channel;

/// Bounds each call (not an assertion on speed).
const LIMIT: Duration = Duration::from_secs(20);

/// What a `Check` answered, reduced to what tests assert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// 200 for an allow, else the denial's HTTP status.
    pub status: u16,
    /// `x-tollgate-reason` of a denial.
    pub reason: Option<String>,
    /// Headers for the upstream (allow) or the client (deny).
    pub headers: Vec<(String, String)>,
    /// Headers for the client on an allow (`response_headers_to_add`:
    /// the RateLimit fields).
    pub client_headers: Vec<(String, String)>,
}

impl Checked {
    /// A short form for assertions: `allow` or the reason code.
    pub fn outcome(&self) -> &str {
        self.reason.as_deref().unwrap_or("allow")
    }

    /// A header's value, if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Calls `Check` for an HTTPS `GET https://{host}{path}` with `headers`
/// from 198.51.100.20.
pub async fn check(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Checked {
    let mut client = connect(addr).await;
    check_on(&mut client, host, path, headers).await
}

/// A client of tollgate's `Check` over one HTTP/2 connection, to send many
/// requests (load tests).
pub async fn connect(addr: SocketAddr) -> AuthorizationClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(LIMIT)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to tollgate at {addr}: {e}"));
    AuthorizationClient::new(channel)
}

/// [`check`] on an open client.
pub async fn check_on(
    client: &mut AuthorizationClient<Channel>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Checked {
    let response = tokio::time::timeout(LIMIT, client.check(request(host, path, headers, true)))
        .await
        .expect("Check answered in time")
        .expect("Check never answers with a gRPC error")
        .into_inner();
    let pairs = |options: &[HeaderValueOption]| {
        options
            .iter()
            .filter_map(|o| o.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect::<Vec<_>>()
    };
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => Checked {
            status: 200,
            reason: None,
            headers: pairs(&ok.headers),
            client_headers: pairs(&ok.response_headers_to_add),
        },
        Some(HttpResponse::DeniedResponse(denied)) => {
            let headers = pairs(&denied.headers);
            let reason = headers
                .iter()
                .find(|(k, _)| k == "x-tollgate-reason")
                .map(|(_, v)| v.clone());
            let status = denied.status.map_or(403, |s| s.code as u16);
            Checked {
                status,
                reason,
                headers,
                client_headers: Vec::new(),
            }
        }
        None => panic!("a CheckResponse without an HTTP response"),
    }
}

/// Polls `check` until `expected(outcome)` holds, for at most `limit`;
/// returns the last answer. For changes that propagate (a watch event).
pub async fn check_until(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    limit: Duration,
    expected: impl Fn(&Checked) -> bool,
) -> Checked {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let checked = check(addr, host, path, headers).await;
        if expected(&checked) {
            return checked;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("after {limit:?}, {host}{path} still answers {checked:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `GET` CheckRequest as Envoy sends it, from 198.51.100.20, with
/// `x-request-id: test-request-1`; `tls` adds the evidence Envoy gives for
/// a TLS listener (the destination principal).
pub fn request(host: &str, path: &str, headers: &[(&str, &str)], tls: bool) -> CheckRequest {
    for (name, value) in headers {
        super::credentials::note_header(name, value);
    }
    let mut map: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.insert(":authority".into(), host.into());
    map.insert(":path".into(), path.into());
    map.insert(":method".into(), "GET".into());
    map.insert("x-request-id".into(), "test-request-1".into());
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "198.51.100.20".into(),
                        port_specifier: None,
                    })),
                }),
                ..Default::default()
            }),
            destination: Some(Peer {
                principal: if tls { host.into() } else { String::new() },
                ..Default::default()
            }),
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    id: "42".into(),
                    method: "GET".into(),
                    headers: map,
                    path: path.into(),
                    host: host.into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}
