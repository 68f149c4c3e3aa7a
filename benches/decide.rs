//! The decision core on the request path, with the in-memory store:
//!
//! - `decide/cached` — the full policy on repeat tokens: the user token's
//!   signature is served from the verified-token cache, the app token (HS256)
//!   is verified, the `pay` binding, API key, plan (rate + daily cap) and
//!   usage metering run as on every request;
//! - `decide/cold` — fresh credentials every iteration (minted outside the
//!   timed part): first sight of each token, so the ES256 signature check
//!   runs too;
//! - `lookup/*` — 100 policies and 10,000 apps loaded: the host → policy
//!   index alone, and a full cached decision for policy 57 / app 5,000
//!   (compare with `decide/cached`, which has one policy and one app);
//! - `verify/<alg>` — one JWS signature check (`VerifyKey::verify`, key
//!   prepared at load) per algorithm: what a first-sight token costs.
//!
//! `cargo bench --bench decide`; `cargo bench --bench decide -- --test`
//! runs each once (the CI smoke run). Figures: `docs/performance.md`.

use std::hint::black_box;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use jsonwebtoken::Algorithm;
use tollgate::authn::jwk::VerifyKey;
use tollgate::authn::{jwt, mint};
use tollgate::clock::SystemClock;
use tollgate::pipeline::{self, Deps};
use tollgate::policy::snapshot::Snapshot;
use tollgate::request::{Headers, RequestContext};
use tollgate::store::MemoryStore;

#[path = "support/fixtures.rs"]
mod fixtures;

use fixtures::{Credentials, Fixture};

/// A request as Envoy describes it: the credentials plus the headers a
/// browser or mobile client and Envoy itself add.
fn make_request(host: &str, credentials: &Credentials) -> RequestContext {
    let mut headers = Headers::new();
    headers.push(":authority", host);
    headers.push(":path", fixtures::PATH);
    headers.push(":method", "GET");
    headers.push(":scheme", "https");
    headers.push("user-agent", "bench/1.0");
    headers.push("accept", "application/json");
    headers.push("x-forwarded-proto", "https");
    headers.push("x-request-id", "9b2f6a4e-5c1d-4e2b-8f3a-1d2c3b4a5f6e");
    for (name, value) in credentials.headers() {
        headers.push(name, value);
    }
    RequestContext {
        id: "9b2f6a4e-5c1d-4e2b-8f3a-1d2c3b4a5f6e".into(),
        method: "GET".into(),
        scheme: "https".into(),
        authority: host.into(),
        path: fixtures::PATH.into(),
        headers,
        peer_ip: Some(std::net::IpAddr::from([127, 0, 0, 1])),
        tls: true,
        ..Default::default()
    }
}

