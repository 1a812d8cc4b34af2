#!/usr/bin/env bash
# CPU per proxied request: nginx, HAProxy, a bare pingora proxy and fngate in front of the
# same origin, driven by the same wrk, in one run.
#
# 1 proxy thread: the proxy alone on CPU 1, wrk and the origin (an nginx serving fixed
# bodies) on CPU 0, so a proxy's CPU time (utime+stime from /proc, its worker processes
# included) divided by the requests it served is its cost per request. 2 proxy threads:
# proxies on both cores, wrk and the origin unpinned; only the ratios mean something there.
# Small (13-byte) and 16 KiB responses. With h2load installed, also HTTP/2 (h2c prior
# knowledge) through fngate and nginx.
#
# Peers: nginx, HAProxy, Go's httputil.ReverseProxy (benches/go_proxy, GOMAXPROCS =
# threads), a bare pingora proxy, fngate with every request on pingora-proxy (fngate-pp,
# `http1.own_loop: false`) and the own-loop probe (examples/own_loop.rs, no fngate logic).
#
# Usage: benches/proxy_cpu.sh [seconds per run, default 8] [connections, default 32]
# BENCH_THREADS="1 2" and BENCH_SIZES="small 16k" choose the runs. BENCH_CALLGRIND=N
# instead counts the instructions bare pingora (also with fngate's three forwarding
# headers) and fngate (1 thread) spend on N small requests (valgrind's callgrind, zeroed
# after a warm-up, so start-up is not counted): exact and repeatable where CPU time is
# noisy. BENCH_CALLGRIND_ONLY="fngate nginx" counts only those (names as in the CPU runs;
# nginx as one process, master_process off).
source "$(dirname "$0")/lib.sh"
SECS=${1:-8}
CONNS=${2:-32}
THREADS=${BENCH_THREADS:-1 2}
SIZES=${BENCH_SIZES:-small 16k}
build
GOPROXY="$WORK/go_proxy"
if command -v go >/dev/null; then
  (cd "$(dirname "$0")/go_proxy" && GO111MODULE=off GOCACHE="$WORK/gocache" go build -o "$GOPROXY" main.go)
fi

TICKS=$(getconf CLK_TCK)
# cpu_ticks PID: utime+stime of PID and its child processes (nginx and haproxy workers).
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat")))
  done
  echo "$total"
}
# us_per_request TICKS REQUESTS: CPU microseconds per request.
us_per_request() {
  awk -v t="$1" -v n="$2" -v hz="$TICKS" 'BEGIN{printf "%.2f", (n > 0 ? t / hz * 1e6 / n : 0)}'
}

# The origin: nginx on CPU 0 answering /small with 13 bytes and /16k with 16 KiB.
ORIGIN=$(free_port)
mkdir -p "$WORK/origin"
head -c 16384 /dev/zero | tr '\0' 'x' > "$WORK/origin/16k"
# nginx workers run as an unprivileged user: the body must be readable by them.
chmod 755 "$WORK" "$WORK/origin"; chmod 644 "$WORK/origin/16k"
{
  echo "worker_processes 1;"
  nginx_common "$WORK/origin"
  cat <<CONF
http {
  access_log off;
  $(nginx_temp "$WORK/origin")
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$ORIGIN;
    location = /small { default_type text/plain; return 200 "Hello, world\n"; }
    location = /16k { default_type text/plain; alias $WORK/origin/16k; }
    location / { default_type text/plain; return 200 "Hello, world\n"; }
  }
}
CONF
} > "$WORK/origin/nginx.conf"
taskset -c 0 nginx -c "$WORK/origin/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
wait_http "http://127.0.0.1:$ORIGIN/small"
bench_catalog "$WORK/catalog" "$ORIGIN"

start_nginx() {
  start_nginx_proxy "$1" "$2" "$ORIGIN" "${3:-}"
  PROXY_PID=$NGINX_PID
}

