#!/usr/bin/env bash
# Checks the Helm chart against the running environment (`make env-up`; KUBECONFIG from
# .local/env): helm lint --strict, the schema refusing a wrong value, the rendered chart
# accepted by the live apiserver (server-side dry run) in its default, one-namespace and
# every-option forms, the prometheus-operator objects (whose CRDs the environment lacks)
# parsed and cross-checked, the dashboard using only metrics the code exports, and
# deploy/mqtt-kafka-operator.yaml not stale. Part of `make test`; exits 1 on the first
# failure with what to do.
source "$(dirname "${BASH_SOURCE[0]}")/../env/lib.sh"
cd "$REPO_ROOT"
CHART=charts/mqtt-kafka-operator
NS=chart-check
KUBE_VERSION=1.33.0

[[ -x "$BIN_DIR/helm-$HELM_VERSION" ]] || bash e2e/env/install-tools.sh helm
HELM="$BIN_DIR/helm-$HELM_VERSION"
KUBECTL="$K8S_BIN_DIR/kubectl"
if [[ -z "${KUBECONFIG:-}" && -f "$ENV_FILE" ]]; then
  KUBECONFIG=$(sed -n 's/^KUBECONFIG=//p' "$ENV_FILE"); export KUBECONFIG
fi
[[ -n "${KUBECONFIG:-}" && -x "$KUBECTL" ]] || die "no environment: run 'make env-up' first"

ok() { printf '[chart] ok: %s\n' "$*"; }
fail() { printf '[chart] FAIL: %s\n' "$*" >&2; exit 1; }
# The symlinked CRD makes helm print a warning per file read; it is intended.
quiet() { grep -v 'found symbolic link in path' >&2 || true; }
template() { "$HELM" template mko "$CHART" --namespace "$NS" --kube-version "$KUBE_VERSION" "$@" 2> >(quiet); }
server_dry_run() { "$KUBECTL" apply --server-side --force-conflicts --field-manager=chart-check --dry-run=server -f - >/dev/null; }

# Every optional piece on (with peers and CIDRs, so every branch of the templates renders).
ALL_ON=(--set metrics.serviceMonitor.enabled=true --set metrics.podMonitor.enabled=true
  --set metrics.dashboard.enabled=true --set networkPolicy.enabled=true
  --set 'networkPolicy.apiServer.cidrs={10.0.0.1/32}'
  --set 'networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring'
  --set 'networkPolicy.kafka.to[0].ipBlock.cidr=10.1.0.0/16'
  --set 'metrics.serviceMonitor.labels.release=prometheus')
# The same without the prometheus-operator kinds, which this apiserver does not know.
ALL_ON_CORE=("${ALL_ON[@]}" --set metrics.serviceMonitor.enabled=false --set metrics.podMonitor.enabled=false)

# 1. helm lint --strict, with the defaults and with everything on.
"$HELM" lint --strict "$CHART" 2> >(quiet) >/dev/null || { "$HELM" lint --strict "$CHART" 2>&1 | quiet; fail "helm lint --strict $CHART"; }
"$HELM" lint --strict "$CHART" "${ALL_ON[@]}" 2> >(quiet) >/dev/null || fail "helm lint --strict $CHART with every option on"
ok "helm lint --strict (defaults, every option on)"

# 2. The schema refuses a wrong type and an unknown value.
for bad in replicaCount=two networkPolicy.enabled=maybe replicaCunt=3; do
  if out=$("$HELM" lint --strict "$CHART" --set "$bad" 2>&1); then
    fail "helm lint accepted --set $bad: values.schema.json does not check it"
  fi
  grep -qE "got string|additional properties|want (integer|boolean)" <<<"$out" || fail "--set $bad refused, but not by the schema: $out"
done
ok "values.schema.json refuses replicaCount=two, networkPolicy.enabled=maybe, replicaCunt=3"

# 3. Server-side dry runs against the live apiserver.
"$KUBECTL" create namespace "$NS" --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
rendered=$(template --include-crds) || fail "helm template $CHART"
for kind in CustomResourceDefinition Deployment ServiceAccount Service ClusterRole ClusterRoleBinding Role RoleBinding; do
  grep -q "^kind: $kind\$" <<<"$rendered" || fail "the default render has no $kind"
done
server_dry_run <<<"$rendered" || fail "the apiserver refused the default render (see above)"
template --set "watchNamespace=$NS" | server_dry_run || fail "the apiserver refused the render with watchNamespace=$NS"
core=$(template "${ALL_ON_CORE[@]}") || fail "helm template with every option on"
for kind in NetworkPolicy ConfigMap; do
  grep -q "^kind: $kind\$" <<<"$core" || fail "the render with every option on has no $kind"
done
server_dry_run <<<"$core" || fail "the apiserver refused the render with NetworkPolicy and dashboard on"
ok "kubectl apply --dry-run=server: defaults (with CRD), watchNamespace, NetworkPolicy + dashboard ConfigMap"

# 4. Everything on, ServiceMonitor and PodMonitor included: parsed, ports cross-checked.
all=$(template "${ALL_ON[@]}") || fail "helm template with every option on"
admin_port=$(sed -n 's/^pub const ADMIN_PORT_NAME: &str = "\(.*\)";/\1/p' operator/src/resources/services.rs)
[[ -n "$admin_port" ]] || fail "ADMIN_PORT_NAME not found in operator/src/resources/services.rs"
checker=$(bash e2e/tilt/check.sh --build-only) || fail "building e2e/tilt"
"$checker" manifests -admin-port "$admin_port" <<<"$all" || fail "the render with every option on is not sound (see above)"
for kind in ServiceMonitor PodMonitor; do
  grep -q "^kind: $kind\$" <<<"$all" || fail "the render with every option on has no $kind"
done
ok "every option on (ServiceMonitor, PodMonitor): parses, monitors scrape ports that exist"

# 5. The dashboard is JSON and uses only metrics the code registers.
dashboard=$CHART/dashboards/mqtt-kafka.json
python3 -m json.tool "$dashboard" >/dev/null || fail "$dashboard is not JSON"
grep -A3 'mqtt-kafka.json: |-' <<<"$all" | grep -q '"title": "mqtt-kafka"' \
  || fail "the dashboard ConfigMap does not carry $dashboard"
unknown=()
for metric in $(grep -oE 'mqtt_kafka_[a-z_]+' "$dashboard" | sort -u); do
  base=$(sed -E 's/_(bucket|sum|count)$//' <<<"$metric")
  if [[ $base == mqtt_kafka_operator_* ]]; then
    grep -q "\"$base\"" operator/src/metrics.rs || unknown+=("$metric")
  else
    grep -q "\"${base#mqtt_kafka_}\"" proxy/src/metrics.rs || unknown+=("$metric")
  fi
done
((${#unknown[@]} == 0)) || fail "$dashboard uses metrics that proxy/src/metrics.rs and operator/src/metrics.rs do not register: ${unknown[*]}"
ok "dashboard: JSON, $(grep -oE 'mqtt_kafka_[a-z_]+' "$dashboard" | sort -u | wc -l) metric names, all registered in the code"

# 6. deploy/ is what the chart renders.
if ! diff -u deploy/mqtt-kafka-operator.yaml <(HELM="$HELM" bash deploy/render.sh) >&2; then
  fail "deploy/mqtt-kafka-operator.yaml is stale: run make crds and commit the result"
fi
ok "deploy/mqtt-kafka-operator.yaml matches deploy/render.sh"
