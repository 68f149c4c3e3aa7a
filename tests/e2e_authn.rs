//! End to end through the real Envoy with a local OpenID Provider: user
//! access tokens (every algorithm, every claim failure, `alg: none`,
//! algorithm confusion, unknown `kid`, tampering), key rotation without a
//! restart, an IdP outage with cached keys, Approov-style app tokens
//! (missing, invalid, expired, fractional `exp`, `pay` binding), registered
//! apps (unknown, disabled, not allowed), and credentials stripped before
//! the upstream. Every server listens on an ephemeral loopback port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value, json};
use support::Stack;
use support::idp::{self, Idp};
use tollgate::authn::mint::{self, AppClaims, SigningKey};

const SECRET: [u8; 32] = [7; 32];
const COMMUTER_KEY: &str = "tg_7Hq2Xv0Zk9TmE4yPp1LwRa8sNcU";
const DISABLED_KEY: &str = "tg_disabled_Q2Xv0Zk9TmE4yPp1LwR";
const SCOOTER_KEY: &str = "tg_scooter_8Zk9TmE4yPp1LwRa8sN";

/// Policies: `bikes` (user + app), `users` (user only), `apps` (app only),
/// each over plain HTTP; all trust `idp`.
fn policies(idp: &Idp) -> String {
    let issuer = idp.issuer();
    let jwks = idp.jwks_uri();
    let secret = STANDARD.encode(SECRET);
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: bikes, namespace: e2e }}
spec:
  hosts: [bikes.example]
  transport: {{ requireHttps: false }}
  defaultPlan: free
  plans: [{{ name: free }}, {{ name: gold }}]
  user:
    issuers:
      - issuer: "{issuer}"
        audiences: [bikes-api]
        jwks: {{ uri: "{jwks}" }}
        algorithms: [ES256, RS256, PS256, EdDSA]
  app:
    identify:
      apiKey: {{ header: x-api-key }}
    attestation:
      keys: {{ secretRef: {{ name: attester, key: secret }}, encoding: base64 }}
      binding: {{ headers: [authorization] }}
  routes:
    - {{ name: rent, match: {{ pathPrefix: /v1/rentals }}, require: {{ scopes: [rent] }} }}
  response:
    removeCredentials: true
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: users, namespace: e2e }}
spec:
  hosts: [users.example]
  transport: {{ requireHttps: false }}
  user:
    issuers:
      - issuer: "{issuer}"
        audiences: [bikes-api]
        jwks: {{ discovery: true }}
        algorithms: [ES256, RS256, PS256, EdDSA]
        leeway: 5s
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: apps, namespace: e2e }}
spec:
  hosts: [apps.example]
  transport: {{ requireHttps: false }}
  app:
    identify:
      apiKey: {{ header: x-api-key }}
    attestation:
      keys: {{ secretRef: {{ name: attester, key: secret }}, encoding: base64 }}
      binding: {{ headers: [authorization] }}
---
apiVersion: v1
kind: Secret
metadata: {{ name: attester, namespace: e2e }}
stringData:
  secret: "{secret}"
---
apiVersion: v1
kind: Secret
metadata: {{ name: keys, namespace: e2e }}
stringData:
  commuter: "{COMMUTER_KEY}"
  disabled: "{DISABLED_KEY}"
  scooter: "{SCOOTER_KEY}"
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: commuter, namespace: e2e }}
spec:
  appId: commuter-ios
  plan: gold
  apiKey: {{ secretRef: {{ name: keys, key: commuter }} }}
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: old, namespace: e2e }}
spec:
  appId: old-android
  disabled: true
  apiKey: {{ secretRef: {{ name: keys, key: disabled }} }}
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: scooter, namespace: e2e }}
spec:
  appId: scooter-web
  policies: [scooters]
  apiKey: {{ secretRef: {{ name: keys, key: scooter }} }}
"#
    )
}

fn claims(idp: &Idp) -> Value {
    let now = idp::now() as u64;
    json!({"iss": idp.issuer(), "aud": "bikes-api", "sub": "alice", "iat": now, "exp": now + 300, "scope": "read rent"})
}

fn app_token(exp_in: f64, bound: Option<&str>) -> String {
    let claims = AppClaims {
        exp: idp::now() + exp_in,
        bound_values: bound.map(|b| vec![b.to_owned()]).unwrap_or_default(),
        device: Some("device-42".into()),
        extra: Map::new(),
    };
    mint::sign_hmac(Algorithm::HS256, &SECRET, None, &claims.to_json()).unwrap()
}

/// Asserts a deny with `status`, `reason`, and the challenge (if any)
/// starting with `challenge`.
fn assert_denied(response: &support::Response, status: u16, reason: &str, challenge: Option<&str>) {
    assert_eq!(
        (response.status, response.reason()),
        (status, Some(reason)),
        "expected {status} {reason}, got {:?} {}",
        response.headers,
        response.text()
    );
    assert_eq!(response.json()["reason"], reason);
    match challenge {
        Some(prefix) => {
            let value = response.header("www-authenticate").unwrap_or_default();
            assert!(
                value.starts_with(prefix),
                "challenge {value:?} for {reason}"
            );
        }
        None => assert!(response.header("www-authenticate").is_none()),
    }
}

