//! tollgate: an Envoy external-authorization server. One `Check` call
//! verifies the user, authenticates the app, refuses replays and enforces
//! the app's plan.
//!
//! The request path, in module order:
//!
//! - [`grpc`] — the ext_authz v3 adapter: `CheckRequest` → [`request`] and
//!   [`decision`] → `CheckResponse`; gRPC health and reflection;
//! - [`pipeline`] — the pure decision core `decide(snapshot, request, deps)`;
//! - [`origin`] — the trusted view of client address, scheme and host;
//! - [`authn`] — user tokens and app credentials;
//! - [`limits`] and [`store`] — plans, quotas, replay nonces, usage;
//! - [`policy`] — CRD types, policy files, compile, snapshot, sources;
//! - [`reason`] — the one table of deny reasons.
//!
//! The control plane: [`operator`] (status conditions and events of the
//! custom resources, leader-elected).
//!
//! Around it: [`server`] (binds and runs the listeners), [`admin`]
//! (health, readiness, metrics), [`tls`] (TLS and client certificates on
//! tollgate's own ports), [`telemetry`], [`shutdown`], [`config`] and
//! [`cli`] (the subcommands); [`field_value`] says which values are fit
//! for a header or a log line.

pub mod admin;
pub mod authn;
pub mod cli;
pub mod clock;
pub mod compile_context;
pub mod config;
pub mod decision;
pub mod encoding;
pub mod field_value;
pub mod grpc;
pub mod limits;
pub mod operator;
pub mod origin;
pub mod pipeline;
pub mod policy;
pub mod reason;
pub mod request;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;

/// How many cases a property test of untrusted input runs: `default` (CI's
/// short run), or `TOLLGATE_FUZZ_CASES` for a long one (`docs/security.md`,
/// "Fuzzing").
#[cfg(test)]
pub(crate) fn test_cases(default: u32) -> u32 {
    std::env::var("TOLLGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
