#!/usr/bin/env bash
# Runs every cargo-fuzz target under fuzz/ for a bounded time each (FUZZ_SECONDS, default 60),
# as many at once as there are cores (FUZZ_JOBS); fails when any crashes, leaving the input in
# fuzz/artifacts/<target>/.
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

# One build for every target, then the targets' own binaries: `cargo fuzz run` per target would
# re-link the crate each time. Release codegen in 16 units instead of cargo-fuzz's 1: on CI's two
# cores the build is the longest step of the run, and 20 s of fuzzing gains little from the
# single unit's faster code.
if [ "$#" -eq 0 ]; then
  cargo fuzz build --codegen-units 16
else
  for t in "${targets[@]}"; do cargo fuzz build --codegen-units 16 "$t"; done
fi
bin_dir="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

fuzz_one() {
  local t="$1" corpus="$CACHE/fuzz-corpus/$1" seeds=()
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  if [ -d "fuzz/seeds/$t" ]; then seeds=("fuzz/seeds/$t"); fi
  "$bin_dir/$t" -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$SECS" \
    -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "$corpus" "${seeds[@]}" \
    >"$logs/$t.log" 2>&1
}

# As many targets at once as there are cores: each is one single-threaded libFuzzer process.
jobs_max="${FUZZ_JOBS:-$(nproc)}"
declare -A running=()
failed=()
reap() {
  local pid t
  for pid in "${!running[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      t="${running[$pid]}"
      unset "running[$pid]"
      if wait "$pid"; then
        log "$t: $(grep -E '^Done [0-9]+ runs' "$logs/$t.log" | tail -1)"
      else
        log "$t: FAILED"
        cat "$logs/$t.log"
        failed+=("$t")
      fi
    fi
  done
}
for t in "${targets[@]}"; do
  while [ "${#running[@]}" -ge "$jobs_max" ]; do
    sleep 0.5
    reap
  done
  log "$t: ${SECS}s"
  fuzz_one "$t" &
  running[$!]="$t"
done
while [ "${#running[@]}" -gt 0 ]; do
  sleep 0.5
  reap
done
if [ "${#failed[@]}" -gt 0 ]; then
  log "crash or error in: ${failed[*]} (inputs under fuzz/artifacts/)"
  exit 1
fi
log "no crash in ${#targets[@]} target(s)"
