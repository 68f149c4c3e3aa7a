//! Benchmark fixtures shared by the criterion benches (`benches/*.rs`) and
//! the load benchmark (`bench/`, which includes this file by `#[path]`):
//! the full policy, its keys and the credentials of one request.
//!
//! The full policy is what issue 6 measures: an ES256 user access token
//! from an inline JWKS, an app identified by its API key and authenticated
//! by an Approov-style HS256 token whose `pay` claim binds it to the
//! `Authorization` header, and a plan with a smooth rate and a daily cap
//! (both keyed by the app, so one hash tag and one store call), usage
//! metering, upstream identity headers, credential stripping and
//! RateLimit headers. The limits are set far above any benchmark's rate:
//! every request must be admitted, so the figures measure the admitted
//! path (the common case).
//!
//! `requireHttps` is off because the load benchmark's Envoy listens on
//! plain HTTP on loopback; the transport stage still runs.
//!
//! Keys are generated at start-up (nothing secret is committed), so the
//! same `Fixture` must render both tollgate's policy and Envoy's
//! `jwt_authn` configuration.

#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value, json};
use tollgate::authn::mint::{self, AppClaims, SigningKey, UserClaims};

/// The namespace of every benchmark document.
pub const NAMESPACE: &str = "bench";
/// The host of policy 0 (the one the request path benchmarks call).
pub const HOST: &str = "api.bench.example";
/// The user token issuer.
pub const ISSUER: &str = "https://id.bench.example/";
/// The user token audience.
pub const AUDIENCE: &str = "bench-api";
/// The header carrying the API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// The header carrying the app attestation token.
pub const APP_TOKEN_HEADER: &str = "approov-token";
/// The request path of benchmark requests.
pub const PATH: &str = "/v1/bikes";
/// The user subject of benchmark requests.
pub const SUBJECT: &str = "user-1";
/// The device id in app tokens.
pub const DEVICE: &str = "device-1";
/// Lifetime of the user tokens the fixture mints.
pub const USER_TOKEN_LIFETIME_SECS: f64 = 3600.0;
/// Lifetime of the app tokens the fixture mints (the policy's
/// `maxLifetime` is 10 minutes).
pub const APP_TOKEN_LIFETIME_SECS: u64 = 540;

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Keys of one benchmark run.
pub struct Fixture {
    /// The IdP's ES256 key (user tokens).
    pub user_key: SigningKey,
    /// The attestation service's HS256 secret (app tokens).
    pub app_secret: [u8; 32],
}

/// The three credentials of one request.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// `Bearer <ES256 user token>`.
    pub authorization: String,
    /// The HS256 app token bound to `authorization`.
    pub app_token: String,
    /// The app's API key.
    pub api_key: String,
}

