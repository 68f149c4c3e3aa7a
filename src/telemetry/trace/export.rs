//! Span export off the request path: a bounded queue and one tokio task.
//!
//! A `Check` that ends a sampled span hands it to [`QueueProcessor::on_end`],
//! which only tries to put it on a bounded channel: it never waits, never
//! locks and never does I/O. When the queue is full (a collector that is
//! slow or down), the span is dropped and counted in
//! `tollgate_trace_spans_dropped_total{reason="queue_full"}`. One task
//! drains the queue into batches and exports them, one export at a time,
//! each bounded by the export timeout; a failed or timed-out export drops
//! its batch (`reason="export_failed"`). So a collector can only ever cost
//! the spans, never a `Check`'s latency or answer.
//!
//! Why not the SDK's `BatchSpanProcessor`: it runs on a thread of its own,
//! blocking on the exporter's futures, and reports dropped spans only in
//! its own log at shutdown; here the drops are a Prometheus counter an
//! alert can watch, and the export runs on the server's tokio runtime.
//!
//! Settings follow the OpenTelemetry SDK environment variables
//! (`OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`,
//! `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_EXPORT_TIMEOUT`, milliseconds).

use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{mpsc, oneshot};

/// Counter of spans not exported: label `reason` (`queue_full`,
/// `export_failed`).
pub const SPANS_DROPPED_TOTAL: &str = "tollgate_trace_spans_dropped_total";
/// Counter of spans the collector accepted.
pub const SPANS_EXPORTED_TOTAL: &str = "tollgate_trace_spans_exported_total";

/// Queue and batch sizes, and how long to wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSettings {
    /// Spans waiting for export at most; more are dropped.
    pub max_queue: usize,
    /// Spans per export at most.
    pub max_batch: usize,
    /// How long a span may wait for a batch to fill.
    pub delay: Duration,
    /// How long one export may take before its batch is dropped.
    pub export_timeout: Duration,
}

impl Default for QueueSettings {
    /// The OpenTelemetry specification's batch processor defaults.
    fn default() -> Self {
        Self {
            max_queue: 2048,
            max_batch: 512,
            delay: Duration::from_millis(5000),
            export_timeout: Duration::from_millis(30_000),
        }
    }
}

impl QueueSettings {
    /// The defaults, overridden by the `OTEL_BSP_*` variables `var` returns.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut settings = Self::default();
        let number = |name: &str| -> Result<Option<u64>, String> {
            match var(name) {
                None => Ok(None),
                Some(text) => match text.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(format!("{name}={text:?} is not a positive integer")),
                },
            }
        };
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        if let Some(n) = number("OTEL_BSP_MAX_QUEUE_SIZE")? {
            settings.max_queue = size(n);
        }
        if let Some(n) = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")? {
            settings.max_batch = size(n);
        }
        if let Some(ms) = number("OTEL_BSP_SCHEDULE_DELAY")? {
            settings.delay = Duration::from_millis(ms);
        }
        if let Some(ms) = number("OTEL_BSP_EXPORT_TIMEOUT")? {
            settings.export_timeout = Duration::from_millis(ms);
        }
        // The specification: a batch never exceeds the queue.
        settings.max_batch = settings.max_batch.min(settings.max_queue);
        Ok(settings)
    }
}

enum Message {
    Span(Box<SpanData>),
    Flush(oneshot::Sender<()>),
}

/// The span processor: enqueues ended spans without waiting.
#[derive(Debug)]
pub struct QueueProcessor {
    queue: mpsc::Sender<Message>,
}

/// Asks the export task to send what it holds (at shutdown).
#[derive(Clone, Debug)]
pub struct Flusher {
    queue: mpsc::Sender<Message>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Span(_) => f.write_str("Span"),
            Message::Flush(_) => f.write_str("Flush"),
        }
    }
}

