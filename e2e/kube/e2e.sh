#!/usr/bin/env bash
# `make e2e`: the loop a user runs, on the local node, with real MQTT clients.
#  1. NODE=1 env-up, make images; `helm install` the operator chart with the local operator
#     image; the operator runs as a pod and becomes Ready.
#  2. `kubectl apply` an MqttKafkaProxy with 3 replicas (local proxy image, Kafka on the host
#     at KAFKA_NODE_BOOTSTRAP, redirects on); waits until it is Ready and its pods really run.
#  3. MQTT 3.1.1 and 5.0 clients (paho-mqtt, e2e/kube/traffic.py) through the client Service
#     and through every pod's server reference (resolved through CoreDNS); an MQTT 5 client
#     follows a CONNACK 0x9C redirect; the records are read back from Kafka with kcat.
#  4. `kubectl scale` 3 -> 5 -> 2, then a spec change that rolls the StatefulSet, each under
#     live QoS 1 traffic (publishers and subscribers that reconnect and follow redirects):
#     sent / acknowledged / received / in Kafka; fails if an acknowledged message is lost.
#  5. `kubectl delete` the resource: its StatefulSet, Services, ConfigMap, PDB and
#     ServiceAccount go, its Kafka topics stay; `helm uninstall` removes the operator.
# Idempotent: leftovers of an earlier run are deleted first. Figures: $STATE_DIR/e2e/.
source "$(dirname "${BASH_SOURCE[0]}")/../env/lib.sh"

NS=e2e
NAME=mqtt
RELEASE=mqtt-kafka-operator
OPERATOR_NS=mqtt-kafka-system
TOPIC_PREFIX=e2e
OUT="$STATE_DIR/e2e"
SELECTOR="app.kubernetes.io/name=mqtt-kafka-proxy,app.kubernetes.io/instance=$NAME"
SECONDS=0
step() { printf '\n[e2e] %s +%ss %s\n' "$(date +%H:%M:%S)" "$SECONDS" "$*" >&2; }
note() { printf '[e2e] %s\n' "$*" >&2; }

k() { "$K8S_BIN_DIR/kubectl" "$@"; }
helm() { "$BIN_DIR/helm-$HELM_VERSION" "$@"; }

# clean_up: removes what an earlier run left (a failed run leaves everything for a look).
clean_up() {
  if k get namespace "$NS" >/dev/null 2>&1; then
    note "deleting namespace $NS of an earlier run"
    k delete mkp --all -n "$NS" --wait=true --timeout=120s >/dev/null 2>&1 || true
    k delete namespace "$NS" --wait=true --timeout=180s >/dev/null
  fi
  if helm status "$RELEASE" -n "$OPERATOR_NS" >/dev/null 2>&1; then
    note "uninstalling the operator release of an earlier run"
    helm uninstall "$RELEASE" -n "$OPERATOR_NS" --wait --timeout 120s >/dev/null
  fi
}

# `e2e.sh clean`: only that, in a running environment (make test, before the other suites:
# an operator left running would reconcile their resources too).
if [[ "${1:-}" == clean ]]; then
  [[ -f "$ENV_FILE" ]] || exit 0
  set -a; source "$ENV_FILE"; set +a
  export KUBECONFIG
  k get --raw /readyz >/dev/null 2>&1 || exit 0
  clean_up
  exit 0
fi

NODE=1 bash "$ENV_DIR/up.sh"
bash "$REPO_ROOT/e2e/images/build.sh"
set -a; source "$ENV_FILE"; set +a
[[ "${NODE:-}" == 1 ]] || die "the environment has no node"
export KUBECONFIG
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log

# On failure: what a person would look at first, and all of it under $OUT.
diagnose() {
  local rc=$?
  local jobs; jobs="$(jobs -p)"
  [[ -z "$jobs" ]] || kill $jobs 2>/dev/null || true
  ((rc == 0)) && return 0
  note "FAILED (exit $rc) after ${SECONDS}s; diagnostics in $OUT"
  {
    k get mkp,statefulset,pods,services,pdb,configmap -n "$NS" -o wide
    k get mkp "$NAME" -n "$NS" -o yaml
    k describe pods -n "$NS" -l "$SELECTOR"
    k get events -n "$NS" --sort-by=.lastTimestamp
    k get pods -n "$OPERATOR_NS" -o wide
  } >"$OUT/objects.log" 2>&1 || true
  k logs -n "$OPERATOR_NS" -l app.kubernetes.io/name=mqtt-kafka-operator --tail=-1 --prefix >"$OUT/operator.log" 2>&1 || true
  k logs -n "$NS" -l "$SELECTOR" --tail=-1 --prefix >"$OUT/proxies.log" 2>&1 || true
  tail -n 40 "$OUT/objects.log" >&2 || true
  tail -n 30 "$OUT/operator.log" >&2 || true
}
trap diagnose EXIT

