#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite: unit tests, integration tests
# against the real binary and real HTTP functions, the OpenFunction samples and the
# Gateway API conformance runner (its per-suite table is printed first), and the event
# triggers against real brokers: NATS JetStream (started if down) and tansu, a
# Kafka-protocol broker (installed once, ~15 minutes; the tests start it themselves). Then
# every fuzz target for FUZZ_SECONDS (default 60) on its committed corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/install-tansu.sh
scripts/services.sh
cargo build --locked --all-targets
cargo test --locked --test conformance -- --nocapture
cargo test --locked
scripts/fuzz.sh
