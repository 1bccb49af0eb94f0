#!/usr/bin/env bash
# Benchmark (issue 9): the same MQTT 3.1.1 load against mqtt-kafka-proxy (with the local
# Kafka) and against Mosquitto (Debian), on loopback, in the same run; prints one table:
# each figure for both, the ratio proxy / Mosquitto, the load generator's own CPU beside
# it (near 100 % of a core = the generator, not the broker, set the figure) and the goal
# the issue sets. A benchmark, not a test: nothing here fails on a slow figure.
#
#   make bench                                  (or: bash e2e/bench/run.sh)
#   BENCH_PARTS="idle latency" make bench       a subset of: idle latency throughput fanout
#
# Settings (environment): BENCH_IDLE="10000 50000" idle connections, BENCH_PUBLISHERS=100,
# BENCH_RATE=5000 msg/s for latency, BENCH_SECONDS=5 measured seconds per run,
# BENCH_PAYLOADS="16 1024", BENCH_FANOUT=1000 subscribers at BENCH_FANOUT_RATE=100 msg/s.
# About 6 minutes in all on 2 cores, the release build aside.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PARTS="${BENCH_PARTS:-idle latency throughput fanout}"
IDLE="${BENCH_IDLE:-10000 50000}"
PUBLISHERS="${BENCH_PUBLISHERS:-100}"
RATE="${BENCH_RATE:-5000}"
SECS="${BENCH_SECONDS:-5}"
PAYLOADS="${BENCH_PAYLOADS:-16 1024}"
FANOUT="${BENCH_FANOUT:-1000}"
FANOUT_RATE="${BENCH_FANOUT_RATE:-100}"
PROXY_PORT="${PROXY_PORT:-18830}"
MOSQUITTO_PORT="${MOSQUITTO_PORT:-18831}"
ADMIN_PORT="${ADMIN_PORT:-19091}"

STATE="${MQTT_KAFKA_STATE:-.local}"
TARGET="${CARGO_TARGET_DIR:-target}"
log() { echo "[bench] $*" >&2; }

bash e2e/env/up.sh >/dev/null   # Kafka, and Debian's mosquitto (install-tools.sh)
set -a; source "$STATE/env"; set +a
log "building release binaries (first time: a few minutes)"
cargo build -q --release -p mqtt-kafka-proxy --bin mqtt-kafka-proxy --example mqtt_bench
BENCH="$TARGET/release/examples/mqtt_bench"
# PROXY_BIN: another build of the proxy to measure (an A/B against an older commit, say).
PROXY_BIN="${PROXY_BIN:-$TARGET/release/mqtt-kafka-proxy}"

# Every connection is a file descriptor in the broker and another in the generator (both
# children of this shell). The hard limit is as far as a process without CAP_SYS_RESOURCE
# may go; past it, the idle counts are capped (and the table says at how many).
max_idle=0
for n in $IDLE; do ((n > max_idle)) && max_idle=$n; done
want=$((max_idle + 2048))
if [[ " $PARTS " == *" idle "* ]] && ! ulimit -n "$want" 2>/dev/null; then
  hard=$(ulimit -Hn)
  cap=$((hard - 1024))   # the broker's own files: listener, Kafka sockets, log, epoll
  log "ulimit -n $want refused: the hard limit of this shell is $hard, and raising a hard limit"
  log "  needs CAP_SYS_RESOURCE (root outside a container), or a higher limit from whoever starts"
  log "  the shell (limits.conf, systemd LimitNOFILE=, docker --ulimit nofile=). Idle counts above"
  log "  $cap are measured at $cap instead."
  ulimit -n "$hard"
  capped=""
  for n in $IDLE; do
    ((n > cap)) && n=$cap
    [[ " $capped " == *" $n "* ]] || capped+=" $n"
  done
  IDLE="${capped# }"
fi

run_id="bench-$$"
dir="$STATE/bench"
mkdir -p "$dir"
# Equivalent limits: no connection cap, keep-alive uncapped (the generator asks 600 s),
# 100 QoS 1 messages in flight towards a client, deep queues: Mosquitto holds up to a
# million messages per client in memory, and so does the proxy before a subscriber counts
# as lagging (by default it reads from Kafka past 16 384 messages or 4 MiB; nothing is
# lost either way, but a catch-up from Kafka is slower than memory).
cat > "$dir/proxy.yaml" <<YAML
listeners: [{name: mqtt, protocol: tcp, address: "127.0.0.1:$PROXY_PORT"}]
admin: {address: "127.0.0.1:$ADMIN_PORT"}
kafka: {bootstrapServers: "$KAFKA_BOOTSTRAP"}
topics: {messages: $run_id-messages, retained: $run_id-retained, sessions: $run_id-sessions}
mqtt: {maxConnections: 4000000000, maxKeepAlive: 0, maxInflightOutbound: 100, receiveMaximum: 1000,
       maxQueuedMessages: 1000000, maxQueuedBytes: 1073741824}
