//! DPoP unit tests: the RFC 7638 and RFC 9449 published examples, one test
//! per proof failure, the mode rules and `htu` normalisation.

use super::*;
use crate::authn::mint::{self, SigningKey};
use crate::origin::{self, TrustedOrigin};
use crate::policy::duration::DurationStr;
use crate::request::Headers;

const NOW: u64 = 1_700_000_000;
const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln";

fn policy(mode: Requirement) -> DpopPolicy {
    DpopPolicy::compile(&DpopSpec {
        mode,
        algorithms: vec![],
        max_age: None,
    })
    .unwrap()
}

fn request(method: &str, authority: &str, target: &str, proofs: &[&str]) -> RequestContext {
    let mut request = RequestContext {
        method: method.into(),
        authority: authority.into(),
        tls: true,
        headers: proofs.iter().map(|p| ("dpop", *p)).collect::<Headers>(),
        ..Default::default()
    };
    request.set_target(target);
    request
}

fn verify(
    policy: &DpopPolicy,
    request: &RequestContext,
    token: Option<&str>,
    now: u64,
) -> Result<Proof, ProofError> {
    let origin = origin::resolve(request, TrustedOrigin::Envoy);
    policy.verify_proof(request, &origin, token, Duration::from_secs(now))
}

fn proof(key: &SigningKey, method: &str, url: &str, token: Option<&str>, iat: u64) -> String {
    mint_proof(
        key,
        &ProofClaims {
            method,
            url,
            access_token: token,
            iat,
            jti: mint::random_id(),
        },
    )
    .unwrap()
}

/// Signs arbitrary header and claims with `key` (hostile proofs).
fn raw(key: &SigningKey, header: Value, claims: Value) -> String {
    let pem = key.private_pem();
    let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    mint::sign_with(&header, &claims, &encoding, key.alg).unwrap()
}

fn es256() -> SigningKey {
    SigningKey::generate(Algorithm::ES256, "k").unwrap()
}

fn public_jwk(key: &SigningKey) -> Value {
    key.public_jwk()
}

fn good_claims() -> Value {
    json!({"jti": "j-1", "htm": "GET", "htu": "https://api.example/v1/bikes", "iat": NOW, "ath": access_token_hash(TOKEN)})
}

#[test]
fn rfc7638_section_3_1_thumbprint() {
    // RFC 7638 §3.1: the example RSA key and its published thumbprint;
    // optional members (alg, kid) do not change it.
    let jwk = json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29"
    });
    assert_eq!(
        thumbprint(jwk.as_object().unwrap()).unwrap(),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
    let missing = json!({"kty": "EC", "crv": "P-256", "x": "AA"});
    assert!(thumbprint(missing.as_object().unwrap()).is_err());
}

