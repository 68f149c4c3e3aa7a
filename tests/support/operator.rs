//! The built `tollgate operator`, against a test API server: admin port
//! on an ephemeral port, a short lease (so failover tests take seconds),
//! output kept for assertions, killed by PID when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::client::Request;
use super::tollgate::{log_field, log_message};
use super::{collect, tail, wait_for};

const START_LIMIT: Duration = Duration::from_secs(30);

/// Lease timings of test operators: a standby takes over within 4 s.
pub const LEASE_DURATION: Duration = Duration::from_secs(4);

/// A running `tollgate operator`.
pub struct Operator {
    child: Child,
    admin: SocketAddr,
    output: Arc<Mutex<String>>,
}

impl Operator {
    /// Starts an operator named `identity` with `kubeconfig`, its Lease in
    /// `lease_namespace`, and waits until it is ready (first sync done).
    pub fn start(kubeconfig: &Path, lease_namespace: &str, identity: &str) -> Self {
        Self::start_with_env(
            kubeconfig,
            &[],
            &[
                "--lease-namespace",
                lease_namespace,
                "--identity",
                identity,
                "--lease-duration",
                "4s",
                "--renew-deadline",
                "3s",
                "--retry-period",
                "500ms",
            ],
        )
    }

    /// Starts an operator with `kubeconfig`, the environment `env` (e.g.
    /// the `TOLLGATE_…` settings a Helm chart gives the container; no other
    /// `TOLLGATE_…` variable leaks in) and `args`, and waits until it is
    /// ready.
    pub fn start_with_env(kubeconfig: &Path, env: &[(String, String)], args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        command
            .arg("operator")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--admin-addr", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .env_remove("KUBECONFIG");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TOLLGATE_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .envs(env.iter().map(|(name, value)| (name, value)))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tollgate operator");
        let output = Arc::new(Mutex::new(String::new()));
        collect("", child.stdout.take().unwrap(), output.clone());
        collect("", child.stderr.take().unwrap(), output.clone());
        let mut operator = Self {
            child,
            admin: "127.0.0.1:0".parse().unwrap(),
            output,
        };
        operator.admin = wait_for("the operator's admin address", START_LIMIT, || {
            operator.assert_running();
            operator.log_lines().into_iter().find_map(|line| {
                (log_message(&line) == Some("operator starting"))
                    .then(|| log_field(&line, "admin_addr")?.as_str()?.parse().ok())
                    .flatten()
            })
        });
        wait_for("the operator's /readyz to answer 200", START_LIMIT, || {
            operator.assert_running();
            let ready = Request::new(operator.admin, "GET", "/readyz")
                .try_send()
                .ok()?;
            (ready.status == 200).then_some(())
        });
        operator
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "tollgate operator exited ({status}):\n{}",
                tail(&self.output(), 40)
            );
        }
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics(&self) -> String {
        Request::new(self.admin, "GET", "/metrics").send().text()
    }

    /// True while this replica leads (its `tollgate_operator_leader`
    /// gauge).
    pub fn leads(&self) -> bool {
        self.metrics()
            .lines()
            .any(|l| l == "tollgate_operator_leader 1")
    }

    /// Everything it printed.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Its JSON log lines.
    pub fn log_lines(&self) -> Vec<Value> {
        self.output()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// SIGKILL: the process dies holding its lease.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        wait_for("the operator to exit", START_LIMIT, || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- tollgate operator output ---\n{}",
                tail(&self.output(), 40)
            );
        }
    }
}
