//! Runs the data plane on already-bound listeners: the gRPC port
//! (`Authorization/Check`, gRPC health, gRPC reflection), the admin HTTP
//! port ([`crate::admin`]) and, when asked, a metrics port of its own.
//! Each may serve TLS ([`crate::tls`]): the handshakes then run in
//! tollgate's accept loop and only finished connections reach tonic and
//! axum, and the certificate files are watched for rotation.
//!
//! [`run`] takes bound [`Listeners`] and a shutdown future, so the binary
//! binds `--grpc-addr`/`--admin-addr` and tests bind `127.0.0.1:0` and drive
//! the very same server. Lifecycle:
//!
//! 1. gRPC health starts `NOT_SERVING` and `/readyz` 503;
//! 2. the listeners serve; once a policy snapshot is loaded, health turns
//!    `SERVING` and `/readyz` 200, and `listening` is logged with
//!    `grpc_addr`, `admin_addr` and `metrics_addr`;
//! 3. when `shutdown` completes, readiness fails first (`NOT_SERVING`,
//!    503), then the gRPC listener closes and in-flight calls finish, for at
//!    most the drain timeout; then the store hands back what it holds
//!    locally (quota leases' unused units, usage: [`crate::store::Store::shutdown`]),
//!    the admin and metrics ports stop and `run` returns.

use crate::telemetry::app_labels::AppLabels;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::{self, AdminState, Serves};
use crate::grpc::pb;
use crate::grpc::service::{CheckServer, CheckService, SERVICE_NAME};
use crate::pipeline::Deps;
use crate::policy::snapshot::SharedSnapshot;
use crate::shutdown::{self, DEFAULT_DRAIN_TIMEOUT, Drained};
use crate::telemetry;
use crate::tls::{self, ServerTls, TlsIncoming};

/// How long the admin port may take to close after the gRPC drain.
const ADMIN_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the server could not start or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind the {role} listener on {addr}: {source}")]
    Bind {
        role: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the bound address: {0}")]
    LocalAddr(std::io::Error),
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("the {0} server failed: {1}")]
    Http(&'static str, std::io::Error),
    #[error("the {0} server stopped unexpectedly")]
    Stopped(&'static str),
    #[error("the {0} server task panicked")]
    Panicked(&'static str),
}

/// The bound listeners.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
    /// `/metrics` on its own listener (`--metrics-addr`); `None` serves
    /// it on the admin port.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the gRPC and admin addresses (port 0 picks a free port).
    pub async fn bind(grpc: SocketAddr, admin: SocketAddr) -> Result<Self, ServerError> {
        Self::bind_all(grpc, admin, None).await
    }

    /// Binds the gRPC and admin addresses, and the metrics address when
    /// given.
    pub async fn bind_all(
        grpc: SocketAddr,
        admin: SocketAddr,
        metrics: Option<SocketAddr>,
    ) -> Result<Self, ServerError> {
        let bind = |role, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { role, addr, source })
        };
        Ok(Self {
            grpc: bind("gRPC", grpc).await?,
            admin: bind("admin", admin).await?,
            metrics: match metrics {
                Some(addr) => Some(bind("metrics", addr).await?),
                None => None,
            },
        })
    }

    /// The bound metrics address, when `/metrics` has its own listener.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ServerError> {
        self.metrics
            .as_ref()
            .map(|listener| listener.local_addr().map_err(ServerError::LocalAddr))
            .transpose()
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> Result<SocketAddr, ServerError> {
        self.grpc.local_addr().map_err(ServerError::LocalAddr)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Result<SocketAddr, ServerError> {
        self.admin.local_addr().map_err(ServerError::LocalAddr)
    }
}

/// Everything [`run`] serves with.
#[derive(Clone, Debug)]
pub struct ServerState {
    /// The policies, swapped atomically by the policy source.
    pub snapshot: SharedSnapshot,
    /// Store, clock and decision settings.
    pub deps: Deps,
    /// Readiness shared with the policy source and the admin port.
    pub readiness: Readiness,
    /// The Prometheus handle `/metrics` renders (see
    /// [`telemetry::prometheus`]); `None` disables `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// How long in-flight calls may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Per-app metric labels (off unless given a limit).
    pub app_labels: Arc<AppLabels>,
    /// A span per Check when tracing ([`telemetry::trace`]); `None` traces
    /// nothing.
    pub tracer: Option<telemetry::trace::CheckTracer>,
    /// Audit log settings ([`telemetry::audit`]).
    pub audit: telemetry::audit::Audit,
    /// TLS per listener (plaintext where `None`).
    pub tls: TlsListeners,
}

