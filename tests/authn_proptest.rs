//! Property tests: arbitrary bytes and arbitrary JWT-shaped strings fed to
//! every token parser (user access tokens, app attestation tokens, API
//! keys, certificates) never panic and always deny.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use proptest::prelude::*;
use support::idp::{compile, decide, request};
use tollgate::authn::{certificate, jwt};
use tollgate::policy::snapshot::Snapshot;

const SECRET_B64: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// User tokens from an inline JWKS (no network), HS256 app tokens, API keys.
fn snapshot() -> Snapshot {
    let jwk = tollgate::authn::mint::SigningKey::generate(jsonwebtoken::Algorithm::ES256, "k1")
        .unwrap()
        .public_jwk();
    compile(&format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: api, namespace: p }}
spec:
  hosts: [api.example]
  user:
    issuers:
      - issuer: https://id.example
        audiences: [api]
        jwks: {{ inline: {{ keys: [{jwk}] }} }}
        algorithms: [ES256, RS256, EdDSA]
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: app, namespace: p }}
spec:
  hosts: [app.example]
  app:
    identify:
      apiKey: {{ header: x-api-key }}
      tokenClaim: app_id
    attestation:
      keys: {{ secretRef: {{ name: att, key: s }}, encoding: base64 }}
      binding: {{ headers: [authorization] }}
---
apiVersion: v1
kind: Secret
metadata: {{ name: att, namespace: p }}
stringData: {{ s: "{SECRET_B64}" }}
"#
    ))
}

/// A header-value-safe rendering of arbitrary bytes.
fn header_safe(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| char::from(*b))
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect()
}

/// JWT-shaped strings: three base64url segments of JSON-ish or random
/// content, sometimes with hostile header values.
fn jwt_shaped() -> impl Strategy<Value = String> {
    let json_ish = prop_oneof![
        any::<Vec<u8>>(),
        Just(br#"{"alg":"none"}"#.to_vec()),
        Just(br#"{"alg":"HS256","kid":"k1"}"#.to_vec()),
        Just(br#"{"alg":"ES256","kid":"k1","crit":["x"]}"#.to_vec()),
        Just(br#"{"iss":"https://id.example","aud":"api","sub":"a","exp":1e300}"#.to_vec()),
        Just(
            br#"{"iss":"https://id.example","aud":"api","sub":"a","exp":4708683205.891912}"#
                .to_vec()
        ),
        "[a-z{}:,\"0-9. ]{0,64}".prop_map(String::into_bytes),
    ];
    (json_ish.clone(), json_ish, any::<Vec<u8>>()).prop_map(|(h, p, s)| {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(h),
            URL_SAFE_NO_PAD.encode(p),
            URL_SAFE_NO_PAD.encode(s)
        )
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parsers_never_panic_on_bytes(bytes in any::<Vec<u8>>()) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = jwt::parse(&text);
        let _ = certificate::thumbprint(&text);
        let _ = tollgate::authn::api_key::load(&bytes);
        let _ = tollgate::authn::api_key::estimate_entropy_bits(&text);
        let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----", STANDARD.encode(&bytes));
        let _ = certificate::thumbprint(&pem);
    }

    #[test]
    fn arbitrary_user_tokens_are_denied(token in prop_oneof![jwt_shaped(), any::<Vec<u8>>().prop_map(|b| header_safe(&b))]) {
        let snapshot = snapshot();
        let auth = format!("Bearer {token}");
        let decision = runtime().block_on(decide(&snapshot, &request("api.example", "/x", &[("authorization", &auth)])));
        prop_assert!(!decision.is_allow());
    }

    #[test]
    fn arbitrary_app_tokens_are_denied(token in prop_oneof![jwt_shaped(), any::<Vec<u8>>().prop_map(|b| header_safe(&b))],
                                       key in "[ -~]{0,64}") {
        let snapshot = snapshot();
        let decision = runtime().block_on(decide(&snapshot, &request(
            "app.example",
            "/x",
            &[("approov-token", token.as_str()), ("x-api-key", key.as_str())],
        )));
        prop_assert!(!decision.is_allow());
    }
}
