//! TLS and client certificates on tollgate's own ports, with real parts:
//! the real Envoy calling tollgate over mutual TLS (decisions as before),
//! Envoys without an acceptable certificate failing closed while tollgate
//! counts the refused handshake, a certificate rotation under load that
//! fails no check, a bad new pair that keeps the old one serving, bad
//! files at start-up, and the admin port with TLS beside a metrics
//! listener that requires a client certificate. Certificates are made per
//! test with rcgen (`support::tls`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::envoy::{self, UpstreamTls};
use support::tls::{Identity, TestPki, serial_of, served_certificate};
use support::tollgate::log_field;
use support::{Envoy, EnvoyConfig, Request, Stack, Tollgate, Upstream, wait_for};
use tempfile::TempDir;

/// Bounds the waits for counters, log lines and reloads (not a speed
/// assertion: the watcher polls every 500 ms).
const LIMIT: Duration = Duration::from_secs(20);

/// The SPIFFE ID of the Envoy allowed to call tollgate.
const ENVOY_ID: &str = "spiffe://tollgate.test/ns/edge/sa/envoy";

const POLICY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: open, namespace: e2e }
spec:
  hosts: [open.example]
  transport: { requireHttps: false }
  routes:
    - { name: admin, match: { pathPrefix: /admin }, deny: true }
  response:
    upstreamHeaders:
      x-policy: "{policy}"
"#;

/// tollgate's TLS files and the Envoy client certificates of a test.
struct Pki {
    dir: TempDir,
    /// The CA of tollgate's certificate and of the allowed clients.
    pki: TestPki,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("tls-").tempdir().unwrap();
        let pki = TestPki::generate();
        let (cert, key) = pki.server.write(dir.path(), "tollgate");
        let ca = pki.write_ca(dir.path(), "ca.crt");
        Self {
            dir,
            pki,
            cert,
            key,
            ca,
        }
    }

    /// `tollgate serve` flags: TLS, client CA, and the allowed SPIFFE ID.
    fn tollgate_args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        vec![
            "--grpc-tls-cert".into(),
            path(&self.cert),
            "--grpc-tls-key".into(),
            path(&self.key),
            "--grpc-client-ca".into(),
            path(&self.ca),
            "--grpc-client-spiffe-id".into(),
            ENVOY_ID.into(),
        ]
    }

    /// Writes `identity` as Envoy's client certificate `stem`.
    fn client_files(&self, identity: &Identity, stem: &str) -> (PathBuf, PathBuf) {
        identity.write(self.dir.path(), stem)
    }

    /// Envoy's TLS to tollgate, presenting `client` (or nothing).
    fn upstream(&self, client: Option<(PathBuf, PathBuf)>) -> UpstreamTls {
        UpstreamTls {
            ca: self.ca.clone(),
            client,
            server_name: "localhost".into(),
        }
    }
}

fn args(owned: &[String]) -> Vec<&str> {
    owned.iter().map(String::as_str).collect()
}

/// The number of handshakes on `listener` that ended with `result`.
fn handshakes(tollgate: &Tollgate, listener: &str, result: &str) -> f64 {
    tollgate.metric(
        "tollgate_tls_handshakes_total",
        &[("listener", listener), ("result", result)],
    )
}

/// Waits (bounded) until tollgate has counted a `result` handshake.
fn wait_for_handshake(tollgate: &Tollgate, listener: &str, result: &str) {
    wait_for(
        &format!("tollgate to count a {result} handshake on {listener}"),
        LIMIT,
        || (handshakes(tollgate, listener, result) >= 1.0).then_some(()),
    );
}

