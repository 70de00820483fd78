#!/usr/bin/env bash
# The edit-loop tier: every test that needs no root, no network namespace, no Envoy, no
# kube-apiserver and no network beyond loopback ports the tests bind themselves. Unit tests of
# every crate plus the in-process integration tests (ADS protocol, CA API, webhook, a fake API
# server). Runs as any user; under a minute once built.
#
#   scripts/test-fast.sh            # all of the tier
#   scripts/test-fast.sh some_name  # a filter, passed to every test binary
#
# The full suite (root: network-namespace pods with stock Envoy, the real kube-apiserver, the
# load-tool smokes, the chart) is scripts/test.sh, which runs this tier too.
set -euo pipefail
cd "$(dirname "$0")/.."

# ARCHITECTURE.md names only paths, functions and types that exist.
scripts/check-architecture.sh
# Imports run one way: crate layers as ARCHITECTURE.md says, no module import circles.
python3 scripts/check-layers.py --self-test
python3 scripts/check-layers.py

# Pure crates: no I/O beyond temp dirs (the model with its CRD schemas, as meshd builds it).
cargo test -p meshd-model --features meshd-model/schema -p meshd-ca -p meshd-xds -p meshd-ads -p meshd-injector -p meshd-loadgen \
  --lib --bins --tests -- "$@"

# The control plane in-process on 127.0.0.1:0 (control-plane/tests/in_process/, one binary).
cargo test -p meshd --lib --bins --test in_process -- "$@"

# The local-mesh harness less its podnet tests, which build network namespaces (root) and run in
# scripts/test.sh; not_in_production checks the image's meshd has no harness in it.
cargo test -p meshd-localmesh --lib --bins --test not_in_production -- --skip podnet:: "$@"
