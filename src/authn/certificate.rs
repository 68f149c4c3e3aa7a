//! The client certificate: RFC 8705 certificate-bound tokens and
//! certificate fingerprints for app identification.
//!
//! Envoy sends the peer certificate as URL-encoded PEM
//! (`include_peer_certificate`); the gRPC adapter decodes it into
//! [`crate::request::RequestContext::peer_certificate`].

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Largest PEM accepted (a certificate is a few KiB).
const MAX_PEM_BYTES: usize = 64 * 1024;

/// The DER bytes of the first certificate in `pem`.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    if pem.len() > MAX_PEM_BYTES {
        return None;
    }
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let start = pem.find(begin)? + begin.len();
    let stop = start + pem[start..].find(end)?;
    let body: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD.decode(body).ok()?;
    (!der.is_empty()).then_some(der)
}

/// The SHA-256 of the certificate's DER encoding.
pub fn sha256(pem: &str) -> Option<[u8; 32]> {
    pem_to_der(pem).map(|der| Sha256::digest(der).into())
}

/// RFC 8705 §3.1: the `x5t#S256` confirmation value, the base64url
/// (unpadded) SHA-256 of the DER certificate.
pub fn thumbprint(pem: &str) -> Option<String> {
    sha256(pem).map(|d| URL_SAFE_NO_PAD.encode(d))
}

/// Lower-case hex of the certificate's SHA-256 (as registered in
/// `AppRegistration.spec.clientCertificate.sha256Fingerprints`).
pub fn fingerprint_hex(pem: &str) -> Option<String> {
    sha256(pem).map(hex)
}

/// Normalises a configured fingerprint: lower case, `:` separators dropped.
pub fn normalize_fingerprint(text: &str) -> Result<String, String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(format!(
            "{text:?} is not a SHA-256 fingerprint (64 hex digits)"
        ))
    }
}

/// Lower-case hex.
pub fn hex(bytes: impl AsRef<[u8]>) -> String {
    bytes.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a certificate binding fails.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("the token is bound to a client certificate but none was presented")]
    NoCertificate,
    #[error("the token is bound to a different client certificate")]
    Mismatch,
}

/// RFC 8705 §3: the token's `x5t#S256` must equal the thumbprint of the
/// certificate the client presented on this connection.
pub fn check_binding(expected: &str, peer_pem: Option<&str>) -> Result<(), BindingError> {
    let actual = peer_pem
        .and_then(thumbprint)
        .ok_or(BindingError::NoCertificate)?;
    if bool::from(actual.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(BindingError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A syntactically valid PEM wrapper around arbitrary bytes is enough
    /// for thumbprints: they hash the DER without parsing it.
    fn pem(der: &[u8]) -> String {
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            STANDARD.encode(der)
        )
    }

    #[test]
    fn thumbprint_is_base64url_sha256_of_der() {
        let der = b"not really a certificate";
        let expected = URL_SAFE_NO_PAD.encode(Sha256::digest(der));
        assert_eq!(thumbprint(&pem(der)), Some(expected.clone()));
        assert!(check_binding(&expected, Some(&pem(der))).is_ok());
        assert_eq!(
            check_binding(&expected, Some(&pem(b"other"))),
            Err(BindingError::Mismatch)
        );
        assert_eq!(
            check_binding(&expected, None),
            Err(BindingError::NoCertificate)
        );
        assert_eq!(
            check_binding(&expected, Some("garbage")),
            Err(BindingError::NoCertificate)
        );
    }

    #[test]
    fn fingerprints_normalise() {
        let fp = fingerprint_hex(&pem(b"x")).unwrap();
        assert_eq!(fp.len(), 64);
        let colons: String = fp
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(normalize_fingerprint(&colons), Ok(fp));
        assert!(normalize_fingerprint("abc").is_err());
    }
}
