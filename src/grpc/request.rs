//! `CheckRequest` → [`RequestContext`]: the one place that knows how Envoy
//! describes a request.
//!
//! Translation never fails: whatever cannot be translated safely (missing
//! attributes, too many or too large headers, a non-UTF-8 raw header value,
//! an oversized body) is recorded in [`RequestContext::defects`], which the
//! pipeline's first stage turns into `request_malformed`. Reading stops at
//! the bounds in [`crate::request`], so a hostile message costs bounded work.
//!
//! What Envoy sends (`check_request_utils.cc`): `path` is the request target
//! (path and query); `host` is `:authority`; headers come either as the
//! `headers` map (repeats joined with `,`, non-UTF-8 bytes replaced by `!`)
//! or, with `encode_raw_headers: true`, as `header_map` with raw byte
//! values, repeats kept apart. Both include the pseudo-headers (`:path`…),
//! which tollgate reads from the dedicated fields instead.

use std::net::IpAddr;

use super::pb::envoy::config::core::v3::address;
use super::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer};
use super::pb::{AttributeContext, CheckRequest};
use crate::request::{Body, MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_HEADER_COUNT, RequestContext};

/// The header Envoy adds when it buffered the body: `true` when it cut the
/// body at `max_request_bytes`.
const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// Translates an Envoy `CheckRequest` into the core's request model.
/// Copies what it needs; the server uses [`into_context`], which moves.
pub fn to_context(check: &CheckRequest) -> RequestContext {
    into_context(check.clone())
}

/// Translates an owned `CheckRequest`, moving its strings (method, target,
/// header names and values, context extensions) into the
/// [`RequestContext`] instead of copying them: the request path pays no
/// allocation per header.
pub fn into_context(check: CheckRequest) -> RequestContext {
    let mut request = RequestContext::default();
    let Some(mut attributes) = check.attributes else {
        request
            .defects
            .push("the CheckRequest has no attributes".to_owned());
        return request;
    };
    read_connection(&attributes, &mut request);
    request.context_extensions = std::mem::take(&mut attributes.context_extensions)
        .into_iter()
        .collect();
    match attributes.request.and_then(|r| r.http) {
        Some(http) => read_http(http, &mut request),
        None => request
            .defects
            .push("the CheckRequest has no HTTP request attributes".to_owned()),
    }
    request
}

/// Peer address, TLS and client certificate.
fn read_connection(attributes: &AttributeContext, request: &mut RequestContext) {
    let source = attributes.source.as_ref();
    request.peer_ip = source.and_then(peer_ip);
    if let Some(source) = source {
        if !source.certificate.is_empty() {
            match crate::encoding::percent_decode(&source.certificate) {
                Some(pem) => request.peer_certificate = Some(pem),
                None => request
                    .defects
                    .push("the peer certificate is not valid URL-encoded PEM".to_owned()),
            }
        }
        if !source.principal.is_empty() {
            request.peer_principal = Some(source.principal.clone());
        }
    }
    request.tls = connection_is_tls(attributes);
}

/// Whether the downstream connection used TLS.
///
/// Envoy sets a peer's `principal` only on TLS connections, and for the
/// destination (Envoy's own listener) it is the SAN or subject of the
/// server certificate, which every TLS listener has: that is the reliable
/// signal. A presented client certificate, or an SNI in `tls_session`
/// (which only a TLS ClientHello carries), prove TLS too. A `tls_session`
/// that is merely present proves nothing: since Envoy 1.31 the filter adds
/// it to every request when `include_tls_session` is on, plaintext ones
/// included.
fn connection_is_tls(attributes: &AttributeContext) -> bool {
    let destination_principal = attributes
        .destination
        .as_ref()
        .is_some_and(|d| !d.principal.is_empty());
    let client_certificate = attributes
        .source
        .as_ref()
        .is_some_and(|s| !s.certificate.is_empty() || !s.principal.is_empty());
    let sni = attributes
        .tls_session
        .as_ref()
        .is_some_and(|t| !t.sni.is_empty());
    destination_principal || client_certificate || sni
}

