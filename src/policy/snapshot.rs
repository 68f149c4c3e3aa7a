//! The compiled, immutable policy snapshot the request path reads. A
//! snapshot is built by [`super::compile`] and published through
//! [`SharedSnapshot`] (an `ArcSwap`): readers take a cheap `Arc` and never
//! hold a lock; a reload swaps the whole snapshot at once.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use super::hosts::HostIndex;
use super::types::{Mode, RouteRequire, StoreErrorAction};
use crate::authn::app::{AppIndex, AppPolicy};
use crate::authn::user::UserPolicy;
use crate::limits::Plans;

/// `namespace/name` of an `ApiPolicy`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(pub String);

impl PolicyId {
    /// Builds `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self(format!("{namespace}/{name}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PolicyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything the request path needs, compiled.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub policies: HashMap<PolicyId, Arc<CompiledPolicy>>,
    pub hosts: HostIndex,
    pub apps: AppIndex,
    /// Increases with every successful compile (for logs and metrics).
    pub version: u64,
    /// Problems that did not stop the compile (host conflicts…).
    pub warnings: Vec<String>,
    /// SHA-256 of the source files this snapshot was compiled from, so a
    /// file watcher recompiles only when they change.
    pub source_digest: Option<[u8; 32]>,
    /// Every `response.upstreamHeaders` name of every policy, sorted: a
    /// request no policy vouches for (`--default-decision allow`) reaches
    /// upstreams that may trust any of them, so none passes.
    pub upstream_header_names: Vec<String>,
}

impl Snapshot {
    /// The policy named `namespace/name`.
    pub fn policy(&self, id: &str) -> Option<&Arc<CompiledPolicy>> {
        self.policies.get(&PolicyId(id.to_owned()))
    }
}

/// A shared, atomically swapped snapshot.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// One compiled `ApiPolicy`.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub id: PolicyId,
    pub mode: Mode,
    pub transport: Transport,
    pub user: Option<UserPolicy>,
    pub app: Option<AppPolicy>,
    pub replay: ReplayPolicy,
    pub plans: Plans,
    pub routes: Vec<Route>,
    pub response: ResponsePolicy,
    pub on_store_error: StoreErrorAction,
    /// `spec.leases`.
    pub leases: crate::policy::types::LeaseMode,
}

/// Compiled transport checks.
#[derive(Clone, Debug, Default)]
pub struct Transport {
    pub require_https: bool,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

/// Replay settings.
#[derive(Clone, Debug)]
pub struct ReplayPolicy {
    pub window: std::time::Duration,
    pub on_store_error: StoreErrorAction,
}

/// A compiled route.
#[derive(Clone, Debug, Default)]
pub struct Route {
    pub name: String,
    pub path: PathMatch,
    /// Upper-case methods; empty matches any.
    pub methods: Vec<String>,
    pub cost: u64,
    pub public: bool,
    pub deny: bool,
    pub require: Option<RouteRequire>,
}

/// How a route matches the path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PathMatch {
    #[default]
    Any,
    Exact(String),
    /// Matches the prefix itself and anything below it on a `/` boundary.
    Prefix(String),
}

impl Route {
    /// True when this route matches `method` and `path` (no query string).
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                path == p
                    || (path.starts_with(p.as_str())
                        && (p.ends_with('/') || path.as_bytes().get(p.len()) == Some(&b'/')))
            }
        };
        path_ok && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
    }
}

/// How responses are shaped.
#[derive(Clone, Debug, Default)]
pub struct ResponsePolicy {
    /// Header name (lower-case) → template.
    pub upstream_headers: Vec<(String, super::template::Template)>,
    pub remove_credentials: bool,
    pub rate_limit_headers: bool,
    pub disclose_reasons: bool,
    /// Whether allows carry dynamic metadata (`response.dynamicMetadata`).
    pub dynamic_metadata: crate::policy::types::DynamicMetadata,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: PathMatch, methods: &[&str]) -> Route {
        Route {
            path,
            methods: methods.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        let r = route(PathMatch::Prefix("/v1/search".into()), &[]);
        assert!(r.matches("GET", "/v1/search"));
        assert!(r.matches("GET", "/v1/search/x"));
        assert!(!r.matches("GET", "/v1/searchx"));
        let r = route(PathMatch::Prefix("/v1/".into()), &[]);
        assert!(r.matches("GET", "/v1/x"));
    }

    #[test]
    fn methods_and_exact_paths() {
        let r = route(PathMatch::Exact("/healthz".into()), &["GET"]);
        assert!(r.matches("GET", "/healthz"));
        assert!(!r.matches("POST", "/healthz"));
        assert!(!r.matches("GET", "/healthz/"));
    }
}
