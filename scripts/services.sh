#!/usr/bin/env bash
# Starts the brokers the event-trigger tests use when they are not running:
# NATS with JetStream on 127.0.0.1:4222. (tansu, the Kafka-protocol broker, is started
# by the tests themselves on free ports.)
set -euo pipefail
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! port_open 4222; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo mkdir -p /var/lib/nats-server
  $sudo start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  for _ in $(seq 1 100); do port_open 4222 && break; sleep 0.1; done
  port_open 4222 || { echo "services: NATS did not start on 127.0.0.1:4222" >&2; exit 1; }
  echo "services: started NATS with JetStream on 127.0.0.1:4222"
fi
