//! A real Kubernetes API server for a test: `etcd` and `kube-apiserver`,
//! built from their Go modules by `scripts/kube-tools.sh` (the test
//! setup), started on loopback for this test alone, and stopped by PID
//! when the handle drops.
//!
//! What a test gets:
//!
//! - a fresh PKI (rcgen): the CA, the API server's serving certificate,
//!   an admin client certificate (group `system:masters`) and the
//!   ServiceAccount signing key, so the TokenRequest API works;
//! - `--authorization-mode=RBAC`, so permissions are really checked;
//! - the CRDs from `deploy/crds/` installed and established;
//! - kubeconfig files: the admin's, and one per ServiceAccount token
//!   ([`KubeApi::service_account_kubeconfig`]) for least-privilege runs;
//! - [`KubeApi::apply`]: server-side apply of YAML documents, the way
//!   `kubectl apply --server-side` does it;
//! - [`KubeApi::stop_apiserver`] / [`KubeApi::start_apiserver`] for outage
//!   tests (etcd keeps the data; the port is the one this API server held).
//!
//! Why one API server per test: nextest runs every test in its own
//! process, so nothing in memory can be shared, and start-up takes about
//! three seconds — cheap next to the isolation (a test may stop the API
//! server, or change RBAC, without touching another test). See
//! docs/testing.md.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::{collect, repo_path, tail, wait_for};

/// How long etcd or the API server may take to start before the test fails.
const START_LIMIT: Duration = Duration::from_secs(60);
/// The field manager of everything tests apply.
pub const TEST_MANAGER: &str = "tollgate-tests";

