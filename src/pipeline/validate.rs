//! Stage 1: refuse requests that cannot be judged safely.
//!
//! Paths are compared as sent (Envoy normalises them first when configured
//! as in `deploy/envoy/`), so a path with dot-segments or encoded slashes
//! could make a private route look like a public one
//! (`/healthz/..%2Fv1/x`): such requests are `request_malformed`. So are
//! paths with a `;` parameter (RFC 3986 §3.3 allows them in any segment;
//! servlet containers drop `;…` before resolving `..`, so `/docs/..;/v1/x`
//! is `/v1/x` to them, and `/admin;x/users` is `/admin/users` while no
//! `/admin` route matches it), and repeated credential headers (which
//! Envoy joins with `,`).
//!
//! Refusing a `;` rather than stripping the parameter is deliberate: a
//! stripped path is what *some* backends serve (servlet containers) and
//! not what others do (most treat `;` as an ordinary character), so no
//! rewrite can agree with every upstream, while a refusal agrees with all
//! of them. REST APIs do not use matrix parameters; the one common use,
//! `;jsessionid=`, has no place in an API behind tollgate.

use crate::decision::Deny;
use crate::reason::Reason;
use crate::request::RequestContext;

/// Headers that carry one credential each; a repeat is ambiguous.
const SINGLE_CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "dpop",
    "approov-token",
    "x-api-key",
    "signature",
    "signature-input",
];

/// Checks the request is well-formed enough to decide on.
pub(super) fn check(request: &RequestContext) -> Result<(), Deny> {
    let malformed = |detail: String| Err(Deny::new(Reason::RequestMalformed, detail));
    if let Some(defect) = request.defects.first() {
        return malformed(defect.clone());
    }
    if request.method.is_empty() {
        return malformed("the request has no method".to_owned());
    }
    if !request.path.starts_with('/') {
        return malformed("the request path must start with '/'".to_owned());
    }
    if let Some(problem) = path_problem(&request.path) {
        return malformed(format!("the request path {problem}"));
    }
    for name in SINGLE_CREDENTIAL_HEADERS {
        let mut values = request.headers.get_all(name);
        let Some(first) = values.next() else {
            continue;
        };
        let repeated = values.next().is_some();
        // Envoy merges repeats into one value joined by ','; no credential
        // value tollgate reads contains a comma, except Signature fields
        // (structured-field lists) which may legitimately hold several.
        let joined = first.contains(',') && !matches!(*name, "signature" | "signature-input");
        if repeated || joined {
            return malformed(format!("the {name} header appears more than once"));
        }
    }
    Ok(())
}

/// Why a path is not in normal form, if it is not.
fn path_problem(path: &str) -> Option<&'static str> {
    if contains_ignore_case(path, b"%2f")
        || contains_ignore_case(path, b"%5c")
        || path.contains('\\')
    {
        return Some("contains an encoded slash or a backslash");
    }
    if path.contains(';') || contains_ignore_case(path, b"%3b") {
        return Some("contains a ';' path parameter");
    }
    if path.contains("//") {
        return Some("contains an empty segment");
    }
    if path.split('/').any(is_dot_segment) {
        return Some("contains a dot-segment");
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'#')
    {
        return Some("contains a control character, space or '#'");
    }
    None
}

/// Whether `haystack` contains `needle` (lower-case ASCII), ignoring ASCII
/// case. Allocates nothing: this runs on every request.
fn contains_ignore_case(haystack: &str, needle: &[u8]) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// `.` or `..`, each dot possibly percent-encoded as `%2e` / `%2E`
/// (RFC 3986 §3.3, §6.2.2.2).
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Headers;

    fn request(path: &str, headers: &[(&str, &str)]) -> RequestContext {
        RequestContext {
            method: "GET".into(),
            path: path.into(),
            headers: headers.iter().copied().collect::<Headers>(),
            ..Default::default()
        }
    }

    #[test]
    fn refuses_dot_segments_and_encoded_slashes() {
        for path in [
            "/healthz/../v1/x",
            "/healthz/..%2Fv1/x",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/%2e",
            "/a/./b",
            "/a/%2F",
            "/a//b",
            "/a%5cb",
            "/a\\b",
            "/docs/..;/v1/x",
            "/admin;x/users",
            "/a;",
            "/a/%3Bb",
            "/a/%3b",
        ] {
            let deny = check(&request(path, &[])).unwrap_err();
            assert_eq!(deny.reason, Reason::RequestMalformed, "{path}");
        }
    }

    #[test]
    fn accepts_normal_paths() {
        for path in [
            "/",
            "/v1/search",
            "/a.b/c..d",
            "/v1/%20x",
            "/.well-known/x",
            "/a/...",
            "/a/%2e%2e%2e",
            "/%2",
        ] {
            assert!(check(&request(path, &[])).is_ok(), "{path}");
        }
    }

    #[test]
    fn refuses_repeated_credentials() {
        let twice = request(
            "/",
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
        );
        assert_eq!(check(&twice).unwrap_err().reason, Reason::RequestMalformed);
        let merged = request("/", &[("authorization", "Bearer a,Bearer b")]);
        assert_eq!(check(&merged).unwrap_err().reason, Reason::RequestMalformed);
        let once = request("/", &[("authorization", "Bearer a")]);
        assert!(check(&once).is_ok());
    }

    #[test]
    fn defects_from_translation_are_malformed() {
        let mut req = request("/", &[]);
        req.defects.push("header x has a non-UTF-8 value".into());
        let deny = check(&req).unwrap_err();
        assert_eq!(deny.reason, Reason::RequestMalformed);
        assert!(deny.detail.contains("non-UTF-8"));
    }
}
