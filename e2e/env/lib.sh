# Shared settings for the local environment scripts. Sourced, never run.
# Everything downloaded or built lives under $MQTT_KAFKA_CACHE (outside the repository) so a
# fresh clone reuses it; everything a running environment writes lives under $STATE_DIR.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ENV_DIR="$REPO_ROOT/e2e/env"
CACHE_DIR="${MQTT_KAFKA_CACHE:-$HOME/.cache/mqtt-kafka}"
STATE_DIR="${MQTT_KAFKA_STATE:-$REPO_ROOT/.local}"
ENV_FILE="$STATE_DIR/env"

# Pinned versions. Kubernetes comes from the k8s.io/kubernetes Go module (see
# tools/kubernetes/go.mod, which also fixes the etcd version); helm from its Go module.
KUBERNETES_VERSION="v1.34.4"
HELM_VERSION="v3.19.5"
KAFKA_VERSION="4.1.1"
KAFKA_SCALA="2.13"

BIN_DIR="$CACHE_DIR/bin"
K8S_BIN_DIR="$CACHE_DIR/kubernetes-$KUBERNETES_VERSION"
KAFKA_LIB_DIR="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"

KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
ETCD_PORT="${ETCD_PORT:-12379}"
ETCD_PEER_PORT="${ETCD_PEER_PORT:-12380}"
APISERVER_PORT="${APISERVER_PORT:-16443}"

log() { printf '[env] %s\n' "$*" >&2; }
die() { printf '[env] error: %s\n' "$*" >&2; exit 1; }

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND once a second.
wait_for() {
  local what="$1" secs="$2"; shift 2
  local i
  for ((i = 0; i < secs; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  return 1
}

# pid_alive FILE: the pid recorded in FILE is a running process.
pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_process NAME: TERM the recorded process group, KILL it after 30 s, forget the pid.
stop_process() {
  local pidfile="$STATE_DIR/$1.pid"
  [[ -f "$pidfile" ]] || return 0
  local pid; pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    log "$1: stopping (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 30; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$1: did not stop in 30 s; killing"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      sleep 1
    fi
  fi
  rm -f "$pidfile"
}
