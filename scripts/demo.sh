#!/usr/bin/env bash
# The main job: set up, build, start the example function, and run fngate on the
# embedded default in config/ (HTTP on :8080, admin on 127.0.0.1:9090).
# Then, from another shell:  curl -H 'Host: hello.default.ofn.io' http://127.0.0.1:8080/
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bin fngate --example echo
target/release/examples/echo --listen 127.0.0.1:18081 --service hello &
trap 'kill $! 2>/dev/null' EXIT
target/release/fngate run --config config/fngate.yaml
