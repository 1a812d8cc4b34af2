#!/usr/bin/env bash
# Installs what building and testing fngate needs on a fresh Debian machine:
# cmake, a C toolchain, perl and OpenSSL headers for pingora; curl and openssl for the
# TLS test; nginx, haproxy, wrk and h2load (nghttp2-client) for the proxy benchmarks;
# nats-server for the event-trigger
# tests; protoc for the KEDA external scaler's proto; redis-server for the Dapr state tests
# (each starts its own); PostgreSQL and MariaDB for the SQL state-store tests (the machine's
# servers, and private instances for the tests that restart one). Skips apt when all are
# present.
set -euo pipefail

packages=(cmake build-essential perl pkg-config libssl-dev curl openssl ca-certificates nginx-light haproxy nghttp2-client wrk nats-server protobuf-compiler redis-server postgresql mariadb-server mariadb-client)
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
command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required" >&2; exit 1; }
