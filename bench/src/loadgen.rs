//! The load generator: closed loop (a fixed number of requests in flight,
//! each caller sending its next request when the previous one answered)
//! and open loop (requests started at a fixed rate whatever the answers,
//! so latency is measured without the closed loop's queueing).
//!
//! A [`Caller`] is one slot in flight: an HTTP/1.1 keep-alive connection
//! ([`HttpCaller`]), or one outstanding gRPC `Check` on a shared HTTP/2
//! connection ([`GrpcCaller`]).
//!
//! **Open-loop timing.** Tickets are due every `1/rate` seconds from the
//! start; a free caller takes the next ticket and sends when it is due. A
//! ticket sent late because every caller was busy is charged from its due
//! time (no coordinated omission). tokio's timer fires on 1 ms ticks, so a
//! send up to [`TIMER_SLACK`] after its due time is the timer's doing and
//! is not charged to the server: latency = answer − send + max(0, send −
//! due − slack).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use h2::client::SendRequest;
use http::Uri;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::grpc::pb::CheckRequest;
use tonic::transport::Channel;

/// Lateness of a send that the timer, not the server, causes.
pub const TIMER_SLACK: Duration = Duration::from_millis(2);

/// One request slot.
pub trait Caller: Send + 'static {
    /// Sends one request and waits for its answer: `Ok(true)` when it was
    /// the expected success, `Ok(false)` for any other answer.
    fn call(&mut self) -> impl Future<Output = anyhow::Result<bool>> + Send;
    /// The first unexpected answer seen, for the report.
    fn first_failure(&self) -> Option<String>;
}

/// What one measured run gave.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub calls: u64,
    /// Unexpected answers and transport errors.
    pub failures: u64,
    pub elapsed: Duration,
    /// Sorted latencies in µs.
    pub latencies_us: Vec<u32>,
    pub first_failure: Option<String>,
    /// The open loop's target rate.
    pub offered: Option<f64>,
}

impl Sample {
    /// Completed calls per second.
    pub fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile latency in ms (0 ≤ p ≤ 100).
    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p) as f64 / 1000.0
    }

    /// Adds a later slice of the same measurement (interleaved rounds).
    pub fn absorb(&mut self, other: Sample) {
        self.calls += other.calls;
        self.failures += other.failures;
        self.elapsed += other.elapsed;
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us.sort_unstable();
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        self.offered = self.offered.or(other.offered);
    }

    fn merge(parts: Vec<(Vec<u32>, u64, u64, Option<String>)>, elapsed: Duration) -> Self {
        let mut sample = Sample {
            elapsed,
            ..Default::default()
        };
        for (latencies, calls, failures, failure) in parts {
            sample.latencies_us.extend(latencies);
            sample.calls += calls;
            sample.failures += failures;
            if sample.first_failure.is_none() {
                sample.first_failure = failure;
            }
        }
        sample.latencies_us.sort_unstable();
        sample
    }
}

/// The `p`-th percentile of sorted `values` (nearest rank).
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Runs every caller in a closed loop for `duration`; returns the callers
/// (for the next run) and the sample.
pub async fn closed_loop<C: Caller>(
    callers: Vec<C>,
    duration: Duration,
) -> anyhow::Result<(Vec<C>, Sample)> {
    let started = Instant::now();
    let end = started + duration;
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|mut caller| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(16_384);
                let (mut calls, mut failures) = (0u64, 0u64);
                // Every caller completes at least one call, however late
                // its task starts.
                loop {
                    let sent = Instant::now();
                    let ok = caller.call().await?;
                    latencies.push(micros(sent.elapsed()));
                    calls += 1;
                    failures += u64::from(!ok);
                    if Instant::now() >= end {
                        break;
                    }
                }
                let failure = caller.first_failure();
                anyhow::Ok((caller, (latencies, calls, failures, failure)))
            })
        })
        .collect();
    collect(tasks, started).await
}

