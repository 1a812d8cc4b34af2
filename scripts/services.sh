#!/usr/bin/env bash
# Starts the servers the tests use when they are not running: Mosquitto (MQTT) on
# 127.0.0.1:1883, NATS with JetStream on 127.0.0.1:4222, PostgreSQL on 5432 (trust auth)
# and MariaDB on 3306 (root, no password) for the SQL state stores, Redis on 6379 for the
# Dapr API fuzzer (the Redis tests start their own). (tansu, the Kafka-protocol broker, is
# started by the tests themselves on free ports.)
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

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! port_open 5432; then
  $sudo pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
  for _ in $(seq 1 100); do port_open 5432 && break; sleep 0.1; done
  port_open 5432 || { echo "services: PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
  echo "services: started PostgreSQL on 127.0.0.1:5432"
fi
if ! port_open 3306; then
  $sudo start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  for _ in $(seq 1 200); do port_open 3306 && break; sleep 0.1; done
  port_open 3306 || { echo "services: MariaDB did not start on 127.0.0.1:3306" >&2; exit 1; }
  echo "services: started MariaDB on 127.0.0.1:3306"
fi
if ! port_open 6379; then
  $sudo mkdir -p /var/lib/redis /var/log/redis
  $sudo redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 100); do port_open 6379 && break; sleep 0.1; done
  port_open 6379 || { echo "services: Redis did not start on 127.0.0.1:6379" >&2; exit 1; }
  echo "services: started Redis on 127.0.0.1:6379"
fi
if ! port_open 1883; then
  $sudo start-stop-daemon --start --oknodo --background --exec /usr/sbin/mosquitto -- -p 1883
  for _ in $(seq 1 100); do port_open 1883 && break; sleep 0.1; done
  port_open 1883 || { echo "services: Mosquitto did not start on 127.0.0.1:1883" >&2; exit 1; }
  echo "services: started Mosquitto on 127.0.0.1:1883"
fi
