#!/usr/bin/env bash
# `make run`: the proxy against the local environment (which `make env-up` started).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -f .local/env ]] || { echo "no .local/env: run 'make env-up' first" >&2; exit 1; }
set -a; source .local/env; set +a
cargo build -q -p mqtt-kafka-proxy
echo "[run] mqtt-kafka-proxy against Kafka at $KAFKA_BOOTSTRAP (Ctrl-C to stop)"
exec target/debug/mqtt-kafka-proxy "$@"
