//! User access tokens through the decision core (no Envoy): every
//! algorithm, every claim failure, the key set life cycle against a real
//! local IdP over HTTP (rotation, unknown `kid`, outage), the verified-token
//! cache, certificate binding and route scope requirements.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use sha2::Digest;
use support::idp::{self, Idp, compile, decide, outcome, request, try_compile};
use tollgate::authn::mint::{self, SigningKey};
use tollgate::decision::ChallengeParams;

const HOST: &str = "api.example";

fn policy(issuer: &str, jwks: &str, extra_user: &str, algorithms: &str) -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: api, namespace: t }}
spec:
  hosts: [{HOST}]
  user:
    {extra_user}
    issuers:
      - issuer: "{issuer}"
        audiences: [api, other-api]
        jwks: {jwks}
        algorithms: {algorithms}
        leeway: 5s
  routes:
    - {{ name: rent, match: {{ pathPrefix: /v1/rentals }}, require: {{ scopes: [rent] }} }}
    - {{ name: gold, match: {{ pathPrefix: /v1/gold }}, require: {{ claims: {{ tier: [gold] }} }} }}
"#
    )
}

fn uri_policy(idp: &Idp) -> String {
    policy(
        &idp.issuer(),
        &format!("{{ uri: \"{}\" }}", idp.jwks_uri()),
        "",
        "[ES256, RS256, PS256, EdDSA]",
    )
}

