#!/usr/bin/env bash
# Soak benchmark: fngate under a steady mixed load (HTTP on three fixed routes and one
# function going 1 → 0 → 1 every minute, a catalog edit every second, Kafka and JetStream
# events) for SECONDS (default 1800), sampling RSS, fds and threads every 10 s.
#   benches/soak.sh [SECONDS]
# Prints the table and the verdict; writes target/soak/samples.csv and docs/soak.png
# (matplotlib, installed into target/soak/venv from PyPI on first use).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECONDS_TO_RUN="${1:-1800}"
cd "$ROOT"
scripts/setup.sh --bench
scripts/install-tansu.sh --release
scripts/services.sh
cargo build --release --locked --bin fngate --examples >/dev/null
SOAK_PIN=1 cargo bench --locked --bench soak -- "$SECONDS_TO_RUN" | tee target/soak/report.txt
VENV=target/soak/venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q matplotlib
fi
"$VENV/bin/python" benches/soak_plot.py target/soak/samples.csv docs/soak.png
echo "plot: docs/soak.png"
