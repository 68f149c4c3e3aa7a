//! App identification and attestation through the decision core (no
//! Envoy): API keys, client certificates, the attestation token's app id
//! claim, Approov-style tokens with fractional `exp` and the `pay` binding,
//! registration checks (disabled, not allowed), challenges, hidden reasons
//! and credential stripping.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, json};
use sha2::Digest;
use support::idp::{self, compile, decide, outcome, request, try_compile};
use tollgate::authn::mint::{self, AppClaims};
use tollgate::decision::{ChallengeParams, Verdict};
use tollgate::policy::snapshot::Snapshot;

const HOST: &str = "bikes.example";
const SECRET: [u8; 32] = [7; 32];
const COMMUTER_KEY: &str = "tg_7Hq2Xv0Zk9TmE4yPp1LwRa8sNcU";
const DISABLED_KEY: &str = "tg_disabled_Q2Xv0Zk9TmE4yPp1LwR";
const SCOOTER_KEY: &str = "tg_scooter_8Zk9TmE4yPp1LwRa8sN";
const FOREIGN_KEY: &str = "tg_foreign_Zk9TmE4yPp1LwRa8sNc";
const CERT_DER: &[u8] = b"commuter client certificate";

fn pem(der: &[u8]) -> String {
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        STANDARD.encode(der)
    )
}

fn policies(app_section: &str, disclose: bool) -> String {
    let fingerprint = tollgate::authn::certificate::hex(sha2::Sha256::digest(CERT_DER));
    let secret_b64 = STANDARD.encode(SECRET);
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: bikes, namespace: m }}
spec:
  hosts: [{HOST}]
  defaultPlan: free
  plans: [{{ name: free }}, {{ name: gold }}]
  app:
{app_section}
  response:
    discloseReasons: {disclose}
    upstreamHeaders:
      x-app: "{{app.id}}"
---
apiVersion: v1
kind: Secret
metadata: {{ name: attester, namespace: m }}
stringData:
  secret: "{secret_b64}"
---
apiVersion: v1
kind: Secret
metadata: {{ name: keys, namespace: m }}
stringData:
  commuter: "{COMMUTER_KEY}"
  disabled: "{DISABLED_KEY}"
  scooter: "{SCOOTER_KEY}"
---
apiVersion: v1
kind: Secret
metadata: {{ name: keys, namespace: other }}
stringData:
  foreign: "{FOREIGN_KEY}"
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: commuter, namespace: m }}
spec:
  appId: commuter-ios
  plan: gold
  policies: [bikes]
  apiKey: {{ secretRef: {{ name: keys, key: commuter }} }}
  clientCertificate:
    spiffeIds: ["spiffe://example.org/ns/m/sa/commuter"]
    sha256Fingerprints: ["{fingerprint}"]
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: old, namespace: m }}
spec:
  appId: old-android
  disabled: true
  apiKey: {{ secretRef: {{ name: keys, key: disabled }} }}
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: scooter, namespace: m }}
spec:
  appId: scooter-web
  policies: [scooters]
  apiKey: {{ secretRef: {{ name: keys, key: scooter }} }}
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: foreign, namespace: other }}
spec:
  appId: foreign
  apiKey: {{ secretRef: {{ name: keys, key: foreign }} }}
"#
    )
}

const ATTESTED: &str = r#"    identify:
      apiKey: { header: x-api-key }
    attestation:
      keys: { secretRef: { name: attester, key: secret }, encoding: base64 }
      maxLifetime: 10m
      binding: { claim: pay, headers: [authorization] }"#;

/// [`ATTESTED`] with the app named by the token's `app_id` claim as well.
const TOKEN_CLAIM: &str = r#"    identify:
      apiKey: { header: x-api-key }
      tokenClaim: app_id
    attestation:
      keys: { secretRef: { name: attester, key: secret }, encoding: base64 }
      maxLifetime: 10m
      binding: { claim: pay, headers: [authorization] }"#;

fn snapshot() -> Snapshot {
    compile(&policies(ATTESTED, true))
}