#[test]
fn rfc9449_examples_ath_and_resource_proof() {
    // RFC 9449 §7.1 (Figures 13–14): the access token, its ath, and the
    // proof of the protected resource request; the key's thumbprint is the
    // jkt of §6.1.
    let token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
    assert_eq!(
        access_token_hash(token),
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    );
    let proof = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9.2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA";
    let req = request(
        "GET",
        "resource.example.org",
        "/protectedresource",
        &[proof],
    );
    let p = policy(Requirement::Optional);
    let verified = verify(&p, &req, Some(token), 1_562_262_620).unwrap();
    assert_eq!(verified.jkt, "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
    assert_eq!(verified.nonce.scope, NONCE_SCOPE);
    // The jti, remembered under the proof's key.
    assert_eq!(verified.nonce.value, "e1j3V_bKic8-LAEB");
    assert_eq!(
        verified.nonce.credential,
        "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    );
    assert_eq!(
        verify(&p, &req, Some("another token"), 1_562_262_620),
        Err(ProofError::AccessTokenHash)
    );
    // The same proof a day later is stale.
    assert!(matches!(
        verify(&p, &req, Some(token), 1_562_262_620 + 86_400),
        Err(ProofError::Stale(60))
    ));
}

#[test]
fn a_fresh_proof_verifies_for_every_default_algorithm() {
    let p = policy(Requirement::Optional);
    for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::PS256] {
        let key = SigningKey::generate(alg, "k").unwrap();
        let dpop = proof(
            &key,
            "POST",
            "https://API.example:443/v1/./rentals?x=1#f",
            Some(TOKEN),
            NOW,
        );
        let req = request("POST", "api.example", "/v1/rentals?y=2", &[&dpop]);
        let verified = verify(&p, &req, Some(TOKEN), NOW + 5).unwrap();
        assert_eq!(verified.jkt, key_thumbprint(&key).unwrap(), "{alg:?}");
        // Remembered until iat + maxAge has passed (55 s left, plus one).
        assert_eq!(verified.nonce.ttl, Duration::from_secs(56));
    }
}

#[test]
fn every_proof_failure_has_its_error() {
    let p = policy(Requirement::Optional);
    let key = es256();
    let other = es256();
    let jwk = public_jwk(&key);
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
    let url = "https://api.example/v1/bikes";
    let good = proof(&key, "GET", url, Some(TOKEN), NOW);
    let mut private = jwk.clone();
    private["d"] = json!("AAAA");
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut c = good_claims();
        f(&mut c);
        raw(&key, header.clone(), c)
    };
    let cases: Vec<(&str, Vec<String>, ProofError)> = vec![
        ("none", vec![], ProofError::Missing),
        (
            "two",
            vec![good.clone(), good.clone()],
            ProofError::Multiple,
        ),
        (
            "not a JWT",
            vec!["abc".into()],
            ProofError::Malformed(jwt::JwtError::Shape.to_string()),
        ),
        (
            "typ JWT",
            vec![raw(
                &key,
                json!({"typ": "JWT", "alg": "ES256", "jwk": jwk}),
                good_claims(),
            )],
            ProofError::Type,
        ),
        (
            "no typ",
            vec![raw(
                &key,
                json!({"alg": "ES256", "jwk": jwk}),
                good_claims(),
            )],
            ProofError::Type,
        ),
        (
            "HMAC",
            vec![
                mint::sign_hmac(Algorithm::HS256, &[7; 32], None, &good_claims())
                    .unwrap()
                    .replace(
                        &URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
                        &URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"dpop+jwt"}"#),
                    ),
            ],
            ProofError::Algorithm,
        ),
        (
            "no jwk",
            vec![raw(
                &key,
                json!({"typ": "dpop+jwt", "alg": "ES256"}),
                good_claims(),
            )],
            ProofError::Key("no jwk header".into()),
        ),
        (
            "private jwk",
            vec![raw(
                &key,
                json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private}),
                good_claims(),
            )],
            ProofError::PrivateKey,
        ),
        (
            "jwk of another key",
            vec![raw(
                &key,
                json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(&other)}),
                good_claims(),
            )],
            ProofError::Signature,
        ),
        (
            "no jti",
            vec![edit(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            })],
            ProofError::Claim("jti"),
        ),
        (
            "numeric htm",
            vec![edit(&|c| c["htm"] = json!(1))],
            ProofError::Claim("htm"),
        ),
        (
            "no htu",
            vec![edit(&|c| {
                c.as_object_mut().unwrap().remove("htu");
            })],
            ProofError::Claim("htu"),
        ),
        (
            "string iat",
            vec![edit(&|c| c["iat"] = json!("now"))],
            ProofError::Claim("iat"),
        ),
        (
            "no ath",
            vec![edit(&|c| {
                c.as_object_mut().unwrap().remove("ath");
            })],
            ProofError::Claim("ath"),
        ),
        (
            "wrong method",
            vec![proof(&key, "POST", url, Some(TOKEN), NOW)],
            ProofError::Method,
        ),
        (
            "lower-case method",
            vec![proof(&key, "get", url, Some(TOKEN), NOW)],
            ProofError::Method,
        ),
        (
            "other host",
            vec![proof(
                &key,
                "GET",
                "https://evil.example/v1/bikes",
                Some(TOKEN),
                NOW,
            )],
            ProofError::Uri,
        ),
        (
            "other path",
            vec![proof(
                &key,
                "GET",
                "https://api.example/v1/bikes/1",
                Some(TOKEN),
                NOW,
            )],
            ProofError::Uri,
        ),
        (
            "plain http",
            vec![proof(
                &key,
                "GET",
                "http://api.example/v1/bikes",
                Some(TOKEN),
                NOW,
            )],
            ProofError::Uri,
        ),
        (
            "other port",
            vec![proof(
                &key,
                "GET",
                "https://api.example:8443/v1/bikes",
                Some(TOKEN),
                NOW,
            )],
            ProofError::Uri,
        ),
        (
            "relative htu",
            vec![proof(&key, "GET", "/v1/bikes", Some(TOKEN), NOW)],
            ProofError::Uri,
        ),
        (
            "stale iat",
            vec![proof(&key, "GET", url, Some(TOKEN), NOW - 61)],
            ProofError::Stale(60),
        ),
        (
            "future iat",
            vec![proof(&key, "GET", url, Some(TOKEN), NOW + 61)],
            ProofError::Stale(60),
        ),
        (
            "other token",
            vec![proof(&key, "GET", url, Some("other"), NOW)],
            ProofError::AccessTokenHash,
        ),
    ];
    for (name, proofs, expected) in cases {
        let refs: Vec<&str> = proofs.iter().map(String::as_str).collect();
        let req = request("GET", "api.example", "/v1/bikes", &refs);
        assert_eq!(verify(&p, &req, Some(TOKEN), NOW), Err(expected), "{name}");
    }
    // A signature made over other claims (header and signature of one
    // proof, payload of another).
    let parts: Vec<&str> = good.split('.').collect();
    let other_payload = proof(&key, "GET", "https://api.example/v1/x", Some(TOKEN), NOW);
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        other_payload.split('.').nth(1).unwrap(),
        parts[2]
    );
    let req = request("GET", "api.example", "/v1/x", &[&swapped]);
    assert_eq!(
        verify(&p, &req, Some(TOKEN), NOW),
        Err(ProofError::Signature)
    );
    // The control: the good proof passes.
    let req = request("GET", "api.example", "/v1/bikes", &[&good]);
    assert!(verify(&p, &req, Some(TOKEN), NOW).is_ok());
}

