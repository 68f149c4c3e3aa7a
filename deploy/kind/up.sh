#!/usr/bin/env bash
# tollgate on a local kind cluster, from source to a decided request:
#
#   1. builds the image from the repository's Dockerfile (tollgate:dev);
#   2. creates the kind cluster `tollgate` (kept if it exists) and loads
#      the image into it;
#   3. installs charts/tollgate as release `tollgate` in namespace
#      `tollgate` (one server with the in-memory store, the operator);
#   4. applies deploy/examples/quickstart.yaml (namespace `mobility`) and
#      an edge Envoy (deploy/kind/envoy.yaml) in front of a stand-in API;
#   5. sends requests through Envoy with curl: with the app's API key
#      (200), without it (401).
#
# Needs docker, kind, kubectl, helm and curl. For users with Docker: it is
# not run in CI here (no container engine); the test suite runs the same
# chart, example and Envoy configuration against a real kube-apiserver and
# Envoy without a cluster (tests/chart.rs).
#
# Usage: deploy/kind/up.sh          set up (again) and try it
#        deploy/kind/up.sh --down   delete the kind cluster
set -euo pipefail

cd "$(dirname "$0")/../.."
CLUSTER="${TOLLGATE_KIND_CLUSTER:-tollgate}"
IMAGE_REPOSITORY="tollgate"
IMAGE_TAG="dev"
KEY="k3Jd9sQ2mX8vL5pR7tY1wZ4nB6cF0gHa"   # deploy/examples/quickstart.yaml

log() { printf '\n==> %s\n' "$*" >&2; }

for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null || { echo "up.sh needs $tool on PATH" >&2; exit 1; }
done

if [[ "${1:-}" == "--down" ]]; then
  kind delete cluster --name "$CLUSTER"
  exit 0
fi

log "docker build -t $IMAGE_REPOSITORY:$IMAGE_TAG ."
docker build -t "$IMAGE_REPOSITORY:$IMAGE_TAG" .

if ! kind get clusters | grep -qx "$CLUSTER"; then
  log "kind create cluster --name $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null
log "kind load docker-image $IMAGE_REPOSITORY:$IMAGE_TAG"
kind load docker-image "$IMAGE_REPOSITORY:$IMAGE_TAG" --name "$CLUSTER"

log "helm upgrade --install tollgate charts/tollgate"
# The CRDs first: Helm installs crds/ only on the first install.
kubectl apply --server-side -f charts/tollgate/crds/tollgate.dev.yaml
helm upgrade --install tollgate charts/tollgate \
  --namespace tollgate --create-namespace \
  --set image.repository="$IMAGE_REPOSITORY" \
  --set image.tag="$IMAGE_TAG" \
  --set image.pullPolicy=Never

log "the quickstart policy, app and labelled Secret; the edge Envoy"
kubectl create namespace mobility --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f deploy/examples/quickstart.yaml
kubectl -n mobility create configmap edge-envoy \
  --from-file=envoy.yaml=deploy/kind/envoy.yaml --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f deploy/kind/envoy-deployment.yaml
# A changed configuration needs a new pod.
kubectl -n mobility rollout restart deployment/edge-envoy

log "waiting for tollgate and Envoy"
kubectl -n tollgate rollout status deployment/tollgate --timeout=180s
kubectl -n tollgate rollout status deployment/tollgate-operator --timeout=180s
kubectl -n mobility rollout status deployment/edge-envoy --timeout=180s

log "kubectl get apipolicies,appregistrations -n mobility"
kubectl get apipolicies,appregistrations -n mobility

port=18080
kubectl -n mobility port-forward service/edge-envoy "$port:80" >/dev/null 2>&1 &
forward=$!
trap 'kill "$forward" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break
  sleep 0.2
done

log "with the app's API key (expect 200, x-upstream-saw-app: commuter-ios)"
curl -si "http://127.0.0.1:$port/v1/bikes" -H "host: api.bikes.example" -H "x-api-key: $KEY"
log "without it (expect 401 app_credential_missing)"
curl -si "http://127.0.0.1:$port/v1/bikes" -H "host: api.bikes.example"
echo
log "done: the cluster stays up (deploy/kind/up.sh --down deletes it)"
