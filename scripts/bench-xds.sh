#!/usr/bin/env bash
# The xDS scale benchmark (BENCHMARKS.md): meshd-load against a real meshd, in a private network
# namespace (only loopback) so ports never clash and nothing leaves the machine.
#   scripts/bench-xds.sh                     # S=1000, P=2000, SotW
#   scripts/bench-xds.sh --proxies 10000     # any meshd-load flag
# Build first: cargo build --release --bin meshd --bin meshd-load (or set TARGET_DIR/PROFILE).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-target/release}"
ulimit -n 1048576 2>/dev/null || ulimit -n 65536 || true
exec unshare -n sh -c "ip link set lo up && exec '$BIN/meshd-load' --meshd '$BIN/meshd' $*"
