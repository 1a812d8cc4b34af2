#!/usr/bin/env bash
# Installs tansu, the Kafka-protocol broker the event-trigger tests run against
# (crates.io), with in-memory and SQLite storage (the broker-restart test keeps its data in
# an SQLite file).
#
#   scripts/install-tansu.sh            for the tests: unoptimised, no debug info
#   scripts/install-tansu.sh --release  for the benchmarks (the broker is their peer)
#
# The tests' build takes 316 s of CPU on 2 cores against 746 s at opt-level 1 and about
# 15 minutes of wall time for the release build, and the Kafka tests take the same time
# on it (docs/testing.md). The marker records version, features and profile: a changed
# choice rebuilds, a release build serves the tests too.
set -euo pipefail
VERSION="0.6.0"
FEATURES="dynostore,libsql"
MARKER="$HOME/.cargo/tansu.build"
build() { echo "tansu $VERSION features=$FEATURES profile=$1"; }
installed="$(cat "$MARKER" 2>/dev/null || true)"
if [ "${1:-}" = "--release" ]; then
  accepted=("$(build release)")
  profile=release
else
  accepted=("$(build dev,debug=0)" "$(build release)")
  profile="dev,debug=0"
fi
if [ -x "$HOME/.cargo/bin/tansu" ]; then
  for a in "${accepted[@]}"; do
    [ "$installed" = "$a" ] && exit 0
  done
fi
if [ "$profile" = release ]; then
  cargo install tansu --version "$VERSION" --locked --features "$FEATURES" --force
else
  CARGO_PROFILE_DEV_DEBUG=0 \
    cargo install tansu --version "$VERSION" --locked --features "$FEATURES" --debug --force
fi
build "$profile" > "$MARKER"
