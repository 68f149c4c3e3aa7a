//! Signed requests (RFC 9421) end to end through the real Envoy, which
//! buffers the body for tollgate (`with_request_body`, `pack_as_bytes`,
//! `allow_partial_message: false`):
//!
//! - `hmac-sha256` with the app's `signingKey`, the `keyid` identifying
//!   the app (`identify.signatureKeyId`): a signed POST passes; a tampered
//!   component, a tampered body, a stale `created`, a missing nonce and a
//!   reused nonce are refused;
//! - Approov's message-signing profile: an ECDSA P-256 signature labelled
//!   `install`, verified with the `ipk` of the verified app token; an HMAC
//!   "signature" keyed with that public key is refused; the app token is
//!   single-use (`attestation.singleUse`), so its second use is a replay.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, json};
use support::Stack;
use tollgate::authn::mint::{self, AppClaims};
use tollgate::authn::signature::base::Message;
use tollgate::authn::signature::keys::SigningKey;
use tollgate::authn::signature::{self, SignOptions, digest};
use tollgate::request::Headers;

/// The app's `signingKey` (the Secret holds these bytes).
const SIGNING_SECRET: &str = "commuter-hmac-0123456789abcdefghij";
const ATTESTER: [u8; 32] = [7; 32];
const API_KEY: &str = "tg_install_Zk9TmE4yPp1LwRa8sNcU";

fn policies() -> String {
    let attester = STANDARD.encode(ATTESTER);
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: signed, namespace: e2e }}
spec:
  hosts: [sig.example]
  transport: {{ requireHttps: false }}
  app:
    identify: {{ signatureKeyId: true }}
    signature:
      required: true
      algorithms: [hmac-sha256]
      components: ["@method", "@authority", "@path", content-digest]
      maxAge: 1m
      requireNonce: true
  response: {{ removeCredentials: true }}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: install, namespace: e2e }}
spec:
  hosts: [install.example]
  transport: {{ requireHttps: false }}
  app:
    identify: {{ apiKey: {{ header: x-api-key }} }}
    attestation:
      keys: {{ secretRef: {{ name: attester, key: secret }}, encoding: base64 }}
      singleUse: true
      maxLifetime: 2m
    signature:
      required: true
      components: ["@method", "@authority", "@path"]
      maxAge: 1m
---
apiVersion: v1
kind: Secret
metadata: {{ name: keys, namespace: e2e }}
stringData:
  hmac: "{SIGNING_SECRET}"
  apikey: "{API_KEY}"
---
apiVersion: v1
kind: Secret
metadata: {{ name: attester, namespace: e2e }}
stringData: {{ secret: "{attester}" }}
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: commuter, namespace: e2e }}
spec:
  appId: commuter-ios
  signingKey: {{ secretRef: {{ name: keys, key: hmac }} }}
  apiKey: {{ secretRef: {{ name: keys, key: apikey }} }}
"#
    )
}

fn signing_key() -> SigningKey {
    SigningKey::Hmac(SIGNING_SECRET.as_bytes().to_vec())
}

struct Signed {
    headers: Vec<(String, String)>,
}

/// Signs `method host path` with `body` as a client would.
#[allow(clippy::too_many_arguments)]
fn sign(
    key: &SigningKey,
    label: &str,
    keyid: Option<&str>,
    method: &str,
    host: &str,
    path: &str,
    body: &[u8],
    components: &[&str],
    created_ago: i64,
    nonce: Option<&str>,
) -> Signed {
    let mut headers = Headers::new();
    let mut out = Vec::new();
    if components.contains(&"content-digest") {
        let field = digest::sha256_field(body);
        headers.push("content-digest", field.clone());
        out.push(("content-digest".to_owned(), field));
    }
    let message = Message {
        method,
        scheme: "http",
        authority: host.to_owned(),
        path,
        query: None,
        headers: &headers,
    };
    let components: Vec<String> = components.iter().map(|c| c.to_string()).collect();
    let fields = signature::sign(
        &message,
        &SignOptions {
            label,
            components: &components,
            created: support::idp::now() as i64 - created_ago,
            expires: None,
            nonce,
            keyid,
            include_alg: true,
        },
        key,
    )
    .unwrap();
    out.push(("signature-input".to_owned(), fields.signature_input));
    out.push(("signature".to_owned(), fields.signature));
    Signed { headers: out }
}

