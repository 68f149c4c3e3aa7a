//! RFC 9421 Appendix B examples (test keys B.1.3–B.1.5, signatures
//! B.2.3–B.2.6), RFC 9530 digests, and one test per refusal.

use super::keys::SigningKey;
use super::*;
use crate::origin::{self, Origin, TrustedOrigin};
use crate::policy::duration::DurationStr;
use crate::request::{Body, Headers};

/// B.1.5 `test-shared-secret`.
const SHARED_SECRET: &str =
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
/// B.1.4 `test-key-ed25519`, public (SPKI) and private (PKCS#8).
const ED25519_PUBLIC: &str = "MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=";
const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
/// B.1.3 `test-key-ecc-p256`, public (SPKI).
const P256_PUBLIC: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lfw0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==";
const CREATED: u64 = 1_618_884_473;
const TEST_DIGEST: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";
const TEST_BODY: &[u8] = br#"{"hello": "world"}"#;

/// The B.2 test request, arriving over TLS.
fn test_request(extra: &[(&str, &str)]) -> RequestContext {
    let mut headers: Headers = [
        ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("content-type", "application/json"),
        ("content-digest", TEST_DIGEST),
        ("content-length", "18"),
    ]
    .into_iter()
    .collect();
    for (name, value) in extra {
        headers.push(name, *value);
    }
    let mut request = RequestContext {
        method: "POST".into(),
        authority: "example.com".into(),
        tls: true,
        headers,
        body: Some(Body {
            bytes: TEST_BODY.to_vec(),
            truncated: false,
        }),
        ..Default::default()
    };
    request.set_target("/foo?param=Value&Pet=dog");
    request
}

fn origin_of(request: &RequestContext) -> Origin {
    origin::resolve(request, TrustedOrigin::Envoy)
}

fn base_of(request: &RequestContext, signature_input: &str) -> String {
    let input = fields::parse_inputs(&[signature_input]).unwrap().remove(0);
    let origin = origin_of(request);
    base::signature_base(
        &Message::from_request(request, &origin),
        &input.components,
        &input.params_line,
    )
    .unwrap()
}

