//! The security hardening of issue 17 at the decision core, where the
//! behaviour does not cross Envoy or needs what a test Envoy cannot send
//! (several client addresses): `docs/security.md` maps each defence to
//! its test. The end-to-end ones are in `tests/e2e_security.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use support::idp::{compile, outcome, request};
use tollgate::authn::mint;
use tollgate::authn::signature::base::Message;
use tollgate::authn::signature::keys::SigningKey;
use tollgate::authn::signature::{self, SignOptions};
use tollgate::decision::Decision;
use tollgate::pipeline::{self, Deps};
use tollgate::policy::snapshot::Snapshot;
use tollgate::request::{Headers, RequestContext};
use tollgate::store::{MemoryStore, Store};

const HMAC: &str = "commuter-hmac-0123456789abcdefghij";

/// Decides with `store` (kept across calls) and the system clock.
async fn decide(snapshot: &Snapshot, store: &Arc<dyn Store>, request: &RequestContext) -> Decision {
    let deps = Deps {
        store: Arc::clone(store),
        clock: Arc::new(tollgate::clock::SystemClock),
        settings: Default::default(),
    };
    pipeline::decide(snapshot, request, &deps).await
}

/// Item 1: a signature's nonce belongs to the signing key. With neither an
/// app nor a user identified, the request's other keys live under its
/// client address; the nonce does not, so the captured request is a
/// replay from any other address.
#[tokio::test]
async fn a_signature_nonce_is_a_replay_from_any_address() {
    let snapshot = compile(&format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: api, namespace: t }}
spec:
  hosts: [api.example]
  app:
    required: false
    signature: {{ required: true, requireNonce: true }}
---
apiVersion: v1
kind: Secret
metadata: {{ name: keys, namespace: t }}
stringData: {{ hmac: "{HMAC}" }}
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: commuter, namespace: t }}
spec:
  appId: commuter-ios
  signingKey: {{ secretRef: {{ name: keys, key: hmac }} }}
"#
    ));
    let headers = Headers::new();
    let message = Message {
        method: "GET",
        scheme: "https",
        authority: "api.example".into(),
        path: "/v1/bikes",
        query: None,
        headers: &headers,
    };
    let components: Vec<String> = ["@method", "@authority", "@path"]
        .map(String::from)
        .to_vec();
    let fields = signature::sign(
        &message,
        &SignOptions {
            label: "sig1",
            components: &components,
            created: support::idp::now() as i64,
            expires: None,
            nonce: Some("n-1"),
            keyid: Some("commuter-ios"),
            include_alg: true,
        },
        &SigningKey::Hmac(HMAC.as_bytes().to_vec()),
    )
    .unwrap();
    let from = |ip: &str| {
        let mut request = request(
            "api.example",
            "/v1/bikes",
            &[
                ("signature-input", &fields.signature_input),
                ("signature", &fields.signature),
            ],
        );
        request.peer_ip = Some(ip.parse().unwrap());
        request
    };
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let first = decide(&snapshot, &store, &from("192.0.2.1")).await;
    assert_eq!(outcome(&first), "allow");
    for ip in ["192.0.2.1", "198.51.100.7", "2001:db8::1"] {
        let again = decide(&snapshot, &store, &from(ip)).await;
        assert_eq!(outcome(&again), "replay_detected", "from {ip}");
    }
}

/// An HS256 app token from the attestation service with `claims`.
fn app_token(claims: serde_json::Value) -> String {
    let mut body = serde_json::json!({ "exp": support::idp::now() + 60.0 });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), claims.as_object()) {
        body.extend(extra.clone());
    }
    mint::sign_hmac(jsonwebtoken::Algorithm::HS256, &ATTESTER, None, &body).unwrap()
}

const ATTESTER: [u8; 32] = [7; 32];
const API_KEY: &str = "tg_commuter_7Hq2Xv0Zk9TmE4yPp1LwRa8s";

/// The attestation secret, an app with an API key, and `spec.app` as given.
fn app_policy(app: &str, extra: &str) -> Snapshot {
    use base64::Engine;
    let secret = base64::engine::general_purpose::STANDARD.encode(ATTESTER);
    compile(&format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: api, namespace: t }}
spec:
  hosts: [api.example]
{app}
---
apiVersion: v1
kind: Secret
metadata: {{ name: keys, namespace: t }}
stringData: {{ attester: "{secret}", apikey: "{API_KEY}" }}
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: commuter, namespace: t }}
spec:
  appId: commuter-ios
  apiKey: {{ secretRef: {{ name: keys, key: apikey }} }}
{extra}"#
    ))
}

