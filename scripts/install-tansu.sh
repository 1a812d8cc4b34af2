#!/usr/bin/env bash
# Installs tansu, the Kafka-protocol broker the event-trigger tests run against
# (crates.io; ~15 minutes to build on 2 cores). Skips the build when it is installed.
set -euo pipefail
if command -v tansu >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/tansu" ]; then
  exit 0
fi
cargo install tansu --locked --features dynostore