/// Starts the export task on the current tokio runtime.
pub fn spawn<E: SpanExporter + 'static>(
    exporter: E,
    settings: QueueSettings,
) -> (QueueProcessor, Flusher) {
    // The first handles register both series at 0, so dashboards and
    // alerts see them before the first drop.
    for reason in ["queue_full", "export_failed"] {
        metrics::counter!(SPANS_DROPPED_TOTAL, "reason" => reason).increment(0);
    }
    metrics::counter!(SPANS_EXPORTED_TOTAL).increment(0);
    let (queue, receiver) = mpsc::channel(settings.max_queue.max(1));
    tokio::spawn(run(exporter, receiver, settings));
    (
        QueueProcessor {
            queue: queue.clone(),
        },
        Flusher { queue },
    )
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.try_send(Message::Span(Box::new(span))).is_err() {
            metrics::counter!(SPANS_DROPPED_TOTAL, "reason" => "queue_full").increment(1);
        }
    }

    /// Asks for a flush without waiting (this is called from synchronous
    /// code); [`Flusher::flush`] is the awaitable form.
    fn force_flush(&self) -> OTelSdkResult {
        let (done, _) = oneshot::channel();
        let _ = self.queue.try_send(Message::Flush(done));
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.force_flush()
    }
}

impl Flusher {
    /// Exports every queued span, waiting at most `limit`.
    pub async fn flush(&self, limit: Duration) -> bool {
        let (done, finished) = oneshot::channel();
        let flushed =
            async { self.queue.send(Message::Flush(done)).await.is_ok() && finished.await.is_ok() };
        tokio::time::timeout(limit, flushed).await.unwrap_or(false)
    }
}

/// The export task: batches by size or delay, one export at a time.
async fn run<E: SpanExporter>(
    exporter: E,
    mut queue: mpsc::Receiver<Message>,
    settings: QueueSettings,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(settings.max_batch);
    let mut warned: Option<Instant> = None;
    // The first tick one delay from now: an immediate one would export
    // whatever single span had arrived.
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + settings.delay, settings.delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = queue.recv() => match message {
                Some(Message::Span(span)) => {
                    batch.push(*span);
                    if batch.len() >= settings.max_batch {
                        export(&exporter, &mut batch, &settings, &mut warned).await;
                    }
                }
                Some(Message::Flush(done)) => {
                    while let Ok(message) = queue.try_recv() {
                        match message {
                            Message::Span(span) => batch.push(*span),
                            Message::Flush(other) => { let _ = other.send(()); }
                        }
                        if batch.len() >= settings.max_batch {
                            export(&exporter, &mut batch, &settings, &mut warned).await;
                        }
                    }
                    export(&exporter, &mut batch, &settings, &mut warned).await;
                    let _ = done.send(());
                }
                None => {
                    export(&exporter, &mut batch, &settings, &mut warned).await;
                    return;
                }
            },
            _ = tick.tick() => export(&exporter, &mut batch, &settings, &mut warned).await,
        }
    }
}

/// How often an export failure is logged at most.
const WARN_INTERVAL: Duration = Duration::from_secs(60);

