//! Upstream + tollgate + Envoy wired together: the unit of an end-to-end
//! scenario.
//!
//! ```ignore
//! let stack = Stack::start(POLICY);
//! let response = stack.get("/v1/bikes").host("api.example").send();
//! assert_eq!(response.status, 200);
//! assert_eq!(response.upstream().header_once("x-tollgate-plan"), "free");
//! ```

use super::client::Request;
use super::envoy::{Envoy, EnvoyConfig, EnvoyTracing, EscapedSlashes, Route, UpstreamTls};
use super::tollgate::Tollgate;
use super::upstream::Upstream;

/// A running stack. Fields drop in order: Envoy first, then tollgate,
/// then the upstream.
pub struct Stack {
    pub envoy: Envoy,
    pub tollgate: Tollgate,
    pub upstream: Upstream,
}

impl Stack {
    /// The default stack: plain-HTTP listener only, no extra routes.
    pub fn start(policy_yaml: &str) -> Self {
        Self::builder(policy_yaml).start()
    }

    /// A stack to configure before starting.
    pub fn builder(policy_yaml: &str) -> StackBuilder {
        StackBuilder {
            policy: policy_yaml.to_owned(),
            tollgate_args: Vec::new(),
            tollgate_env: Vec::new(),
            routes: Vec::new(),
            tls: false,
            escaped_slashes: EscapedSlashes::Reject,
            request_body_bytes: None,
            tracing: None,
            tollgate_tls: None,
        }
    }

    /// A `GET` through Envoy's plain-HTTP listener (`.https()` switches to
    /// TLS when the stack has it).
    pub fn get(&self, path: &str) -> Request {
        self.request("GET", path)
    }

    /// A `method` request through Envoy.
    pub fn request(&self, method: &str, path: &str) -> Request {
        self.envoy.request(method, path)
    }
}

/// Options of a [`Stack`].
pub struct StackBuilder {
    policy: String,
    tollgate_args: Vec<String>,
    tollgate_env: Vec<(String, String)>,
    routes: Vec<Route>,
    tls: bool,
    escaped_slashes: EscapedSlashes,
    request_body_bytes: Option<u32>,
    tracing: Option<EnvoyTracing>,
    tollgate_tls: Option<UpstreamTls>,
}

impl StackBuilder {
    /// Extra `tollgate serve` arguments.
    pub fn tollgate_args(mut self, args: &[&str]) -> Self {
        self.tollgate_args
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// An environment variable for tollgate (e.g. `OTEL_BSP_SCHEDULE_DELAY`).
    pub fn tollgate_env(mut self, name: &str, value: &str) -> Self {
        self.tollgate_env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A route before the catch-all (e.g. bound to a policy by context
    /// extension).
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Adds Envoy's TLS listener (certificate made at test time).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Envoy's handling of `%2F` / `%5C` in paths.
    pub fn escaped_slashes(mut self, action: EscapedSlashes) -> Self {
        self.escaped_slashes = action;
        self
    }

    /// Let Envoy send up to `bytes` of the request body to tollgate.
    pub fn request_body(mut self, bytes: u32) -> Self {
        self.request_body_bytes = Some(bytes);
        self
    }

    /// Turns on Envoy's OpenTelemetry tracer, exporting to `collector`.
    pub fn envoy_tracing(mut self, collector: std::net::SocketAddr, sampling_percent: f64) -> Self {
        self.tracing = Some(EnvoyTracing {
            collector,
            sampling_percent,
        });
        self
    }

    /// Envoy reaches tollgate over TLS (give tollgate its TLS flags with
    /// [`StackBuilder::tollgate_args`]).
    pub fn tollgate_tls(mut self, tls: UpstreamTls) -> Self {
        self.tollgate_tls = Some(tls);
        self
    }

    /// Starts upstream, tollgate, then Envoy (which needs both addresses).
    pub fn start(self) -> Stack {
        let args: Vec<&str> = self.tollgate_args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .tollgate_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let tollgate = Tollgate::start_env(&self.policy, &args, &env);
        self.start_around(tollgate)
    }

    /// Starts upstream and Envoy in front of an already running tollgate
    /// (e.g. one serving a Kubernetes API server's resources); the
    /// builder's policy and tollgate arguments are not used.
    pub fn start_around(self, tollgate: Tollgate) -> Stack {
        let upstream = Upstream::start();
        let mut config = EnvoyConfig::new(tollgate.grpc_addr(), upstream.addr());
        config.routes = self.routes;
        config.tls = self.tls;
        config.escaped_slashes = self.escaped_slashes;
        config.request_body_bytes = self.request_body_bytes;
        config.tracing = self.tracing;
        config.tollgate_tls = self.tollgate_tls;
        let envoy = Envoy::start(&config);
        Stack {
            envoy,
            tollgate,
            upstream,
        }
    }
}