/// The directory holding `kube-apiserver`, `etcd` and `helm`.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOLLGATE_KUBE_TOOLS") {
        return PathBuf::from(dir);
    }
    let output = Command::new("bash")
        .arg(repo_path("scripts/kube-tools.sh"))
        .arg("--check")
        .output()
        .expect("run scripts/kube-tools.sh --check");
    if !output.status.success() {
        panic!(
            "kube-apiserver, etcd and helm are not built: run scripts/setup.sh (it builds them \
             from their Go modules with scripts/kube-tools.sh, once per machine)\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A running etcd + kube-apiserver pair; both killed by PID on drop.
pub struct KubeApi {
    dir: TempDir,
    tools: PathBuf,
    etcd: Child,
    etcd_url: String,
    apiserver: Option<Child>,
    port: u16,
    output: Arc<Mutex<String>>,
    ca_pem: String,
    admin_kubeconfig: PathBuf,
    client: Client,
    /// The API server's audit log (JSON lines), when started audited.
    audit_log: Option<PathBuf>,
}

impl KubeApi {
    /// Starts etcd and the API server, waits for `/readyz`, and installs
    /// the CRDs of `deploy/crds/`.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// Like [`KubeApi::start`], with the API server writing an audit log
    /// of every request's metadata (who did what to which resource), so a
    /// test can prove which permissions a client used.
    pub async fn start_audited() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(audited: bool) -> Self {
        let started = std::time::Instant::now();
        let api = Self::boot(audited).await;
        api.install_crds().await;
        eprintln!(
            "etcd and kube-apiserver ready, CRDs established, in {:?}",
            started.elapsed()
        );
        api
    }

    /// Starts etcd and the API server without tollgate's CRDs (for tests
    /// of what installs them, such as the Helm chart).
    pub async fn start_without_crds() -> Self {
        Self::boot(false).await
    }

    /// Starts etcd and the API server (audited or not), without CRDs.
    async fn boot(audited: bool) -> Self {
        let tools = tools_dir();
        let dir = tempfile::Builder::new()
            .prefix("tollgate-kube-")
            .tempdir()
            .unwrap();
        let pki = Pki::generate();
        pki.write(dir.path());
        let output = Arc::new(Mutex::new(String::new()));
        let (etcd, etcd_url) = start_etcd(&tools, dir.path(), output.clone());
        let admin_kubeconfig = dir.path().join("admin.kubeconfig");
        let port = free_port();
        std::fs::write(
            &admin_kubeconfig,
            kubeconfig(
                port,
                &pki.ca_pem,
                json!({
                    "client-certificate-data": b64(&pki.admin_cert_pem),
                    "client-key-data": b64(&pki.admin_key_pem),
                }),
            ),
        )
        .unwrap();
        let client = client_from(&admin_kubeconfig).await;
        let mut api = Self {
            dir,
            tools,
            etcd,
            etcd_url,
            apiserver: None,
            port,
            output,
            ca_pem: pki.ca_pem,
            admin_kubeconfig,
            client,
            audit_log: None,
        };
        if audited {
            let policy = api.dir.path().join("audit-policy.yaml");
            std::fs::write(
                &policy,
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n",
            )
            .unwrap();
            api.audit_log = Some(api.dir.path().join("audit.log"));
        }
        api.start_apiserver().await;
        api
    }

    /// Starts the API server (again) on this handle's port, and waits until
    /// it is ready. The port was chosen free at start and held by this API
    /// server since; the serving certificate is this test's, so a client
    /// reaching another process there would fail TLS, never pass silently.
    pub async fn start_apiserver(&mut self) {
        assert!(
            self.apiserver.is_none(),
            "the API server is already running"
        );
        let dir = self.dir.path();
        let mut command = Command::new(self.tools.join("kube-apiserver"));
        command
            .arg(format!("--etcd-servers={}", self.etcd_url))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.port))
            .arg(format!(
                "--tls-cert-file={}",
                dir.join("serving.pem").display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                dir.join("serving.key").display()
            ))
            .arg(format!("--client-ca-file={}", dir.join("ca.pem").display()))
            .arg(format!(
                "--service-account-key-file={}",
                dir.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                dir.join("sa.key").display()
            ))
            .arg(format!(
                "--service-account-issuer=https://127.0.0.1:{}/",
                self.port
            ))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--authorization-mode=RBAC")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--allow-privileged=true")
            .args(self.audit_log.iter().flat_map(|log| {
                [
                    format!(
                        "--audit-policy-file={}",
                        self.dir.path().join("audit-policy.yaml").display()
                    ),
                    format!("--audit-log-path={}", log.display()),
                ]
            }))
            .arg("--profiling=false")
            .arg("--v=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}",
                self.tools.join("kube-apiserver").display()
            )
        });
        collect(
            "kube-apiserver",
            child.stdout.take().unwrap(),
            self.output.clone(),
        );
        collect(
            "kube-apiserver",
            child.stderr.take().unwrap(),
            self.output.clone(),
        );
        self.apiserver = Some(child);
        let client = self.client.clone();
        let deadline = std::time::Instant::now() + START_LIMIT;
        loop {
            if let Some(Ok(Some(status))) = self.apiserver.as_mut().map(Child::try_wait) {
                panic!(
                    "kube-apiserver exited ({status}) on port {}:\n{}",
                    self.port,
                    tail(&self.output(), 30)
                );
            }
            let ready = client
                .request_text(http::Request::get("/readyz").body(Vec::new()).unwrap())
                .await;
            if matches!(ready, Ok(body) if body.trim() == "ok") {
                return;
            }
            if std::time::Instant::now() >= deadline {
                panic!(
                    "kube-apiserver was not ready within {START_LIMIT:?}:\n{}",
                    tail(&self.output(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the API server (etcd keeps running and keeps the data).
    pub fn stop_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The admin client (group `system:masters`).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The admin kubeconfig file.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The API server's URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A directory for the test's own files, removed with the API server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything etcd and the API server printed.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The audit events of requests made by `username` (e.g.
    /// `system:serviceaccount:tollgate:tollgate`), as the API server
    /// logged them. Panics when not started audited.
    pub fn audit_events(&self, username: &str) -> Vec<Value> {
        let log = self
            .audit_log
            .as_ref()
            .expect("the API server was started with KubeApi::start_audited");
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event["user"]["username"] == username)
            .collect()
    }

    /// Creates a namespace.
    pub async fn namespace(&self, name: &str) {
        let namespaces: Api<Namespace> = Api::all(self.client());
        let namespace: Namespace =
            serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap();
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    }

    /// Server-side applies every document of `yaml` (any kind the API
    /// server serves), as `kubectl apply --server-side` would; returns the
    /// objects as stored.
    pub async fn apply(&self, yaml: &str) -> Vec<DynamicObject> {
        self.try_apply(yaml)
            .await
            .unwrap_or_else(|e| panic!("apply failed: {e}\n{yaml}"))
    }

    /// [`KubeApi::apply`] returning the API server's refusal.
    pub async fn try_apply(&self, yaml: &str) -> Result<Vec<DynamicObject>, kube::Error> {
        apply_as(&self.client(), yaml).await
    }

    /// [`KubeApi::try_apply`] with strict field validation, as `kubectl
    /// apply --server-side --validate=strict`: an unknown or duplicated
    /// field is refused, naming it, instead of silently dropped (what the
    /// API server does by default for custom resources).
    pub async fn try_apply_strict(&self, yaml: &str) -> Result<Vec<DynamicObject>, kube::Error> {
        apply_with(
            &self.client(),
            yaml,
            &PatchParams::apply(TEST_MANAGER).force().validation_strict(),
        )
        .await
    }

    /// Deletes the object `kind`/`name` (namespaced when `namespace` is
    /// given).
    pub async fn delete(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) {
        let api = dynamic_api(&self.client(), api_version, kind, namespace).await;
        api.delete(name, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("delete {kind} {name}: {e}"));
    }

    /// The object `kind`/`name` as stored, or `None` when it does not
    /// exist.
    pub async fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<DynamicObject> {
        let api = dynamic_api(&self.client(), api_version, kind, namespace).await;
        api.get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("get {kind} {name}: {e}"))
    }

    /// A kubeconfig holding a token of ServiceAccount `namespace/name`
    /// (created if missing), from the TokenRequest API.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        if accounts.get_opt(name).await.unwrap().is_none() {
            let account: ServiceAccount =
                serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap();
            accounts
                .create(&PostParams::default(), &account)
                .await
                .unwrap();
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![format!("https://127.0.0.1:{}/", self.port)]),
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
            .status
            .expect("a TokenRequest answers with a status")
            .token;
        let path = self
            .dir
            .path()
            .join(format!("sa-{namespace}-{name}.kubeconfig"));
        std::fs::write(
            &path,
            kubeconfig(self.port, &self.ca_pem, json!({ "token": token })),
        )
        .unwrap();
        path
    }

    async fn install_crds(&self) {
        let crds_yaml =
            std::fs::read_to_string(repo_path("deploy/crds/tollgate.dev.yaml")).unwrap();
        self.install_crd_yaml(&crds_yaml).await;
    }

    /// Applies the CustomResourceDefinitions of `yaml` and waits until
    /// each is `Established` (its kind is served).
    pub async fn install_crd_yaml(&self, yaml: &str) {
        let applied = self.apply(yaml).await;
        self.wait_established(applied.iter().filter_map(|crd| crd.metadata.name.clone()))
            .await;
    }

    /// Waits until each CRD named is `Established`.
    pub async fn wait_established(&self, names: impl IntoIterator<Item = String>) {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client());
        for name in names {
            let deadline = std::time::Instant::now() + START_LIMIT;
            loop {
                let current = crds.get(&name).await.unwrap();
                let established = current
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "CRD {name} was not established"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop_apiserver();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- etcd and kube-apiserver output ---\n{}",
                tail(&self.output(), 40)
            );
        }
    }
}

