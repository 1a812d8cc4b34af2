#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets, libFuzzer through cargo fuzz on the nightly
# toolchain) for FUZZ_SECONDS each (default 60), starting from the committed corpus in
# fuzz/corpus/<target>. New inputs go to a scratch copy (target/fuzz-corpus/<target>);
# `FUZZ_KEEP=1` merges them back into the committed corpus. A crash fails the run and
# leaves its input in fuzz/artifacts/<target>/ — turn it into a regression test. Each
# target's check is fuzz/checks/<target>.rs, which `cargo test` (tests/fuzz_corpus.rs)
# also replays over the committed corpus. dapr_http needs Redis (scripts/services.sh).
#   scripts/fuzz.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(catalog broker_event dapr_http dapr_grpc http_head)
# No sanitizer: the code under test is safe Rust (its C dependencies are not reached from
# these inputs); debug assertions on, so an overflow is a crash too.
flags=(--sanitizer none --debug-assertions)
cargo +nightly fuzz build "${flags[@]}"
for t in "${targets[@]}"; do
  scratch="target/fuzz-corpus/$t"
  mkdir -p "$scratch" "fuzz/corpus/$t"
  echo "fuzz: $t for ${seconds}s"
  log="target/fuzz-corpus/$t.log"
  status=0
  cargo +nightly fuzz run "${flags[@]}" "$t" "$scratch" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  grep -E "^stat::(number_of_executed_units|new_units_added)|panicked|^==[0-9]+== ERROR|SUMMARY|Test unit written" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz: $t found a failing input (fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  if [ "${FUZZ_KEEP:-0}" = 1 ]; then
    cargo +nightly fuzz cmin "${flags[@]}" "$t" "$scratch" >/dev/null 2>&1 || true
    cp -n "$scratch"/* "fuzz/corpus/$t/" 2>/dev/null || true
  fi
done