/// Runs the callers in an open loop at `rate` requests per second for
/// `duration` (see the module docs for how latency is charged).
pub async fn open_loop<C: Caller>(
    callers: Vec<C>,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<(Vec<C>, Sample)> {
    if rate <= 0.0 {
        bail!("open-loop rate must be positive");
    }
    let interval_ns = 1e9 / rate;
    let total = (duration.as_secs_f64() * rate).floor() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|mut caller| {
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(16_384);
                let (mut calls, mut failures) = (0u64, 0u64);
                loop {
                    let ticket = next.fetch_add(1, Ordering::Relaxed);
                    if ticket >= total {
                        break;
                    }
                    let due = started + Duration::from_nanos((ticket as f64 * interval_ns) as u64);
                    tokio::time::sleep_until(due.into()).await;
                    let sent = Instant::now();
                    let ok = caller.call().await?;
                    let answered = Instant::now();
                    let late = sent
                        .saturating_duration_since(due)
                        .saturating_sub(TIMER_SLACK);
                    latencies.push(micros(answered - sent + late));
                    calls += 1;
                    failures += u64::from(!ok);
                }
                let failure = caller.first_failure();
                anyhow::Ok((caller, (latencies, calls, failures, failure)))
            })
        })
        .collect();
    let (callers, mut sample) = collect(tasks, started).await?;
    sample.offered = Some(rate);
    Ok((callers, sample))
}

type TaskResult<C> = anyhow::Result<(C, (Vec<u32>, u64, u64, Option<String>))>;

async fn collect<C>(
    tasks: Vec<tokio::task::JoinHandle<TaskResult<C>>>,
    started: Instant,
) -> anyhow::Result<(Vec<C>, Sample)> {
    let mut callers = Vec::with_capacity(tasks.len());
    let mut parts = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (caller, part) = task.await.context("load task panicked")??;
        callers.push(caller);
        parts.push(part);
    }
    Ok((callers, Sample::merge(parts, started.elapsed())))
}

/// One HTTP/1.1 keep-alive connection sending the same request.
pub struct HttpCaller {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    request: Arc<[u8]>,
    buffer: Vec<u8>,
    failure: Option<String>,
}

impl HttpCaller {
    pub async fn connect(addr: SocketAddr, request: Arc<[u8]>) -> anyhow::Result<Self> {
        let mut caller = Self {
            addr,
            stream: None,
            request,
            buffer: Vec::with_capacity(4096),
            failure: None,
        };
        caller.reconnect().await?;
        Ok(caller)
    }

    async fn reconnect(&mut self) -> anyhow::Result<()> {
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connect to {}", self.addr))?;
        stream.set_nodelay(true)?;
        self.stream = Some(stream);
        Ok(())
    }

    async fn exchange(&mut self) -> anyhow::Result<(u16, bool)> {
        let Some(stream) = self.stream.as_mut() else {
            bail!("not connected");
        };
        stream.write_all(&self.request).await?;
        self.buffer.clear();
        let mut chunk = [0u8; 4096];
        let (status, header_end, length, close) = loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed before the response head");
            }
            self.buffer.extend_from_slice(&chunk[..n]);
            if let Some(head) = parse_head(&self.buffer)? {
                break head;
            }
        };
        let total = header_end + length;
        while self.buffer.len() < total {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed inside the response body");
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
        if status != 200 && self.failure.is_none() {
            self.failure = Some(String::from_utf8_lossy(&self.buffer[..total]).into_owned());
        }
        Ok((status, close))
    }
}

impl Caller for HttpCaller {
    async fn call(&mut self) -> anyhow::Result<bool> {
        let (status, close) = match self.exchange().await {
            Ok(answer) => answer,
            Err(error) => {
                // One retry on a fresh connection (a peer may close an
                // idle keep-alive connection between runs).
                self.reconnect().await?;
                self.exchange()
                    .await
                    .with_context(|| format!("after reconnecting ({error})"))?
            }
        };
        if close {
            self.reconnect().await?;
        }
        Ok(status == 200)
    }

