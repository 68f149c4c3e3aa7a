//! The security hardening of issue 17, end to end through the real Envoy
//! (docs/security.md maps each defence to its test): replays keyed by the
//! credential, header-safe identity values, dry runs and default allows
//! that strip like enforcement, path parameters, ports in proof URIs,
//! repeated bound headers and HTTP/2 bodies without a length.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, json};
use support::Stack;
use tollgate::authn::mint::{self, AppClaims, SigningKey};

/// The attestation service's HS256 secret (base64 in the policies).
const ATTESTER_SECRET: [u8; 32] = [7; 32];
/// Two registered apps' API keys.
const APP_A_KEY: &str = "tg_app_a_7Hq2Xv0Zk9TmE4yPp1LwRa8s";
const APP_B_KEY: &str = "tg_app_b_Q2Xv0Zk9TmE4yPp1LwR8sNcU";

/// An app token from the attestation service for app `commuter` on
/// device `did`, valid for a minute, bound to nothing.
fn app_token(did: &str) -> String {
    let mut extra = Map::new();
    extra.insert("app_id".into(), json!("commuter"));
    let claims = AppClaims {
        exp: support::idp::now() + 60.0,
        bound_values: Vec::new(),
        device: Some(did.to_owned()),
        extra,
    };
    mint::sign_hmac(Algorithm::HS256, &ATTESTER_SECRET, None, &claims.to_json()).unwrap()
}

/// Asserts `response` is tollgate's deny with `status` and `reason`.
fn assert_denied(response: &support::Response, status: u16, reason: &str) {
    assert_eq!(
        (response.status, response.reason()),
        (status, Some(reason)),
        "expected a {status} {reason} deny, got {:?} {}",
        response.headers,
        response.text()
    );
}

/// Item 4: a `;` path parameter. Servlet-style backends drop `;…` from a
/// segment before resolving dot-segments, so `/docs/..;/v1/x` is `/v1/x`
/// to them while Envoy (and a prefix route) sees a path under `/docs`;
/// `/admin;x/users` is `/admin/users` to them but matches no `/admin`
/// route. tollgate refuses both as `request_malformed`.
#[test]
fn path_parameters_cannot_reach_around_routes() {
    const POLICY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: docs, namespace: e2e }
spec:
  hosts: [docs.example]
  transport: { requireHttps: false }
  app:
    identify: { apiKey: { header: x-api-key } }
  routes:
    - { name: docs, match: { pathPrefix: /docs }, public: true }
    - { name: admin, match: { pathPrefix: /admin }, deny: true }
"#;
    let stack = Stack::start(POLICY);
    // The controls: the public prefix passes, the private path needs an
    // app, the denied prefix is denied.
    let docs = stack.get("/docs/intro").host("docs.example").send();
    assert_eq!(docs.status, 200, "{}", docs.text());
    let private = stack.get("/v1/x").host("docs.example").send();
    assert_denied(&private, 401, "app_credential_missing");
    let admin = stack.get("/admin/users").host("docs.example").send();
    assert_denied(&admin, 403, "rule_denied");

    // Envoy's own normalisation resolves `..;` as a dot-segment: the
    // request is judged (and forwarded) as `/v1/x`, never as public.
    for path in ["/docs/..;/v1/x", "/docs/..;jsessionid=1/v1/x"] {
        let response = stack.get(path).host("docs.example").send();
        assert_denied(&response, 401, "app_credential_missing");
    }
    // What Envoy passes on with its `;` (or `%3B`) is refused by tollgate.
    for path in [
        "/docs/%2e%2e;/v1/x",
        "/docs/..%3B/v1/x",
        "/admin;x/users",
        "/admin;/users",
        "/admin%3bx/users",
        "/docs;/intro",
    ] {
        let response = stack.get(path).host("docs.example").send();
        assert_denied(&response, 400, "request_malformed");
    }
    assert_eq!(stack.upstream.count(), 1, "{:?}", stack.upstream.received());
}

