//! The accept loop of a TLS listener: TCP connections in, finished TLS
//! connections out, every refusal counted.
//!
//! [`TlsIncoming::spawn`] takes the bound listener and runs one task that
//! accepts TCP connections and one task per handshake, so a slow client
//! delays nobody else. A handshake gets [`HANDSHAKE_TIMEOUT`], and at most
//! [`MAX_HANDSHAKES`] run at once (beyond that, new connections wait in the
//! kernel's backlog). Finished connections go through a channel to the
//! server: tonic reads [`TlsIncoming`] as its stream of connections, axum
//! as its listener. When the server drops it (on shutdown), the accept
//! task ends and the listening socket closes.
//!
//! Every handshake is counted in
//! `tollgate_tls_handshakes_total{listener, result}`: `accepted`, or the
//! [`Refusal`] that ended it. Refusals that point at a configuration
//! problem (a client without a certificate, from another CA, with an
//! identity not allowed, speaking plaintext) are logged as warnings, at
//! most one line per [`LOG_EVERY`] per listener with the number left
//! unlogged, so a flood of bad clients cannot flood the log.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::{AlertDescription, CertificateError, InvalidMessage};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::{Role, ServerTls};

/// How long a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once, per listener.
pub const MAX_HANDSHAKES: usize = 1024;
/// At most one warning about refused handshakes per listener this often.
pub const LOG_EVERY: Duration = Duration::from_secs(1);
/// Finished connections waiting for the server to take them.
const QUEUE: usize = 128;

/// Why a handshake did not produce a connection: the `result` label of
/// `tollgate_tls_handshakes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The listener requires a client certificate and none was sent.
    NoClientCertificate,
    /// The client certificate does not chain to the client CA, or is
    /// expired, not yet valid, or not for client authentication.
    CertificateRejected,
    /// The certificate is from the client CA but its identity is not in
    /// the allow-list.
    IdentityNotAllowed,
    /// The client ended the handshake with an alert: most often it does
    /// not trust tollgate's certificate (CA or name).
    ClientAlert,
    /// The first bytes were not TLS (a plaintext client on a TLS port).
    NotTls,
    /// Any other TLS failure (no common protocol version, cipher suite or
    /// ALPN protocol; a malformed message).
    ProtocolError,
    /// The connection closed or failed before the handshake finished
    /// (TCP health checks and port scans look like this).
    Closed,
    /// The handshake took longer than [`HANDSHAKE_TIMEOUT`].
    Timeout,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoClientCertificate => "no_client_certificate",
            Refusal::CertificateRejected => "certificate_rejected",
            Refusal::IdentityNotAllowed => "identity_not_allowed",
            Refusal::ClientAlert => "client_alert",
            Refusal::NotTls => "not_tls",
            Refusal::ProtocolError => "protocol_error",
            Refusal::Closed => "closed",
            Refusal::Timeout => "timeout",
        }
    }

    /// Classifies a failed handshake from the error tokio-rustls returns
    /// (a rustls error inside an I/O error, or a plain I/O error).
    pub fn of(error: &io::Error) -> Self {
        let tls = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match tls {
            Some(rustls::Error::NoCertificatesPresented) => Refusal::NoClientCertificate,
            Some(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )) => Refusal::IdentityNotAllowed,
            Some(rustls::Error::InvalidCertificate(_)) => Refusal::CertificateRejected,
            Some(rustls::Error::AlertReceived(AlertDescription::CloseNotify)) => Refusal::Closed,
            Some(rustls::Error::AlertReceived(_)) => Refusal::ClientAlert,
            Some(rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType)) => {
                Refusal::NotTls
            }
            Some(_) => Refusal::ProtocolError,
            None => Refusal::Closed,
        }
    }

    /// Whether the refusal points at a misconfigured or unwanted client
    /// (worth a warning), rather than a connection that simply went away.
    fn is_notable(self) -> bool {
        !matches!(self, Refusal::Closed | Refusal::Timeout)
    }
}

