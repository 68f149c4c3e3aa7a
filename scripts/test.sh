#!/usr/bin/env bash
# THE test command (README, .ci/run): installs what is missing, then checks
# formatting, lints, generated files, and runs the whole test suite.
# Exits non-zero on any failure; the test runner's summary is the last
# thing printed.
set -euo pipefail

cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "setup (scripts/setup.sh)"
bash scripts/setup.sh

# In CI the committed Cargo.lock must be complete and is used as is.
cargo_flags=()
nextest_profile=default
if [[ "${CI:-}" == "true" ]]; then
  cargo_flags+=(--locked)
  nextest_profile=ci
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy "${cargo_flags[@]}" --workspace --all-targets -- -D warnings

# The CRDs are generated from the Rust types; the committed copy must match.
step "deploy/crds matches \`tollgate crds\`"
generated="$(mktemp)"
trap 'rm -f "$generated"' EXIT
cargo run "${cargo_flags[@]}" --quiet --bin tollgate -- crds >"$generated"
if ! diff -u deploy/crds/tollgate.dev.yaml "$generated" >&2; then
  echo "deploy/crds/tollgate.dev.yaml is stale: regenerate it with \`cargo run -- crds -o deploy/crds/tollgate.dev.yaml\`" \
    "and copy it into the Helm chart (cp deploy/crds/tollgate.dev.yaml charts/tollgate/crds/; tests/chart.rs compares them)" >&2
  exit 1
fi

# The benchmarks run shortened so they cannot rot: a smoke run that checks
# they complete and print their figures, never a pass/fail on the figures.
step "benchmark smoke run (bench/load.sh --quick; criterion --test)"
bash bench/load.sh --quick
cargo bench "${cargo_flags[@]}" --bench decide --bench compile --bench check -- --test

step "cargo nextest run --workspace --no-fail-fast (profile $nextest_profile)"
exec cargo nextest run "${cargo_flags[@]}" --workspace --no-fail-fast --profile "$nextest_profile"
