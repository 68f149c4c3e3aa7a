//! Logs and metrics.
//!
//! Logs go to stderr through `tracing`, as text for people or as one JSON
//! object per line for collectors (fields flattened to the top level, so
//! `{"level":"INFO","message":"listening","grpc_addr":"…",…}`). The filter
//! is `--log-level` (a `tracing` directive such as `info` or
//! `tollgate=debug`), else `RUST_LOG`, else `info`.
//!
//! Metrics use the `metrics` facade with a Prometheus recorder that
//! [`crate::admin`] renders on `/metrics`. The recorder is process-wide and
//! installed at most once ([`prometheus`]), so several servers in one test
//! process share it. Histograms use [`LATENCY_BUCKETS`], fine enough for
//! sub-millisecond decisions.

pub mod app_labels;
pub mod audit;
pub mod handles;
pub mod trace;

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, event fields at the top level.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log level {0:?}: {1}")]
    Filter(String, String),
    #[error("a global log subscriber is already installed")]
    AlreadyInstalled,
}

/// Installs the global log subscriber.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<(), TelemetryError> {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level)
            .map_err(|e| TelemetryError::Filter(level.to_owned(), e.to_string()))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadyInstalled)
}

/// Histogram buckets in seconds: 25 µs to 1 s. A decision without a store
/// round trip takes tens of microseconds; one with Redis about a
/// millisecond; the store timeout caps the tail at tens of milliseconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0,
];

/// The process-wide Prometheus handle. The first call builds the recorder
/// and installs it as the global `metrics` recorder; if another recorder was
/// installed first (a test harness), the handle still renders, just without
/// tollgate's metrics, and a warning says so.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = match builder.set_buckets(LATENCY_BUCKETS) {
                Ok(builder) => builder,
                // Only fails for an empty bucket list.
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will be empty");
            } else {
                handles::mark_installed();
            }
            describe_metrics();
            handle
        })
        .clone()
}

/// `tollgate_build_info{version}`: 1, the conventional way to see which
/// version each replica runs.
pub const BUILD_INFO: &str = "tollgate_build_info";

/// Keeps the recorder's histograms bounded when nobody scrapes `/metrics`.
pub async fn metrics_upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// Help texts of the metrics this crate's server records.
fn describe_metrics() {
    use crate::grpc::service::{CHECK_DURATION, CHECKS_TOTAL};
    use trace::export::{SPANS_DROPPED_TOTAL, SPANS_EXPORTED_TOTAL};
    metrics::describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which tollgate runs"
    );
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::describe_counter!(
        SPANS_DROPPED_TOTAL,
        "Trace spans not exported, by reason (queue_full, export_failed)"
    );
    metrics::describe_counter!(
        SPANS_EXPORTED_TOTAL,
        "Trace spans the OTLP collector accepted"
    );
    metrics::describe_counter!(
        CHECKS_TOTAL,
        "Check decisions by policy, outcome (allow, deny, dry_run_deny) and reason"
    );
    metrics::describe_histogram!(
        CHECK_DURATION,
        metrics::Unit::Seconds,
        "Time to decide one Check call"
    );
    metrics::describe_counter!(
        crate::tls::HANDSHAKES_TOTAL,
        "TLS handshakes on tollgate's listeners by listener and result (accepted, or why refused)"
    );
    metrics::describe_counter!(
        crate::tls::RELOADS_TOTAL,
        "TLS certificate file changes applied (success) or refused (error), by listener"
    );
    metrics::describe_gauge!(
        crate::tls::CERTIFICATE_EXPIRY,
        metrics::Unit::Seconds,
        "When the serving TLS certificate expires (notAfter, Unix time), by listener"
    );
}
