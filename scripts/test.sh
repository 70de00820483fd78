#!/usr/bin/env bash
# The one command that runs every test: tools, the meshd binary (the end-to-end tests run it),
# then the whole workspace. Tests create network namespaces and iptables rules: run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: the tests need root (network namespaces, iptables)" >&2
  exit 1
fi

scripts/install-tools.sh
# The end-to-end tests find target/<profile>/meshd next to their own executable (or MESHD_BIN).
cargo build --bin meshd
cargo test --workspace "$@"
