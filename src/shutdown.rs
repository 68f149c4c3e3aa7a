//! Graceful shutdown: the signals that start it, and the bounded wait for
//! in-flight work.
//!
//! The order is [`crate::server::run`]'s: readiness fails first (gRPC health
//! `NOT_SERVING`, `/readyz` 503), then the gRPC listener closes and
//! in-flight `Check` calls finish, for at most the drain timeout, then the
//! process exits.

use std::future::Future;
use std::time::Duration;

/// How long in-flight calls get by default (`--drain-timeout`).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits for SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C) and
/// returns its name. If the handlers cannot be installed, the error is
/// logged and the future never completes: the server keeps running rather
/// than stopping at once.
pub async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = ctrl_c() => "SIGINT",
            },
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                ctrl_c().await
            }
        }
    }
    #[cfg(not(unix))]
    {
        ctrl_c().await
    }
}

async fn ctrl_c() -> &'static str {
    match tokio::signal::ctrl_c().await {
        Ok(()) => "SIGINT",
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending().await
        }
    }
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained<T> {
    /// Everything in flight finished.
    Completed(T),
    /// The timeout passed first; what was left is abandoned.
    TimedOut,
}

/// Waits for `work` for at most `timeout`.
pub async fn drain<F: Future>(work: F, timeout: Duration) -> Drained<F::Output> {
    match tokio::time::timeout(timeout, work).await {
        Ok(output) => Drained::Completed(output),
        Err(_) => Drained::TimedOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_is_bounded() {
        let slow = tokio::time::sleep(Duration::from_secs(60));
        assert_eq!(drain(slow, Duration::from_secs(5)).await, Drained::TimedOut);
        assert_eq!(
            drain(async { 7 }, Duration::from_secs(5)).await,
            Drained::Completed(7)
        );
    }
}
