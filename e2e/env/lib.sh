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
COREDNS_VERSION="v1.15.0"

BIN_DIR="$CACHE_DIR/bin"
K8S_BIN_DIR="$CACHE_DIR/kubernetes-$KUBERNETES_VERSION"
KAFKA_LIB_DIR="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"

KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
# A SASL_SSL listener (SCRAM-SHA-512 over TLS signed by the environment's own CA) beside
# the plaintext one, for the proxy's Kafka security tests; the user is created at start-up.
KAFKA_SASL_PORT="${KAFKA_SASL_PORT:-$((KAFKA_PORT + 3))}"
KAFKA_SASL_USER="${KAFKA_SASL_USER:-mqtt-kafka-proxy}"
ETCD_PORT="${ETCD_PORT:-12379}"
ETCD_PEER_PORT="${ETCD_PEER_PORT:-12380}"
APISERVER_PORT="${APISERVER_PORT:-16443}"

# The opt-in node (NODE=1 make env-up): kubelet, kube-scheduler, kube-proxy, containerd, CoreDNS.
# One node per machine: it owns the CNI bridge below and host-wide settings (see node.sh).
# Pods reach the host at NODE_IP, the bridge's own address: the apiserver and a second Kafka
# listener (KAFKA_NODE_PORT) bind there while the node is on; nothing binds the machine's
# outside address.
NODE_NAME="${NODE_NAME:-mqtt-kafka-local}"
NODE_BRIDGE="${NODE_BRIDGE:-mkk0}"
POD_CIDR="${POD_CIDR:-10.244.0.0/24}"
NODE_IP="${NODE_IP:-10.244.0.1}"
SERVICE_CIDR="10.0.0.0/24"
DNS_SERVICE_IP="10.0.0.10"
KAFKA_NODE_PORT="${KAFKA_NODE_PORT:-$((KAFKA_PORT + 2))}"
KUBELET_PORT="${KUBELET_PORT:-10250}"
KUBELET_HEALTHZ_PORT="${KUBELET_HEALTHZ_PORT:-10248}"
SCHEDULER_PORT="${SCHEDULER_PORT:-10259}"
KUBE_PROXY_HEALTHZ_PORT="${KUBE_PROXY_HEALTHZ_PORT:-10256}"
KUBE_PROXY_METRICS_PORT="${KUBE_PROXY_METRICS_PORT:-10249}"

# Image tags of the local images (make images; the node imports them into its containerd).
# Other tools (a Tiltfile) assume these names: change them here only.
PROXY_IMAGE="localhost/mqtt-kafka-proxy:dev"
OPERATOR_IMAGE="localhost/mqtt-kafka-operator:dev"
PAUSE_IMAGE="localhost/pause:dev"
COREDNS_IMAGE="localhost/coredns:dev"
TOOLBOX_IMAGE="localhost/toolbox:dev"

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
