//! An OTLP trace receiver: the `opentelemetry.proto.collector.trace.v1.
//! TraceService/Export` gRPC method on the opentelemetry-proto types, on
//! `127.0.0.1:0`, in a thread of its own. Envoy's OpenTelemetry tracer and
//! tollgate both export to it; tests read what arrived as [`ReceivedSpan`]s.
//!
//! [`OtlpReceiver::hanging`] accepts calls and never answers them (a
//! collector that is stuck); [`OtlpReceiver::stop`] closes the port (a
//! collector that is down).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use tokio::sync::oneshot;

use super::wait_for;

/// One span as the receiver got it; ids in lower-case hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP `SpanKind` (2 = server, 3 = client).
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
    /// OTLP status code (0 unset, 1 ok, 2 error).
    pub status_code: i32,
}

impl ReceivedSpan {
    /// An attribute's value as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Requests received (hanging or not).
    calls: Arc<Mutex<usize>>,
    hang: bool,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        *self.calls.lock().unwrap() += 1;
        if self.hang {
            std::future::pending::<()>().await;
        }
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .map(text)
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| {
                                (
                                    kv.key.clone(),
                                    kv.value.as_ref().map(text).unwrap_or_default(),
                                )
                            })
                            .collect(),
                        status_code: span.status.map_or(0, |s| s.code),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// A running receiver; stopped when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    receiver: Receiver,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// A receiver that records every span.
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// A receiver that takes calls and never answers (a stuck collector).
    pub fn hanging() -> Self {
        Self::launch(true)
    }

    fn launch(hang: bool) -> Self {
        let receiver = Receiver {
            hang,
            ..Receiver::default()
        };
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let service = receiver.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                let serve = tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(service))
                    .serve_with_incoming(incoming);
                // Stopping drops the server future: the port closes and,
                // with the runtime, every connection.
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
            runtime.shutdown_timeout(Duration::from_millis(500));
        });
        Self {
            addr,
            receiver,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The address Envoy's `otlp` cluster points at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint for `tollgate serve --otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.receiver.spans.lock().unwrap().clone()
    }

    /// Export calls received so far (answered or not).
    pub fn calls(&self) -> usize {
        *self.receiver.calls.lock().unwrap()
    }

    /// Waits (bounded) until the spans received satisfy `found`.
    pub fn wait_for<T>(&self, what: &str, found: impl Fn(&[ReceivedSpan]) -> Option<T>) -> T {
        wait_for(what, Duration::from_secs(30), || found(&self.spans()))
    }

    /// Closes the port: later exports find no collector.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            for span in self.spans() {
                eprintln!("--- received span: {span:?}");
            }
        }
    }
}