start_haproxy() {
  local threads=$1 port=$2
  cat > "$WORK/haproxy-$port.cfg" <<CONF
global
  nbthread $threads
  maxconn 4000
defaults
  mode http
  option forwardfor
  http-reuse always
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend in
  bind 127.0.0.1:$port
  default_backend origin
backend origin
  server o1 127.0.0.1:$ORIGIN
CONF
  $PIN haproxy -f "$WORK/haproxy-$port.cfg" -db >/dev/null 2>&1 &
  PROXY_PID=$!; PIDS+=($!)
  wait_http "http://127.0.0.1:$port/small"
}

start_bare() {
  local threads=$1 port=$2
  $PIN "$BARE" "127.0.0.1:$port" "127.0.0.1:$ORIGIN" "$threads" 2>/dev/null &
  PROXY_PID=$!; PIDS+=($!)
  wait_http "http://127.0.0.1:$port/small"
}

# Issue 27's probe: a keep-alive loop of our own on pingora-core (examples/own_loop.rs).
start_own() {
  local threads=$1 port=$2
  $PIN "$OWN" "127.0.0.1:$port" "127.0.0.1:$ORIGIN" "$threads" 2>/dev/null &
  PROXY_PID=$!; PIDS+=($!)
  wait_http "http://127.0.0.1:$port/small"
}

# Go's httputil.ReverseProxy (benches/go_proxy), GOMAXPROCS = threads.
start_go() {
  local threads=$1 port=$2
  GOMAXPROCS=$threads $PIN "$GOPROXY" "127.0.0.1:$port" "127.0.0.1:$ORIGIN" 2>/dev/null &
  PROXY_PID=$!; PIDS+=($!)
  wait_http "http://127.0.0.1:$port/small"
}

# fngate with every request on pingora-proxy (its own HTTP/1 loop off).
start_fngate_pingora() {
  FNGATE_EXTRA="http1: {own_loop: false}" start_fngate_proxy "$@"
}

start_fngate_proxy() {
  local threads=$1 port=$2 admin
  admin=$(free_port)
  PIN_FNGATE="$PIN" start_fngate "$WORK/catalog" "$threads" "$port" "$admin"
  PROXY_PID=$FNGATE_PID
}

stop_proxy() { kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; }

# measure URL: warms up, then one wrk run; prints "req/s p99_ms errors cpu_us_per_request".
measure() {
  local url=$1 before after rps p99 errs
  $LOADPIN wrk -t1 -c"$CONNS" -d2s -H 'Host: bench.default.ofn.io' "$url" >/dev/null
  before=$(cpu_ticks "$PROXY_PID")
  read -r rps p99 errs < <(LOADPIN="$LOADPIN" run_wrk "$url" "$CONNS" "$SECS")
  after=$(cpu_ticks "$PROXY_PID")
  printf "%.0f %s %d %s\n" "$rps" "$p99" "$errs" \
    "$(us_per_request $((after - before)) "$(awk -v r="$rps" -v s="$SECS" 'BEGIN{print r * s}')")"
}

# callgrind_per_request NAME: starts the proxy (start_NAME) under callgrind, warms it up,
# counts N requests; prints instructions per request and leaves the profile in $WORK.
callgrind_per_request() {
  local name=$1 n=$BENCH_CALLGRIND port out
  port=$(free_port)
  out="$WORK/callgrind.$name"
  PIN="valgrind --tool=callgrind --callgrind-out-file=$out --collect-atstart=yes"
  case $name in
    pingora) start_bare 1 "$port" ;;
    pingora-fwd) export BARE_FORWARDED=1; start_bare 1 "$port"; unset BARE_FORWARDED ;;
    own) start_own 1 "$port" ;;
    fngate) start_fngate_proxy 1 "$port" ;;
    fngate-pp) start_fngate_pingora 1 "$port" ;;
    nginx) NGINX_GLOBAL="master_process off;" start_nginx 1 "$port" ;;
  esac
  local vg_pid
  vg_pid=$(pgrep -f "callgrind-out-file=$out" | head -1)
  h2load --h1 -n 2000 -c 8 -H ':authority: bench.default.ofn.io' "http://127.0.0.1:$port/small" >/dev/null
  callgrind_control -z "$vg_pid" >/dev/null
  h2load --h1 -n "$n" -c 8 -H ':authority: bench.default.ofn.io' "http://127.0.0.1:$port/small" \
    | grep -E "^(requests|status codes):" | sed "s/^/$name: /" >&2
  callgrind_control -d "$vg_pid" >/dev/null
  sleep 1
  local total
  total=$(cat "$out".* 2>/dev/null | awk '/^summary:/ {s += $2} END {print s + 0}')
  stop_proxy
  awk -v t="$total" -v n="$n" -v who="$name" 'BEGIN{printf "%-8s %12.0f instructions per request\n", who, t / n}'
  cp "$out".* /tmp/ 2>/dev/null || true
}

