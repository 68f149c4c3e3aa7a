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
//! the cluster can reach it.

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

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
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
