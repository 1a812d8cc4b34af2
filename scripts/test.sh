#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite: unit tests, integration tests
# against the real binary and real HTTP functions, the OpenFunction samples and the
# Gateway API conformance runner (its per-suite table is printed first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --locked --all-targets
cargo test --locked --test conformance -- --nocapture
cargo test --locked