/// The IP of a peer's socket address (none for pipes or unparsable text).
fn peer_ip(peer: &Peer) -> Option<IpAddr> {
    match peer.address.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(socket) => socket.address.parse().ok(),
        address::Address::Pipe(_) => None,
    }
}

/// Method, target, authority, headers and body.
fn read_http(mut http: HttpRequest, request: &mut RequestContext) {
    request.method = std::mem::take(&mut http.method);
    request.scheme = std::mem::take(&mut http.scheme);
    request.authority = std::mem::take(&mut http.host);
    request.protocol = std::mem::take(&mut http.protocol);
    read_headers(&mut http, request);
    if request.authority.is_empty()
        && let Some(host) = request.headers.get("host")
    {
        request.authority = host.to_owned();
    }
    request.set_target_owned(std::mem::take(&mut http.path));
    // The id goes into log lines: only a short, printable one is taken.
    request.id = request
        .headers
        .get("x-request-id")
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| std::mem::take(&mut http.id));
    read_body(http, request);
}

/// Reads the headers from `header_map` (raw) or the `headers` map, within
/// the count and byte bounds. Pseudo-headers count towards the bounds but
/// are not kept: their values arrive in the dedicated fields.
fn read_headers(http: &mut HttpRequest, request: &mut RequestContext) {
    let mut reader = HeaderReader::default();
    match http.header_map.take() {
        Some(map) if !map.headers.is_empty() => {
            for header in map.headers {
                let value = if header.raw_value.is_empty() {
                    Ok(header.value)
                } else {
                    String::from_utf8(header.raw_value)
                };
                let added = match value {
                    Ok(value) => reader.add(header.key, value, request),
                    Err(raw) => {
                        request.defects.push(format!(
                            "the value of header {:?} is not valid UTF-8",
                            printable(&header.key)
                        ));
                        reader.count(&header.key, raw.as_bytes().len(), request)
                    }
                };
                if !added {
                    break;
                }
            }
        }
        _ => {
            // A map has no order; sort so translation is deterministic.
            let mut entries: Vec<(String, String)> =
                std::mem::take(&mut http.headers).into_iter().collect();
            entries.sort();
            for (name, value) in entries {
                if !reader.add(name, value, request) {
                    break;
                }
            }
        }
    }
}

/// Counts headers and bytes while reading them.
#[derive(Default)]
struct HeaderReader {
    count: usize,
    bytes: usize,
}

impl HeaderReader {
    /// Checks and adds one header; false when reading must stop.
    fn add(&mut self, name: String, value: String, request: &mut RequestContext) -> bool {
        if !self.count(&name, value.len(), request) {
            return false;
        }
        if name.is_empty() {
            request
                .defects
                .push("a header has an empty name".to_owned());
            return true;
        }
        // RFC 9110 §5.5: CR, LF and NUL are never valid in a field value.
        if has_cr_lf_or_nul(value.as_bytes()) {
            request.defects.push(format!(
                "the value of header {:?} contains CR, LF or NUL",
                printable(&name)
            ));
            return true;
        }
        if !name.starts_with(':') {
            request.headers.push_owned(name, value);
        }
        true
    }

    /// Counts one header against the bounds; false (with a defect) past them.
    fn count(&mut self, name: &str, value_len: usize, request: &mut RequestContext) -> bool {
        self.count += 1;
        self.bytes = self.bytes.saturating_add(name.len() + value_len);
        if self.count > MAX_HEADER_COUNT {
            request.defects.push(format!(
                "the request has more than {MAX_HEADER_COUNT} headers"
            ));
            return false;
        }
        if self.bytes > MAX_HEADER_BYTES {
            request.defects.push(format!(
                "the request headers exceed {MAX_HEADER_BYTES} bytes"
            ));
            return false;
        }
        true
    }
}

/// Whether `value` holds a CR, LF or NUL byte. `memchr3` scans with the
/// widest vector unit the CPU has (AVX2 or SSE2, picked at run time):
/// credential headers (JWTs) are the longest values of every request, and
/// the portable byte loop cost about 7 instructions per byte of them
/// (docs/performance.md, "Session 3").
fn has_cr_lf_or_nul(value: &[u8]) -> bool {
    memchr::memchr3(b'\r', b'\n', 0, value).is_some()
}

