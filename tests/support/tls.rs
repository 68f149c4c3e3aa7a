//! A throw-away PKI made at test time (rcgen, ring): one CA, a server
//! certificate for `localhost` that Envoy's TLS listener presents, and
//! client certificates (optionally with a SPIFFE URI SAN) for mTLS tests.
//! Nothing is committed and nothing is shared between tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate and its private key.
pub struct Identity {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    key_der: Vec<u8>,
}

/// The files Envoy's TLS listener reads.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert_chain: PathBuf,
    pub private_key: PathBuf,
    /// CA that client certificates are verified against (client
    /// certificates are requested but optional).
    pub client_ca: PathBuf,
}

/// A CA with the server identity it issued.
pub struct TestPki {
    ca: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    pub server: Identity,
}

impl TestPki {
    /// A fresh CA and a server certificate for `localhost` / `127.0.0.1`.
    pub fn generate() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "tollgate test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca = Issuer::new(params, ca_key);
        let server = issue(
            &ca,
            "localhost",
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        Self {
            ca,
            ca_der: ca_cert.der().clone(),
            ca_pem: ca_cert.pem(),
            server,
        }
    }

    /// A client certificate with common name `cn` and, when given, a URI
    /// SAN such as `spiffe://example.org/app`.
    pub fn client(&self, cn: &str, uri_san: Option<&str>) -> Identity {
        let sans = uri_san
            .map(|uri| vec![SanType::URI(uri.try_into().unwrap())])
            .unwrap_or_default();
        issue(&self.ca, cn, sans, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the server's files for Envoy into `dir`.
    pub fn write_server_files(&self, dir: &Path) -> TlsFiles {
        let files = TlsFiles {
            cert_chain: dir.join("server.pem"),
            private_key: dir.join("server.key"),
            client_ca: dir.join("ca.pem"),
        };
        std::fs::write(&files.cert_chain, &self.server.cert_pem).unwrap();
        std::fs::write(&files.private_key, &self.server.key_pem).unwrap();
        std::fs::write(&files.client_ca, &self.ca_pem).unwrap();
        files
    }

    /// A client configuration trusting this CA, presenting `identity` when
    /// given (ring provider: no aws-lc in the build).
    pub fn client_config(&self, identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => builder
                .with_client_auth_cert(
                    vec![id.cert_der.clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone())),
                )
                .unwrap(),
        };
        Arc::new(config)
    }
}

/// A certificate for `cn` signed by `ca`.
fn issue(
    ca: &Issuer<'static, KeyPair>,
    cn: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> Identity {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, ca).unwrap();
    Identity {
        cert_der: cert.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
    }
}