/// Item 3: a request allowed only because the policy is in `dryRun` (or
/// because `--default-decision allow` lets unmatched hosts through) is
/// stripped exactly as an enforced allow is: every configured
/// `upstreamHeaders` name, every `x-tollgate-*` header the client sent and,
/// with `removeCredentials`, its credentials.
#[test]
fn dry_runs_and_default_allows_strip_like_enforcement() {
    const POLICY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: trial, namespace: e2e }
spec:
  hosts: [trial.example]
  mode: dryRun
  transport: { requireHttps: false }
  app:
    identify: { apiKey: { header: x-api-key } }
    attestation:
      required: false
      keys: { secretRef: { name: attester, key: secret } }
  response:
    removeCredentials: true
    upstreamHeaders:
      x-user-sub: "{user.sub}"
      x-app: "{app.id}"
---
apiVersion: v1
kind: Secret
metadata: { name: attester, namespace: e2e }
stringData: { secret: "0123456789abcdef0123456789abcdef" }
"#;
    let stack = Stack::builder(POLICY)
        .tollgate_args(&["--default-decision", "allow"])
        .start();
    let forged = |host: &str| {
        stack
            .get("/v1/bikes")
            .host(host)
            .header("x-user-sub", "admin")
            .header("x-app", "trusted-app")
            .header("x-tollgate-user", "admin")
            .header("x-api-key", "tg_unregistered_Q2Xv0Zk9TmE4yPp1LwR")
            .header("approov-token", "not.a.token")
            .header("dpop", "not-a-proof")
            .header("signature", "sig1=:AAAA:")
            .send()
    };
    // The dry run would deny (unknown API key), and allows.
    let response = forged("trial.example");
    let upstream = response.upstream();
    for name in [
        "x-user-sub",
        "x-app",
        "x-tollgate-user",
        "x-api-key",
        "approov-token",
    ] {
        assert!(
            upstream.lacks(name),
            "{name} reached the upstream: {:?}",
            upstream.headers
        );
    }
    let entry = stack.envoy.access_log_entry(response.request_id());
    assert_eq!(entry["tollgate"]["dry_run"], "app_unknown", "{entry}");

    // No policy serves this host; the default decision allows it, and no
    // header any policy configures (nor x-tollgate-*) passes.
    let response = forged("nobody.example");
    let upstream = response.upstream();
    for name in ["x-user-sub", "x-app", "x-tollgate-user"] {
        assert!(
            upstream.lacks(name),
            "{name} reached the upstream: {:?}",
            upstream.headers
        );
    }
    // Without a policy there is no removeCredentials to apply.
    assert_eq!(
        upstream.header_once("x-api-key"),
        "tg_unregistered_Q2Xv0Zk9TmE4yPp1LwR"
    );
}

/// A user token signed by `idp` for `bikes-api` with `claims` added.
fn user_token(idp: &SigningKey, claims: serde_json::Value) -> String {
    let now = support::idp::now() as u64;
    let mut body = json!({
        "iss": "https://id.example/", "aud": "bikes-api", "sub": "alice",
        "iat": now, "exp": now + 300,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), claims.as_object()) {
        body.extend(extra.clone());
    }
    idp.sign(Some("at+jwt"), &body).unwrap()
}

/// Item 2: every value tollgate sends upstream is header-safe. A token
/// whose `sub`, templated claim or device id holds a control character
/// (or leading/trailing whitespace, which HTTP strips) is denied with the
/// credential's reason instead of reaching Envoy as an invalid header (a
/// 503) or the upstream as another identity.
#[test]
fn identity_values_sent_upstream_are_header_safe() {
    let idp = SigningKey::generate(Algorithm::ES256, "idp").unwrap();
    let jwks = mint::jwks([&idp]);
    let secret = base64::engine::general_purpose::STANDARD.encode(ATTESTER_SECRET);
    let policy = format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: api, namespace: e2e }}
