#!/usr/bin/env bash
# Benchmark of sessions and sharding (issue 7); a benchmark, not a test: nothing fails on a
# slow figure. Prints:
#   - how long ownership takes to move after SIGKILL and after SIGTERM of one of 3 processes;
#   - a reconnect storm: SESSIONS persistent sessions with MESSAGES offline messages each
#     reconnecting at once to one process: time until all are delivered, peak RSS;
#   - Kafka clients of that process (librdkafka main threads) with 0 and with SESSIONS sessions.
#
#   make bench-sessions            (or: bash e2e/bench/sessions.sh [SESSIONS] [MESSAGES])
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SESSIONS="${1:-10000}"
MESSAGES="${2:-100}"
STATE="${MQTT_KAFKA_STATE:-.local}"
TARGET="${CARGO_TARGET_DIR:-target}"
# Thousands of connections on both ends.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
bash e2e/env/up.sh >/dev/null
set -a; source "$STATE/env"; set +a
echo "[bench] building release binaries"
cargo build -q --release -p mqtt-kafka-proxy --bin mqtt-kafka-proxy --example session_bench
BIN="$TARGET/release/mqtt-kafka-proxy"
run_id="sbench-$$"
dir="$STATE/bench/$run_id"
mkdir -p "$dir"
pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT

# start I [REDIRECT]: proxy-I on 127.0.0.1:(18840+I), admin 19100+I.
start() {
  local i="$1" redirect="${2:-true}" port=$((18840 + $1))
  cat > "$dir/proxy-$i.yaml" <<YAML
instanceId: proxy-$i
listeners: [{name: mqtt, protocol: tcp, address: "127.0.0.1:$port"}]
admin: {address: "127.0.0.1:$((19100 + i))"}
kafka: {bootstrapServers: "$KAFKA_BOOTSTRAP"}
topics: {messages: $run_id-messages, retained: $run_id-retained, sessions: $run_id-sessions}
mqtt: {maxConnections: 100000, receiveMaximum: 1000}
cluster: {serverReference: "127.0.0.1:$port", redirect: {enabled: $redirect}}
YAML
  "$BIN" --config "$dir/proxy-$i.yaml" --create-topics --partitions 6 > "$dir/proxy-$i.log" 2>&1 &
  pids[$i]=$!
  for _ in $(seq 150); do curl -fs "127.0.0.1:$((19100 + i))/readyz" >/dev/null 2>&1 && return; sleep 0.2; done
  echo "proxy-$i not ready; see $dir/proxy-$i.log" >&2; exit 1
}
owned() { curl -fs "127.0.0.1:$((19100 + $1))/metrics" 2>/dev/null | awk '/^mqtt_kafka_owned_session_partitions/ {print $2}' || echo 0; }
sum_owned() { local s=0 i; for i in "$@"; do s=$((s + $(owned "$i"))); done; echo "$s"; }
wait_sum() { # SUM PROCS...: until the processes own SUM partitions together; prints seconds waited
  local want="$1"; shift
  local t0; t0=$(date +%s.%N)
  for _ in $(seq 600); do
    [[ "$(sum_owned "$@")" == "$want" ]] && { elapsed "$t0"; return; }
    sleep 0.05
  done
  echo "never"
}
elapsed() { awk -v now="$(date +%s.%N)" -v t0="$1" 'BEGIN { printf "%.2f\n", now - t0 }'; }
rdk_clients() { grep -l '^rdk:main' /proc/"$1"/task/*/comm 2>/dev/null | wc -l; }
rss_kib() { awk "/^$2:/ {print \$2}" /proc/"$1"/status; }

echo "[bench] ownership: 3 processes, 6 sessions-topic partitions"
for i in 0 1 2; do start "$i"; done
wait_sum 6 0 1 2 >/dev/null
kill -9 "${pids[2]}"
after_kill=$(wait_sum 6 0 1)
start 2
wait_sum 6 0 1 2 >/dev/null
sleep 2
t0=$(date +%s.%N)
kill -TERM "${pids[2]}"
after_term=$(wait_sum 6 0 1)
wait "${pids[2]}" 2>/dev/null || true
exit_after_term=$(elapsed "$t0")
kill -9 "${pids[0]}" "${pids[1]}" 2>/dev/null || true
echo "{\"ownership_moved_after_sigkill_s\":$after_kill,\"ownership_moved_after_sigterm_s\":$after_term,\"process_exited_after_sigterm_s\":$exit_after_term}"

echo "[bench] reconnect storm: $SESSIONS sessions x $MESSAGES offline messages, one process"
start 3 false
pid="${pids[3]}"
clients_idle=$(rdk_clients "$pid")
rss_idle=$(rss_kib "$pid" VmRSS)
peak=0
( while kill -0 "$pid" 2>/dev/null; do r=$(rss_kib "$pid" VmRSS); echo "$r"; sleep 0.2; done ) > "$dir/rss.txt" &
sampler=$!
storm=$("$TARGET/release/examples/session_bench" 127.0.0.1 18843 "$SESSIONS" "$MESSAGES")
clients_busy=$(rdk_clients "$pid")
kill "$sampler" 2>/dev/null || true
peak=$(sort -n "$dir/rss.txt" | tail -1)
echo "$storm"
echo "{\"rss_idle_mib\":$((rss_idle / 1024)),\"rss_peak_during_storm_mib\":$((peak / 1024)),\"kafka_clients_idle\":$clients_idle,\"kafka_clients_after_storm\":$clients_busy}"
