//! `Content-Digest` (RFC 9530 §2): a signature covering the field covers
//! the body only when tollgate checks the field against the body Envoy
//! sent. Envoy must buffer it (`with_request_body` with `pack_as_bytes:
//! true` and `allow_partial_message: false`); a truncated or missing body
//! cannot be verified and is refused.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sfv::{BareItem, Dictionary, Item, ListEntry, Parser, Version};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::request::{Body, Headers};

/// Why the digest does not hold. Client-safe messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("the Content-Digest field is not a structured-field dictionary of byte sequences")]
    Syntax,
    #[error("the Content-Digest field has no sha-256 or sha-512 digest")]
    NoKnownAlgorithm,
    #[error(
        "the request body was not sent to tollgate (Envoy's with_request_body), so Content-Digest cannot be checked"
    )]
    BodyUnavailable,
    #[error(
        "the request body was truncated before tollgate saw it; Content-Digest cannot be checked"
    )]
    Truncated,
    #[error("the request body does not match its Content-Digest ({0})")]
    Mismatch(&'static str),
}

/// Checks every `sha-256` / `sha-512` member of the request's
/// `Content-Digest` against the body (unknown algorithms are ignored,
/// RFC 9530 §2; at least one known one must be present). `protocol` is
/// the request's HTTP version as Envoy reported it (`HTTP/1.1`, `HTTP/2`…;
/// empty when unknown): it decides whether a body Envoy did not send may
/// be taken for empty.
pub fn check(headers: &Headers, body: Option<&Body>, protocol: &str) -> Result<(), DigestError> {
    let values: Vec<&str> = headers.get_all("content-digest").collect();
    let dict: Dictionary = Parser::new(values.join(", ").as_bytes())
        .with_version(Version::Rfc8941)
        .parse()
        .map_err(|_| DigestError::Syntax)?;
    let bytes = body_bytes(headers, body, protocol)?;
    let mut known = 0;
    for (name, entry) in &dict {
        let ListEntry::Item(Item {
            bare_item: BareItem::ByteSequence(claimed),
            ..
        }) = entry
        else {
            return Err(DigestError::Syntax);
        };
        let (label, actual): (&'static str, Vec<u8>) = match name.as_str() {
            "sha-256" => ("sha-256", Sha256::digest(bytes).to_vec()),
            "sha-512" => ("sha-512", Sha512::digest(bytes).to_vec()),
            _ => continue,
        };
        known += 1;
        if !bool::from(actual.as_slice().ct_eq(claimed.as_slice())) {
            return Err(DigestError::Mismatch(label));
        }
    }
    if known == 0 {
        return Err(DigestError::NoKnownAlgorithm);
    }
    Ok(())
}

/// The body to hash: what Envoy buffered (Envoy marks a buffered body with
/// `x-envoy-auth-partial-body`, which it never takes from a client). When
/// Envoy sent none, the body counts as empty only if the request's framing
/// says it has none:
///
/// - `content-length: 0` (RFC 9110 §8.6; over HTTP/2 and HTTP/3 a length
///   that disagrees with the DATA frames makes the request malformed, RFC
///   9113 §8.1.1, so Envoy refuses it);
/// - over HTTP/1.x, neither `content-length` nor `transfer-encoding`
///   (RFC 9112 §6.3: such a request has no body).
///
/// Over HTTP/2 and HTTP/3 a body needs no `content-length` at all (it
/// travels in DATA frames), so no length there is no evidence of no body;
/// nor is an unknown protocol.
fn body_bytes<'a>(
    headers: &Headers,
    body: Option<&'a Body>,
    protocol: &str,
) -> Result<&'a [u8], DigestError> {
    match body {
        Some(body) if body.truncated => Err(DigestError::Truncated),
        Some(body) => Ok(&body.bytes),
        None => {
            let length = headers.get("content-length").map(str::trim);
            let chunked = headers.get("transfer-encoding").is_some();
            let http1 = protocol.starts_with("HTTP/1.");
            let empty = match length {
                Some(length) => length == "0" && !chunked,
                None => http1 && !chunked,
            };
            if empty {
                Ok(&[])
            } else {
                Err(DigestError::BodyUnavailable)
            }
        }
    }
}

/// The `Content-Digest` value for `body` with SHA-256 (for signing).
pub fn sha256_field(body: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)))
}