spec:
  hosts: [api.example]
  transport: {{ requireHttps: false }}
  user:
    issuers:
      - issuer: "https://id.example/"
        audiences: [bikes-api]
        jwks: {{ inline: {jwks} }}
        algorithms: [ES256]
  app:
    required: false
    identify: {{ tokenClaim: app_id }}
    attestation:
      required: false
      keys: {{ secretRef: {{ name: attester, key: secret }}, encoding: base64 }}
  defaultPlan: free
  plans:
    - name: free
      limits: [{{ name: hourly, key: user, rate: {{ requests: 2, period: 1h }} }}]
  response:
    upstreamHeaders:
      x-email: "{{user.claims.email}}"
---
apiVersion: v1
kind: Secret
metadata: {{ name: attester, namespace: e2e }}
stringData: {{ secret: "{secret}" }}
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: commuter, namespace: e2e }}
spec: {{ appId: commuter }}
"#
    );
    let stack = Stack::start(&policy);
    let send = |token: &str, app_token: Option<&str>| {
        let mut request = stack
            .get("/v1/bikes")
            .host("api.example")
            .header("authorization", &format!("Bearer {token}"))
            .header("x-email", "forged@example");
        if let Some(app_token) = app_token {
            request = request.header("approov-token", app_token);
        }
        request.send()
    };

    let clean = user_token(&idp, json!({ "email": "alice@example" }));
    for (claims, what) in [
        (json!({ "sub": "alice\r\nx-admin: yes" }), "sub"),
        (json!({ "sub": "alice\u{0}" }), "sub"),
        (json!({ "sub": " admin" }), "sub"),
        (json!({ "sub": "admin\t" }), "sub"),
        (json!({ "email": "a@example\u{1}" }), "claim"),
        (json!({ "email": "a@example\u{85}" }), "claim"),
        (json!({ "email": "a@example\nx-admin: yes" }), "claim"),
    ] {
        let response = send(&user_token(&idp, claims.clone()), None);
        assert_denied(&response, 401, "user_token_invalid");
        let detail = response.json()["detail"].as_str().unwrap().to_owned();
        assert!(
            detail.contains("cannot be sent upstream"),
            "{claims}: {detail}"
        );
        assert!(detail.contains(what), "{claims}: {detail}");
    }
    let response = send(&clean, Some(&app_token("device\n1")));
    assert_denied(&response, 401, "attestation_invalid");

    // The denials consumed nothing: alice's two requests an hour are left
    // for the clean values, which arrive as they are.
    let upstream = send(&clean, Some(&app_token("device-1"))).upstream();
    assert_eq!(upstream.header_once("x-tollgate-user"), "alice");
    assert_eq!(upstream.header_once("x-email"), "alice@example");
    assert_eq!(upstream.header_once("x-tollgate-device"), "device-1");

    // An empty claim is no value: the client's copy is removed, not kept.
    let empty = user_token(&idp, json!({ "email": "" }));
    let upstream = send(&empty, None).upstream();
    assert!(upstream.lacks("x-email"), "{:?}", upstream.headers);
    assert_eq!(stack.upstream.count(), 2);
}

/// The shipped front proxy in front of `tollgate` serving `policy`, with
/// the test PKI's certificates; listeners `https` and `http`.
fn shipped_front_proxy(policy: &str) -> (support::Envoy, support::Tollgate, support::Upstream) {
    let upstream = support::Upstream::start();
    let tollgate = support::Tollgate::start(policy);
    let dir = tempfile::tempdir().unwrap();
    let pki = support::tls::TestPki::generate();
    let files = pki.write_server_files(dir.path());
    let bootstrap = support::envoy::adapt_example(
        "deploy/envoy/front-proxy.yaml",
        dir.path(),
        tollgate.grpc_addr(),
        upstream.addr(),
        Some(&files),
        &["https", "http"],
    );
    let envoy = support::Envoy::start_bootstrap(dir, &bootstrap, Some(pki));
    (envoy, tollgate, upstream)
}

