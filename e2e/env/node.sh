# The opt-in node of the local environment (NODE=1 make env-up): containerd (+ runc, CNI
# bridge), kubelet, kube-scheduler, kube-proxy (nftables) and CoreDNS, all on this machine.
# Sourced by up.sh (node_up_* functions; they use up.sh's ensure/start) and by down.sh
# (node_down). Everything the node changes on the host is recorded first
# ($NODE_DIR/host-before) and put back by node_down.
#
# Host-wide, so one node per machine: the bridge $NODE_BRIDGE ($NODE_IP = its address, which
# the apiserver and Kafka's node listener bind), /run/containerd (the shims' sockets),
# /run/netns, /var/lib/cni (containerd's CNI cache), /var/log/containers, the kubepods
# cgroups, a few sysctls, kube-proxy's nftables tables. Everything else lives in $NODE_DIR.

NODE_DIR="$STATE_DIR/node"
CONTAINERD_DIR="$NODE_DIR/containerd"
CONTAINERD_SOCK="$CONTAINERD_DIR/containerd.sock"
KUBELET_ROOT="$NODE_DIR/kubelet"
CNI_CONF_DIR="$NODE_DIR/cni/net.d"
CNI_IPAM_DIR="$NODE_DIR/cni/ipam"
IMAGES_DIR="$STATE_DIR/images"
HOST_BEFORE="$NODE_DIR/host-before"
CTR=(ctr --address "$CONTAINERD_SOCK" -n k8s.io)

# Set by the kubelet (vm.*, kernel.*), the bridge plugin (ip_forward) and kube-proxy.
NODE_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward net.ipv6.conf.all.forwarding
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait)
# Host paths the node's daemons create; removed by node_down unless they were there before.
NODE_HOST_PATHS=(/run/containerd /run/netns /var/lib/cni /var/log/containers /var/log/pods
  /var/lib/kubelet /etc/cni /opt/cni)
NODE_CGROUP_ROOTS=(/sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods)

# node_wanted: NODE=1, or a node of this state dir is running (it stays until env-down).
node_wanted() {
  [[ "${NODE:-0}" == 1 ]] && return 0
  pid_alive "$STATE_DIR/kubelet.pid" || pid_alive "$STATE_DIR/containerd.pid"
}

# ---------------------------------------------------------------- host: record, bridge
node_record_host() {
  [[ -f "$HOST_BEFORE/sysctl" ]] && return 0
  mkdir -p "$HOST_BEFORE"
  local k p
  for k in "${NODE_SYSCTLS[@]}"; do
    if v="$(sysctl -n "$k" 2>/dev/null)"; then printf '%s=%s\n' "$k" "$v"; fi
  done >"$HOST_BEFORE/sysctl.tmp"
  for p in "${NODE_HOST_PATHS[@]}"; do [[ -e "$p" ]] && echo "$p"; done >"$HOST_BEFORE/paths"
  nft list tables >"$HOST_BEFORE/nft-tables" 2>/dev/null || true
  mv "$HOST_BEFORE/sysctl.tmp" "$HOST_BEFORE/sysctl"
}

node_bridge() {
  local prefix="${POD_CIDR#*/}"
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    log "node: creating bridge $NODE_BRIDGE ($NODE_IP/$prefix)"
    ip link add "$NODE_BRIDGE" type bridge
  fi
  ip -4 addr show dev "$NODE_BRIDGE" | grep -q " $NODE_IP/" || ip addr add "$NODE_IP/$prefix" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Service IPs the host sends to go to the bridge, never out of the machine (kube-proxy
  # rewrites them to pod addresses; one it does not know ends here). Goes with the bridge.
  ip route replace "$SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
}

node_prepare_host() {
  node_record_host
  node_bridge
}

# ---------------------------------------------------------------- CNI, containerd
# Pods get the bridge's subnet and a route to the Service range via the node, and no default
# route: they reach the node, each other and Services, nothing off the machine.
write_cni_conf() {
  mkdir -p "$CNI_CONF_DIR" "$CNI_IPAM_DIR"
  cat >"$CNI_CONF_DIR/10-mqtt-kafka.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "mqtt-kafka-local",
  "plugins": [
    {"type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "hairpinMode": true, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": "$CNI_IPAM_DIR",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "$SERVICE_CIDR"}]}}
  ]
}
JSON
}

containerd_healthy() { "${CTR[@]}" version >/dev/null 2>&1; }

