//! TLS on tollgate's own listeners: the ext_authz gRPC port, and
//! optionally the admin and metrics ports.
//!
//! Why tollgate serves TLS itself: outside a mesh, anyone who can reach the
//! gRPC port could call `Check` — an oracle for guessing API keys and
//! testing stolen tokens, and a way to spend other apps' quotas. With a
//! client CA, only the Envoys holding a certificate from it (and, when
//! listed, only the allowed SPIFFE IDs or DNS names) get a connection; a
//! caller without an acceptable certificate never reaches `Check`.
//!
//! Why not tonic's `tls` feature: tollgate runs the handshakes itself
//! (tokio-rustls over the bound listener) and hands finished connections
//! to tonic and axum. That is what lets it
//!
//! - swap the rustls configuration when cert-manager rotates the mounted
//!   Secret, without touching connections in flight ([`reload`]);
//! - count and explain every refused handshake
//!   (`tollgate_tls_handshakes_total{listener,result}`, [`accept`]);
//! - bound handshakes in time and number, so a slow or silent client holds
//!   nothing for long.
//!
//! The modules:
//!
//! - [`material`] reads the PEM files and checks them (a key that does not
//!   match its certificate, an empty CA file…), with errors naming the
//!   path and the reason and never the key's bytes;
//! - [`certificate`] reads what operators need from a certificate (serial,
//!   expiry) for logs and the expiry metric;
//! - [`identity`] holds the allowed client identities and the verifier that
//!   enforces them during the handshake;
//! - [`accept`] is the accept loop: handshakes, refusals, the connection
//!   type tonic and axum serve;
//! - [`reload`] polls the files and swaps the configuration.
//!
//! rustls runs on the ring provider only (TLS 1.3 and 1.2, AEAD cipher
//! suites with forward secrecy); the build has no aws-lc.

pub mod accept;
pub mod certificate;
pub mod identity;
pub mod material;
pub mod reload;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use tokio_rustls::TlsAcceptor;

pub use accept::{TlsConnection, TlsIncoming};
pub use certificate::Leaf;
pub use identity::{ClientIdentities, IdentityError};
pub use material::{Material, TlsError};

/// Handshakes by `listener` and `result` (`accepted` or an
/// [`accept::Refusal`] label).
pub const HANDSHAKES_TOTAL: &str = "tollgate_tls_handshakes_total";
/// Certificate reloads by `listener` and `result` (`success`, `error`).
pub const RELOADS_TOTAL: &str = "tollgate_tls_reloads_total";
/// The serving certificate's `notAfter`, Unix seconds, by `listener`.
pub const CERTIFICATE_EXPIRY: &str = "tollgate_tls_certificate_expiry_timestamp_seconds";

/// Which listener a TLS configuration serves: the label of its metrics and
/// log lines, and the application protocol it offers by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The ext_authz gRPC port (HTTP/2 only).
    Grpc,
    /// The admin port: `/healthz`, `/readyz` (HTTP/1.1).
    Admin,
    /// The separate metrics port (HTTP/1.1).
    Metrics,
}

impl Role {
    /// The `listener` label of the TLS metrics.
    pub fn label(self) -> &'static str {
        match self {
            Role::Grpc => "grpc",
            Role::Admin => "admin",
            Role::Metrics => "metrics",
        }
    }

    /// The protocols offered by ALPN (RFC 7301): gRPC needs HTTP/2; the
    /// admin server speaks HTTP/1.1 only. A client offering none of them
    /// is refused; one offering no ALPN at all is served.
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Role::Grpc => vec![b"h2".to_vec()],
            Role::Admin | Role::Metrics => vec![b"http/1.1".to_vec()],
        }
    }
}

/// The files of one TLS listener, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates, PEM: when given, a client certificate issued by
    /// one of them is required.
    pub client_ca: Option<PathBuf>,
}

/// Everything one TLS listener is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub role: Role,
    pub files: TlsFiles,
    /// With a client CA: the identities allowed (empty: any certificate
    /// the CA issued).
    pub clients: ClientIdentities,
}

/// The one crypto provider of the binary.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a TLS listener serves right now.
#[derive(Debug)]
pub struct Serving {
    /// The rustls configuration new connections are accepted with.
    pub config: Arc<ServerConfig>,
    /// The SHA-256 of the files it was built from (the reload watcher
    /// compares it with what the files hold now).
    pub digest: [u8; 32],
    /// The serving certificate, for logs and metrics.
    pub leaf: Leaf,
}

/// A TLS listener's live configuration. Cheap to clone; every clone sees
/// the configuration the reload watcher last swapped in. Connections keep
/// the configuration they were accepted with.
#[derive(Clone, Debug)]
pub struct ServerTls {
    settings: Arc<TlsSettings>,
    serving: Arc<ArcSwap<Serving>>,
    refusals: Arc<accept::RefusalLog>,
}

impl ServerTls {
    /// Reads and checks the files (start-up): any problem is an error
    /// naming the file and the reason, and the listener does not start.
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let material = Material::read(&settings.files)?;
        let serving = material.build(&settings)?;
        serving.leaf.warn_if_not_current(settings.role);
        serving.leaf.record_expiry(settings.role);
        Ok(Self {
            settings: Arc::new(settings),
            serving: Arc::new(ArcSwap::from_pointee(serving)),
            refusals: Arc::new(accept::RefusalLog::default()),
        })
    }

    /// Which listener this is.
    pub fn role(&self) -> Role {
        self.settings.role
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificate(&self) -> bool {
        self.settings.files.client_ca.is_some()
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.serving.load().config))
    }

    /// What is serving now.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.load_full()
    }

    fn swap(&self, serving: Serving) {
        self.serving.store(Arc::new(serving));
    }
}
