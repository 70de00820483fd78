#!/usr/bin/env bash
# The data-plane cost benchmark (issue 18, "Cost stays small"; figures in BENCHMARKS.md): in
# network-namespace pods on this machine, stock Envoy sidecars driven by a real `meshd serve`
# (mTLS STRICT, default telemetry on; and again with telemetry off through the Telemetry API)
# beside a hand-written minimal static Envoy pair (mTLS, no access log, no stats sinks), the same
# `wrk -c 16 -t 2 --latency` load through the client sidecar, variants alternating round by
# round. Prints median requests/s, p50/p99, the meshd/minimal ratios and meshd's CPU and RSS per
# 1000 req/s; exits non-zero if a variant served a non-2xx answer or no request.
#   scripts/bench-dataplane.sh                              # 5 rounds x 10 s per variant
#   scripts/bench-dataplane.sh --rounds 9 --round-secs 20   # any meshd-load --dataplane flag:
#     --connections N --wrk-threads N --skip-telemetry-off --wrk PATH --work-dir DIR
#   scripts/bench-dataplane.sh --floor      # the minimal pair plus each part of meshd's config
#   scripts/bench-dataplane.sh --log-paths  # the minimal pair plus each per-request telemetry path
#   scripts/bench-dataplane.sh --dump-configs DIR   # each variant's Envoy /config_dump into DIR
# Needs root, wrk (apt-get install wrk; scripts/install-tools.sh installs it) and Envoy
# (scripts/install-tools.sh). Build first: cargo build --release --bin meshd --bin meshd-load
# (or BIN=target/debug). Run it on a quiet machine: other load skews the ratios (check uptime).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-target/release}"
MESHD="${MESHD:-$BIN/meshd}"
if [ -z "${ENVOY_BIN:-}" ]; then
  ENVOY_BIN="$("$MESHD" envoy-path)"
  export ENVOY_BIN
fi
echo "bench-dataplane: $(date -u +%FT%TZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), meshd $MESHD"
exec "$BIN/meshd-load" --dataplane --meshd "$MESHD" "$@"
