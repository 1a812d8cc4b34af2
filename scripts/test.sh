#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite under cargo-nextest: unit tests,
# integration tests against the real binary and real functions (HTTP and Dapr
# AppCallback gRPC), the OpenFunction samples, the Gateway API conformance runner (its
# table is printed as it passes), the committed corpus inputs replayed on stable Rust
# (tests/fuzz_corpus.rs), and the event triggers against real brokers: NATS JetStream,
# Mosquitto and tansu, a Kafka-protocol broker (installed once; the tests start it). Each test has a deadline
# (.config/nextest.toml); the heavy ones run one at a time. Ends with each stage's time.
# No nightly toolchain and no live fuzzing here: that is its own command, as are the
# benchmarks (docs/testing.md, docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."

stages=()
started=$SECONDS
report() {
  local status=$?
  echo
  echo "test.sh stages (wall time):"
  for s in "${stages[@]}"; do echo "  $s"; done
  printf '  %-34s %s\n' "total" "$(clock $((SECONDS - started)))"
  [ "$status" -eq 0 ] || echo "test.sh: failed (exit $status)"
}
trap report EXIT
clock() { printf '%d:%02d' $(($1 / 60)) $(($1 % 60)); }
stage() {
  local name=$1 t0=$SECONDS
  shift
  "$@"
  stages+=("$(printf '%-34s %s' "$name" "$(clock $((SECONDS - t0)))")")
}
nextest() {
  if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
  fi
}

stage "apt packages (scripts/setup.sh)" scripts/setup.sh
stage "services (scripts/services.sh)" scripts/services.sh
stage "cargo-nextest" nextest
stage "tansu (scripts/install-tansu.sh)" scripts/install-tansu.sh
stage "build (tests, examples)" cargo nextest run --locked --no-run
stage "tests (cargo nextest run)" cargo nextest run --locked