impl Credentials {
    /// The credential headers, as (name, value).
    pub fn headers(&self) -> [(&'static str, &str); 3] {
        [
            ("authorization", self.authorization.as_str()),
            (APP_TOKEN_HEADER, self.app_token.as_str()),
            (API_KEY_HEADER, self.api_key.as_str()),
        ]
    }
}

impl Fixture {
    /// Fresh keys.
    pub fn generate() -> Self {
        let user_key = match SigningKey::generate(Algorithm::ES256, "bench-es256") {
            Ok(key) => key,
            Err(e) => panic!("cannot generate an ES256 key: {e}"),
        };
        let mut app_secret = [0u8; 32];
        for (i, byte) in app_secret.iter_mut().enumerate() {
            // Not secret: a benchmark key. Varied bytes, no RNG needed.
            *byte = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        Self {
            user_key,
            app_secret,
        }
    }

    /// The IdP's JWKS (public ES256 key).
    pub fn user_jwks(&self) -> Value {
        mint::jwks([&self.user_key])
    }

    /// The app token key as a JWKS `oct` key (RFC 7518 §6.4), for Envoy's
    /// `jwt_authn`, which takes HMAC keys only in this form.
    pub fn app_jwks(&self) -> Value {
        json!({ "keys": [{
            "kty": "oct",
            "alg": "HS256",
            "k": URL_SAFE_NO_PAD.encode(self.app_secret),
        }]})
    }

    /// The API key of app `index`.
    pub fn api_key(index: usize) -> String {
        format!("tg_bench_{index:06}_7Hq2Xv0Zk9TmE4yPp1LwRa8s")
    }

    /// The host of policy `index` (policy 0 serves [`HOST`]).
    pub fn host(index: usize) -> String {
        if index == 0 {
            HOST.to_owned()
        } else {
            format!("api-{index}.bench.example")
        }
    }

    /// A user access token for `subject`, issued `now`.
    pub fn user_token(&self, subject: &str, now: f64) -> String {
        let claims = UserClaims {
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
            subject: subject.to_owned(),
            now,
            lifetime_secs: USER_TOKEN_LIFETIME_SECS,
            scope: Some("read rent".to_owned()),
            cnf_x5t_s256: None,
            cnf_jkt: None,
        };
        match self.user_key.sign(Some("at+jwt"), &claims.to_json()) {
            Ok(token) => token,
            Err(e) => panic!("cannot sign a user token: {e}"),
        }
    }

    /// An app token bound (`pay`) to `authorization`. Its `exp` is a whole
    /// number: Envoy's `jwt_authn` rejects fractional ones, and the same
    /// token must pass both.
    pub fn app_token(&self, authorization: &str, now: f64) -> String {
        let claims = AppClaims {
            exp: 0.0,
            bound_values: vec![authorization.to_owned()],
            device: Some(DEVICE.to_owned()),
            extra: Map::new(),
        };
        let mut json = claims.to_json();
        json["exp"] = json!(now as u64 + APP_TOKEN_LIFETIME_SECS);
        match mint::sign_hmac(Algorithm::HS256, &self.app_secret, None, &json) {
            Ok(token) => token,
            Err(e) => panic!("cannot sign an app token: {e}"),
        }
    }

    /// Fresh credentials of app `app` for user `subject`.
    pub fn credentials(&self, app: usize, subject: &str) -> Credentials {
        let now = now();
        let authorization = format!("Bearer {}", self.user_token(subject, now));
        let app_token = self.app_token(&authorization, now);
        Credentials {
            authorization,
            app_token,
            api_key: Self::api_key(app),
        }
    }

    /// The policy documents: the attester Secret, `policies` full
    /// ApiPolicies (policy `i` serves [`Fixture::host`]`(i)`), and `apps`
    /// AppRegistrations (app `j` has [`Fixture::api_key`]`(j)` in its own
    /// Secret, plan `gold`, accepted by every policy), each a YAML document
    /// without its `---` separator.
    pub fn policy_documents(&self, policies: usize, apps: usize) -> Vec<String> {
        let jwks = self.user_jwks().to_string();
        let secret = STANDARD.encode(self.app_secret);
        let mut docs = Vec::with_capacity(1 + policies + 2 * apps);
        docs.push(format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{ name: attester, namespace: {NAMESPACE} }}\n\
             stringData:\n  secret: \"{secret}\"\n"
        ));
        for i in 0..policies {
            let host = Self::host(i);
            docs.push(format!(
                r#"apiVersion: tollgate.dev/v1alpha1
kind: ApiPolicy
metadata: {{ name: bench-{i}, namespace: {NAMESPACE} }}
spec:
  hosts: [{host}]
  mode: enforce
  transport:
    requireHttps: false
    denyCidrs: [203.0.113.0/24]
  user:
    required: true
    issuers:
      - issuer: {ISSUER}
        audiences: [{AUDIENCE}]
        jwks: {{ inline: {jwks} }}
        algorithms: [ES256]
        leeway: 30s
  app:
    required: true
    identify:
      apiKey: {{ header: {API_KEY_HEADER} }}
    attestation:
      required: true
      header: {APP_TOKEN_HEADER}
      keys: {{ secretRef: {{ name: attester, key: secret }}, encoding: base64 }}
      algorithms: [HS256]
      maxLifetime: 10m
      binding: {{ claim: pay, headers: [authorization], required: true }}
  replay:
    window: 10m
  defaultPlan: gold
  plans:
    - name: gold
      limits:
        - {{ name: per-second, key: app, rate: {{ requests: 1000000, period: 1s }} }}
        - {{ name: daily, key: app, quota: {{ requests: 100000000000, reset: day }} }}
  routes:
    - {{ name: health, match: {{ path: /healthz }}, public: true }}
    - {{ name: search, match: {{ pathPrefix: /v1/search, methods: [GET] }}, cost: 5 }}
  response:
    upstreamHeaders:
      x-user-sub: "{{user.sub}}"
      x-app-id: "{{app.id}}"
    removeCredentials: true
    rateLimitHeaders: true
  onStoreError: deny
"#
            ));
        }
        for j in 0..apps {
            let key = Self::api_key(j);
            docs.push(format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{ name: app-{j}, namespace: {NAMESPACE} }}\n\
                 stringData:\n  apiKey: \"{key}\"\n"
            ));
            docs.push(format!(
                "apiVersion: tollgate.dev/v1alpha1\nkind: AppRegistration\n\
                 metadata: {{ name: app-{j}, namespace: {NAMESPACE} }}\n\
                 spec:\n  appId: app-{j}\n  plan: gold\n  apiKey: {{ secretRef: {{ name: app-{j}, key: apiKey }} }}\n"
            ));
        }
        docs
    }

    /// The documents as policy files of at most [`DOCUMENTS_PER_FILE`]
    /// documents each (a policy file holds at most 1,024 documents).
    pub fn policy_files(&self, policies: usize, apps: usize) -> Vec<String> {
        self.policy_documents(policies, apps)
            .chunks(DOCUMENTS_PER_FILE)
            .map(|chunk| chunk.join("---\n"))
            .collect()
    }

    /// Parses and compiles [`Fixture::policy_files`] into a snapshot.
    pub fn snapshot(&self, policies: usize, apps: usize) -> tollgate::policy::snapshot::Snapshot {
        let docs = parse(&self.policy_files(policies, apps));
        match tollgate::policy::compile::compile(&docs, 1) {
            Ok(snapshot) => snapshot,
            Err(e) => panic!("benchmark policy does not compile: {e}"),
        }
    }
}

/// Documents per generated policy file: under the YAML reader's budget of
/// 1,024 documents per file.
pub const DOCUMENTS_PER_FILE: usize = 1000;

/// Parses generated policy files (named `bench-<n>.yaml`).
pub fn parse(files: &[String]) -> Vec<tollgate::policy::document::LoadedDocument> {
    let named: Vec<(std::path::PathBuf, String)> = files
        .iter()
        .enumerate()
        .map(|(i, text)| (format!("bench-{i}.yaml").into(), text.clone()))
        .collect();
    match tollgate::policy::document::parse_files(&named) {
        Ok(docs) => docs,
        Err(e) => panic!("benchmark policy does not parse: {e}"),
    }
}

/// A whole-number resident set size of this process, from
/// `/proc/self/status` (`VmRSS`), in KiB; 0 where unavailable.
pub fn rss_kib(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    status_field_kib(&std::fs::read_to_string(path).unwrap_or_default(), "VmRSS:")
}

/// A `kB` field of a `/proc/<pid>/status` text.
pub fn status_field_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
