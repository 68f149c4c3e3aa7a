//! The PEM files of a TLS listener: read, checked, and turned into a
//! rustls configuration.
//!
//! Reading and building are separate steps so the reload watcher can tell
//! "the files did not change" (same digest) from "they changed and do not
//! work" before building anything. Every error names the file and the
//! reason; none carries bytes of the private key (PEM parse errors of the
//! key file are replaced by a fixed description).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::certificate::Leaf;
use super::identity::AllowListVerifier;
use super::{Serving, TlsFiles, TlsSettings, provider};

/// Largest file read: a certificate chain or a CA bundle is a few KiB, a
/// public CA bundle a few hundred.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a listener's TLS files cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // `cause`, not `source`: the message already holds it, and an error
    // chain printed with `{:#}` would repeat it.
    #[error("cannot read the {what} {}: {cause}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the {what} {} is larger than {MAX_FILE_BYTES} bytes", path.display())]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("the {what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the {what} {} is not valid PEM: {reason}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the certificate {} is not a usable X.509 certificate: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error(
        "the private key {} holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY) or it is malformed",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error(
        "the private key {} cannot be used: not an RSA, ECDSA (P-256, P-384) or Ed25519 key, or malformed",
        path.display()
    )]
    UnsupportedKey { path: PathBuf },
    #[error("the private key {} does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("the client CA file {} cannot be used: {reason}", path.display())]
    ClientCa { path: PathBuf, reason: String },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// The bytes of a listener's files, as read at one moment. The key's
/// bytes are wiped when it is dropped (the watcher reads the file twice a
/// second) and never printed: `Debug` shows the paths only.
pub struct Material {
    files: TlsFiles,
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
    /// SHA-256 over every file's bytes (length-prefixed).
    pub digest: [u8; 32],
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("files", &self.files)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Material {
    /// Reads every file of `files`.
    pub fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let cert = read_file("certificate", &files.cert)?;
        let key = Zeroizing::new(read_file("private key", &files.key)?);
        let client_ca = files
            .client_ca
            .as_deref()
            .map(|path| read_file("client CA file", path))
            .transpose()?;
        let mut hasher = Sha256::new();
        for bytes in [Some(&cert), Some(&*key), client_ca.as_ref()]
            .into_iter()
            .flatten()
        {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        }
        // A CA file added or removed changes the digest even when empty.
        hasher.update([u8::from(client_ca.is_some())]);
        Ok(Self {
            files: files.clone(),
            cert,
            key,
            client_ca,
            digest: hasher.finalize().into(),
        })
    }

    /// Checks the files and builds the configuration `settings` describe.
    pub fn build(&self, settings: &TlsSettings) -> Result<Serving, TlsError> {
        let provider = provider();
        let (certified, leaf) = self.certified_key(&provider)?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match (&self.client_ca, &self.files.client_ca) {
            (Some(bytes), Some(path)) => {
                let roots = roots(path, bytes)?;
                let ca = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| TlsError::ClientCa {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                builder.with_client_cert_verifier(Arc::new(AllowListVerifier::new(
                    ca,
                    settings.clients.clone(),
                )))
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = settings.role.alpn();
        Ok(Serving {
            config: Arc::new(config),
            digest: self.digest,
            leaf,
        })
    }

    /// The chain and key, checked to belong together.
    fn certified_key(&self, provider: &CryptoProvider) -> Result<(CertifiedKey, Leaf), TlsError> {
        let cert_path = &self.files.cert;
        let key_path = &self.files.key;
        let chain = certificates("certificate", cert_path, &self.cert)?;
        let leaf = Leaf::parse(&chain[0]).map_err(|reason| TlsError::BadCertificate {
            path: cert_path.clone(),
            reason,
        })?;
        // The key file's PEM errors are not passed on: they may quote it.
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|_| TlsError::NoKey {
            path: key_path.clone(),
        })?;
        let signing_key =
            provider
                .key_provider
                .load_private_key(key)
                .map_err(|_| TlsError::UnsupportedKey {
                    path: key_path.clone(),
                })?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) => Ok((certified, leaf)),
            // ring's keys all report their public key; "cannot tell" is
            // refused too rather than served unchecked.
            Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
                cert: cert_path.clone(),
                key: key_path.clone(),
            }),
            Err(other) => Err(TlsError::BadCertificate {
                path: cert_path.clone(),
                reason: other.to_string(),
            }),
        }
    }
}

/// Reads `path` (at most [`MAX_FILE_BYTES`]), following symlinks as a
/// Kubernetes Secret mount needs.
fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |cause| TlsError::Read {
        what,
        path: path.to_owned(),
        cause,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(TlsError::TooLarge {
            what,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// Every `CERTIFICATE` block of a PEM file (at least one).
fn certificates(
    what: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| match e {
            pem::Error::NoItemsFound => TlsError::NoCertificate {
                what,
                path: path.to_owned(),
            },
            other => TlsError::Pem {
                what,
                path: path.to_owned(),
                reason: other.to_string(),
            },
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// The trust anchors of a client CA file.
fn roots(path: &Path, bytes: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certificates("client CA file", path, bytes)?
        .into_iter()
        .enumerate()
    {
        roots.add(cert).map_err(|e| TlsError::ClientCa {
            path: path.to_owned(),
            reason: format!("certificate {} of the file: {e}", i + 1),
        })?;
    }
    Ok(roots)
}
