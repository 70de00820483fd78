#!/usr/bin/env bash
# A real single-node Kubernetes v1.20.2 cluster on this machine, for the end-to-end tests
# (control-plane/tests/kube_cluster.rs): etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet (containerd's CRI, runc, cgroupfs) and kube-proxy (iptables mode),
# all built from Debian's `kubernetes` source package or installed from Debian's packages.
#
#   scripts/kube-node.sh install      build kubelet, kube-scheduler, kube-controller-manager and
#                                     kube-proxy once (~10 min on 2 cores, under nice -n 19),
#                                     cached under ~/.cache/meshd/kube-node-v1.20.2/; install
#                                     containerd, runc, CNI plugins, dnsmasq, conntrack from Debian;
#                                     build the pause and busybox images (scripts/images.sh)
#   scripts/kube-node.sh path         exit 0 when everything `start` needs is installed
#   scripts/kube-node.sh start DIR    start the node (state in DIR); wait until the node is Ready
#                                     and cluster DNS answers; write DIR/kubeconfig
#   scripts/kube-node.sh stop DIR     stop everything `start DIR` started and remove what it
#                                     installed (pods, CNI bridge, iptables chains, mounts)
#   scripts/kube-node.sh status DIR   print what runs and the node's conditions
#
# One node per machine at a time (the bridge, the host's iptables, ip_forward and /var/log/pods
# are the machine's): `start` takes a lock (/run/meshd-kube-node.lock) that `stop` releases; a
# second `start` waits for it. Each node's state (etcd, certificates, containerd's root, the
# kubelet's root dir, logs) lives in DIR. Everything listens on loopback or on the cluster
# bridge (meshd-cni0, 10.88.0.1/16); nothing is forwarded between the bridge and any other
# interface. Cluster DNS: Debian has no CoreDNS package, so dnsmasq on the bridge answers
# `<svc>.<ns>.svc.cluster.local` with the Service's ClusterIP from a hosts file a small watcher
# of the API (scripts/kube-node-dns.py) keeps current, and NXDOMAIN for every other name (no
# upstream). No headless-Service or pod records.
# MESHD_KUBE_NODE_CACHE overrides the cache.
set -euo pipefail

K8S_VERSION=1.20.2
CACHE="${MESHD_KUBE_NODE_CACHE:-$HOME/.cache/meshd/kube-node-v$K8S_VERSION}"
HERE="$(cd "$(dirname "$0")" && pwd)"
BINARIES=(kubelet kube-scheduler kube-controller-manager kube-proxy)