    fn first_failure(&self) -> Option<String> {
        self.failure.clone()
    }
}

/// Status, head length, `Content-Length` and `Connection: close` of a
/// response head, once `buffer` holds all of it.
pub fn parse_head(buffer: &[u8]) -> anyhow::Result<Option<(u16, usize, usize, bool)>> {
    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buffer[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let (mut length, mut close) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked responses are not supported by the generator");
        }
    }
    let length = match (length, status) {
        (Some(length), _) => length,
        (None, 204 | 304) => 0,
        (None, _) => bail!("response without Content-Length"),
    };
    Ok(Some((status, end + 4, length, close)))
}

/// The HTTP/1.1 request the load benchmark sends.
pub fn http_request(host: &str, headers: &[(&str, &str)]) -> Arc<[u8]> {
    let mut out = format!("GET {} HTTP/1.1\r\nhost: {host}\r\n", crate::fixtures::PATH);
    for (name, value) in headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    Arc::from(out.into_bytes())
}

/// An HTTP/2 connection to a gRPC server, shared by the [`GrpcCaller`]s
/// on it.
#[derive(Clone)]
pub struct GrpcConnection {
    send: SendRequest<Bytes>,
    uri: Uri,
}

/// Opens an HTTP/2 connection to the `Check` service at `addr`. Its
/// driver task ends when the last caller on it is dropped.
pub async fn grpc_connection(addr: SocketAddr) -> anyhow::Result<GrpcConnection> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    // Windows large enough that flow control never holds a request back.
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake::<_, Bytes>(tcp)
        .await
        .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
    tokio::spawn(async move {
        // An error here surfaces in the callers' next request.
        let _ = connection.await;
    });
    let uri = Uri::try_from(format!("http://{addr}{CHECK_PATH}"))?;
    Ok(GrpcConnection { send, uri })
}

/// The `Check` method's path.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// One `Check` in flight on a shared HTTP/2 connection.
///
/// Spoken with `h2` directly: the request is encoded once, and of the
/// answer only `CheckResponse.status` is decoded. tonic's client (a
/// buffered channel, a clone and an encode of the request per call, a
/// full decode of the answer) cost about 28 µs of CPU per call, nearly
/// what the null server spends answering it; on two cores every µs the
/// generator spends is taken from the server under test.
pub struct GrpcCaller {
    connection: GrpcConnection,
    /// The request as a gRPC length-prefixed message.
    body: Bytes,
    answer: Vec<u8>,
    failure: Option<String>,
}

/// `CheckResponse` reduced to its `status` (field 1); the decoder skips
/// every other field.
#[derive(Clone, PartialEq, prost::Message)]
struct CheckStatus {
    #[prost(message, optional, tag = "1")]
    status: Option<tollgate::grpc::pb::google::rpc::Status>,
}

impl GrpcCaller {
    pub fn new(connection: GrpcConnection, request: &CheckRequest) -> Self {
        Self {
            connection,
            body: grpc_frame(request),
            answer: Vec::with_capacity(1024),
            failure: None,
        }
    }

    /// Sends the request; the gRPC status (`grpc-status`) and the
    /// decision's `google.rpc.Status` code.
    async fn exchange(&mut self) -> anyhow::Result<(String, i32)> {
        std::future::poll_fn(|cx| self.connection.send.poll_ready(cx))
            .await
            .context("HTTP/2 connection")?;
        let request = http::Request::post(&self.connection.uri)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())?;
        let (response, mut stream) = self.connection.send.send_request(request, false)?;
        stream.send_data(self.body.clone(), true)?;
        let (head, mut body) = response.await.context("Check failed")?.into_parts();
        if head.status != http::StatusCode::OK {
            bail!("Check answered HTTP {}", head.status);
        }
        self.answer.clear();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            self.answer.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await?;
        // A trailers-only answer carries its status in the head.
        let grpc_status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| head.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("missing")
            .to_owned();
        if grpc_status != "0" {
            return Ok((grpc_status, -1));
        }
        let status = CheckStatus::decode(grpc_message(&self.answer)?)?;
        Ok((grpc_status, status.status.map_or(-1, |s| s.code)))
    }
}