fn app_token(exp_in: f64, bound: Option<&str>, extra: serde_json::Value) -> String {
    let claims = AppClaims {
        exp: idp::now() + exp_in,
        bound_values: bound.map(|b| vec![b.to_owned()]).unwrap_or_default(),
        device: Some("device-42".into()),
        extra: extra.as_object().cloned().unwrap_or_else(Map::new),
    };
    mint::sign_hmac(Algorithm::HS256, &SECRET, None, &claims.to_json()).unwrap()
}

const AUTH: &str = "Bearer user-token-1";

async fn run(snapshot: &Snapshot, headers: &[(&str, &str)]) -> tollgate::decision::Decision {
    decide(snapshot, &request(HOST, "/v1/bikes", headers)).await
}

#[tokio::test]
async fn registered_app_with_a_bound_attestation_passes() {
    let s = snapshot();
    let token = app_token(60.891912, Some(AUTH), json!({}));
    let d = run(
        &s,
        &[
            ("x-api-key", COMMUTER_KEY),
            ("approov-token", &token),
            ("authorization", AUTH),
        ],
    )
    .await;
    let Verdict::Allow(allow) = &d.verdict else {
        panic!("denied: {:?}", d.denial())
    };
    assert_eq!(d.identity.app.as_deref(), Some("commuter-ios"));
    assert_eq!(d.identity.plan.as_deref(), Some("gold"));
    assert_eq!(d.identity.device.as_deref(), Some("device-42"));
    let set: Vec<&str> = allow.set_upstream.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        set.contains(&"x-tollgate-device") && set.contains(&"x-app"),
        "{set:?}"
    );
    // removeCredentials (the default) strips the API key and the app token.
    assert!(allow.remove_upstream.contains(&"x-api-key".to_owned()));
    assert!(allow.remove_upstream.contains(&"approov-token".to_owned()));
    assert!(!allow.remove_upstream.contains(&"authorization".to_owned()));
    // Only headers the request carries are listed (no DPoP proof was sent).
    assert!(
        !allow.remove_upstream.contains(&"dpop".to_owned()),
        "{:?}",
        allow.remove_upstream
    );
    assert!(
        !allow
            .remove_upstream
            .contains(&"x-tollgate-user".to_owned())
    );
}

#[tokio::test]
async fn identification_failures() {
    let s = snapshot();
    let token = app_token(60.0, Some(AUTH), json!({}));
    let with_key = |key: &'static str| {
        vec![
            ("x-api-key", key),
            ("approov-token", token.as_str()),
            ("authorization", AUTH),
        ]
    };
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("authorization", AUTH)], "app_credential_missing"),
        (with_key("tg_not_registered_9TmE4yPp1LwRa8"), "app_unknown"),
        (with_key(DISABLED_KEY), "app_disabled"),
        (with_key(SCOOTER_KEY), "app_not_allowed"),
        (with_key(FOREIGN_KEY), "app_not_allowed"),
        (
            vec![("x-api-key", COMMUTER_KEY), ("authorization", AUTH)],
            "attestation_missing",
        ),
    ];
    for (headers, expected) in cases {
        let d = run(&s, &headers).await;
        assert_eq!(outcome(&d), expected, "{headers:?}");
    }
}