#[test]
fn envoy_calls_tollgate_over_mutual_tls_and_decisions_are_unchanged() {
    let pki = Pki::new();
    let envoy_cert = pki.client_files(&pki.pki.client("envoy", Some(ENVOY_ID)), "envoy");
    let stack = Stack::builder(POLICY)
        .tollgate_args(&args(&pki.tollgate_args()))
        .tollgate_tls(pki.upstream(Some(envoy_cert)))
        .start();

    let allowed = stack.get("/v1/bikes").host("open.example").send();
    assert_eq!(allowed.upstream().header_once("x-policy"), "e2e/open");
    let denied = stack.get("/admin/fleet").host("open.example").send();
    assert_eq!((denied.status, denied.reason()), (403, Some("rule_denied")));
    let unknown = stack.get("/v1/bikes").host("other.example").send();
    assert_eq!((unknown.status, unknown.reason()), (403, Some("no_policy")));
    assert_eq!(stack.upstream.count(), 1);

    assert!(handshakes(&stack.tollgate, "grpc", "accepted") >= 1.0);
    for refused in [
        "no_client_certificate",
        "certificate_rejected",
        "identity_not_allowed",
        "not_tls",
    ] {
        assert_eq!(
            handshakes(&stack.tollgate, "grpc", refused),
            0.0,
            "{refused}"
        );
    }
    let listening = stack.tollgate.wait_for_log("listening", LIMIT);
    assert_eq!(log_field(&listening, "grpc_tls").unwrap(), "mutual");
    let loaded = stack.tollgate.wait_for_log("TLS certificate loaded", LIMIT);
    assert_eq!(
        log_field(&loaded, "serial").unwrap().as_str().unwrap(),
        serial_of(&pki.pki.server.cert_der)
    );
}

#[test]
fn envoys_without_an_acceptable_certificate_fail_closed_and_are_counted() {
    let pki = Pki::new();
    let upstream = Upstream::start();
    let tollgate = Tollgate::start_with(POLICY, &args(&pki.tollgate_args()));
    let stranger = TestPki::generate();
    let foreign = pki.client_files(&stranger.client("envoy", Some(ENVOY_ID)), "foreign");
    let other_id = pki.client_files(
        &pki.pki
            .client("shop", Some("spiffe://tollgate.test/ns/shop/sa/api")),
        "other",
    );
    let cases = [
        (
            "no client certificate",
            Some(pki.upstream(None)),
            "no_client_certificate",
        ),
        (
            "a certificate from another CA",
            Some(pki.upstream(Some(foreign))),
            "certificate_rejected",
        ),
        (
            "an identity not allowed",
            Some(pki.upstream(Some(other_id))),
            "identity_not_allowed",
        ),
        ("plaintext", None, "not_tls"),
    ];
    for (case, upstream_tls, result) in cases {
        let before = handshakes(&tollgate, "grpc", result);
        let mut config = EnvoyConfig::new(tollgate.grpc_addr(), upstream.addr());
        config.tollgate_tls = upstream_tls;
        let envoy = Envoy::start(&config);
        let response = envoy.get("/v1/bikes").host("open.example").send();
        // status_on_error: 503, failure_mode_allow: false.
        assert_eq!(response.status, 503, "{case}: Envoy fails closed");
        assert_eq!(response.reason(), None, "{case}: no decision was made");
        wait_for(
            &format!("{case}: a {result} handshake counted"),
            LIMIT,
            || (handshakes(&tollgate, "grpc", result) > before).then_some(()),
        );
    }
    assert_eq!(upstream.count(), 0, "nothing reached the API");
    assert_eq!(
        tollgate.metric("tollgate_checks_total", &[]),
        0.0,
        "no request reached Check"
    );
    let warning = tollgate.wait_for_log("TLS handshake refused", LIMIT);
    assert_eq!(log_field(&warning, "listener").unwrap(), "grpc");
}

#[test]
fn a_plaintext_client_on_the_tls_port_is_never_served() {
    let pki = Pki::new();
    let tollgate = Tollgate::start_with(POLICY, &args(&pki.tollgate_args()));
    // An HTTP/2 client without TLS: the connection preface and an empty
    // SETTINGS frame.
    let mut tcp = TcpStream::connect(tollgate.grpc_addr()).unwrap();
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    // At most a TLS alert record (content type 21), never an HTTP/2 frame.
    assert!(
        answer.is_empty() || answer[0] == 21,
        "a plaintext client got an answer: {answer:02x?}"
    );
    wait_for_handshake(&tollgate, "grpc", "not_tls");
    // The same port serves a client with an acceptable certificate.
    let envoy = pki.pki.client("envoy", Some(ENVOY_ID));
    let config = pki.pki.client_config_alpn(Some(&envoy), &["h2"]);
    served_certificate(tollgate.grpc_addr(), config).expect("mTLS client served");
}