#[test]
fn algorithms_outside_the_policy_list_are_refused() {
    let p = DpopPolicy::compile(&DpopSpec {
        mode: Requirement::Required,
        algorithms: vec!["ES256".into()],
        max_age: Some(DurationStr::parse("30s").unwrap()),
    })
    .unwrap();
    assert_eq!(p.challenge_algs(), "ES256");
    assert_eq!(p.acceptance_window(), Duration::from_secs(30));
    let key = SigningKey::generate(Algorithm::EdDSA, "k").unwrap();
    let dpop = proof(&key, "GET", "https://api.example/", None, NOW);
    let req = request("GET", "api.example", "/", &[&dpop]);
    assert_eq!(verify(&p, &req, None, NOW), Err(ProofError::Algorithm));
    let key = es256();
    let dpop = proof(&key, "GET", "https://api.example/", None, NOW - 31);
    let req = request("GET", "api.example", "/", &[&dpop]);
    assert_eq!(verify(&p, &req, None, NOW), Err(ProofError::Stale(30)));
}

#[test]
fn compile_refuses_symmetric_algorithms_and_odd_windows() {
    let spec = |algorithms: &[&str], max_age: Option<&str>| DpopSpec {
        mode: Requirement::Optional,
        algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
        max_age: max_age.map(|m| DurationStr::parse(m).unwrap()),
    };
    assert!(
        DpopPolicy::compile(&spec(&["HS256"], None))
            .unwrap_err()
            .contains("symmetric")
    );
    assert!(DpopPolicy::compile(&spec(&["none"], None)).is_err());
    assert!(DpopPolicy::compile(&spec(&[], Some("0s"))).is_err());
    assert!(DpopPolicy::compile(&spec(&[], Some("11m"))).is_err());
    let p = DpopPolicy::compile(&spec(&[], None)).unwrap();
    assert_eq!(p.challenge_algs(), "ES256 ES384 EdDSA RS256 PS256");
    assert_eq!(p.acceptance_window(), DEFAULT_MAX_AGE);
}

