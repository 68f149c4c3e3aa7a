//! DPoP (RFC 9449) end to end through the real Envoy: a DPoP-bound access
//! token passes only with a fresh proof from the bound key for this method
//! and URI; replays are refused, also by a second replica sharing the same
//! `redis-server`; the `DPoP` header does not reach the upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use jsonwebtoken::Algorithm;
use support::Stack;
use support::redis::RedisServer;
use tollgate::authn::dpop::{self, ProofClaims};
use tollgate::authn::mint::{self, SigningKey, UserClaims};

const HOST: &str = "dpop.example";
const URL: &str = "http://dpop.example/v1/bikes";

/// `bound` requires DPoP; `lenient` is the default (optional): bound
/// tokens need proofs, plain tokens pass as Bearer. Plain HTTP, so the
/// external URI is `http://…`.
fn policies(idp: &SigningKey) -> String {
    let jwks = mint::jwks([idp]);
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: bound, namespace: e2e }}
spec:
  hosts: [{HOST}]
  transport: {{ requireHttps: false }}
  user:
    issuers:
      - issuer: "https://id.example/"
        audiences: [bikes-api]
        jwks: {{ inline: {jwks} }}
        algorithms: [ES256]
    dpop: {{ mode: required, algorithms: [ES256, EdDSA], maxAge: 30s }}
  response: {{ removeCredentials: true }}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: lenient, namespace: e2e }}
spec:
  hosts: [lenient.example]
  transport: {{ requireHttps: false }}
  user:
    issuers:
      - issuer: "https://id.example/"
        audiences: [bikes-api]
        jwks: {{ inline: {jwks} }}
        algorithms: [ES256]
"#
    )
}

fn token(idp: &SigningKey, jkt: Option<String>) -> String {
    let claims = UserClaims {
        issuer: "https://id.example/".into(),
        audience: "bikes-api".into(),
        subject: "alice".into(),
        now: support::idp::now(),
        lifetime_secs: 300.0,
        scope: None,
        cnf_x5t_s256: None,
        cnf_jkt: jkt,
    };
    idp.sign(Some("at+jwt"), &claims.to_json()).unwrap()
}

fn proof(key: &SigningKey, method: &str, url: &str, token: &str, age: i64) -> String {
    dpop::mint_proof(
        key,
        &ProofClaims {
            method,
            url,
            access_token: Some(token),
            iat: (support::idp::now() as i64 - age) as u64,
            jti: mint::random_id(),
        },
    )
    .unwrap()
}

fn assert_denied(response: &support::Response, reason: &str, challenge: &str) {
    assert_eq!(
        (response.status, response.reason()),
        (401, Some(reason)),
        "{:?} {}",
        response.headers,
        response.text()
    );
    let value = response.header("www-authenticate").unwrap_or_default();
    assert!(
        value.starts_with(challenge),
        "challenge {value:?} for {reason}"
    );
}

fn send(stack: &Stack, method: &str, auth: &str, proof: Option<&str>) -> support::Response {
    let mut request = stack
        .request(method, "/v1/bikes")
        .host(HOST)
        .header("authorization", auth);
    if let Some(proof) = proof {
        request = request.header("dpop", proof);
    }
    request.send()
}

