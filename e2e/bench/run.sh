#!/usr/bin/env bash
# Benchmark: the same MQTT load against mqtt-kafka-proxy (with the local Kafka) and
# against Mosquitto (Debian), on loopback, one run each; prints the figures and the ratio
# proxy / Mosquitto. A benchmark, not a test: nothing here fails on a slow figure.
#
#   make bench            (or: bash e2e/bench/run.sh [COUNT] [RATE] [SECONDS])
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
COUNT="${1:-20000}"
RATE="${2:-1000}"
SECONDS_AT_RATE="${3:-5}"
PROXY_PORT="${PROXY_PORT:-18830}"
MOSQUITTO_PORT="${MOSQUITTO_PORT:-18831}"
ADMIN_PORT="${ADMIN_PORT:-19091}"

STATE="${MQTT_KAFKA_STATE:-.local}"
TARGET="${CARGO_TARGET_DIR:-target}"
bash e2e/env/up.sh >/dev/null
set -a; source "$STATE/env"; set +a
echo "[bench] building release binaries (first time: a few minutes)"
cargo build -q --release -p mqtt-kafka-proxy --bin mqtt-kafka-proxy --example mqtt_bench
BENCH="$TARGET/release/examples/mqtt_bench"

run_id="bench-$$"
mkdir -p "$STATE/bench"
cat > "$STATE"/bench/proxy.yaml <<YAML
listeners: [{name: mqtt, protocol: tcp, address: "127.0.0.1:$PROXY_PORT"}]
admin: {address: "127.0.0.1:$ADMIN_PORT"}
kafka: {bootstrapServers: "$KAFKA_BOOTSTRAP"}
topics: {messages: $run_id-messages, retained: $run_id-retained, sessions: $run_id-sessions}
mqtt: {maxInflightOutbound: 100, receiveMaximum: 1000}
YAML
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 100\nmax_queued_messages 100000\n' "$MOSQUITTO_PORT" > "$STATE"/bench/mosquitto.conf

"$TARGET"/release/mqtt-kafka-proxy --config "$STATE"/bench/proxy.yaml --create-topics --partitions 3 > "$STATE"/bench/proxy.log 2>&1 &
proxy_pid=$!
/usr/sbin/mosquitto -c "$STATE"/bench/mosquitto.conf > "$STATE"/bench/mosquitto.log 2>&1 &
mosquitto_pid=$!
trap 'kill $proxy_pid $mosquitto_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs "127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.2; done

measure() { # NAME PORT ARGS...
  local name="$1" port="$2"; shift 2
  "$BENCH" 127.0.0.1 "$port" "$@" | sed "s/^{/{\"broker\":\"$name\",/"
}

results="$STATE"/bench/results.jsonl
: > "$results"
# Latency first, at a fixed rate, on a quiet system; then the bursts. A pause between runs
# lets Kafka (its JVM) settle after a burst, for both brokers alike.
for q in 0 1; do
  for target in "proxy $PROXY_PORT" "mosquitto $MOSQUITTO_PORT"; do
    measure $target latency "$q" "$RATE" "$SECONDS_AT_RATE" | tee -a "$results"
    sleep 2
  done
done
for q in 0 1; do
  for target in "proxy $PROXY_PORT" "mosquitto $MOSQUITTO_PORT"; do
    measure $target throughput "$q" "$COUNT" | tee -a "$results"
    sleep 2
  done
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def get(broker, mode, qos):
    return next(r for r in rows if r["broker"] == broker and r["mode"] == mode and r["qos"] == qos)
print()
print(f"{'figure':44} {'proxy':>12} {'mosquitto':>12} {'proxy/mosq':>11}")
for qos in (0, 1):
    p, m = get("proxy", "throughput", qos), get("mosquitto", "throughput", qos)
    keys = [("delivered_msgs_per_sec", "delivered msg/s")]
    if qos:
        keys.insert(0, ("publish_msgs_per_sec", "acknowledged publish msg/s"))
    for key, label in keys:
        print(f"{'QoS %d %s' % (qos, label):44} {p[key]:>12.0f} {m[key]:>12.0f} {p[key] / m[key]:>11.2f}")
    # A fast figure that lost messages is no figure: show what arrived.
    print(f"{'QoS %d received of %d sent' % (qos, p['sent']):44} {p['received']:>12} {m['received']:>12}")
for qos in (0, 1):
    p, m = get("proxy", "latency", qos), get("mosquitto", "latency", qos)
    for key in ("p50_ms", "p99_ms"):
        label = f"QoS {qos} latency {key[:-3]} ms @ {p['rate']}/s"
        print(f"{label:44} {p[key]:>12.2f} {m[key]:>12.2f} {p[key] / m[key]:>11.2f}")
PY