# ---------------------------------------------------------------- helpers
jp() { k get "$@" 2>/dev/null || true; }

# stable N: the resource is Ready with N ready pods of the latest template, the operator has
# seen the latest generation, and exactly N pods exist, all Running and Ready.
stable() {
  local want="$1" status
  status="$(jp mkp "$NAME" -n "$NS" -o 'jsonpath={.metadata.generation} {.status.observedGeneration} {.status.replicas} {.status.readyReplicas} {.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Progressing")].reason}')"
  read -r gen observed replicas ready cond progressing <<<"$status"
  [[ "$gen" == "$observed" && "$replicas" == "$want" && "$ready" == "$want" && "$cond" == True && "$progressing" == Stable ]] || return 1
  local pods
  pods="$(jp pods -n "$NS" -l "$SELECTOR" -o 'jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.status.conditions[?(@.type=="Ready")].status} {.metadata.deletionTimestamp}{"\n"}{end}')"
  [[ "$(grep -c . <<<"$pods")" == "$want" ]] || return 1
  ! grep -qv ' Running True $' <<<"$pods"
}

# wait_stable N SECONDS
wait_stable() {
  local want="$1" secs="$2" i
  for ((i = 0; i < secs; i += 2)); do
    if stable "$want"; then
      k get mkp "$NAME" -n "$NS" >&2
      k get pods -n "$NS" -l "$SELECTOR" -o wide >&2
      return 0
    fi
    sleep 2
  done
  k get mkp "$NAME" -n "$NS" -o wide >&2 || true
  k get pods -n "$NS" -l "$SELECTOR" -o wide >&2 || true
  die "$NAME did not become stable with $want ready pods in $secs s"
}

service_target() { echo "$(k get service "$NAME" -n "$NS" -o 'jsonpath={.spec.clusterIP}'):1883"; }

traffic() {
  python3 "$REPO_ROOT/e2e/kube/traffic.py" --dns "$DNS_SERVICE_IP" --bootstrap "$KAFKA_BOOTSTRAP" \
    --topic "$TOPIC_PREFIX-messages" --service "$(service_target)" "$@"
}

# phase NAME ACTION: runs ACTION (a function) under live traffic and keeps the figures.
phase() {
  local name="$1" action="$2" control="$OUT/$1"
  rm -rf "$control"; mkdir -p "$control"
  traffic run --phase "$name" --control "$control" --publishers 4 --subscribers 2 --rate 20 \
    >"$control/stdout" 2> >(tee "$control/traffic.log" >&2) &
  local pid=$!
  local i
  for ((i = 0; i < 120; i++)); do [[ -f "$control/started" ]] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  [[ -f "$control/started" ]] || { wait "$pid" || true; die "phase $name: traffic did not start"; }
  sleep 10
  "$action"
  sleep 10
  touch "$control/stop"
  local rc=0
  wait "$pid" || rc=$?
  cp "$control/figures.json" "$OUT/$name.json" 2>/dev/null || true
  ((rc == 0)) || die "phase $name: traffic check failed (exit $rc); figures: $(cat "$control/figures.json" 2>/dev/null)"
  note "phase $name: $(cat "$OUT/$name.json")"
}

# ---------------------------------------------------------------- 0. leftovers of an earlier run
step "node $NODE_NAME: $(k get node "$NODE_NAME" --no-headers)"
k uncordon "$NODE_NAME" >/dev/null
clean_up

# ---------------------------------------------------------------- 1. the operator
step "helm install $RELEASE (image $OPERATOR_IMAGE from the node's containerd)"
# helm installs the chart's CRDs only when they are missing; an earlier run or test may have
# left an older version: apply the chart's.
if k get crd mqttkafkaproxies.mqttkafka.io >/dev/null 2>&1; then
  k apply --server-side --force-conflicts -f "$REPO_ROOT/charts/mqtt-kafka-operator/crds/" >/dev/null