/// A Kubernetes Secret volume: `tls.crt` → `..data/tls.crt`, `..data` →
/// a version directory, swapped by renaming a new `..data` link over it.
struct SecretMount {
    dir: TempDir,
    versions: usize,
}

impl SecretMount {
    fn new(identity: &Identity) -> Self {
        let mut mount = Self {
            dir: tempfile::Builder::new()
                .prefix("secret-")
                .tempdir()
                .unwrap(),
            versions: 0,
        };
        mount.publish(identity);
        for file in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{file}"), mount.dir.path().join(file))
                .unwrap();
        }
        mount
    }

    /// Writes a new version and swaps `..data` to it atomically, as the
    /// kubelet does when cert-manager renews the Secret.
    fn publish(&mut self, identity: &Identity) {
        self.versions += 1;
        let version = format!("..v{}", self.versions);
        let dir = self.dir.path().join(&version);
        std::fs::create_dir(&dir).unwrap();
        identity.write(&dir, "tls");
        let staging = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &staging).unwrap();
        std::fs::rename(&staging, self.dir.path().join("..data")).unwrap();
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }
}

#[test]
fn a_certificate_rotated_under_load_fails_no_check_and_the_new_one_is_served() {
    let pki = Pki::new();
    let mut mount = SecretMount::new(&pki.pki.server_with_serial(0x0100));
    let tollgate_args = [
        "--grpc-tls-cert".to_owned(),
        mount.cert().display().to_string(),
        "--grpc-tls-key".into(),
        mount.key().display().to_string(),
        "--grpc-client-ca".into(),
        pki.ca.display().to_string(),
    ];
    let envoy_cert = pki.client_files(&pki.pki.client("envoy", Some(ENVOY_ID)), "envoy");
    let stack = Arc::new(
        Stack::builder(POLICY)
            .tollgate_args(&args(&tollgate_args))
            .tollgate_tls(pki.upstream(Some(envoy_cert)))
            .start(),
    );
    let probe_identity = pki.pki.client("probe", Some(ENVOY_ID));
    let probe = pki.pki.client_config_alpn(Some(&probe_identity), &["h2"]);
    let old = served_certificate(stack.tollgate.grpc_addr(), probe.clone()).unwrap();
    assert_eq!(serial_of(&old), "0100");

    // Checks through Envoy (its HTTP/2 connection to tollgate stays open
    // across the rotation) and fresh handshakes straight to tollgate (each
    // racing the swap), until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (stack, stop, sent) = (stack.clone(), stop.clone(), sent.clone());
        workers.push(std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let response = stack.get("/v1/bikes").host("open.example").send();
                if response.status != 200 {
                    failures.push(format!("{} {:?}", response.status, response.reason()));
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    let handshaking = {
        let (addr, stop, probe) = (stack.tollgate.grpc_addr(), stop.clone(), probe.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut serials = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match served_certificate(addr, probe.clone()) {
                    Ok(cert) => serials.push(serial_of(&cert)),
                    Err(error) => failures.push(error),
                }
            }
            (failures, serials)
        })
    };
    let sent_at_least = |n: usize| {
        wait_for(&format!("{n} checks through Envoy"), LIMIT, || {
            (sent.load(Ordering::Relaxed) >= n).then_some(())
        })
    };
    sent_at_least(30);

    let next = pki.pki.server_with_serial(0x0200);
    mount.publish(&next);
    let reloaded = stack
        .tollgate
        .wait_for_log("TLS certificate reloaded", LIMIT);
    assert_eq!(log_field(&reloaded, "serial").unwrap(), "0200");
    let after_rotation = sent.load(Ordering::Relaxed);
    sent_at_least(after_rotation + 30);
    stop.store(true, Ordering::Relaxed);

    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|worker| worker.join().unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "checks failed during the rotation: {failures:?}"
    );
    let (handshake_failures, serials) = handshaking.join().unwrap();
    assert!(
        handshake_failures.is_empty(),
        "handshakes failed during the rotation: {handshake_failures:?}"
    );
    assert!(
        serials.iter().all(|s| s == "0100" || s == "0200"),
        "{serials:?}"
    );
    let new = served_certificate(stack.tollgate.grpc_addr(), probe).unwrap();
    assert_eq!(serial_of(&new), serial_of(&next.cert_der));
    assert_eq!(
        stack
            .tollgate
            .metric("tollgate_tls_reloads_total", &[("result", "success")]),
        1.0
    );
    assert_eq!(
        stack
            .tollgate
            .metric("tollgate_tls_reloads_total", &[("result", "error")]),
        0.0
    );
    // A new Envoy connects with the new certificate too.
    let mut config = EnvoyConfig::new(stack.tollgate.grpc_addr(), stack.upstream.addr());
    config.tollgate_tls = Some(pki.upstream(Some(
        pki.client_files(&pki.pki.client("envoy-2", Some(ENVOY_ID)), "envoy-2"),
    )));
    let fresh = Envoy::start(&config);
    let response = fresh.get("/v1/bikes").host("open.example").send();
    assert_eq!(response.upstream().header_once("x-policy"), "e2e/open");
}