launch_containerd() {
  mkdir -p "$CONTAINERD_DIR/root" "$CONTAINERD_DIR/state" "$CNI_CONF_DIR" "$CNI_IPAM_DIR"
  cat >"$CONTAINERD_DIR/config.toml" <<TOML
version = 2
root = "$CONTAINERD_DIR/root"
state = "$CONTAINERD_DIR/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_DIR/containerd.ttrpc.sock"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$CONTAINERD_DIR/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # runc may not lower oom_score_adj here (no CAP_SYS_RESOURCE): without this every sandbox fails.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CNI_CONF_DIR"
TOML
  log "containerd: starting ($CONTAINERD_SOCK)"
  start containerd "$NODE_DIR/containerd.log" containerd --config "$CONTAINERD_DIR/config.toml"
}

# ---------------------------------------------------------------- images
# build_image ARCHIVE ARGS...: writes ARCHIVE with oci-image.py unless it is newer than every
# input file named in ARGS (SRC of --bin/--file) and the script.
build_image() {
  local archive="$1"; shift
  local inputs=("$REPO_ROOT/e2e/images/oci-image.py") a prev=""
  for a in "$@"; do
    case "$prev" in --bin|--file) inputs+=("${a%%:*}") ;; esac
    prev="$a"
  done
  if [[ -f "$archive" ]]; then
    local stale=0 f
    for f in "${inputs[@]}"; do [[ "$f" -nt "$archive" ]] && stale=1; done
    ((stale == 0)) && return 0
  fi
  mkdir -p "$(dirname "$archive")"
  python3 "$REPO_ROOT/e2e/images/oci-image.py" --out "$archive" "$@"
}

# archive_digest ARCHIVE: the manifest digest in the archive's index.json.
archive_digest() {
  tar -xOf "$1" index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])'
}

# import_image ARCHIVE REF: imports ARCHIVE into the node's containerd unless REF is already
# that manifest.
import_image() {
  local archive="$1" ref="$2" want have
  want="$(archive_digest "$archive")"
  have="$("${CTR[@]}" images ls "name==$ref" 2>/dev/null | awk 'NR > 1 {print $3}')"
  [[ "$have" == "$want" ]] && return 0
  log "node: importing $ref ($want)"
  "${CTR[@]}" images import "$archive" >/dev/null
}

# The images the node itself needs: the sandbox (pause) image, CoreDNS, and a toolbox for
# tests (busybox applets and curl).
node_images() {
  local bb=/usr/bin/busybox
  build_image "$IMAGES_DIR/pause.tar" --name "$PAUSE_IMAGE" --file "$bb:/bin/busybox" \
    --entrypoint /bin/busybox --entrypoint sleep --entrypoint 2147483647
  build_image "$IMAGES_DIR/coredns.tar" --name "$COREDNS_IMAGE" --bin "$BIN_DIR/coredns-$COREDNS_VERSION:/coredns" \
    --entrypoint /coredns
  local applets=() a
  for a in $("$bb" --list); do [[ "$a" == busybox ]] || applets+=(--symlink "/bin/$a:busybox"); done
  build_image "$IMAGES_DIR/toolbox.tar" --name "$TOOLBOX_IMAGE" --file "$bb:/bin/busybox" "${applets[@]}" \
    --bin /usr/bin/curl:/usr/bin/curl --file /etc/ssl/certs/ca-certificates.crt --cmd sh
  import_image "$IMAGES_DIR/pause.tar" "$PAUSE_IMAGE"
  import_image "$IMAGES_DIR/coredns.tar" "$COREDNS_IMAGE"
  import_image "$IMAGES_DIR/toolbox.tar" "$TOOLBOX_IMAGE"
}

# ---------------------------------------------------------------- kube-scheduler
scheduler_healthy() { curl -fsSk "https://127.0.0.1:$SCHEDULER_PORT/healthz" >/dev/null 2>&1; }

launch_scheduler() {
  local kc="$NODE_DIR/kube-scheduler.kubeconfig"
  client_kubeconfig kube-scheduler "$kc"
  log "kube-scheduler: starting as system:kube-scheduler (health https://127.0.0.1:$SCHEDULER_PORT/healthz)"
  start kube-scheduler "$KUBE_DIR/kube-scheduler.log" "$K8S_BIN_DIR/kube-scheduler" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false --profiling=false
}

