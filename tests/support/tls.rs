//! A throw-away PKI made at test time (rcgen, ring): one CA, a server
//! certificate for `localhost` that Envoy's TLS listener (or tollgate's)
//! presents, and client certificates (optionally with a SPIFFE URI or a
//! DNS SAN) for mTLS tests. Nothing is committed and nothing is shared
//! between tests.
//!
//! [`served_certificate`] opens a TLS connection and returns the
//! certificate the server presented, so a rotation test can check which
//! serial is served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate and its private key.
pub struct Identity {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl Identity {
    /// Writes `<stem>.crt` and `<stem>.key` into `dir`: (cert, key).
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
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

    /// A client certificate whose only SAN is the DNS name `name`.
    pub fn client_dns(&self, name: &str) -> Identity {
        let sans = vec![SanType::DnsName(name.try_into().unwrap())];
        issue(&self.ca, name, sans, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A further server certificate for `localhost` / `127.0.0.1` with
    /// the serial number `serial` (a rotation's next certificate).
    pub fn server_with_serial(&self, serial: u64) -> Identity {
        issue_with_serial(
            &self.ca,
            "localhost",
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
            Some(serial),
        )
    }

    /// A server certificate for the DNS name `name` (and `localhost`), as
    /// a Kubernetes Service's certificate is issued.
    pub fn server_named(&self, name: &str) -> Identity {
        issue(
            &self.ca,
            name,
            vec![
                SanType::DnsName(name.try_into().unwrap()),
                SanType::DnsName("localhost".try_into().unwrap()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA certificate to `dir/<name>`.
    pub fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
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

    /// [`TestPki::client_config`] offering `alpn` (e.g. `h2` for a gRPC
    /// port).
    pub fn client_config_alpn(
        &self,
        identity: Option<&Identity>,
        alpn: &[&str],
    ) -> Arc<rustls::ClientConfig> {
        let mut config = (*self.client_config(identity)).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

/// Connects to `addr` with `config` (server name `localhost`), finishes
/// the handshake and returns the certificate the server presented; `Err`
/// describes a failed connection or handshake.
pub fn served_certificate(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<CertificateDer<'static>, String> {
    let limit = Duration::from_secs(10);
    let mut tcp = TcpStream::connect_timeout(&addr, limit).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    // TLS 1.3: the server checks the client's certificate after the
    // client's last handshake flight; a refusal arrives as an alert on the
    // first read. Reading until the server's first bytes (HTTP/2 SETTINGS
    // on a gRPC port) or its alert tells the two apart.
    let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).map_err(|e| e.to_string())?;
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.clone().into_owned())
        .ok_or_else(|| "the server presented no certificate".to_owned())
}

/// The serial number of `cert` as tollgate logs it (upper-case hex, no
/// leading zero bytes).
pub fn serial_of(cert: &CertificateDer<'_>) -> String {
    let parsed = webpki::EndEntityCert::try_from(cert).unwrap();
    let bytes = parsed.serial();
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    bytes[first..].iter().map(|b| format!("{b:02X}")).collect()
}

/// A certificate for `cn` signed by `ca`.
fn issue(
    ca: &Issuer<'static, KeyPair>,
    cn: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> Identity {
    issue_with_serial(ca, cn, sans, usage, None)
}

/// A certificate for `cn` signed by `ca`, with `serial` when given.
fn issue_with_serial(
    ca: &Issuer<'static, KeyPair>,
    cn: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
    serial: Option<u64>,
) -> Identity {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![usage];
    params.serial_number = serial.map(SerialNumber::from);
    let cert = params.signed_by(&key, ca).unwrap();
    Identity {
        cert_der: cert.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
    }
}