async fn export<E: SpanExporter>(
    exporter: &E,
    batch: &mut Vec<SpanData>,
    settings: &QueueSettings,
    warned: &mut Option<Instant>,
) {
    if batch.is_empty() {
        return;
    }
    let spans = std::mem::replace(batch, Vec::with_capacity(settings.max_batch));
    let count = spans.len() as u64;
    let failure = match tokio::time::timeout(settings.export_timeout, exporter.export(spans)).await
    {
        Ok(Ok(())) => {
            metrics::counter!(SPANS_EXPORTED_TOTAL).increment(count);
            return;
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("no answer within {:?}", settings.export_timeout),
    };
    metrics::counter!(SPANS_DROPPED_TOTAL, "reason" => "export_failed").increment(count);
    if warned.is_none_or(|at| at.elapsed() >= WARN_INTERVAL) {
        *warned = Some(Instant::now());
        tracing::warn!(
            spans = count,
            error = %failure,
            "trace export failed; spans dropped (logged at most once a minute, counted in {SPANS_DROPPED_TOTAL})"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::error::OTelSdkError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// Records batches; optionally fails or never answers.
    #[derive(Clone, Debug, Default)]
    struct Recorder {
        batches: Arc<Mutex<Vec<usize>>>,
        calls: Arc<AtomicUsize>,
        mode: Mode,
    }

    #[derive(Clone, Copy, Debug, Default)]
    enum Mode {
        #[default]
        Accept,
        Fail,
        Hang,
    }

    impl SpanExporter for Recorder {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.mode {
                Mode::Accept => {
                    self.batches.lock().unwrap().push(batch.len());
                    Ok(())
                }
                Mode::Fail => Err(OTelSdkError::InternalFailure("collector down".into())),
                Mode::Hang => std::future::pending().await,
            }
        }
    }

    fn span() -> SpanData {
        use opentelemetry::trace::{
            SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
        };
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(7u128),
                SpanId::from(9u64),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "test".into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            end_time: std::time::SystemTime::UNIX_EPOCH,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    fn settings(max_queue: usize, max_batch: usize) -> QueueSettings {
        QueueSettings {
            max_queue,
            max_batch,
            delay: Duration::from_secs(3600),
            export_timeout: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn batches_by_size_and_flushes_the_rest() {
        let recorder = Recorder::default();
        let (processor, flusher) = spawn(recorder.clone(), settings(100, 4));
        for _ in 0..10 {
            processor.on_end(span());
        }
        assert!(flusher.flush(Duration::from_secs(10)).await);
        assert_eq!(*recorder.batches.lock().unwrap(), [4, 4, 2]);
    }

    /// The request path's side: with the exporter stuck, `on_end` still
    /// returns at once, and what does not fit the queue is dropped (the
    /// counter is checked in the end-to-end test; here, the exporter sees
    /// at most one batch plus the queue).
    #[tokio::test]
    async fn a_stuck_collector_never_blocks_on_end() {
        let recorder = Recorder {
            mode: Mode::Hang,
            ..Recorder::default()
        };
        let (processor, _flusher) = spawn(recorder.clone(), settings(8, 2));
        // 1,000 spans into a queue of 8 with an exporter that never
        // answers: this loop would hang if on_end waited for room.
        for _ in 0..1000 {
            processor.on_end(span());
        }
        tokio::task::yield_now().await;
        assert!(recorder.calls.load(Ordering::SeqCst) <= 1);
    }

    #[tokio::test]
    async fn failed_and_timed_out_exports_drop_their_batch_and_go_on() {
        for mode in [Mode::Fail, Mode::Hang] {
            let recorder = Recorder {
                mode,
                ..Recorder::default()
            };
            let (processor, flusher) = spawn(recorder.clone(), settings(100, 2));
            for _ in 0..4 {
                processor.on_end(span());
            }
            // Each export fails (or times out after 200 ms); the task goes
            // on to the next batch and the flush completes.
            assert!(flusher.flush(Duration::from_secs(10)).await, "{mode:?}");
            assert_eq!(recorder.calls.load(Ordering::SeqCst), 2, "{mode:?}");
        }
    }

    #[test]
    fn settings_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            QueueSettings::from_env(env(&[])),
            Ok(QueueSettings::default())
        );
        let set = QueueSettings::from_env(env(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "1000"),
        ]))
        .unwrap();
        assert_eq!(set.max_queue, 100);
        assert_eq!(set.max_batch, 100, "a batch never exceeds the queue");
        assert_eq!(set.delay, Duration::from_millis(250));
        assert_eq!(set.export_timeout, Duration::from_secs(1));
        assert!(QueueSettings::from_env(env(&[("OTEL_BSP_SCHEDULE_DELAY", "soon")])).is_err());
        assert!(QueueSettings::from_env(env(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0")])).is_err());
    }
}
