#!/usr/bin/env bash
# Measures the operator binary against the local environment (`make env-up`):
# - its resident memory while idle with N MqttKafkaProxy resources (default 10);
# - the time from `kubectl apply` of a spec change to the StatefulSet carrying it.
#
#   operator/measure.sh [path/to/mqtt-kafka-operator] [resources] [samples]
#
# Default binary: target/release/mqtt-kafka-operator (cargo build --release -p mqtt-kafka-operator).
# Cleans up after itself (the resources use deletePolicy: Delete, so their topics go too).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
binary=${1:-target/release/mqtt-kafka-operator}
count=${2:-10}
samples=${3:-5}
set -a; source .local/env; set +a
export PATH="$MQTT_KAFKA_BIN:$PATH"
ns="measure-$(date +%s)"
log=".local/measure-operator.log"

kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd/mqttkafkaproxies.mqttkafka.io --timeout=30s >/dev/null
kubectl create namespace "$ns" >/dev/null
"$binary" --namespace "$ns" --lease-namespace "$ns" --admin-address 127.0.0.1:18089 >"$log" 2>&1 &
pid=$!
cleanup() {
  kubectl -n "$ns" delete mkp --all --wait=true --timeout=60s >/dev/null 2>&1 || true
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

resource() { # name image
  cat <<EOF
---
apiVersion: mqttkafka.io/v1alpha1
kind: MqttKafkaProxy
metadata: {name: $1, namespace: $ns}
spec:
  replicas: 3
  image: $2
  kafka:
    bootstrapServers: $KAFKA_BOOTSTRAP
    topics:
      sessions: {name: $ns-$1-sessions, partitions: 3}
      retained: {name: $ns-$1-retained, partitions: 3}
      messages: {name: $ns-$1-messages, partitions: 3}
      deletePolicy: Delete
EOF
}

for i in $(seq 0 $((count - 1))); do resource "p$i" "example.invalid/proxy:1"; done | kubectl apply -f - >/dev/null
kubectl -n "$ns" wait --for=condition=TopicsReady mkp --all --timeout=120s >/dev/null
echo "$count resources reconciled; idling 70 s (one resync pass included)"
sleep 70
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
threads=$(awk '/^Threads/ {print $2}' "/proc/$pid/status")
echo "idle with $count resources: VmRSS $((rss / 1024)) MiB (peak $((hwm / 1024)) MiB), $threads threads"

# Apply -> StatefulSet latency: a watch timestamps every StatefulSet change.
watch_out=$(mktemp)
kubectl -n "$ns" get statefulset p0 --watch --output-watch-events \
  -o 'jsonpath={.object.spec.template.spec.containers[0].image}{"\n"}' \
  > >(while IFS= read -r line; do echo "$(date +%s.%N) $line"; done >"$watch_out") &
watcher=$!
sleep 2
for n in $(seq 1 "$samples"); do
  image="example.invalid/proxy:$((n + 1))"
  start=$(date +%s.%N)
  resource p0 "$image" | kubectl apply -f - >/dev/null
  for _ in $(seq 1 100); do
    grep -q " $image\$" "$watch_out" && break
    sleep 0.05
  done
  seen=$(grep " $image\$" "$watch_out" | head -1 | cut -d' ' -f1)
  awk -v a="$start" -v b="$seen" 'BEGIN {printf "kubectl apply -> StatefulSet updated: %.0f ms\n", (b - a) * 1000}'
done
kill "$watcher" 2>/dev/null || true
rm -f "$watch_out"
