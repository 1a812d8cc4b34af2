#!/usr/bin/env bash
# Installs what building and testing fngate needs on a fresh Debian machine: cmake, a C
# toolchain, perl and OpenSSL headers for pingora; protoc for the KEDA external scaler's
# proto; curl and openssl for the TLS tests; nats-server, redis-server, PostgreSQL and
# MariaDB for the event-trigger and Dapr state tests (the machine's servers, and private
# instances for the tests that restart one); python3-venv for the tests that drive the
# official Python Dapr SDK and grpcio; tzdata for cron schedules' time zones; mosquitto
# and its clients for the MQTT tests; Node.js and npm for the Node functions on the official
# Dapr JS SDK (tests/node, installed by the tests with `npm ci`). `--bench` adds what only the benchmarks use: nginx,
# haproxy, wrk, h2load (nghttp2-client) and Go (the httputil.ReverseProxy peer). Skips apt when all are present.
set -euo pipefail

packages=(cmake build-essential perl pkg-config libssl-dev curl openssl ca-certificates nats-server protobuf-compiler redis-server postgresql mariadb-server mariadb-client python3-venv tzdata mosquitto mosquitto-clients nodejs)
if [ "${1:-}" = "--bench" ]; then
  packages+=(nginx-light haproxy nghttp2-client wrk golang-go)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  echo "setup: installed ${missing[*]}"
fi
# Debian ships npm apart from nodejs; NodeSource's nodejs has it inside.
if ! command -v npm >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq npm >/dev/null
  echo "setup: installed npm"
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required" >&2; exit 1; }