if [ -n "${BENCH_CALLGRIND:-}" ]; then
  command -v valgrind >/dev/null || { echo "valgrind is needed for BENCH_CALLGRIND" >&2; exit 1; }
  if [ -n "${BENCH_CALLGRIND_ONLY:-}" ]; then
    for name in $BENCH_CALLGRIND_ONLY; do callgrind_per_request "$name"; done
    exit 0
  fi
  read -r _ bare_ir _ < <(callgrind_per_request pingora)
  read -r _ fwd_ir _ < <(callgrind_per_request pingora-fwd)
  read -r _ fngate_ir _ < <(callgrind_per_request fngate)
  read -r _ pp_ir _ < <(callgrind_per_request fngate-pp)
  read -r _ own_ir _ < <(callgrind_per_request own)
  printf "%-12s %12s\n" pingora "$bare_ir" "pingora+fwd" "$fwd_ir" fngate "$fngate_ir" fngate-pp "$pp_ir" own-probe "$own_ir"
  awk -v o="$own_ir" -v b="$bare_ir" 'BEGIN{printf "own-loop-probe/bare-pingora instructions %.3f (%+.0f per request)\n", o/b, o-b}'
  awk -v f="$fngate_ir" -v p="$pp_ir" 'BEGIN{printf "fngate/fngate-on-pingora-proxy instructions %.3f (%+.0f per request)\n", f/p, f-p}'
  awk -v f="$fngate_ir" -v b="$bare_ir" -v w="$fwd_ir" 'BEGIN{
    printf "fngate/bare-pingora instructions %.3f (%+.0f per request)\n", f/b, f-b
    printf "fngate/bare-pingora-with-the-same-forwarding-headers %.3f (%+.0f per request)\n", f/w, f-w}'
  echo "profiles: /tmp/callgrind.{pingora,pingora-fwd,fngate,fngate-pp,own}.* (callgrind_annotate --inclusive=yes)"
  exit 0
fi

declare -A CPU RPS P99
printf "%-7s %-6s %-8s %10s %9s %7s %12s\n" threads size proxy "req/s" "p99(ms)" errors "CPU µs/req"
for threads in $THREADS; do
  if [ "$threads" = 1 ]; then PIN="taskset -c 1"; LOADPIN="taskset -c 0"; else PIN=""; LOADPIN=""; fi
  export LOADPIN
  default_proxies="nginx haproxy pingora fngate fngate-pp own"
  [ -x "$GOPROXY" ] && default_proxies+=" go"
  for proxy in ${BENCH_PROXIES:-$default_proxies}; do
    port=$(free_port)
    case $proxy in
      nginx) start_nginx "$threads" "$port" ;;
      haproxy) start_haproxy "$threads" "$port" ;;
      pingora) start_bare "$threads" "$port" ;;
      fngate) start_fngate_proxy "$threads" "$port" ;;
      fngate-pp) start_fngate_pingora "$threads" "$port" ;;
      own) start_own "$threads" "$port" ;;
      go) start_go "$threads" "$port" ;;
    esac
    for size in $SIZES; do
      read -r rps p99 errs cpu < <(measure "http://127.0.0.1:$port/$size")
      printf "%-7s %-6s %-8s %10s %9s %7s %12s\n" "$threads" "$size" "$proxy" "$rps" "$p99" "$errs" "$cpu"
      CPU[$threads,$size,$proxy]=$cpu; RPS[$threads,$size,$proxy]=$rps; P99[$threads,$size,$proxy]=$p99
    done
    stop_proxy
  done