/// Item 6: a configured `tokenClaim` names the app in every verified app
/// token. A token without it, or with a non-string value, is
/// `attestation_invalid`: it cannot vouch for the app the API key names.
#[tokio::test]
async fn a_token_claim_that_is_missing_or_not_a_string_is_refused() {
    let snapshot = app_policy(
        r#"  app:
    identify: { apiKey: { header: x-api-key }, tokenClaim: app_id }
    attestation:
      keys: { secretRef: { name: keys, key: attester }, encoding: base64 }"#,
        "",
    );
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let send = |claims: serde_json::Value| {
        let token = app_token(claims);
        let request = request(
            "api.example",
            "/v1/bikes",
            &[("x-api-key", API_KEY), ("approov-token", &token)],
        );
        let store = Arc::clone(&store);
        let snapshot = &snapshot;
        async move { outcome(&decide(snapshot, &store, &request).await) }
    };
    assert_eq!(
        send(serde_json::json!({ "app_id": "commuter-ios" })).await,
        "allow"
    );
    assert_eq!(send(serde_json::json!({})).await, "attestation_invalid");
    assert_eq!(
        send(serde_json::json!({ "app_id": 7 })).await,
        "attestation_invalid"
    );
    assert_eq!(
        send(serde_json::json!({ "app_id": null })).await,
        "attestation_invalid"
    );
    assert_eq!(
        send(serde_json::json!({ "app_id": "other-app" })).await,
        "app_unknown"
    );
}