/// Item 5: the port is part of the URI a DPoP proof (`htu`) and a signature
/// (`@authority`, `@target-uri`) name. Through the shipped front proxy,
/// whose TLS listener is on a non-default port, a proof and a signature for
/// `https://api.bikes.example:<port>/…` pass, and ones without the port
/// (another origin, RFC 6454) do not.
#[test]
fn proofs_for_a_non_default_port_pass_the_shipped_front_proxy() {
    use tollgate::authn::dpop::{self, ProofClaims};
    use tollgate::authn::signature::base::Message;
    use tollgate::authn::signature::keys::SigningKey as SignatureKey;
    use tollgate::authn::signature::{self, SignOptions};

    let idp = SigningKey::generate(Algorithm::ES256, "idp").unwrap();
    let client = SigningKey::generate(Algorithm::ES256, "client").unwrap();
    let jwks = mint::jwks([&idp]);
    let hmac = "commuter-hmac-0123456789abcdefghij";
    let policy = format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: bikes, namespace: mobility }}
spec:
  user:
    required: false
    issuers:
      - issuer: "https://id.example/"
        audiences: [bikes-api]
        jwks: {{ inline: {jwks} }}
        algorithms: [ES256]
    dpop: {{ mode: optional }}
  app:
    required: false
    identify: {{ signatureKeyId: true }}
    signature: {{ components: ["@method", "@authority", "@target-uri"] }}
---
apiVersion: v1
kind: Secret
metadata: {{ name: keys, namespace: mobility }}
stringData: {{ hmac: "{hmac}" }}
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: commuter, namespace: mobility }}
spec:
  appId: commuter-ios
  signingKey: {{ secretRef: {{ name: keys, key: hmac }} }}
"#
    );
    let (envoy, _tollgate, upstream) = shipped_front_proxy(&policy);
    let port = envoy.https_addr().unwrap().port();
    let authority = format!("api.bikes.example:{port}");
    let access = user_token(
        &idp,
        json!({ "cnf": { "jkt": dpop::key_thumbprint(&client).unwrap() } }),
    );

    // DPoP: the proof names the URI with its port.
    let dpop_request = |url: &str| {
        let proof = dpop::mint_proof(
            &client,
            &ProofClaims {
                method: "GET",
                url,
                access_token: Some(&access),
                iat: support::idp::now() as u64,
                jti: mint::random_id(),
            },
        )
        .unwrap();
        envoy
            .get("/v1/bikes")
            .https()
            .host(&authority)
            .header("authorization", &format!("DPoP {access}"))
            .header("dpop", &proof)
            .send()
    };
    let response = dpop_request(&format!("https://{authority}/v1/bikes"));
    assert_eq!(response.status, 200, "{}", response.text());
    let response = dpop_request("https://api.bikes.example/v1/bikes");
    assert_denied(&response, 401, "dpop_proof_invalid");

    // RFC 9421: @authority and @target-uri carry the port.
    let key = SignatureKey::Hmac(hmac.as_bytes().to_vec());
    let signed_request = |authority: &str| {
        let headers = tollgate::request::Headers::new();
        let message = Message {
            method: "GET",
            scheme: "https",
            authority: authority.to_owned(),
            path: "/v1/bikes",
            query: None,
            headers: &headers,
        };
        let components: Vec<String> = ["@method", "@authority", "@target-uri"]
            .map(String::from)
            .to_vec();
        let fields = signature::sign(
            &message,
            &SignOptions {
                label: "sig1",
                components: &components,
                created: support::idp::now() as i64,
                expires: None,
                nonce: Some(&mint::random_id()),
                keyid: Some("commuter-ios"),
                include_alg: true,
            },
            &key,
        )
        .unwrap();
        envoy
            .get("/v1/bikes")
            .https()
            .host(&format!("api.bikes.example:{port}"))
            .header("signature-input", &fields.signature_input)
            .header("signature", &fields.signature)
            .send()
    };
    let response = signed_request(&authority);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.upstream().header_once("x-tollgate-app"),
        "commuter-ios"
    );
    let response = signed_request("api.bikes.example");
    assert_denied(&response, 401, "signature_invalid");
    assert_eq!(upstream.count(), 2);
}

