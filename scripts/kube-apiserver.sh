#!/usr/bin/env bash
# A real Kubernetes API server (v1.20.2, built from Debian's `kubernetes` source package) with
# Debian's etcd, on loopback, for the Kubernetes-mode tests. No kubelet: pods stay Pending.
#
#   scripts/kube-apiserver.sh install          build once, cached under ~/.cache/meshd/kube-apiserver-v1.20.2/
#   scripts/kube-apiserver.sh path             print the cached binary's path (exit 1 when missing)
#   scripts/kube-apiserver.sh start DIR PORT   start etcd + kube-apiserver (state in DIR, HTTPS on
#                                              127.0.0.1:PORT, etcd on PORT+1/PORT+2); wait until ready;
#                                              write DIR/kubeconfig (admin token) and DIR/*.pid
#   scripts/kube-apiserver.sh stop DIR         stop what `start DIR` started (by the pids it wrote)
#
# The Rust tests (control-plane/tests/kube/) call `start`/`stop` themselves; they
# fail with a pointer to `install` when the binary is missing. The build takes ~4 min on 2 cores
# and ~2.5 GB of disk (the source tree is removed afterwards). MESHD_KUBE_CACHE overrides the cache.
set -euo pipefail

K8S_VERSION=1.20.2
# -2: built with the reflect2 fix (earlier builds crash under load).
CACHE="${MESHD_KUBE_CACHE:-$HOME/.cache/meshd/kube-apiserver-v$K8S_VERSION-2}"
BIN="$CACHE/kube-apiserver"
ADMIN_TOKEN=meshd-admin-token

