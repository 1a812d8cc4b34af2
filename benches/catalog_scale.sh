#!/usr/bin/env bash
# Memory and start-up at scale: fngate serving 10,000 Functions (each with its own
# EndpointSlice) vs the same binary serving an empty catalog (the peer baseline).
# Prints time to first plan, RSS, and the reload time of a one-file change.
# Usage: benches/catalog_scale.sh [functions, default 10000]
source "$(dirname "$0")/lib.sh"
N=${1:-10000}
build
mkdir -p "$WORK/empty" "$WORK/big"
python3 - "$WORK/big" "$N" <<'PY'
import sys, os
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    ns = f"ns-{i % 50}"
    with open(os.path.join(d, f"fn-{i}.yaml"), "w") as f:
        f.write(f"""apiVersion: core.openfunction.io/v1beta2
kind: Function
metadata: {{name: fn-{i}, namespace: {ns}}}
spec:
  serving:
    triggers:
      http:
        port: 8080
        route:
          rules:
          - matches: [{{path: {{type: PathPrefix, value: /api/v1}}}}]
          - matches: [{{path: {{type: Exact, value: /api/v1/items/{i}}}}}]
          - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: x-canary, value: "true"}}]}}]
          - matches: [{{path: {{type: PathPrefix, value: /}}, method: POST}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: fn-{i}
  namespace: {ns}
  labels: {{kubernetes.io/service-name: fn-{i}}}
endpoints:
- addresses: [127.{1 + i // 65536}.{i // 256 % 256}.{i % 256}]
  conditions: {{ready: true}}
ports: [{{name: http, port: 8080}}]
""")
PY

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

P1=$(free_port); A1=$(free_port)
start_fngate "$WORK/empty" 2 "$P1" "$A1"
EMPTY_RSS=$(rss_kb "$FNGATE_PID")

P2=$(free_port); A2=$(free_port)
FNGATE_EXTRA=$'activator:\n  hold_timeout: 1s'
t0=$(date +%s.%N)
start_fngate "$WORK/big" 2 "$P2" "$A2"
t1=$(date +%s.%N)
sleep 1
BIG_RSS=$(rss_kb "$FNGATE_PID")
routes=$(curl -s "http://127.0.0.1:$A2/metrics" | awk '/^fngate_routes / {print $2}')
# Loopback endpoints where nothing listens: a routed request waits for the function to
# come back (scale from zero) and ends in 504 after the 1 s hold timeout set below; an
# unrouted one gets 404. Nothing leaves the machine.
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Host: fn-4242.ns-42.ofn.io" "http://127.0.0.1:$P2/anything")

# One file changes: time until the new revision serves.
rev=$(curl -s "http://127.0.0.1:$A2/metrics" | awk "/^fngate_config_revision / {print \$2}")
sed -i 's#/api/v1/items/7$#/api/v1/items/7b#; s#value: /api/v1/items/7}#value: /api/v1/items/7b}#' "$WORK/big/fn-7.yaml"
r0=$(date +%s.%N)
while :; do
  now=$(curl -s "http://127.0.0.1:$A2/metrics" | awk "/^fngate_config_revision / {print \$2}")
  [ "$now" -gt "$rev" ] && break
  sleep 0.01
done
r1=$(date +%s.%N)
reload_ms=$(curl -s "http://127.0.0.1:$A2/metrics" | awk '/^fngate_reload_duration_seconds_sum/ {s=$2} /^fngate_reload_duration_seconds_count/ {c=$2} END {printf "%.1f", s/c*1000}')

echo "functions=$N routes=$routes probe_status=$code"
awk -v e="$EMPTY_RSS" -v b="$BIG_RSS" -v n="$N" 'BEGIN{printf "RSS empty catalog %.1f MB, %d functions %.1f MB (ratio %.2f, %.2f KB per function)\n", e/1024, n, b/1024, b/e, (b-e)/n}'
awk -v a="$t0" -v b="$t1" 'BEGIN{printf "start to ready (parse + compile %s files): %.2f s\n", "'"$N"'", b-a}'
awk -v a="$r0" -v b="$r1" -v m="$reload_ms" 'BEGIN{printf "one-file change to serving: %.0f ms (mean compile+publish per reload: %s ms)\n", (b-a)*1000, m}'