fn claims(issuer: &str) -> Value {
    let now = idp::now() as u64;
    json!({"iss": issuer, "aud": "api", "sub": "alice", "iat": now, "exp": now + 300, "scope": "read rent"})
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn decide_token(snapshot: &tollgate::policy::snapshot::Snapshot, token: &str) -> String {
    let auth = bearer(token);
    outcome(
        &decide(
            snapshot,
            &request(HOST, "/v1/x", &[("authorization", &auth)]),
        )
        .await,
    )
}

fn user_policy(
    snapshot: &tollgate::policy::snapshot::Snapshot,
) -> &tollgate::authn::user::UserPolicy {
    snapshot.policy("t/api").unwrap().user.as_ref().unwrap()
}

#[tokio::test]
async fn every_asymmetric_algorithm_is_accepted_from_a_jwks_url() {
    let keys = vec![
        SigningKey::generate(Algorithm::ES256, "ec").unwrap(),
        SigningKey::generate(Algorithm::EdDSA, "ed").unwrap(),
        idp::rsa_key('a', Algorithm::RS256, "rs"),
        idp::rsa_key('b', Algorithm::PS256, "ps"),
    ];
    let idp = Idp::start(keys.clone());
    let snapshot = compile(&uri_policy(&idp));
    for key in &keys {
        let token = key.sign(Some("at+jwt"), &claims(&idp.issuer())).unwrap();
        let auth = bearer(&token);
        let decision = decide(
            &snapshot,
            &request(HOST, "/v1/x", &[("authorization", &auth)]),
        )
        .await;
        assert_eq!(
            outcome(&decision),
            "allow",
            "{:?}: {:?}",
            key.alg,
            decision.denial()
        );
        assert_eq!(decision.identity.user.as_deref(), Some("alice"));
        assert_eq!(
            decision.identity.issuer.as_deref(),
            Some(idp.issuer().as_str())
        );
    }
}

#[tokio::test]
async fn hmac_tokens_verify_only_with_a_secret_key() {
    let secret = [42u8; 32];
    let yaml = format!(
        "{}---\napiVersion: v1\nkind: Secret\nmetadata: {{ name: hs, namespace: t }}\ndata: {{ key: \"{}\" }}\n",
        policy(
            "https://hs.example",
            "{ secretRef: { name: hs, key: key } }",
            "",
            "[HS256]"
        ),
        STANDARD.encode(secret)
    );
    let snapshot = compile(&yaml);
    let token = mint::sign_hmac(
        Algorithm::HS256,
        &secret,
        None,
        &claims("https://hs.example"),
    )
    .unwrap();
    assert_eq!(decide_token(&snapshot, &token).await, "allow");
    let forged = mint::sign_hmac(
        Algorithm::HS256,
        &[1u8; 32],
        None,
        &claims("https://hs.example"),
    )
    .unwrap();
    assert_eq!(decide_token(&snapshot, &forged).await, "user_token_invalid");

    // HS* without a Secret is a compile error naming the field.
    let idp = Idp::start(vec![]);
    let err = try_compile(&policy(
        &idp.issuer(),
        &format!("{{ uri: \"{}\" }}", idp.jwks_uri()),
        "",
        "[RS256, HS256]",
    ))
    .unwrap_err();
    assert!(err.contains("spec.user.issuers[0].algorithms"), "{err}");
    assert!(err.contains("HS256 needs a secretRef key"), "{err}");
}

#[tokio::test]
async fn compile_refuses_unsafe_issuer_settings() {
    for (jwks, algorithms, expected) in [
        (
            "{ uri: \"https://id.example/jwks\" }",
            "[none]",
            "none is never accepted",
        ),
        (
            "{ uri: \"http://id.example/jwks\" }",
            "[RS256]",
            "plain HTTP",
        ),
        (
            "{ uri: \"https://id.example/jwks\", discovery: true }",
            "[RS256]",
            "exactly one",
        ),
        ("{ inline: { keys: [] } }", "[RS256]", "no usable key"),
    ] {
        let err = try_compile(&policy("https://id.example", jwks, "", algorithms)).unwrap_err();
        assert!(err.contains(expected), "{jwks} {algorithms}: {err}");
    }
    let no_aud = policy(
        "https://id.example",
        "{ uri: \"https://id.example/j\" }",
        "",
        "[RS256]",
    )
    .replace("audiences: [api, other-api]", "audiences: []");
    assert!(try_compile(&no_aud).unwrap_err().contains("audiences"));
}

#[tokio::test]
async fn claim_failures_have_their_own_reasons() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let snapshot = compile(&uri_policy(&idp));
    let issuer = idp.issuer();
    let now = idp::now() as u64;
    let with = |patch: Value| {
        let mut c = claims(&issuer);
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        key.sign(None, &c).unwrap()
    };
    let cases = [
        (json!({"exp": now - 60}), "user_token_expired"),
        (json!({"exp": null}), "user_token_invalid"),
        (json!({"exp": "tomorrow"}), "user_token_invalid"),
        (json!({"nbf": now + 600}), "user_token_invalid"),
        (json!({"iat": now + 600}), "user_token_invalid"),
        (json!({"aud": "someone-else"}), "user_token_invalid"),
        (json!({"aud": ["x", "other-api"]}), "allow"),
        (json!({"iss": "https://evil.example"}), "user_token_invalid"),
        (json!({"iss": format!("{issuer}/")}), "user_token_invalid"),
        (json!({"sub": null}), "user_token_invalid"),
        (json!({"exp": now as f64 + 120.75}), "allow"),
        // Within the 5 s leeway.
        (json!({"exp": now - 2}), "allow"),
    ];
    for (patch, expected) in cases {
        assert_eq!(
            decide_token(&snapshot, &with(patch.clone())).await,
            expected,
            "{patch}"
        );
    }
}

