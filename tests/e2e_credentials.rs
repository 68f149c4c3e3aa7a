//! No credential in tollgate's logs, spans or metrics, and no forged line.
//!
//! Every end-to-end test is already checked when its `Tollgate` handle
//! drops (`support::credentials`: the credentials it sent and the secrets
//! of its policy files must not appear in tollgate's output). This test
//! makes that check as hard as it gets: every credential kind of a user +
//! app policy, valid, tampered, expired and malformed, with tollgate at
//! `debug` level, an audit line for every allow as well as every denial,
//! traces exported for every Check — then it scans the logs, every span
//! attribute and `/metrics`. It also sends a token whose subject carries a
//! line break and a bidirectional override, and checks the audit line
//! escapes them in JSON and in text logs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value, json};
use support::credentials;
use support::idp::{self, Idp};
use support::otlp::OtlpReceiver;
use support::tollgate::{log_field, log_message};
use support::{Stack, Tollgate};
use tollgate::authn::mint::{self, AppClaims, SigningKey};

const SECRET: [u8; 32] = [42; 32];
const API_KEY: &str = "tg_live_Zq81LmC4vR7xK2pW9sT0aYbN";
const OTHER_KEY: &str = "tg_live_unregistered_7c1f0a9e33";

fn policy(idp: &Idp) -> String {
    let issuer = idp.issuer();
    let jwks = idp.jwks_uri();
    let secret = STANDARD.encode(SECRET);
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: vault, namespace: e2e }}
spec:
  hosts: [vault.example]
  transport: {{ requireHttps: false }}
  defaultPlan: free
  plans:
    - name: free
      limits: [{{ name: hourly, key: app, rate: {{ requests: 100000, period: 1h }} }}]
  user:
    issuers:
      - issuer: "{issuer}"
        audiences: [vault-api]
        jwks: {{ uri: "{jwks}" }}
        algorithms: [ES256]
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
data:
  secret: "{secret_b64}"
---
apiVersion: v1
kind: Secret
metadata: {{ name: keys, namespace: e2e }}
stringData:
  vault: "{API_KEY}"
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: vault-app, namespace: e2e }}
spec:
  appId: vault-ios
  apiKey: {{ secretRef: {{ name: keys, key: vault }} }}
"#,
        secret_b64 = STANDARD.encode(&secret),
    )
}

fn user_token(key: &SigningKey, idp: &Idp, sub: &str, exp_in: i64) -> String {
    let now = idp::now() as i64;
    let claims = json!({"iss": idp.issuer(), "aud": "vault-api", "sub": sub, "iat": now, "exp": now + exp_in});
    format!("Bearer {}", key.sign(Some("at+jwt"), &claims).unwrap())
}

fn app_token(bound: &str, exp_in: f64) -> String {
    let claims = AppClaims {
        exp: idp::now() + exp_in,
        bound_values: vec![bound.to_owned()],
        device: Some("device-7".into()),
        extra: Map::new(),
    };
    mint::sign_hmac(Algorithm::HS256, &SECRET, None, &claims.to_json()).unwrap()
}

/// What a case sends and the status it expects.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, u16);