log() { echo "kube-node.sh: $*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi

apt_install() {
  local missing=()
  for spec in "$@"; do
    local cmd="${spec%%=*}" pkg="${spec#*=}"
    # An absolute path names the file itself: the CNI plugin `bridge` must not be taken for
    # iproute2's /usr/sbin/bridge, which every machine has.
    if [[ "$cmd" == /* ]]; then
      [ -x "$cmd" ] || missing+=("$pkg")
      continue
    fi
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
}

binaries_present() {
  local b
  for b in "${BINARIES[@]}"; do
    [ -x "$CACHE/$b" ] && "$CACHE/$b" --version 2>/dev/null | grep -q "v$K8S_VERSION" || return 1
  done
}

build_binaries() {
  binaries_present && { log "kubelet, scheduler, controller-manager, kube-proxy present in $CACHE"; return; }
  mkdir -p "$CACHE"
  exec 8>"$CACHE/.install.lock"
  if ! flock -n 8; then
    log "another install is building; waiting for it"
    flock 8
  fi
  binaries_present && return
  apt_install go=golang-go rsync=rsync jq=jq dpkg-source=dpkg-dev
  local work="$CACHE/build"
  mkdir -p "$work/S/lists/partial" "$work/S/parts"
  cd "$work"
  local tree
  tree=$(ls -d kubernetes-*/ 2>/dev/null | head -1 || true)
  if [ -z "$tree" ] || ! [ -f "$tree/.meshd-unpacked" ]; then
    rm -rf kubernetes-*/
    local sources=/etc/apt/sources.list.d/debian.sources
    if [ -f "$sources" ]; then
      sed 's/^Types: deb$/Types: deb-src/' "$sources" > S/parts/src.sources
    else
      sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > S/parts/src.list
    fi
    local O=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/S/parts"
             -o "Dir::State::Lists=$work/S/lists")
    if ! ls kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
      log "downloading Debian's kubernetes source package"
      apt-get "${O[@]}" update -qq
      apt-get "${O[@]}" source --download-only kubernetes >/dev/null
    fi
    local orig
    orig=$(ls kubernetes_*.orig.tar.gz | head -1)
    log "unpacking $orig"
    tar xzf "$orig"
    tree=$(ls -d kubernetes-*/ | head -1)
    # The same Go >= 1.18 fix kube-apiserver.sh applies (json-iterator crashes without it).
    "$HERE/kube-apiserver.sh" patch-reflect2 "$tree/vendor/github.com/modern-go/reflect2"
    touch "$tree/.meshd-unpacked"
  fi
  cd "$tree"
  export GOPATH="$PWD/.go" CGO_ENABLED=0 GOPROXY=off
  mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes
  local what="cmd/kubelet cmd/kube-scheduler cmd/kube-controller-manager cmd/kube-proxy"
  # The API server from the same tree when kube-apiserver.sh has not built it yet.
  "$HERE/kube-apiserver.sh" path >/dev/null 2>&1 || what="$what cmd/kube-apiserver"
  log "building $what (under nice -n 19; ~10 min on 2 cores)"
  mkdir -p "$work/home"
  HOME="$work/home" nice -n 19 make WHAT="$what" >"$work/build.log" 2>&1 || {
    tail -40 "$work/build.log" >&2
    exit 1
  }
  local b out
  for b in "${BINARIES[@]}"; do
    out=$(find _output -type f -name "$b" -perm -u+x | head -1)
    command install -m 0755 "$out" "$CACHE/$b.tmp"
    mv "$CACHE/$b.tmp" "$CACHE/$b"
  done
  if [[ "$what" == *kube-apiserver* ]]; then
    local api_cache
    api_cache="$(dirname "$CACHE")/kube-apiserver-v$K8S_VERSION-2"
    mkdir -p "$api_cache"
    out=$(find _output -type f -name kube-apiserver -perm -u+x | head -1)
    command install -m 0755 "$out" "$api_cache/kube-apiserver.tmp"
    mv "$api_cache/kube-apiserver.tmp" "$api_cache/kube-apiserver"
  fi
  cd "$CACHE"
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
  binaries_present || { log "build finished but the binaries do not run"; exit 1; }
  log "installed ${BINARIES[*]} in $CACHE"
}

install_node() {
  "$HERE/kube-apiserver.sh" install
  apt_install containerd=containerd runc=runc /usr/lib/cni/bridge=containernetworking-plugins \
    /usr/lib/cni/loopback=containernetworking-plugins \
    dnsmasq=dnsmasq-base conntrack=conntrack iptables=iptables ip=iproute2 \
    socat=socat nsenter=util-linux
  build_binaries
  local node_images="${MESHD_IMAGES_CACHE:-$HOME/.cache/meshd/images}/node"
  [ -f "$node_images/busybox.tar" ] || "$HERE/images.sh" node "$node_images"
}

# ---- start / stop ----------------------------------------------------------------------------

NODE=meshd-node
BRIDGE=meshd-cni0
POD_CIDR=10.88.0.0/16
NODE_IP=10.88.0.1
SERVICE_CIDR=10.96.0.0/16
API_PORT=6443
ETCD_PORT=12379
ADMIN_TOKEN=meshd-admin-token
PAUSE_IMAGE=localhost/meshd/pause:3.4.1
LOCK=/run/meshd-kube-node.lock
FWD_CHAIN=MESHD-NODE-FORWARD
SYSCTLS=(net/ipv4/ip_forward net/ipv4/conf/all/route_localnet vm/overcommit_memory vm/panic_on_oom
  kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
PIDS=(kube-proxy kubelet kube-scheduler kube-controller-manager dns-sync dnsmasq apiserver etcd containerd lock)

api() { # METHOD PATH [curl args...]: the API server as admin
  local method="$1" path="$2"
  shift 2
  curl -sS --fail --cacert "$DIR/pki/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" \
    -X "$method" "https://$NODE_IP:$API_PORT$path" "$@"
}

wait_for() { # SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s
  local seconds="$1" what="$2" i
  shift 2
  for i in $(seq 1 $((seconds * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "$what not ready after ${seconds}s"
  return 1
}

alive() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

spawn() { # NAME COMMAND...: runs COMMAND in the background, logs to DIR/NAME.log
  local name="$1"
  shift
  "$@" >"$DIR/$name.log" 2>&1 7>&- &
  echo $! > "$DIR/$name.pid"
}

gen_pki() {
  local p="$DIR/pki"
  mkdir -p "$p"
  [ -f "$p/ca.crt" ] && return
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=meshd-node-ca" \
    -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
  sign() { # NAME SUBJECT [SANS]
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$p/$1.key" -out "$p/$1.csr" 2>/dev/null
    local ext="$p/$1.ext"
    echo "basicConstraints=CA:FALSE" > "$ext"
    echo "keyUsage=digitalSignature,keyEncipherment" >> "$ext"
    echo "extendedKeyUsage=serverAuth,clientAuth" >> "$ext"
    [ -z "${3:-}" ] || echo "subjectAltName=$3" >> "$ext"
    openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
      -days 30 -extfile "$ext" -out "$p/$1.crt" 2>/dev/null
  }
  sign apiserver "/CN=kube-apiserver" \
    "IP:$NODE_IP,IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
  openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
}

kubeconfig() { # FILE TOKEN
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: meshd-node
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority: $DIR/pki/ca.crt
users:
- name: user
  user:
    token: $2
contexts:
- name: meshd-node
  context: {cluster: meshd-node, user: user, namespace: default}
current-context: meshd-node
EOF
}

host_network() {
  # The pods' bridge, made before any pod so the API server, kubelet and DNS can bind to it.
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/16" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Routing between the bridge and the host's own address (ClusterIPs DNATed by kube-proxy);
  # nothing from the bridge is forwarded to another interface or back.
  # The kubelet and kube-proxy set these machine-wide; `stop` puts the previous values back.
  if [ ! -f "$DIR/sysctl.saved" ]; then
    local k
    for k in "${SYSCTLS[@]}"; do echo "$k $(cat "/proc/sys/$k")"; done > "$DIR/sysctl.saved.tmp"
    mv "$DIR/sysctl.saved.tmp" "$DIR/sysctl.saved"
  fi
  echo 1 > /proc/sys/net/ipv4/ip_forward
  iptables -w -N "$FWD_CHAIN" 2>/dev/null || iptables -w -F "$FWD_CHAIN"
  iptables -w -A "$FWD_CHAIN" -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
  iptables -w -A "$FWD_CHAIN" -o "$BRIDGE" ! -i "$BRIDGE" -j DROP
  iptables -w -C FORWARD -j "$FWD_CHAIN" 2>/dev/null || iptables -w -I FORWARD 1 -j "$FWD_CHAIN"
}

write_configs() {
  mkdir -p "$DIR/cni/net.d" "$DIR/cni/ipam" "$DIR/containerd" "$DIR/kubelet" "$DIR/dns"
  cat > "$DIR/cni/net.d/10-meshd.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "meshd-node",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat > "$DIR/containerd/config.toml" <<EOF
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
[grpc]
  address = "$DIR/containerd/containerd.sock"
[ttrpc]
  address = "$DIR/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Processes on these machines lack CAP_SYS_RESOURCE (not in the bounding set), so nothing can
  # lower an oom_score_adj; the kubelet asks -998 for every sandbox and runc then fails with
  # "can't get final child's PID from pipe". Clamp at containerd's own value instead.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
EOF
  : > "$DIR/resolv.conf"
  cat > "$DIR/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
failSwapOn: false
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $DIR/resolv.conf
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $DIR/pki/apiserver.crt
tlsPrivateKeyFile: $DIR/pki/apiserver.key
# The machine's disk is shared with other work (builds fill it): evict only when it is
# really full, by size, not by a share of a large disk.
evictionHard: {memory.available: 100Mi, nodefs.available: 256Mi, imagefs.available: 256Mi, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
serializeImagePulls: false
EOF
}

start_node() {
  DIR="$1"
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  binaries_present || { log "kubelet & co missing: run scripts/kube-node.sh install"; exit 1; }
  local apiserver
  apiserver=$("$HERE/kube-apiserver.sh" path) || { log "kube-apiserver missing: run scripts/kube-node.sh install"; exit 1; }
  local tool
  for tool in containerd runc etcd dnsmasq conntrack; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] \
      || { log "$tool missing: run scripts/kube-node.sh install"; exit 1; }
  done
  # One node per machine: the host's iptables, /var/log/pods and the bridge are shared.
  # A `sleep` holding the lock stands for the running node; `stop` ends it last.
  exec 7>"$LOCK"
  if ! flock -n 7; then
    log "another node is running (lock $LOCK, state in $(cat "$LOCK.dir" 2>/dev/null)); waiting up to 30 min"
    flock -w 1800 7 || { log "the other node did not stop"; exit 1; }
  fi
  echo "$DIR" > "$LOCK.dir"
  sleep infinity >/dev/null 2>&1 &
  echo $! > "$DIR/lock.pid"
  exec 7>&-
  trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed; logs in $DIR"; stop_node "$DIR"; fi' EXIT

  gen_pki
  write_configs
  host_network
  local t_cm t_sched t_kubelet t_proxy
  t_cm=$(openssl rand -hex 16); t_sched=$(openssl rand -hex 16)
  t_kubelet=$(openssl rand -hex 16); t_proxy=$(openssl rand -hex 16)
  cat > "$DIR/pki/tokens.csv" <<EOF
$ADMIN_TOKEN,admin,admin,system:masters
$t_cm,system:kube-controller-manager,system:kube-controller-manager
$t_sched,system:kube-scheduler,system:kube-scheduler
$t_kubelet,system:node:$NODE,system:node:$NODE,system:nodes
$t_proxy,system:kube-proxy,system:kube-proxy
EOF
  kubeconfig "$DIR/kubeconfig" "$ADMIN_TOKEN"
  kubeconfig "$DIR/controller-manager.kubeconfig" "$t_cm"
  kubeconfig "$DIR/scheduler.kubeconfig" "$t_sched"
  kubeconfig "$DIR/kubelet.kubeconfig" "$t_kubelet"
  kubeconfig "$DIR/kube-proxy.kubeconfig" "$t_proxy"

  spawn containerd containerd --config "$DIR/containerd/config.toml"
  spawn etcd etcd --name meshd-node --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "meshd-node=http://127.0.0.1:$((ETCD_PORT + 1))"
  spawn apiserver "$apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address="$NODE_IP" --secure-port="$API_PORT" --insecure-port=0 \
    --advertise-address="$NODE_IP" --service-cluster-ip-range="$SERVICE_CIDR" \
    --tls-cert-file="$DIR/pki/apiserver.crt" --tls-private-key-file="$DIR/pki/apiserver.key" \
    --client-ca-file="$DIR/pki/ca.crt" --token-auth-file="$DIR/pki/tokens.csv" \
    --kubelet-client-certificate="$DIR/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$DIR/pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$DIR/pki/sa.pub" \
    --service-account-signing-key-file="$DIR/pki/sa.key" \
    --api-audiences=https://kubernetes.default.svc,istio-ca \
    --enable-priority-and-fairness=false
  # Generous: on a 2-core CI machine busy with other builds it has taken over a minute.
  wait_for 180 "kube-apiserver" api GET /readyz
  wait_for 30 "containerd" ctr --address "$DIR/containerd/containerd.sock" version
  local node_images="${MESHD_IMAGES_CACHE:-$HOME/.cache/meshd/images}/node"
  [ -f "$node_images/busybox.tar" ] || "$HERE/images.sh" node "$node_images"
  "$HERE/images.sh" load "$DIR/containerd/containerd.sock" "$node_images/pause.tar" "$node_images/busybox.tar"

  spawn dnsmasq dnsmasq --keep-in-foreground --no-resolv --no-hosts --user=root --group=root \
    --listen-address="$NODE_IP" --bind-interfaces --port=53 --local=/#/ \
    --addn-hosts="$DIR/dns/hosts" --pid-file="$DIR/dns/dnsmasq.pid" --log-facility=-
  spawn dns-sync python3 "$HERE/kube-node-dns.py" sync "$DIR" "$NODE_IP:$API_PORT" "$ADMIN_TOKEN"

  local kbin="$CACHE"
  spawn kube-controller-manager "$kbin/kube-controller-manager" \
    --kubeconfig="$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$DIR/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10257 --port=0 --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$DIR/pki/sa.key" --root-ca-file="$DIR/pki/ca.crt" \
    --cluster-signing-cert-file="$DIR/pki/ca.crt" --cluster-signing-key-file="$DIR/pki/ca.key" \
    --cluster-cidr="$POD_CIDR" --service-cluster-ip-range="$SERVICE_CIDR"
  spawn kube-scheduler "$kbin/kube-scheduler" --kubeconfig="$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig="$DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig="$DIR/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10259 --port=0 --leader-elect=false
  spawn kubelet "$kbin/kubelet" --kubeconfig="$DIR/kubelet.kubeconfig" \
    --config="$DIR/kubelet/config.yaml" --root-dir="$DIR/kubelet" \
    --container-runtime=remote --container-runtime-endpoint="unix://$DIR/containerd/containerd.sock" \
    --pod-infra-container-image="$PAUSE_IMAGE" \
    --hostname-override="$NODE" --node-ip="$NODE_IP" --v=1
  spawn kube-proxy "$kbin/kube-proxy" --kubeconfig="$DIR/kube-proxy.kubeconfig" \
    --proxy-mode=iptables --hostname-override="$NODE" --cluster-cidr="$POD_CIDR" \
    --bind-address="$NODE_IP" --nodeport-addresses="$NODE_IP/32" \
    --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 \
    --conntrack-tcp-timeout-close-wait=0

  wait_for 120 "node $NODE" node_ready
  wait_for 60 "cluster DNS" dns_answers kubernetes.default.svc.cluster.local
  wait_for 60 "the default ServiceAccount" api GET /api/v1/namespaces/default/serviceaccounts/default
  trap - EXIT
  log "node $NODE ready: kubeconfig $DIR/kubeconfig (API https://$NODE_IP:$API_PORT)"
}

node_ready() {
  local name
  for name in kubelet kube-proxy containerd apiserver; do
    alive "$name" || { log "$name exited:"; tail -20 "$DIR/$name.log" >&2; return 2; }
  done
  api GET "/api/v1/nodes/$NODE" | python3 -c '
import json, sys
node = json.load(sys.stdin)
ready = [c for c in node["status"].get("conditions", []) if c["type"] == "Ready"]
sys.exit(0 if ready and ready[0]["status"] == "True" else 1)'
}

dns_answers() { # NAME: dnsmasq gives an A record for NAME
  python3 "$HERE/kube-node-dns.py" query "$NODE_IP" "$1"
}

stop_pid() { # NAME: SIGTERM, then SIGKILL after 10 s
  local f="$DIR/$1.pid" pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

remove_kube_chains() { # iptables|ip6tables: every KUBE-* chain and every jump to one
  local cmd="$1" t rule c chains
  command -v "$cmd-save" >/dev/null || return 0
  for t in filter nat mangle; do
    "$cmd-save" -t "$t" 2>/dev/null \
      | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j KUBE-' | sed 's/^-A/-D/' \
      | while read -r rule; do eval "$cmd -w -t $t $rule" 2>/dev/null || true; done || true
    chains=$("$cmd-save" -t "$t" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p')
    for c in $chains; do "$cmd" -w -t "$t" -F "$c" 2>/dev/null || true; done
    for c in $chains; do "$cmd" -w -t "$t" -X "$c" 2>/dev/null || true; done
  done
}

stop_node() {
  DIR="$1"
  [ -d "$DIR" ] || { log "no node state in $DIR"; return 0; }
  DIR=$(cd "$DIR" && pwd)
  local sock="$DIR/containerd/containerd.sock"
  # No new pods, then every container killed through containerd (it is still up), so the shims
  # it started exit, then the rest.
  stop_pid kubelet
  if [ -S "$sock" ] && alive containerd; then
    local ctr=(ctr --address "$sock" -n k8s.io) id netns
    for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
      "${ctr[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do
      netns=$("${ctr[@]}" containers info "$id" 2>/dev/null | python3 -c '
import json, sys
spec = json.load(sys.stdin).get("Spec") or {}
for ns in (spec.get("linux") or {}).get("namespaces") or []:
    if ns.get("type") == "network" and ns.get("path"):
        print(ns["path"])' 2>/dev/null || true)
      "${ctr[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true
      "${ctr[@]}" containers delete "$id" >/dev/null 2>&1 || true
      if [ -n "$netns" ] && [ -e "$netns" ]; then
        umount "$netns" 2>/dev/null || true
        rm -f "$netns"
      fi
    done
  fi
  local name
  for name in "${PIDS[@]}"; do stop_pid "$name"; done
  # Every mount under DIR (pod volumes, containerd's overlays and shm), deepest first.
  local m
  for m in $(awk -v d="$DIR/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  # kube-proxy's chains and rules, the kubelet's (KUBE-FIREWALL would keep dropping
  # non-loopback packets to 127.0.0.0/8 on the machine), and ours.
  if [ -x "$CACHE/kube-proxy" ]; then
    "$CACHE/kube-proxy" --cleanup >"$DIR/kube-proxy-cleanup.log" 2>&1 || true
  fi
  remove_kube_chains iptables
  remove_kube_chains ip6tables
  iptables -w -D FORWARD -j "$FWD_CHAIN" 2>/dev/null || true
  iptables -w -F "$FWD_CHAIN" 2>/dev/null || true
  iptables -w -X "$FWD_CHAIN" 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  if [ -f "$DIR/sysctl.saved" ]; then
    local k v
    while read -r k v; do echo "$v" > "/proc/sys/$k" 2>/dev/null || true; done < "$DIR/sysctl.saved"
    rm -f "$DIR/sysctl.saved"
  fi
  # The kubelet's pod cgroups (cgroupfs driver), leaves first.
  local c
  for c in /sys/fs/cgroup/*/kubepods; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  rm -rf /var/log/pods /var/log/containers
  if [ -f "$LOCK.dir" ] && [ "$(cat "$LOCK.dir")" = "$DIR" ]; then rm -f "$LOCK.dir"; fi
  log "node in $DIR stopped"
}

status_node() {
  DIR=$(cd "$1" && pwd)
  local name
  for name in "${PIDS[@]}"; do
    if alive "$name"; then echo "$name: running (pid $(cat "$DIR/$name.pid"))"; else echo "$name: stopped"; fi
  done
  api GET "/api/v1/nodes/$NODE" 2>/dev/null | python3 -c '
import json, sys
for c in json.load(sys.stdin)["status"].get("conditions", []):
    print("node %s: %s (%s)" % (c["type"], c["status"], c.get("reason", "")))' || echo "API server not answering"
}

case "${1:-}" in
  install) install_node ;;
  build) build_binaries ;;
  path) binaries_present && "$HERE/kube-apiserver.sh" path >/dev/null && command -v containerd >/dev/null \
    && [ -x /usr/lib/cni/bridge ] ;;
  start) [ $# -eq 2 ] || { log "usage: start DIR"; exit 2; }; start_node "$2" ;;
  stop) [ $# -eq 2 ] || { log "usage: stop DIR"; exit 2; }; stop_node "$2" ;;
  status) [ $# -eq 2 ] || { log "usage: status DIR"; exit 2; }; status_node "$2" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