/// The body from `raw_body` (exact bytes) or `body` (UTF-8, sanitised by
/// Envoy), bounded by [`MAX_BODY_BYTES`].
fn read_body(http: HttpRequest, request: &mut RequestContext) {
    let bytes: Vec<u8> = if !http.raw_body.is_empty() {
        http.raw_body
    } else {
        http.body.into_bytes()
    };
    let partial = request.headers.get(PARTIAL_BODY_HEADER);
    if bytes.is_empty() && partial.is_none() {
        return;
    }
    if bytes.len() > MAX_BODY_BYTES {
        request
            .defects
            .push(format!("the request body exceeds {MAX_BODY_BYTES} bytes"));
        return;
    }
    let truncated = partial == Some("true");
    request.body = Some(Body { bytes, truncated });
}

/// A header name made safe for a log line or problem detail.
fn printable(name: &str) -> String {
    name.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::grpc::pb::envoy::config::core::v3::{
        Address, HeaderMap, HeaderValue, SocketAddress,
    };
    use crate::grpc::pb::envoy::service::auth::v3::attribute_context::{Request, TlsSession};

    fn http(headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            id: "7".into(),
            method: "GET".into(),
            path: "/v1/search?q=bikes".into(),
            host: "api.bikes.example".into(),
            scheme: "https".into(),
            protocol: "HTTP/2".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn check(http: HttpRequest) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: "203.0.113.9".into(),
                            port_specifier: None,
                        })),
                    }),
                    ..Default::default()
                }),
                request: Some(Request {
                    time: None,
                    http: Some(http),
                }),
                context_extensions: HashMap::from([(
                    "tollgate.dev/policy".to_owned(),
                    "mobility/bikes".to_owned(),
                )]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn translates_the_envoy_request() {
        let request = to_context(&check(http(&[
            (":authority", "api.bikes.example"),
            ("x-request-id", "req-1"),
            ("accept", "application/json"),
        ])));
        assert!(request.defects.is_empty(), "{:?}", request.defects);
        assert_eq!(request.id, "req-1");
        assert_eq!(request.method, "GET");
        assert_eq!(request.scheme, "https");
        assert_eq!(request.protocol, "HTTP/2");
        assert_eq!(request.authority, "api.bikes.example");
        assert_eq!(request.path, "/v1/search");
        assert_eq!(request.query.as_deref(), Some("q=bikes"));
        assert_eq!(request.headers.get("accept"), Some("application/json"));
        assert_eq!(
            request.headers.get(":authority"),
            None,
            "pseudo-headers dropped"
        );
        assert_eq!(request.peer_ip, Some("203.0.113.9".parse().unwrap()));
        assert!(!request.tls, "no TLS evidence");
        assert_eq!(
            request
                .context_extensions
                .get("tollgate.dev/policy")
                .map(String::as_str),
            Some("mobility/bikes")
        );
    }

    #[test]
    fn request_id_falls_back_to_the_stream_id() {
        let request = to_context(&check(http(&[])));
        assert_eq!(request.id, "7");
        let forged = to_context(&check(http(&[("x-request-id", "a\x1b[31mb")])));
        assert_eq!(forged.id, "7", "control characters never reach a log line");
        let long = "a".repeat(129);
        assert_eq!(to_context(&check(http(&[("x-request-id", &long)]))).id, "7");
    }

    #[test]
    fn missing_parts_are_defects() {
        let request = to_context(&CheckRequest { attributes: None });
        assert_eq!(request.defects.len(), 1);
        let mut no_http = check(http(&[]));
        if let Some(attributes) = no_http.attributes.as_mut() {
            attributes.request = None;
        }
        let request = to_context(&no_http);
        assert!(request.defects[0].contains("no HTTP request"));
    }

    #[test]
    fn raw_header_map_keeps_repeats_and_refuses_non_utf8() {
        let mut h = http(&[]);
        h.header_map = Some(HeaderMap {
            headers: vec![
                HeaderValue {
                    key: "authorization".into(),
                    value: String::new(),
                    raw_value: b"Bearer a".to_vec(),
                },
                HeaderValue {
                    key: "authorization".into(),
                    value: String::new(),
                    raw_value: b"Bearer b".to_vec(),
                },
            ],
        });
        let request = to_context(&check(h.clone()));
        assert_eq!(request.headers.count("authorization"), 2);
        assert!(request.defects.is_empty());

        h.header_map = Some(HeaderMap {
            headers: vec![HeaderValue {
                key: "x-name".into(),
                value: String::new(),
                raw_value: vec![b'E', b's', 0xF1, b'a'],
            }],
        });
        let request = to_context(&check(h));
        assert_eq!(request.defects.len(), 1);
        assert!(request.defects[0].contains("not valid UTF-8"));
        assert!(request.defects[0].contains("x-name"));
    }

    #[test]
    fn header_bounds_are_defects() {
        let many: Vec<(String, String)> = (0..=MAX_HEADER_COUNT)
            .map(|i| (format!("x-h{i}"), "v".to_owned()))
            .collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let request = to_context(&check(http(&refs)));
        assert!(request.defects.iter().any(|d| d.contains("more than")));

        let big = "a".repeat(MAX_HEADER_BYTES);
        let request = to_context(&check(http(&[("x-big", &big)])));
        assert!(request.defects.iter().any(|d| d.contains("exceed")));

        let request = to_context(&check(http(&[("x-bad", "a\r\nb")])));
        assert!(request.defects.iter().any(|d| d.contains("CR, LF")));
    }

    #[test]
    fn cr_lf_and_nul_are_found_anywhere_in_long_values() {
        let long = "a".repeat(100);
        assert!(!has_cr_lf_or_nul(long.as_bytes()));
        for bad in [b'\r', b'\n', 0] {
            for at in [0, 31, 32, 63, 99] {
                let mut value = long.clone().into_bytes();
                value[at] = bad;
                assert!(has_cr_lf_or_nul(&value), "{bad} at {at}");
            }
        }
    }

    #[test]
    fn body_is_bounded_and_partial_bodies_flagged() {
        let mut h = http(&[("x-envoy-auth-partial-body", "true")]);
        h.raw_body = b"{\"a\":1}".to_vec();
        let request = to_context(&check(h.clone()));
        let body = request.body.unwrap();
        assert_eq!(body.bytes, b"{\"a\":1}");
        assert!(body.truncated);

        h.raw_body = vec![0; MAX_BODY_BYTES + 1];
        let request = to_context(&check(h));
        assert!(request.defects.iter().any(|d| d.contains("body exceeds")));
        assert!(request.body.is_none());
    }

    #[test]
    fn tls_evidence() {
        let mut plain = check(http(&[]));
        if let Some(a) = plain.attributes.as_mut() {
            // Envoy ≥ 1.31 sends an empty tls_session on plaintext too.
            a.tls_session = Some(TlsSession::default());
        }
        assert!(!to_context(&plain).tls);

        let mut tls = plain.clone();
        if let Some(a) = tls.attributes.as_mut() {
            a.destination = Some(Peer {
                principal: "spiffe://cluster.local/ns/edge/sa/envoy".into(),
                ..Default::default()
            });
        }
        assert!(to_context(&tls).tls);

        let mut sni = plain.clone();
        if let Some(a) = sni.attributes.as_mut() {
            a.tls_session = Some(TlsSession {
                sni: "api.bikes.example".into(),
            });
        }
        assert!(to_context(&sni).tls);
    }

    #[test]
    fn peer_certificate_is_url_decoded() {
        let mut req = check(http(&[]));
        if let Some(a) = req.attributes.as_mut()
            && let Some(source) = a.source.as_mut()
        {
            source.certificate =
                "-----BEGIN%20CERTIFICATE-----%0AMIIB%0A-----END%20CERTIFICATE-----%0A".into();
            source.principal = "spiffe://example/app".into();
        }
        let request = to_context(&req);
        assert_eq!(
            request.peer_certificate.as_deref(),
            Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        );
        assert_eq!(
            request.peer_principal.as_deref(),
            Some("spiffe://example/app")
        );
        assert!(request.tls);
    }
}