#[test]
fn genuine_user_and_app_pass_and_credentials_stay_behind() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let stack = Stack::start(&policies(&idp));
    let auth = format!(
        "Bearer {}",
        key.sign(Some("at+jwt"), &claims(&idp)).unwrap()
    );
    let app = app_token(60.891912, Some(&auth));
    for _ in 0..2 {
        let response = stack
            .get("/v1/bikes")
            .host("bikes.example")
            .header("authorization", &auth)
            .header("x-api-key", COMMUTER_KEY)
            .header("approov-token", &app)
            .send();
        assert_eq!(response.status, 200, "{}", response.text());
        let upstream = response.upstream();
        assert_eq!(upstream.header_once("x-tollgate-user"), "alice");
        assert_eq!(upstream.header_once("x-tollgate-app"), "commuter-ios");
        assert_eq!(upstream.header_once("x-tollgate-plan"), "gold");
        assert_eq!(upstream.header_once("x-tollgate-device"), "device-42");
        assert!(upstream.lacks("x-api-key"), "API key forwarded");
        assert!(upstream.lacks("approov-token"), "app token forwarded");
        assert_eq!(upstream.header_once("authorization"), auth);
    }
    // A route needing a scope the token lacks: 403 with the RFC 6750 challenge.
    let mut narrow = claims(&idp);
    narrow["scope"] = json!("read");
    let narrow_auth = format!("Bearer {}", key.sign(None, &narrow).unwrap());
    let response = stack
        .get("/v1/rentals")
        .host("bikes.example")
        .header("authorization", &narrow_auth)
        .header("x-api-key", COMMUTER_KEY)
        .header("approov-token", &app_token(60.0, Some(&narrow_auth)))
        .send();
    assert_denied(
        &response,
        403,
        "insufficient_scope",
        Some(r#"Bearer realm="tollgate", error="insufficient_scope", scope="rent""#),
    );
}