#[test]
fn a_bad_new_pair_keeps_the_old_certificate_serving() {
    let pki = Pki::new();
    let tollgate = Tollgate::start_with(POLICY, &args(&pki.tollgate_args()));
    let client = pki.pki.client("envoy", Some(ENVOY_ID));
    let probe = pki.pki.client_config_alpn(Some(&client), &["h2"]);
    let serving = serial_of(&pki.pki.server.cert_der);

    // The key of another certificate replaces tollgate's.
    let stray = pki.pki.server_with_serial(0x0300);
    std::fs::write(&pki.key, &stray.key_pem).unwrap();
    let failed = tollgate.wait_for_log(
        "TLS reload failed; the last good certificate keeps serving",
        LIMIT,
    );
    let error = log_field(&failed, "error")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("does not match the certificate"), "{error}");
    assert!(error.contains(&pki.key.display().to_string()), "{error}");
    assert!(
        !error.contains("PRIVATE KEY"),
        "key material in the log: {error}"
    );
    assert!(
        !tollgate
            .output()
            .contains(stray.key_pem.lines().nth(1).unwrap()),
        "key material in the output"
    );
    assert_eq!(
        tollgate.metric(
            "tollgate_tls_reloads_total",
            &[("listener", "grpc"), ("result", "error")]
        ),
        1.0
    );
    let still = served_certificate(tollgate.grpc_addr(), probe.clone()).unwrap();
    assert_eq!(serial_of(&still), serving, "the old pair keeps serving");

    // The matching certificate completes the pair.
    std::fs::write(&pki.cert, &stray.cert_pem).unwrap();
    wait_for("the new pair to be served", LIMIT, || {
        let served = served_certificate(tollgate.grpc_addr(), probe.clone()).ok()?;
        (serial_of(&served) == "0300").then_some(())
    });
}

