//! Fuzzing with proptest, in the normal test suite: every parser of
//! untrusted input (`tests/fuzzing/mod.rs`: JWS, JWK/JWKS, DPoP proofs,
//! `Signature-Input`/`Signature`, XFCC, `X-Forwarded-For`, paths) gets
//! arbitrary bytes and inputs shaped like the real thing, and must keep
//! its properties.
//!
//! CI runs a short pass (the counts below). A long run:
//!
//! ```sh
//! TOLLGATE_FUZZ_CASES=1000000 cargo test --release --test fuzz
//! ```
//!
//! `TOLLGATE_FUZZ_CASES` sets the cases of every target. The same targets
//! run coverage-guided under libFuzzer from `fuzz/` (`cargo +nightly fuzz
//! run <target>`); `docs/security.md` says what ran and what it found.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzzing;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;

/// Cases per target: `TOLLGATE_FUZZ_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("TOLLGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        // A failure is minimised; the seed is kept in proptest-regressions.
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

/// Printable text with the characters that matter to structured fields.
fn fieldish(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9=;,:\"\\\\()@ ./%*+_?#-]{{0,{max}}}"))
        .unwrap()
}

/// JSON-shaped bytes: what a JOSE header, claims or a JWK may hold.
fn json_ish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        Just(br#"{"alg":"none"}"#.to_vec()),
        Just(br#"{"alg":"ES256","typ":"dpop+jwt","jwk":{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}}"#.to_vec()),
        Just(br#"{"alg":"HS256","crit":["b64"]}"#.to_vec()),
        Just(br#"{"keys":[{"kty":"oct","k":"AAAA"},{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#.to_vec()),
        Just(br#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#.to_vec()),
        Just(br#"{"jti":"j","htm":"GET","htu":"https://api.example/v1/bikes","iat":1714521600,"ath":"x"}"#.to_vec()),
        "[a-zA-Z{}\\[\\]:,\"0-9.e+ -]{0,96}".prop_map(String::into_bytes),
    ]
}

/// A base64url segment of JSON-ish content.
fn segment() -> impl Strategy<Value = String> {
    json_ish().prop_map(|b| URL_SAFE_NO_PAD.encode(b))
}

/// Three base64url segments of JSON-ish content, or a mangled shape.
fn jws_shaped() -> impl Strategy<Value = String> {
    prop_oneof![
        (segment(), segment(), any::<Vec<u8>>())
            .prop_map(|(h, p, s)| format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(s))),
        (segment(), segment()).prop_map(|(h, p)| format!("{h}.{p}")),
        fieldish(64),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn jws_compact_form(bytes in any::<Vec<u8>>(), shaped in jws_shaped()) {
        fuzzing::jws(&bytes);
        fuzzing::jws(shaped.as_bytes());
    }

    #[test]
    fn jwk_and_jwks_documents(doc in json_ish()) {
        fuzzing::jwks(&doc);
    }

    #[test]
    fn dpop_proofs(bytes in any::<Vec<u8>>(), shaped in jws_shaped()) {
        fuzzing::dpop_proof(&bytes);
        fuzzing::dpop_proof(shaped.as_bytes());
    }

    #[test]
    fn signature_fields(
        bytes in any::<Vec<u8>>(),
        components in prop::collection::vec(prop_oneof![
            Just("\"@method\"".to_owned()), Just("\"@authority\"".to_owned()),
            Just("\"@path\"".to_owned()), Just("\"content-digest\"".to_owned()),
            Just("\"@query-param\";name=\"a\"".to_owned()), fieldish(12),
        ], 0..5),
        params in fieldish(48),
        signature in any::<Vec<u8>>(),
    ) {
        fuzzing::signature_fields(&bytes);
        let shaped = format!(
            "sig1=({});created=1714521600;keyid=\"k1\"{params}|sig1=:{}:",
            components.join(" "),
            base64::engine::general_purpose::STANDARD.encode(&signature)
        );
        fuzzing::signature_fields(shaped.as_bytes());
    }

    #[test]
    fn x_forwarded_client_cert(bytes in any::<Vec<u8>>(), shaped in fieldish(96)) {
        fuzzing::xfcc(&bytes);
        fuzzing::xfcc(shaped.as_bytes());
    }

    #[test]
    fn x_forwarded_for(
        bytes in any::<Vec<u8>>(),
        hops in any::<u8>(),
        entries in prop::collection::vec(prop_oneof![
            any::<std::net::IpAddr>().prop_map(|ip| ip.to_string()),
            any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_ipv6_mapped().to_string()),
            fieldish(16),
        ], 0..6),
    ) {
        fuzzing::forwarded_for(&bytes);
        let mut shaped = vec![hops];
        shaped.extend(entries.join(", ").into_bytes());
        fuzzing::forwarded_for(&shaped);
    }

    #[test]
    fn paths(
        bytes in any::<Vec<u8>>(),
        segments in prop::collection::vec(prop_oneof![
            Just("docs".to_owned()), Just("admin".to_owned()), Just("v1".to_owned()),
            Just("..".to_owned()), Just(".".to_owned()), Just("..;".to_owned()),
            Just("%2e%2e".to_owned()), Just("%2E.".to_owned()), Just("..%3B".to_owned()),
            Just("%2f".to_owned()), Just("%5C".to_owned()), Just("".to_owned()),
            Just(";jsessionid=1".to_owned()), "[a-z;%.2-9A-F]{0,6}",
        ], 0..6),
    ) {
        fuzzing::path(&bytes);
        let shaped = format!("/{}", segments.join("/"));
        fuzzing::path(shaped.as_bytes());
    }
}