#[tokio::test]
async fn app_failures_use_the_app_challenge_naming_the_header() {
    let s = snapshot();
    let d = run(&s, &[("authorization", AUTH)]).await;
    let headers = d
        .denial()
        .unwrap()
        .response_headers(&ChallengeParams::default());
    let challenges: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "www-authenticate")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(challenges, [r#"App realm="tollgate", header="x-api-key""#]);
    let d = run(&s, &[("x-api-key", COMMUTER_KEY), ("authorization", AUTH)]).await;
    let headers = d
        .denial()
        .unwrap()
        .response_headers(&ChallengeParams::default());
    assert!(headers.contains(&(
        "www-authenticate".into(),
        r#"App realm="tollgate", header="approov-token""#.into()
    )));
    assert!(!headers.iter().any(|(_, v)| v.contains("Bearer")));
}

#[tokio::test]
async fn attestation_failures() {
    let s = snapshot();
    let forged = {
        let claims = AppClaims {
            exp: idp::now() + 60.0,
            bound_values: vec![AUTH.into()],
            ..Default::default()
        };
        mint::sign_hmac(Algorithm::HS256, &[9u8; 32], None, &claims.to_json()).unwrap()
    };
    let no_pay = app_token(60.0, None, json!({}));
    let cases = [
        (
            app_token(-1.5, Some(AUTH), json!({})),
            Some(AUTH),
            "attestation_expired",
        ),
        (
            app_token(3600.0, Some(AUTH), json!({})),
            Some(AUTH),
            "attestation_invalid",
        ),
        (forged, Some(AUTH), "attestation_invalid"),
        ("not-a-jwt".to_owned(), Some(AUTH), "attestation_invalid"),
        (
            app_token(60.0, Some("Bearer someone-else"), json!({})),
            Some(AUTH),
            "token_binding_mismatch",
        ),
        (
            app_token(60.0, Some(AUTH), json!({})),
            None,
            "token_binding_mismatch",
        ),
        // pay must not match the hash of an absent header.
        (
            app_token(60.0, Some(""), json!({})),
            None,
            "token_binding_mismatch",
        ),
        (no_pay, Some(AUTH), "token_binding_mismatch"),
        // Fractional exp, Approov style.
        (app_token(0.75, Some(AUTH), json!({})), Some(AUTH), "allow"),
    ];
    for (token, auth, expected) in cases {
        let mut headers = vec![
            ("x-api-key", COMMUTER_KEY),
            ("approov-token", token.as_str()),
        ];
        if let Some(auth) = auth {
            headers.push(("authorization", auth));
        }
        assert_eq!(
            outcome(&run(&s, &headers).await),
            expected,
            "{token} {auth:?}"
        );
    }
}

/// A verified attestation token is cached (its signature is checked once),
/// but its time claims and its binding are checked on every request: a
/// cached token presented with another `Authorization`, without one, or
/// after it expired is refused with the same reason as a fresh one.
#[tokio::test]
async fn cached_attestation_tokens_are_still_checked_on_every_request() {
    use std::sync::Arc;
    use std::time::Duration;
    use tollgate::clock::ManualClock;

    let s = snapshot();
    let start = Duration::from_secs_f64(idp::now());
    let clock = Arc::new(ManualClock::new(start));
    let deps = tollgate::pipeline::Deps {
        store: Arc::new(tollgate::store::MemoryStore::new()),
        clock: clock.clone(),
        settings: Default::default(),
    };
    let token = app_token(30.0, Some(AUTH), json!({}));
    let decide_with = |auth: Option<&'static str>| {
        let mut headers = vec![
            ("x-api-key", COMMUTER_KEY),
            ("approov-token", token.as_str()),
        ];
        if let Some(auth) = auth {
            headers.push(("authorization", auth));
        }
        request(HOST, "/v1/bikes", &headers)
    };
    let outcome_of =
        async |auth| outcome(&tollgate::pipeline::decide(&s, &decide_with(auth), &deps).await);
    assert_eq!(outcome_of(Some(AUTH)).await, "allow");
    assert_eq!(
        outcome_of(Some(AUTH)).await,
        "allow",
        "served from the cache"
    );
    assert_eq!(
        outcome_of(Some("Bearer someone-else")).await,
        "token_binding_mismatch"
    );
    assert_eq!(outcome_of(None).await, "token_binding_mismatch");
    assert_eq!(outcome_of(Some(AUTH)).await, "allow");
    clock.advance(Duration::from_secs(31));
    assert_eq!(outcome_of(Some(AUTH)).await, "attestation_expired");

    // A new snapshot (a rotated secret) starts with an empty cache: the
    // token signed with the old secret no longer verifies.
    let rotated = compile(
        &policies(ATTESTED, true).replace(&STANDARD.encode(SECRET), &STANDARD.encode([8u8; 32])),
    );
    clock.set(start);
    let d = tollgate::pipeline::decide(&rotated, &decide_with(Some(AUTH)), &deps).await;
    assert_eq!(outcome(&d), "attestation_invalid");
}

