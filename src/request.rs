//! The request as the decision core sees it: a transport-neutral model that
//! the gRPC adapter (and `tollgate check`, and the tests) build. Nothing here
//! knows Envoy's protos.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Most bytes of header names and values tollgate accepts in one request
/// (Envoy's own default limit is 60 KiB); more is `request_malformed`.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most headers tollgate accepts in one request.
pub const MAX_HEADER_COUNT: usize = 200;
/// Most body bytes tollgate reads (for `content-digest`).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// One HTTP request to decide on.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    /// Envoy's request id (`x-request-id`), for logs.
    pub id: String,
    /// Upper-case method.
    pub method: String,
    /// The `:scheme` Envoy reported. Not trusted on its own (see
    /// [`crate::origin`]).
    pub scheme: String,
    /// The `:authority` (or `Host`), as sent.
    pub authority: String,
    /// The downstream HTTP version as Envoy reported it (`HTTP/1.0`,
    /// `HTTP/1.1`, `HTTP/2`, `HTTP/3`); empty when unknown. Over HTTP/2 and
    /// HTTP/3 a body needs no `content-length`.
    pub protocol: String,
    /// The path without the query string, undecoded.
    pub path: String,
    /// The query string without `?`, if the target had one.
    pub query: Option<String>,
    /// Request headers, names lower-cased, in arrival order.
    pub headers: Headers,
    /// The direct peer's address (Envoy's downstream remote address).
    pub peer_ip: Option<IpAddr>,
    /// True when the downstream connection used TLS, as Envoy observed it:
    /// the local TLS identity (`destination.principal`), a client
    /// certificate, or an SNI. (Envoy ≥ 1.31 sends `tls_session` on every
    /// request when `include_tls_session` is on, so its presence alone
    /// proves nothing.)
    pub tls: bool,
    /// The downstream peer certificate, PEM, when Envoy sent it.
    pub peer_certificate: Option<String>,
    /// The peer's principal (URI SAN, DNS SAN or subject) from its certificate.
    pub peer_principal: Option<String>,
    /// Envoy per-route context extensions (`tollgate.dev/policy`, …).
    pub context_extensions: BTreeMap<String, String>,
    /// The request body, when Envoy buffered it.
    pub body: Option<Body>,
    /// Problems found while translating the transport request (oversized
    /// or non-UTF-8 headers…); any makes the request `request_malformed`.
    pub defects: Vec<String>,
}

/// A request body as Envoy sent it.
#[derive(Clone, Debug, Default)]
pub struct Body {
    pub bytes: Vec<u8>,
    /// Envoy truncated it (`allow_partial_message`), so it cannot be verified.
    pub truncated: bool,
}

/// Request headers. Names are lower-case; a name may repeat (Envoy sends
/// repeats separately with `encode_raw_headers`, joined with `,` otherwise).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// An empty header list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a header; the name is lower-cased.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.entries.push((name.to_ascii_lowercase(), value.into()));
    }

    /// Appends a header taking its strings as they are: the name is
    /// lower-cased in place, so a request translated from an owned message
    /// costs no copy per header (Envoy sends names lower-case already).
    pub fn push_owned(&mut self, mut name: String, value: String) {
        name.make_ascii_lowercase();
        self.entries.push((name, value));
    }

    /// The first value of `name` (lower-case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name` (lower-case), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// How many times `name` occurs.
    pub fn count(&self, name: &str) -> usize {
        self.entries.iter().filter(|(n, _)| n == name).count()
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of header lines.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<N: AsRef<str>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (name, value) in iter {
            headers.push(name.as_ref(), value);
        }
        headers
    }
}

impl RequestContext {
    /// [`Self::set_target`] for an owned target: a plain path (no `?`, no
    /// `#`, the common case) is moved in without a copy.
    pub fn set_target_owned(&mut self, target: String) {
        if target.contains(['?', '#']) {
            self.set_target(&target);
        } else {
            self.path = target;
            self.query = None;
        }
    }

    /// Splits a request target (`/path?query`) into path and query.
    pub fn set_target(&mut self, target: &str) {
        // A fragment is never sent by clients; drop it defensively.
        let target = target.split('#').next().unwrap_or_default();
        match target.split_once('?') {
            Some((path, query)) => {
                self.path = path.to_owned();
                self.query = Some(query.to_owned());
            }
            None => {
                self.path = target.to_owned();
                self.query = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_case_insensitive_and_keep_repeats() {
        let headers: Headers = [("Authorization", "a"), ("authorization", "b"), ("X", "c")]
            .into_iter()
            .collect();
        assert_eq!(headers.get("authorization"), Some("a"));
        assert_eq!(headers.count("authorization"), 2);
        assert_eq!(
            headers.get_all("authorization").collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(headers.get("x"), Some("c"));
    }

    #[test]
    fn owned_headers_are_lower_cased_too() {
        let mut headers = Headers::new();
        headers.push_owned("X-Api-Key".to_owned(), "K".to_owned());
        assert_eq!(headers.get("x-api-key"), Some("K"));
        assert_eq!(headers.iter().next(), Some(("x-api-key", "K")));
    }

    #[test]
    fn target_splits_path_and_query() {
        let mut request = RequestContext::default();
        request.set_target("/v1/search?q=1#frag");
        assert_eq!(request.path, "/v1/search");
        assert_eq!(request.query.as_deref(), Some("q=1"));
        request.set_target("/healthz");
        assert_eq!(request.query, None);
        request.set_target_owned("/v1/search?q=2#f".to_owned());
        assert_eq!(request.path, "/v1/search");
        assert_eq!(request.query.as_deref(), Some("q=2"));
        request.set_target_owned("/v1/bikes".to_owned());
        assert_eq!(request.path, "/v1/bikes");
        assert_eq!(request.query, None);
    }
}