/// Item 1: a nonce belongs to its credential. A captured DPoP proof stays
/// used whichever app credential travels with it (another app's API key,
/// or none where the app is optional), and so does a single-use app
/// token; against the in-memory store and against Redis.
#[test]
fn replays_stay_replays_whatever_other_credentials_travel_with_them() {
    use tollgate::authn::dpop::{self, ProofClaims};

    let redis = support::redis::RedisServer::start();
    let idp = SigningKey::generate(Algorithm::ES256, "idp").unwrap();
    let client = SigningKey::generate(Algorithm::ES256, "client").unwrap();
    let jwks = mint::jwks([&idp]);
    let secret = base64::engine::general_purpose::STANDARD.encode(ATTESTER_SECRET);
    let policy = format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: api, namespace: e2e }}
spec:
  hosts: [api.example]
  transport: {{ requireHttps: false }}
  user:
    issuers:
      - issuer: "https://id.example/"
        audiences: [bikes-api]
        jwks: {{ inline: {jwks} }}
        algorithms: [ES256]
  app:
    required: false
    identify: {{ apiKey: {{ header: x-api-key }} }}
    attestation:
      required: false
      keys: {{ secretRef: {{ name: attester, key: secret }}, encoding: base64 }}
      binding: {{ headers: [authorization] }}
      singleUse: true
      maxLifetime: 1m
---
apiVersion: v1
kind: Secret
metadata: {{ name: attester, namespace: e2e }}
stringData: {{ secret: "{secret}" }}
---
apiVersion: v1
kind: Secret
metadata: {{ name: keys, namespace: e2e }}
stringData: {{ a: "{APP_A_KEY}", b: "{APP_B_KEY}" }}
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: a, namespace: e2e }}
spec: {{ appId: app-a, apiKey: {{ secretRef: {{ name: keys, key: a }} }} }}
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: b, namespace: e2e }}
spec: {{ appId: app-b, apiKey: {{ secretRef: {{ name: keys, key: b }} }} }}
"#
    );
    let access = user_token(
        &idp,
        json!({ "cnf": { "jkt": dpop::key_thumbprint(&client).unwrap() } }),
    );
    let auth = format!("DPoP {access}");
    let proof = || {
        dpop::mint_proof(
            &client,
            &ProofClaims {
                method: "GET",
                url: "http://api.example/v1/bikes",
                access_token: Some(&access),
                iat: support::idp::now() as u64,
                jti: mint::random_id(),
            },
        )
        .unwrap()
    };
    // An app token bound (pay) to this Authorization value, single-use.
    let app_token = || {
        let mut extra = Map::new();
        extra.insert("jti".into(), json!(mint::random_id()));
        let claims = AppClaims {
            exp: support::idp::now() + 30.0,
            bound_values: vec![auth.clone()],
            device: None,
            extra,
        };
        mint::sign_hmac(Algorithm::HS256, &ATTESTER_SECRET, None, &claims.to_json()).unwrap()
    };

    let redis_url = redis.url();
    for store in [vec![], vec!["--redis", redis_url.as_str()]] {
        let stack = Stack::builder(&policy).tollgate_args(&store).start();
        let send = |proof: &str, api_key: Option<&str>, app_token: Option<&str>| {
            let mut request = stack
                .get("/v1/bikes")
                .host("api.example")
                .header("authorization", &auth)
                .header("dpop", proof);
            if let Some(key) = api_key {
                request = request.header("x-api-key", key);
            }
            if let Some(token) = app_token {
                request = request.header("approov-token", token);
            }
            request.send()
        };
        let captured_proof = proof();
        let captured_token = app_token();
        let response = send(&captured_proof, Some(APP_A_KEY), Some(&captured_token));
        assert_eq!(
            response.upstream().header_once("x-tollgate-app"),
            "app-a",
            "{store:?}"
        );

        // The captured proof with another app's key and a fresh app token
        // of its own, and with no app credential at all.
        let response = send(&captured_proof, Some(APP_B_KEY), Some(&app_token()));
        assert_denied(&response, 401, "replay_detected");
        assert!(response.json()["detail"].as_str().unwrap().contains("dpop"));
        let response = send(&captured_proof, None, None);
        assert_denied(&response, 401, "replay_detected");
        // The captured single-use app token with a fresh proof and another
        // app's key.
        let response = send(&proof(), Some(APP_B_KEY), Some(&captured_token));
        assert_denied(&response, 401, "replay_detected");
        assert!(
            response.json()["detail"]
                .as_str()
                .unwrap()
                .contains("attestation"),
            "{}",
            response.text()
        );
        // The control: fresh credentials pass for app B.
        let response = send(&proof(), Some(APP_B_KEY), Some(&app_token()));
        assert_eq!(
            response.upstream().header_once("x-tollgate-app"),
            "app-b",
            "{store:?}"
        );
        assert_eq!(stack.upstream.count(), 2, "{store:?}");
    }
}

