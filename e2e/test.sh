#!/usr/bin/env bash
# `make test`: the environment, the linters, then every test in the workspace against the
# live Kafka and apiserver. Fails if anything fails, if a test was skipped (ignored), if
# the committed CRD is not what crdgen prints, if the Helm chart or deploy/ fails its checks
# (e2e/chart/check.sh), if the Tiltfile does (e2e/tilt/check.sh), or if MQTT.js in headless
# Chromium cannot talk through the proxy over ws and wss (e2e/browser/run.sh); then `make e2e`
# (e2e/kube/e2e.sh) on the local node: helm install, apply, MQTT, scale and roll under
# traffic, delete. E2E=0 leaves the node and the e2e run out (and says so).
# State (the environment, logs) lives in $MQTT_KAFKA_STATE, default ./.local.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf '\n[test] %s %s\n' "$(date +%H:%M:%S)" "$*"; }
SECONDS=0
STATE="${MQTT_KAFKA_STATE:-$PWD/.local}"
E2E="${E2E:-1}"

if [[ "$E2E" == 1 ]]; then
  log "environment with the local node (E2E=0: without it, and without make e2e)"
  NODE=1 bash e2e/env/up.sh
else
  log "environment"
  bash e2e/env/up.sh
fi
set -a; source "$STATE/env"; set +a
export MQTT_KAFKA_ENV_FILE="$STATE/env"
kubectl() { "$MQTT_KAFKA_BIN/kubectl" --kubeconfig "$KUBECONFIG" "$@"; }
# The tests below expect pods to stay Pending (no kubelet): the node takes none meanwhile,
# and no operator of an earlier e2e run is left to reconcile their resources.
if [[ "${NODE:-}" == 1 ]]; then
  kubectl cordon "$NODE_NAME" >/dev/null
  bash e2e/kube/e2e.sh clean
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

log "committed CRD matches crdgen"
crd_file=crds/mqttkafkaproxies.mqttkafka.io.yaml
if ! diff -u "$crd_file" <(cargo run -q -p mqtt-kafka-operator --bin crdgen); then
  echo "crds/ is stale: run 'make crds' and commit the result" >&2
  exit 1
fi

log "Helm chart: lint --strict, schema, server-side dry runs, monitors, dashboard metrics, deploy/ up to date"
bash e2e/chart/check.sh

log "Tiltfile: evaluated with stand-ins for Tilt's builtins (e2e/tilt)"
bash e2e/tilt/check.sh

log "cargo test (unit, integration against Kafka $KAFKA_BOOTSTRAP and the apiserver of $KUBECONFIG)"
out="$STATE/cargo-test.log"
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e

log "MQTT conformance suite (paho-mqtt, mosquitto clients, kcat) against the proxy binary"
pyout="$STATE/pytest.log"
# The workspace build cargo test made (same features): nothing to compile again.
cargo build -q --workspace --bins
set +e
python3 -m pytest -q -p no:cacheprovider e2e/mqtt 2>&1 | tee "$pyout"
pyrc=${PIPESTATUS[0]}
set -e

log "browser: MQTT.js in headless Chromium over ws and wss (e2e/browser, screenshots in target/browser/)"
brout="$STATE/browser.log"
set +e
PROXY_BIN="${CARGO_TARGET_DIR:-target}/debug/mqtt-kafka-proxy" bash e2e/browser/run.sh 2>&1 | tee "$brout"
brrc=${PIPESTATUS[0]}
set -e
brpassed=$(tail -n 1 "$brout" | grep -oE '[0-9]+ passed' | awk '{print $1+0}' || true)
brfailed=$(tail -n 1 "$brout" | grep -oE '[0-9]+ failed' | awk '{print $1+0}' || true)
if ((brrc != 0 && ${brfailed:-0} == 0)); then brfailed=1; fi

e2erc=0
if [[ "$E2E" == 1 ]]; then
  log "make e2e: the operator chart and a 3-pod MqttKafkaProxy on the local node (e2e/kube/e2e.sh)"
  kubectl uncordon "$NODE_NAME" >/dev/null
  set +e
  bash e2e/kube/e2e.sh
  e2erc=$?
  set -e
else
  log "make e2e: not run (E2E=0)"
fi

passed=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$out" | awk '{s+=$4} END {print s+0}' || true)
failed=$(grep -oE '[0-9]+ failed;' "$out" | awk '{s+=$1} END {print s+0}' || true)
ignored=$(grep -oE '[0-9]+ ignored;' "$out" | awk '{s+=$1} END {print s+0}' || true)
pypassed=$(tail -n 1 "$pyout" | grep -oE '[0-9]+ passed' | awk '{print $1+0}' || true)
pyfailed=$(tail -n 1 "$pyout" | grep -oE '[0-9]+ (failed|error)' | awk '{s+=$1} END {print s+0}' || true)
pyskipped=$(tail -n 1 "$pyout" | grep -oE '[0-9]+ skipped' | awk '{print $1+0}' || true)
e2epassed=0 e2efailed=0 e2enote="not run (E2E=0)"
if [[ "$E2E" == 1 ]]; then
  if ((e2erc == 0)); then e2epassed=1; e2enote=passed; else e2efailed=1; e2enote=failed; fi
fi
log "summary after ${SECONDS}s: cargo ${passed}/${failed}/${ignored}, pytest ${pypassed:-0}/${pyfailed:-0}/${pyskipped:-0}, browser ${brpassed:-0}/${brfailed:-0}/0 (passed/failed/skipped), e2e ${e2enote}"
echo "$((passed + ${pypassed:-0} + ${brpassed:-0} + e2epassed)) passed, $((failed + ${pyfailed:-0} + ${brfailed:-0} + e2efailed)) failed, $((ignored + ${pyskipped:-0})) skipped"
if ((rc != 0)); then echo "cargo test failed (exit $rc)" >&2; exit "$rc"; fi
if ((pyrc != 0)); then echo "pytest failed (exit $pyrc)" >&2; exit "$pyrc"; fi
if ((brrc != 0)); then echo "browser tests failed (exit $brrc; $brout)" >&2; exit "$brrc"; fi
if ((e2erc != 0)); then echo "make e2e failed (exit $e2erc); see $STATE/e2e/" >&2; exit "$e2erc"; fi
if ((ignored + ${pyskipped:-0} != 0)); then
  echo "tests were skipped; every test must run against the live environment" >&2
  grep -E '\.\.\. ignored' "$out" >&2 || true
  exit 1
fi
if ((passed == 0 || ${pypassed:-0} == 0)); then echo "no test ran" >&2; exit 1; fi