const COVER: [&str; 4] = ["@method", "@authority", "@path", "content-digest"];

fn post(stack: &Stack, path: &str, body: &[u8], signed: &Signed) -> support::Response {
    let mut request = stack
        .request("POST", path)
        .host("sig.example")
        .body(body.to_vec());
    for (name, value) in &signed.headers {
        request = request.header(name, value);
    }
    request.send()
}

fn assert_denied(response: &support::Response, reason: &str, detail: &str) {
    assert_eq!(
        (response.status, response.reason()),
        (401, Some(reason)),
        "{:?} {}",
        response.headers,
        response.text()
    );
    let text = response.json()["detail"].as_str().unwrap().to_owned();
    assert!(text.contains(detail), "detail {text:?} lacks {detail:?}");
}

#[test]
fn hmac_signed_requests_identify_the_app_and_are_fresh_and_used_once() {
    let stack = Stack::builder(&policies()).request_body(64 * 1024).start();
    let key = signing_key();
    let body = br#"{"bike": 7}"#;
    let sign_now = |path: &str, body: &[u8], nonce: &str| {
        sign(
            &key,
            "sig1",
            Some("commuter-ios"),
            "POST",
            "sig.example",
            path,
            body,
            &COVER,
            0,
            Some(nonce),
        )
    };

    // A signed request passes; the signature identifies the app and stays
    // behind.
    let signed = sign_now("/v1/rentals", body, "n-1");
    let response = post(&stack, "/v1/rentals", body, &signed);
    assert_eq!(response.status, 200, "{}", response.text());
    let upstream = response.upstream();
    assert_eq!(upstream.header_once("x-tollgate-app"), "commuter-ios");
    assert!(upstream.lacks("signature"));
    assert!(upstream.lacks("signature-input"));
    assert_eq!(
        upstream.body.as_bytes(),
        body,
        "the upstream got the body Envoy buffered"
    );

    // The same signed request again: the nonce was used.
    let response = post(&stack, "/v1/rentals", body, &signed);
    assert_eq!(
        (response.status, response.reason()),
        (401, Some("replay_detected")),
        "{}",
        response.text()
    );

    // A tampered component: signed for one path, sent to another.
    let response = post(
        &stack,
        "/v1/admin",
        body,
        &sign_now("/v1/rentals", body, "n-2"),
    );
    assert_denied(&response, "signature_invalid", "does not verify");
    assert_eq!(
        response.header("www-authenticate"),
        Some(r#"Signature realm="tollgate""#)
    );
    // A tampered body under a covered Content-Digest.
    let response = post(
        &stack,
        "/v1/rentals",
        br#"{"bike": 8}"#,
        &sign_now("/v1/rentals", body, "n-3"),
    );
    assert_denied(&response, "signature_invalid", "Content-Digest");
    // A stale created (maxAge 1m).
    let stale = sign(
        &key,
        "sig1",
        Some("commuter-ios"),
        "POST",
        "sig.example",
        "/v1/rentals",
        body,
        &COVER,
        120,
        Some("n-4"),
    );
    assert_denied(
        &post(&stack, "/v1/rentals", body, &stale),
        "signature_invalid",
        "created",
    );
    // Not covering content-digest, which the policy requires.
    let narrow = sign(
        &key,
        "sig1",
        Some("commuter-ios"),
        "POST",
        "sig.example",
        "/v1/rentals",
        body,
        &["@method", "@authority", "@path"],
        0,
        Some("n-5"),
    );
    assert_denied(
        &post(&stack, "/v1/rentals", body, &narrow),
        "signature_invalid",
        "content-digest",
    );
    // No nonce, which the policy requires.
    let no_nonce = sign(
        &key,
        "sig1",
        Some("commuter-ios"),
        "POST",
        "sig.example",
        "/v1/rentals",
        body,
        &COVER,
        0,
        None,
    );
    assert_denied(
        &post(&stack, "/v1/rentals", body, &no_nonce),
        "signature_invalid",
        "nonce",
    );
    // Another key under the app's keyid.
    let forged = sign(
        &SigningKey::Hmac(vec![9; 32]),
        "sig1",
        Some("commuter-ios"),
        "POST",
        "sig.example",
        "/v1/rentals",
        body,
        &COVER,
        0,
        Some("n-6"),
    );
    assert_denied(
        &post(&stack, "/v1/rentals", body, &forged),
        "signature_invalid",
        "does not verify",
    );
    // Unsigned: nothing identifies the app.
    let response = stack
        .request("POST", "/v1/rentals")
        .host("sig.example")
        .body(body.to_vec())
        .send();
    assert_eq!(response.reason(), Some("app_credential_missing"));
    // A fresh nonce passes again.
    let response = post(
        &stack,
        "/v1/rentals",
        body,
        &sign_now("/v1/rentals", body, "n-7"),
    );
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn install_signatures_verify_with_the_attestation_ipk() {
    let stack = Stack::start(&policies());
    let device = SigningKey::P256(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng));
    let ipk = device.ipk().unwrap();
    let mut extra = Map::new();
    extra.insert("ipk".into(), json!(ipk));
    extra.insert("jti".into(), json!(mint::random_id()));
    let app_token = mint::sign_hmac(
        Algorithm::HS256,
        &ATTESTER,
        None,
        &AppClaims {
            exp: support::idp::now() + 60.0,
            bound_values: vec![],
            device: Some("device-9".into()),
            extra,
        }
        .to_json(),
    )
    .unwrap();
    let send = |key: &SigningKey, path_signed: &str| {
        let signed = sign(
            key,
            "install",
            None,
            "GET",
            "install.example",
            path_signed,
            b"",
            &["@method", "@authority", "@path"],
            0,
            None,
        );
        let mut request = stack
            .get("/v1/bikes")
            .host("install.example")
            .header("x-api-key", API_KEY)
            .header("approov-token", &app_token);
        for (name, value) in &signed.headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let response = send(&device, "/v1/bikes");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.upstream().header_once("x-tollgate-device"),
        "device-9"
    );
    // Signed for another path.
    assert_denied(
        &send(&device, "/v1/other"),
        "signature_invalid",
        "does not verify",
    );
    // Another device's key.
    let other = SigningKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[4; 32]));
    assert_denied(&send(&other, "/v1/bikes"), "signature_invalid", "alg");
    // The public ipk used as an HMAC secret: the key decides the algorithm.
    let confused = SigningKey::Hmac(ipk.into_bytes());
    assert_denied(
        &send(&confused, "/v1/bikes"),
        "signature_invalid",
        "alg hmac-sha256",
    );
    // A single-use policy needs a jti to remember.
    let mut no_jti = Map::new();
    no_jti.insert("ipk".into(), json!(device.ipk().unwrap()));
    let no_jti = mint::sign_hmac(
        Algorithm::HS256,
        &ATTESTER,
        None,
        &AppClaims {
            exp: support::idp::now() + 60.0,
            extra: no_jti,
            ..Default::default()
        }
        .to_json(),
    )
    .unwrap();
    let response = stack
        .get("/v1/bikes")
        .host("install.example")
        .header("x-api-key", API_KEY)
        .header("approov-token", &no_jti)
        .send();
    assert_eq!(
        response.reason(),
        Some("attestation_invalid"),
        "{}",
        response.text()
    );
    // The app token is single-use: a second, validly signed request with
    // it is a replay.
    let response = send(&device, "/v1/bikes");
    assert_eq!(
        (response.status, response.reason()),
        (401, Some("replay_detected")),
        "{}",
        response.text()
    );
}
