#!/usr/bin/env bash
# `make fuzz`: coverage-guided fuzzing (libFuzzer through cargo-fuzz, nightly) of the MQTT
# codec and of the connection's state machines (fuzz/). Not part of `make test`: it runs
# RUNS inputs per target (default 5 000 000) and prints how many each executed.
#   make fuzz                 RUNS=10000000 make fuzz            TARGETS="codec" make fuzz
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS="${RUNS:-5000000}"
TARGETS="${TARGETS:-codec session_machine}"
command -v rustup >/dev/null || { echo "[fuzz] rustup is needed (for the nightly toolchain)" >&2; exit 1; }
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
corpus_root="${MQTT_KAFKA_STATE:-.local}/fuzz"
for target in $TARGETS; do
  mkdir -p "$corpus_root/$target"
  log="$corpus_root/$target.log"
  echo "[fuzz] $target: $RUNS inputs (corpus $corpus_root/$target, log $log)"
  start=$SECONDS
  (cd fuzz && cargo +nightly fuzz run -O "$target" "../$corpus_root/$target" -- \
      -runs="$RUNS" -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1) > "$log" 2>&1 || {
    tail -40 "$log" >&2; echo "[fuzz] $target FAILED (crash input under fuzz/artifacts/$target)" >&2; exit 1; }
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  peak=$(grep -oE 'stat::peak_rss_mb: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 || true)
  echo "[fuzz] $target: $execs inputs executed in $((SECONDS - start)) s, no crash, peak RSS ${peak} MB, ${cov}"
done