# ---------------------------------------------------------------- credentials
# Each daemon of the node has its own client certificate ($PKI_DIR/NAME.crt, made by up.sh's
# make_pki) and so only what Kubernetes' built-in RBAC grants that user: the kubelet
# system:node:<node> (Node authorizer), the scheduler system:kube-scheduler, kube-proxy
# system:kube-proxy (ClusterRoleBinding system:node-proxier). None gets the admin's.
# client_kubeconfig NAME FILE: a kubeconfig for $PKI_DIR/NAME.{crt,key} at the apiserver.
client_kubeconfig() {
  cat >"$2" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://$NODE_IP:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI_DIR/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 "$PKI_DIR/$1.crt")
    client-key-data: $(base64 -w0 "$PKI_DIR/$1.key")
contexts:
- name: local
  context: {cluster: local, user: $1}
current-context: local
KC
  chmod 600 "$2"
}

# ---------------------------------------------------------------- kubelet

kubelet_healthy() {
  curl -fsS "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" >/dev/null 2>&1 &&
    "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get node "$NODE_NAME" >/dev/null 2>&1
}

launch_kubelet() {
  mkdir -p "$KUBELET_ROOT" "$NODE_DIR/pod-logs"
  client_kubeconfig node "$NODE_DIR/kubelet.kubeconfig"
  # No upstream resolver: CoreDNS answers cluster.local only, nothing leaves the machine.
  printf '# pods with dnsPolicy Default get no nameserver\n' >"$NODE_DIR/resolv.conf"
  cat >"$NODE_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI_DIR/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
# Imported images cannot be pulled again: never collect them; never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: cluster.local
resolvConf: $NODE_DIR/resolv.conf
podLogsDir: $NODE_DIR/pod-logs
# kube-proxy runs in nftables mode: the kubelet's iptables chains (KUBE-FIREWALL) are not needed.
makeIPTablesUtilChains: false
rotateCertificates: false
serverTLSBootstrap: false
maxPods: 50
YAML
  log "kubelet: starting (node $NODE_NAME, $NODE_IP:$KUBELET_PORT)"
  start kubelet "$NODE_DIR/kubelet.log" "$K8S_BIN_DIR/kubelet" \
    --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_DIR/kubelet.kubeconfig" \
    --root-dir "$KUBELET_ROOT" --cert-dir "$KUBELET_ROOT/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
}

node_ready() {
  [[ "$("$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# ---------------------------------------------------------------- kube-proxy
kube_proxy_healthy() { curl -fsS "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/livez" >/dev/null 2>&1; }

launch_kube_proxy() {
  client_kubeconfig kube-proxy "$NODE_DIR/kube-proxy.kubeconfig"
  cat >"$NODE_DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: $NODE_DIR/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
# NodePorts on the node's bridge address only, never on the machine's outside address.
nodePortAddresses: ["$NODE_IP/32"]
# 0: leave the host's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
  log "kube-proxy: starting as system:kube-proxy (nftables)"
  start kube-proxy "$NODE_DIR/kube-proxy.log" "$K8S_BIN_DIR/kube-proxy" --config "$NODE_DIR/kube-proxy.yaml"
}

# ---------------------------------------------------------------- CoreDNS (a Deployment)
coredns_healthy() {
  [[ "$("$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" -n kube-system get deployment coredns \
    -o 'jsonpath={.status.availableReplicas}' 2>/dev/null)" == 1 ]]
}

apply_coredns() {
  log "coredns: applying Deployment + Service kube-dns ($DNS_SERVICE_IP)"
  "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" apply --server-side --force-conflicts -f - >/dev/null <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  # cluster.local only: no upstream, so nothing is forwarded off the machine.
  Corefile: |
    .:1053 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 5
        }
        cache 5
        loop
        reload
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      priorityClassName: system-cluster-critical
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
      containers:
      - name: coredns
        image: $COREDNS_IMAGE
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 1053, protocol: UDP}
        - {name: dns-tcp, containerPort: 1053, protocol: TCP}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 10}
        resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {memory: 128Mi}}
        securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_SERVICE_IP
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, targetPort: 1053, protocol: UDP}
  - {name: dns-tcp, port: 53, targetPort: 1053, protocol: TCP}
YAML
}

# ---------------------------------------------------------------- up
node_up() {
  write_cni_conf
  ensure containerd containerd_healthy launch_containerd 60
  node_images
  ensure kube-scheduler scheduler_healthy launch_scheduler 60
  ensure kubelet kubelet_healthy launch_kubelet 90
  wait_for "node Ready" 120 node_ready || die "node $NODE_NAME not Ready in 120 s; see $NODE_DIR/kubelet.log"
  log "node $NODE_NAME: Ready"
  ensure kube-proxy kube_proxy_healthy launch_kube_proxy 60
  coredns_healthy || apply_coredns
  wait_for coredns 120 coredns_healthy || die "coredns not available in 120 s; kubectl -n kube-system describe pod -l k8s-app=kube-dns"
  log "coredns: available"
}

