#!/usr/bin/env bash
# Runs every cargo-fuzz target under fuzz/ for a bounded time each (FUZZ_SECONDS, default 60);
# fails on the first crash, leaving the input in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                 # every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh csr_parse
#
# cargo-fuzz is installed once into ~/.cache/meshd/cargo-fuzz. It needs nightly-only rustc
# flags (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the pinned stable toolchain accept them. The
# corpus grows in ~/.cache/meshd/fuzz-corpus/<target> across runs, seeded from fuzz/seeds/.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${FUZZ_SECONDS:-60}"
CACHE="${MESHD_CACHE:-$HOME/.cache/meshd}"
FUZZ_ROOT="$CACHE/cargo-fuzz"
CARGO_FUZZ_VERSION=0.13.2

log() { echo "fuzz: $*"; }

export PATH="$FUZZ_ROOT/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION into $FUZZ_ROOT"
  cargo install --quiet --locked --root "$FUZZ_ROOT" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

export RUSTC_BOOTSTRAP=1
# The vendored h2 is a path dependency, so cargo does not cap its lints, and under cargo-fuzz's
# `--cfg fuzzing` it compiles its own fuzz bridge, which its `deny(missing_docs)` rejects.
export RUSTFLAGS="${RUSTFLAGS:-} --cap-lints warn"
# Keep the fuzz build out of the workspace's target dir (different flags, different artifacts).
export CARGO_TARGET_DIR="${MESHD_FUZZ_TARGET_DIR:-$CACHE/fuzz-target}"

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  # A failing `cargo fuzz list` (a broken fuzz/Cargo.toml) or an empty one must fail the run,
  # not pass it with nothing fuzzed.
  if ! listed="$(cargo fuzz list)"; then
    log "cargo fuzz list failed"
    exit 1
  fi
  mapfile -t targets < <(printf '%s\n' "$listed" | sed '/^[[:space:]]*$/d')
  if [ "${#targets[@]}" -eq 0 ]; then
    log "no fuzz targets found under fuzz/"
    exit 1
  fi
fi

for t in "${targets[@]}"; do
  corpus="$CACHE/fuzz-corpus/$t"
  mkdir -p "$corpus"
  log "$t: ${SECS}s"
  seeds=()
  if [ -d "fuzz/seeds/$t" ]; then seeds=("fuzz/seeds/$t"); fi
  cargo fuzz run "$t" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
done
log "no crash in ${#targets[@]} target(s)"
