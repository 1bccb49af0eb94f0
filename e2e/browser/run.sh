#!/usr/bin/env bash
# MQTT.js in headless Chromium through the proxy's ws:// and wss:// listeners (run.mjs).
# Installs what it needs when missing (Debian: chromium, libnss3-tools for the test CA,
# openssl; npm ci from the committed package-lock.json), builds the proxy (debug) unless
# PROXY_BIN names a binary, and runs against the local Kafka (.local/env, `make env-up`).
# Screenshots and the proxy's log go to target/browser/ (ARTIFACTS overrides it).
# Last line: `browser: N passed, M failed`; exits non-zero when anything failed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
log() { printf '[browser] %s %s\n' "$(date +%H:%M:%S)" "$*"; }

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v certutil >/dev/null || missing+=(libnss3-tools)
command -v openssl >/dev/null || missing+=(openssl)
fc-list 2>/dev/null | grep -qi dejavu || missing+=(fonts-dejavu-core)
if ((${#missing[@]})); then
  log "installing ${missing[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v node >/dev/null || { echo "node is needed (Debian: nodejs npm)" >&2; exit 1; }

# npm ci again only when the lock file changed since the last install.
stamp="$here/node_modules/.installed-lock.sha256"
want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  log "npm ci"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi

if [[ -z "${KAFKA_BOOTSTRAP:-}" ]]; then
  [[ -f .local/env ]] || { echo "no .local/env: run 'make env-up' first" >&2; exit 1; }
  set -a; source .local/env; set +a
fi
if [[ -z "${PROXY_BIN:-}" ]]; then
  log "cargo build -p mqtt-kafka-proxy"
  cargo build -q -p mqtt-kafka-proxy
  export PROXY_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/mqtt-kafka-proxy"
fi
export ARTIFACTS="${ARTIFACTS:-${CARGO_TARGET_DIR:-$root/target}/browser}"
exec node "$here/run.mjs"