/// Flips one character of a JWS signature.
fn tampered(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let last = bytes.len() - 2;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[test]
fn no_credential_reaches_logs_spans_or_metrics() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let stranger = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let receiver = OtlpReceiver::start();
    let stack = Stack::builder(&policy(&idp))
        .tollgate_args(&[
            "--log-level",
            "debug",
            "--audit-allow-ratio",
            "1",
            "--otlp-endpoint",
            &receiver.endpoint(),
        ])
        .tollgate_env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start();

    let auth = user_token(&key, &idp, "alice", 300);
    let app = app_token(&auth, 60.0);
    let expired = user_token(&key, &idp, "alice", -600);
    let foreign = user_token(&stranger, &idp, "alice", 300);
    let cases: Vec<Case<'_>> = vec![
        (
            "valid",
            vec![
                ("authorization", auth.clone()),
                ("x-api-key", API_KEY.into()),
                ("approov-token", app.clone()),
            ],
            200,
        ),
        (
            "tampered user token",
            vec![
                ("authorization", tampered(&auth)),
                ("x-api-key", API_KEY.into()),
                ("approov-token", app.clone()),
            ],
            401,
        ),
        (
            "expired user token",
            vec![
                ("authorization", expired.clone()),
                ("x-api-key", API_KEY.into()),
                ("approov-token", app_token(&expired, 60.0)),
            ],
            401,
        ),
        (
            "token of an unknown key",
            vec![
                ("authorization", foreign.clone()),
                ("x-api-key", API_KEY.into()),
                ("approov-token", app.clone()),
            ],
            401,
        ),
        (
            "unknown API key",
            vec![
                ("authorization", auth.clone()),
                ("x-api-key", OTHER_KEY.into()),
                ("approov-token", app.clone()),
            ],
            401,
        ),
        (
            "tampered app token",
            vec![
                ("authorization", auth.clone()),
                ("x-api-key", API_KEY.into()),
                ("approov-token", tampered(&app)),
            ],
            401,
        ),
        (
            "expired app token",
            vec![
                ("authorization", auth.clone()),
                ("x-api-key", API_KEY.into()),
                ("approov-token", app_token(&auth, -120.0)),
            ],
            401,
        ),
        (
            "app token bound to another user token",
            vec![
                ("authorization", auth.clone()),
                ("x-api-key", API_KEY.into()),
                ("approov-token", app_token(&foreign, 60.0)),
            ],
            401,
        ),
        (
            "garbage bearer",
            vec![
                ("authorization", "Bearer not.a.jwt-but-long-enough".into()),
                ("x-api-key", API_KEY.into()),
            ],
            401,
        ),
        (
            "basic credentials",
            vec![
                ("authorization", "Basic YWxpY2U6aHVudGVyMi1odW50ZXIy".into()),
                ("x-api-key", API_KEY.into()),
            ],
            401,
        ),
        (
            "two API keys",
            vec![
                ("authorization", auth.clone()),
                ("x-api-key", API_KEY.into()),
                ("x-api-key", OTHER_KEY.into()),
            ],
            400,
        ),
    ];
    let mut ids = Vec::new();
    for (what, headers, status) in &cases {
        let mut request = stack
            .get("/v1/safe?access_token=query-token-0123456789")
            .host("vault.example");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send();
        assert_eq!(response.status, *status, "{what}: {}", response.text());
        ids.push(response.request_id().to_owned());
    }
    credentials::note("query-token-0123456789");

    // Every request has its audit line (allow lines too) and its span:
    // the scan below reads real output, not an empty one.
    let lines = support::wait_for(
        "an audit line per request",
        std::time::Duration::from_secs(15),
        || {
            let lines = stack.tollgate.log_lines();
            ids.iter()
                .all(|id| {
                    lines.iter().any(|l| {
                        log_field(l, "request_id").and_then(Value::as_str) == Some(id.as_str())
                    })
                })
                .then_some(lines)
        },
    );
    assert!(lines.iter().any(|l| log_message(l) == Some("allowed")));
    let spans = receiver.wait_for("a span per request", |spans| {
        ids.iter()
            .all(|id| {
                spans
                    .iter()
                    .any(|s| s.attribute("tollgate.request_id") == Some(id.as_str()))
            })
            .then(|| spans.to_vec())
    });
    assert!(
        credentials::noted_count() >= 20,
        "the scan has credentials to look for"
    );

    let output = stack.tollgate.output();
    assert_eq!(credentials::leaks(&output), Vec::<String>::new(), "logs");
    let span_text = format!("{spans:?}");
    assert_eq!(
        credentials::leaks(&span_text),
        Vec::<String>::new(),
        "spans"
    );
    let metrics = stack.tollgate.metrics();
    assert_eq!(
        credentials::leaks(&metrics),
        Vec::<String>::new(),
        "metrics"
    );
    // The audit lines name who and why, never how they proved it.
    let denied = lines
        .iter()
        .find(|l| {
            log_message(l) == Some("denied")
                && log_field(l, "reason").and_then(Value::as_str) == Some("app_unknown")
        })
        .expect("the unknown API key's audit line");
    assert_eq!(
        log_field(denied, "user").and_then(Value::as_str),
        Some("alice")
    );
    assert_eq!(
        log_field(denied, "client").and_then(Value::as_str),
        Some("127.0.0.1")
    );
    assert_eq!(
        log_field(denied, "policy").and_then(Value::as_str),
        Some("e2e/vault")
    );
}

/// A subject crafted to forge a log line and reverse what a reader sees.
const CRAFTED_SUB: &str = "mallory\nINFO tollgate::audit: allowed user=admin\u{202e}nimda";

fn crafted_request(stack: &Stack, key: &SigningKey, idp: &Idp) -> support::Response {
    // A valid user token, no app credential: denied after the user is known.
    let auth = user_token(key, idp, CRAFTED_SUB, 300);
    stack
        .get("/v1/safe")
        .host("vault.example")
        .header("authorization", &auth)
        .send()
}