#[test]
fn bound_tokens_need_fresh_matching_proofs() {
    let idp = SigningKey::generate(Algorithm::ES256, "idp").unwrap();
    let client = SigningKey::generate(Algorithm::ES256, "client").unwrap();
    let jkt = dpop::key_thumbprint(&client).unwrap();
    let stack = Stack::start(&policies(&idp));
    let access = token(&idp, Some(jkt.clone()));
    let auth = format!("DPoP {access}");

    // A fresh proof from the bound key passes; the proof stays behind.
    let good = proof(&client, "GET", URL, &access, 0);
    let response = send(&stack, "GET", &auth, Some(&good));
    assert_eq!(response.status, 200, "{}", response.text());
    let upstream = response.upstream();
    assert_eq!(upstream.header_once("x-tollgate-user"), "alice");
    assert!(upstream.lacks("dpop"), "the DPoP proof was forwarded");
    assert_eq!(upstream.header_once("authorization"), auth);
    // An Ed25519 key works the same way.
    let ed = SigningKey::generate(Algorithm::EdDSA, "ed").unwrap();
    let ed_access = token(&idp, Some(dpop::key_thumbprint(&ed).unwrap()));
    let response = send(
        &stack,
        "GET",
        &format!("DPoP {ed_access}"),
        Some(&proof(&ed, "GET", URL, &ed_access, 0)),
    );
    assert_eq!(response.status, 200, "{}", response.text());

    // The same proof again: a replay, challenged as a bad proof.
    let invalid = r#"DPoP error="invalid_dpop_proof", algs="ES256 EdDSA""#;
    let response = send(&stack, "GET", &auth, Some(&good));
    assert_denied(&response, "replay_detected", invalid);

    // Wrong method: a GET proof on a POST.
    let response = send(
        &stack,
        "POST",
        &auth,
        Some(&proof(&client, "GET", URL, &access, 0)),
    );
    assert_denied(&response, "dpop_proof_invalid", invalid);
    assert!(response.json()["detail"].as_str().unwrap().contains("htm"));
    // Wrong URI: another path, another host, https instead of http.
    for url in [
        "http://dpop.example/v1/other",
        "http://evil.example/v1/bikes",
        "https://dpop.example/v1/bikes",
    ] {
        let response = send(
            &stack,
            "GET",
            &auth,
            Some(&proof(&client, "GET", url, &access, 0)),
        );
        assert_denied(&response, "dpop_proof_invalid", invalid);
        assert!(
            response.json()["detail"].as_str().unwrap().contains("htu"),
            "{url}"
        );
    }
    // Wrong key: a valid proof, but not from the key the token is bound to.
    let thief = SigningKey::generate(Algorithm::ES256, "thief").unwrap();
    let response = send(
        &stack,
        "GET",
        &auth,
        Some(&proof(&thief, "GET", URL, &access, 0)),
    );
    assert_denied(&response, "dpop_proof_invalid", invalid);
    assert!(
        response.json()["detail"]
            .as_str()
            .unwrap()
            .contains("cnf.jkt")
    );
    // Stale iat (maxAge 30s).
    let response = send(
        &stack,
        "GET",
        &auth,
        Some(&proof(&client, "GET", URL, &access, 120)),
    );
    assert_denied(&response, "dpop_proof_invalid", invalid);
    assert!(response.json()["detail"].as_str().unwrap().contains("iat"));
    // A proof for another access token (ath).
    let other = token(&idp, Some(jkt.clone()));
    let response = send(
        &stack,
        "GET",
        &auth,
        Some(&proof(&client, "GET", URL, &other, 0)),
    );
    assert_denied(&response, "dpop_proof_invalid", invalid);
    // No proof at all.
    let response = send(&stack, "GET", &auth, None);
    assert_denied(
        &response,
        "dpop_proof_missing",
        r#"DPoP algs="ES256 EdDSA""#,
    );
    // The bound token sent as Bearer (what a thief without the key does),
    // with or without a proof.
    for proof in [None, Some(proof(&client, "GET", URL, &access, 0))] {
        let response = send(&stack, "GET", &format!("Bearer {access}"), proof.as_deref());
        assert_denied(
            &response,
            "user_token_invalid",
            r#"DPoP error="invalid_token""#,
        );
    }
    // A forged access token under the DPoP scheme: the DPoP challenge
    // (RFC 9449 §7.1), not Bearer.
    let forger = SigningKey::generate(Algorithm::ES256, "idp").unwrap();
    let forged = token(&forger, Some(jkt.clone()));
    let response = send(
        &stack,
        "GET",
        &format!("DPoP {forged}"),
        Some(&proof(&client, "GET", URL, &forged, 0)),
    );
    assert_denied(
        &response,
        "user_token_invalid",
        r#"DPoP error="invalid_token""#,
    );
    // dpop: required refuses unbound tokens, even as Bearer.
    let plain = token(&idp, None);
    let response = send(&stack, "GET", &format!("Bearer {plain}"), None);
    assert_denied(&response, "dpop_proof_missing", "DPoP ");
    // Under the default (optional) policy the plain token passes as Bearer,
    // and the bound one still needs its proof.
    let lenient = |auth: &str, proof: Option<&str>| {
        let mut request = stack
            .get("/v1/bikes")
            .host("lenient.example")
            .header("authorization", auth);
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        request.send()
    };
    assert_eq!(lenient(&format!("Bearer {plain}"), None).status, 200);
    let response = lenient(&format!("Bearer {access}"), None);
    assert_denied(&response, "user_token_invalid", "DPoP ");
    let lenient_url = "http://lenient.example/v1/bikes";
    let response = lenient(&auth, Some(&proof(&client, "GET", lenient_url, &access, 0)));
    assert_eq!(response.status, 200, "{}", response.text());
}

