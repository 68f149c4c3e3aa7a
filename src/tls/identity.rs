//! Which clients may connect: the identities allowed on a listener with a
//! client CA, and the verifier that enforces them.
//!
//! A client CA alone admits every certificate it issued; in a cluster
//! that is often every workload (a mesh CA, a cluster-wide cert-manager
//! issuer). The allow-list narrows it to the Envoys meant to call:
//! SPIFFE IDs (URI SANs, `spiffe://trust-domain/path`) or DNS SANs.
//!
//! The check runs inside the handshake, right after the chain has been
//! verified against the CA ([`AllowListVerifier`]): a certificate from the
//! right CA with the wrong identity fails the handshake with the
//! `access_denied` alert, so the connection never opens and no request
//! reaches `Check`.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, DnsName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// A configured identity that cannot be a certificate's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "{0:?} is not a SPIFFE ID: expected spiffe://<trust domain>/<path> (lower-case trust domain, no query, fragment or port)"
    )]
    SpiffeId(String),
    #[error("{0:?} is not a DNS name")]
    DnsName(String),
}

/// The client identities a listener accepts. Empty: any certificate the
/// client CA issued.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientIdentities {
    spiffe_ids: Vec<String>,
    /// Lower case: DNS names compare without regard to case (RFC 4343).
    dns_names: Vec<String>,
}

impl ClientIdentities {
    /// Validates the configured identities.
    pub fn new(spiffe_ids: &[String], dns_names: &[String]) -> Result<Self, IdentityError> {
        for id in spiffe_ids {
            if !is_spiffe_id(id) {
                return Err(IdentityError::SpiffeId(id.clone()));
            }
        }
        let dns_names = dns_names
            .iter()
            .map(|name| {
                DnsName::try_from(name.as_str())
                    .map(|_| name.to_ascii_lowercase())
                    .map_err(|_| IdentityError::DnsName(name.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            spiffe_ids: spiffe_ids.to_vec(),
            dns_names,
        })
    }

    /// True when no identity is listed (any certificate of the CA).
    pub fn is_empty(&self) -> bool {
        self.spiffe_ids.is_empty() && self.dns_names.is_empty()
    }

    /// Whether `cert` carries one of the allowed identities: a URI SAN
    /// equal to an allowed SPIFFE ID, or a DNS SAN equal to an allowed
    /// name. A wildcard SAN matches only the same wildcard listed.
    pub fn allows(&self, cert: &CertificateDer<'_>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
            return false;
        };
        let spiffe = cert
            .valid_uri_names()
            .any(|uri| self.spiffe_ids.iter().any(|id| id == uri));
        spiffe
            || cert.valid_dns_names().any(|name| {
                self.dns_names
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(name))
            })
    }
}

/// SPIFFE ID syntax (SPIFFE-ID standard §2): `spiffe://`, a trust domain of
/// lower-case letters, digits, `.`, `-`, `_`, and a non-empty path of
/// segments of letters, digits, `.`, `-`, `_` (no `.`/`..` segments).
fn is_spiffe_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return false;
    };
    let Some((domain, path)) = rest.split_once('/') else {
        return false;
    };
    let domain_ok = !domain.is_empty()
        && domain.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    let path_ok = path.split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    });
    domain_ok && path_ok
}

/// The CA's verifier, then the allow-list: a certificate must chain to the
/// client CA *and* carry an allowed identity.
#[derive(Debug)]
pub struct AllowListVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: ClientIdentities,
}

impl AllowListVerifier {
    /// Wraps `inner` (the CA's verifier) with `allowed`.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, allowed: ClientIdentities) -> Self {
        Self { inner, allowed }
    }
}

impl ClientCertVerifier for AllowListVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed.allows(end_entity) {
            Ok(verified)
        } else {
            // Sent to the client as the `access_denied` alert; counted as
            // `identity_not_allowed` (see `accept::Refusal`).
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_id_syntax() {
        for good in [
            "spiffe://cluster.local/ns/edge/sa/envoy",
            "spiffe://example.org/a",
            "spiffe://my_domain-1/x.y-z_0",
        ] {
            assert!(is_spiffe_id(good), "{good}");
        }
        for bad in [
            "https://cluster.local/ns/edge",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe://Cluster.local/a",
            "spiffe://cluster.local:8443/a",
            "spiffe://cluster.local/a//b",
            "spiffe://cluster.local/a/../b",
            "spiffe://cluster.local/a?b",
            "spiffe:///a",
        ] {
            assert!(!is_spiffe_id(bad), "{bad}");
        }
    }

    #[test]
    fn configured_identities_are_validated() {
        let ok = ClientIdentities::new(
            &["spiffe://cluster.local/ns/edge/sa/envoy".into()],
            &["Envoy.Edge.svc".into()],
        )
        .unwrap();
        assert_eq!(ok.dns_names, ["envoy.edge.svc"]);
        assert!(!ok.is_empty());
        assert_eq!(
            ClientIdentities::new(&["envoy".into()], &[]),
            Err(IdentityError::SpiffeId("envoy".into()))
        );
        assert_eq!(
            ClientIdentities::new(&[], &["not a name".into()]),
            Err(IdentityError::DnsName("not a name".into()))
        );
        assert!(ClientIdentities::default().is_empty());
    }
}