/// The TLS configuration of each listener, loaded at start-up
/// ([`ServerTls::load`]); [`run`] watches their files for rotation.
#[derive(Clone, Debug, Default)]
pub struct TlsListeners {
    pub grpc: Option<ServerTls>,
    pub admin: Option<ServerTls>,
    pub metrics: Option<ServerTls>,
    /// How often the certificate files are read; `None`:
    /// [`tls::reload::DEFAULT_INTERVAL`].
    pub reload_interval: Option<Duration>,
}

impl TlsListeners {
    fn all(&self) -> impl Iterator<Item = &ServerTls> {
        [&self.grpc, &self.admin, &self.metrics]
            .into_iter()
            .flatten()
    }
}

/// How a listener is secured, for the `listening` line.
fn tls_mode(tls: Option<&ServerTls>) -> &'static str {
    match tls {
        None => "off",
        Some(tls) if tls.requires_client_certificate() => "mutual",
        Some(_) => "on",
    }
}

impl ServerState {
    /// A state serving `snapshot`, which counts as loaded.
    pub fn new(snapshot: SharedSnapshot, deps: Deps) -> Self {
        Self {
            snapshot,
            deps,
            readiness: Readiness::new(true),
            metrics: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            app_labels: Arc::new(AppLabels::new(0)),
            tracer: None,
            audit: telemetry::audit::Audit::default(),
            tls: TlsListeners::default(),
        }
    }
}

/// Whether the server should receive traffic: listeners serving, a policy
/// snapshot loaded, and not draining. Cheap to clone; every clone sees the
/// same state.
#[derive(Clone, Debug)]
pub struct Readiness {
    flags: Arc<watch::Sender<Flags>>,
    /// What a source still waits for before its first snapshot (shown by
    /// `/readyz`).
    waiting: Arc<std::sync::Mutex<String>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Flags {
    snapshot_loaded: bool,
    listening: bool,
    draining: bool,
}

/// The readiness as probes see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyState {
    Ready,
    /// No policy snapshot yet (a source still loading).
    NoSnapshot,
    /// The listeners are not serving yet.
    NotListening,
    /// Shutting down.
    Draining,
}

impl ReadyState {
    /// A short explanation for `/readyz`.
    pub fn describe(self) -> &'static str {
        match self {
            ReadyState::Ready => "ready",
            ReadyState::NoSnapshot => "no policy snapshot loaded yet",
            ReadyState::NotListening => "listeners not serving yet",
            ReadyState::Draining => "draining",
        }
    }
}

impl Flags {
    fn state(self) -> ReadyState {
        if self.draining {
            ReadyState::Draining
        } else if !self.snapshot_loaded {
            ReadyState::NoSnapshot
        } else if !self.listening {
            ReadyState::NotListening
        } else {
            ReadyState::Ready
        }
    }
}

impl Readiness {
    /// A new readiness; `snapshot_loaded` is false for sources that load
    /// after start-up (they call [`Readiness::set_snapshot_loaded`]).
    pub fn new(snapshot_loaded: bool) -> Self {
        let (flags, _) = watch::channel(Flags {
            snapshot_loaded,
            ..Flags::default()
        });
        Self {
            flags: Arc::new(flags),
            waiting: Arc::default(),
        }
    }

    /// Records what the policy source waits for before its first snapshot.
    pub fn set_waiting(&self, detail: String) {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = detail;
    }

    /// What the policy source waits for, if it said.
    pub fn waiting(&self) -> Option<String> {
        let detail = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        (!detail.is_empty()).then(|| detail.clone())
    }

    /// Records that a policy snapshot is being served.
    pub fn set_snapshot_loaded(&self) {
        self.flags.send_modify(|f| f.snapshot_loaded = true);
    }

    /// Records that the listeners serve (for processes that bind their
    /// own, like the operator's admin port).
    pub fn set_listening(&self) {
        self.flags.send_modify(|f| f.listening = true);
    }

    fn set_draining(&self) {
        self.flags.send_modify(|f| f.draining = true);
    }

    /// The current state.
    pub fn state(&self) -> ReadyState {
        self.flags.borrow().state()
    }