#[test]
fn every_algorithm_is_accepted_and_every_bad_token_refused() {
    let keys = vec![
        SigningKey::generate(Algorithm::ES256, "ec").unwrap(),
        SigningKey::generate(Algorithm::EdDSA, "ed").unwrap(),
        idp::rsa_key('a', Algorithm::RS256, "rs"),
        idp::rsa_key('b', Algorithm::PS256, "ps"),
    ];
    let idp = Idp::start(keys.clone());
    let stack = Stack::start(&policies(&idp));
    let send = |token: &str| {
        stack
            .get("/v1/me")
            .host("users.example")
            .header("authorization", &format!("Bearer {token}"))
            .send()
    };
    for key in &keys {
        let response = send(&key.sign(None, &claims(&idp)).unwrap());
        assert_eq!(response.status, 200, "{:?}: {}", key.alg, response.text());
        assert_eq!(response.upstream().header_once("x-tollgate-user"), "alice");
    }

    let es = &keys[0];
    let now = idp::now() as u64;
    let with = |patch: Value| {
        let mut c = claims(&idp);
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        es.sign(None, &c).unwrap()
    };
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let good = es.sign(None, &claims(&idp)).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let mut admin = claims(&idp);
    admin["sub"] = json!("admin");
    let rsa_n = mint::jwks([&keys[2]])["keys"][0]["n"]
        .as_str()
        .unwrap()
        .to_owned();
    let cases = [
        (
            "expired",
            with(json!({"exp": now - 60})),
            "user_token_expired",
        ),
        (
            "not yet valid",
            with(json!({"nbf": now + 600})),
            "user_token_invalid",
        ),
        (
            "wrong audience",
            with(json!({"aud": "other-api"})),
            "user_token_invalid",
        ),
        (
            "wrong issuer",
            with(json!({"iss": "https://evil.example"})),
            "user_token_invalid",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": "ec"})),
                b64(&claims(&idp))
            ),
            "user_token_invalid",
        ),
        (
            "algorithm confusion",
            mint::sign_hmac(
                Algorithm::HS256,
                rsa_n.as_bytes(),
                Some("rs"),
                &claims(&idp),
            )
            .unwrap(),
            "user_token_invalid",
        ),
        (
            "unknown kid",
            SigningKey::generate(Algorithm::ES256, "nobody")
                .unwrap()
                .sign(None, &claims(&idp))
                .unwrap(),
            "user_token_invalid",
        ),
        (
            "tampered payload",
            format!("{}.{}.{}", parts[0], b64(&admin), parts[2]),
            "user_token_invalid",
        ),
    ];
    for (what, token, reason) in cases {
        let response = send(&token);
        assert_denied(
            &response,
            401,
            reason,
            Some(r#"Bearer realm="tollgate", error="invalid_token""#),
        );
        let _ = what;
    }
    let response = stack.get("/v1/me").host("users.example").send();
    assert_denied(
        &response,
        401,
        "user_token_missing",
        Some(r#"Bearer realm="tollgate""#),
    );
    assert!(
        !response
            .header("www-authenticate")
            .unwrap()
            .contains("error=")
    );
    assert_eq!(
        stack.upstream.count(),
        keys.len(),
        "no denied request reached the upstream"
    );
}

#[test]
fn rotation_is_picked_up_without_restart() {
    let first = SigningKey::generate(Algorithm::ES256, "first").unwrap();
    let idp = Idp::start(vec![first.clone()]);
    let stack = Stack::start(&policies(&idp));
    let send = |key: &SigningKey, sub: &str| {
        let mut c = claims(&idp);
        c["sub"] = json!(sub);
        stack
            .get("/v1/me")
            .host("users.example")
            .header(
                "authorization",
                &format!("Bearer {}", key.sign(None, &c).unwrap()),
            )
            .send()
    };
    assert_eq!(send(&first, "a").status, 200);
    let second = SigningKey::generate(Algorithm::EdDSA, "second").unwrap();
    idp.rotate(vec![first.clone(), second.clone()]);
    let response = send(&second, "b");
    assert_eq!(
        response.status,
        200,
        "rotated key not picked up: {}",
        response.text()
    );
}

#[test]
fn an_idp_outage_keeps_cached_keys_serving() {
    let first = SigningKey::generate(Algorithm::ES256, "first").unwrap();
    let idp = Idp::start(vec![first.clone()]);
    let stack = Stack::start(&policies(&idp));
    let send = |key: &SigningKey, sub: &str| {
        let mut c = claims(&idp);
        c["sub"] = json!(sub);
        stack
            .get("/v1/me")
            .host("users.example")
            .header(
                "authorization",
                &format!("Bearer {}", key.sign(None, &c).unwrap()),
            )
            .send()
    };
    assert_eq!(send(&first, "a").status, 200);
    // The IdP goes down: fresh tokens signed with known keys still pass.
    idp.set_down(true);
    let response = send(&first, "c");
    assert_eq!(response.status, 200, "{}", response.text());
    // A key tollgate never saw cannot be fetched: 503, not 401.
    let third = SigningKey::generate(Algorithm::ES256, "third").unwrap();
    let response = send(&third, "e");
    assert_denied(&response, 503, "keys_unavailable", None);
}

#[test]
fn app_attestation_and_registration_failures() {
    let idp = Idp::start(vec![]);
    let stack = Stack::start(&policies(&idp));
    let auth = "Bearer some-user-token";
    let send = |key: Option<&str>, token: Option<&str>, authorization: Option<&str>| {
        let mut request = stack.get("/v1/bikes").host("apps.example");
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        if let Some(token) = token {
            request = request.header("approov-token", token);
        }
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        request.send()
    };
    let good = app_token(30.25, Some(auth));
    let response = send(Some(COMMUTER_KEY), Some(&good), Some(auth));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.upstream().header_once("x-tollgate-app"),
        "commuter-ios"
    );

    let forged = {
        let claims = AppClaims {
            exp: idp::now() + 60.0,
            bound_values: vec![auth.into()],
            ..Default::default()
        };
        mint::sign_hmac(Algorithm::HS256, &[1u8; 32], None, &claims.to_json()).unwrap()
    };
    let app_challenge = r#"App realm="tollgate", header="approov-token""#;
    let key_challenge = r#"App realm="tollgate", header="x-api-key""#;
    // (API key, app token, Authorization, status, reason, challenge)
    type Case<'a> = (
        Option<&'a str>,
        Option<String>,
        Option<&'a str>,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            None,
            None,
            Some(auth),
            401,
            "app_credential_missing",
            Some(key_challenge),
        ),
        (
            Some("tg_unregistered_E4yPp1LwRa8sNcUx"),
            Some(good.clone()),
            Some(auth),
            401,
            "app_unknown",
            Some(key_challenge),
        ),
        (
            Some(DISABLED_KEY),
            Some(good.clone()),
            Some(auth),
            403,
            "app_disabled",
            None,
        ),
        (
            Some(SCOOTER_KEY),
            Some(good.clone()),
            Some(auth),
            403,
            "app_not_allowed",
            None,
        ),
        (
            Some(COMMUTER_KEY),
            None,
            Some(auth),
            401,
            "attestation_missing",
            Some(app_challenge),
        ),
        (
            Some(COMMUTER_KEY),
            Some(forged),
            Some(auth),
            401,
            "attestation_invalid",
            Some(app_challenge),
        ),
        (
            Some(COMMUTER_KEY),
            Some(app_token(-1.5, Some(auth))),
            Some(auth),
            401,
            "attestation_expired",
            Some(app_challenge),
        ),
        (
            Some(COMMUTER_KEY),
            Some(app_token(60.0, Some("Bearer stolen"))),
            Some(auth),
            401,
            "token_binding_mismatch",
            Some(app_challenge),
        ),
        (
            Some(COMMUTER_KEY),
            Some(good.clone()),
            None,
            401,
            "token_binding_mismatch",
            Some(app_challenge),
        ),
    ];
    for (key, token, authorization, status, reason, challenge) in cases {
        let response = send(key, token.as_deref(), authorization);
        assert_denied(&response, status, reason, challenge);
    }
    assert_eq!(stack.upstream.count(), 1);
}
