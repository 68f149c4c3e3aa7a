//! The TLS module against certificates made here with rcgen: loading and
//! its errors, the reload rules, the allow-list, and real handshakes (over
//! an in-memory pipe) classified into the refusal reasons the metric
//! reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::accept::Refusal;
use super::reload::{Look, Watch};
use super::*;

/// A CA that issues server and client certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
}

/// An issued certificate and its key.
struct Issued {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    key_der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self {
            issuer: Issuer::new(params, key),
            der: cert.der().clone(),
            pem: cert.pem(),
        }
    }

    fn issue(&self, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose, serial: u64) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "test");
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    fn server(&self, serial: u64) -> Issued {
        self.issue(
            vec![SanType::DnsName("localhost".try_into().unwrap())],
            ExtendedKeyUsagePurpose::ServerAuth,
            serial,
        )
    }

    fn client(&self, sans: Vec<SanType>) -> Issued {
        self.issue(sans, ExtendedKeyUsagePurpose::ClientAuth, 7)
    }
}

fn spiffe(id: &str) -> SanType {
    SanType::URI(id.try_into().unwrap())
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

/// Writes `issued` as `tls.crt`/`tls.key` (and `ca` as `ca.crt`) into `dir`.
fn write(dir: &Path, issued: &Issued, ca: Option<&Ca>) -> TlsFiles {
    std::fs::write(dir.join("tls.crt"), &issued.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &issued.key_pem).unwrap();
    let client_ca = ca.map(|ca| {
        let path = dir.join("ca.crt");
        std::fs::write(&path, &ca.pem).unwrap();
        path
    });
    TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        client_ca,
    }
}

fn settings(files: TlsFiles, clients: ClientIdentities) -> TlsSettings {
    TlsSettings {
        role: Role::Grpc,
        files,
        clients,
    }
}

fn load_error(files: TlsFiles) -> String {
    ServerTls::load(settings(files, ClientIdentities::default()))
        .expect_err("the files must be refused")
        .to_string()
}

#[test]
fn loads_a_pair_and_reports_its_serial_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let files = write(dir.path(), &ca.server(0x1234), Some(&ca));
    let tls = ServerTls::load(settings(files, ClientIdentities::default())).unwrap();
    let serving = tls.serving();
    assert_eq!(serving.leaf.serial, "1234");
    // rcgen's default validity: 1975 to 4096.
    assert_eq!(
        serving.leaf.not_before.unwrap().to_string(),
        "1975-01-01T00:00:00Z"
    );
    assert_eq!(
        serving.leaf.not_after.unwrap().to_string(),
        "4096-01-01T00:00:00Z"
    );
    assert_eq!(serving.config.alpn_protocols, vec![b"h2".to_vec()]);
    assert!(tls.requires_client_certificate());
}

#[test]
fn missing_and_empty_files_name_the_path_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let mut files = write(dir.path(), &ca.server(1), None);

    let missing = dir.path().join("absent.crt");
    let error = load_error(TlsFiles {
        cert: missing.clone(),
        ..files.clone()
    });
    assert!(error.contains(&missing.display().to_string()), "{error}");
    assert!(error.contains("No such file"), "{error}");
    assert!(error.starts_with("cannot read the certificate"), "{error}");

    std::fs::write(&files.cert, "not a certificate\n").unwrap();
    let error = load_error(files.clone());
    assert!(error.contains("holds no PEM certificate"), "{error}");
    assert!(error.contains(&files.cert.display().to_string()), "{error}");

    files = write(dir.path(), &ca.server(1), None);
    let empty_ca = dir.path().join("empty-ca.crt");
    std::fs::write(&empty_ca, "").unwrap();
    let error = load_error(TlsFiles {
        client_ca: Some(empty_ca.clone()),
        ..files
    });
    assert!(error.starts_with("the client CA file"), "{error}");
    assert!(error.contains(&empty_ca.display().to_string()), "{error}");
}

#[test]
fn a_key_of_another_certificate_is_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let files = write(dir.path(), &ca.server(1), None);
    std::fs::write(&files.key, ca.server(2).key_pem).unwrap();
    let error = load_error(files.clone());
    assert_eq!(
        error,
        format!(
            "the private key {} does not match the certificate {}",
            files.key.display(),
            files.cert.display()
        )
    );
}

#[test]
fn a_broken_key_is_refused_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let files = write(dir.path(), &ca.server(1), None);
    let secret = "c2VjcmV0LWtleS1tYXRlcmlhbA";
    std::fs::write(
        &files.key,
        format!("-----BEGIN PRIVATE KEY-----\n{secret}!!\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let error = load_error(files.clone());
    assert!(error.contains(&files.key.display().to_string()), "{error}");
    assert!(!error.contains(secret), "key bytes leaked: {error}");
    // A PEM block that decodes but is no key rustls can use.
    std::fs::write(
        &files.key,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let error = load_error(files.clone());
    assert!(error.contains("cannot be used"), "{error}");
    assert!(!error.contains("c2VjcmV0"), "key bytes leaked: {error}");
}

#[test]
fn read_files_never_print_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let server = ca.server(1);
    let files = write(dir.path(), &server, None);
    let material = Material::read(&files).unwrap();
    let printed = format!("{material:?}");
    assert!(printed.contains("tls.key"), "{printed}");
    for line in server.key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!printed.contains(line), "key material in {printed}");
    }
}