    /// True when traffic should come.
    pub fn is_ready(&self) -> bool {
        self.state() == ReadyState::Ready
    }
}

/// Serves until `shutdown` completes, then drains (see the module docs).
pub async fn run(
    listeners: Listeners,
    state: ServerState,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let grpc_addr = listeners.grpc_addr()?;
    let admin_addr = listeners.admin_addr()?;
    let metrics_addr = listeners.metrics_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    // The reporter starts the overall service ("") as SERVING: not yet.
    set_health(&health, false).await;
    let (mut grpc, stop_grpc) = spawn_grpc(listeners.grpc, &state, health_service)?;
    let mut http = HttpServers::spawn(listeners.admin, listeners.metrics, &state)?;
    let watchers = TlsWatchers::spawn(&state.tls);

    let upkeep = state
        .metrics
        .clone()
        .map(|handle| tokio::spawn(telemetry::metrics_upkeep(handle)));
    let mirror = tokio::spawn(mirror_health(
        state.readiness.flags.subscribe(),
        health.clone(),
    ));
    state.readiness.set_listening();
    tracing::info!(
        grpc_addr = %grpc_addr,
        admin_addr = %admin_addr,
        metrics_addr = %metrics_addr.unwrap_or(admin_addr),
        grpc_tls = tls_mode(state.tls.grpc.as_ref()),
        admin_tls = tls_mode(state.tls.admin.as_ref()),
        store = state.deps.store.kind(),
        "listening"
    );

    tokio::pin!(shutdown);
    let failed = tokio::select! {
        () = &mut shutdown => None,
        joined = &mut grpc => Some(grpc_outcome("gRPC", joined)),
        failed = http.failed() => Some(failed),
    };
    watchers.stop();

    // Readiness fails before anything stops, so probes and Envoy's health
    // checks move traffic away while in-flight calls still complete.
    state.readiness.set_draining();
    mirror.abort();
    let _ = mirror.await;
    set_health(&health, false).await;

    if let Some(error) = failed {
        grpc.abort();
        http.abort();
        if let Some(upkeep) = upkeep {
            upkeep.abort();
        }
        state.deps.store.shutdown().await;
        return Err(error);
    }

    tracing::info!(drain_timeout = ?state.drain_timeout, "draining");
    let _ = stop_grpc.send(());
    let result = match shutdown::drain(&mut grpc, state.drain_timeout).await {
        Drained::Completed(joined) => match grpc_outcome("gRPC", joined) {
            ServerError::Stopped(_) => Ok(()),
            error => Err(error),
        },
        Drained::TimedOut => {
            tracing::warn!(
                drain_timeout = ?state.drain_timeout,
                "in-flight calls did not finish within the drain timeout; abandoning them"
            );
            grpc.abort();
            Ok(())
        }
    };

    // In-flight checks are done: hand back what the store holds locally
    // (leases' unused units, usage counted here), bounded.
    state.deps.store.shutdown().await;
    http.stop().await;
    if let Some(upkeep) = upkeep {
        upkeep.abort();
    }
    tracing::info!("stopped");
    result
}

type GrpcTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;
type HttpTask = tokio::task::JoinHandle<std::io::Result<()>>;

/// Starts the gRPC server (Check, health, reflection) on `listener`, over
/// TLS when the state says so; sending on the returned channel starts its
/// graceful stop.
fn spawn_grpc(
    listener: TcpListener,
    state: &ServerState,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> Result<(GrpcTask, oneshot::Sender<()>), ServerError> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // grpcurl and older tools still ask v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let check = CheckServer::new(
        CheckService::new(state.snapshot.clone(), state.deps.clone())
            .with_app_labels(state.app_labels.clone())
            .with_tracer(state.tracer.clone())
            .with_audit(state.audit),
    );
    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(check);
    let (stop, stopped) = oneshot::channel::<()>();
    let stopped = async {
        let _ = stopped.await;
    };
    let task = match &state.tls.grpc {
        None => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
        Some(tls) => {
            let incoming =
                TlsIncoming::spawn(listener, tls.clone()).map_err(ServerError::LocalAddr)?;
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    };
    Ok((task, stop))
}

/// The admin server and, with `--metrics-addr`, the metrics server.
struct HttpServers {
    admin: HttpTask,
    metrics: Option<HttpTask>,
    stop: watch::Sender<bool>,
}

