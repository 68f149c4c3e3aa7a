#!/usr/bin/env bash
# Builds promtool (Prometheus's rule checker) from its Go module, once per
# machine, into a cache outside the repository:
#
#   promtool  github.com/prometheus/prometheus/cmd/promtool
#             (tests/promtool: a `tool` module pinning the version)
#
# tests/observability.rs runs `promtool check rules` on the alerting rules
# and on every PromQL query of the Grafana dashboard, and `promtool test
# rules` on the alerts' unit tests. Built with the `remove_all_sd` tag: the
# service discoveries (cloud SDKs) are what promtool's checks never use and
# most of what a build compiles.
#
# Usage: scripts/promtool.sh           build when missing, print the binary's path
#        scripts/promtool.sh --check   exit 1 when it is not built
#
# Needs Go >= 1.26: scripts/go.sh finds one or installs it into .venv/. TOLLGATE_PROMTOOL_CACHE overrides the
# cache root (~/.cache/tollgate/promtool).
set -euo pipefail

cd "$(dirname "$0")/.."

PROMETHEUS_VERSION="v0.316.0"   # the Go module version of Prometheus 3.16.0

log() { printf 'promtool: %s\n' "$*" >&2; }

digest="$(cat tests/promtool/go.mod tests/promtool/go.sum "$0" | sha256sum | cut -c1-12)"
cache_root="${TOLLGATE_PROMTOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/promtool}"
dir="$cache_root/$PROMETHEUS_VERSION-$digest"
bin="$dir/promtool"

if [[ -x "$bin" && -f "$dir/.complete" ]]; then
  echo "$bin"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  log "not built: run scripts/promtool.sh (builds into $dir)"
  exit 1
fi

go="$(bash scripts/go.sh)"

mkdir -p "$dir"
staging="$(mktemp -d "$dir/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -trimpath"
start=$SECONDS
log "go build promtool $PROMETHEUS_VERSION (module tests/promtool) with $("$go" env GOVERSION)"
( cd tests/promtool && "$go" build -tags remove_all_sd -ldflags "-s -w \
    -X github.com/prometheus/common/version.Version=3.${PROMETHEUS_VERSION#v0.3} " \
    -o "$staging/promtool" github.com/prometheus/prometheus/cmd/promtool )
"$staging/promtool" --version >&2
mv "$staging/promtool" "$bin"
echo "promtool $PROMETHEUS_VERSION built in $((SECONDS - start)) s" >"$dir/.complete"
log "built in $((SECONDS - start)) s into $dir"
echo "$bin"
