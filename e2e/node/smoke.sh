#!/usr/bin/env bash
# `make node-smoke`: proves the local node end to end. Starts the environment with the node
# (NODE=1 make env-up), builds and imports the images (make images), then
#  1. runs a pod of the proxy image (non-root, read-only root filesystem) against the
#     environment's Kafka through the node listener, waits for Running + Ready;
#  2. publishes with mosquitto_pub from the host to the pod IP and to the Service's ClusterIP,
#     and reads both records back from Kafka with kcat;
#  3. runs a toolbox pod that resolves kubernetes.default and the proxy's Service through
#     CoreDNS and calls the apiserver through the 'kubernetes' ClusterIP with its token.
# Idempotent (recreates its namespace's pods); exits non-zero on the first failure.
source "$(dirname "${BASH_SOURCE[0]}")/../env/lib.sh"

NS=node-smoke
step() { printf '[smoke] %s\n' "$*" >&2; }
fail() { printf '[smoke] FAILED: %s\n' "$*" >&2; exit 1; }

NODE=1 bash "$ENV_DIR/up.sh"
bash "$REPO_ROOT/e2e/images/build.sh"
set -a; source "$ENV_FILE"; set +a
[[ "${NODE:-}" == 1 ]] || fail "the environment has no node"
k() { "$K8S_BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG" "$@"; }

step "node: $(k get node "$NODE_NAME" --no-headers)"
k get pods -n kube-system -o wide

step "proxy pod ($PROXY_IMAGE) against Kafka at $KAFKA_NODE_BOOTSTRAP"
k apply --server-side --force-conflicts -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: $NS}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: mqtt-proxy, namespace: $NS}
data:
  proxy.yaml: |
    listeners:
      - {name: mqtt, protocol: tcp, address: "0.0.0.0:1883"}
    admin: {address: "0.0.0.0:9090"}
    kafka: {bootstrapServers: "$KAFKA_NODE_BOOTSTRAP"}
---
apiVersion: v1
kind: Service
metadata: {name: mqtt-proxy, namespace: $NS}
spec:
  selector: {app: mqtt-proxy}
  ports:
  - {name: mqtt, port: 1883, targetPort: 1883}
  - {name: admin, port: 9090, targetPort: 9090}
YAML
k -n "$NS" delete pod mqtt-proxy toolbox --ignore-not-found --wait=true >/dev/null
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: mqtt-proxy, namespace: $NS, labels: {app: mqtt-proxy}}
spec:
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: 10
  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: proxy
    image: $PROXY_IMAGE
    imagePullPolicy: Never
    args: [--config, /etc/mqtt-kafka/proxy.yaml, --create-topics]
    ports: [{name: mqtt, containerPort: 1883}, {name: admin, containerPort: 9090}]
    readinessProbe: {httpGet: {path: /readyz, port: 9090}, periodSeconds: 2}
    livenessProbe: {httpGet: {path: /healthz, port: 9090}, periodSeconds: 10}
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
    volumeMounts: [{name: config, mountPath: /etc/mqtt-kafka, readOnly: true}]
  volumes: [{name: config, configMap: {name: mqtt-proxy}}]
YAML
if ! k -n "$NS" wait --for=condition=Ready pod/mqtt-proxy --timeout=120s >/dev/null; then
  k -n "$NS" describe pod mqtt-proxy | tail -20; k -n "$NS" logs mqtt-proxy --tail 30 || true
  fail "proxy pod not Ready in 120 s"
fi
POD_IP="$(k -n "$NS" get pod mqtt-proxy -o jsonpath='{.status.podIP}')"
SVC_IP="$(k -n "$NS" get service mqtt-proxy -o jsonpath='{.spec.clusterIP}')"
k -n "$NS" get pod mqtt-proxy -o wide

# publish_and_read HOST: one QoS 1 message through HOST:1883, found again in Kafka.
publish_and_read() {
  local host="$1" msg="node-smoke via $1 $(date +%s%N)"
  mosquitto_pub -h "$host" -p 1883 -V mqttv5 -i "node-smoke-$RANDOM" -q 1 -t node-smoke/hello -m "$msg" ||
    fail "mosquitto_pub to $host:1883"
  local i
  for ((i = 0; i < 20; i++)); do
    if kcat -C -b "$KAFKA_BOOTSTRAP" -t mqtt-messages -o -20 -e -q -f '%k %s\n' 2>/dev/null | grep -F "$msg"; then
      step "published to $host:1883 and read back from Kafka topic mqtt-messages"
      return 0
    fi
    sleep 0.5
  done
  fail "the message published to $host:1883 is not in mqtt-messages"
}
publish_and_read "$POD_IP"
publish_and_read "$SVC_IP"

step "toolbox pod ($TOOLBOX_IMAGE): DNS through CoreDNS, the apiserver through its ClusterIP"
k -n "$NS" run toolbox --image "$TOOLBOX_IMAGE" --image-pull-policy Never --restart Never --command -- sh -c '
  set -e
  cat /etc/resolv.conf
  nslookup kubernetes.default.svc.cluster.local
  nslookup mqtt-proxy.node-smoke.svc.cluster.local
  sa=/var/run/secrets/kubernetes.io/serviceaccount
  echo "--- https://kubernetes.default/version (search domains, ClusterIP, token, cluster CA)"
  curl -fsS --max-time 10 --cacert $sa/ca.crt -H "Authorization: Bearer $(cat $sa/token)" https://kubernetes.default/version
  echo "--- http://mqtt-proxy:9090/readyz (a Service name of this namespace)"
  curl -fsS --max-time 10 http://mqtt-proxy:9090/readyz; echo
  echo toolbox-ok' >/dev/null
phase=""
for ((i = 0; i < 90; i++)); do
  phase="$(k -n "$NS" get pod toolbox -o jsonpath='{.status.phase}')"
  [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
  sleep 1
done
k -n "$NS" logs toolbox
[[ "$phase" == Succeeded ]] && k -n "$NS" logs toolbox | grep -q '^toolbox-ok$' || fail "toolbox pod: phase '$phase'"
k -n "$NS" get service kube-dns -n kube-system >/dev/null
step "OK: node $NODE_NAME Ready, proxy pod Ready and publishing into Kafka, DNS and apiserver reachable from pods"