#[tokio::test]
async fn hostile_headers_and_signatures_are_refused() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let snapshot = compile(&uri_policy(&idp));
    let good = key.sign(None, &claims(&idp.issuer())).unwrap();
    assert_eq!(decide_token(&snapshot, &good).await, "allow");

    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let payload = b64(&claims(&idp.issuer()));
    // alg none, with and without a signature segment.
    let none = format!("{}.{payload}.", b64(&json!({"alg": "none", "kid": "k1"})));
    assert_eq!(decide_token(&snapshot, &none).await, "user_token_invalid");
    let none_sig = format!(
        "{}.{payload}.AAAA",
        b64(&json!({"alg": "none", "kid": "k1"}))
    );
    assert_eq!(
        decide_token(&snapshot, &none_sig).await,
        "user_token_invalid"
    );

    // Tampered payload: the signature of the original over a changed body.
    let parts: Vec<&str> = good.split('.').collect();
    let mut admin = claims(&idp.issuer());
    admin["sub"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], b64(&admin), parts[2]);
    assert_eq!(
        decide_token(&snapshot, &tampered).await,
        "user_token_invalid"
    );

    // A kid the IdP never published.
    let stranger = SigningKey::generate(Algorithm::ES256, "unknown-kid").unwrap();
    let token = stranger.sign(None, &claims(&idp.issuer())).unwrap();
    assert_eq!(decide_token(&snapshot, &token).await, "user_token_invalid");

    // A crit header tollgate does not implement.
    let crit = mint::sign_with(
        &json!({"alg": "HS256", "crit": ["exp"]}),
        &claims(&idp.issuer()),
        &EncodingKey::from_secret(b"x"),
        Algorithm::HS256,
    )
    .unwrap();
    assert_eq!(decide_token(&snapshot, &crit).await, "user_token_invalid");
}

#[tokio::test]
async fn algorithm_confusion_with_the_rsa_public_key_fails() {
    // The issuer's keys (in a Secret JWKS, so HS256 may even be allowed)
    // hold only an RSA public key. A token "signed" with HMAC using that
    // public key's bytes must not verify: the key type decides.
    let rsa = idp::rsa_key('a', Algorithm::RS256, "rsa");
    let public = mint::jwks([&rsa]);
    let yaml = format!(
        "{}---\napiVersion: v1\nkind: Secret\nmetadata: {{ name: keys, namespace: t }}\nstringData:\n  jwks: '{}'\n",
        policy(
            "https://conf.example",
            "{ secretRef: { name: keys, key: jwks }, encoding: jwks }",
            "",
            "[RS256, HS256]"
        ),
        public
    );
    let snapshot = compile(&yaml);
    let good = rsa.sign(None, &claims("https://conf.example")).unwrap();
    assert_eq!(decide_token(&snapshot, &good).await, "allow");
    let n = public["keys"][0]["n"].as_str().unwrap();
    for secret in [n.as_bytes().to_vec(), public.to_string().into_bytes()] {
        let forged = mint::sign_hmac(
            Algorithm::HS256,
            &secret,
            Some("rsa"),
            &claims("https://conf.example"),
        )
        .unwrap();
        assert_eq!(decide_token(&snapshot, &forged).await, "user_token_invalid");
    }
}

#[tokio::test]
async fn missing_token_challenges_without_error_and_optional_users_pass() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let snapshot = compile(&uri_policy(&idp));
    let decision = decide(&snapshot, &request(HOST, "/v1/x", &[])).await;
    let deny = decision.denial().unwrap();
    assert_eq!(deny.reason.code(), "user_token_missing");
    let headers = deny.response_headers(&ChallengeParams::default());
    let challenge = headers
        .iter()
        .find(|(n, _)| n == "www-authenticate")
        .unwrap();
    assert_eq!(challenge.1, r#"Bearer realm="tollgate""#);

    let token = key.sign(None, &json!({"exp": 1})).unwrap();
    let decision = decide(
        &snapshot,
        &request(HOST, "/v1/x", &[("authorization", &bearer(&token))]),
    )
    .await;
    let headers = decision
        .denial()
        .unwrap()
        .response_headers(&ChallengeParams::default());
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "www-authenticate" && v.contains(r#"error="invalid_token""#)),
        "{headers:?}"
    );

    let optional =
        compile(&uri_policy(&idp).replace("user:\n    \n", "user:\n    required: false\n"));
    assert_eq!(
        outcome(&decide(&optional, &request(HOST, "/v1/x", &[])).await),
        "allow"
    );
    // An optional token that is sent must still be valid.
    let bad = decide(
        &optional,
        &request(HOST, "/v1/x", &[("authorization", "Bearer x.y.z")]),
    )
    .await;
    assert_eq!(outcome(&bad), "user_token_invalid");
}

