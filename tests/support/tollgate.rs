//! The built `tollgate serve`, on ephemeral ports.
//!
//! The process logs JSON lines; the `listening` line names the bound gRPC
//! and admin addresses, and `/readyz` says when a snapshot is loaded. Its
//! output is kept in memory for assertions (audit lines, warnings) and
//! printed when a test fails.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::client::{Request, Response};
use super::{collect, tail, wait_for};

/// How long tollgate may take to start before the test fails.
const START_LIMIT: Duration = Duration::from_secs(30);

/// A running `tollgate serve`; killed by PID when dropped.
pub struct Tollgate {
    child: Child,
    dir: TempDir,
    policy: PathBuf,
    grpc: SocketAddr,
    admin: SocketAddr,
    metrics_addr: SocketAddr,
    /// How to reach the admin and metrics ports when they serve TLS.
    admin_tls: Option<Arc<rustls::ClientConfig>>,
    output: Arc<Mutex<String>>,
    /// The threads copying stdout and stderr (joined on drop, so the last
    /// lines are scanned too).
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Tollgate {
    /// Serves `policy_yaml` (a multi-document policy file) with the
    /// in-memory store.
    pub fn start(policy_yaml: &str) -> Self {
        Self::start_with(policy_yaml, &[])
    }

    /// Serves `policy_yaml` with extra `serve` arguments (e.g.
    /// `["--redis", url]`, `["--require-policy-extension"]`).
    pub fn start_with(policy_yaml: &str, extra_args: &[&str]) -> Self {
        Self::try_start(policy_yaml, extra_args).unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// Like [`Tollgate::start_with`], but a process that exits during
    /// start-up is an `Err` carrying its exit status and output (for tests
    /// of start-up refusals).
    pub fn try_start(policy_yaml: &str, extra_args: &[&str]) -> Result<Self, StartFailure> {
        Self::try_start_full(policy_yaml, extra_args, &[], None)
    }

    /// Like [`Tollgate::start_with`], with environment variables set for
    /// the process (e.g. `OTEL_BSP_SCHEDULE_DELAY`).
    pub fn start_env(policy_yaml: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::try_start_full(policy_yaml, extra_args, &env, None)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// Like [`Tollgate::try_start`] for a server whose admin (and metrics)
    /// port serves TLS: probes and `metrics()` connect with `admin_tls`.
    pub fn try_start_admin_tls(
        policy_yaml: &str,
        extra_args: &[&str],
        admin_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, StartFailure> {
        Self::try_start_full(policy_yaml, extra_args, &[], admin_tls)
    }

    fn try_start_full(
        policy_yaml: &str,
        extra_args: &[&str],
        env: &[(String, String)],
        admin_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, StartFailure> {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-")
            .tempdir()
            .unwrap();
        let policy = dir.path().join("policy.yaml");
        super::credentials::note_policy_secrets(policy_yaml);
        std::fs::write(&policy, policy_yaml).unwrap();
        let source = vec![OsString::from("--policy-file"), policy.clone().into()];
        let mut tollgate = Self::launch(dir, policy, source, env, extra_args, admin_tls)?;
        tollgate.wait_ready();
        Ok(tollgate)
    }

    /// Serves the custom resources of the API server `kubeconfig` points
    /// at (`serve --kubernetes`), and waits for `/readyz` (the first full
    /// sync).
    pub fn start_kubernetes(kubeconfig: &Path, extra_args: &[&str]) -> Self {
        let mut tollgate = Self::launch_kubernetes(kubeconfig, extra_args);
        tollgate.wait_ready();
        tollgate
    }

    /// Like [`Tollgate::start_kubernetes`] without waiting for readiness
    /// (for tests of what keeps it unready).
    pub fn launch_kubernetes(kubeconfig: &Path, extra_args: &[&str]) -> Self {
        Self::launch_kubernetes_with_env(kubeconfig, &[], extra_args)
    }

    /// Like [`Tollgate::start_kubernetes`], with environment variables
    /// (e.g. the `TOLLGATE_…` settings a Helm chart gives the container;
    /// the harness's command-line addresses win over them, as flags win
    /// over variables).
    pub fn start_kubernetes_with_env(
        kubeconfig: &Path,
        env: &[(String, String)],
        extra_args: &[&str],
    ) -> Self {
        let mut tollgate = Self::launch_kubernetes_with_env(kubeconfig, env, extra_args);
        tollgate.wait_ready();
        tollgate
    }

    /// Like [`Tollgate::start_kubernetes_with_env`] without waiting for
    /// readiness.
    pub fn launch_kubernetes_with_env(
        kubeconfig: &Path,
        env: &[(String, String)],
        extra_args: &[&str],
    ) -> Self {
        Self::launch_kubernetes_admin_tls(kubeconfig, env, extra_args, None)
    }

    /// Like [`Tollgate::start_kubernetes_with_env`] for a server whose
    /// admin (and metrics) port serves TLS: probes and `metrics()` connect
    /// with `admin_tls`.
    pub fn start_kubernetes_admin_tls(
        kubeconfig: &Path,
        env: &[(String, String)],
        extra_args: &[&str],
        admin_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        let mut tollgate =
            Self::launch_kubernetes_admin_tls(kubeconfig, env, extra_args, admin_tls);
        tollgate.wait_ready();
        tollgate
    }

    fn launch_kubernetes_admin_tls(
        kubeconfig: &Path,
        env: &[(String, String)],
        extra_args: &[&str],
        admin_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-")
            .tempdir()
            .unwrap();
        let policy = dir.path().join("unused-policy.yaml");
        let source = vec![
            OsString::from("--kubernetes"),
            OsString::from("--kubeconfig"),
            kubeconfig.into(),
        ];
        Self::launch(dir, policy, source, env, extra_args, admin_tls)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// Starts `tollgate serve` with `source` arguments and `env`, and
    /// waits for the `listening` line; `admin_tls` reaches a TLS admin
    /// port.
    fn launch(
        dir: TempDir,
        policy: PathBuf,
        source: Vec<OsString>,
        env: &[(String, String)],
        extra_args: &[&str],
        admin_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, StartFailure> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        command
            .arg("serve")
            .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .args(&source)
            .args(extra_args)
            // JSON unless the test asks for another format.
            .args(if extra_args.contains(&"--log-format") {
                &[][..]
            } else {
                &["--log-format", "json"][..]
            })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The test decides every setting: none leaks in from the caller's
        // environment.
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if name_text.starts_with("TOLLGATE_") || name_text.starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().map(|(name, value)| (name, value)));
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        let mut child = command.spawn().expect("spawn tollgate");
        let output = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            super::collect("", child.stdout.take().unwrap(), output.clone()),
            super::collect("", child.stderr.take().unwrap(), output.clone()),
        ];
        // Built before any wait, so a panic kills the process on drop.
        let unbound: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut tollgate = Self {
            child,
            dir,
            policy,
            grpc: unbound,
            admin: unbound,
            metrics_addr: unbound,
            admin_tls,
            output,
            readers,
        };

        let started = wait_for("tollgate's `listening` log line", START_LIMIT, || {
            if let Some(addrs) = listening(&tollgate.output()) {
                return Some(Ok(addrs));
            }
            tollgate.child.try_wait().ok().flatten().map(Err)
        });
        match started {
            Ok((grpc, admin, metrics)) => {
                tollgate.grpc = grpc;
                tollgate.admin = admin;
                tollgate.metrics_addr = metrics;
            }
            Err(status) => {
                // Let the reader threads drain what the process printed last.
                std::thread::sleep(Duration::from_millis(200));
                let output = tollgate.output();
                return Err(StartFailure { status, output });
            }
        }
        Ok(tollgate)
    }

    /// Waits (bounded) for `/readyz` to answer 200.
    pub fn wait_ready(&mut self) {
        wait_for("tollgate's /readyz to answer 200", START_LIMIT, || {
            self.assert_running();
            let ready = self.admin_request("/readyz").try_send().ok()?;
            (ready.status == 200).then_some(())
        });
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("tollgate exited ({status}):\n{}", tail(&self.output(), 40));
        }
    }

    /// The ext_authz gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// The admin HTTP address (`/healthz`, `/readyz`, `/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Where `/metrics` is served: the admin port, or `--metrics-addr`.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    fn admin_request(&self, path: &str) -> Request {
        let request = Request::new(self.admin, "GET", path);
        match &self.admin_tls {
            Some(config) => request.with_tls(config.clone()),
            None => request,
        }
    }

    /// GETs an admin path.
    pub fn admin_get(&self, path: &str) -> Response {
        self.admin_request(path).send()
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics(&self) -> String {
        let request = Request::new(self.metrics_addr, "GET", "/metrics");
        let request = match &self.admin_tls {
            Some(config) => request.with_tls(config.clone()),
            None => request,
        };
        request.send().text()
    }

    /// The value of the series `name` whose labels include `labels` (0
    /// when absent, as Prometheus reads a counter not yet incremented).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(), name, labels)
    }

    /// The policy file the server watches.
    pub fn policy_path(&self) -> &Path {
        &self.policy
    }

    /// Replaces the policy file atomically (write, then rename), as an
    /// editor or a ConfigMap update would.
    pub fn write_policy(&self, policy_yaml: &str) {
        super::credentials::note_policy_secrets(policy_yaml);
        let staging = self.dir.path().join("policy.yaml.new");
        std::fs::write(&staging, policy_yaml).unwrap();
        std::fs::rename(&staging, &self.policy).unwrap();
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The JSON log lines printed so far.
    pub fn log_lines(&self) -> Vec<Value> {
        self.output()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits (bounded) for a log line whose message is `message`.
    pub fn wait_for_log(&self, message: &str, limit: Duration) -> Value {
        wait_for(&format!("tollgate to log {message:?}"), limit, || {
            self.log_lines()
                .into_iter()
                .find(|line| log_message(line) == Some(message))
        })
    }

    /// Kills the process now (to test Envoy's behaviour without it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id (for signal tests).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process as Kubernetes does (SIGTERM by PID) and waits
    /// (bounded) for it to exit: a graceful drain.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.wait_exit(START_LIMIT)
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        wait_for("tollgate to exit", limit, || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The pipes are closed now: the readers finish what is left.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        if std::thread::panicking() {
            eprintln!("--- tollgate output ---\n{}", tail(&self.output(), 40));
            return;
        }
        // The credential-leak check of every end-to-end test (see
        // `credentials`): a passing test fails if tollgate printed a
        // credential it was sent or a secret of its policy file.
        let output = self.output();
        let leaks = super::credentials::leaks(&output);
        if !leaks.is_empty() {
            let lines: Vec<&str> = output
                .lines()
                .filter(|line| leaks.iter().any(|leak| line.contains(leak.as_str())))
                .take(5)
                .collect();
            panic!(
                "tollgate's output holds {} credential(s) the test sent or configured: {leaks:?}\n{}",
                leaks.len(),
                lines.join("\n")
            );
        }
    }
}

/// A `tollgate serve` that exited before it was listening.
#[derive(Debug)]
pub struct StartFailure {
    pub status: std::process::ExitStatus,
    pub output: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tollgate exited during start-up ({}):\n{}",
            self.status,
            tail(&self.output, 40)
        )
    }
}

/// The message of a JSON log line (`tracing-subscriber` puts it under
/// `fields`, flattened formats at the top).
pub fn log_message(line: &Value) -> Option<&str> {
    line["fields"]["message"]
        .as_str()
        .or_else(|| line["message"].as_str())
}

/// A field of a JSON log line, wherever the formatter put it.
pub fn log_field<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line.get("fields")
        .and_then(|f| f.get(name))
        .or_else(|| line.get(name))
        .or_else(|| line.get("span").and_then(|s| s.get(name)))
}

/// The gRPC, admin and metrics addresses in the `listening` line, once
/// printed.
fn listening(output: &str) -> Option<(SocketAddr, SocketAddr, SocketAddr)> {
    output.lines().find_map(|line| {
        if !line.starts_with('{') {
            // `--log-format text`: `… listening grpc_addr=… admin_addr=…`.
            if !line.contains(" listening ") {
                return None;
            }
            let addr = |name: &str| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            return Some((
                addr("grpc_addr")?,
                addr("admin_addr")?,
                addr("metrics_addr")?,
            ));
        }
        let line: Value = serde_json::from_str(line).ok()?;
        if log_message(&line) != Some("listening") {
            return None;
        }
        let addr = |name| log_field(&line, name)?.as_str()?.parse().ok();
        Some((
            addr("grpc_addr")?,
            addr("admin_addr")?,
            addr("metrics_addr")?,
        ))
    })
}

/// The value of the series `name{…}` in Prometheus text whose labels
/// include every pair of `labels`; 0 when there is none.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let inner = match rest {
                "" => "",
                _ => rest.strip_prefix('{')?.strip_suffix('}')?,
            };
            let all = labels
                .iter()
                .all(|(k, v)| inner.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
