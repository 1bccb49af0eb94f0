#!/usr/bin/env bash
# Stops every process 'make env-up' started and waits until they are gone. Data stays in
# $STATE_DIR (delete it for a clean slate: 'make env-clean').
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$ENV_DIR/node.sh"

# Reverse order of start: the node and other clients of the apiserver first, etcd last;
# then the host gets back what the node changed (nothing happens there if no node ran).
stop_process proxy
node_down_daemons
for name in kube-controller-manager kube-apiserver etcd kafka; do stop_process "$name"; done
node_restore_host
log "environment stopped"
