#!/usr/bin/env bash
# Reload under load: wrk drives a route that never changes while another Function's file
# is rewritten N times (default 1000), each time waiting for the new plan to serve.
# Peer: the same wrk run against the same fngate without reloads.
# Prints failed requests (must be 0) and throughput with/without reloads.
# Usage: benches/reload_under_load.sh [reloads, default 1000]
source "$(dirname "$0")/lib.sh"
RELOADS=${1:-1000}
build
BACKEND=$(free_port)
start_backend "$BACKEND" --fixed --threads 1
bench_catalog "$WORK/catalog" "$BACKEND"
P=$(free_port); A=$(free_port)
start_fngate "$WORK/catalog" 1 "$P" "$A"

read -r base_rps base_p99 base_err < <(run_wrk "http://127.0.0.1:$P/" 32 5)

revision() { curl -s "http://127.0.0.1:$A/metrics" | awk '/^fngate_config_revision / {print $2}'; }
(
  for i in $(seq 1 "$RELOADS"); do
    before=$(revision)
    cat > "$WORK/catalog/.churn.tmp" <<YAML
apiVersion: core.openfunction.io/v1beta2
kind: Function
metadata: {name: churn, namespace: default}
spec:
  serving:
    triggers:
      http:
        route:
          rules:
          - matches: [{path: {type: PathPrefix, value: /v$i}}]
YAML
    mv "$WORK/catalog/.churn.tmp" "$WORK/catalog/churn.yaml"
    while [ "$(revision)" = "$before" ]; do sleep 0.002; done
  done
  echo done > "$WORK/reloads.done"
) &
RELOADER=$!
t0=$(date +%s.%N)
total_req=0; total_err=0; rps_sum=0; runs=0
while [ ! -f "$WORK/reloads.done" ]; do
  read -r rps p99 err < <(run_wrk "http://127.0.0.1:$P/" 32 5)
  total_err=$((total_err + err)); rps_sum=$(awk -v a="$rps_sum" -v b="$rps" 'BEGIN{print a+b}'); runs=$((runs+1))
done
wait "$RELOADER"
t1=$(date +%s.%N)
final=$(revision)
echo "reloads=$RELOADS plan_revision=$final seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')"
echo "failed requests during reloads: $total_err (baseline run without reloads: $base_err)"
awk -v r="$rps_sum" -v n="$runs" -v b="$base_rps" 'BEGIN{printf "req/s with reloads %.0f, without %.0f, ratio %.2f\n", r/n, b, (r/n)/b}'
