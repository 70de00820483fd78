#!/usr/bin/env bash
# Regenerate xds/descriptors/envoy.bin: a protobuf FileDescriptorSet for
# every envoy/** .proto shipped by the `envoy-types` crate (plus their imports:
# udpa/xds/validate/cel/googleapis and google/protobuf well-known types).
#
# meshd-xds embeds this file (include_bytes!) so it can render any xDS resource
# (an `Any`) as proto3 JSON for /debug/config_dump and `meshd proxy-config`.
# The file is checked in; the build never needs protoc. Re-run this script
# whenever the envoy-types version in Cargo.toml changes, and commit the result.
#
# Needs: python3 (a venv with grpcio-tools is created under ~/.cache/meshd/),
# cargo (to locate the envoy-types sources), network access to PyPI once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/xds/descriptors/envoy.bin"
VENV="${MESHD_GRPC_VENV:-$HOME/.cache/meshd/grpc-venv}"
GRPCIO_TOOLS_VERSION="${GRPCIO_TOOLS_VERSION:-1.85.1}"

# 1. protoc, via grpcio-tools in a private venv.
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import grpc_tools' 2>/dev/null; then
    echo "creating venv with grpcio-tools==$GRPCIO_TOOLS_VERSION in $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "grpcio-tools==$GRPCIO_TOOLS_VERSION"
fi
PY="$VENV/bin/python"
WKT_INCLUDE="$("$PY" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"

# 2. The envoy-types proto tree, at the version Cargo.lock resolves.
cd "$ROOT"
ENVOY_TYPES_DIR="$(cargo metadata --format-version 1 | "$PY" -c '
import json, os, sys
meta = json.load(sys.stdin)
pkgs = [p for p in meta["packages"] if p["name"] == "envoy-types"]
if len(pkgs) != 1:
    sys.exit("expected exactly one envoy-types package, found %d" % len(pkgs))
print(os.path.dirname(pkgs[0]["manifest_path"]))
')"
PROTO="$ENVOY_TYPES_DIR/proto"
[[ -d "$PROTO/data-plane-api/envoy" ]] || { echo "no envoy protos under $PROTO" >&2; exit 1; }
echo "envoy-types protos: $PROTO" >&2

# 3. Compile every envoy/** proto into one self-contained descriptor set.
cd "$PROTO/data-plane-api"
mapfile -t FILES < <(find envoy -name '*.proto' | LC_ALL=C sort)
mkdir -p "$(dirname "$OUT")"
"$PY" -m grpc_tools.protoc \
    -I . \
    -I ../xds \
    -I ../protoc-gen-validate \
    -I ../cel-spec/proto \
    -I ../googleapis \
    -I ../opentelemetry-proto \
    -I ../client_model \
    -I ../ratelimit/api \
    -I "$WKT_INCLUDE" \
    --include_imports \
    --descriptor_set_out="$OUT" \
    "${FILES[@]}"

SIZE="$(wc -c <"$OUT")"
echo "wrote $OUT: ${#FILES[@]} envoy protos (+ imports), $SIZE bytes" >&2
if ((SIZE > 8 * 1024 * 1024)); then
    echo "warning: descriptor set exceeds 8 MB; prune the file list" >&2
fi
