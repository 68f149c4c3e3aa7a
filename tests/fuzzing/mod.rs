//! Fuzz targets for every parser of untrusted input, shared by two
//! drivers: `tests/fuzz.rs` (proptest, in the normal test suite; a short
//! run in CI, `TOLLGATE_FUZZ_CASES` for a long one) and `fuzz/`
//! (libFuzzer through cargo-fuzz on nightly, coverage-guided, for long
//! runs). Each target takes arbitrary bytes, never panics on them, and
//! asserts what a user relies on about its parser (the properties in each
//! function's doc). Only the public API is used: these are the calls the
//! gRPC adapter and the decision core make with what a client sends.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jsonwebtoken::Algorithm;

use tollgate::authn::dpop::{self, DpopPolicy};
use tollgate::authn::jwk::{KeySet, VerifyKey};
use tollgate::authn::jwt;
use tollgate::authn::signature::base::Message;
use tollgate::authn::signature::{KeySource, SignaturePolicy, fields};
use tollgate::origin::{self, TrustedOrigin};
use tollgate::policy::snapshot::Snapshot;
use tollgate::request::{Headers, RequestContext};

/// A fixed "now" (2024-05-01): inputs carry their own times.
const NOW: Duration = Duration::from_secs(1_714_521_600);

/// Text from bytes, as a header value reaches tollgate: valid UTF-8 (the
/// gRPC adapter refuses anything else) without CR, LF or NUL.
pub fn header_value(data: &[u8]) -> String {
    String::from_utf8_lossy(data)
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n' | '\0'))
        .collect()
}

fn request(headers: Headers) -> RequestContext {
    RequestContext {
        method: "GET".into(),
        scheme: "https".into(),
        authority: "api.example".into(),
        path: "/v1/bikes".into(),
        headers,
        peer_ip: Some("192.0.2.1".parse().unwrap()),
        tls: true,
        protocol: "HTTP/2".into(),
        ..Default::default()
    }
}

/// JWS compact form (RFC 7515 §7.1): never panics; what parses has
/// exactly three parts and the signing input is the first two.
pub fn jws(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(parsed) = jwt::parse(&text) {
        assert_eq!(text.split('.').count(), 3, "{text:?}");
        assert_eq!(
            format!("{}.{}", parsed.signing_input, parsed.signature),
            text,
            "the parts are the token's"
        );
        let _ = jwt::check_times(&parsed.claims, NOW.as_secs_f64(), 30.0);
        let _ = jwt::audience_matches(&parsed.claims, &["api".to_owned()]);
    }
}

/// JWK and JWKS documents (RFC 7517): never panic, whether a key set or
/// one key, symmetric keys allowed or not; a JWKS never loads a symmetric
/// key unless asked to.
pub fn jwks(data: &[u8]) {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(set) = KeySet::from_jwks(&doc, false) {
        for key in &set.keys {
            let hmac = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
            assert!(
                !hmac.iter().any(|alg| key.accepts(*alg)),
                "a symmetric key from a public JWKS"
            );
        }
    }
    let _ = KeySet::from_jwks(&doc, true);
    let _ = VerifyKey::from_jwk(&doc, false);
    if let Some(object) = doc.as_object() {
        let _ = dpop::thumbprint(object);
    }
}

/// A DPoP proof (RFC 9449 §4.3) as the `DPoP` header: never panics, never
/// verifies (a proof needs a signature by the key it carries, over the
/// method and URI of this request).
pub fn dpop_proof(data: &[u8]) {
    static POLICY: OnceLock<DpopPolicy> = OnceLock::new();
    let policy = POLICY.get_or_init(|| DpopPolicy::compile(&Default::default()).unwrap());
    let value = header_value(data);
    let request = request([("dpop", value.as_str())].into_iter().collect());
    let origin = origin::resolve(&request, TrustedOrigin::Envoy);
    let proof = policy.verify_proof(&request, &origin, Some("token"), NOW);
    assert!(
        proof.is_err(),
        "an arbitrary DPoP proof verified: {value:?}"
    );
    let _ = dpop::normalize_uri(&value);
}

/// The keys a signature may name while fuzzing: one HMAC key, `k1`.
struct FuzzKeys;

impl KeySource for FuzzKeys {
    fn hmac(&self, keyid: &str) -> Option<(usize, &[u8])> {
        (keyid == "k1").then_some((0, b"0123456789abcdef0123456789abcdef".as_slice()))
    }

    fn install_key(&self) -> Option<&str> {
        None
    }
}

