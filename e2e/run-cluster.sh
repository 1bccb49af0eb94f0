#!/usr/bin/env bash
# `make run-cluster`: N proxies (N=3 by default) as one broker against the local Kafka:
# MQTT on 127.0.0.1:1883, 1884, ..., health and metrics on 127.0.0.1:9090, 9091, ...,
# instance ids proxy-0, proxy-1, ..., each with its own server reference, redirect on.
# Ctrl-C sends SIGTERM to all of them (each hands its clients over before it exits).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -f .local/env ]] || { echo "no .local/env: run 'make env-up' first" >&2; exit 1; }
set -a; source .local/env; set +a
N="${N:-3}"
MQTT_PORT="${MQTT_PORT:-1883}"
ADMIN_PORT="${ADMIN_PORT:-9090}"
cargo build -q -p mqtt-kafka-proxy
mkdir -p .local/cluster
pids=()
stop() {
  echo "[run-cluster] stopping ${#pids[@]} proxies (SIGTERM)"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop EXIT INT TERM
for ((i = 0; i < N; i++)); do
  port=$((MQTT_PORT + i))
  cat > ".local/cluster/proxy-$i.yaml" <<YAML
# Written by 'make run-cluster'.
instanceId: proxy-$i
listeners:
  - {name: mqtt, protocol: tcp, address: "127.0.0.1:$port"}
admin: {address: "127.0.0.1:$((ADMIN_PORT + i))"}
kafka: {bootstrapServers: "$KAFKA_BOOTSTRAP"}
cluster:
  serverReference: "127.0.0.1:$port"
  redirect: {enabled: true}
YAML
  # The first creates missing topics; the others wait for it to be ready.
  args=(--config ".local/cluster/proxy-$i.yaml")
  ((i == 0)) && args+=(--create-topics)
  target/debug/mqtt-kafka-proxy "${args[@]}" > ".local/cluster/proxy-$i.log" 2>&1 &
  pids+=($!)
  if ((i == 0)); then
    for _ in $(seq 1 100); do
      curl -fs "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
      sleep 0.2
    done
  fi
done
cat <<TXT
[run-cluster] $N proxies: MQTT on 127.0.0.1:$MQTT_PORT..$((MQTT_PORT + N - 1)), admin on 127.0.0.1:$ADMIN_PORT..$((ADMIN_PORT + N - 1)); logs in .local/cluster/
[run-cluster] which process owns a client's session: an MQTT 5 CONNECT anywhere else is
              answered with CONNACK 0x9C and the owner's Server Reference. Watch it:
        mosquitto_sub -h 127.0.0.1 -p $MQTT_PORT -V mqttv5 -i device-7 -t 'demo/#' -d
  (mosquitto prints "Connection error: Use another server" when device-7 belongs to another
  process; curl -s 127.0.0.1:$ADMIN_PORT/metrics | grep redirects shows the count.)
  MQTT 3.1.1 clients are served wherever they connect:
        mosquitto_sub -h 127.0.0.1 -p $((MQTT_PORT + 1)) -V mqttv311 -i device-7 -c -q 1 -t 'demo/#' -v
        mosquitto_pub -h 127.0.0.1 -p $((MQTT_PORT + 2)) -V mqttv311 -t demo/hello -m hi -q 1
[run-cluster] Ctrl-C stops all of them.
TXT
wait -n "${pids[@]}" || true
echo "[run-cluster] a proxy exited; see .local/cluster/*.log" >&2