#[tokio::test]
async fn dpop_tokens_are_refused_until_dpop_is_supported() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let snapshot = compile(&uri_policy(&idp));
    let token = key.sign(None, &claims(&idp.issuer())).unwrap();
    let dpop_scheme = format!("DPoP {token}");
    let d = decide(
        &snapshot,
        &request(HOST, "/v1/x", &[("authorization", &dpop_scheme)]),
    )
    .await;
    assert_eq!(outcome(&d), "user_token_invalid");
    let mut bound = claims(&idp.issuer());
    bound["cnf"] = json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"});
    let d = decide_token(&snapshot, &key.sign(None, &bound).unwrap()).await;
    assert_eq!(d, "user_token_invalid");
    let basic = decide(
        &snapshot,
        &request(HOST, "/v1/x", &[("authorization", "Basic YTpi")]),
    )
    .await;
    assert_eq!(outcome(&basic), "user_token_invalid");
}

#[tokio::test]
async fn repeat_tokens_skip_the_signature_check() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let snapshot = compile(&uri_policy(&idp));
    let token = key.sign(None, &claims(&idp.issuer())).unwrap();
    for _ in 0..5 {
        assert_eq!(decide_token(&snapshot, &token).await, "allow");
    }
    assert_eq!(user_policy(&snapshot).signature_checks(), 1);
    // Failures are never cached: each bad token is checked again.
    // Same kid, another key: parses, reaches the signature check, fails.
    let impostor = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let bad = impostor.sign(None, &claims(&idp.issuer())).unwrap();
    for _ in 0..2 {
        assert_eq!(decide_token(&snapshot, &bad).await, "user_token_invalid");
    }
    assert_eq!(user_policy(&snapshot).signature_checks(), 3);
    // Another policy trusting the same IdP has its own cache and its own
    // audience check.
    let other = compile(&uri_policy(&idp).replace("[api, other-api]", "[third]"));
    assert_eq!(decide_token(&other, &token).await, "user_token_invalid");
}

#[tokio::test]
async fn rotation_is_picked_up_and_retired_keys_stop_verifying() {
    let old = SigningKey::generate(Algorithm::ES256, "old").unwrap();
    let new = SigningKey::generate(Algorithm::EdDSA, "new").unwrap();
    let idp = Idp::start(vec![old.clone()]);
    let snapshot = compile(&uri_policy(&idp));
    let old_token = old.sign(None, &claims(&idp.issuer())).unwrap();
    assert_eq!(decide_token(&snapshot, &old_token).await, "allow");

    // The IdP rotates; a token with the new kid triggers a refetch.
    idp.rotate(vec![new.clone()]);
    let new_token = new.sign(None, &claims(&idp.issuer())).unwrap();
    assert_eq!(decide_token(&snapshot, &new_token).await, "allow");
    // The old key left the set: its cached token no longer passes.
    assert_eq!(
        decide_token(&snapshot, &old_token).await,
        "user_token_invalid"
    );
}

#[tokio::test]
async fn unknown_kids_cannot_flood_the_idp() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let snapshot = compile(&uri_policy(&idp));
    assert_eq!(
        decide_token(&snapshot, &key.sign(None, &claims(&idp.issuer())).unwrap()).await,
        "allow"
    );
    let before = idp.jwks_requests();
    for i in 0..20 {
        let random = SigningKey::generate(Algorithm::ES256, &format!("random-{i}")).unwrap();
        let token = random.sign(None, &claims(&idp.issuer())).unwrap();
        assert_eq!(decide_token(&snapshot, &token).await, "user_token_invalid");
    }
    // One refetch for the first unknown kid; the rest are rate-limited.
    assert_eq!(idp.jwks_requests() - before, 1);
}

