//! Loading 100 ApiPolicies and 10,000 AppRegistrations (each app with its
//! own Secret holding its API key; 21 files, since a policy file holds at
//! most 1,024 documents): parsing the YAML documents, and
//! compiling them into the runtime snapshot. Before the timed runs it
//! prints the resident memory of this process with the snapshot loaded
//! (the server's own figure comes from the load benchmark, which starts
//! `tollgate serve` with the same file).
//!
//! `cargo bench --bench compile`; `-- --test` runs each once.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::policy::compile;

#[path = "support/fixtures.rs"]
mod fixtures;

const POLICIES: usize = 100;
const APPS: usize = 10_000;

fn load(c: &mut Criterion) {
    let fixture = fixtures::Fixture::generate();
    let before = fixtures::rss_kib(None);
    let files = fixture.policy_files(POLICIES, APPS);
    let bytes: usize = files.iter().map(String::len).sum();
    let started = Instant::now();
    let docs = fixtures::parse(&files);
    let parsed = started.elapsed();
    let started = Instant::now();
    let snapshot = match compile::compile(&docs, 1) {
        Ok(snapshot) => snapshot,
        Err(e) => panic!("benchmark policy does not compile: {e}"),
    };
    let compiled = started.elapsed();
    drop(docs);
    let after = fixtures::rss_kib(None);
    println!(
        "load {POLICIES} policies + {APPS} apps ({} KiB of YAML in {} files): parse {parsed:.2?}, compile {compiled:.2?}; \
         resident memory {:.1} MiB with the snapshot loaded ({:+.1} MiB for it; this process, \
         before criterion's own allocations)",
        bytes / 1024,
        files.len(),
        after as f64 / 1024.0,
        (after as f64 - before as f64) / 1024.0,
    );
    assert_eq!(snapshot.policies.len(), POLICIES);
    assert_eq!(snapshot.apps.len(), APPS);
    drop(snapshot);

    let mut group = c.benchmark_group("load_100_policies_10k_apps");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("parse_yaml", |b| {
        b.iter(|| fixtures::parse(black_box(&files)).len());
    });
    let docs = fixtures::parse(&files);
    group.bench_function("compile", |b| {
        b.iter(|| compile::compile(black_box(&docs), 1).map(|s| s.apps.len()));
    });
    group.finish();
}

criterion_group!(benches, load);
criterion_main!(benches);
