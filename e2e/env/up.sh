#!/usr/bin/env bash
# Starts the local environment: Kafka (KRaft, one node) and a Kubernetes control plane
# (etcd, kube-apiserver, kube-controller-manager), all on 127.0.0.1. Idempotent: pieces that
# are already running and healthy are left alone; a second run changes nothing.
# NODE=1 adds a node (node.sh): kubelet, kube-scheduler, kube-proxy, containerd, CoreDNS; the
# apiserver and a second Kafka listener then bind the node's bridge address $NODE_IP so pods
# reach them. A running node stays on until 'make env-down'.
# Writes the connection details to $STATE_DIR/env and prints them.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$ENV_DIR/node.sh"

NODE_ON=0
if node_wanted; then NODE_ON=1; fi

"$ENV_DIR/install-tools.sh" all
((NODE_ON == 0)) || "$ENV_DIR/install-tools.sh" node

mkdir -p "$STATE_DIR"
KAFKA_DIR="$STATE_DIR/kafka"
KUBE_DIR="$STATE_DIR/kube"
PKI_DIR="$KUBE_DIR/pki"
KUBECONFIG_FILE="$KUBE_DIR/admin.kubeconfig"
KUBECTL="$K8S_BIN_DIR/kubectl"
# Where the apiserver listens: loopback, or the node's address when the node is on.
API_HOST=127.0.0.1
((NODE_ON == 0)) || API_HOST="$NODE_IP"
MODE="api=$API_HOST kafka-node=$((NODE_ON == 1 ? KAFKA_NODE_PORT : 0))"

# port_free PORT: nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start NAME LOGFILE COMMAND...: runs COMMAND in its own session, records its pid.
start() {
  local name="$1" logfile="$2"; shift 2
  setsid "$@" >"$logfile" 2>&1 < /dev/null &
  echo $! >"$STATE_DIR/$name.pid"
}

# ensure NAME HEALTHY START SECONDS: leaves a healthy NAME alone; restarts one whose process
# runs but does not become healthy in 30 s; otherwise calls START and waits SECONDS for health.
ensure() {
  local name="$1" healthy="$2" start_fn="$3" secs="$4"
  if pid_alive "$STATE_DIR/$name.pid"; then
    if wait_for "$name" 30 "$healthy"; then log "$name: running"; return; fi
    log "$name: running but not healthy for 30 s; restarting"
    stop_process "$name"
  fi
  "$start_fn"
  wait_for "$name" "$secs" "$healthy" || die "$name did not become healthy in $secs s; see its log under $STATE_DIR"
}

# require_port_free NAME PORT: fail clearly if a process this environment does not own holds PORT.
require_port_free() {
  port_free "$2" || die "$1: port $2 is taken by another process (another checkout's environment? run 'make env-down' there, or set ${1^^}_PORT)"
}

# ---------------------------------------------------------------- Kafka
KAFKA_TLS_DIR="$KAFKA_DIR/tls"

kafka_healthy() {
  kcat -b "127.0.0.1:$KAFKA_PORT" -L -m 2 >/dev/null 2>&1 || return 1
  ((NODE_ON == 0)) || kcat -b "$NODE_IP:$KAFKA_NODE_PORT" -L -m 2 >/dev/null 2>&1 || return 1
  # An environment started before the SASL_SSL listener existed is restarted to gain it.
  port_free "$KAFKA_SASL_PORT" && return 1
  return 0
}

# The SASL_SSL listener's material, made once: a CA, the broker's certificate for
# 127.0.0.1/localhost in a PKCS#12 keystore, and the SCRAM user's password.
kafka_tls() {
  [[ -f "$KAFKA_TLS_DIR/broker.p12" && -f "$KAFKA_TLS_DIR/sasl-password" ]] && return 0
  log "kafka: creating the SASL_SSL listener's CA, certificate and SCRAM password"
  mkdir -p "$KAFKA_TLS_DIR"
  (
    cd "$KAFKA_TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -keyout ca.key -out ca.crt \
      -subj "/CN=mqtt-kafka-local-kafka-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >broker.ext
    openssl x509 -req -in broker.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -out broker.crt -extfile broker.ext 2>/dev/null
    openssl pkcs12 -export -in broker.crt -inkey broker.key -certfile ca.crt -name broker \
      -passout pass:mqtt-kafka-local -out broker.p12
    rm -f broker.csr broker.ext
    openssl rand -hex 16 >sasl-password
    chmod 600 ca.key broker.key broker.p12 sasl-password
  )
}

