//! The TLS gRPC port driven in-process through `tollgate::server::run`
//! (as `tests/grpc_server.rs` drives the plaintext one), with a raw HTTP/2
//! client over tokio-rustls: a connection opened before a certificate
//! rotation keeps answering `Check` after it while new connections get
//! the new certificate, and shutdown drains and closes the TLS listener.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use prost::Message;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tollgate::clock::SystemClock;
use tollgate::grpc::pb::{CheckRequest, CheckResponse};
use tollgate::pipeline::{Deps, Settings};
use tollgate::policy::{compile, document};
use tollgate::server::{self, Listeners, ServerError, ServerState, TlsListeners};
use tollgate::store::MemoryStore;
use tollgate::tls::{ClientIdentities, Role, ServerTls, TlsFiles, TlsSettings};

use support::tls::{Identity, TestPki, serial_of};

/// Bounds every wait (not an assertion on speed).
const LIMIT: Duration = Duration::from_secs(20);

const POLICY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: open, namespace: tls }
spec:
  hosts: [open.example]
  transport: { requireHttps: false }
"#;

/// A server with a TLS gRPC port requiring client certificates from
/// `pki`'s CA, its files reread every 50 ms.
struct TlsServer {
    grpc: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl TlsServer {
    async fn start(files: TlsFiles) -> Self {
        let docs = document::parse_documents(Path::new("policy.yaml"), POLICY).unwrap();
        let snapshot = compile::compile(&docs, 1).unwrap();
        let deps = Deps {
            store: Arc::new(MemoryStore::new()),
            clock: Arc::new(SystemClock),
            settings: Settings::default(),
        };
        let listeners = Listeners::bind(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let grpc = listeners.grpc_addr().unwrap();
        let mut state = ServerState::new(Arc::new(ArcSwap::from_pointee(snapshot)), deps);
        let tls = ServerTls::load(TlsSettings {
            role: Role::Grpc,
            files,
            clients: ClientIdentities::default(),
        })
        .unwrap();
        state.tls = TlsListeners {
            grpc: Some(tls),
            reload_interval: Some(Duration::from_millis(50)),
            ..TlsListeners::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listeners, state, async {
            let _ = stopped.await;
        }));
        Self {
            grpc,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(LIMIT, &mut self.task)
            .await
            .expect("run returned in time")
            .expect("run did not panic")
    }
}

/// An HTTP/2 connection over TLS, and the certificate the server showed.
struct Connection {
    client: h2::client::SendRequest<Bytes>,
    served: rustls::pki_types::CertificateDer<'static>,
}

impl Connection {
    async fn open(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (client, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Self { client, served }
    }

    /// One `Check` on this connection: its decoded answer.
    async fn check(&mut self, request: &CheckRequest) -> CheckResponse {
        let mut client = tokio::time::timeout(LIMIT, self.client.clone().ready())
            .await
            .unwrap()
            .unwrap();
        let head = http::Request::builder()
            .method("POST")
            .uri("https://localhost/envoy.service.auth.v3.Authorization/Check")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(head, false).unwrap();
        let message = request.encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        send.send_data(Bytes::from(frame), true).unwrap();
        let response = tokio::time::timeout(LIMIT, response)
            .await
            .unwrap()
            .unwrap();
        let mut body = response.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = tokio::time::timeout(LIMIT, body.data()).await.unwrap() {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        assert!(data.len() >= 5, "no gRPC message");
        let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
        CheckResponse::decode(&data[5..5 + len]).unwrap()
    }
}

fn request() -> CheckRequest {
    support::check::request("open.example", "/v1/bikes", &[], false)
}

fn allowed(response: &CheckResponse) -> bool {
    response.status.as_ref().is_some_and(|s| s.code == 0)
}

/// Replaces the pair by writing new files and renaming them over the old.
fn replace(files: &TlsFiles, identity: &Identity, dir: &Path) {
    let (cert, key) = identity.write(dir, "next");
    std::fs::rename(key, &files.key).unwrap();
    std::fs::rename(cert, &files.cert).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_open_across_a_rotation_keeps_answering_and_new_ones_get_the_new_certificate()
{
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate();
    let first = pki.server_with_serial(0x11);
    let (cert, key) = first.write(dir.path(), "tls");
    let files = TlsFiles {
        cert,
        key,
        client_ca: Some(pki.write_ca(dir.path(), "ca.crt")),
    };
    let server = TlsServer::start(files.clone()).await;
    let envoy = pki.client("envoy", Some("spiffe://tls.test/envoy"));
    let config = pki.client_config_alpn(Some(&envoy), &["h2"]);

    let mut open = Connection::open(server.grpc, config.clone()).await;
    assert_eq!(serial_of(&open.served), "11");
    assert!(allowed(&open.check(&request()).await));

    let second = pki.server_with_serial(0x22);
    replace(&files, &second, dir.path());
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let fresh = Connection::open(server.grpc, config.clone()).await;
        if serial_of(&fresh.served) == "22" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The connection from before the rotation is still open and answers.
    for _ in 0..3 {
        assert!(allowed(&open.check(&request()).await));
    }
    assert_eq!(serial_of(&open.served), "11");

    let addr = server.grpc;
    server.stop().await.unwrap();
    // The accept loop ends with the server: the port stops accepting.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the TLS listener still accepts after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