struct Keys {
    secrets: Vec<(&'static str, Vec<u8>)>,
    ipk: Option<String>,
}

impl KeySource for Keys {
    fn hmac(&self, keyid: &str) -> Option<(usize, &[u8])> {
        self.secrets
            .iter()
            .position(|(id, _)| *id == keyid)
            .map(|i| (i, self.secrets[i].1.as_slice()))
    }
    fn install_key(&self) -> Option<&str> {
        self.ipk.as_deref()
    }
}

fn rfc_keys() -> Keys {
    Keys {
        secrets: vec![(
            "test-shared-secret",
            keys::decode_base64(SHARED_SECRET).unwrap(),
        )],
        ipk: None,
    }
}

fn policy(components: &[&str], max_age: &str, require_nonce: bool) -> SignaturePolicy {
    SignaturePolicy::compile(&SignatureSpec {
        required: true,
        algorithms: vec![],
        components: components.iter().map(|c| c.to_string()).collect(),
        max_age: Some(DurationStr::parse(max_age).unwrap()),
        require_nonce,
    })
    .unwrap()
}

fn verify_at(
    policy: &SignaturePolicy,
    request: &RequestContext,
    keys: &Keys,
    now: u64,
) -> Result<Option<Verified>, SignatureError> {
    let origin = origin_of(request);
    let message = Message::from_request(request, &origin);
    policy.verify(request, &message, keys, Duration::from_secs(now))
}

#[test]
fn rfc9421_b_2_1_and_b_2_3_signature_bases() {
    let request = test_request(&[]);
    // B.2.1: no components, only the parameters line.
    assert_eq!(
        base_of(
            &request,
            r#"sig-b21=();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#
        ),
        r#""@signature-params": ();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#
    );
    // B.2.3: full coverage, including @query and content-digest.
    let expected = [
        r#""date": Tue, 20 Apr 2021 02:07:55 GMT"#,
        r#""@method": POST"#,
        r#""@path": /foo"#,
        r#""@query": ?param=Value&Pet=dog"#,
        r#""@authority": example.com"#,
        r#""content-type": application/json"#,
        &format!(r#""content-digest": {TEST_DIGEST}"#),
        r#""content-length": 18"#,
        r#""@signature-params": ("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss""#,
    ]
    .join("\n");
    assert_eq!(
        base_of(
            &request,
            r#"sig-b23=("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss""#
        ),
        expected
    );
}

#[test]
fn rfc9421_b_2_5_hmac_sha256_verifies_and_signs_identically() {
    let input = r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#;
    let signature = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:";
    let request = test_request(&[("signature-input", input), ("signature", signature)]);
    let p = policy(&["date", "@authority", "content-type"], "5m", false);
    let verified = verify_at(&p, &request, &rfc_keys(), CREATED + 10)
        .unwrap()
        .unwrap();
    assert_eq!(verified.algorithm, Algorithm::HmacSha256);
    assert_eq!(verified.signer, Signer::App(0));
    assert_eq!(verified.keyid.as_deref(), Some("test-shared-secret"));
    // Signing the same message with the same parameters gives the RFC's fields.
    let unsigned = test_request(&[]);
    let origin = origin_of(&unsigned);
    let components: Vec<String> = ["date", "@authority", "content-type"]
        .map(String::from)
        .to_vec();
    let signed = sign(
        &Message::from_request(&unsigned, &origin),
        &SignOptions {
            label: "sig-b25",
            components: &components,
            created: CREATED as i64,
            expires: None,
            nonce: None,
            keyid: Some("test-shared-secret"),
            include_alg: false,
        },
        &SigningKey::Hmac(keys::decode_base64(SHARED_SECRET).unwrap()),
    )
    .unwrap();
    assert_eq!(signed.signature_input, input);
    assert_eq!(signed.signature, signature);
}

#[test]
fn rfc9421_b_2_6_ed25519_verifies_and_signs_identically() {
    let input = r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#;
    let signature = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";
    // The Ed25519 key reaches tollgate as an attestation ipk, so the
    // signature travels under the install label.
    let install_input = input.replace("sig-b26=", "install=");
    let install_signature = signature.replace("sig-b26=", "install=");
    let request = test_request(&[
        ("signature-input", &install_input),
        ("signature", &install_signature),
    ]);
    let keys = Keys {
        secrets: vec![],
        ipk: Some(ED25519_PUBLIC.into()),
    };
    let p = policy(&["@method", "@path", "@authority"], "5m", false);
    let verified = verify_at(&p, &request, &keys, CREATED).unwrap().unwrap();
    assert_eq!(verified.algorithm, Algorithm::Ed25519);
    assert_eq!(verified.signer, Signer::Install);
    // Ed25519 is deterministic: signing reproduces the RFC's signature.
    let key = SigningKey::from_pem(ED25519_PRIVATE).unwrap();
    assert_eq!(key.ipk().as_deref(), Some(ED25519_PUBLIC));
    let unsigned = test_request(&[]);
    let origin = origin_of(&unsigned);
    let components: Vec<String> = [
        "date",
        "@method",
        "@path",
        "@authority",
        "content-type",
        "content-length",
    ]
    .map(String::from)
    .to_vec();
    let signed = sign(
        &Message::from_request(&unsigned, &origin),
        &SignOptions {
            label: "sig-b26",
            components: &components,
            created: CREATED as i64,
            expires: None,
            nonce: None,
            keyid: Some("test-key-ed25519"),
            include_alg: false,
        },
        &key,
    )
    .unwrap();
    assert_eq!(signed.signature_input, input);
    assert_eq!(signed.signature, signature);
}

#[test]
fn rfc9421_b_2_4_ecdsa_p256_signature_verifies_with_the_test_key() {
    // B.2.4 signs a response (@status), which tollgate never builds; the
    // published base and signature still pin down the key format and the
    // raw r‖s encoding.
    let base = [
        r#""@status": 200"#,
        r#""content-type": application/json"#,
        r#""content-digest": sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:"#,
        r#""content-length": 23"#,
        r#""@signature-params": ("@status" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-ecc-p256""#,
    ]
    .join("\n");
    let signature = keys::decode_base64(
        "wNmSUAhwb5LxtOtOpNa6W5xj067m5hFrj0XQ4fvpaCLx0NKocgPquLgyahnzDnDAUy5eCdlYUEkLIj+32oiasw==",
    )
    .unwrap();
    let key = keys::install_key(P256_PUBLIC).unwrap();
    assert_eq!(key.algorithm(), Algorithm::EcdsaP256Sha256);
    assert!(key.verify(base.as_bytes(), &signature));
    assert!(!key.verify(base.replace("200", "201").as_bytes(), &signature));
}

#[test]
fn rfc9530_digests_of_the_test_body() {
    let request = test_request(&[]);
    assert_eq!(
        digest::check(&request.headers, request.body.as_ref(), "HTTP/1.1"),
        Ok(())
    );
    // RFC 9530 Appendix B.1: sha-256 of {"hello": "world"}.
    assert_eq!(
        digest::sha256_field(TEST_BODY),
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    );
    let mut tampered = request.clone();
    tampered.body = Some(Body {
        bytes: br#"{"hello": "World"}"#.to_vec(),
        truncated: false,
    });
    assert_eq!(
        digest::check(&tampered.headers, tampered.body.as_ref(), "HTTP/1.1"),
        Err(digest::DigestError::Mismatch("sha-512"))
    );
    let mut truncated = request.clone();
    truncated.body.as_mut().unwrap().truncated = true;
    assert_eq!(
        digest::check(&truncated.headers, truncated.body.as_ref(), "HTTP/1.1"),
        Err(digest::DigestError::Truncated)
    );
    assert_eq!(
        digest::check(&request.headers, None, "HTTP/1.1"),
        Err(digest::DigestError::BodyUnavailable)
    );
    let empty: Headers = [("content-digest", digest::sha256_field(b"").as_str())]
        .into_iter()
        .collect();
    assert_eq!(
        digest::check(&empty, None, "HTTP/1.1"),
        Ok(()),
        "an HTTP/1.1 request without a length or chunks has no body"
    );
    // Over HTTP/2 (and HTTP/3, or an unknown protocol) a body needs no
    // length: only content-length: 0 says it is empty.
    for protocol in ["HTTP/2", "HTTP/3", ""] {
        assert_eq!(
            digest::check(&empty, None, protocol),
            Err(digest::DigestError::BodyUnavailable),
            "{protocol}"
        );
    }
    let mut declared: Headers = empty.clone();
    declared.push("content-length", "0");
    assert_eq!(digest::check(&declared, None, "HTTP/2"), Ok(()));
    declared.push("transfer-encoding", "chunked");
    assert_eq!(
        digest::check(&declared, None, "HTTP/1.1"),
        Err(digest::DigestError::BodyUnavailable)
    );
    let unknown: Headers = [("content-digest", "md5=:AAAA:")].into_iter().collect();
    assert_eq!(
        digest::check(&unknown, None, "HTTP/1.1"),
        Err(digest::DigestError::NoKnownAlgorithm)
    );
    let garbage: Headers = [("content-digest", "sha-256=abc")].into_iter().collect();
    assert_eq!(
        digest::check(&garbage, None, "HTTP/1.1"),
        Err(digest::DigestError::Syntax)
    );
}

/// A request signed now by `key` under `label`, covering `components`.
fn signed_request(
    key: &SigningKey,
    label: &str,
    keyid: Option<&str>,
    components: &[&str],
    created: u64,
    nonce: Option<&str>,
    include_alg: bool,
) -> RequestContext {
    let mut request = test_request(&[]);
    let origin = origin_of(&request);
    let components: Vec<String> = components.iter().map(|c| c.to_string()).collect();
    let signed = sign(
        &Message::from_request(&request, &origin),
        &SignOptions {
            label,
            components: &components,
            created: created as i64,
            expires: None,
            nonce,
            keyid,
            include_alg,
        },
        key,
    )
    .unwrap();
    request
        .headers
        .push("signature-input", signed.signature_input);
    request.headers.push("signature", signed.signature);
    request
}

const NOW: u64 = 1_700_000_000;
const COVER: [&str; 4] = ["@method", "@authority", "@path", "content-digest"];

fn app_keys() -> Keys {
    Keys {
        secrets: vec![("commuter-ios", vec![9u8; 32])],
        ipk: None,
    }
}

fn hmac() -> SigningKey {
    SigningKey::Hmac(vec![9u8; 32])
}

#[test]
fn a_fresh_signature_with_a_nonce_verifies_and_yields_the_nonce() {
    let p = policy(&COVER, "5m", true);
    let request = signed_request(
        &hmac(),
        "sig1",
        Some("commuter-ios"),
        &COVER,
        NOW - 10,
        Some("n-1"),
        true,
    );
    let verified = verify_at(&p, &request, &app_keys(), NOW).unwrap().unwrap();
    let nonce = verified.nonce.unwrap();
    assert_eq!(nonce.scope, NONCE_SCOPE);
    assert_eq!(nonce.value, "n-1");
    // Remembered under the key that verified it (namespace and keyid).
    assert_eq!(nonce.credential, "hmac:/commuter-ios");
    // Accepted until created + 5m: 290 s left, plus one.
    assert_eq!(nonce.ttl, Duration::from_secs(291));
}

#[test]
fn install_signatures_use_the_attestation_key_whatever_the_message_says() {
    let p = policy(&COVER, "5m", false);
    let device = SigningKey::P256(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng));
    let ipk = device.ipk().unwrap();
    let keys = Keys {
        secrets: vec![],
        ipk: Some(ipk.clone()),
    };
    let request = signed_request(&device, "install", None, &COVER, NOW, None, true);
    let verified = verify_at(&p, &request, &keys, NOW).unwrap().unwrap();
    assert_eq!(verified.algorithm, Algorithm::EcdsaP256Sha256);
    assert_eq!(verified.signer, Signer::Install);

    // The attack: HMAC the request with the public ipk as the secret.
    let forged_key = SigningKey::Hmac(ipk.as_bytes().to_vec());
    let forged = signed_request(&forged_key, "install", None, &COVER, NOW, None, true);
    assert!(matches!(
        verify_at(&p, &forged, &keys, NOW),
        Err(SignatureError::AlgorithmMismatch(_, alg)) if alg == "hmac-sha256"
    ));
    let forged = signed_request(&forged_key, "install", None, &COVER, NOW, None, false);
    assert!(matches!(
        verify_at(&p, &forged, &keys, NOW),
        Err(SignatureError::Invalid(_))
    ));
    // Without an attestation ipk there is no install key.
    assert!(matches!(
        verify_at(&p, &request, &app_keys(), NOW),
        Err(SignatureError::InstallKey(..))
    ));
}

#[test]
fn every_refusal_has_its_error() {
    let p = policy(&COVER, "5m", true);
    let keys = app_keys();
    let sign_with = |created: u64, nonce: Option<&str>, components: &[&str]| {
        signed_request(
            &hmac(),
            "sig1",
            Some("commuter-ios"),
            components,
            created,
            nonce,
            false,
        )
    };
    let good = sign_with(NOW, Some("n"), &COVER);
    let check = |request: &RequestContext| verify_at(&p, request, &keys, NOW);
    assert!(check(&good).is_ok(), "control");

    // Missing: no fields at all.
    assert_eq!(
        check(&test_request(&[])).unwrap_err(),
        SignatureError::Missing
    );
    // Not required: unsigned passes.
    let mut optional = p.clone();
    optional.required = false;
    assert_eq!(
        verify_at(&optional, &test_request(&[]), &keys, NOW),
        Ok(None)
    );

    // Syntax.
    let bad = test_request(&[
        ("signature-input", "sig1=(\"@method\""),
        ("signature", "sig1=:AA==:"),
    ]);
    assert!(matches!(
        check(&bad),
        Err(SignatureError::Field(FieldError::Syntax(_)))
    ));
    let bad = test_request(&[
        ("signature-input", "sig1=(\"@Method\");created=1"),
        ("signature", "sig1=:AA==:"),
    ]);
    assert!(matches!(
        check(&bad),
        Err(SignatureError::Field(FieldError::Component(_)))
    ));
    let bad = test_request(&[
        (
            "signature-input",
            "sig1=(\"@method\" \"@method\");created=1",
        ),
        ("signature", "sig1=:AA==:"),
    ]);
    assert!(matches!(
        check(&bad),
        Err(SignatureError::Field(FieldError::Duplicate(_)))
    ));
    let bad = test_request(&[
        ("signature-input", "sig1=(\"@method\");created=\"x\""),
        ("signature", "sig1=:AA==:"),
    ]);
    assert!(matches!(
        check(&bad),
        Err(SignatureError::Field(FieldError::Parameter(_, "created")))
    ));
    let bad = test_request(&[
        ("signature-input", "sig1=(\"@method\");created=1"),
        ("signature", "sig1=AA"),
    ]);
    assert!(matches!(
        check(&bad),
        Err(SignatureError::Field(FieldError::SignatureShape(_)))
    ));

    // A Signature-Input without its Signature.
    let mut unmatched = good.clone();
    unmatched.headers = good
        .headers
        .iter()
        .filter(|(n, _)| *n != "signature")
        .collect();
    unmatched.headers.push("signature", "other=:AA==:");
    assert!(matches!(
        check(&unmatched),
        Err(SignatureError::Unmatched(_))
    ));

    // A key tollgate does not know.
    let unknown = signed_request(
        &hmac(),
        "sig1",
        Some("stranger"),
        &COVER,
        NOW,
        Some("n"),
        false,
    );
    assert_eq!(check(&unknown).unwrap_err(), SignatureError::UnknownKey);

    // An algorithm the policy does not accept.
    let mut ed_only = SignaturePolicy::compile(&SignatureSpec {
        required: true,
        algorithms: vec!["ed25519".into()],
        ..Default::default()
    })
    .unwrap();
    ed_only.require_nonce = false;
    assert!(matches!(
        verify_at(&ed_only, &good, &keys, NOW),
        Err(SignatureError::Algorithm(_, "hmac-sha256"))
    ));

    // No created; stale; from the future; expired.
    let mut no_created = test_request(&[]);
    no_created.headers.push("signature-input", "sig1=(\"@method\" \"@authority\" \"@path\" \"content-digest\");keyid=\"commuter-ios\";nonce=\"n\"");
    no_created.headers.push("signature", "sig1=:AA==:");
    assert!(matches!(
        check(&no_created),
        Err(SignatureError::NoCreated(_))
    ));
    assert!(matches!(
        check(&sign_with(NOW - 301, Some("n"), &COVER)),
        Err(SignatureError::Stale(_, 300))
    ));
    assert!(matches!(
        check(&sign_with(NOW + 301, Some("n"), &COVER)),
        Err(SignatureError::Stale(_, 300))
    ));
    let mut expired = test_request(&[]);
    let origin = origin_of(&expired);
    let components: Vec<String> = COVER.map(String::from).to_vec();
    let fields = sign(
        &Message::from_request(&expired, &origin),
        &SignOptions {
            label: "sig1",
            components: &components,
            created: NOW as i64 - 5,
            expires: Some(NOW as i64),
            nonce: Some("n"),
            keyid: Some("commuter-ios"),
            include_alg: false,
        },
        &hmac(),
    )
    .unwrap();
    expired
        .headers
        .push("signature-input", fields.signature_input);
    expired.headers.push("signature", fields.signature);
    assert!(matches!(check(&expired), Err(SignatureError::Expired(_))));

    // Not covering a required component.
    assert!(matches!(
        check(&sign_with(NOW, Some("n"), &["@method", "@authority", "@path"])),
        Err(SignatureError::NotCovered(_, c)) if c == "\"content-digest\""
    ));
    // No nonce; an oversized nonce.
    assert!(matches!(
        check(&sign_with(NOW, None, &COVER)),
        Err(SignatureError::NoNonce(_))
    ));
    let long = "n".repeat(257);
    assert!(matches!(
        check(&sign_with(NOW, Some(&long), &COVER)),
        Err(SignatureError::BadNonce(_))
    ));
    // A covered header the request lacks; an unsupported component.
    let mut absent = test_request(&[("x-trace", "1")]);
    let origin = origin_of(&absent);
    let components: Vec<String> = [&COVER[..], &["x-trace"]]
        .concat()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let fields = sign(
        &Message::from_request(&absent, &origin),
        &SignOptions {
            label: "sig1",
            components: &components,
            created: NOW as i64,
            expires: None,
            nonce: Some("n"),
            keyid: Some("commuter-ios"),
            include_alg: false,
        },
        &hmac(),
    )
    .unwrap();
    absent.headers = absent
        .headers
        .iter()
        .filter(|(n, _)| *n != "x-trace")
        .collect();
    absent
        .headers
        .push("signature-input", fields.signature_input);
    absent.headers.push("signature", fields.signature);
    assert!(matches!(
        check(&absent),
        Err(SignatureError::Base(_, BaseError::Absent(_)))
    ));

    // Tampering: each covered component changed after signing.
    let mut method = good.clone();
    method.method = "PUT".into();
    assert!(matches!(check(&method), Err(SignatureError::Invalid(_))));
    let mut path = good.clone();
    path.path = "/bar".into();
    assert!(matches!(check(&path), Err(SignatureError::Invalid(_))));
    let mut host = good.clone();
    host.authority = "evil.example".into();
    assert!(matches!(check(&host), Err(SignatureError::Invalid(_))));
    let covering_scheme = sign_with(NOW, Some("n"), &[&COVER[..], &["@scheme"]].concat());
    let mut downgraded = covering_scheme.clone();
    downgraded.tls = false;
    assert!(check(&covering_scheme).is_ok());
    assert!(matches!(
        check(&downgraded),
        Err(SignatureError::Invalid(_))
    ));

    // The body changed but its (covered) digest did not.
    let mut body = good.clone();
    body.body = Some(Body {
        bytes: b"{}".to_vec(),
        truncated: false,
    });
    assert!(matches!(
        check(&body),
        Err(SignatureError::Digest(_, digest::DigestError::Mismatch(_)))
    ));
    let mut truncated = good.clone();
    truncated.body.as_mut().unwrap().truncated = true;
    assert!(matches!(
        check(&truncated),
        Err(SignatureError::Digest(_, digest::DigestError::Truncated))
    ));

    // Reasons: missing → signature_missing, the rest → signature_invalid.
    assert_eq!(
        SignatureError::Missing.deny().reason,
        Reason::SignatureMissing
    );
    assert_eq!(
        SignatureError::UnknownKey.deny().reason,
        Reason::SignatureInvalid
    );
}

#[test]
fn unsupported_component_parameters_are_refused_not_guessed() {
    let request = test_request(&[
        (
            "signature-input",
            r#"sig1=("content-type";sf);created=1700000000;keyid="commuter-ios""#,
        ),
        ("signature", "sig1=:AA==:"),
    ]);
    let p = policy(&[r#""content-type";sf"#], "5m", false);
    assert!(matches!(
        verify_at(&p, &request, &app_keys(), NOW),
        Err(SignatureError::Base(_, BaseError::Unsupported(_)))
    ));
    let request = test_request(&[
        (
            "signature-input",
            r#"sig1=("@method" "@status");created=1700000000;keyid="commuter-ios""#,
        ),
        ("signature", "sig1=:AA==:"),
    ]);
    let p = policy(&["@method"], "5m", false);
    assert!(matches!(
        verify_at(&p, &request, &app_keys(), NOW),
        Err(SignatureError::Base(_, BaseError::Unsupported(_)))
    ));
}

#[test]
fn compile_checks_algorithms_components_and_max_age() {
    let spec = |algorithms: &[&str], components: &[&str], max_age: Option<&str>| SignatureSpec {
        required: false,
        algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
        components: components.iter().map(|c| c.to_string()).collect(),
        max_age: max_age.map(|m| DurationStr::parse(m).unwrap()),
        require_nonce: false,
    };
    assert!(
        SignaturePolicy::compile(&spec(&["rsa-v1_5-sha256"], &[], None))
            .unwrap_err()
            .starts_with("algorithms:")
    );
    assert!(
        SignaturePolicy::compile(&spec(&[], &["@Method"], None))
            .unwrap_err()
            .starts_with("components[0]:")
    );
    assert!(SignaturePolicy::compile(&spec(&[], &["@signature-params"], None)).is_err());
    assert!(SignaturePolicy::compile(&spec(&[], &[], Some("0s"))).is_err());
    let p = SignaturePolicy::compile(&spec(&[], &[], None)).unwrap();
    assert_eq!(p.acceptance_window(), DEFAULT_MAX_AGE);
    assert_eq!(p.components, ["\"@method\"", "\"@authority\"", "\"@path\""]);
    let p = SignaturePolicy::compile(&spec(&[], &[r#""@query-param";name="id""#], None)).unwrap();
    assert_eq!(p.components, [r#""@query-param";name="id""#]);
}

#[test]
fn install_keys_come_in_several_encodings() {
    let p256 = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let point = p256.verifying_key().to_encoded_point(false);
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(point.as_bytes());
    assert_eq!(
        keys::install_key(&raw).unwrap().algorithm(),
        Algorithm::EcdsaP256Sha256
    );
    let ed = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let raw = STANDARD.encode(ed.verifying_key().as_bytes());
    assert_eq!(
        keys::install_key(&raw).unwrap().algorithm(),
        Algorithm::Ed25519
    );
    assert!(keys::install_key("not base64!").is_err());
    assert!(keys::install_key(&STANDARD.encode([1u8; 10])).is_err());
}

#[test]
fn install_keys_verify_only_their_own_raw_signatures() {
    use p256::ecdsa::signature::Signer as _;
    let base = b"\"@method\": POST";
    // P-256: r‖s verifies; the same signature in DER (which p256 itself
    // accepts) does not (RFC 9421 §3.3.4); nor does another key's, nor a
    // flipped bit.
    let device = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let other = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let ipk = SigningKey::P256(device.clone()).ipk().unwrap();
    let key = keys::install_key(&ipk).unwrap();
    let signature: p256::ecdsa::Signature = device.sign(base);
    assert!(key.verify(base, &signature.to_bytes()));
    assert!(!key.verify(base, signature.to_der().as_bytes()));
    let foreign: p256::ecdsa::Signature = other.sign(base);
    assert!(!key.verify(base, &foreign.to_bytes()));
    let mut flipped = signature.to_bytes().to_vec();
    flipped[40] ^= 1;
    assert!(!key.verify(base, &flipped));

    // Ed25519: the same, and an S ≥ L (the canonical S plus L) is refused
    // even though it satisfies the group equation (RFC 8032 §5.1.7).
    let device = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
    let key = keys::install_key(&SigningKey::Ed25519(device.clone()).ipk().unwrap()).unwrap();
    let signature = ed25519_dalek::Signer::sign(&device, base).to_bytes();
    assert!(key.verify(base, &signature));
    assert!(!key.verify(base, &ed25519_dalek::Signer::sign(&other, base).to_bytes()));
    assert!(!key.verify(base, &signature[..63]));
    let mut malleable = signature;
    let l: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(malleable[32 + i]) + u16::from(l[i]) + carry;
        malleable[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    assert!(!key.verify(base, &malleable));

    // HMAC: the right secret only, whole MAC only.
    let secret = [3u8; 32];
    let mac = SigningKey::Hmac(secret.to_vec()).sign(base);
    assert!(keys::VerifyingKey::Hmac(&secret).verify(base, &mac));
    assert!(!keys::VerifyingKey::Hmac(&[4u8; 32]).verify(base, &mac));
    assert!(!keys::VerifyingKey::Hmac(&secret).verify(base, &mac[..31]));
}

#[test]
fn small_order_ed25519_install_keys_are_refused() {
    // The identity point (y = 1) has order 1: with it, the signature
    // (R = identity, S = 0) would verify for every message.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let err = keys::install_key(&STANDARD.encode(identity)).unwrap_err();
    assert!(err.contains("small-order"), "{err}");
}

#[test]
fn acceptance_windows_longer_than_the_replay_window_do_not_compile() {
    use crate::policy::compile::compile;
    use crate::policy::document::parse_documents;
    let key =
        crate::authn::mint::SigningKey::generate(jsonwebtoken::Algorithm::ES256, "k").unwrap();
    let jwks = crate::authn::mint::jwks([&key]).to_string();
    let text = |replay: &str, dpop: &str, signature: &str, single_use: bool| {
        format!(
            r#"apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: bikes, namespace: mobility }}
spec:
  replay: {{ window: {replay} }}
  user:
    issuers: [{{ issuer: "https://id.example/", audiences: [api], jwks: {{ inline: {jwks} }} }}]
    dpop: {{ mode: optional, maxAge: {dpop} }}
  app:
    required: false
    attestation:
      keys: {{ secretRef: {{ name: s, key: k }} }}
      maxLifetime: 2m
      singleUse: {single_use}
    signature: {{ maxAge: {signature} }}
---
apiVersion: v1
kind: Secret
metadata: {{ name: s, namespace: mobility }}
stringData: {{ k: "0123456789abcdef0123456789abcdef" }}
"#
        )
    };
    let errors = |t: String| -> Vec<String> {
        let docs = parse_documents(std::path::Path::new("p.yaml"), &t).unwrap();
        match compile(&docs, 1) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    };
    assert_eq!(errors(text("5m", "60s", "5m", true)), Vec::<String>::new());
    let all = errors(text("1m", "90s", "2m", true)).join("\n");
    assert!(
        all.contains("spec.user.dpop.maxAge: 90s exceeds spec.replay.window (60s)"),
        "{all}"
    );
    assert!(
        all.contains("spec.app.signature.maxAge: 120s exceeds"),
        "{all}"
    );
    assert!(
        all.contains("spec.app.attestation.maxLifetime: 120s exceeds"),
        "{all}"
    );
    // Without singleUse the attestation token's jti is not remembered.
    let all = errors(text("2m", "60s", "2m", false)).join("\n");
    assert!(all.is_empty(), "{all}");
}

mod properties {
    //! Arbitrary `Signature-Input`, `Signature` and `Content-Digest` values
    //! never panic and never verify.

    use super::*;
    use proptest::prelude::*;

    fn refused(input: &str, signature: &str) -> bool {
        let request = test_request(&[("signature-input", input), ("signature", signature)]);
        let p = policy(&["@method"], "5m", false);
        !matches!(verify_at(&p, &request, &app_keys(), NOW), Ok(Some(_)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_field_values_never_verify(input in "\\PC{0,300}", signature in "\\PC{0,200}") {
            prop_assert!(refused(&input, &signature));
        }

        #[test]
        fn structured_looking_fields_never_verify(
            label in "[a-z][a-z0-9]{0,4}",
            components in proptest::collection::vec("\"[@a-z-]{1,12}\"(;[a-z]{1,4}(=\"[a-z]{0,4}\")?)?", 0..6),
            params in proptest::collection::vec(";(created|expires|keyid|nonce|alg|tag)=([0-9]{1,12}|-[0-9]{1,3}|\"[a-z0-9-]{0,12}\"|\\?1)", 0..6),
            signature in "[A-Za-z0-9+/]{0,100}={0,2}",
        ) {
            let input = format!("{label}=({}){}", components.join(" "), params.concat());
            let signature = format!("{label}=:{signature}:");
            prop_assert!(refused(&input, &signature));
            // Under the app's real keyid, with a plausible created.
            let input = format!(
                "{label}=({});created={NOW};keyid=\"commuter-ios\"{}",
                components.join(" "),
                params.concat()
            );
            prop_assert!(refused(&input, &signature));
        }

        #[test]
        fn arbitrary_content_digests_never_panic(value in "\\PC{0,200}", body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let headers: Headers = [("content-digest", value.as_str())].into_iter().collect();
            let body = Body { bytes: body, truncated: false };
            let _ = digest::check(&headers, Some(&body), "HTTP/2");
        }

        #[test]
        fn arbitrary_install_keys_never_panic(ipk in "\\PC{0,200}") {
            let _ = keys::install_key(&ipk);
        }
    }
}