# kafka_scram_user: creates (or resets) the SCRAM-SHA-512 user of the SASL_SSL listener
# through the plaintext listener.
kafka_scram_user() {
  local password; password="$(cat "$KAFKA_TLS_DIR/sasl-password")"
  java -Xmx256m -cp "$KAFKA_LIB_DIR/*" "-Dlog4j2.configurationFile=$ENV_DIR/kafka/log4j2.properties" "-Dkafka.logs.dir=$KAFKA_DIR/logs/tools" \
    kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --alter \
    --add-config "SCRAM-SHA-512=[iterations=8192,password=$password]" \
    --entity-type users --entity-name "$KAFKA_SASL_USER" >"$KAFKA_DIR/logs/scram-user.log" 2>&1 \
    || die "kafka: creating the SCRAM user failed; see $KAFKA_DIR/logs/scram-user.log"
}

# sasl_ssl_healthy: the SCRAM user logs in over TLS and reads its own credential's
# description. Kafka's own client, not kcat: Debian's kcat carries librdkafka 2.0, whose
# SCRAM Kafka 4 refuses (fixed in librdkafka 2.6.1; the proxy builds 2.12).
sasl_ssl_healthy() {
  local client="$KAFKA_TLS_DIR/client.properties"
  cat >"$client" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$KAFKA_SASL_USER" password="$(cat "$KAFKA_TLS_DIR/sasl-password")";
ssl.truststore.type=PEM
ssl.truststore.location=$KAFKA_TLS_DIR/ca.crt
PROPS
  chmod 600 "$client"
  java -Xmx256m -cp "$KAFKA_LIB_DIR/*" "-Dlog4j2.configurationFile=$ENV_DIR/kafka/log4j2.properties" "-Dkafka.logs.dir=$KAFKA_DIR/logs/tools" \
    kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$KAFKA_SASL_PORT" --command-config "$client" \
    --describe --entity-type users --entity-name "$KAFKA_SASL_USER" 2>/dev/null | grep -q 'SCRAM-SHA-512'
}

launch_kafka() {
  require_port_free kafka "$KAFKA_PORT"
  require_port_free kafka_controller "$KAFKA_CONTROLLER_PORT"
  mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
  # With the node on, a second listener on the node's address serves pods.
  local node_listener="" node_map=""
  if ((NODE_ON == 1)); then
    node_listener=",NODE://$NODE_IP:$KAFKA_NODE_PORT"
    node_map=",NODE:PLAINTEXT"
  fi
  require_port_free kafka_sasl "$KAFKA_SASL_PORT"
  kafka_tls
  cat >"$KAFKA_DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT$node_listener
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT$node_listener
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL$node_map
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$KAFKA_TLS_DIR/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=mqtt-kafka-local
listener.name.sasl_ssl.ssl.key.password=mqtt-kafka-local
log.dirs=$KAFKA_DIR/data
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.backoff.ms=1000
PROPS
  # ZGC: its pauses stay under a millisecond. With G1 (even at Kafka's own 20 ms goal) this
  # 2-core machine saw young pauses of 20-200 ms, and each stalls every produce request in
  # flight: the broker's pauses, not the proxy, then set the p99 of `make bench`. gc.log,
  # beside the broker's log, shows each collection and safepoint with its pause.
  local java=(java -Xms1g -Xmx1g -XX:+UseZGC
    "-Xlog:gc,gc+phases,safepoint:file=$KAFKA_DIR/logs/gc.log:time,uptime:filecount=3,filesize=10m"
    -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$ENV_DIR/kafka/log4j2.properties" "-Dkafka.logs.dir=$KAFKA_DIR/logs"
    -cp "$KAFKA_LIB_DIR/*")
  if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
    log "kafka: formatting storage"
    "${java[@]}" kafka.tools.StorageTool format -t "mqtt-kafka-local-000" -c "$KAFKA_DIR/server.properties" --ignore-formatted >"$KAFKA_DIR/logs/format.log" 2>&1 \
      || die "kafka storage format failed; see $KAFKA_DIR/logs/format.log"
  fi
  log "kafka: starting on 127.0.0.1:$KAFKA_PORT${node_listener:+ and $NODE_IP:$KAFKA_NODE_PORT}"
  start kafka "$KAFKA_DIR/logs/stdout.log" "${java[@]}" kafka.Kafka "$KAFKA_DIR/server.properties"
}