#[test]
fn audit_lines_escape_crafted_claims_in_json_and_text() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);

    let stack = Stack::start(&policy(&idp));
    let response = crafted_request(&stack, &key, &idp);
    // Denied for the missing app credential, before the subject is
    // checked for header safety: the audit line names it, escaped.
    assert_eq!(response.reason(), Some("app_credential_missing"));
    let line = stack
        .tollgate
        .wait_for_log("denied", std::time::Duration::from_secs(15));
    assert_eq!(
        log_field(&line, "user").and_then(Value::as_str),
        Some("mallory\\nINFO tollgate::audit: allowed user=admin\\u{202e}nimda")
    );

    // Text logs: one line per event, whatever the claims hold.
    let text = Tollgate::start_with(&policy(&idp), &["--log-format", "text"]);
    let stack = Stack::builder("").start_around(text);
    let response = crafted_request(&stack, &key, &idp);
    assert_eq!(response.reason(), Some("app_credential_missing"));
    let output = support::wait_for(
        "the text audit line",
        std::time::Duration::from_secs(15),
        || {
            let output = stack.tollgate.output();
            output.contains("tollgate::audit").then_some(output)
        },
    );
    let audit: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("tollgate::audit"))
        .collect();
    assert_eq!(audit.len(), 1, "{output}");
    assert!(
        audit[0].contains("mallory") && audit[0].contains("nINFO tollgate::audit"),
        "{}",
        audit[0]
    );
    assert!(!output.contains('\u{202e}'), "no bidi override in the log");
    assert!(
        !output.lines().any(|l| l.starts_with("INFO")),
        "no line starts where a crafted value wanted one:\n{output}"
    );
}

#[test]
fn hashed_users_are_pseudonymous_and_stable() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let idp = Idp::start(vec![key.clone()]);
    let stack = Stack::builder(&policy(&idp))
        .tollgate_args(&["--audit-user", "hashed"])
        .start();
    for _ in 0..2 {
        let response = stack
            .get("/v1/safe")
            .host("vault.example")
            .header("authorization", &user_token(&key, &idp, "alice", 300))
            .send();
        assert_eq!(response.reason(), Some("app_credential_missing"));
    }
    let lines = support::wait_for(
        "two audit lines",
        std::time::Duration::from_secs(15),
        || {
            let lines: Vec<Value> = stack
                .tollgate
                .log_lines()
                .into_iter()
                .filter(|l| log_message(l) == Some("denied"))
                .collect();
            (lines.len() == 2).then_some(lines)
        },
    );
    let expected = tollgate::telemetry::audit::user_hash(&idp.issuer(), "alice");
    for line in &lines {
        assert_eq!(
            log_field(line, "user_hash").and_then(Value::as_str),
            Some(expected.as_str())
        );
        assert!(
            log_field(line, "user").is_none() && log_field(line, "issuer").is_none(),
            "{line}"
        );
    }
    assert!(!stack.tollgate.output().contains("alice"));
}

#[test]
fn the_leak_scan_finds_each_credential_kind() {
    let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVzLWhlcmU";
    let pieces = credentials::pieces(&format!("Bearer {jwt}"));
    assert!(pieces.contains(&jwt.to_owned()));
    assert!(
        pieces.contains(&"eyJzdWIiOiJhbGljZSJ9".to_owned()),
        "payload"
    );
    assert!(
        pieces.contains(&"c2lnbmF0dXJlLWJ5dGVzLWhlcmU".to_owned()),
        "signature"
    );
    assert!(
        !pieces.contains(&"eyJhbGciOiJFUzI1NiJ9".to_owned()),
        "not the shared header"
    );
    let signature = credentials::pieces("sig1=:bWFjLW9mLXRoZS1yZXF1ZXN0:");
    assert!(signature.contains(&"bWFjLW9mLXRoZS1yZXF1ZXN0".to_owned()));
    assert!(credentials::pieces("k").is_empty(), "too short to check");
    assert!(credentials::is_credential_header("X-Api-Key"));
    assert!(credentials::is_credential_header("approov-token"));
    assert!(!credentials::is_credential_header("signature-input"));
    assert!(!credentials::is_credential_header("x-request-id"));

    credentials::note_header("x-api-key", "tg_live_0123456789abcdef");
    credentials::note_policy_secrets(
        "apiVersion: v1\nkind: Secret\ndata:\n  k: aG1hYy1rZXktbWF0ZXJpYWwtMQ==\n",
    );
    assert_eq!(
        credentials::leaks("INFO denied key=tg_live_0123456789abcdef"),
        ["tg_live_0123456789abcdef"]
    );
    assert_eq!(
        credentials::leaks("secret hmac-key-material-1 logged"),
        ["hmac-key-material-1"]
    );
    assert!(credentials::leaks("INFO denied key=tg_live_01234…").is_empty());
}