fi
helm install "$RELEASE" "$REPO_ROOT/charts/mqtt-kafka-operator" -n "$OPERATOR_NS" --create-namespace \
  -f "$REPO_ROOT/e2e/node/local-images.yaml" --set "image.repository=${OPERATOR_IMAGE%:*},image.tag=${OPERATOR_IMAGE##*:}" \
  --wait --timeout 180s >/dev/null
k rollout status deployment -n "$OPERATOR_NS" -l app.kubernetes.io/name=mqtt-kafka-operator --timeout=120s >&2 ||
  k rollout status deployment "$RELEASE" -n "$OPERATOR_NS" --timeout=120s >&2
k get pods -n "$OPERATOR_NS" -o wide >&2
operator_pods="$(k get pods -n "$OPERATOR_NS" -o 'jsonpath={range .items[*]}{.spec.containers[0].image} {.status.phase} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')"
grep -q "^$OPERATOR_IMAGE Running True$" <<<"$operator_pods" || die "no operator pod of $OPERATOR_IMAGE is Running and Ready: $operator_pods"

# ---------------------------------------------------------------- 2. a proxy with 3 replicas
step "kubectl apply MqttKafkaProxy $NS/$NAME (3 replicas, $PROXY_IMAGE, Kafka $KAFKA_NODE_BOOTSTRAP)"
k create namespace "$NS" >/dev/null
k apply -f - >/dev/null <<YAML
apiVersion: mqttkafka.io/v1alpha1
kind: MqttKafkaProxy
metadata: {name: $NAME, namespace: $NS}
spec:
  replicas: 3
  image: $PROXY_IMAGE
  imagePullPolicy: Never
  kafka:
    bootstrapServers: "$KAFKA_NODE_BOOTSTRAP"
    topics:
      sessions: {name: $TOPIC_PREFIX-sessions, partitions: 12}
      retained: {name: $TOPIC_PREFIX-retained, partitions: 12}
      messages: {name: $TOPIC_PREFIX-messages, partitions: 12}
  cluster:
    # The pods' names under the headless Service (what the operator would derive): the host
    # reaches them through CoreDNS, as in-cluster clients do.
    serverReference: "{instance}.$NAME-headless.$NS.svc:1883"
    redirect: {enabled: true}
  pod:
    terminationGracePeriodSeconds: 40
    resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 512Mi}}