/// Rate-limits the warnings about refused handshakes of one listener.
#[derive(Debug, Default)]
pub struct RefusalLog {
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// Counts `refusal` and logs it when the listener has not warned
    /// within [`LOG_EVERY`]. `peer` and `error` describe the client, never
    /// key material.
    pub fn record(
        &self,
        role: Role,
        refusal: Refusal,
        peer: SocketAddr,
        error: &dyn std::fmt::Display,
    ) {
        metrics::counter!(
            super::HANDSHAKES_TOTAL,
            "listener" => role.label(),
            "result" => refusal.label()
        )
        .increment(1);
        if !refusal.is_notable() {
            tracing::debug!(listener = role.label(), %peer, reason = refusal.label(), %error, "TLS handshake did not finish");
            return;
        }
        // The lock guards two fields for a moment and is never held across
        // an await.
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        if state
            .last
            .is_some_and(|last| now.duration_since(last) < LOG_EVERY)
        {
            state.unlogged += 1;
            return;
        }
        let unlogged = std::mem::take(&mut state.unlogged);
        state.last = Some(now);
        drop(state);
        tracing::warn!(
            listener = role.label(),
            %peer,
            reason = refusal.label(),
            %error,
            unlogged_since_last = unlogged,
            "TLS handshake refused"
        );
    }
}

/// Finished TLS connections of one listener, for tonic
/// (`serve_with_incoming_shutdown`) and axum (`axum::serve`).
#[derive(Debug)]
pub struct TlsIncoming {
    connections: mpsc::Receiver<TlsConnection>,
    local_addr: SocketAddr,
}

impl TlsIncoming {
    /// Starts accepting on `listener` with `tls`'s current configuration.
    pub fn spawn(listener: TcpListener, tls: ServerTls) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (sender, connections) = mpsc::channel(QUEUE);
        tokio::spawn(accept_loop(listener, tls, sender));
        Ok(Self {
            connections,
            local_addr,
        })
    }
}

impl futures_util::Stream for TlsIncoming {
    type Item = Result<TlsConnection, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.connections.poll_recv(cx).map(|next| next.map(Ok))
    }
}

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => {
                let peer = connection.peer;
                (connection, peer)
            }
            // The accept task only ends once this receiver is gone; a
            // listener must never return, so wait for the shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// Accepts until the server drops its [`TlsIncoming`].
async fn accept_loop(listener: TcpListener, tls: ServerTls, sender: mpsc::Sender<TlsConnection>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            () = sender.closed() => break,
            permit = Arc::clone(&handshakes).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = sender.closed() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off briefly
                // instead of spinning; the listener itself stays open.
                tracing::warn!(listener = tls.role().label(), %error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tls.acceptor();
        let tls = tls.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(permit);
            match handshake {
                Ok(Ok(stream)) => {
                    metrics::counter!(
                        super::HANDSHAKES_TOTAL,
                        "listener" => tls.role().label(),
                        "result" => "accepted"
                    )
                    .increment(1);
                    // Fails only when the server is shutting down; the
                    // connection is then dropped unserved.
                    let _ = sender.send(TlsConnection { stream, peer }).await;
                }
                Ok(Err(error)) => {
                    tls.refusals
                        .record(tls.role(), Refusal::of(&error), peer, &error)
                }
                Err(_) => tls.refusals.record(
                    tls.role(),
                    Refusal::Timeout,
                    peer,
                    &format_args!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
                ),
            }
        });
    }
    tracing::debug!(listener = tls.role().label(), "TLS accept loop stopped");
}

/// A connection whose handshake finished (and whose client certificate,
/// when required, was accepted).
#[derive(Debug)]
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
}

impl Connected for TlsConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        TcpConnectInfo {
            local_addr: self.stream.get_ref().0.local_addr().ok(),
            remote_addr: Some(self.peer),
        }
    }
}

// The stream is `Unpin` (a `TcpStream` inside), so each call is handed to
// it through `Pin::new`.
impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