#[test]
fn a_bad_new_pair_keeps_the_old_one_and_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let files = write(dir.path(), &ca.server(1), None);
    let tls = ServerTls::load(settings(files.clone(), ClientIdentities::default())).unwrap();
    let mut watch = Watch::default();
    assert!(matches!(tls.look(&mut watch), Look::Unchanged));

    // A torn write (new certificate, old key) is reported only if it stays.
    let next = ca.server(2);
    std::fs::write(&files.cert, &next.cert_pem).unwrap();
    assert!(matches!(
        tls.look(&mut watch),
        Look::Failing(TlsError::KeyMismatch { .. })
    ));
    assert!(matches!(
        tls.look(&mut watch),
        Look::Rejected(TlsError::KeyMismatch { .. })
    ));
    assert!(matches!(tls.look(&mut watch), Look::StillRejected));
    assert_eq!(
        tls.serving().leaf.serial,
        "01",
        "the old pair keeps serving"
    );

    std::fs::write(&files.key, &next.key_pem).unwrap();
    match tls.look(&mut watch) {
        Look::Applied(leaf) => assert_eq!(leaf.serial, "02"),
        other => panic!("expected the new pair to apply: {other:?}"),
    }
    assert_eq!(tls.serving().leaf.serial, "02");
    assert!(matches!(tls.look(&mut watch), Look::Unchanged));

    // A file that disappears is a read error, reported on the second look.
    std::fs::remove_file(&files.key).unwrap();
    assert!(matches!(
        tls.look(&mut watch),
        Look::Failing(TlsError::Read { .. })
    ));
    assert!(matches!(
        tls.look(&mut watch),
        Look::Rejected(TlsError::Read { .. })
    ));
    assert_eq!(tls.serving().leaf.serial, "02");
}

#[tokio::test]
async fn a_rotated_client_ca_applies_to_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("tollgate CA");
    let old_clients = Ca::new("old client CA");
    let new_clients = Ca::new("new client CA");
    let files = write(dir.path(), &ca.server(1), Some(&old_clients));
    let ca_file = files.client_ca.clone().unwrap();
    let tls = ServerTls::load(settings(files, ClientIdentities::default())).unwrap();
    let old_envoy = old_clients.client(Vec::new());
    let new_envoy = new_clients.client(Vec::new());
    let old_config = client_config(&ca, Some(&old_envoy), &[b"h2"]);
    let new_config = client_config(&ca, Some(&new_envoy), &[b"h2"]);
    assert_eq!(handshake(&tls, Some(old_config.clone())).await, None);
    assert_eq!(
        handshake(&tls, Some(new_config.clone())).await,
        Some(Refusal::CertificateRejected)
    );

    std::fs::write(&ca_file, &new_clients.pem).unwrap();
    assert!(matches!(tls.look(&mut Watch::default()), Look::Applied(_)));
    assert_eq!(handshake(&tls, Some(new_config)).await, None);
    assert_eq!(
        handshake(&tls, Some(old_config)).await,
        Some(Refusal::CertificateRejected),
        "the old CA is no longer trusted"
    );
}

#[test]
fn the_allow_list_matches_spiffe_ids_and_dns_names() {
    let ca = Ca::new("ca");
    let envoy = ca.client(vec![spiffe("spiffe://cluster.local/ns/edge/sa/envoy")]);
    let other = ca.client(vec![spiffe("spiffe://cluster.local/ns/shop/sa/api")]);
    let named = ca.client(vec![dns("envoy.edge.svc")]);
    let bare = ca.client(Vec::new());

    let by_id =
        ClientIdentities::new(&["spiffe://cluster.local/ns/edge/sa/envoy".into()], &[]).unwrap();
    assert!(by_id.allows(&envoy.der));
    assert!(!by_id.allows(&other.der));
    assert!(!by_id.allows(&named.der));
    assert!(!by_id.allows(&bare.der));

    let by_name = ClientIdentities::new(&[], &["ENVOY.edge.svc".into()]).unwrap();
    assert!(by_name.allows(&named.der));
    assert!(!by_name.allows(&envoy.der));

    assert!(
        ClientIdentities::default().allows(&bare.der),
        "empty: any certificate"
    );
}

