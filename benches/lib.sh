# Shared helpers for the benchmark scripts (sourced, not run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d /tmp/fngate-bench.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

build() {
  "$ROOT/scripts/setup.sh" --bench
  (cd "$ROOT" && cargo build --release --locked --bin fngate --example echo --example bare_pingora --example own_loop >/dev/null 2>&1)
  FNGATE="$ROOT/target/release/fngate"
  ECHO="$ROOT/target/release/examples/echo"
  BARE="$ROOT/target/release/examples/bare_pingora"
  OWN="$ROOT/target/release/examples/own_loop"
}

# start_backend PORT [extra args]: the example function, answering a fixed body.
start_backend() {
  local port=$1; shift
  "$ECHO" --listen "127.0.0.1:$port" --service bench "$@" >/dev/null &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$port/"
}

wait_http() {
  for _ in $(seq 1 300); do curl -s ${CURL_OPTS:-} -o /dev/null "$1" && return 0; sleep 0.05; done
  echo "timed out waiting for $1" >&2; return 1
}

# start_fngate DIR THREADS HTTP_PORT ADMIN_PORT: fngate serving catalog DIR (run under
# $PIN_FNGATE, e.g. a taskset, when set).
start_fngate() {
  local dir=$1 threads=$2 http=$3 admin=$4
  cat > "$WORK/fngate-$http.yaml" <<YAML
listen:
  http: 127.0.0.1:$http
  admin: 127.0.0.1:$admin
catalog:
  dir: $dir
threads: $threads
${FNGATE_EXTRA:-}
YAML
  RUST_LOG=error ${PIN_FNGATE:-} "$FNGATE" run --config "$WORK/fngate-$http.yaml" &
  PIDS+=($!)
  FNGATE_PID=$!
  for _ in $(seq 1 600); do curl -sf -o /dev/null "http://127.0.0.1:$admin/readyz" && return 0; sleep 0.05; done
  echo "fngate did not become ready" >&2; return 1
}

# bench_catalog DIR BACKEND_PORT: one function `bench` whose endpoint is the backend.
bench_catalog() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  cat > "$dir/bench.yaml" <<YAML
apiVersion: core.openfunction.io/v1beta2
kind: Function
metadata: {name: bench, namespace: default}
spec:
  serving:
    triggers:
      http: {port: $port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: bench
  namespace: default
  labels: {kubernetes.io/service-name: bench}
endpoints: [{addresses: [127.0.0.1], conditions: {ready: true}}]
ports: [{port: $port}]
YAML
}

# run_wrk URL CONNS SECONDS (wrk run under $LOADPIN when set): prints "req_per_sec p99_ms errors".
run_wrk() {
  local out
  out=$(${LOADPIN:-} wrk -t1 -c"$2" -d"$3"s --latency -H 'Host: bench.default.ofn.io' "$1")
  local rps p99 p99ms errs non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  case "$p99" in
    *us) p99ms=$(awk -v v="${p99%us}" 'BEGIN{printf "%.3f", v/1000}') ;;
    *ms) p99ms=${p99%ms} ;;
    *s) p99ms=$(awk -v v="${p99%s}" 'BEGIN{printf "%.3f", v*1000}') ;;
    *) p99ms=NaN ;;
  esac
  errs=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  echo "${rps:-0} ${p99ms} $(( ${errs:-0} + ${non2xx:-0} ))"
}

# nginx settings every instance here shares: pid, log and temp files under DIR.
nginx_common() {
  cat <<CONF
pid $1/nginx.pid;
error_log $1/error.log crit;
events { worker_connections 4096; }
CONF
}
nginx_temp() {
  echo "client_body_temp_path $1; proxy_temp_path $1; fastcgi_temp_path $1; uwsgi_temp_path $1; scgi_temp_path $1;"
}

# start_nginx_proxy WORKERS PORT UPSTREAM_PORT [h2]: nginx as a reverse proxy to
# 127.0.0.1:UPSTREAM_PORT with an upstream keep-alive pool (run under $PIN when set);
# `h2`: its port speaks HTTP/2 with prior knowledge only. Sets NGINX_PID.
start_nginx_proxy() {
  local workers=$1 port=$2 upstream=$3 h2=${4:-} dir="$WORK/nginx-$2"
  mkdir -p "$dir"
  {
    echo "worker_processes $workers;"
    nginx_common "$dir"
    cat <<CONF
http {
  access_log off;
  $(nginx_temp "$dir")
  keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:$upstream; keepalive 128; }
  server {
    listen 127.0.0.1:$port ${h2:+http2};
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CONF
  } > "$dir/nginx.conf"
  # NGINX_GLOBAL: more main-context directives (callgrind runs nginx as one process).
  ${PIN:-} nginx -c "$dir/nginx.conf" -g "daemon off; ${NGINX_GLOBAL:-}" &
  NGINX_PID=$!; PIDS+=($!)
  CURL_OPTS="${h2:+--http2-prior-knowledge}" wait_http "http://127.0.0.1:$port/"
}