/// With a user policy too, the binding to `authorization` compares with the
/// user stage's hash of that header: a cached app token bound to one valid
/// user token and sent with another valid user token is refused like an
/// uncached one, whichever of the two tokens was cached first.
#[tokio::test]
async fn a_cached_app_token_stays_bound_to_its_user_token() {
    const USER_SECRET: [u8; 32] = [9; 32];
    let yaml = policies(ATTESTED, true).replace(
        "  app:\n",
        "  user:\n    issuers:\n      - issuer: https://id.example\n        audiences: [bikes]\n        jwks: { secretRef: { name: user-hs, key: key } }\n        algorithms: [HS256]\n  app:\n",
    ) + &format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{ name: user-hs, namespace: m }}\ndata: {{ key: \"{}\" }}\n",
        STANDARD.encode(USER_SECRET)
    );
    let user_token = |sub: &str| {
        let now = idp::now() as u64;
        let claims =
            json!({"iss": "https://id.example", "aud": "bikes", "sub": sub, "exp": now + 300});
        format!(
            "Bearer {}",
            mint::sign_hmac(Algorithm::HS256, &USER_SECRET, None, &claims).unwrap()
        )
    };
    let (alice, bob) = (user_token("alice"), user_token("bob"));
    let token = app_token(30.0, Some(&alice), json!({}));
    let with = |auth: &str| {
        vec![
            ("x-api-key", COMMUTER_KEY),
            ("approov-token", token.as_str()),
            ("authorization", auth),
        ]
        .into_iter()
        .map(|(n, v)| (n, v.to_owned()))
        .collect::<Vec<_>>()
    };
    let outcome_of = async |s: &Snapshot, auth: &str| {
        let headers = with(auth);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        outcome(&run(s, &headers).await)
    };

    // The bound user token first: both tokens cached, then the other.
    let s = compile(&yaml);
    assert_eq!(outcome_of(&s, &alice).await, "allow");
    assert_eq!(outcome_of(&s, &alice).await, "allow", "both cached");
    assert_eq!(outcome_of(&s, &bob).await, "token_binding_mismatch");
    assert_eq!(
        outcome_of(&s, &bob).await,
        "token_binding_mismatch",
        "bob's token cached too"
    );
    assert_eq!(outcome_of(&s, &alice).await, "allow");

    // The other user token first, on a fresh snapshot (nothing cached).
    let s = compile(&yaml);
    assert_eq!(outcome_of(&s, &bob).await, "token_binding_mismatch");
    assert_eq!(outcome_of(&s, &alice).await, "allow");
    assert_eq!(outcome_of(&s, &bob).await, "token_binding_mismatch");
}

#[tokio::test]
async fn the_token_claim_identifies_the_app_and_must_agree() {
    let s = compile(&policies(TOKEN_CLAIM, true));
    let token = app_token(60.0, Some(AUTH), json!({"app_id": "commuter-ios"}));
    let d = run(&s, &[("approov-token", &token), ("authorization", AUTH)]).await;
    assert_eq!(outcome(&d), "allow");
    assert_eq!(d.identity.app.as_deref(), Some("commuter-ios"));
    let d = run(
        &s,
        &[
            ("x-api-key", COMMUTER_KEY),
            ("approov-token", &token),
            ("authorization", AUTH),
        ],
    )
    .await;
    assert_eq!(outcome(&d), "allow");
    let other = app_token(60.0, Some(AUTH), json!({"app_id": "old-android"}));
    let d = run(
        &s,
        &[
            ("x-api-key", COMMUTER_KEY),
            ("approov-token", &other),
            ("authorization", AUTH),
        ],
    )
    .await;
    assert_eq!(outcome(&d), "attestation_invalid");
    let unknown = app_token(60.0, Some(AUTH), json!({"app_id": "nobody"}));
    let d = run(&s, &[("approov-token", &unknown), ("authorization", AUTH)]).await;
    assert_eq!(outcome(&d), "app_unknown");
    // A token without the claim cannot vouch for the key's app.
    let unnamed = app_token(60.0, Some(AUTH), json!({}));
    let d = run(
        &s,
        &[
            ("x-api-key", COMMUTER_KEY),
            ("approov-token", &unnamed),
            ("authorization", AUTH),
        ],
    )
    .await;
    assert_eq!(outcome(&d), "attestation_invalid");
}