# ---------------------------------------------------------------- PKI for the control plane
# leaf NAME SUBJECT EXTENSIONS (in $PKI_DIR): a P-256 key and a certificate signed by the local CA.
leaf() {
  (
    cd "$PKI_DIR"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    printf '%s\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -out "$1.crt" -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  )
}

apiserver_cert() {
  leaf apiserver "/CN=kube-apiserver" \
    "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"$'\n'"extendedKeyUsage=serverAuth"
}

make_pki() {
  if [[ ! -f "$PKI_DIR/admin.crt" ]]; then
    log "kube: creating certificates"
    mkdir -p "$PKI_DIR"
    (
      cd "$PKI_DIR"
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -keyout ca.key -out ca.crt -subj "/CN=mqtt-kafka-local-ca" 2>/dev/null
      openssl genrsa -out sa.key 2048 2>/dev/null
      openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    )
    apiserver_cert
    leaf admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth"
  fi
  # Certificates of an older checkout's environment lack the node's address: add it.
  if ((NODE_ON == 1)) && ! openssl x509 -in "$PKI_DIR/apiserver.crt" -noout -checkip "$NODE_IP" | grep -q 'does match'; then
    log "kube: adding $NODE_IP to the apiserver certificate"
    apiserver_cert
    stop_process kube-apiserver
  fi
  if ((NODE_ON == 1)); then
    [[ -f "$PKI_DIR/node.crt" ]] || leaf node "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth"
    # The node's scheduler and kube-proxy: users that built-in RBAC knows (node.sh).
    [[ -f "$PKI_DIR/kube-scheduler.crt" ]] || leaf kube-scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
    [[ -f "$PKI_DIR/kube-proxy.crt" ]] || leaf kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
  fi
}

write_kubeconfig() {
  cat >"$KUBECONFIG_FILE" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://$API_HOST:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI_DIR/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 "$PKI_DIR/admin.crt")
    client-key-data: $(base64 -w0 "$PKI_DIR/admin.key")
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
current-context: local
KC
  chmod 600 "$KUBECONFIG_FILE"
}

# ---------------------------------------------------------------- etcd
etcd_healthy() { curl -fsS "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }

launch_etcd() {
  require_port_free etcd "$ETCD_PORT"
  require_port_free etcd_peer "$ETCD_PEER_PORT"
  mkdir -p "$KUBE_DIR/etcd"
  log "etcd: starting on 127.0.0.1:$ETCD_PORT"
  start etcd "$KUBE_DIR/etcd.log" "$K8S_BIN_DIR/etcd" --name local --data-dir "$KUBE_DIR/etcd/data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "" \
    --unsafe-no-fsync --quota-backend-bytes 1073741824
}

# ---------------------------------------------------------------- kube-apiserver
apiserver_healthy() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get --raw /readyz >/dev/null 2>&1; }

launch_apiserver() {
  {
    require_port_free apiserver "$APISERVER_PORT"
    log "kube-apiserver: starting on https://$API_HOST:$APISERVER_PORT"
    local mode_flags=()
    if ((NODE_ON == 1)); then
      # Bound to the node's address with the default endpoint reconciler, so the 'kubernetes'
      # Service leads pods here; the Node authorizer and NodeRestriction for the kubelet.
      mode_flags=(--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction
        --kubelet-client-certificate "$PKI_DIR/admin.crt" --kubelet-client-key "$PKI_DIR/admin.key"
        --kubelet-preferred-address-types InternalIP)
    else
      # The endpoint reconciler is off: it would publish the loopback address as the
      # 'kubernetes' Service's endpoint, which validation rejects.
      mode_flags=(--endpoint-reconciler-type none --authorization-mode RBAC)
    fi
    start kube-apiserver "$KUBE_DIR/kube-apiserver.log" "$K8S_BIN_DIR/kube-apiserver" \
      --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
      --bind-address "$API_HOST" --advertise-address "$API_HOST" --secure-port "$APISERVER_PORT" \
      "${mode_flags[@]}" \
      --cert-dir "$KUBE_DIR/apiserver-certs" \
      --tls-cert-file "$PKI_DIR/apiserver.crt" --tls-private-key-file "$PKI_DIR/apiserver.key" \
      --client-ca-file "$PKI_DIR/ca.crt" \
      --service-account-key-file "$PKI_DIR/sa.pub" --service-account-signing-key-file "$PKI_DIR/sa.key" \
      --service-account-issuer https://kubernetes.default.svc \
      --service-cluster-ip-range "$SERVICE_CIDR" \
      --allow-privileged=true \
      --profiling=false
  }
}

# ---------------------------------------------------------------- kube-controller-manager
# The service-account controller creating 'default' proves the controllers run.
controller_manager_healthy() {
  "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get serviceaccount default -n default >/dev/null 2>&1
}

launch_controller_manager() {
  {
    log "kube-controller-manager: starting"
    # With a node, its lifecycle controller marks it (un)reachable and lifts the not-ready taint.
    local controllers='*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller'
    ((NODE_ON == 0)) || controllers='*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller'
    start kube-controller-manager "$KUBE_DIR/kube-controller-manager.log" "$K8S_BIN_DIR/kube-controller-manager" \
      --kubeconfig "$KUBECONFIG_FILE" --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
      --bind-address 127.0.0.1 --secure-port 0 \
      --service-account-private-key-file "$PKI_DIR/sa.key" --root-ca-file "$PKI_DIR/ca.crt" \
      --use-service-account-credentials=false --leader-elect=false \
      --controllers "$controllers" \
      --concurrent-statefulset-syncs 5 --profiling=false
  }
}

write_env() {
  cat >"$ENV_FILE" <<ENV
# Written by 'make env-up'. Scripts: source it. Tests: read KEY=VALUE lines.
KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
KAFKA_SASL_BOOTSTRAP=127.0.0.1:$KAFKA_SASL_PORT
KAFKA_SASL_MECHANISM=SCRAM-SHA-512
KAFKA_SASL_USER=$KAFKA_SASL_USER
KAFKA_SASL_PASSWORD_FILE=$KAFKA_TLS_DIR/sasl-password
KAFKA_CA_FILE=$KAFKA_TLS_DIR/ca.crt
KUBECONFIG=$KUBECONFIG_FILE
ETCD_ENDPOINT=http://127.0.0.1:$ETCD_PORT
MQTT_KAFKA_BIN=$BIN_DIR
KAFKA_LIBS=$KAFKA_LIB_DIR
PROXY_IMAGE=$PROXY_IMAGE
OPERATOR_IMAGE=$OPERATOR_IMAGE
ENV
  if ((NODE_ON == 1)); then
    cat >>"$ENV_FILE" <<ENV
NODE=1
NODE_NAME=$NODE_NAME
NODE_IP=$NODE_IP
KAFKA_NODE_BOOTSTRAP=$NODE_IP:$KAFKA_NODE_PORT
CONTAINERD_ADDRESS=$CONTAINERD_SOCK
ENV
  fi
}

# A switch between loopback and node mode (NODE=1) restarts what binds differently.
switch_mode() {
  local was=""
  [[ -f "$STATE_DIR/mode" ]] && was="$(cat "$STATE_DIR/mode")"
  [[ "$was" == "$MODE" ]] && return 0
  if pid_alive "$STATE_DIR/kube-apiserver.pid" || pid_alive "$STATE_DIR/kafka.pid"; then
    log "switching to '$MODE' (was '${was:-api=127.0.0.1 kafka-node=0}'): restarting Kafka, kube-apiserver, kube-controller-manager"
    stop_process kube-controller-manager
    stop_process kube-apiserver
    stop_process kafka
  fi
}

mkdir -p "$KUBE_DIR"
((NODE_ON == 0)) || node_prepare_host
switch_mode
ensure kafka kafka_healthy launch_kafka 90
kafka_scram_user
wait_for kafka_sasl 30 sasl_ssl_healthy || die "kafka: the SCRAM user cannot log in on 127.0.0.1:$KAFKA_SASL_PORT (SASL_SSL); see $KAFKA_DIR/logs"
make_pki
write_kubeconfig
ensure etcd etcd_healthy launch_etcd 60
ensure kube-apiserver apiserver_healthy launch_apiserver 120
ensure kube-controller-manager controller_manager_healthy launch_controller_manager 90
echo "$MODE" >"$STATE_DIR/mode"
((NODE_ON == 0)) || node_up
write_env

log "environment ready; details in $ENV_FILE:"
grep -v '^#' "$ENV_FILE"
log "tools: export PATH=\"$BIN_DIR:\$PATH\"   (kubectl, helm, etcd, kube-apiserver); kcat from Debian"
((NODE_ON == 0)) || log "node: kubectl get pods -A; images: ctr --address $CONTAINERD_SOCK -n k8s.io images ls; make images imports $PROXY_IMAGE, $OPERATOR_IMAGE"
