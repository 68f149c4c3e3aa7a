//! `tollgate operator`: configuration → telemetry → Kubernetes client →
//! admin port → [`crate::operator::run`] until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::admin::{self, AdminState};
use crate::config::{KubernetesArgs, LogArgs};
use crate::operator::{self, lease::LeaseSettings};
use crate::policy::duration::parse_duration;
use crate::policy::source::kubernetes;
use crate::server::Readiness;
use crate::{shutdown, telemetry};

/// The flags of `tollgate operator`.
#[derive(Clone, Debug, clap::Args)]
pub struct OperatorConfig {
    #[command(flatten)]
    pub kube: KubernetesArgs,

    /// Address of the admin HTTP listener: /healthz, /readyz (after the
    /// first full sync), /metrics.
    #[arg(long, env = "TOLLGATE_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub lease: LeaseArgs,
}

/// Leader election flags.
#[derive(Clone, Debug, clap::Args)]
pub struct LeaseArgs {
    /// Namespace of the Lease (the operator's own; in a pod set it from
    /// the downward API). Absent: the kubeconfig's or the pod's namespace.
    #[arg(long, env = "TOLLGATE_LEASE_NAMESPACE", value_name = "NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Name of the Lease (coordination.k8s.io) the replicas elect a leader
    /// with.
    #[arg(long, env = "TOLLGATE_LEASE_NAME", default_value = "tollgate-operator")]
    pub lease_name: String,

    /// This replica's identity in the Lease (the pod name). Absent: the
    /// host name and a random suffix.
    #[arg(long, env = "TOLLGATE_IDENTITY")]
    pub identity: Option<String>,

    /// How long a lease holds without renewal; a standby takes over within
    /// this time when the leader dies.
    #[arg(long, env = "TOLLGATE_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// How long the leader keeps leading without a successful renewal
    /// (shorter than the lease duration).
    #[arg(long, env = "TOLLGATE_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,

    /// How often the lease is tried or renewed (shorter than the renew
    /// deadline).
    #[arg(long, env = "TOLLGATE_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,
}

impl OperatorConfig {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        self.kube.validate().map_err(|e| e.to_string())?;
        let lease = &self.lease;
        if lease.retry_period.is_zero()
            || lease.retry_period >= lease.renew_deadline
            || lease.renew_deadline >= lease.lease_duration
        {
            return Err(format!(
                "--retry-period ({:?}) < --renew-deadline ({:?}) < --lease-duration ({:?}) must hold: \
                 the leader must give up before a standby may take over",
                lease.retry_period, lease.renew_deadline, lease.lease_duration
            ));
        }
        if lease.lease_duration > Duration::from_secs(600) {
            return Err("--lease-duration must be at most 10m".to_owned());
        }
        Ok(())
    }
}

/// Runs the operator; 0 after a clean shutdown, 1 when it could not start,
/// 2 for an unusable configuration.
pub fn main(config: OperatorConfig) -> ExitCode {
    super::run_service(
        "operator",
        &config.log,
        || config.validate(),
        || run(config.clone()),
    )
}

async fn run(config: OperatorConfig) -> anyhow::Result<()> {
    let metrics = telemetry::prometheus();
    let client = kubernetes::client(config.kube.kubeconfig.as_deref())
        .await
        .map_err(anyhow::Error::msg)?;
    let lease_namespace = config
        .lease
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let identity = config
        .lease
        .identity
        .clone()
        .unwrap_or_else(default_identity);
    let settings = operator::Settings {
        watch: kubernetes::Settings {
            app_plans: true,
            namespaces: config.kube.namespaces.clone(),
            secret_label: config.kube.secret_label.clone(),
        },
        lease: LeaseSettings {
            namespace: lease_namespace,
            name: config.lease.lease_name.clone(),
            identity,
            duration: config.lease.lease_duration,
            renew_deadline: config.lease.renew_deadline,
            retry_period: config.lease.retry_period,
        },
    };
    let listener = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("cannot bind the admin listener on {}", config.admin_addr))?;
    let admin_addr = listener.local_addr()?;
    let readiness = Readiness::new(false);
    readiness.set_listening();
    let (stop_admin, admin_stop) = oneshot::channel::<()>();
    let router = admin::router(AdminState {
        readiness: readiness.clone(),
        metrics: Some(metrics),
    });
    let admin = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = admin_stop.await;
            })
            .await
    });
    tracing::info!(
        admin_addr = %admin_addr,
        lease = %format!("{}/{}", settings.lease.namespace, settings.lease.name),
        identity = settings.lease.identity,
        namespaces = ?settings.watch.namespaces,
        "operator starting"
    );
    operator::run(client, settings, readiness.clone(), async {
        let signal = shutdown::signal().await;
        tracing::info!(signal, "shutting down");
    })
    .await;
    let _ = stop_admin.send(());
    let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
    Ok(())
}

/// The host name (the pod name in a pod) and a random suffix, so two
/// processes on one host never share an identity.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "tollgate-operator".to_owned());
    format!("{host}-{:08x}", rand::random::<u32>())
}
