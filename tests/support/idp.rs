//! A local OpenID Provider for the authentication tests: an HTTP/1.1 server
//! on `127.0.0.1:0` serving `/.well-known/openid-configuration` and
//! `/jwks.json` for a set of signing keys that a test can rotate, and that
//! can be taken down (connections closed without an answer) to simulate an
//! IdP outage.
//!
//! Also the small kit the authn tests share to decide offline, without
//! Envoy: [`compile`], [`request`], [`decide`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::json;
use tollgate::authn::mint::{self, SigningKey};
use tollgate::decision::Decision;
use tollgate::policy::snapshot::Snapshot;
use tollgate::request::{Headers, RequestContext};

/// A running test IdP. Stops when dropped.
pub struct Idp {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct State {
    keys: Vec<SigningKey>,
    down: bool,
    cache_control: Option<String>,
    jwks_requests: usize,
    discovery_requests: usize,
}

impl Idp {
    /// Starts an IdP publishing `keys`.
    pub fn start(keys: Vec<SigningKey>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test IdP");
        let addr = listener.local_addr().expect("IdP address");
        let state = Arc::new(Mutex::new(State {
            keys,
            down: false,
            cache_control: None,
            jwks_requests: 0,
            discovery_requests: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve(stream, addr, &state);
                    }
                }
            })
        };
        Self {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// The issuer identifier (`http://127.0.0.1:PORT`).
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The JWKS URL.
    pub fn jwks_uri(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// Publishes `keys` instead of the current ones.
    pub fn rotate(&self, keys: Vec<SigningKey>) {
        self.lock().keys = keys;
    }

    /// Takes the IdP down (every connection is closed unanswered) or back up.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// The `Cache-Control` header sent with the JWKS.
    pub fn set_cache_control(&self, value: Option<&str>) {
        self.lock().cache_control = value.map(str::to_owned);
    }

    /// JWKS requests answered or refused so far.
    pub fn jwks_requests(&self) -> usize {
        self.lock().jwks_requests
    }

    /// Discovery requests answered or refused so far.
    pub fn discovery_requests(&self) -> usize {
        self.lock().discovery_requests
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: TcpStream, addr: SocketAddr, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut request = Vec::new();
    let mut buf = [0u8; 2048];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    match path.as_str() {
        "/jwks.json" => state.jwks_requests += 1,
        "/.well-known/openid-configuration" => state.discovery_requests += 1,
        _ => {}
    }
    if state.down {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    let issuer = format!("http://{addr}");
    let (status, body) = match path.as_str() {
        "/.well-known/openid-configuration" => (
            "200 OK",
            json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks.json")}),
        ),
        "/jwks.json" => ("200 OK", mint::jwks(&state.keys)),
        _ => ("404 Not Found", json!({"error": "not found"})),
    };
    let body = body.to_string();
    let cache = state
        .cache_control
        .as_ref()
        .map(|v| format!("cache-control: {v}\r\n"))
        .unwrap_or_default();
    drop(state);
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{cache}connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

/// The RSA test keys shipped in `tests/fixtures/authn/` (generating RSA
/// keys in a debug build takes seconds).
pub fn rsa_key(which: char, alg: jsonwebtoken::Algorithm, kid: &str) -> SigningKey {
    let path = super::repo_path(&format!("tests/fixtures/authn/rsa-2048-{which}.pem"));
    let pem = std::fs::read_to_string(&path).expect("RSA fixture");
    SigningKey::from_pem(alg, kid, &pem).expect("RSA fixture key")
}

/// Seconds since the epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Compiles policy YAML into a snapshot, or the compile errors as text.
pub fn try_compile(yaml: &str) -> Result<Snapshot, String> {
    let docs = tollgate::policy::document::parse_documents(Path::new("test.yaml"), yaml)
        .map_err(|e| format!("{e:?}"))?;
    tollgate::policy::compile::compile(&docs, 1).map_err(|e| format!("{e:?}"))
}

/// Compiles policy YAML, panicking with the errors.
pub fn compile(yaml: &str) -> Snapshot {
    try_compile(yaml).unwrap_or_else(|e| panic!("policy does not compile: {e}"))
}

/// An HTTPS `GET` request from loopback for `host` and `path`.
pub fn request(host: &str, path: &str, headers: &[(&str, &str)]) -> RequestContext {
    RequestContext {
        id: "test".into(),
        method: "GET".into(),
        scheme: "https".into(),
        authority: host.into(),
        path: path.into(),
        headers: headers.iter().copied().collect::<Headers>(),
        peer_ip: Some("127.0.0.1".parse().expect("ip")),
        tls: true,
        ..Default::default()
    }
}

/// Decides on `request` with an in-memory store and the system clock.
pub async fn decide(snapshot: &Snapshot, request: &RequestContext) -> Decision {
    let deps = tollgate::pipeline::Deps {
        store: Arc::new(tollgate::store::MemoryStore::new()),
        clock: Arc::new(tollgate::clock::SystemClock),
        settings: Default::default(),
    };
    tollgate::pipeline::decide(snapshot, request, &deps).await
}

/// The reason code of a denied decision (`"allow"` when allowed).
pub fn outcome(decision: &Decision) -> String {
    match decision.denial() {
        Some(deny) => deny.reason.code().to_owned(),
        None => "allow".to_owned(),
    }
}
