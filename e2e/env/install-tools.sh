#!/usr/bin/env bash
# Installs everything the local environment, the build and the tests need, idempotently:
# Debian packages, the Kubernetes control plane + kubectl + etcd (built from Go modules),
# helm (Go module), Kafka (jars from Maven Central) and the Python MQTT client.
# A second run finds everything in place and returns in seconds.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

APT_PACKAGES=(cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev kcat mosquitto mosquitto-clients curl openssl)

# install_apt [PACKAGE...]: installs the missing ones of PACKAGEs (default: APT_PACKAGES).
install_apt() {
  local missing=() p
  (($# > 0)) || set -- "${APT_PACKAGES[@]}"
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  log "apt-get install ${missing[*]}"
  local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# k8s_ldflags: the version stamps 'kubectl version' and the components report.
k8s_ldflags() {
  local minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  local ldflags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  printf '%s' "$ldflags"
}

# k8s_build PACKAGE...: one CGO_ENABLED=0 build of PACKAGEs (in tools/kubernetes) into $K8S_BIN_DIR.
k8s_build() {
  local tmp="$K8S_BIN_DIR.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp" "$K8S_BIN_DIR"
  (cd "$ENV_DIR/tools/kubernetes" && \
    CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags "$(k8s_ldflags)" -o "$tmp/" "$@")
  mv "$tmp"/* "$K8S_BIN_DIR/"
  rmdir "$tmp"
}

install_kubernetes() {
  local want=(kube-apiserver kube-controller-manager kubectl etcd) b missing=0
  for b in "${want[@]}"; do [[ -x "$K8S_BIN_DIR/$b" ]] || missing=1; done
  ((missing == 0)) && return 0
  log "building Kubernetes $KUBERNETES_VERSION (kube-apiserver, kube-controller-manager, kubectl) and etcd from Go modules (cold: about 5 min on 2 cores)"
  k8s_build k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl ./etcd
}

# The node (NODE=1 make env-up): kubelet, kube-scheduler, kube-proxy from the same module and
# version as the control plane; containerd, runc, CNI plugins, iptables/nft from Debian;
# CoreDNS from its Go module; busybox-static for the sandbox (pause) image.
NODE_APT_PACKAGES=(containerd runc containernetworking-plugins iptables nftables conntrack busybox-static)

install_node() {
  install_apt "${NODE_APT_PACKAGES[@]}"
  local b missing=0
  for b in kubelet kube-scheduler kube-proxy; do [[ -x "$K8S_BIN_DIR/$b" ]] || missing=1; done
  if ((missing == 1)); then
    log "building kubelet, kube-scheduler, kube-proxy $KUBERNETES_VERSION (warm Go cache: about 1.5 min; cold: more)"
    k8s_build k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy
  fi
  if [[ ! -x "$BIN_DIR/coredns-$COREDNS_VERSION" ]]; then
    log "building CoreDNS $COREDNS_VERSION from its Go module (cold: about 6 min on 2 cores)"
    mkdir -p "$BIN_DIR"
    local gobin; gobin="$(mktemp -d)"
    CGO_ENABLED=0 GOBIN="$gobin" nice -n 19 go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
    mv "$gobin/coredns" "$BIN_DIR/coredns-$COREDNS_VERSION"
    rmdir "$gobin"
  fi
  for b in kubelet kube-scheduler kube-proxy; do ln -sfn "$K8S_BIN_DIR/$b" "$BIN_DIR/$b"; done
  ln -sfn "$BIN_DIR/coredns-$COREDNS_VERSION" "$BIN_DIR/coredns"
}

install_helm() {
  [[ -x "$BIN_DIR/helm-$HELM_VERSION" ]] && return 0
  log "building helm $HELM_VERSION from its Go module"
  mkdir -p "$BIN_DIR"
  local gobin; gobin="$(mktemp -d)"
  CGO_ENABLED=0 GOBIN="$gobin" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$gobin/helm" "$BIN_DIR/helm-$HELM_VERSION"
  rmdir "$gobin"
}

install_kafka() {
  [[ -f "$KAFKA_LIB_DIR/.complete" ]] && return 0
  log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central"
  mkdir -p "$KAFKA_LIB_DIR"
  mvn -q -B -Dstyle.color=never -f "$ENV_DIR/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" -Dscala.binary="$KAFKA_SCALA" \
    dependency:copy-dependencies -DoutputDirectory="$KAFKA_LIB_DIR" -DincludeScope=runtime
  touch "$KAFKA_LIB_DIR/.complete"
}

install_python() {
  python3 -c 'import paho.mqtt, pytest' 2>/dev/null && return 0
  log "pip install paho-mqtt pytest"
  python3 -m pip install -q 'paho-mqtt>=2,<3' pytest
}

# Stable names on PATH for people and scripts: $CACHE_DIR/bin holds links to the pinned builds.
link_tools() {
  mkdir -p "$BIN_DIR"
  local b
  for b in kube-apiserver kube-controller-manager kubectl etcd; do
    ln -sfn "$K8S_BIN_DIR/$b" "$BIN_DIR/$b"
  done
  ln -sfn "$BIN_DIR/helm-$HELM_VERSION" "$BIN_DIR/helm"
}

main() {
  local what="${1:-all}"
  case "$what" in
    apt) install_apt ;;
    kubernetes) install_kubernetes ;;
    helm) install_helm ;;
    kafka) install_kafka ;;
    python) install_python ;;
    node) install_node ;;
    all) install_apt; install_kafka; install_python; install_kubernetes; install_helm; link_tools ;;
    *) die "unknown part '$what' (apt|kubernetes|helm|kafka|python|node|all)" ;;
  esac
}
main "$@"