done

echo
for threads in $THREADS; do
  for size in $SIZES; do
    awk -v t="$threads" -v s="$size" \
      -v fc="${CPU[$threads,$size,fngate]:-0}" -v nc="${CPU[$threads,$size,nginx]:-0}" \
      -v hc="${CPU[$threads,$size,haproxy]:-0}" -v bc="${CPU[$threads,$size,pingora]:-0}" \
      -v pc="${CPU[$threads,$size,fngate-pp]:-0}" -v gc="${CPU[$threads,$size,go]:-0}" \
      -v fp="${P99[$threads,$size,fngate]:-0}" -v np="${P99[$threads,$size,nginx]:-0}" \
      -v oc="${CPU[$threads,$size,own]:-0}" \
      'function r(a, b) { return (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "-" }
      BEGIN{printf "threads=%s %-5s CPU per request: fngate/nginx %s  fngate/haproxy %s  fngate/go-httputil %s (go/fngate %s)  fngate/fngate-on-pingora-proxy %s  bare-pingora/nginx %s  own-loop-probe/nginx %s;  p99 fngate/nginx %s\n",
        t, s, r(fc, nc), r(fc, hc), r(fc, gc), r(gc, fc), r(fc, pc), r(bc, nc), r(oc, nc), r(fp, np)}'
  done
done
if [[ " $THREADS " == *" 1 "* && " $THREADS " == *" 2 "* ]]; then
  for size in $SIZES; do
    awk -v s="$size" -v one="${RPS[1,$size,fngate]:-0}" -v two="${RPS[2,$size,fngate]:-0}" \
      'BEGIN{if (one > 0) printf "%-5s fngate req/s, 2 threads / 1 thread: %.2f\n", s, two / one}'
  done
fi

# HTTP/2 from the client (h2c prior knowledge; h2load multiplexes 10 streams per connection).
if command -v h2load >/dev/null && [ -z "${BENCH_NO_H2:-}" ]; then
  PIN="taskset -c 1"; LOADPIN="taskset -c 0"
  echo
  printf "%-8s %-6s %10s %12s\n" proxy size "req/s" "CPU µs/req"
  declare -A H2CPU
  for proxy in nginx fngate; do
    port=$(free_port)
    case $proxy in
      nginx) start_nginx 1 "$port" h2 ;;
      fngate) FNGATE_EXTRA="${FNGATE_EXTRA:-}" start_fngate_proxy 1 "$port" ;;
    esac
    for size in $SIZES; do
      url="http://127.0.0.1:$port/$size"
      $LOADPIN h2load -c"$CONNS" -m10 -D2 -H ':authority: bench.default.ofn.io' "$url" >/dev/null 2>&1 || true
      before=$(cpu_ticks "$PROXY_PID")
      out=$($LOADPIN h2load -c"$CONNS" -m10 -D"$SECS" -H ':authority: bench.default.ofn.io' "$url" 2>&1 || true)
      after=$(cpu_ticks "$PROXY_PID")
      done_reqs=$(awk '/^requests:/ {print $8}' <<<"$out")
      rps=$(awk -v n="${done_reqs:-0}" -v s="$SECS" 'BEGIN{printf "%.0f", n/s}')
      cpu=$(us_per_request $((after - before)) "${done_reqs:-0}")
      printf "%-8s %-6s %10s %12s\n" "$proxy" "$size" "$rps" "$cpu"
      H2CPU[$size,$proxy]=$cpu
    done
    stop_proxy
  done
  for size in $SIZES; do
    awk -v s="$size" -v f="${H2CPU[$size,fngate]}" -v n="${H2CPU[$size,nginx]}" \
      'BEGIN{printf "h2 %-5s fngate/nginx CPU %.2f\n", s, (n > 0 ? f/n : 0)}'
  done
fi
