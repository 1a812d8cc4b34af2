#!/usr/bin/env bash
# Installs tansu, the Kafka-protocol broker the event-trigger tests run against
# (crates.io; ~15 minutes to build on 2 cores), with in-memory and SQLite storage
# (the broker-restart test keeps its data in an SQLite file). Skips the build when this
# build of it is already installed.
set -euo pipefail
FEATURES="dynostore,libsql"
MARKER="$HOME/.cargo/tansu.features"
if [ -x "$HOME/.cargo/bin/tansu" ] && [ "$(cat "$MARKER" 2>/dev/null)" = "$FEATURES" ]; then
  exit 0
fi
cargo install tansu --locked --features "$FEATURES" --force
echo "$FEATURES" > "$MARKER"