/// Sends `method path` over HTTP/2 (prior knowledge, plain text) to
/// `addr` with `headers` and `body` in DATA frames, no `content-length`;
/// returns the status and the `x-tollgate-reason`.
async fn h2_request(
    addr: std::net::SocketAddr,
    method: &str,
    authority: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, Option<String>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{authority}{path}"));
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let (response, mut stream) = client
        .send_request(request.body(()).unwrap(), body.is_empty())
        .unwrap();
    if !body.is_empty() {
        stream
            .send_data(bytes::Bytes::copy_from_slice(body), true)
            .unwrap();
    }
    let response = response.await.unwrap();
    let reason = response
        .headers()
        .get("x-tollgate-reason")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (response.status().as_u16(), reason)
}

/// Item 6: over HTTP/2 a body needs no `content-length`. When Envoy does
/// not send it to tollgate (no `with_request_body`), a `Content-Digest`
/// cannot be checked: the request is refused, never verified as if its
/// body were empty. With the body buffered it is checked as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_body_without_a_length_is_never_taken_for_empty() {
    use tollgate::authn::signature::base::Message;
    use tollgate::authn::signature::keys::SigningKey as SignatureKey;
    use tollgate::authn::signature::{self, SignOptions, digest};

    let hmac = "commuter-hmac-0123456789abcdefghij";
    let policy = format!(
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
      components: ["@method", "@authority", "@path", content-digest]
---
apiVersion: v1
kind: Secret
metadata: {{ name: keys, namespace: e2e }}
stringData: {{ hmac: "{hmac}" }}
---
apiVersion: tollgate.dev/v1alpha1
kind: AppRegistration
metadata: {{ name: commuter, namespace: e2e }}
spec:
  appId: commuter-ios
  signingKey: {{ secretRef: {{ name: keys, key: hmac }} }}
"#
    );
    // Signed headers for a POST whose Content-Digest describes `claimed`.
    let signed = |claimed: &[u8]| {
        let mut headers = tollgate::request::Headers::new();
        let field = digest::sha256_field(claimed);
        headers.push("content-digest", field.clone());
        let message = Message {
            method: "POST",
            scheme: "http",
            authority: "sig.example".into(),
            path: "/v1/rentals",
            query: None,
            headers: &headers,
        };
        let components: Vec<String> = ["@method", "@authority", "@path", "content-digest"]
            .map(String::from)
            .to_vec();
        let fields = signature::sign(
            &message,
            &SignOptions {
                label: "sig1",
                components: &components,
                created: support::idp::now() as i64,
                expires: None,
                nonce: Some(&mint::random_id()),
                keyid: Some("commuter-ios"),
                include_alg: true,
            },
            &SignatureKey::Hmac(hmac.as_bytes().to_vec()),
        )
        .unwrap();
        vec![
            ("content-digest".to_owned(), field),
            ("signature-input".to_owned(), fields.signature_input),
            ("signature".to_owned(), fields.signature),
        ]
    };
    let body = br#"{"bike": 7, "price": 0}"#;

    // Envoy without with_request_body: tollgate never sees the body. A
    // digest of the empty body, with a body in DATA frames and no length.
    let stack = Stack::start(&policy);
    let addr = stack.envoy.http_addr();
    let (status, reason) = h2_request(
        addr,
        "POST",
        "sig.example",
        "/v1/rentals",
        &signed(b""),
        body,
    )
    .await;
    assert_eq!(
        (status, reason.as_deref()),
        (401, Some("signature_invalid"))
    );
    assert_eq!(stack.upstream.count(), 0);
    drop(stack);

    // Envoy buffering the body: the digest is checked against it.
    let stack = Stack::builder(&policy).request_body(64 * 1024).start();
    let addr = stack.envoy.http_addr();
    let (status, _) = h2_request(
        addr,
        "POST",
        "sig.example",
        "/v1/rentals",
        &signed(body),
        body,
    )
    .await;
    assert_eq!(status, 200);
    let (status, reason) = h2_request(
        addr,
        "POST",
        "sig.example",
        "/v1/rentals",
        &signed(b""),
        body,
    )
    .await;
    assert_eq!(
        (status, reason.as_deref()),
        (401, Some("signature_invalid"))
    );
    // An empty HTTP/2 body declared with content-length: 0 is empty.
    let mut empty = signed(b"");
    empty.push(("content-length".to_owned(), "0".to_owned()));
    let (status, _) = h2_request(addr, "POST", "sig.example", "/v1/rentals", &empty, b"").await;
    assert_eq!(status, 200);
    assert_eq!(stack.upstream.count(), 2);
}