/// Item 6: a key set is fetched again at least every `maxCacheAge` (one
/// hour by default), so a key the IdP removed stops verifying within it;
/// the IdP's `Cache-Control: max-age` may shorten that, never lengthen it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_caching_is_capped_whatever_the_idp_says() {
    use std::time::Duration;
    use tollgate::authn::keys::{DEFAULT_MAX_CACHE_AGE, RemoteSource, check_url, remote_keys};

    let key = mint::SigningKey::generate(jsonwebtoken::Algorithm::ES256, "k1").unwrap();
    let idp = support::idp::Idp::start(vec![key]);
    let fetched_with = |cache_control: &'static str, cap: Duration| {
        idp.set_cache_control(Some(cache_control));
        let uri = check_url(&idp.jwks_uri()).unwrap();
        let keys = remote_keys(RemoteSource::Jwks { uri }, cap);
        async move {
            assert!(keys.refresh().await, "the JWKS is fetched");
            keys.refresh_interval()
        }
    };
    let hour = DEFAULT_MAX_CACHE_AGE;
    assert_eq!(hour, Duration::from_secs(3600));
    assert_eq!(
        fetched_with("public, max-age=86400", hour).await,
        Some(hour)
    );
    assert_eq!(
        fetched_with("max-age=600", hour).await,
        Some(Duration::from_secs(600))
    );
    let half = Duration::from_secs(1800);
    assert_eq!(fetched_with("max-age=86400", half).await, Some(half));

    // The policy field, and its bounds.
    let with = |jwks: &str| {
        support::idp::try_compile(&format!(
            r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: api, namespace: t }}
spec:
  user:
    issuers:
      - issuer: "{}"
        audiences: [api]
        jwks: {jwks}
        algorithms: [ES256]
"#,
            idp.issuer()
        ))
    };
    let uri = idp.jwks_uri();
    assert!(with(&format!(r#"{{ uri: "{uri}", maxCacheAge: 10m }}"#)).is_ok());
    for (jwks, expected) in [
        (
            format!(r#"{{ uri: "{uri}", maxCacheAge: 2d }}"#),
            "maxCacheAge",
        ),
        (
            format!(r#"{{ uri: "{uri}", maxCacheAge: 30s }}"#),
            "maxCacheAge",
        ),
        (
            r#"{ inline: { keys: [] }, maxCacheAge: 10m }"#.to_owned(),
            "only applies to discovery and uri",
        ),
    ] {
        let err = with(&jwks).unwrap_err();
        assert!(err.contains(expected), "{jwks}: {err}");
    }
}

/// Item 6: an app token policy may require an audience (`aud`) and a
/// `typ` header, so a token the attester minted for another API, or a
/// token of another kind signed with the same key, is refused.
#[tokio::test]
async fn app_tokens_may_require_an_audience_and_a_type() {
    let snapshot = app_policy(
        r#"  app:
    identify: { apiKey: { header: x-api-key } }
    attestation:
      keys: { secretRef: { name: keys, key: attester }, encoding: base64 }
      audiences: [bikes-api]
      typ: approov+jwt"#,
        "",
    );
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let send = |typ: Option<&str>, claims: serde_json::Value| {
        let mut body = serde_json::json!({ "exp": support::idp::now() + 60.0 });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), claims.as_object()) {
            body.extend(extra.clone());
        }
        let mut header = serde_json::json!({ "alg": "HS256" });
        if let (Some(header), Some(typ)) = (header.as_object_mut(), typ) {
            header.insert("typ".into(), typ.into());
        }
        let token = mint::sign_with(
            &header,
            &body,
            &jsonwebtoken::EncodingKey::from_secret(&ATTESTER),
            jsonwebtoken::Algorithm::HS256,
        )
        .unwrap();
        let request = request(
            "api.example",
            "/v1/bikes",
            &[("x-api-key", API_KEY), ("approov-token", &token)],
        );
        let store = Arc::clone(&store);
        let snapshot = &snapshot;
        async move { outcome(&decide(snapshot, &store, &request).await) }
    };
    let ours = serde_json::json!({ "aud": "bikes-api" });
    assert_eq!(send(Some("approov+jwt"), ours.clone()).await, "allow");
    assert_eq!(
        send(Some("APPLICATION/Approov+JWT"), ours.clone()).await,
        "allow"
    );
    let listed = serde_json::json!({ "aud": ["other", "bikes-api"] });
    assert_eq!(send(Some("approov+jwt"), listed).await, "allow");
    let other = serde_json::json!({ "aud": "other-api" });
    assert_eq!(
        send(Some("approov+jwt"), other).await,
        "attestation_invalid"
    );
    assert_eq!(
        send(Some("approov+jwt"), serde_json::json!({})).await,
        "attestation_invalid"
    );
    assert_eq!(send(Some("JWT"), ours.clone()).await, "attestation_invalid");
    assert_eq!(send(None, ours).await, "attestation_invalid");
}

/// Item 6: durations and counts an operator writes are bounded when the
/// policy loads — the policy is refused naming the field — so none can
/// overflow later arithmetic or panic (a single-use app token's window was
/// `maxLifetime + leeway` as an `f64` turned into a `Duration`).
#[test]
fn operator_values_are_bounded_at_load() {
    let cases = [
        (
            r#"  app:
    identify: { apiKey: { header: x-api-key } }
    attestation:
      keys: { secretRef: { name: keys, key: attester }, encoding: base64 }
      singleUse: true
      maxLifetime: 18446744073709551615s
      leeway: 18446744073709551615s"#,
            "longer than ten years",
        ),
        (
            r#"  app:
    identify: { apiKey: { header: x-api-key } }
    attestation:
      keys: { secretRef: { name: keys, key: attester }, encoding: base64 }
      singleUse: true
      maxLifetime: 100d"#,
            "spec.app.attestation.maxLifetime: must be between 1s and 12h",
        ),
        (
            r#"  app:
    identify: { apiKey: { header: x-api-key } }
    attestation:
      keys: { secretRef: { name: keys, key: attester }, encoding: base64 }
      leeway: 1d"#,
            "spec.app.attestation.leeway: must be between 0ms and 10m",
        ),
        (
            r#"  app:
    identify: { apiKey: { header: x-api-key } }
    signature: { maxAge: 3000d }"#,
            "spec.app.signature.maxAge: must be between 1s and 1h",
        ),
        (
            r#"  user:
    issuers:
      - issuer: https://id.example/
        audiences: [api]
        jwks: { uri: "https://id.example/jwks" }
        algorithms: [ES256]
        leeway: 2h"#,
            "spec.user.issuers[0].leeway: must be between 0ms and 10m",
        ),
        (
            "  replay: { window: 365d }",
            "spec.replay.window: must be between 1s and 1d",
        ),
        (
            r#"  defaultPlan: p
  plans:
    - name: p
      limits: [{ name: q, quota: { requests: 18446744073709551615, reset: day } }]"#,
            "spec.plans[0].limits[0].quota.requests: at most 2^53",
        ),
        (
            r#"  defaultPlan: p
  plans:
    - name: p
      limits: [{ name: r, rate: { requests: 1, period: 3650d, burst: 18446744073709551615 } }]"#,
            "spec.plans[0].limits[0].rate.burst",
        ),
    ];
    for (spec, expected) in cases {
        let yaml = format!(
            r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: api, namespace: t }}
spec:
  hosts: [api.example]
{spec}
---
apiVersion: v1
kind: Secret
metadata: {{ name: keys, namespace: t }}
stringData: {{ attester: "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=" }}
"#
        );
        let loaded = std::panic::catch_unwind(|| support::idp::try_compile(&yaml));
        let Ok(result) = loaded else {
            panic!("loading panicked: {spec}");
        };
        let err = result.expect_err(spec);
        // The error names the field and says the range.
        let (field, message) = expected.split_once(": ").unwrap_or(("", expected));
        assert!(
            err.contains(field) && err.contains(message),
            "{spec}\n{err}"
        );
    }
}