fn deps() -> Deps {
    Deps {
        store: Arc::new(MemoryStore::new()),
        clock: Arc::new(SystemClock),
        settings: Default::default(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    }
}

/// Fails the benchmark when a fixture request is not admitted: a denied
/// request takes a shorter path and would flatter the figures.
fn assert_allowed(rt: &tokio::runtime::Runtime, snapshot: &Snapshot, request: &RequestContext) {
    let decision = rt.block_on(pipeline::decide(snapshot, request, &deps()));
    if let Some(deny) = decision.denial() {
        panic!(
            "the benchmark request is denied: {} ({})",
            deny.reason.code(),
            deny.detail
        );
    }
}

fn decide(c: &mut Criterion) {
    let rt = runtime();
    let fixture = Fixture::generate();
    let snapshot = fixture.snapshot(1, 1);
    let deps = deps();
    let credentials = fixture.credentials(0, fixtures::SUBJECT);
    let request = make_request(fixtures::HOST, &credentials);
    assert_allowed(&rt, &snapshot, &request);

    let mut group = c.benchmark_group("decide");
    group.bench_function("cached", |b| {
        b.to_async(&rt)
            .iter(|| pipeline::decide(black_box(&snapshot), black_box(&request), &deps));
    });
    let mut n = 0u64;
    group.bench_function("cold", |b| {
        b.to_async(&rt).iter_batched(
            || {
                n += 1;
                let credentials = fixture.credentials(0, &format!("user-{n}"));
                make_request(fixtures::HOST, &credentials)
            },
            |request| {
                let (snapshot, deps) = (&snapshot, &deps);
                async move { pipeline::decide(snapshot, &request, deps).await }
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let rt = runtime();
    let fixture = Fixture::generate();
    let snapshot = fixture.snapshot(100, 10_000);
    let deps = deps();
    let host = Fixture::host(57);
    let credentials = fixture.credentials(5_000, fixtures::SUBJECT);
    let request = make_request(&host, &credentials);
    assert_allowed(&rt, &snapshot, &request);

    let mut group = c.benchmark_group("lookup");
    group.bench_function("host_index_100_policies", |b| {
        b.iter(|| {
            let id = snapshot.hosts.lookup(black_box(host.as_str()));
            id.and_then(|id| snapshot.policies.get(id)).is_some()
        });
    });
    group.bench_function("decide_cached_100_policies_10k_apps", |b| {
        b.to_async(&rt)
            .iter(|| pipeline::decide(black_box(&snapshot), black_box(&request), &deps));
    });
    group.finish();
}

/// Panics with `what` on an error: benchmark set-up only.
fn must<T, E: std::fmt::Debug>(result: Result<T, E>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

/// A signed token and the key that verifies it, for each algorithm.
fn verify_cases() -> Vec<(Algorithm, String, VerifyKey)> {
    let claims = serde_json::json!({"iss": "https://id.example/", "sub": "alice",
        "aud": "bikes-api", "exp": 4_000_000_000u64, "scope": "read rent"});
    let mut cases = Vec::new();
    let rsa_pem = include_str!("../tests/fixtures/authn/rsa-2048-a.pem");
    for alg in [
        Algorithm::ES256,
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::EdDSA,
    ] {
        let key = must(
            match alg {
                Algorithm::RS256 | Algorithm::PS256 => {
                    mint::SigningKey::from_pem(alg, "k", rsa_pem)
                }
                _ => mint::SigningKey::generate(alg, "k"),
            },
            "key",
        );
        let token = must(key.sign(None, &claims), "sign");
        let verify = must(VerifyKey::from_jwk(&key.public_jwk(), false), "jwk");
        cases.push((alg, token, verify));
    }
    {
        use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let alg = &ECDSA_P384_SHA384_FIXED_SIGNING;
        let pkcs8 = must(EcdsaKeyPair::generate_pkcs8(alg, &rng), "P-384 key");
        let pair = must(
            EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng),
            "P-384 key",
        );
        let point = pair.public_key().as_ref();
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-384",
            "x": b64(&point[1..49]), "y": b64(&point[49..])});
        let encoding = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
        let header = serde_json::json!({"alg": "ES384"});
        let token = must(
            mint::sign_with(&header, &claims, &encoding, Algorithm::ES384),
            "sign",
        );
        let verify = must(VerifyKey::from_jwk(&jwk, false), "jwk");
        cases.push((Algorithm::ES384, token, verify));
    }
    let secret = [7u8; 32];
    let token = must(
        mint::sign_hmac(Algorithm::HS256, &secret, None, &claims),
        "sign",
    );
    let verify = must(VerifyKey::hmac(&secret, None), "secret");
    cases.push((Algorithm::HS256, token, verify));
    cases
}

fn verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    for (alg, token, key) in verify_cases() {
        let jwt = must(jwt::parse(&token), "parse");
        assert!(key.verify(&jwt, alg), "{alg:?} does not verify");
        group.bench_function(mint::algorithm_name(alg), |b| {
            b.iter(|| key.verify(black_box(&jwt), alg));
        });
    }
    group.finish();
}

criterion_group!(benches, decide, lookup, verify);
criterion_main!(benches);