/// Item 6: a client address written IPv4-mapped (`::ffff:203.0.113.5`,
/// as a dual-stack proxy may put in `X-Forwarded-For`) is the IPv4 address
/// for `allowCidrs`/`denyCidrs` and `ip` limits; a rule written as an
/// IPv4-mapped network means its IPv4 network. IPv6 clients are limited
/// per /64 (the `--ipv6-limit-prefix` default), so rotating through one's
/// own /64 does not buy a fresh limit.
#[test]
fn client_addresses_are_canonical_and_ipv6_limits_key_on_the_prefix() {
    const POLICY: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: deny, namespace: e2e }
spec:
  hosts: [deny.example]
  transport: { requireHttps: false, denyCidrs: [203.0.113.0/24] }
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: allow, namespace: e2e }
spec:
  hosts: [allow.example]
  transport: { requireHttps: false, allowCidrs: [198.51.100.0/24] }
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: mapped-rule, namespace: e2e }
spec:
  hosts: [mapped-rule.example]
  transport: { requireHttps: false, denyCidrs: ["::ffff:203.0.113.0/120"] }
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: { name: limited, namespace: e2e }
spec:
  hosts: [limited.example]
  transport: { requireHttps: false }
  defaultPlan: anon
  plans:
    - name: anon
      limits: [{ name: per-ip, key: ip, rate: { requests: 1, period: 1h } }]
"#;
    // The client's X-Forwarded-For entry is the one before the address
    // the test Envoy appends: two trusted hops.
    let stack = Stack::builder(POLICY)
        .tollgate_args(&["--trusted-origin", "forwarded", "--trusted-hops", "2"])
        .start();
    let from = |host: &str, client: &str| {
        stack
            .get("/")
            .host(host)
            .header("x-forwarded-for", client)
            .send()
    };
    assert_denied(
        &from("deny.example", "::ffff:203.0.113.5"),
        403,
        "ip_denied",
    );
    assert_eq!(from("allow.example", "::ffff:198.51.100.7").status, 200);
    assert_denied(
        &from("mapped-rule.example", "203.0.113.9"),
        403,
        "ip_denied",
    );
    assert_denied(
        &from("mapped-rule.example", "::ffff:203.0.113.9"),
        403,
        "ip_denied",
    );

    assert_eq!(from("limited.example", "2001:db8:1:2::1").status, 200);
    assert_denied(
        &from("limited.example", "2001:db8:1:2::ffff"),
        429,
        "quota_exceeded",
    );
    assert_denied(
        &from("limited.example", "2001:db8:1:2:abcd::7"),
        429,
        "quota_exceeded",
    );
    assert_eq!(from("limited.example", "2001:db8:1:3::1").status, 200);
    // IPv4 clients are still limited per address.
    assert_eq!(from("limited.example", "192.0.2.1").status, 200);
    assert_eq!(from("limited.example", "192.0.2.2").status, 200);
    assert_denied(
        &from("limited.example", "::ffff:192.0.2.2"),
        429,
        "quota_exceeded",
    );
    assert_eq!(stack.upstream.count(), 5);
}

