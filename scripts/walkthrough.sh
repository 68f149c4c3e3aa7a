#!/usr/bin/env bash
# The README walkthrough, runnable: mint development credentials with
# `tollgate token` and ask `tollgate check` what the bike-sharing policy
# (deploy/examples/bikes-dev.yaml) decides for a few requests.
#
#   bash scripts/walkthrough.sh            # builds tollgate with cargo
#   TOLLGATE=path/to/tollgate bash scripts/walkthrough.sh
#
# Exits non-zero when a decision is not the one the walkthrough expects
# (tests/walkthrough.rs runs it in the test suite).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${TOLLGATE:-}" ]]; then
  cargo build --quiet --bin tollgate
  TOLLGATE="${CARGO_TARGET_DIR:-target}/debug/tollgate"
fi
tollgate() { "$TOLLGATE" "$@"; }

dev="$(mktemp -d)"
trap 'rm -rf "$dev"' EXIT

# 1. A signing key for a development identity provider, and its JWKS
#    published in a Secret the policy reads (a second --policy-file).
tollgate token keygen --alg ES256 --out-dir "$dev" >/dev/null
{
  printf 'apiVersion: v1\nkind: Secret\nmetadata: { name: dev-idp, namespace: mobility }\n'
  printf 'stringData:\n  jwks: |\n'
  sed 's/^/    /' "$dev/jwks.json"
} >"$dev/idp.yaml"

# 2. A user access token, and an app attestation token whose `pay` claim
#    binds it to that exact Authorization header. The attestation secret and
#    the API key are the example values in bikes-dev.yaml.
user_token="$(tollgate token user --key "$dev/key.pem" \
  --issuer https://id.dev.example/ --audience bikes-api --subject alice --scope rent)"
authorization="Bearer $user_token"
app_token="$(tollgate token app --secret TcCgqGFgVkO6lrp3N6kzqfjP2Cunz3mKTXZLX1+J4Wk= \
  --authorization "$authorization" --device phone-42)"
api_key=3bca3f980e32da13444cde3eadb8854e

check() {
  local expect="$1"
  shift
  echo "\$ tollgate check --source-ip 198.51.100.7 $*" | sed -E 's/eyJ[A-Za-z0-9._-]+/<token>/g'
  local status=0
  tollgate check --policy-file "$dev/idp.yaml" --policy-file deploy/examples/bikes-dev.yaml \
    --source-ip 198.51.100.7 "$@" || status=$?
  echo
  if [[ "$status" != "$expect" ]]; then
    echo "walkthrough: expected exit status $expect, got $status" >&2
    exit 1
  fi
}

# 3. All three credentials: allowed, with the identity headers for upstream.
check 0 --url 'https://api.bikes.example/v1/search?q=station' \
  -H "authorization: $authorization" -H "x-api-key: $api_key" -H "approov-token: $app_token"

# 4. The same app token with another user's token: the binding fails.
other_token="$(tollgate token user --key "$dev/key.pem" \
  --issuer https://id.dev.example/ --audience bikes-api --subject mallory)"
check 1 --url https://api.bikes.example/v1/search \
  -H "authorization: Bearer $other_token" -H "x-api-key: $api_key" -H "approov-token: $app_token"

# 5. No app token at all, and plain HTTP: each gets its own reason.
check 1 --url https://api.bikes.example/v1/search \
  -H "authorization: $authorization" -H "x-api-key: $api_key"
check 1 --url http://api.bikes.example/v1/search \
  -H "authorization: $authorization" -H "x-api-key: $api_key" -H "approov-token: $app_token"

# 6. The public health route needs nothing.
check 0 --url https://api.bikes.example/healthz
