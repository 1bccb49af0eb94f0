#!/usr/bin/env bash
# `make images`: the proxy and operator runtime images without Docker or a registry.
# Builds the release binaries, writes each as a one-layer OCI archive (binary, the shared
# libraries ldd lists, CA certificates, /etc/passwd with the non-root user 65532) under
# $STATE_DIR/images, and imports them into the node's containerd (NODE=1 make env-up) if it
# runs. Tags: $PROXY_IMAGE and $OPERATOR_IMAGE (lib.sh). proxy/Dockerfile and
# operator/Dockerfile build the same images with Docker.
source "$(dirname "${BASH_SOURCE[0]}")/../env/lib.sh"
source "$ENV_DIR/node.sh"

target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
(cd "$REPO_ROOT" && nice -n 19 cargo build -q --release -p mqtt-kafka-proxy -p mqtt-kafka-operator)

ca=/etc/ssl/certs/ca-certificates.crt
build_image "$IMAGES_DIR/mqtt-kafka-proxy.tar" --name "$PROXY_IMAGE" \
  --bin "$target/release/mqtt-kafka-proxy:/usr/local/bin/mqtt-kafka-proxy" --file "$ca" \
  --entrypoint /usr/local/bin/mqtt-kafka-proxy
build_image "$IMAGES_DIR/mqtt-kafka-operator.tar" --name "$OPERATOR_IMAGE" \
  --bin "$target/release/mqtt-kafka-operator:/usr/local/bin/mqtt-kafka-operator" --file "$ca" \
  --entrypoint /usr/local/bin/mqtt-kafka-operator

if containerd_healthy; then
  import_image "$IMAGES_DIR/mqtt-kafka-proxy.tar" "$PROXY_IMAGE"
  import_image "$IMAGES_DIR/mqtt-kafka-operator.tar" "$OPERATOR_IMAGE"
  log "images: $PROXY_IMAGE, $OPERATOR_IMAGE in the node's containerd (imagePullPolicy IfNotPresent or Never)"
else
  log "images: $IMAGES_DIR/mqtt-kafka-{proxy,operator}.tar (no node running: 'NODE=1 make env-up', then 'make images' imports them)"
fi
