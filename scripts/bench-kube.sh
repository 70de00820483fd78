#!/usr/bin/env bash
# Kubernetes-mode scale (BENCHMARKS.md, issue 19): a real kube-apiserver (scripts/kube-apiserver.sh)
# and meshd-load --kube against it, in a private network namespace (only loopback).
#   scripts/bench-kube.sh                          # S=1000 Services, 10 000 Pods
#   scripts/bench-kube.sh --churn 100 --churn-seconds 30
# Build first: cargo build --release --bin meshd --bin meshd-load (or set BIN).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-target/release}"
scripts/kube-apiserver.sh install >/dev/null
DIR="$(mktemp -d /tmp/meshd-bench-kube.XXXXXX)"
trap 'rm -rf "$DIR"' EXIT
ulimit -n 1048576 2>/dev/null || ulimit -n 65536 || true
unshare -n sh -c "ip link set lo up \
  && scripts/kube-apiserver.sh start '$DIR' 26443 \
  && KUBECONFIG='$DIR/kubeconfig' '$BIN/meshd-load' --meshd '$BIN/meshd' --kube --work-dir '$DIR/work' $*; \
  rc=\$?; scripts/kube-apiserver.sh stop '$DIR'; exit \$rc"