# ---------------------------------------------------------------- down
# Stops the node's daemons and its containers, then puts the host back as node_record_host
# found it. Safe to run when no node ever ran (does nothing then).
node_down_daemons() {
  stop_process kube-proxy
  stop_process kubelet
  # The next start registers the node afresh (its pods are collected and made again), so
  # env-up never reads a Ready condition or a CoreDNS replica left over from this run.
  if [[ -f "$STATE_DIR/kube/admin.kubeconfig" ]]; then
    "$K8S_BIN_DIR/kubectl" --kubeconfig "$STATE_DIR/kube/admin.kubeconfig" --request-timeout 5s \
      delete node "$NODE_NAME" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  stop_process kube-scheduler
  if pid_alive "$STATE_DIR/containerd.pid"; then
    local ids id
    ids="$("${CTR[@]}" tasks ls -q 2>/dev/null || true)"
    if [[ -n "$ids" ]]; then
      log "node: killing $(wc -w <<<"$ids") containers"
      # delete --force: SIGKILL, wait for the exit, delete.
      for id in $ids; do "${CTR[@]}" tasks delete --force "$id" >/dev/null 2>&1 || true; done
    fi
    # The kubelet makes them again from the API on the next start.
    for id in $("${CTR[@]}" containers ls -q 2>/dev/null || true); do "${CTR[@]}" containers rm "$id" >/dev/null 2>&1 || true; done
  fi
  stop_process containerd
}

# unmount_under PREFIX...: unmounts everything mounted under PREFIXes, deepest first.
unmount_under() {
  local m p
  for p in "$@"; do
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(awk -v p="$p" '$2 == p || index($2, p "/") == 1 {print $2}' /proc/self/mounts | sort -r)
  done
}

node_restore_host() {
  # Only the state dir that recorded the host touches it (another checkout's env-down leaves it).
  [[ -f "$HOST_BEFORE/sysctl" ]] || return 0
  log "node: putting the host back (mounts, netns, bridge, nftables, sysctls, cgroups, paths)"
  unmount_under "$NODE_DIR" /run/containerd /run/netns /var/lib/kubelet
  local ns
  for ns in /run/netns/cni-*; do [[ -e "$ns" ]] && rm -f "$ns"; done
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && ip link del "$NODE_BRIDGE"
  # kube-proxy's nftables tables (and any iptables leftovers of older modes).
  "$K8S_BIN_DIR/kube-proxy" --cleanup >"$NODE_DIR/kube-proxy-cleanup.log" 2>&1 || true
  # Tables that appeared with the node: kube-proxy's, any holding KUBE-/CNI- chains, empty ones.
  local t
  while read -r t; do
    [[ -n "$t" ]] && ! grep -qxF "$t" "$HOST_BEFORE/nft-tables" || continue
    if [[ "$t" == *" kube-proxy" ]] || nft list $t | grep -q 'chain \(KUBE\|CNI\)-' ||
      ! nft list $t | grep -qvE '^[[:space:]]*(table |chain |type |policy |}|$)'; then
      nft delete $t 2>/dev/null || true
    fi
  done < <(nft list tables 2>/dev/null)
  # Connections tracked while kube-proxy's rules were loaded (loopback ones too); nothing
  # tracks once those are gone. Flushed when the host had no other nftables tables.
  [[ -s "$HOST_BEFORE/nft-tables" ]] || conntrack -F >/dev/null 2>&1 || true
  local kv
  while IFS= read -r kv; do
    [[ "$(sysctl -n "${kv%%=*}" 2>/dev/null)" == "${kv#*=}" ]] || sysctl -q -w "${kv%%=*}=${kv#*=}" >/dev/null || true
  done <"$HOST_BEFORE/sysctl"
  local cg
  for cg in "${NODE_CGROUP_ROOTS[@]}"; do
    [[ -d "$cg" ]] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  local p
  for p in "${NODE_HOST_PATHS[@]}"; do
    [[ -e "$p" ]] && ! grep -qxF "$p" "$HOST_BEFORE/paths" && rm -rf "$p"
  done
  rm -rf "$CNI_IPAM_DIR" "$HOST_BEFORE"
}
