//! A small HTTP/1.1 client over `std::net::TcpStream` (plain or rustls).
//!
//! Why not a client library: tests must send what a hostile client sends —
//! a header twice, `..%2F` in the path, an underscore in a header name —
//! and general-purpose clients normalise or refuse such requests. This one
//! writes the request line and headers exactly as given, one request per
//! connection (`Connection: close`), and reads the response to EOF.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// How long one request may take before the test fails (not an assertion
/// on speed: a bound so a hung server cannot hang the suite).
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// A request to send; build it with [`Request::new`] or the
/// [`crate::support::Stack`] helpers, then [`Request::send`].
#[derive(Clone)]
pub struct Request {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Where `.https()` sends the request instead (a TLS listener).
    https: Option<(SocketAddr, Arc<rustls::ClientConfig>)>,
    method: String,
    path: String,
    host: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    /// A `method` request for `path` (sent verbatim) to `addr`.
    pub fn new(addr: SocketAddr, method: &str, path: &str) -> Self {
        Self {
            addr,
            tls: None,
            https: None,
            method: method.to_owned(),
            path: path.to_owned(),
            host: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Names the TLS listener that [`Request::https`] switches to.
    pub fn https_alternative(
        mut self,
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> Self {
        self.https = Some((addr, config));
        self
    }

    /// Sends over the TLS listener named by [`Request::https_alternative`].
    pub fn https(mut self) -> Self {
        let (addr, config) = self
            .https
            .clone()
            .expect("this stack has no TLS listener: build it with .tls()");
        self.addr = addr;
        self.tls = Some(config);
        self
    }

    /// Sends over TLS with `config` to the address given to
    /// [`Request::new`] (a TLS port of tollgate itself).
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Replaces the client TLS configuration (e.g. to present a client
    /// certificate); implies [`Request::https`].
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        if self.tls.is_none() {
            self = self.https();
        }
        self.tls = Some(config);
        self
    }

    /// The `Host` header (default `localhost`).
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_owned());
        self
    }

    /// Adds a header line; calling it twice with one name sends the header
    /// twice.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        super::credentials::note_header(name, value);
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The request body (`Content-Length` is set from it).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the request and reads the whole response. Panics on I/O
    /// errors: in a test they are failures.
    pub fn send(self) -> Response {
        let addr = self.addr;
        self.try_send()
            .unwrap_or_else(|e| panic!("request to {addr} failed: {e}"))
    }

    /// Sends the request; `Err` when the server cannot be reached or
    /// answers something that is not HTTP (for readiness probes).
    pub fn try_send(self) -> Result<Response, String> {
        let raw = self.encode();
        let head = self.method == "HEAD";
        let tcp = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)
            .map_err(|e| format!("connect to {}: {e}", self.addr))?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| tcp.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| e.to_string())?;
        let bytes = match &self.tls {
            None => exchange(tcp, &raw, head)?,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(|e| e.to_string())?;
                exchange(rustls::StreamOwned::new(conn, tcp), &raw, head)?
            }
        };
        Response::parse(&bytes)
    }

    fn encode(&self) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        head.push_str(&format!(
            "host: {}\r\n",
            self.host.as_deref().unwrap_or("localhost")
        ));
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.body.is_empty() || !matches!(self.method.as_str(), "GET" | "HEAD" | "DELETE") {
            head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        head.push_str("connection: close\r\n\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(&self.body);
        raw
    }
}

/// Writes `request` and reads until the response is complete (or the
/// server closes the connection). Not waiting for the close matters:
/// after an error response Envoy waits up to a second for the client to
/// close first.
fn exchange(mut stream: impl Read + Write, request: &[u8], head: bool) -> Result<Vec<u8>, String> {
    stream
        .write_all(request)
        .and_then(|()| stream.flush())
        .map_err(|e| format!("write request: {e}"))?;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                bytes.extend_from_slice(&buf[..n]);
                if is_complete(&bytes, head) {
                    break;
                }
            }
            // A TLS peer that closes without close_notify: the response
            // is complete when it parses (checked by the caller).
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && !bytes.is_empty() => break,
            Err(e) => return Err(format!("read response: {e} (after {} bytes)", bytes.len())),
        }
    }
    Ok(bytes)
}

/// True when `bytes` hold a whole response whose end is known without the
/// connection closing (a length, a last chunk, or no body by definition).
fn is_complete(bytes: &[u8], head: bool) -> bool {
    let Ok((status, headers, body_start)) = parse_head(bytes) else {
        return false;
    };
    let rest = &bytes[body_start..];
    if head || status / 100 == 1 || status == 204 || status == 304 {
        return true;
    }
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return decode_chunked(rest).is_ok();
    }
    match find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(len) => rest.len() >= len,
        None => false,
    }
}

/// Status, headers and where the body starts.
type Head = (u16, Vec<(String, String)>, usize);

fn parse_head(bytes: &[u8]) -> Result<Head, String> {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&bytes[..split]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, split + 4))
}

/// A response as the client received it.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Header lines in order; names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Parses a complete HTTP/1.1 response (fixed length, chunked or
    /// read-to-EOF body).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let (status, headers, body_start) = parse_head(bytes)?;
        let rest = &bytes[body_start..];
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let body = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            decode_chunked(rest)?
        } else if let Some(len) = find("content-length") {
            let len: usize = len.parse().map_err(|_| "bad content-length")?;
            rest.get(..len)
                .ok_or("body shorter than content-length")?
                .to_vec()
        } else {
            rest.to_vec()
        };
        Ok(Self {
            status,
            headers,
            body,
        })
    }

    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (lower-case).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// tollgate's deny reason (`x-tollgate-reason`).
    pub fn reason(&self) -> Option<&str> {
        self.header("x-tollgate-reason")
    }

    /// Envoy's request id (the test Envoy returns it on every response).
    pub fn request_id(&self) -> &str {
        self.header("x-request-id")
            .expect("response has no x-request-id (is always_set_request_id_in_response on?)")
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (showing the response) when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?} {}", self.text()))
    }

    /// What the echo upstream received, when the request reached it.
    /// Panics when the response did not come from the upstream.
    pub fn upstream(&self) -> crate::support::upstream::Echo {
        assert_eq!(
            self.status,
            200,
            "expected the upstream's 200, got {}: {:?} {}",
            self.status,
            self.headers,
            self.text()
        );
        crate::support::upstream::Echo::from_json(&self.json())
    }
}

fn decode_chunked(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|e| e.to_string())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|e| e.to_string())?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(rest.get(..size).ok_or("truncated chunk")?);
        rest = rest.get(size + 2..).ok_or("truncated chunk end")?;
    }
}