/// A client for `kubeconfig`.
pub async fn client_from(kubeconfig: &Path) -> Client {
    let file = Kubeconfig::read_from(kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Server-side applies every document of `yaml` with `client`.
pub async fn apply_as(client: &Client, yaml: &str) -> Result<Vec<DynamicObject>, kube::Error> {
    apply_with(client, yaml, &PatchParams::apply(TEST_MANAGER).force()).await
}

/// Server-side applies every document of `yaml` with `client` and `params`.
async fn apply_with(
    client: &Client,
    yaml: &str,
    params: &PatchParams,
) -> Result<Vec<DynamicObject>, kube::Error> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("valid YAML");
    let mut applied = Vec::new();
    for document in documents.into_iter().filter(|d| !d.is_null()) {
        let api_version = document["apiVersion"]
            .as_str()
            .expect("apiVersion")
            .to_owned();
        let kind = document["kind"].as_str().expect("kind").to_owned();
        let name = document["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_owned();
        let namespace = document["metadata"]["namespace"]
            .as_str()
            .map(str::to_owned);
        let api = dynamic_api(client, &api_version, &kind, namespace.as_deref()).await;
        applied.push(api.patch(&name, params, &Patch::Apply(&document)).await?);
    }
    Ok(applied)
}

/// An API for `kind` of `api_version`, found by discovery of its group.
pub async fn dynamic_api(
    client: &Client,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = kube::core::GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities): (ApiResource, _) =
        kube::discovery::oneshot::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| {
                panic!("the API server does not serve {kind} in {api_version}: {e}")
            });
    match (namespace, capabilities.scope) {
        (Some(ns), kube::discovery::Scope::Namespaced) => {
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        (None, kube::discovery::Scope::Namespaced) => {
            Api::default_namespaced_with(client.clone(), &resource)
        }
        _ => Api::all_with(client.clone(), &resource),
    }
}

/// A kubeconfig for the API server on `port` with `user` credentials.
fn kubeconfig(port: u16, ca_pem: &str, user: Value) -> String {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "test", "cluster": {
            "server": format!("https://127.0.0.1:{port}"),
            "certificate-authority-data": b64(ca_pem),
        }}],
        "users": [{ "name": "test", "user": user }],
        "contexts": [{ "name": "test", "context": { "cluster": "test", "user": "test" } }],
        "current-context": "test",
    });
    // JSON is YAML.
    serde_json::to_string_pretty(&config).unwrap()
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A port that was free a moment ago (kube-apiserver refuses port 0).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts etcd on loopback ephemeral ports; returns it and its client URL,
/// read from its own log (so the port is the one it bound).
fn start_etcd(tools: &Path, dir: &Path, output: Arc<Mutex<String>>) -> (Child, String) {
    let mut child = Command::new(tools.join("etcd"))
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg("--listen-client-urls=http://127.0.0.1:0")
        .arg("--advertise-client-urls=http://127.0.0.1:2379")
        .arg("--listen-peer-urls=http://127.0.0.1:0")
        .arg("--initial-advertise-peer-urls=http://127.0.0.1:2380")
        .arg("--initial-cluster=default=http://127.0.0.1:2380")
        .arg("--listen-metrics-urls=")
        .arg("--unsafe-no-fsync")
        .arg("--log-level=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", tools.join("etcd").display()));
    collect("etcd: ", child.stdout.take().unwrap(), output.clone());
    collect("etcd: ", child.stderr.take().unwrap(), output.clone());
    let address = wait_for("etcd to serve clients", START_LIMIT, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "etcd exited ({status}):\n{}",
                tail(&output.lock().unwrap(), 30)
            );
        }
        output.lock().unwrap().lines().find_map(|line| {
            let line = line.strip_prefix("etcd: ")?;
            let value: Value = serde_json::from_str(line).ok()?;
            let message = value["msg"].as_str()?;
            if !message.starts_with("serving client traffic") {
                return None;
            }
            value["address"].as_str()?.parse::<SocketAddr>().ok()
        })
    });
    (child, format!("http://{address}"))
}

