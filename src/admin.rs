//! The admin HTTP port (`--admin-addr`): what Kubernetes probes and
//! Prometheus scrape.
//!
//! | path | answer |
//! |---|---|
//! | `/healthz` | 200 while the process runs (liveness) |
//! | `/readyz` | 200 once the listeners are bound and a policy snapshot is loaded; 503 before that and while draining |
//! | `/metrics` | Prometheus text format |
//!
//! The port carries no credentials and changes nothing; bind it where only
//! the cluster can reach it. With `--metrics-addr`, `/metrics` moves to a
//! listener of its own ([`Serves::Metrics`]) and the admin port answers the
//! probes only ([`Serves::Probes`]): kubelet probes need no certificate,
//! while the metrics listener can require one (`--metrics-client-ca`).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::server::{Readiness, ReadyState};

/// What the admin handlers read.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub readiness: Readiness,
    /// `None` serves `/metrics` as 404 (metrics disabled).
    pub metrics: Option<PrometheusHandle>,
}

/// Which paths a listener answers (others are 404).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serves {
    /// `/healthz`, `/readyz` and `/metrics`: the admin port alone.
    All,
    /// `/healthz` and `/readyz`: the admin port beside a metrics listener.
    Probes,
    /// `/metrics`: the metrics listener.
    Metrics,
}

/// The admin router with every path.
pub fn router(state: AdminState) -> Router {
    routes(state, Serves::All)
}

/// A router answering the paths `serves` names.
pub fn routes(state: AdminState, serves: Serves) -> Router {
    let mut router = Router::new();
    if serves != Serves::Metrics {
        router = router
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz));
    }
    router = match serves {
        Serves::All | Serves::Metrics => router.route("/metrics", get(metrics)),
        Serves::Probes => router.route("/metrics", get(metrics_elsewhere)),
    };
    router.with_state(state)
}

async fn metrics_elsewhere() -> Response {
    (
        StatusCode::NOT_FOUND,
        "metrics are served on the metrics listener (--metrics-addr)\n",
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    match state.readiness.state() {
        ReadyState::Ready => (StatusCode::OK, "ready\n").into_response(),
        ReadyState::NoSnapshot if state.readiness.waiting().is_some() => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {} ({})\n",
                ReadyState::NoSnapshot.describe(),
                state.readiness.waiting().unwrap_or_default()
            ),
        )
            .into_response(),
        not_ready => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", not_ready.describe()),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are disabled\n").into_response(),
    }
}