#[test]
fn bad_files_at_start_up_exit_with_the_path_and_the_reason() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let missing = dir.join("missing.crt");
    let mismatched = dir.join("other.key");
    std::fs::write(&mismatched, TestPki::generate().server.key_pem).unwrap();
    let empty_ca = dir.join("empty-ca.crt");
    std::fs::write(&empty_ca, "").unwrap();
    let garbage_key = dir.join("garbage.key");
    std::fs::write(
        &garbage_key,
        "-----BEGIN PRIVATE KEY-----\nnot-base64!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let path = |p: &Path| p.display().to_string();
    let cases: [(Vec<String>, Vec<String>); 4] = [
        (
            vec![
                "--grpc-tls-cert".into(),
                path(&missing),
                "--grpc-tls-key".into(),
                path(&pki.key),
            ],
            vec![path(&missing), "No such file or directory".into()],
        ),
        (
            vec![
                "--grpc-tls-cert".into(),
                path(&pki.cert),
                "--grpc-tls-key".into(),
                path(&mismatched),
            ],
            vec![format!(
                "the private key {} does not match the certificate {}",
                path(&mismatched),
                path(&pki.cert)
            )],
        ),
        (
            vec![
                "--grpc-tls-cert".into(),
                path(&pki.cert),
                "--grpc-tls-key".into(),
                path(&pki.key),
                "--grpc-client-ca".into(),
                path(&empty_ca),
            ],
            vec![format!(
                "the client CA file {} holds no PEM certificate",
                path(&empty_ca)
            )],
        ),
        (
            vec![
                "--admin-tls-cert".into(),
                path(&pki.cert),
                "--admin-tls-key".into(),
                path(&garbage_key),
            ],
            vec![
                "admin listener".into(),
                format!(
                    "the private key {} holds no PEM private key",
                    path(&garbage_key)
                ),
            ],
        ),
    ];
    for (flags, expected) in cases {
        let failure = match Tollgate::try_start(POLICY, &args(&flags)) {
            Ok(_) => panic!("tollgate started with {flags:?}"),
            Err(failure) => failure,
        };
        assert_eq!(failure.status.code(), Some(1), "{flags:?}");
        for text in expected {
            assert!(
                failure.output.contains(&text),
                "{text:?} not in:\n{}",
                failure.output
            );
        }
        assert!(!failure.output.contains("listening"), "never served");
    }
}

#[test]
fn probes_need_no_certificate_while_metrics_require_one() {
    let pki = Pki::new();
    let scraper = pki.pki.client(
        "prometheus",
        Some("spiffe://tollgate.test/ns/monitoring/sa/prometheus"),
    );
    let path = |p: &Path| p.display().to_string();
    let flags = [
        "--admin-tls-cert".to_owned(),
        path(&pki.cert),
        "--admin-tls-key".into(),
        path(&pki.key),
        "--metrics-addr".into(),
        "127.0.0.1:0".into(),
        "--metrics-client-ca".into(),
        path(&pki.ca),
    ];
    // The harness reaches both ports with this configuration: it presents
    // the scraper's certificate when asked (the metrics port), and the
    // admin port never asks.
    let tollgate = Tollgate::try_start_admin_tls(
        POLICY,
        &args(&flags),
        Some(pki.pki.client_config(Some(&scraper))),
    )
    .unwrap_or_else(|failure| panic!("{failure}"));
    assert_ne!(tollgate.metrics_addr(), tollgate.admin_addr());

    // Probes over TLS without a client certificate.
    let no_certificate = pki.pki.client_config(None);
    let probe = |addr, path: &str| Request::new(addr, "GET", path).with_tls(no_certificate.clone());
    assert_eq!(probe(tollgate.admin_addr(), "/readyz").send().status, 200);
    assert_eq!(probe(tollgate.admin_addr(), "/healthz").send().status, 200);
    assert_eq!(
        probe(tollgate.admin_addr(), "/metrics").send().status,
        404,
        "metrics moved"
    );
    // Plain HTTP to the TLS admin port is not served.
    assert!(
        Request::new(tollgate.admin_addr(), "GET", "/readyz")
            .try_send()
            .is_err()
    );

    // Metrics only with the scraper's certificate.
    assert!(
        probe(tollgate.metrics_addr(), "/metrics")
            .try_send()
            .is_err()
    );
    wait_for_handshake(&tollgate, "metrics", "no_client_certificate");
    let text = tollgate.metrics();
    assert!(text.contains("tollgate_tls_handshakes_total"), "{text}");
    assert!(
        text.contains("tollgate_tls_certificate_expiry_timestamp_seconds{listener=\"metrics\"}"),
        "{text}"
    );
    let metrics_port = Request::new(tollgate.metrics_addr(), "GET", "/readyz")
        .with_tls(pki.pki.client_config(Some(&scraper)))
        .send();
    assert_eq!(metrics_port.status, 404, "probes stay on the admin port");
    wait_for_handshake(&tollgate, "admin", "not_tls");

    // The TLS accept loops end with the shutdown: SIGTERM stops the
    // process cleanly.
    let mut tollgate = tollgate;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &tollgate.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tollgate.wait_exit(LIMIT);
    assert!(exit.success(), "exit status after SIGTERM: {exit}");
    tollgate.wait_for_log("stopped", LIMIT);
}

