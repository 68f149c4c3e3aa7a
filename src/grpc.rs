//! The Envoy ext_authz v3 adapter: the only module that knows Envoy's
//! protos.
//!
//! - [`pb`] — the generated messages and stubs (`proto/`);
//! - [`request`] — `CheckRequest` → [`crate::request::RequestContext`],
//!   bounded, never failing (problems become defects → `request_malformed`);
//! - [`response`] — [`crate::decision::Decision`] → `CheckResponse`;
//! - [`service`] — the `Authorization/Check` service: snapshot, pipeline,
//!   audit log, metrics;
//! - [`codec`] — decodes without failing the call, so `Check` never answers
//!   bad input with a gRPC error.
//!
//! gRPC health and reflection are mounted by [`crate::server`].

pub mod codec;
pub mod pb;
pub mod request;
pub mod response;
pub mod service;

pub use service::{CheckServer, CheckService};