YAML
cat > "$dir/mosquitto.conf" <<CONF
listener $MOSQUITTO_PORT 127.0.0.1
allow_anonymous true
max_connections -1
max_keepalive 65535
max_inflight_messages 100
max_queued_messages 1000000
set_tcp_nodelay true
persistence false
connection_messages false
log_type error
log_type warning
CONF

proxy_pid="" mosquitto_pid="" gen_pid=""
cleanup() {
  local p
  for p in $gen_pid $proxy_pid $mosquitto_pid; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

start_proxy() {
  "$PROXY_BIN" --config "$dir/proxy.yaml" --create-topics --partitions 3 >> "$dir/proxy.log" 2>&1 &
  proxy_pid=$!
  for _ in $(seq 150); do
    curl -fs "127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$proxy_pid" 2>/dev/null || break
    sleep 0.2
  done
  log "the proxy did not become ready; see $dir/proxy.log"; exit 1
}
start_mosquitto() {
  /usr/sbin/mosquitto -c "$dir/mosquitto.conf" >> "$dir/mosquitto.log" 2>&1 &
  mosquitto_pid=$!
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$MOSQUITTO_PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  log "mosquitto did not start; see $dir/mosquitto.log"; exit 1
}
stop() { # PID
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }   # utime + stime

results="$dir/results.jsonl"
: > "$results"
# Each run binds its own source addresses (127.<run>.0.x): connections the generator
# closed sit in TIME_WAIT on their ports for a minute, and the next run needs fresh ones.
src=1

if [[ " $PARTS " == *" idle "* ]]; then
  for n in $IDLE; do
    for broker in proxy mosquitto; do
      # A fresh broker per count: memory freed after the previous connections closed
      # would otherwise be reused and look free.
      if [[ $broker == proxy ]]; then start_proxy; pid=$proxy_pid port=$PROXY_PORT
      else start_mosquitto; pid=$mosquitto_pid port=$MOSQUITTO_PORT; fi
      sleep 2
      before=$(rss_kb "$pid")
      out="$dir/idle-$broker-$n.json"
      : > "$out"
      log "idle: $n connections to $broker"
      "$BENCH" --broker "127.0.0.1:$port" --source "127.$src.0.1" idle "$n" > "$out" 2>> "$dir/generator.log" &
      gen_pid=$!
      src=$((src + 1))
      for _ in $(seq 900); do
        [[ -s $out ]] && break
        kill -0 "$gen_pid" 2>/dev/null || break
        sleep 0.2
      done
      [[ -s $out ]] || { log "the generator gave no result; see $dir/generator.log"; exit 1; }
      sleep 3   # what each connection's first moments allocate, settled
      after=$(rss_kb "$pid")
      stop "$gen_pid"; gen_pid=""
      stop "$pid"
      sed "s/^{/{\"broker\":\"$broker\",\"rss_before_kb\":$before,\"rss_after_kb\":$after,/" "$out" | tee -a "$results" >&2
    done
  done
fi

# produce_p99 BEFORE AFTER: from two scrapes of the proxy's /metrics, the p99 (the upper
# bound of its bucket, ms) and count of the Kafka acknowledgements between them, by kind:
# {"qos0": [p99, n], ...}. It tells how much of a PUBACK's p99 Kafka took.
produce_p99() {
  python3 - "$1" "$2" <<'PY'
import json, re, sys
def buckets(path):
    out = {}
    for line in open(path):
        m = re.match(r'mqtt_kafka_kafka_produce_seconds_bucket\{kind="(\w+)",le="([^"]+)"\} (\S+)', line)
        if m:
            out.setdefault(m[1], []).append((float(m[2]), float(m[3])))
    return out
before, after = buckets(sys.argv[1]), buckets(sys.argv[2])
result = {}
for kind, rows in after.items():
    old = dict(before.get(kind, []))
    delta = [(le, n - old.get(le, 0.0)) for le, n in rows]
    total = delta[-1][1] if delta else 0
    if total > 0:
        p99 = next(le for le, n in delta if n >= 0.99 * total)
        result[kind] = [p99 * 1000 if p99 != float("inf") else None, total]
print(json.dumps(result))
PY
}

measure() { # BROKER MODE ARGS...: one generator run; its JSON line, with the broker's CPU, to $results
  local broker="$1" mode="$2" pid port t0 produce="{}"; shift 2
  if [[ $broker == proxy ]]; then pid=$proxy_pid port=$PROXY_PORT; else pid=$mosquitto_pid port=$MOSQUITTO_PORT; fi
  [[ $broker == proxy ]] && curl -fs "127.0.0.1:$ADMIN_PORT/metrics" > "$dir/metrics.before" || true
  t0=$(cpu_ticks "$pid")
  "$BENCH" --broker "127.0.0.1:$port" --source "127.$src.0.1" "$mode" "$@" 2>> "$dir/generator.log" \
    | sed "s/^{/{\"broker\":\"$broker\",\"broker_cpu_secs\":__CPU__,\"kafka_produce\":__PRODUCE__,/" > "$dir/run.json"
  src=$((src + 1))
  if [[ $broker == proxy ]] && curl -fs "127.0.0.1:$ADMIN_PORT/metrics" > "$dir/metrics.after"; then
    produce=$(produce_p99 "$dir/metrics.before" "$dir/metrics.after")
  fi
  sed -e "s/__CPU__/$(awk -v a="$t0" -v b="$(cpu_ticks "$pid")" 'BEGIN {print (b - a) / 100}')/" \
    -e "s/__PRODUCE__/$produce/" "$dir/run.json" \
    | tee -a "$results" >&2
  # Kafka's JVM and both brokers settle between runs, alike for both.
  sleep 2
}

if [[ " $PARTS " =~ \ (latency|throughput|fanout)\  ]]; then
  start_proxy
  start_mosquitto
  sleep 2
  # One run each, not counted: a fresh proxy's first messages also wait for its Kafka
  # producer's connections and topic metadata.
  for port in "$PROXY_PORT" "$MOSQUITTO_PORT"; do
    "$BENCH" --broker "127.0.0.1:$port" --source "127.$src.0.1" latency --seconds 2 --rate 1000 \
      > /dev/null 2>> "$dir/generator.log" || true
    src=$((src + 1))
  done
  for part in latency throughput; do
    [[ " $PARTS " == *" $part "* ]] || continue
    for q in 0 1; do
      for size in $PAYLOADS; do
        for broker in proxy mosquitto; do
          log "$part: QoS $q, $size B, $PUBLISHERS publishers, $broker"
          extra=()
          [[ $part == latency ]] && extra=(--rate "$RATE")
          measure "$broker" "$part" --qos "$q" --payload "$size" --publishers "$PUBLISHERS" \
            --seconds "$SECS" "${extra[@]}"
        done
        if [[ $part == latency && $q == 1 ]]; then
          # Kafka alone at the same rate, through a producer set up as the proxy's: the
          # floor under the proxy's PUBACK, measured in the same run.
          log "$part: Kafka alone (acks=all), $size B"
          "$BENCH" kafka --bootstrap "$KAFKA_BOOTSTRAP" --topic "$run_id-messages" --rate "$RATE" \
            --payload "$size" --seconds "$SECS" 2>> "$dir/generator.log" \
            | sed 's/^{/{"broker":"kafka",/' | tee -a "$results" >&2
          sleep 2
        fi
      done
    done
  done
  if [[ " $PARTS " == *" fanout "* ]]; then
    for broker in proxy mosquitto; do
      log "fanout: 1 publisher, $FANOUT subscribers, $FANOUT_RATE msg/s, $broker"
      measure "$broker" fanout --qos 0 --payload 16 --publishers 1 --subscribers "$FANOUT" \
        --rate "$FANOUT_RATE" --seconds "$SECS"
    done
  fi
fi

python3 - "$results" <<'PY'
import json, math, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
def find(broker, **keys):
    return next((r for r in rows if r["broker"] == broker and all(r.get(k) == v for k, v in keys.items())), None)

table = []
notes = []
def add(figure, p, m, key, goal=None, fmt="{:.0f}"):
    """One row: KEY of both runs; GOAL = (text, test of the proxy's value and the ratio)."""
    if p is None or m is None:
        return
    pv, mv = key(p), key(m)
    ratio = pv / mv if mv and not math.isnan(mv) and not math.isnan(pv) else float("nan")
    cpu = f"{p['cpu_pct']:.0f}% / {m['cpu_pct']:.0f}%"
    mark = ""
    if goal:
        mark = goal[0] + ("  yes" if goal[1](pv, ratio) else "  NO")
    table.append((figure, fmt.format(pv), fmt.format(mv), f"{ratio:.2f}", cpu, mark))

def lost(r):
    gone = r["expected"] - r["delivered"]
    return f" (lost {gone})" if gone > 0 else ""

for r in [r for r in rows if r["mode"] == "idle" and r["broker"] == "proxy"]:
    n = r["connections"]
    p, m = r, find("mosquitto", mode="idle", connections=n)
    if m is None:
        continue
    per = lambda x: (x["rss_after_kb"] - x["rss_before_kb"]) / max(x["connected"], 1)
    short = "" if p["connected"] == n and m["connected"] == n else f" (connected {p['connected']} / {m['connected']})"
    add(f"RSS KB per idle connection, {n}{short}", p, m, per, ("ratio <= 1", lambda v, q: q <= 1), "{:.2f}")

for q in (0, 1):
    for p in [r for r in rows if r["broker"] == "proxy" and r["mode"] == "latency" and r["qos"] == q]:
        m = find("mosquitto", mode="latency", qos=q, payload=p["payload"])
        label = f"QoS {q} {p['payload']} B @ {p['rate']}/s, {p['publishers']} pub:"
        add(f"{label} p50 ms{lost(p)}", p, m, lambda r: r["p50_ms"], fmt="{:.2f}")
        goal = ("p99 < 10 ms", lambda v, _: v < 10) if q == 1 and p["rate"] == 5000 else None
        add(f"{label} p99 ms", p, m, lambda r: r["p99_ms"], goal, fmt="{:.2f}")
        if q == 1:
            add(f"{label} PUBACK p99 ms", p, m, lambda r: r["ack_p99_ms"], fmt="{:.2f}")
        alone = find("kafka", mode="kafka", payload=p["payload"], rate=p["rate"]) if q == 1 else None
        if alone and alone["ack_p99_ms"] is not None:
            notes.append(f"{label} Kafka alone (librdkafka, acks=all, same rate): ack p50 {alone['ack_p50_ms']:.2f} ms, "
                         f"p99 {alone['ack_p99_ms']:.2f} ms, slow slices {alone['slow_slices'][:3]}")
        kafka = (p.get("kafka_produce") or {}).get(f"qos{q}")
        if kafka and kafka[0] is not None:
            notes.append(f"{label} Kafka's acknowledgement p99 (proxy histogram) <= {kafka[0]:g} ms over {kafka[1]:.0f} records")
        if p.get("slow_slices"):
            notes.append(f"{label} 100 ms slices over 10 ms (s into the run, worst ms): {p['slow_slices'][:5]}")

for q in (0, 1):
    for p in [r for r in rows if r["broker"] == "proxy" and r["mode"] == "throughput" and r["qos"] == q]:
        m = find("mosquitto", mode="throughput", qos=q, payload=p["payload"])
        label = f"QoS {q} {p['payload']} B max, {p['publishers']} pub:"
        if q == 0:
            add(f"{label} delivered msg/s{lost(p)}", p, m, lambda r: r["delivered_per_sec"],
                ("ratio >= 1", lambda v, r: r >= 1))
        else:
            add(f"{label} acked msg/s", p, m, lambda r: r["acked_per_sec"], ("ratio >= 0.5", lambda v, r: r >= 0.5))
            add(f"{label} delivered msg/s{lost(p)}", p, m, lambda r: r["delivered_per_sec"])
        add(f"{label} p99 ms (saturated)", p, m, lambda r: r["p99_ms"], fmt="{:.1f}")

p, m = find("proxy", mode="fanout"), find("mosquitto", mode="fanout")
if p and m:
    label = f"fan-out 1 x {p['subscribers']} @ {p['rate']}/s:"
    add(f"{label} delivered msg/s{lost(p)}", p, m, lambda r: r["delivered_per_sec"])
    add(f"{label} p99 ms", p, m, lambda r: r["p99_ms"], fmt="{:.1f}")

losses = [f"{r['broker']} {r['mode']} QoS {r['qos']} {r['payload']} B: {r['expected'] - r['delivered']} of {r['expected']}"
          for r in rows if r["mode"] not in ("idle", "kafka") and r["expected"] > r["delivered"]]
w = max([len(t[0]) for t in table] + [6])
print()
print(f"{'figure':{w}}  {'proxy':>10}  {'mosquitto':>10}  {'proxy/mosq':>10}  {'gen CPU p / m':>13}  goal")
for figure, pv, mv, ratio, cpu, mark in table:
    print(f"{figure:{w}}  {pv:>10}  {mv:>10}  {ratio:>10}  {cpu:>13}  {mark}")
print("\ngen CPU: the load generator's own CPU (user + sys) over the run, in % of one core; it runs on one")
print("thread, so near 100 % means the generator, not the broker, set the figure.")
for note in notes:
    print(note)
if losses:
    print("not delivered (measured window): " + "; ".join(losses))
PY