fn check(
    p: &DpopPolicy,
    scheme: Scheme,
    cnf: Option<&str>,
    proofs: &[&str],
) -> Result<Option<Proof>, Deny> {
    let req = request("GET", "api.example", "/v1/bikes", proofs);
    let origin = origin::resolve(&req, TrustedOrigin::Envoy);
    p.check(&req, &origin, scheme, TOKEN, cnf, Duration::from_secs(NOW))
}

#[test]
fn mode_rules() {
    let key = es256();
    let jkt = key_thumbprint(&key).unwrap();
    let good = proof(
        &key,
        "GET",
        "https://api.example/v1/bikes",
        Some(TOKEN),
        NOW,
    );
    let optional = policy(Requirement::Optional);
    let required = policy(Requirement::Required);
    let disabled = policy(Requirement::Disabled);

    // A bound token with a matching proof passes; its jti is returned.
    let proof = check(&optional, Scheme::Dpop, Some(&jkt), &[&good])
        .unwrap()
        .unwrap();
    assert_eq!(proof.nonce.credential, jkt);
    assert!(
        check(&required, Scheme::Dpop, Some(&jkt), &[&good])
            .unwrap()
            .is_some()
    );
    // Bound to another key.
    let other = key_thumbprint(&es256()).unwrap();
    let deny = check(&optional, Scheme::Dpop, Some(&other), &[&good]).unwrap_err();
    assert_eq!(deny.reason, Reason::DpopProofInvalid);
    assert!(deny.detail.contains("cnf.jkt"));
    assert_eq!(
        deny.headers,
        [(
            "www-authenticate".to_owned(),
            r#"DPoP error="invalid_dpop_proof", algs="ES256 ES384 EdDSA RS256 PS256""#.to_owned()
        )]
    );
    // No proof.
    let deny = check(&optional, Scheme::Dpop, Some(&jkt), &[]).unwrap_err();
    assert_eq!(deny.reason, Reason::DpopProofMissing);
    assert!(deny.headers[0].1.starts_with("DPoP algs="));
    // A bound token as Bearer, with or without a proof, in every mode.
    for p in [&optional, &required, &disabled] {
        let deny = check(p, Scheme::Bearer, Some(&jkt), &[&good]).unwrap_err();
        assert_eq!(deny.reason, Reason::UserTokenInvalid);
        assert!(deny.detail.contains("as Bearer"));
        assert!(
            deny.headers[0]
                .1
                .starts_with(r#"DPoP error="invalid_token""#)
        );
    }
    // An unbound token: fine as Bearer unless DPoP is required.
    assert_eq!(check(&optional, Scheme::Bearer, None, &[]).unwrap(), None);
    assert_eq!(check(&disabled, Scheme::Bearer, None, &[]).unwrap(), None);
    assert_eq!(
        check(&required, Scheme::Bearer, None, &[])
            .unwrap_err()
            .reason,
        Reason::DpopProofMissing
    );
    // The DPoP scheme needs a bound token, and DPoP enabled.
    assert_eq!(
        check(&optional, Scheme::Dpop, None, &[&good])
            .unwrap_err()
            .reason,
        Reason::UserTokenInvalid
    );
    assert_eq!(
        check(&disabled, Scheme::Dpop, Some(&jkt), &[&good])
            .unwrap_err()
            .reason,
        Reason::UserTokenInvalid
    );
}

#[test]
fn uri_normalisation_follows_rfc3986_section_6() {
    let same = [
        ("HTTPS://Api.Example:443/a/b", "https://api.example/a/b"),
        ("https://api.example", "https://api.example/"),
        ("https://api.example:/x", "https://api.example/x"),
        ("http://api.example:80/x", "http://api.example/x"),
        ("http://api.example:0080/x", "http://api.example/x"),
        ("https://api.example:8443/x", "https://api.example:8443/x"),
        (
            "https://api.example/%7euser/%41",
            "https://api.example/~user/A",
        ),
        ("https://api.example/a%2fb", "https://api.example/a%2Fb"),
        ("https://api.example/a/./b/../c", "https://api.example/a/c"),
        ("https://api.example/a/..", "https://api.example/"),
        ("https://api.example/a/b/", "https://api.example/a/b/"),
        ("https://api.example/x?q=1#frag", "https://api.example/x"),
        ("https://[::1]:443/x", "https://[::1]/x"),
    ];
    for (input, expected) in same {
        assert_eq!(normalize_uri(input).as_deref(), Some(expected), "{input}");
    }
    for bad in [
        "/relative",
        "ftp://api.example/",
        "https://user@api.example/",
        "https:///path",
        "https://api.example/%zz",
        "https://api.example/%4",
        "https://api.example:99999/",
        "https://api.example:-1/",
        "https://[::1/",
    ] {
        assert_eq!(normalize_uri(bad), None, "{bad}");
    }
}

#[test]
fn request_uri_uses_the_trusted_origin() {
    let mut req = request("GET", "API.example:8443", "/v1/x?q", &[]);
    req.tls = false;
    // Envoy saw plain HTTP: a proof for https cannot match.
    let origin = origin::resolve(&req, TrustedOrigin::Envoy);
    assert_eq!(
        request_uri(&req, &origin).as_deref(),
        Some("http://api.example:8443/v1/x")
    );
    req.headers.push("x-forwarded-proto", "https");
    let origin = origin::resolve(&req, TrustedOrigin::Forwarded { hops: 1 });
    assert_eq!(
        request_uri(&req, &origin).as_deref(),
        Some("https://api.example:8443/v1/x")
    );
}

mod properties {
    //! Arbitrary input to the proof parser and the URI normaliser never
    //! panics, and no mutation of a valid proof is accepted.

    use super::*;
    use proptest::prelude::*;

    fn valid() -> (SigningKey, String) {
        let key = es256();
        let proof = proof(
            &key,
            "GET",
            "https://api.example/v1/bikes",
            Some(TOKEN),
            NOW,
        );
        (key, proof)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_proof_headers_never_pass(value in "\\PC{0,400}") {
            let p = policy(Requirement::Required);
            let req = request("GET", "api.example", "/v1/bikes", &[&value]);
            prop_assert!(verify(&p, &req, Some(TOKEN), NOW).is_err());
        }

        #[test]
        fn jwt_shaped_garbage_never_passes(
            header in proptest::collection::vec(any::<u8>(), 0..200),
            claims in proptest::collection::vec(any::<u8>(), 0..200),
            signature in proptest::collection::vec(any::<u8>(), 0..96),
        ) {
            let value = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims),
                URL_SAFE_NO_PAD.encode(signature)
            );
            let p = policy(Requirement::Required);
            let req = request("GET", "api.example", "/v1/bikes", &[&value]);
            prop_assert!(verify(&p, &req, Some(TOKEN), NOW).is_err());
        }

        #[test]
        fn any_changed_byte_of_a_valid_proof_is_refused(index in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let (_, good) = valid();
            let mut bytes = good.clone().into_bytes();
            let i = index.index(bytes.len());
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            let Ok(mutated) = String::from_utf8(bytes) else { return Ok(()) };
            let p = policy(Requirement::Required);
            let req = request("GET", "api.example", "/v1/bikes", &[&mutated]);
            // base64url has several spellings of a final character only when
            // padding bits differ; those decode to the same bytes and verify.
            if let Ok(proof) = verify(&p, &req, Some(TOKEN), NOW) {
                let decoded = |t: &str| t.split('.').map(|s| URL_SAFE_NO_PAD.decode(s).ok()).collect::<Vec<_>>();
                prop_assert_eq!(decoded(&mutated), decoded(&good));
                prop_assert!(!proof.jkt.is_empty());
            }
        }

        #[test]
        fn uri_normalisation_never_panics(uri in "\\PC{0,200}") {
            let _ = normalize_uri(&uri);
            let _ = normalize_uri(&format!("https://{uri}"));
        }
    }
}

#[test]
fn token_failures_under_the_dpop_scheme_get_the_dpop_challenge() {
    let p = policy(Requirement::Optional);
    let expired = p.token_challenge(Deny::new(Reason::UserTokenExpired, "expired"));
    assert_eq!(
        expired.headers,
        [(
            "www-authenticate".to_owned(),
            r#"DPoP error="invalid_token", algs="ES256 ES384 EdDSA RS256 PS256""#.to_owned()
        )]
    );
    let unavailable = p.token_challenge(Deny::new(Reason::KeysUnavailable, "down"));
    assert!(unavailable.headers.is_empty());
}
