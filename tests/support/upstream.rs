//! An in-process HTTP/1.1 echo server standing in for the protected API.
//!
//! It answers every request with `200` and a JSON body describing what it
//! received — method, path (with query), every header value (repeats kept
//! apart) and the body — and records each request, so a test can assert
//! exactly which headers Envoy sent upstream and that a denied request
//! never arrived.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

/// Largest request body the echo reads.
const MAX_BODY: usize = 1024 * 1024;

/// A running echo upstream; stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Echo>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Upstream {
    /// Binds `127.0.0.1:0` and serves on a thread of its own (the tests
    /// themselves are synchronous).
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let log = received.clone();
        std::thread::Builder::new()
            .name("upstream".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("upstream runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let app = axum::Router::new().fallback(move |request: Request| {
                        let log = log.clone();
                        async move { echo(request, &log).await }
                    });
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .expect("spawn upstream thread");
        Self {
            addr,
            received,
            shutdown: Some(shutdown),
        }
    }

    /// The address Envoy's `upstream` cluster points at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Echo> {
        self.received.lock().unwrap().clone()
    }

    /// How many requests reached the upstream.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// True when some request reached the upstream with a path starting
    /// with `prefix` (after Envoy's normalisation).
    pub fn saw_path_prefix(&self, prefix: &str) -> bool {
        self.received().iter().any(|e| e.path.starts_with(prefix))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

async fn echo(request: Request, log: &Mutex<Vec<Echo>>) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let echo = Echo {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers,
        body,
    };
    let json = echo.to_json();
    log.lock().unwrap().push(echo);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-echo", "upstream")
        .body(Body::from(json.to_string()))
        .unwrap()
}

/// One request as the upstream received it.
#[derive(Clone, Debug, PartialEq)]
pub struct Echo {
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// Header values by lower-case name, repeats in arrival order.
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: String,
}

impl Echo {
    fn to_json(&self) -> Value {
        json!({
            "echo": true,
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
        })
    }

    /// Reads the echo body; panics when `value` is not one.
    pub fn from_json(value: &Value) -> Self {
        assert_eq!(value["echo"], true, "not an upstream echo: {value}");
        Self {
            method: value["method"].as_str().unwrap_or_default().to_owned(),
            path: value["path"].as_str().unwrap_or_default().to_owned(),
            headers: serde_json::from_value(value["headers"].clone()).expect("echo headers"),
            body: value["body"].as_str().unwrap_or_default().to_owned(),
        }
    }

    /// Every value of header `name` (lower-case) the upstream received.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get(name)
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// The single value of header `name`; panics when it is absent or
    /// repeated (identity headers must arrive exactly once).
    pub fn header_once(&self, name: &str) -> &str {
        match self.header_all(name).as_slice() {
            [one] => one,
            other => panic!("expected exactly one {name} upstream, got {other:?}"),
        }
    }

    /// True when no header `name` reached the upstream.
    pub fn lacks(&self, name: &str) -> bool {
        !self.headers.contains_key(name)
    }

    /// Header names starting with `prefix`.
    pub fn names_with_prefix(&self, prefix: &str) -> Vec<&str> {
        self.headers
            .keys()
            .filter(|n| n.starts_with(prefix))
            .map(String::as_str)
            .collect()
    }
}