impl HttpServers {
    fn spawn(
        admin: TcpListener,
        metrics: Option<TcpListener>,
        state: &ServerState,
    ) -> Result<Self, ServerError> {
        let admin_state = AdminState {
            readiness: state.readiness.clone(),
            metrics: state.metrics.clone(),
        };
        let (stop, stopped) = watch::channel(false);
        let serves = if metrics.is_some() {
            Serves::Probes
        } else {
            Serves::All
        };
        let admin = spawn_http(
            admin,
            state.tls.admin.clone(),
            admin::routes(admin_state.clone(), serves),
            stopped.clone(),
        )?;
        let metrics = metrics
            .map(|listener| {
                spawn_http(
                    listener,
                    state.tls.metrics.clone(),
                    admin::routes(admin_state, Serves::Metrics),
                    stopped,
                )
            })
            .transpose()?;
        Ok(Self {
            admin,
            metrics,
            stop,
        })
    }

    /// Completes when either server ends on its own (always an error
    /// before shutdown).
    async fn failed(&mut self) -> ServerError {
        let metrics = async {
            match self.metrics.as_mut() {
                Some(server) => http_outcome("metrics", server.await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            joined = &mut self.admin => http_outcome("admin", joined),
            failed = metrics => failed,
        }
    }

    fn abort(&self) {
        self.admin.abort();
        if let Some(metrics) = &self.metrics {
            metrics.abort();
        }
    }

    /// Stops both, letting requests in flight finish (bounded).
    async fn stop(self) {
        let _ = self.stop.send(true);
        for mut server in std::iter::once(self.admin).chain(self.metrics) {
            if let Drained::TimedOut = shutdown::drain(&mut server, ADMIN_STOP_TIMEOUT).await {
                server.abort();
            }
        }
    }
}

/// The certificate file watchers of the TLS listeners.
struct TlsWatchers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TlsWatchers {
    fn spawn(tls: &TlsListeners) -> Self {
        let interval = tls.reload_interval.unwrap_or(tls::reload::DEFAULT_INTERVAL);
        let tasks = tls
            .all()
            .map(|listener| tokio::spawn(listener.clone().watch(interval, std::future::pending())))
            .collect();
        Self { tasks }
    }

    /// Rotation stops with the shutdown (a watcher holds no state worth
    /// finishing): connections being drained keep the configuration they
    /// were accepted with.
    fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Maps how the gRPC task ended; `Stopped` means it ended cleanly.
fn grpc_outcome(
    role: &'static str,
    joined: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> ServerError {
    match joined {
        Ok(Ok(())) => ServerError::Stopped(role),
        Ok(Err(error)) => ServerError::Grpc(error),
        Err(_) => ServerError::Panicked(role),
    }
}

fn http_outcome(
    role: &'static str,
    joined: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> ServerError {
    match joined {
        Ok(Ok(())) => ServerError::Stopped(role),
        Ok(Err(error)) => ServerError::Http(role, error),
        Err(_) => ServerError::Panicked(role),
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop`
/// turns true, then lets requests in flight finish.
fn spawn_http(
    listener: TcpListener,
    tls: Option<ServerTls>,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> Result<HttpTask, ServerError> {
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    Ok(match tls {
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }),
        Some(tls) => {
            let incoming = TlsIncoming::spawn(listener, tls).map_err(ServerError::LocalAddr)?;
            tokio::spawn(async move {
                axum::serve(incoming, app)
                    .with_graceful_shutdown(stopped)
                    .await
            })
        }
    })
}

/// Keeps gRPC health in step with readiness.
async fn mirror_health(mut flags: watch::Receiver<Flags>, health: HealthReporter) {
    loop {
        let ready = flags.borrow_and_update().state() == ReadyState::Ready;
        set_health(&health, ready).await;
        if flags.changed().await.is_err() {
            return;
        }
    }
}

/// Sets the overall ("") and the `Authorization` service status.
async fn set_health(health: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_snapshot_and_listeners_and_fails_on_drain() {
        let readiness = Readiness::new(false);
        assert_eq!(readiness.state(), ReadyState::NoSnapshot);
        readiness.set_snapshot_loaded();
        assert_eq!(readiness.state(), ReadyState::NotListening);
        readiness.set_listening();
        assert!(readiness.is_ready());
        let clone = readiness.clone();
        readiness.set_draining();
        assert_eq!(clone.state(), ReadyState::Draining);
    }
}