#[tokio::test]
async fn idp_outage_keeps_last_good_keys_and_unknown_keys_are_503() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let snapshot = compile(&uri_policy(&idp));
    assert_eq!(
        decide_token(&snapshot, &key.sign(None, &claims(&idp.issuer())).unwrap()).await,
        "allow"
    );
    idp.set_down(true);
    // A fresh token (not cached) still verifies with the last good keys.
    let mut fresh = claims(&idp.issuer());
    fresh["sub"] = json!("bob");
    assert_eq!(
        decide_token(&snapshot, &key.sign(None, &fresh).unwrap()).await,
        "allow"
    );
    // A key tollgate cannot fetch now: 503, not 401.
    let rotated = SigningKey::generate(Algorithm::ES256, "k2").unwrap();
    let token = rotated.sign(None, &claims(&idp.issuer())).unwrap();
    let d = decide(
        &snapshot,
        &request(HOST, "/v1/x", &[("authorization", &bearer(&token))]),
    )
    .await;
    assert_eq!(outcome(&d), "keys_unavailable");
    assert_eq!(d.denial().unwrap().reason.http_status(), 503);
}

#[tokio::test]
async fn no_keys_ever_and_idp_down_is_503() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    idp.set_down(true);
    let snapshot = compile(&uri_policy(&idp));
    let token = key.sign(None, &claims(&idp.issuer())).unwrap();
    assert_eq!(decide_token(&snapshot, &token).await, "keys_unavailable");
}

#[tokio::test]
async fn discovery_finds_the_jwks() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let snapshot = compile(&policy(&idp.issuer(), "{ discovery: true }", "", "[ES256]"));
    let token = key.sign(None, &claims(&idp.issuer())).unwrap();
    assert_eq!(decide_token(&snapshot, &token).await, "allow");
    assert!(idp.discovery_requests() >= 1);
}

#[tokio::test]
async fn access_token_type_can_be_required() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let yaml = policy(
        &idp.issuer(),
        &format!("{{ uri: \"{}\" }}", idp.jwks_uri()),
        "requireAccessTokenType: true",
        "[ES256]",
    );
    let snapshot = compile(&yaml);
    let id_token = key.sign(Some("JWT"), &claims(&idp.issuer())).unwrap();
    assert_eq!(
        decide_token(&snapshot, &id_token).await,
        "user_token_invalid"
    );
    let access = key.sign(Some("at+jwt"), &claims(&idp.issuer())).unwrap();
    assert_eq!(decide_token(&snapshot, &access).await, "allow");
}

#[tokio::test]
async fn route_scopes_and_claims_are_required() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let snapshot = compile(&uri_policy(&idp));
    let mut c = claims(&idp.issuer());
    c["scope"] = json!("read");
    let reader = bearer(&key.sign(None, &c).unwrap());
    let d = decide(
        &snapshot,
        &request(HOST, "/v1/rentals", &[("authorization", &reader)]),
    )
    .await;
    let deny = d.denial().unwrap();
    assert_eq!(deny.reason.code(), "insufficient_scope");
    assert_eq!(deny.reason.http_status(), 403);
    let headers = deny.response_headers(&ChallengeParams::default());
    assert!(headers.contains(&(
        "www-authenticate".into(),
        r#"Bearer realm="tollgate", error="insufficient_scope", scope="rent""#.into()
    )));
    let renter = bearer(&key.sign(None, &claims(&idp.issuer())).unwrap());
    let d = decide(
        &snapshot,
        &request(HOST, "/v1/rentals", &[("authorization", &renter)]),
    )
    .await;
    assert_eq!(outcome(&d), "allow");
    let d = decide(
        &snapshot,
        &request(HOST, "/v1/gold", &[("authorization", &renter)]),
    )
    .await;
    assert_eq!(outcome(&d), "insufficient_scope");
    c["tier"] = json!("gold");
    let gold = bearer(&key.sign(None, &c).unwrap());
    let d = decide(
        &snapshot,
        &request(HOST, "/v1/gold", &[("authorization", &gold)]),
    )
    .await;
    assert_eq!(outcome(&d), "allow");
}

