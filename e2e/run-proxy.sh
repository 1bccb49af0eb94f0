#!/usr/bin/env bash
# `make run`: the proxy on 127.0.0.1:1883 against the local environment (`make env-up`
# started it). Creates the Kafka topics it needs, prints how to try it, runs until Ctrl-C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -f .local/env ]] || { echo "no .local/env: run 'make env-up' first" >&2; exit 1; }
set -a; source .local/env; set +a
MQTT_PORT="${MQTT_PORT:-1883}"
ADMIN_PORT="${ADMIN_PORT:-9090}"
cat > .local/proxy.yaml <<YAML
# Written by 'make run'; see deploy/examples/proxy-config.yaml for every option.
listeners:
  - {name: mqtt, protocol: tcp, address: "127.0.0.1:$MQTT_PORT"}
admin: {address: "127.0.0.1:$ADMIN_PORT"}
kafka: {bootstrapServers: "$KAFKA_BOOTSTRAP"}
YAML
cargo build -q -p mqtt-kafka-proxy
cat <<TXT
[run] mqtt-kafka-proxy: MQTT on 127.0.0.1:$MQTT_PORT, health and metrics on http://127.0.0.1:$ADMIN_PORT/{healthz,readyz,metrics}
[run] Kafka at $KAFKA_BOOTSTRAP (topics mqtt-messages, mqtt-retained, mqtt-sessions are created if missing)
[run] try it from another shell:
        mosquitto_sub -h 127.0.0.1 -p $MQTT_PORT -V mqttv5 -t 'demo/#' -v
        mosquitto_pub -h 127.0.0.1 -p $MQTT_PORT -V mqttv5 -t demo/hello -m 'hi' -q 1 -D publish user-property site north
        kcat -C -b $KAFKA_BOOTSTRAP -t mqtt-messages -f 'key=%k value=%s headers=%h partition=%p\n'
[run] Ctrl-C stops the proxy; 'make env-down' stops Kafka and Kubernetes.
TXT
exec target/debug/mqtt-kafka-proxy --config .local/proxy.yaml --create-topics "$@"