log() { echo "kube-apiserver.sh: $*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi

apt_install() {
  local missing=()
  for spec in "$@"; do
    local cmd="${spec%%=*}" pkg="${spec#*=}"
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

patch_reflect2() {
  local d="$1"
  grep -q 'mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer) \*hiter' "$d/unsafe_link.go" || return 0
  python3 - "$d" <<'PY'
import re, sys
d = sys.argv[1]
p = f"{d}/unsafe_link.go"
s = open(p).read()
s = s.replace("func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer) *hiter",
              "func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer, it *hiter)")
s = re.sub(r"type hiter struct \{.*?\n\}", """type hiter struct {
	key         unsafe.Pointer
	value       unsafe.Pointer
	t           unsafe.Pointer
	h           unsafe.Pointer
	buckets     unsafe.Pointer
	bptr        unsafe.Pointer
	overflow    *[]unsafe.Pointer
	oldoverflow *[]unsafe.Pointer
	startBucket uintptr
	offset      uint8
	wrapped     bool
	B           uint8
	i           uint8
	bucket      uintptr
	checkBucket uintptr
}""", s, flags=re.S)
open(p, "w").write(s)
p = f"{d}/unsafe_map.go"
s = open(p).read()
s = s.replace("""	return &UnsafeMapIterator{
		hiter:      mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj)),""", """	var it hiter
	mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj), &it)
	return &UnsafeMapIterator{
		hiter:      &it,""")
open(p, "w").write(s)
PY
  grep -q 'it \*hiter)' "$d/unsafe_link.go" && grep -q 'hiter:      &it' "$d/unsafe_map.go" \
    || { log "could not patch $d"; exit 1; }
  log "patched $d for Go >= 1.18 (reflect2 v1.0.2's map iterator)"
}

install_apiserver() {
  apt_install etcd=etcd-server etcdctl=etcd-client openssl=openssl curl=curl
  if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "v$K8S_VERSION"; then
    log "kube-apiserver v$K8S_VERSION present: $BIN"
    return
  fi
  # One build at a time (CI and developers share the cache): wait for a running one.
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.install.lock"
  if ! flock -n 9; then
    log "another install is building; waiting for it"
    flock 9
  fi
  if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "v$K8S_VERSION"; then
    log "kube-apiserver v$K8S_VERSION present: $BIN"
    return
  fi
  apt_install go=golang-go rsync=rsync jq=jq dpkg-source=dpkg-dev
  mkdir -p "$CACHE"
  local work="$CACHE/build"
  rm -rf "$work"
  mkdir -p "$work/S/lists/partial" "$work/S/parts"
  cd "$work"
  # Debian's source package for kubernetes (same archive as the machine's binary packages).
  local sources=/etc/apt/sources.list.d/debian.sources
  if [ -f "$sources" ]; then
    sed 's/^Types: deb$/Types: deb-src/' "$sources" > S/parts/src.sources
  else
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > S/parts/src.list
  fi
  local O=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/S/parts"
           -o "Dir::State::Lists=$work/S/lists")
  log "downloading Debian's kubernetes source package"
  apt-get "${O[@]}" update -qq
  apt-get "${O[@]}" source --download-only kubernetes >/dev/null
  local orig
  orig=$(ls kubernetes_*.orig.tar.gz | head -1)
  log "unpacking $orig"
  tar xzf "$orig"
  local tree
  tree=$(ls -d kubernetes-*/ | head -1)
  cd "$tree"
  # Go >= 1.18 (bookworm has 1.19) changed reflect.mapiterinit to fill a caller-allocated
  # iterator; the vendored modern-go/reflect2 v1.0.1 still expects one back, and the API server
  # then crashes with SIGSEGV the first time json-iterator encodes certain maps. Apply
  # reflect2 v1.0.2's fix to the vendored copy.
  patch_reflect2 vendor/github.com/modern-go/reflect2
  export GOPATH="$PWD/.go" CGO_ENABLED=0 GOPROXY=off
  mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes
  log "building cmd/kube-apiserver (several minutes)"
  mkdir -p "$work/home"
  HOME="$work/home" make WHAT="cmd/kube-apiserver" >"$work/build.log" 2>&1 || {
    tail -40 "$work/build.log" >&2
    exit 1
  }
  local out
  out=$(find _output -type f -name kube-apiserver -perm -u+x | head -1)
  # (`command`: the coreutils tool, not a function of this script.)
  command install -m 0755 "$out" "$BIN.tmp"
  mv "$BIN.tmp" "$BIN"
  cd "$CACHE"
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
  "$BIN" --version >&2
  log "installed $BIN"
}

start() {
  local dir="$1" port="$2"
  [ -x "$BIN" ] || { log "no kube-apiserver at $BIN: run scripts/kube-apiserver.sh install"; exit 1; }
  command -v etcd >/dev/null || { log "no etcd: run scripts/kube-apiserver.sh install"; exit 1; }
  local etcd_client=$((port + 1)) etcd_peer=$((port + 2))
  mkdir -p "$dir/certs"
  dir=$(cd "$dir" && pwd)
  if [ ! -f "$dir/sa.key" ]; then
    openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
    openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  fi
  echo "$ADMIN_TOKEN,admin,admin,system:masters" > "$dir/tokens.csv"
  etcd --name meshd-test --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "meshd-test=http://127.0.0.1:$etcd_peer" \
    >"$dir/etcd.log" 2>&1 &
  echo $! > "$dir/etcd.pid"
  "$BIN" --etcd-servers="http://127.0.0.1:$etcd_client" --bind-address=127.0.0.1 --secure-port="$port" \
    --insecure-port=0 --cert-dir="$dir/certs" --token-auth-file="$dir/tokens.csv" --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$dir/sa.pub" \
    --service-account-signing-key-file="$dir/sa.key" --api-audiences=https://kubernetes.default.svc,istio-ca \
    --service-cluster-ip-range=10.96.0.0/16 --advertise-address=127.0.0.1 \
    --enable-priority-and-fairness=false \
    >"$dir/apiserver.log" 2>&1 &
  echo $! > "$dir/apiserver.pid"
  cat > "$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:$port
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: test
  context: {cluster: test, user: admin, namespace: default}
current-context: test
EOF
  local i
  for i in $(seq 1 300); do
    if curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $ADMIN_TOKEN" \
         "https://127.0.0.1:$port/readyz" 2>/dev/null | grep -q 200; then
      log "ready on https://127.0.0.1:$port (kubeconfig $dir/kubeconfig)"
      return 0
    fi
    if ! kill -0 "$(cat "$dir/apiserver.pid")" 2>/dev/null; then
      tail -20 "$dir/apiserver.log" >&2
      stop "$dir"
      log "kube-apiserver exited"
      exit 1
    fi
    sleep 0.2
  done
  tail -20 "$dir/apiserver.log" >&2
  stop "$dir"
  log "kube-apiserver not ready after 60 s"
  exit 1
}

stop() {
  local dir="$1" f pid
  for f in apiserver etcd; do
    if [ -f "$dir/$f.pid" ]; then
      pid=$(cat "$dir/$f.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/$f.pid"
    fi
  done
}

case "${1:-}" in
  install) install_apiserver ;;
  patch-reflect2) patch_reflect2 "$2" ;;
  path) [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1 && echo "$BIN" ;;
  start) [ $# -eq 3 ] || { log "usage: start DIR PORT"; exit 2; }; start "$2" "$3" ;;
  stop) [ $# -eq 2 ] || { log "usage: stop DIR"; exit 2; }; stop "$2" ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