#[tokio::test]
async fn certificate_bound_tokens_need_their_certificate() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let pem = |der: &[u8]| {
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            STANDARD.encode(der)
        )
    };
    let cert = pem(b"client certificate DER");
    let thumbprint = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(b"client certificate DER"));
    let mut c = claims(&idp.issuer());
    c["cnf"] = json!({"x5t#S256": thumbprint});
    let auth = bearer(&key.sign(None, &c).unwrap());
    let plain = bearer(&key.sign(None, &claims(&idp.issuer())).unwrap());
    for (mode, expect_unbound) in [
        ("optional", "allow"),
        ("required", "certificate_binding_mismatch"),
    ] {
        let yaml = policy(
            &idp.issuer(),
            &format!("{{ uri: \"{}\" }}", idp.jwks_uri()),
            &format!("certificateBinding: {mode}"),
            "[ES256]",
        );
        let snapshot = compile(&yaml);
        let with_cert = |auth: &str, cert: Option<&str>| {
            let mut r = request(HOST, "/v1/x", &[("authorization", auth)]);
            r.peer_certificate = cert.map(str::to_owned);
            r
        };
        assert_eq!(
            outcome(&decide(&snapshot, &with_cert(&auth, Some(&cert))).await),
            "allow"
        );
        assert_eq!(
            outcome(&decide(&snapshot, &with_cert(&auth, Some(&pem(b"another")))).await),
            "certificate_binding_mismatch"
        );
        assert_eq!(
            outcome(&decide(&snapshot, &with_cert(&auth, None)).await),
            "certificate_binding_mismatch"
        );
        assert_eq!(
            outcome(&decide(&snapshot, &with_cert(&plain, Some(&cert))).await),
            expect_unbound,
            "{mode}"
        );
    }
}

/// Behind a TLS-terminating proxy (`--trusted-origin forwarded`) the client
/// certificate comes from the right-most `X-Forwarded-Client-Cert` element;
/// the certificate of Envoy's own peer (the proxy) binds nothing.
#[tokio::test]
async fn forwarded_mode_binds_to_the_forwarded_client_certificate() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let pem = |der: &[u8]| {
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            STANDARD.encode(der)
        )
    };
    let url_encode = |text: &str| {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let client_cert = pem(b"client certificate DER");
    let proxy_cert = pem(b"proxy certificate DER");
    let thumbprint = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(b"client certificate DER"));
    let mut c = claims(&idp.issuer());
    c["cnf"] = json!({"x5t#S256": thumbprint});
    let auth = bearer(&key.sign(None, &c).unwrap());
    let yaml = policy(
        &idp.issuer(),
        &format!("{{ uri: \"{}\" }}", idp.jwks_uri()),
        "certificateBinding: required",
        "[ES256]",
    );
    let snapshot = compile(&yaml);
    let deps = tollgate::pipeline::Deps {
        store: std::sync::Arc::new(tollgate::store::MemoryStore::new()),
        clock: std::sync::Arc::new(tollgate::clock::SystemClock),
        settings: tollgate::pipeline::Settings {
            trusted_origin: tollgate::origin::TrustedOrigin::Forwarded { hops: 1 },
            ..Default::default()
        },
    };
    let run = |xfcc: Option<String>| {
        let mut r = request(
            HOST,
            "/v1/x",
            &[("authorization", &auth), ("x-forwarded-proto", "https")],
        );
        r.peer_certificate = Some(proxy_cert.clone());
        if let Some(xfcc) = xfcc {
            r.headers.push("x-forwarded-client-cert", xfcc);
        }
        r
    };
    let forwarded = format!(
        "Hash=00;Cert=\"{}\";URI=spiffe://bikes/app",
        url_encode(&client_cert)
    );
    let decide = |r| {
        let deps = deps.clone();
        let snapshot = &snapshot;
        async move { outcome(&tollgate::pipeline::decide(snapshot, &r, &deps).await) }
    };
    assert_eq!(decide(run(Some(forwarded.clone()))).await, "allow");
    // A client-forged element further left does not count.
    let forged = format!("Cert=\"{}\",{forwarded}", url_encode(&pem(b"forged")));
    assert_eq!(decide(run(Some(forged))).await, "allow");
    // Without XFCC, the proxy's own certificate must not satisfy the binding.
    assert_eq!(decide(run(None)).await, "certificate_binding_mismatch");
    let other = format!("Cert=\"{}\"", url_encode(&pem(b"another")));
    assert_eq!(
        decide(run(Some(other))).await,
        "certificate_binding_mismatch"
    );
}
