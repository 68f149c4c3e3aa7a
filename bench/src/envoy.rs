//! One Envoy (one worker: `--concurrency 1`) with a listener per scenario,
//! so every scenario runs through the same process and only the filter
//! chain differs. Every route answers with a `direct_response` (no
//! upstream), so the figures hold the cost of authorization alone.
//!
//! The HTTP connection manager carries the settings of tollgate's Envoy
//! examples (path normalisation, underscore rejection, remote address);
//! ext_authz is configured as `docs/envoy.md` recommends (`envoy_grpc`,
//! V3, fail closed, raw headers); `jwt_authn` verifies the user token
//! (ES256, inline JWKS) and the app token (HS256, inline `oct` JWKS), both
//! required, with or without its verified-JWT cache.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::fixtures::{self, Fixture};
use crate::procs::Proc;

/// What a listener runs in front of its direct response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Nothing: the ceiling.
    None,
    /// ext_authz calling the cluster of this name.
    ExtAuthz(&'static str),
    /// jwt_authn, with or without `jwt_cache_config`.
    JwtAuthn { cache: bool },
}

/// A listener of the benchmark Envoy.
#[derive(Clone, Debug)]
pub struct Listener {
    pub name: &'static str,
    pub filter: Filter,
}

/// An authorization server's cluster.
pub struct Cluster {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// The cluster's `transport_socket` (TLS to the server), if any.
    pub tls: Option<Value>,
}

impl Cluster {
    /// A plaintext cluster.
    pub fn plain(name: &'static str, addr: SocketAddr) -> Self {
        Self {
            name,
            addr,
            tls: None,
        }
    }
}

/// Renders the bootstrap.
pub fn bootstrap(listeners: &[Listener], clusters: &[Cluster], fixture: &Fixture) -> Value {
    json!({
        "admin": { "address": socket_address("127.0.0.1", 0) },
        "static_resources": {
            "listeners": listeners.iter().map(|l| listener(l, fixture)).collect::<Vec<_>>(),
            "clusters": clusters.iter().map(grpc_cluster).collect::<Vec<_>>(),
        }
    })
}

fn socket_address(ip: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": ip, "port_value": port } })
}

fn grpc_cluster(cluster: &Cluster) -> Value {
    let (name, addr) = (cluster.name, cluster.addr);
    let mut value = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": {
                "address": socket_address(&addr.ip().to_string(), addr.port())
            }}]}]
        }
    });
    if let Some(tls) = &cluster.tls {
        value["transport_socket"] = tls.clone();
    }
    value
}

fn listener(listener: &Listener, fixture: &Fixture) -> Value {
    let mut filters = Vec::new();
    match listener.filter {
        Filter::None => {}
        Filter::ExtAuthz(cluster) => filters.push(json!({
            "name": "envoy.filters.http.ext_authz",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                "grpc_service": { "envoy_grpc": { "cluster_name": cluster }, "timeout": "1s" },
                "transport_api_version": "V3",
                "failure_mode_allow": false,
                "status_on_error": { "code": 503 },
                "include_peer_certificate": true,
                "encode_raw_headers": true,
            }
        })),
        Filter::JwtAuthn { cache } => filters.push(jwt_authn(fixture, cache)),
    }
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
    }));
    let hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": listener.name,
        "codec_type": "AUTO",
        "use_remote_address": true,
        "normalize_path": true,
        "merge_slashes": true,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "common_http_protocol_options": { "headers_with_underscores_action": "REJECT_REQUEST" },
        "route_config": {
            "virtual_hosts": [{
                "name": "all",
                "domains": ["*"],
                "routes": [{
                    "match": { "prefix": "/" },
                    "direct_response": { "status": 200, "body": { "inline_string": "ok\n" } }
                }]
            }]
        },
        "http_filters": filters,
    });
    json!({
        "name": listener.name,
        "address": socket_address("127.0.0.1", 0),
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm
        }]}],
    })
}

/// Both tokens required: the user token from `Authorization: Bearer`, the
/// app token from its header.
fn jwt_authn(fixture: &Fixture, cache: bool) -> Value {
    let mut user = json!({
        "issuer": fixtures::ISSUER,
        "audiences": [fixtures::AUDIENCE],
        "local_jwks": { "inline_string": fixture.user_jwks().to_string() },
        "forward": true,
    });
    let mut app = json!({
        "local_jwks": { "inline_string": fixture.app_jwks().to_string() },
        "from_headers": [{ "name": fixtures::APP_TOKEN_HEADER }],
        "forward": true,
    });
    if cache {
        for provider in [&mut user, &mut app] {
            provider["jwt_cache_config"] = json!({ "jwt_cache_size": 1000 });
        }
    }
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": { "user": user, "app": app },
            "rules": [{
                "match": { "prefix": "/" },
                "requires": { "requires_all": { "requirements": [
                    { "provider_name": "user" },
                    { "provider_name": "app" }
                ]}}
            }]
        }
    })
}

/// A running Envoy and its listeners' addresses.
pub struct Envoy {
    pub proc: Proc,
    pub listeners: Vec<(String, SocketAddr)>,
    _dir: tempfile::TempDir,
}

impl Envoy {
    pub fn start(binary: &Path, bootstrap: &Value) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("bench-envoy-").tempdir()?;
        let config = dir.path().join("envoy.json");
        std::fs::write(&config, serde_json::to_vec_pretty(bootstrap)?)?;
        let admin_path = dir.path().join("admin-address");
        let log = std::fs::File::create(dir.path().join("envoy.log"))?;
        let mut proc = Proc::spawn(
            "envoy",
            Command::new(binary)
                .arg("--config-path")
                .arg(&config)
                .arg("--admin-address-path")
                .arg(&admin_path)
                .args(["--disable-hot-restart", "--concurrency", "1"])
                .args(["--log-level", "warning"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let admin = loop {
            if let Err(e) = proc.check_running() {
                let log = std::fs::read_to_string(dir.path().join("envoy.log")).unwrap_or_default();
                bail!("{e}; Envoy log:\n{log}");
            }
            let admin: Option<SocketAddr> = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|t| t.trim().parse().ok());
            if let Some(admin) = admin
                && let Ok((200, body)) = http_get(admin, "/ready")
                && body.trim() == "LIVE"
            {
                break admin;
            }
            if Instant::now() > deadline {
                bail!("Envoy was not ready within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (_, body) = http_get(admin, "/listeners?format=json")?;
        let parsed: Value = serde_json::from_str(&body).context("Envoy /listeners")?;
        let mut listeners = Vec::new();
        for status in parsed["listener_statuses"].as_array().into_iter().flatten() {
            let name = status["name"].as_str().unwrap_or_default().to_owned();
            let address = &status["local_address"]["socket_address"];
            let addr = format!(
                "{}:{}",
                address["address"].as_str().unwrap_or_default(),
                address["port_value"].as_u64().unwrap_or_default()
            );
            listeners.push((name, addr.parse().context("listener address")?));
        }
        Ok(Self {
            proc,
            listeners,
            _dir: dir,
        })
    }

    /// The address of listener `name`.
    pub fn listener(&self, name: &str) -> anyhow::Result<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .with_context(|| format!("Envoy has no listener {name}"))
    }
}

/// A blocking `GET` with `Connection: close`: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

/// The payload of a chunked body (RFC 9112 §7.1), extensions ignored.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size_line, rest)) = body.split_once("\r\n") {
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
