#!/usr/bin/env bash
# Proxy throughput and tail latency: fngate vs nginx (Debian's, proxy_pass to an upstream
# keep-alive pool) in front of the same backend, driven by the same wrk, at 1 and 2
# worker threads; the direct-to-backend figure is the ceiling, and a pingora proxy with
# no logic (examples/bare_pingora.rs) shows what the framework itself costs.
# Usage: benches/proxy_load.sh [seconds per run, default 10] [connections, default 64]
source "$(dirname "$0")/lib.sh"
SECS=${1:-10}
CONNS=${2:-64}
build

BACKEND=$(free_port)
start_backend "$BACKEND" --fixed --threads 1
bench_catalog "$WORK/catalog" "$BACKEND"

printf "%-8s %-8s %12s %10s %8s\n" threads target "req/s" "p99(ms)" errors
read -r d_rps d_p99 d_err < <(run_wrk "http://127.0.0.1:$BACKEND/" "$CONNS" "$SECS")
printf "%-8s %-8s %12s %10s %8s\n" - direct "$d_rps" "$d_p99" "$d_err"
declare -A RESULT
for threads in 1 2; do
  NPORT=$(free_port)
  start_nginx_proxy "$threads" "$NPORT" "$BACKEND"
  run_wrk "http://127.0.0.1:$NPORT/" "$CONNS" 2 >/dev/null # warm the keep-alive pool
  read -r n_rps n_p99 n_err < <(run_wrk "http://127.0.0.1:$NPORT/" "$CONNS" "$SECS")
  kill "$NGINX_PID"; wait "$NGINX_PID" 2>/dev/null || true
  BPORT=$(free_port)
  "$BARE" "127.0.0.1:$BPORT" "127.0.0.1:$BACKEND" "$threads" 2>/dev/null &
  BARE_PID=$!; PIDS+=($BARE_PID)
  wait_http "http://127.0.0.1:$BPORT/"
  run_wrk "http://127.0.0.1:$BPORT/" "$CONNS" 2 >/dev/null
  read -r b_rps b_p99 b_err < <(run_wrk "http://127.0.0.1:$BPORT/" "$CONNS" "$SECS")
  kill "$BARE_PID"; wait "$BARE_PID" 2>/dev/null || true
  FPORT=$(free_port); APORT=$(free_port)
  start_fngate "$WORK/catalog" "$threads" "$FPORT" "$APORT"
  run_wrk "http://127.0.0.1:$FPORT/" "$CONNS" 2 >/dev/null
  read -r f_rps f_p99 f_err < <(run_wrk "http://127.0.0.1:$FPORT/" "$CONNS" "$SECS")
  kill "$FNGATE_PID"; wait "$FNGATE_PID" 2>/dev/null || true
  printf "%-8s %-8s %12s %10s %8s\n" "$threads" nginx "$n_rps" "$n_p99" "$n_err"
  printf "%-8s %-8s %12s %10s %8s\n" "$threads" pingora "$b_rps" "$b_p99" "$b_err"
  printf "%-8s %-8s %12s %10s %8s\n" "$threads" fngate "$f_rps" "$f_p99" "$f_err"
  RESULT[$threads]="$(awk -v f="$f_rps" -v n="$n_rps" -v fp="$f_p99" -v np="$n_p99" -v d="$d_rps" -v b="$b_rps" \
    'BEGIN{printf "fngate/nginx req/s %.2f  p99 %.2f  fngate/bare-pingora req/s %.2f  fngate/direct req/s %.2f", f/n, fp/np, f/b, f/d}')"
done
echo
for threads in 1 2; do echo "threads=$threads: ${RESULT[$threads]}"; done