impl Caller for GrpcCaller {
    async fn call(&mut self) -> anyhow::Result<bool> {
        let (grpc_status, code) = self.exchange().await?;
        if code != 0 && self.failure.is_none() {
            self.failure = Some(format!("grpc-status {grpc_status}, decision code {code}"));
        }
        Ok(code == 0)
    }

    fn first_failure(&self) -> Option<String> {
        self.failure.clone()
    }
}

/// `message` as a gRPC length-prefixed message: a zero compression flag,
/// its length (4 bytes, big-endian), its bytes.
fn grpc_frame(message: &CheckRequest) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut out = Vec::with_capacity(5 + encoded.len());
    out.push(0);
    out.extend_from_slice(
        &u32::try_from(encoded.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&encoded);
    Bytes::from(out)
}

/// The one uncompressed message of a gRPC answer body.
fn grpc_message(body: &[u8]) -> anyhow::Result<&[u8]> {
    let Some((&[flag, a, b, c, d], message)) = body.split_first_chunk::<5>() else {
        bail!("gRPC answer shorter than its 5-byte prefix");
    };
    if flag != 0 {
        bail!("compressed gRPC answer");
    }
    let length = u32::from_be_bytes([a, b, c, d]) as usize;
    if message.len() != length {
        bail!(
            "gRPC answer of {} bytes after a prefix announcing {length}",
            message.len()
        );
    }
    Ok(message)
}

/// A tonic channel (for the few calls where the generator's own cost does
/// not matter).
pub async fn grpc_channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 99.9), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn response_heads_are_parsed() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: close\r\n\r\nok";
        assert_eq!(
            parse_head(head).unwrap(),
            Some((200, head.len() - 2, 2, true))
        );
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        let empty = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            parse_head(empty).unwrap(),
            Some((204, empty.len(), 0, false))
        );
    }

    #[test]
    fn grpc_messages_are_framed_and_unframed() {
        let request = CheckRequest::default();
        let framed = grpc_frame(&request);
        assert_eq!(&framed[..], &[0, 0, 0, 0, 0]);
        assert_eq!(grpc_message(&framed).unwrap(), b"");
        let answer = [0, 0, 0, 0, 2, 0x0a, 0x00];
        assert_eq!(grpc_message(&answer).unwrap(), &[0x0a, 0x00]);
        let decoded = CheckStatus::decode(grpc_message(&answer).unwrap()).unwrap();
        assert_eq!(decoded.status.map(|s| s.code), Some(0));
        assert!(grpc_message(&[0, 0, 0, 0, 3, 1]).is_err());
        assert!(grpc_message(&[1, 0, 0, 0, 0]).is_err());
        assert!(grpc_message(&[0, 0]).is_err());
    }

    #[tokio::test]
    async fn closed_and_open_loops_count_calls() {
        struct Fake(u64);
        impl Caller for Fake {
            async fn call(&mut self) -> anyhow::Result<bool> {
                self.0 += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(self.0.is_multiple_of(2))
            }
            fn first_failure(&self) -> Option<String> {
                None
            }
        }
        let (callers, sample) = closed_loop(vec![Fake(0), Fake(0)], Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(callers.len(), 2);
        assert!(sample.calls >= 2);
        assert_eq!(sample.latencies_us.len() as u64, sample.calls);
        let (_, sample) = open_loop(callers, 200.0, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(sample.calls, 20);
        assert_eq!(sample.offered, Some(200.0));
    }
}
