#!/usr/bin/env bash
# Evaluates the Tiltfile without Tilt (tiltcheck, main.go here: Starlark with stand-ins for
# Tilt's builtins) and checks what it names exists, its chart renders, and a kube context
# that is not local is refused. Part of `make test`; needs only Go and helm.
# The checker is built once per version of its sources into ~/.cache/mqtt-kafka/bin.
source "$(dirname "${BASH_SOURCE[0]}")/../env/lib.sh"
cd "$REPO_ROOT"

[[ -x "$BIN_DIR/helm-$HELM_VERSION" ]] || bash e2e/env/install-tools.sh helm
hash=$(cat e2e/tilt/go.mod e2e/tilt/go.sum e2e/tilt/main.go | sha256sum | cut -c1-12)
checker="$BIN_DIR/tiltcheck-$hash"
if [[ ! -x "$checker" ]]; then
  log "building e2e/tilt (tiltcheck $hash; cold: about 30 s)"
  mkdir -p "$BIN_DIR"; rm -f "$BIN_DIR"/tiltcheck-*
  (cd e2e/tilt && CGO_ENABLED=0 go build -trimpath -o "$checker.tmp" .)
  mv "$checker.tmp" "$checker"
fi
if [[ "${1:-}" == --build-only ]]; then echo "$checker"; exit 0; fi
"$checker" -repo "$REPO_ROOT" -helm "$BIN_DIR/helm-$HELM_VERSION"
