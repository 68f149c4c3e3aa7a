//! `tollgate serve`: configuration → telemetry → policies → TLS files →
//! store → bind → [`crate::server::run`] until SIGTERM/SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::oneshot;

use crate::clock::SystemClock;
use crate::config::ServeConfig;
use crate::pipeline::Deps;
use crate::policy::snapshot::Snapshot;
use crate::policy::source::{self, FileSource, kubernetes};
use crate::server::{self, Listeners, Readiness, ServerState, TlsListeners};
use crate::tls::ServerTls;
use crate::{shutdown, telemetry};

/// Runs the server; exit status 0 after a clean shutdown, 1 when start-up
/// or serving failed (the reason is logged), 2 for an unusable
/// configuration.
pub fn main(config: ServeConfig) -> ExitCode {
    super::run_service(
        "serve",
        &config.log,
        || config.validate(),
        || run(config.clone()),
    )
}

/// Everything after validation, inside the runtime.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    tracing::debug!(?config, "configuration");
    // Installed first, so start-up metrics (the policy version) land in it.
    let metrics = telemetry::prometheus();
    let (snapshot, readiness, policies) = PolicySource::start(&config).await?;
    let tls = load_tls(&config)?;
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(SystemClock);
    let store = config
        .store
        .build(clock.clone())
        .context("cannot set up the store")?;
    let deps = Deps {
        store,
        clock,
        settings: config.decision.settings()?,
    };
    let tracing = match config
        .trace
        .settings(|name| std::env::var(name).ok())
        .map_err(anyhow::Error::msg)?
    {
        Some(settings) => {
            let tracing = telemetry::trace::Tracing::start(&settings)?;
            tracing::info!(
                endpoint = settings.endpoint,
                sampler = ?settings.sampler,
                "exporting traces over OTLP/gRPC"
            );
            Some(tracing)
        }
        None => None,
    };
    let listeners =
        Listeners::bind_all(config.grpc_addr, config.admin_addr, config.metrics_addr).await?;

    let shared = Arc::new(ArcSwap::from_pointee(snapshot));
    let (stop_watcher, watcher_stop) = oneshot::channel::<()>();
    let watcher_stop = async {
        let _ = watcher_stop.await;
    };
    let watcher = match policies {
        PolicySource::Files(source) => tokio::spawn(source::watch_files(
            source,
            shared.clone(),
            source::DEFAULT_INTERVAL,
            watcher_stop,
        )),
        PolicySource::Kubernetes(client) => tokio::spawn(kubernetes::run(
            client,
            kubernetes::Settings {
                app_plans: false,
                namespaces: config.kube.namespaces.clone(),
                secret_label: config.kube.secret_label.clone(),
            },
            shared.clone(),
            readiness.clone(),
            watcher_stop,
        )),
    };
    let mut state = ServerState::new(shared, deps);
    state.readiness = readiness;
    state.metrics = Some(metrics);
    state.drain_timeout = config.drain_timeout;
    state.tls = tls;
    state.app_labels = std::sync::Arc::new(crate::telemetry::app_labels::AppLabels::new(
        config.metrics_app_labels,
    ));
    state.tracer = tracing.as_ref().map(telemetry::trace::Tracing::tracer);
    state.audit = config.audit.settings().map_err(anyhow::Error::msg)?;

    let served = server::run(listeners, state, async {
        let signal = shutdown::signal().await;
        tracing::info!(signal, "shutting down");
    })
    .await;
    let _ = stop_watcher.send(());
    let _ = watcher.await;
    if let Some(tracing) = tracing {
        tracing.flush().await;
    }
    Ok(served?)
}

/// Reads and checks every listener's certificate files: a missing file, a
/// key that does not match its certificate or an unusable CA stops the
/// start-up with the path and the reason.
fn load_tls(config: &ServeConfig) -> anyhow::Result<TlsListeners> {
    let plan = config.tls.plan(config.metrics_addr)?;
    let load = |settings: Option<crate::tls::TlsSettings>| -> anyhow::Result<Option<ServerTls>> {
        let Some(settings) = settings else {
            return Ok(None);
        };
        let role = settings.role.label();
        let tls = ServerTls::load(settings)
            .with_context(|| format!("cannot serve TLS on the {role} listener"))?;
        let serving = tls.serving();
        tracing::info!(
            listener = role,
            serial = %serving.leaf.serial,
            not_after = ?serving.leaf.not_after.map(|t| t.to_string()),
            client_certificates = if tls.requires_client_certificate() { "required" } else { "not requested" },
            "TLS certificate loaded"
        );
        Ok(Some(tls))
    };
    Ok(TlsListeners {
        grpc: load(plan.grpc)?,
        admin: load(plan.admin)?,
        metrics: load(plan.metrics)?,
        reload_interval: None,
    })
}

/// Where the policies come from, and what keeps them current.
enum PolicySource {
    /// Policy files, loaded (strictly) before serving, then polled.
    Files(FileSource),
    /// The cluster: nothing is served until the first full sync.
    Kubernetes(kube::Client),
}

impl PolicySource {
    /// The first snapshot, the readiness (ready at once for files, after
    /// the first sync for Kubernetes) and the source to watch.
    async fn start(config: &ServeConfig) -> anyhow::Result<(Snapshot, Readiness, Self)> {
        if config.kubernetes {
            let client = kubernetes::client(config.kube.kubeconfig.as_deref())
                .await
                .map_err(anyhow::Error::msg)?;
            tracing::info!(
                namespaces = ?config.kube.namespaces,
                secret_label = config.kube.secret_label,
                "watching policies in Kubernetes"
            );
            let readiness = Readiness::new(false);
            return Ok((Snapshot::default(), readiness, Self::Kubernetes(client)));
        }
        match source::load_initial(&config.policy_files) {
            Ok((snapshot, source)) => {
                tracing::info!(
                    files = ?config.policy_files,
                    policies = snapshot.policies.len(),
                    "policies loaded"
                );
                Ok((snapshot, Readiness::new(true), Self::Files(source)))
            }
            Err(error) => {
                // One line per problem, each naming file, document and field.
                let problems = error.to_string();
                for problem in problems.lines() {
                    tracing::error!(problem, "policy error");
                }
                anyhow::bail!(
                    "the policy files cannot be served ({} problem(s) logged above)",
                    problems.lines().count()
                );
            }
        }
    }
}