/// `Signature-Input` and `Signature` (RFC 9421 §4, RFC 8941 dictionaries):
/// the bytes up to the first `|` are one field, the rest the other. Never
/// panic, never verify (a signature needs the key's HMAC over the
/// request).
pub fn signature_fields(data: &[u8]) {
    let text = header_value(data);
    let (input, signature) = text.split_once('|').unwrap_or((&text, ""));
    let _ = fields::parse_inputs(&[input]);
    let _ = fields::parse_signatures(&[signature]);
    static POLICY: OnceLock<SignaturePolicy> = OnceLock::new();
    let policy = POLICY.get_or_init(|| SignaturePolicy::compile(&Default::default()).unwrap());
    let headers: Headers = [("signature-input", input), ("signature", signature)]
        .into_iter()
        .collect();
    let request = request(headers);
    let origin = origin::resolve(&request, TrustedOrigin::Envoy);
    let message = Message::from_request(&request, &origin);
    let verified = policy.verify(&request, &message, &FuzzKeys, NOW);
    assert!(
        !matches!(verified, Ok(Some(_))),
        "an arbitrary signature verified: {input:?} {signature:?}"
    );
}

/// `X-Forwarded-Client-Cert` in forwarded mode: never panics, and whatever
/// a client writes before the element its trusted proxy appends, the
/// principal is the proxy's element's, or none at all — never one the
/// client chose.
pub fn xfcc(data: &[u8]) {
    let forged = header_value(data);
    let resolve = |value: &str| {
        let request = request([("x-forwarded-client-cert", value)].into_iter().collect());
        origin::resolve(&request, TrustedOrigin::Forwarded { hops: 1 })
    };
    let _ = resolve(&forged);
    let appended = format!(
        "{forged},By=spiffe://mesh/envoy;Hash=ab;Subject=\"CN=app, O=Bikes\";URI=spiffe://bikes/app"
    );
    let principal = resolve(&appended).client_principal;
    assert!(
        principal.is_none() || principal.as_deref() == Some("spiffe://bikes/app"),
        "{appended:?} gave {principal:?}"
    );
}

/// `X-Forwarded-For` with `hops` trusted proxies (the first byte, 1 to 16):
/// the rest, split at `|` into field lines. Never panics; the client is
/// the entry `hops` from the right when it is an address (canonical), else
/// unknown — never an entry further left, which the client wrote.
pub fn forwarded_for(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let hops = first % 16 + 1;
    let text = header_value(rest);
    let headers: Headers = text.split('|').map(|v| ("x-forwarded-for", v)).collect();
    let request = request(headers);
    let origin = origin::resolve(&request, TrustedOrigin::Forwarded { hops });
    let entries: Vec<&str> = text
        .split('|')
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let expected = entries
        .len()
        .checked_sub(usize::from(hops))
        .and_then(|i| entries[i].parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical());
    assert_eq!(origin.client_ip, expected, "{text:?} with {hops} hops");
}

/// The policy the path target decides with: `/docs` is public, `/admin`
/// denied, everything else needs an app.
fn path_snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let yaml = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: docs, namespace: fuzz }
spec:
  hosts: [api.example]
  app:
    identify: { apiKey: { header: x-api-key } }
  routes:
    - { name: docs, match: { pathPrefix: /docs }, public: true }
    - { name: admin, match: { pathPrefix: /admin }, deny: true }
"#;
        let docs =
            tollgate::policy::document::parse_documents(std::path::Path::new("fuzz.yaml"), yaml)
                .unwrap();
        tollgate::policy::compile::compile(&docs, 1).unwrap()
    })
}

/// What a servlet container serves for `path`: each segment without its
/// `;` parameters, percent-decoded, then dot-segments removed (RFC 3986
/// §5.2.4) — the most permissive reading an upstream may make.
fn servlet_view(path: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for segment in path.split('/').skip(1) {
        let bare = segment.split(';').next().unwrap_or_default();
        let decoded = tollgate::encoding::percent_decode(bare).unwrap_or_else(|| bare.to_owned());
        for part in decoded.split(['/', '\\']) {
            match part {
                "." => {}
                ".." => {
                    out.pop();
                }
                other => out.push(other.to_owned()),
            }
        }
    }
    format!("/{}", out.join("/"))
}

/// A request path, decided by the real decision core: never panics; a
/// request allowed without credentials (the public `/docs` route) is one
/// every reading of the path places under `/docs` — no `..`, `;` or
/// encoded slash leads from the public route to a private one.
pub fn path(data: &[u8]) {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    });
    let text = header_value(data);
    let mut request = request(Headers::new());
    request.set_target(&text);
    let deps = tollgate::pipeline::Deps {
        store: Arc::new(tollgate::store::MemoryStore::new()),
        clock: Arc::new(tollgate::clock::SystemClock),
        settings: Default::default(),
    };
    let decision = runtime.block_on(tollgate::pipeline::decide(path_snapshot(), &request, &deps));
    if decision.is_allow() {
        let seen = servlet_view(&request.path);
        assert!(
            seen == "/docs" || seen.starts_with("/docs/"),
            "{text:?} was allowed as public, but is {seen:?} to a servlet container"
        );
    }
    if let Some(uri) = dpop::normalize_uri(&format!("https://api.example{text}")) {
        assert_eq!(
            dpop::normalize_uri(&uri).as_deref(),
            Some(uri.as_str()),
            "idempotent"
        );
    }
}