#[test]
fn shipped_mtls_front_proxy_example_calls_tollgate_over_mutual_tls() {
    // deploy/envoy/front-proxy-mtls.yaml as shipped, with addresses and
    // certificate paths swapped for the test's.
    let upstream = Upstream::start();
    let policy = std::fs::read_to_string(support::repo_path("deploy/examples/bikes.yaml")).unwrap();
    let pki = Pki::new();
    let service = "tollgate.tollgate.svc.cluster.local";
    let (cert, key) = pki
        .pki
        .server_named(service)
        .write(pki.dir.path(), "service");
    let spiffe = "spiffe://cluster.local/ns/edge/sa/envoy";
    let path = |p: &Path| p.display().to_string();
    let flags = [
        "--grpc-tls-cert".to_owned(),
        path(&cert),
        "--grpc-tls-key".into(),
        path(&key),
        "--grpc-client-ca".into(),
        path(&pki.ca),
        "--grpc-client-spiffe-id".into(),
        spiffe.into(),
    ];
    let tollgate = Tollgate::start_with(&policy, &args(&flags));

    let dir = tempfile::tempdir().unwrap();
    let edge = TestPki::generate();
    let edge_files = edge.write_server_files(dir.path());
    let mut bootstrap = envoy::adapt_example(
        "deploy/envoy/front-proxy-mtls.yaml",
        dir.path(),
        tollgate.grpc_addr(),
        upstream.addr(),
        Some(&edge_files),
        &["https", "http"],
    );
    let clusters = bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap();
    let cluster = clusters
        .iter_mut()
        .find(|c| c["name"] == "tollgate")
        .unwrap();
    assert_eq!(cluster["transport_socket"]["typed_config"]["sni"], service);
    // Envoy's certificate and tollgate's CA, through the shipped SDS files.
    let client_dir = dir.path().join("tollgate-client");
    std::fs::create_dir(&client_dir).unwrap();
    let (client_cert, client_key) = pki
        .pki
        .client("envoy", Some(spiffe))
        .write(&client_dir, "tls");
    envoy::localize_sds(
        &mut cluster["transport_socket"],
        dir.path(),
        &support::tls::TlsFiles {
            cert_chain: client_cert,
            private_key: client_key,
            client_ca: pki.ca.clone(),
        },
    );
    let envoy = Envoy::start_bootstrap(dir, &bootstrap, Some(edge));
    let https = |path: &str| envoy.get(path).https().host("api.bikes.example").send();

    let health = https("/healthz");
    assert_eq!(health.upstream().header_once("x-bikes-route"), "health");
    let denied = https("/admin/fleet");
    assert_eq!((denied.status, denied.reason()), (403, Some("rule_denied")));
    assert!(handshakes(&tollgate, "grpc", "accepted") >= 1.0);
}