/// The outcome of one handshake between a client and `tls` over a pipe:
/// the server's refusal, or `None` when the connection was established
/// (and carried a byte both ways).
async fn handshake(tls: &ServerTls, client: Option<Arc<rustls::ClientConfig>>) -> Option<Refusal> {
    let (server_io, mut client_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tls.acceptor();
    let server = tokio::spawn(async move {
        let mut stream = acceptor.accept(server_io).await?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await?;
        stream.write_all(&byte).await?;
        stream.flush().await?;
        std::io::Result::Ok(())
    });
    match client {
        Some(config) => {
            let connector = tokio_rustls::TlsConnector::from(config);
            let name = ServerName::try_from("localhost").unwrap();
            if let Ok(mut stream) = connector.connect(name, client_io).await {
                let _ = stream.write_all(b"x").await;
                let _ = stream.flush().await;
                let mut byte = [0u8; 1];
                let _ = stream.read_exact(&mut byte).await;
            }
        }
        None => {
            // A plaintext HTTP/2 client: the connection preface.
            let _ = client_io
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await;
            let mut rest = Vec::new();
            let _ = client_io.read_to_end(&mut rest).await;
        }
    }
    match server.await.unwrap() {
        Ok(()) => None,
        Err(error) => Some(Refusal::of(&error)),
    }
}

fn client_config(
    trusted: &Ca,
    identity: Option<&Issued>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(
                vec![id.der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone())),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

#[tokio::test]
async fn handshakes_are_refused_for_the_reason_the_metric_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("tollgate CA");
    let stranger_ca = Ca::new("another CA");
    let files = write(dir.path(), &ca.server(1), Some(&ca));
    let allowed =
        ClientIdentities::new(&["spiffe://cluster.local/ns/edge/sa/envoy".into()], &[]).unwrap();
    let tls = ServerTls::load(settings(files, allowed)).unwrap();

    let envoy = ca.client(vec![spiffe("spiffe://cluster.local/ns/edge/sa/envoy")]);
    let intruder = ca.client(vec![spiffe("spiffe://cluster.local/ns/shop/sa/api")]);
    let foreign = stranger_ca.client(vec![spiffe("spiffe://cluster.local/ns/edge/sa/envoy")]);

    let ok = client_config(&ca, Some(&envoy), &[b"h2"]);
    assert_eq!(
        handshake(&tls, Some(ok)).await,
        None,
        "the allowed Envoy connects"
    );
    let no_alpn = client_config(&ca, Some(&envoy), &[]);
    assert_eq!(
        handshake(&tls, Some(no_alpn)).await,
        None,
        "no ALPN offered is served"
    );

    let cases = [
        (
            client_config(&ca, None, &[b"h2"]),
            Refusal::NoClientCertificate,
        ),
        (
            client_config(&ca, Some(&foreign), &[b"h2"]),
            Refusal::CertificateRejected,
        ),
        (
            client_config(&ca, Some(&intruder), &[b"h2"]),
            Refusal::IdentityNotAllowed,
        ),
        // The client does not trust tollgate's CA and says so.
        (
            client_config(&stranger_ca, Some(&envoy), &[b"h2"]),
            Refusal::ClientAlert,
        ),
        // HTTP/1.1 only: no protocol in common with the gRPC port.
        (
            client_config(&ca, Some(&envoy), &[b"http/1.1"]),
            Refusal::ProtocolError,
        ),
    ];
    for (client, expected) in cases {
        assert_eq!(handshake(&tls, Some(client)).await, Some(expected));
    }
    assert_eq!(handshake(&tls, None).await, Some(Refusal::NotTls));
}

#[cfg(unix)]
#[test]
fn a_secret_mount_swapped_by_its_data_link_is_picked_up() {
    // Kubernetes' layout: tls.crt -> ..data/tls.crt, ..data -> ..<version>;
    // an update writes a new version directory and renames a new ..data
    // link over the old one.
    use std::os::unix::fs::symlink;
    let mount = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let version = |name: &str, issued: &Issued| {
        let dir = mount.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        write(&dir, issued, None);
    };
    version("..v1", &ca.server(1));
    symlink("..v1", mount.path().join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        symlink(format!("..data/{file}"), mount.path().join(file)).unwrap();
    }
    let files = TlsFiles {
        cert: mount.path().join("tls.crt"),
        key: mount.path().join("tls.key"),
        client_ca: None,
    };
    let tls = ServerTls::load(settings(files, ClientIdentities::default())).unwrap();
    assert_eq!(tls.serving().leaf.serial, "01");

    version("..v2", &ca.server(2));
    symlink("..v2", mount.path().join("..data_tmp")).unwrap();
    std::fs::rename(mount.path().join("..data_tmp"), mount.path().join("..data")).unwrap();
    let mut watch = Watch::default();
    match tls.look(&mut watch) {
        Look::Applied(leaf) => assert_eq!(leaf.serial, "02"),
        other => panic!("expected the swapped Secret to apply: {other:?}"),
    }
}