/// Two replicas (each its own Envoy and tollgate) share one Redis: a proof
/// used at one is a replay at the other.
#[test]
fn a_proof_used_at_one_replica_is_a_replay_at_another() {
    let redis = RedisServer::start();
    let idp = SigningKey::generate(Algorithm::ES256, "idp").unwrap();
    let client = SigningKey::generate(Algorithm::ES256, "client").unwrap();
    let policy = policies(&idp);
    let start = || {
        Stack::builder(&policy)
            .tollgate_args(&["--redis", &redis.url(), "--store-timeout", "500ms"])
            .start()
    };
    let (first, second) = (start(), start());
    let access = token(&idp, Some(dpop::key_thumbprint(&client).unwrap()));
    let auth = format!("DPoP {access}");
    let used = proof(&client, "GET", URL, &access, 0);
    let response = send(&first, "GET", &auth, Some(&used));
    assert_eq!(response.status, 200, "{}", response.text());
    let response = send(&second, "GET", &auth, Some(&used));
    assert_eq!(
        (response.status, response.reason()),
        (401, Some("replay_detected")),
        "{}",
        response.text()
    );
    // A fresh proof passes at the second replica.
    let response = send(
        &second,
        "GET",
        &auth,
        Some(&proof(&client, "GET", URL, &access, 0)),
    );
    assert_eq!(response.status, 200, "{}", response.text());
}

/// Over Envoy's TLS listener the external scheme is `https` (the trusted
/// origin is Envoy's TLS session): an `https` proof passes, an `http` one
/// for the same path does not.
#[test]
fn htu_scheme_comes_from_the_tls_session() {
    let idp = SigningKey::generate(Algorithm::ES256, "idp").unwrap();
    let client = SigningKey::generate(Algorithm::ES256, "client").unwrap();
    let policy = policies(&idp).replace("requireHttps: false", "requireHttps: true");
    let stack = Stack::builder(&policy).tls().start();
    let access = token(&idp, Some(dpop::key_thumbprint(&client).unwrap()));
    let auth = format!("DPoP {access}");
    let over_tls = |url: &str| {
        stack
            .get("/v1/bikes")
            .https()
            .host(HOST)
            .header("authorization", &auth)
            .header("dpop", &proof(&client, "GET", url, &access, 0))
            .send()
    };
    let response = over_tls("https://DPoP.example:443/v1/bikes");
    assert_eq!(response.status, 200, "{}", response.text());
    let response = over_tls(URL);
    assert_denied(
        &response,
        "dpop_proof_invalid",
        r#"DPoP error="invalid_dpop_proof""#,
    );
}