/// The documents of a shipped multi-document YAML file.
fn documents(path: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(support::repo_path(path)).unwrap();
    serde_saphyr::from_multiple::<serde_json::Value>(&text)
        .unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

/// The document of `kind` named `name` (in `namespace`, when given).
fn find<'a>(
    documents: &'a [serde_json::Value],
    kind: &str,
    name: &str,
    namespace: Option<&str>,
) -> &'a serde_json::Value {
    documents
        .iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"] == name
                && namespace.is_none_or(|ns| d["metadata"]["namespace"] == ns)
        })
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn shipped_kubernetes_tls_examples_agree_with_each_other_and_with_tollgate() {
    // deploy/tls/certificates.yaml, deploy/envoy-gateway/*.yaml and
    // deploy/envoy/front-proxy-mtls.yaml name the same Secrets, hosts,
    // Services and identities; a rename in one file must not leave the
    // others pointing at nothing.
    let certificates = documents("deploy/tls/certificates.yaml");
    let gateway = documents("deploy/envoy-gateway/backend-tls.yaml");
    let all: Vec<_> = certificates.iter().chain(&gateway).cloned().collect();
    for document in &all {
        assert!(
            document["apiVersion"].is_string() && document["kind"].is_string(),
            "{document}"
        );
    }
    // Every certificate names an issuer that exists.
    for cert in all.iter().filter(|d| d["kind"] == "Certificate") {
        let issuer = cert["spec"]["issuerRef"]["name"].as_str().unwrap();
        find(&all, "ClusterIssuer", issuer, None);
    }
    let server = find(
        &certificates,
        "Certificate",
        "tollgate-grpc-tls",
        Some("tollgate"),
    );
    assert_eq!(server["spec"]["usages"], serde_json::json!(["server auth"]));
    let dns_names: Vec<&str> = server["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();

    // Envoy Gateway checks tollgate's certificate for a name it carries,
    // against the CA in tollgate's own Secret.
    let policy = find(&gateway, "BackendTLSPolicy", "tollgate", Some("tollgate"));
    let hostname = policy["spec"]["validation"]["hostname"].as_str().unwrap();
    assert!(
        dns_names.contains(&hostname),
        "{hostname} not in {dns_names:?}"
    );
    let ca_ref = &policy["spec"]["validation"]["caCertificateRefs"][0];
    assert_eq!(ca_ref["kind"], "Secret");
    assert_eq!(ca_ref["name"], server["spec"]["secretName"]);
    // The client certificate Envoy Gateway presents is the one issued.
    let proxy = find(
        &gateway,
        "EnvoyProxy",
        "tollgate-client",
        Some("envoy-gateway-system"),
    );
    let client_ref = &proxy["spec"]["backendTLS"]["clientCertificateRef"];
    let client = find(
        &gateway,
        "Certificate",
        "tollgate-client",
        client_ref["namespace"].as_str(),
    );
    assert_eq!(client["spec"]["secretName"], client_ref["name"]);
    assert_eq!(client["spec"]["usages"], serde_json::json!(["client auth"]));
    let class = find(&gateway, "GatewayClass", "eg", None);
    assert_eq!(
        class["spec"]["parametersRef"]["name"],
        proxy["metadata"]["name"]
    );

    // The front proxy checks the same name, and the identities the
    // examples tell tollgate to allow are SPIFFE IDs tollgate accepts.
    let front = envoy::read_example("deploy/envoy/front-proxy-mtls.yaml");
    let cluster = front["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tollgate")
        .unwrap();
    let sni = cluster["transport_socket"]["typed_config"]["sni"]
        .as_str()
        .unwrap();
    assert!(dns_names.contains(&sni), "{sni} not in {dns_names:?}");
    let edge = find(
        &certificates,
        "Certificate",
        "tollgate-client",
        Some("edge"),
    );
    for cert in [edge, client] {
        let ids: Vec<String> = cert["spec"]["uris"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_owned())
            .collect();
        tollgate::tls::ClientIdentities::new(&ids, &[]).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(support::repo_path(if cert == edge {
            "deploy/envoy/front-proxy-mtls.yaml"
        } else {
            "deploy/envoy-gateway/backend-tls.yaml"
        }))
        .unwrap();
        assert!(
            text.contains(&format!("--grpc-client-spiffe-id {}", ids[0])),
            "the example's tollgate flags allow {}",
            ids[0]
        );
    }
}
