#!/usr/bin/env bash
# Stops every process 'make env-up' started and waits until they are gone. Data stays in
# $STATE_DIR (delete it for a clean slate: 'make env-clean').
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Reverse order of start: clients of the apiserver first, etcd last.
for name in proxy kube-controller-manager kube-apiserver etcd kafka; do stop_process "$name"; done
log "environment stopped"
