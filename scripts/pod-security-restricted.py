#!/usr/bin/env python3
"""Checks every pod template in Kubernetes manifests against Pod Security Standards "restricted"
(https://kubernetes.io/docs/concepts/security/pod-security-standards/, policy version v1.30:
every Baseline control plus the Restricted ones). Exits 1 and prints `file: Kind/name:
container: rule` for each violation.

Usage: pod-security-restricted.py FILE...   (multi-document YAML, e.g. `helm template` output)
       pod-security-restricted.py --self-test
"""
import sys

import yaml

# Baseline: capabilities that may be added; Restricted allows only NET_BIND_SERVICE.
RESTRICTED_ADD = {"NET_BIND_SERVICE"}
# Restricted: the only volume types allowed.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
# Baseline: safe sysctls.
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t",
                 "container_engine_t"}
APPARMOR_OK = ("runtime/default", "localhost/")
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job",
             "ReplicationController"}


def pod_spec(doc):
    """(name, pod metadata, pod spec) of a Pod or a workload's pod template, else None."""
    kind = doc.get("kind")
    name = f"{kind}/{(doc.get('metadata') or {}).get('name')}"
    if kind == "Pod":
        return name, doc.get("metadata") or {}, doc.get("spec") or {}
    spec = doc.get("spec") or {}
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    elif kind not in WORKLOADS:
        return None
    template = spec.get("template") or {}
    return name, template.get("metadata") or {}, template.get("spec") or {}


def violations(meta, spec):
    """Every restricted-profile violation of one pod spec, as strings."""
    out = []
    psc = spec.get("securityContext") or {}
    containers = [("container " + (c.get("name") or "?"), c)
                  for key in ("initContainers", "containers", "ephemeralContainers")
                  for c in spec.get(key) or []]
    if not containers:
        out.append("pod: no containers")
    # Baseline: host namespaces, hostProcess, hostPath, hostPort, sysctls, AppArmor, SELinux.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"pod: {field} must be unset or false")
    windows = psc.get("windowsOptions") or {}
    if windows.get("hostProcess"):
        out.append("pod: windowsOptions.hostProcess must not be true")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            out.append(f"pod: sysctl {s.get('name')} is not a safe sysctl")
    for v in spec.get("volumes") or []:
        types = [k for k in v if k != "name"]
        for t in types:
            if t not in RESTRICTED_VOLUMES:
                out.append(f"pod: volume {v.get('name')} is of type {t} (restricted allows "
                           f"{', '.join(sorted(RESTRICTED_VOLUMES))})")
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            out.append(f"pod: AppArmor annotation {key}={value}")

    def selinux(where, sc):
        opts = sc.get("seLinuxOptions") or {}
        if opts.get("type") not in SELINUX_TYPES:
            out.append(f"{where}: seLinuxOptions.type {opts.get('type')} not allowed")
        if opts.get("user") or opts.get("role"):
            out.append(f"{where}: seLinuxOptions.user/role must be unset")

    def apparmor(where, sc):
        prof = sc.get("appArmorProfile") or {}
        if prof.get("type") not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"{where}: appArmorProfile.type {prof.get('type')} not allowed")

    def seccomp_type(sc):
        return (sc.get("seccompProfile") or {}).get("type")

    selinux("pod", psc)
    apparmor("pod", psc)
    # Restricted: seccomp RuntimeDefault/Localhost at pod level or on every container, never
    # Unconfined; runAsNonRoot at pod level or on every container, never false; runAsUser ≠ 0.
    if seccomp_type(psc) not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"pod: seccompProfile.type {seccomp_type(psc)} not allowed")
    if psc.get("runAsNonRoot") is False:
        out.append("pod: runAsNonRoot must not be false")
    if psc.get("runAsUser") == 0:
        out.append("pod: runAsUser must not be 0")
    for where, c in containers:
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{where}: privileged must be unset or false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}: windowsOptions.hostProcess must not be true")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append(f"{where}: hostPort {p.get('hostPort')} must be unset or 0")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{where}: procMount must be Default")
        selinux(where, sc)
        apparmor(where, sc)
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}: capabilities.drop must include ALL")
        extra = set(caps.get("add") or []) - RESTRICTED_ADD
        if extra:
            out.append(f"{where}: capabilities.add {sorted(extra)} (only NET_BIND_SERVICE)")
        seccomp = seccomp_type(sc)
        if seccomp not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"{where}: seccompProfile.type {seccomp} not allowed")
        if seccomp is None and seccomp_type(psc) is None:
            out.append(f"{where}: seccompProfile.type must be RuntimeDefault or Localhost "
                       "(here or at pod level)")
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and psc.get("runAsNonRoot") is not True):
            out.append(f"{where}: runAsNonRoot must be true (here or at pod level)")
        if sc.get("runAsUser") == 0:
            out.append(f"{where}: runAsUser must not be 0")
    return out


def check_docs(label, docs):
    """(pod templates seen, violations) of a list of parsed documents."""
    seen, bad = 0, []
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        found = pod_spec(doc)
        if found is None:
            continue
        name, meta, spec = found
        seen += 1
        bad += [f"{label}: {name}: {v}" for v in violations(meta, spec)]
    return seen, bad


SELF_TEST = """
kind: Deployment
metadata: {name: today}
spec:
  template:
    spec:
      containers:
        - name: c
          securityContext: {runAsNonRoot: true, allowPrivilegeEscalation: false,
                            capabilities: {drop: [ALL]}}
---
kind: Pod
metadata: {name: loose}
spec:
  hostNetwork: true
  volumes: [{name: h, hostPath: {path: /}}]
  containers:
    - name: c
      ports: [{containerPort: 80, hostPort: 80}]
      securityContext: {privileged: true, capabilities: {add: [NET_ADMIN]}}
---
kind: Deployment
metadata: {name: good}
spec:
  template:
    spec:
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      volumes: [{name: t, emptyDir: {}}, {name: p, projected: {sources: []}}]
      initContainers:
        - name: i
          securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
      containers:
        - name: c
          securityContext: {allowPrivilegeEscalation: false,
                            capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}
"""


def self_test():
    docs = list(yaml.safe_load_all(SELF_TEST))
    _, bad = check_docs("self-test", docs)
    text = "\n".join(bad)
    want = ["Deployment/today: container c: seccompProfile.type must be",
            "Pod/loose: pod: hostNetwork", "Pod/loose: pod: volume h is of type hostPath",
            "Pod/loose: container c: privileged", "Pod/loose: container c: hostPort 80",
            "Pod/loose: container c: capabilities.add ['NET_ADMIN']",
            "Pod/loose: container c: allowPrivilegeEscalation must be false",
            "Pod/loose: container c: runAsNonRoot must be true"]
    missing = [w for w in want if w not in text]
    if missing or "Deployment/good" in text:
        print("pod-security-restricted: self-test failed; missing", missing, "got:\n" + text)
        return 1
    print(f"pod-security-restricted: self-test ok ({len(bad)} violations found as expected)")
    return 0


def main(argv):
    if argv == ["--self-test"]:
        return self_test()
    total, bad = 0, []
    for path in argv:
        with open(path) as f:
            seen, found = check_docs(path, yaml.safe_load_all(f))
        total += seen
        bad += found
    for b in bad:
        print(b)
    print(f"pod-security-restricted: {total} pod templates, {len(bad)} violations")
    return 1 if bad or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