/// Item 6: a bound header sent more than once is hashed over all its
/// values — the field lines' values joined with `, ` in order (RFC 9110
/// §5.3), what a recipient that combines them sees — so a second line the
/// upstream may read cannot ride along with a token bound to the first.
#[test]
fn repeated_bound_headers_are_hashed_over_every_value() {
    let secret = base64::engine::general_purpose::STANDARD.encode(ATTESTER_SECRET);
    let policy = format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: bound, namespace: e2e }}
spec:
  hosts: [bound.example]
  transport: {{ requireHttps: false }}
  app:
    required: false
    attestation:
      keys: {{ secretRef: {{ name: attester, key: secret }}, encoding: base64 }}
      binding: {{ headers: [x-session] }}
---
apiVersion: v1
kind: Secret
metadata: {{ name: attester, namespace: e2e }}
stringData: {{ secret: "{secret}" }}
"#
    );
    let stack = Stack::start(&policy);
    let token = |bound: &str| {
        let claims = AppClaims {
            exp: support::idp::now() + 60.0,
            bound_values: vec![bound.to_owned()],
            device: None,
            extra: Map::new(),
        };
        mint::sign_hmac(Algorithm::HS256, &ATTESTER_SECRET, None, &claims.to_json()).unwrap()
    };
    let send = |token: &str, sessions: &[&str]| {
        let mut request = stack
            .get("/v1/bikes")
            .host("bound.example")
            .header("approov-token", token);
        for session in sessions {
            request = request.header("x-session", session);
        }
        request.send()
    };
    assert_eq!(send(&token("s1"), &["s1"]).status, 200);
    let response = send(&token("s1"), &["s1", "s2"]);
    assert_denied(&response, 401, "token_binding_mismatch");
    let response = send(&token("s1"), &["s2", "s1"]);
    assert_denied(&response, 401, "token_binding_mismatch");
    // A token bound to both lines, in order, passes.
    assert_eq!(send(&token("s1, s2"), &["s1", "s2"]).status, 200);
    assert_eq!(stack.upstream.count(), 2);
}

/// Item 6: claim values reach tollgate's audit line and Envoy's access log
/// (dynamic metadata) with their control characters escaped: a subject
/// holding a line break cannot forge a log line.
#[test]
fn logs_escape_control_characters_in_claim_values() {
    let idp = SigningKey::generate(Algorithm::ES256, "idp").unwrap();
    let jwks = mint::jwks([&idp]);
    let policy = format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: api, namespace: e2e }}
spec:
  hosts: [api.example]
  transport: {{ requireHttps: false }}
  user:
    issuers:
      - issuer: "https://id.example/"
        audiences: [bikes-api]
        jwks: {{ inline: {jwks} }}
        algorithms: [ES256]
"#
    );
    let stack = Stack::start(&policy);
    let forged = "alice\n{\"level\":\"INFO\",\"message\":\"allowed\"}\u{1b}[2K";
    let token = user_token(&idp, json!({ "sub": forged }));
    let response = stack
        .get("/v1/bikes")
        .host("api.example")
        .header("authorization", &format!("Bearer {token}"))
        .send();
    assert_denied(&response, 401, "user_token_invalid");
    let escaped = r#"alice\n{"level":"INFO","message":"allowed"}\u{1b}[2K"#;
    let entry = stack.envoy.access_log_entry(response.request_id());
    assert_eq!(entry["tollgate"]["user"], escaped, "{entry}");
    let audit = stack
        .tollgate
        .log_lines()
        .into_iter()
        .find(|line| support::tollgate::log_message(line) == Some("denied"))
        .expect("an audit line");
    assert_eq!(
        support::tollgate::log_field(&audit, "user"),
        Some(&json!(escaped)),
        "{audit}"
    );
    assert!(!stack.tollgate.output().contains('\u{1b}'));
}
