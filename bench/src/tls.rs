//! Certificates for the TLS scenario, made at start-up with rcgen (ring):
//! one CA, tollgate's server certificate for `localhost`, and Envoy's
//! client certificate with a SPIFFE ID that tollgate allows. The files
//! live in the run's temporary directory; nothing is committed.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use serde_json::{Value, json};

/// The SPIFFE ID of the benchmark's Envoy.
pub const ENVOY_ID: &str = "spiffe://bench.tollgate/ns/edge/sa/envoy";

/// The files of the TLS scenario.
pub struct Files {
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Files {
    /// Makes the CA and both certificates and writes them into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "tollgate-bench CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = params.self_signed(&ca_key)?;
        let ca = Issuer::new(params, ca_key);
        let issue = |sans: Vec<SanType>, usage, stem: &str| -> anyhow::Result<(PathBuf, PathBuf)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(DnType::CommonName, stem);
            params.subject_alt_names = sans;
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca)?;
            let (cert_path, key_path) = (
                dir.join(format!("{stem}.crt")),
                dir.join(format!("{stem}.key")),
            );
            std::fs::write(&cert_path, cert.pem())?;
            std::fs::write(&key_path, key.serialize_pem())?;
            Ok((cert_path, key_path))
        };
        let (server_cert, server_key) = issue(
            vec![SanType::DnsName("localhost".try_into()?)],
            ExtendedKeyUsagePurpose::ServerAuth,
            "tollgate",
        )?;
        let (client_cert, client_key) = issue(
            vec![SanType::URI(ENVOY_ID.try_into()?)],
            ExtendedKeyUsagePurpose::ClientAuth,
            "envoy",
        )?;
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, ca_cert.pem())?;
        Ok(Self {
            server_cert,
            server_key,
            ca: ca_path,
            client_cert,
            client_key,
        })
    }

    /// `tollgate serve` flags: TLS with a required client certificate
    /// carrying [`ENVOY_ID`].
    pub fn tollgate_args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        vec![
            "--grpc-tls-cert".into(),
            path(&self.server_cert),
            "--grpc-tls-key".into(),
            path(&self.server_key),
            "--grpc-client-ca".into(),
            path(&self.ca),
            "--grpc-client-spiffe-id".into(),
            ENVOY_ID.into(),
        ]
    }

    /// The Envoy cluster's `transport_socket`, as
    /// `deploy/envoy/front-proxy-mtls.yaml` configures it.
    pub fn transport_socket(&self) -> Value {
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "localhost",
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificates": [{
                        "certificate_chain": { "filename": self.client_cert },
                        "private_key": { "filename": self.client_key },
                    }],
                    "validation_context": {
                        "trusted_ca": { "filename": self.ca },
                        "match_typed_subject_alt_names": [{
                            "san_type": "DNS",
                            "matcher": { "exact": "localhost" },
                        }],
                    },
                },
            }
        })
    }
}