#[tokio::test]
async fn precise_attestation_reasons_can_be_hidden() {
    let s = compile(&policies(ATTESTED, false));
    let token = app_token(60.0, Some("Bearer other"), json!({}));
    let d = run(
        &s,
        &[
            ("x-api-key", COMMUTER_KEY),
            ("approov-token", &token),
            ("authorization", AUTH),
        ],
    )
    .await;
    let deny = d.denial().unwrap();
    assert_eq!(deny.reason.code(), "token_binding_mismatch", "logs keep it");
    assert_eq!(deny.public_reason().code(), "attestation_invalid");
    assert!(!deny.problem_json().contains("pay"));
}

#[tokio::test]
async fn client_certificates_identify_apps() {
    let section = r#"    identify:
      clientCertificate: true"#;
    let s = compile(&policies(section, true));
    let by = |principal: Option<&str>, der: Option<&[u8]>| {
        let mut r = request(HOST, "/v1/bikes", &[]);
        r.peer_principal = principal.map(str::to_owned);
        r.peer_certificate = der.map(pem);
        r
    };
    let d = decide(
        &s,
        &by(
            Some("spiffe://example.org/ns/m/sa/commuter"),
            Some(b"other der"),
        ),
    )
    .await;
    assert_eq!(
        d.identity.app.as_deref(),
        Some("commuter-ios"),
        "{:?}",
        d.denial()
    );
    let d = decide(&s, &by(Some("CN=whatever"), Some(CERT_DER))).await;
    assert_eq!(
        d.identity.app.as_deref(),
        Some("commuter-ios"),
        "{:?}",
        d.denial()
    );
    let d = decide(
        &s,
        &by(Some("spiffe://example.org/ns/m/sa/stranger"), Some(b"x")),
    )
    .await;
    assert_eq!(outcome(&d), "app_unknown");
    let d = decide(&s, &by(None, None)).await;
    assert_eq!(outcome(&d), "app_credential_missing");
}

#[tokio::test]
async fn api_keys_need_entropy_unless_given_as_digests() {
    let weak = policies(ATTESTED, true).replace(COMMUTER_KEY, "password123");
    let err = try_compile(&weak).unwrap_err();
    assert!(err.contains("entropy") && err.contains("apiKey"), "{err}");
    assert!(
        !err.contains("password123"),
        "the key must never be echoed: {err}"
    );
    // An operator-computed digest is accepted and matches the plain key.
    let digest = tollgate::authn::certificate::hex(sha2::Sha256::digest(COMMUTER_KEY.as_bytes()));
    let s = compile(&policies(ATTESTED, true).replace(
        &format!("commuter: \"{COMMUTER_KEY}\""),
        &format!("commuter: \"sha256:{digest}\""),
    ));
    let token = app_token(60.0, Some(AUTH), json!({}));
    let d = run(
        &s,
        &[
            ("x-api-key", COMMUTER_KEY),
            ("approov-token", &token),
            ("authorization", AUTH),
        ],
    )
    .await;
    assert_eq!(outcome(&d), "allow");
}

#[tokio::test]
async fn app_sections_refuse_unsafe_settings() {
    for (section, expected) in [
        (
            "    attestation:\n      keys: { inline: { keys: [] } }\n      algorithms: [HS256]\n    required: false",
            "attestation.keys",
        ),
        (
            "    identify:\n      tokenClaim: app_id",
            "needs attestation",
        ),
        ("    identify: {}", "at least one of"),
        (
            "    identify:\n      apiKey: { header: x-api-key }\n    attestation:\n      keys: { secretRef: { name: attester, key: secret }, encoding: base64 }\n      algorithms: [none]",
            "none is never accepted",
        ),
    ] {
        let err = try_compile(&policies(section, true)).unwrap_err();
        assert!(err.contains(expected), "{section}: {err}");
    }
}