YAML
wait_stable 3 300
refs=()
while read -r ref; do [[ -n "$ref" ]] && refs+=("$ref"); done < <(k get mkp "$NAME" -n "$NS" -o 'jsonpath={range .status.serverReferences[*]}{.serverReference}{"\n"}{end}')
((${#refs[@]} == 3)) || die "status.serverReferences has ${#refs[@]} entries, want 3: ${refs[*]}"
note "server references: ${refs[*]}; client Service: $(service_target)"

# ---------------------------------------------------------------- 3. MQTT 3.1.1 and 5.0
step "MQTT 3.1.1 and 5.0 through the client Service and each server reference; a redirect followed; Kafka"
ref_args=()
for r in "${refs[@]}"; do ref_args+=(--reference "$r"); done
traffic check "${ref_args[@]}"

# ---------------------------------------------------------------- 4. scale and roll under traffic
scale_3_5_2() {
  step "kubectl scale mkp/$NAME --replicas=5"
  k scale mkp "$NAME" -n "$NS" --replicas=5 >&2
  wait_stable 5 300
  sleep 10
  step "kubectl scale mkp/$NAME --replicas=2"
  k scale mkp "$NAME" -n "$NS" --replicas=2 >&2
  wait_stable 2 300
}
roll() {
  step "spec change that rolls the StatefulSet (pod annotation)"
  local before
  before="$(k get statefulset "$NAME" -n "$NS" -o 'jsonpath={.status.currentRevision}')"
  k patch mkp "$NAME" -n "$NS" --type merge -p "{\"spec\":{\"pod\":{\"annotations\":{\"e2e.mqttkafka.io/roll\":\"$(date +%s)\"}}}}" >&2
  local i
  for ((i = 0; i < 60; i++)); do
    [[ "$(k get statefulset "$NAME" -n "$NS" -o 'jsonpath={.status.updateRevision}')" != "$before" ]] && break
    sleep 1
  done
  k rollout status statefulset "$NAME" -n "$NS" --timeout=600s >&2
  wait_stable 2 300
  local after
  after="$(k get statefulset "$NAME" -n "$NS" -o 'jsonpath={.status.currentRevision}')"
  [[ "$after" != "$before" ]] || die "the StatefulSet did not roll (revision still $before)"
  note "rolled: revision $before -> $after"
}
step "phase 'scale': 3 -> 5 -> 2 under QoS 1 traffic"
phase scale scale_3_5_2
step "phase 'roll': rolling update under QoS 1 traffic"
phase roll roll

# ---------------------------------------------------------------- logs
k logs -n "$NS" -l "$SELECTOR" --tail=-1 --prefix >"$OUT/proxies.log" 2>&1 || true
k logs -n "$OPERATOR_NS" -l app.kubernetes.io/name=mqtt-kafka-operator --tail=-1 --prefix >"$OUT/operator.log" 2>&1 || true
# What `kubectl logs` shows a person (and log collectors store) is plain text.
if grep -q $'\x1b\[' "$OUT/proxies.log" "$OUT/operator.log"; then
  die "the pods' logs hold terminal colour codes (see $OUT/proxies.log, $OUT/operator.log)"
fi
note "pod logs: $OUT/proxies.log, $OUT/operator.log ($(grep -c . "$OUT/proxies.log") and $(grep -c . "$OUT/operator.log") lines)"

# ---------------------------------------------------------------- 5. delete, uninstall
step "kubectl delete mkp/$NAME: its objects go, its topics stay"
owned="statefulsets,services,configmaps,poddisruptionbudgets,serviceaccounts,pods"
before="$(k get "$owned" -n "$NS" -l "app.kubernetes.io/instance=$NAME" -o name | sort | tr '\n' ' ')"
for want in "statefulset.apps/$NAME" "service/$NAME" "service/$NAME-headless" "configmap/$NAME-config" \
  "poddisruptionbudget.policy/$NAME" "serviceaccount/$NAME"; do
  [[ " $before" == *" $want "* ]] || die "$want missing before the delete (have: $before)"
done
note "before: $before"
k delete mkp "$NAME" -n "$NS" --wait=true --timeout=180s >&2
leftovers=""
for ((i = 0; i < 90; i++)); do
  leftovers="$(k get "$owned" -n "$NS" -l "app.kubernetes.io/instance=$NAME" -o name 2>/dev/null)"
  [[ -z "$leftovers" ]] && break
  sleep 2
done
[[ -z "$leftovers" ]] || die "objects of $NAME left after delete: $leftovers"
topics="$(kcat -b "$KAFKA_BOOTSTRAP" -L 2>/dev/null | awk '/^  topic "/ {gsub(/"/, "", $2); print $2}')"
for t in sessions retained messages; do
  grep -qx "$TOPIC_PREFIX-$t" <<<"$topics" || die "topic $TOPIC_PREFIX-$t is gone after the resource was deleted"
done
note "objects gone; topics $TOPIC_PREFIX-{sessions,retained,messages} kept"

step "helm uninstall $RELEASE"
helm uninstall "$RELEASE" -n "$OPERATOR_NS" --wait --timeout 120s >&2
for ((i = 0; i < 60; i++)); do
  [[ -z "$(k get deployments,pods -n "$OPERATOR_NS" -o name 2>/dev/null)" ]] && break
  sleep 1
done
[[ -z "$(k get deployments,pods -n "$OPERATOR_NS" -o name 2>/dev/null)" ]] || die "operator objects left after helm uninstall"
left="$(k get clusterroles,clusterrolebindings,serviceaccounts,roles,rolebindings,services -A -l "app.kubernetes.io/instance=$RELEASE" -o name 2>/dev/null)"
[[ -z "$left" ]] || die "objects of the release left after helm uninstall: $left"
k delete namespace "$NS" "$OPERATOR_NS" --wait=false >/dev/null 2>&1 || true

step "passed in ${SECONDS}s"
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("[e2e] phase   sent  acked  received(min)  in-kafka  lost  reconnects  redirects  seconds")
for name in ("scale", "roll"):
    f = json.loads((out / f"{name}.json").read_text())
    reconnects = f["events"].get("connected", 0) - f["publishers"] - f["subscribers"]
    print(f"[e2e] {name:6} {f['sent']:6} {f['acknowledged']:6} {f['received_min']:14} {f['in_kafka']:9} "
          f"{f['acked_missing_in_kafka']:5} {reconnects:11} {f['redirects_followed']:10} {f['seconds']:8}")
PY