/// The test's PKI.
struct Pki {
    ca_pem: String,
    serving_cert_pem: String,
    serving_key_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
    sa_key_pem: String,
    sa_public_pem: String,
}

impl Pki {
    fn generate() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "tollgate test cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = params.self_signed(&ca_key).unwrap().pem();
        let ca = Issuer::new(params, ca_key);

        let serving_key = KeyPair::generate().unwrap();
        let mut serving = CertificateParams::new(Vec::<String>::new()).unwrap();
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.subject_alt_names = vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::DnsName("localhost".try_into().unwrap()),
        ];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert_pem = serving.signed_by(&serving_key, &ca).unwrap().pem();

        let admin_key = KeyPair::generate().unwrap();
        let mut admin = CertificateParams::new(Vec::<String>::new()).unwrap();
        admin
            .distinguished_name
            .push(DnType::CommonName, "tollgate-test-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert_pem = admin.signed_by(&admin_key, &ca).unwrap().pem();

        let sa_key = KeyPair::generate().unwrap();
        Self {
            ca_pem,
            serving_cert_pem,
            serving_key_pem: serving_key.serialize_pem(),
            admin_cert_pem,
            admin_key_pem: admin_key.serialize_pem(),
            sa_key_pem: sa_key.serialize_pem(),
            sa_public_pem: sa_key.public_key_pem(),
        }
    }

    fn write(&self, dir: &Path) {
        let files: BTreeMap<&str, &str> = BTreeMap::from([
            ("ca.pem", self.ca_pem.as_str()),
            ("serving.pem", self.serving_cert_pem.as_str()),
            ("serving.key", self.serving_key_pem.as_str()),
            ("sa.key", self.sa_key_pem.as_str()),
            ("sa.pub", self.sa_public_pem.as_str()),
        ]);
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
}
