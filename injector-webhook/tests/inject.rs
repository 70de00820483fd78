//! Table tests over real Pod JSON (as the API server hands it to a mutating webhook: defaulted,
//! ServiceAccount volume added): the patch is applied with an independent RFC 6902
//! implementation and the patched pod is checked field by field.

use meshd_injector::{InjectConfig, Labels, ResponseExt, handle, inject};
use serde_json::{Value, json};
use std::path::PathBuf;

const VOICECORE: [(&str, u16); 8] = [
    ("gateway", 8000),
    ("tenant-service", 8001),
    ("call-service", 8002),
    ("ai-service", 8003),
    ("crm-service", 8004),
    ("analytics-service", 8005),
    ("integration-service", 8006),
    ("billing-service", 8007),
];

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pods")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn review_with(pod: &Value, namespace: &str, operation: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "d1b9d6c2-2a1b-4a43-9d4d-3b4a0a0b1c2d",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

fn review(pod: &Value, namespace: &str) -> Value {
    review_with(pod, namespace, "CREATE")
}

fn enabled(_: &str) -> Option<Labels> {
    Some(Labels::from([(
        "istio-injection".to_string(),
        "enabled".to_string(),
    )]))
}

fn unlabelled(_: &str) -> Option<Labels> {
    Some(Labels::from([(
        "kubernetes.io/metadata.name".to_string(),
        "x".to_string(),
    )]))
}

/// Runs the injector and applies its patch; `None` when it allowed the pod untouched.
fn injected(
    pod: &Value,
    namespace: &str,
    lookup: &dyn Fn(&str) -> Option<Labels>,
) -> Option<Value> {
    injected_with(pod, namespace, &InjectConfig::default(), lookup)
}

fn injected_with(
    pod: &Value,
    namespace: &str,
    cfg: &InjectConfig,
    lookup: &dyn Fn(&str) -> Option<Labels>,
) -> Option<Value> {
    let resp = inject(&review(pod, namespace), cfg, lookup);
    assert!(resp.allowed, "refused: {:?}", resp.result);
    assert_eq!(resp.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    let ops = resp.patch_ops()?;
    assert_eq!(
        serde_json::to_value(&resp).unwrap()["patchType"],
        "JSONPatch"
    );
    assert_eq!(resp.outcome(), "injected");
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).expect("the patch applies to the pod");
    Some(out)
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} entry named {name}"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)
}

#[test]
fn voicecore_pods_get_the_full_sidecar() {
    for (svc, port) in VOICECORE {
        let pod = fixture(&format!("voicecore-{svc}.json"));
        let out = injected(&pod, "voicecore-ai", &enabled).expect("injected");

        // The app container stays first; the sidecar is appended.
        let containers = out["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2, "{svc}");
        assert_eq!(containers[0]["name"], svc);
        let proxy = &containers[1];
        assert_eq!(proxy["name"], "istio-proxy");
        assert_eq!(proxy["image"], "envoyproxy/envoy:v1.40.0");
        assert_eq!(proxy["command"], json!(["envoy"]));
        assert!(strs(&proxy["args"]).contains(&"/etc/meshd/proxy/envoy.json"));
        assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
        assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            proxy["resources"],
            json!({"requests": {"cpu": "100m", "memory": "128Mi"},
                   "limits": {"cpu": "2000m", "memory": "1024Mi"}})
        );
        assert_eq!(
            proxy["readinessProbe"]["httpGet"],
            json!({"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"})
        );
        assert_eq!(proxy["ports"][0]["containerPort"], 15090);
        let mounts: Vec<&str> = proxy["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        assert_eq!(
            mounts,
            [
                "/etc/meshd/proxy",
                "/var/run/secrets/tokens",
                "/var/run/secrets/istio"
            ]
        );

        // Init containers: capture first (root, NET_ADMIN/NET_RAW), as Istio orders them, then
        // the bootstrap (unprivileged).
        let inits: Vec<&str> = out["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(inits, ["meshd-init", "meshd-bootstrap"]);
        let init = container(&out, "initContainers", "meshd-init");
        assert_eq!(init["securityContext"]["runAsUser"], 0);
        assert_eq!(
            init["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "NET_RAW"])
        );
        assert_eq!(
            strs(&init["args"]).join(" "),
            "init-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i * -b *"
        );
        let boot = container(&out, "initContainers", "meshd-bootstrap");
        let args = strs(&boot["args"]).join(" ");
        assert!(
            args.starts_with(
                "bootstrap --registry kubernetes --workload $(POD_NAME).$(POD_NAMESPACE)"
            ),
            "{args}"
        );
        assert!(
            args.contains("--xds-address meshd.meshd-system.svc:15012"),
            "{args}"
        );
        assert!(
            args.contains("--token-file /var/run/secrets/tokens/istio-token"),
            "{args}"
        );
        assert!(
            args.contains("--root-cert /var/run/secrets/istio/root-cert.pem"),
            "{args}"
        );
        assert!(args.contains("--out /etc/meshd/proxy/envoy.json"), "{args}");
        assert_eq!(boot["securityContext"]["runAsUser"], 1337);
        assert_eq!(
            env(boot, "POD_IP").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
            "status.podIP"
        );

        // Probes now go through the sidecar's health listener; the originals are recorded.
        let app = &containers[0];
        assert_eq!(
            app["livenessProbe"]["httpGet"],
            json!({"path": format!("/app-health/{svc}/livez"), "port": 15021, "scheme": "HTTP"})
        );
        assert_eq!(app["livenessProbe"]["initialDelaySeconds"], 30);
        assert_eq!(
            app["readinessProbe"]["httpGet"]["path"],
            format!("/app-health/{svc}/readyz")
        );
        let probers: Value = serde_json::from_str(
            env(boot, "MESHD_APP_PROBERS").unwrap()["value"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            probers,
            json!({
                format!("/app-health/{svc}/livez"): {"port": port, "path": "/health", "scheme": "HTTP"},
                format!("/app-health/{svc}/readyz"): {"port": port, "path": "/ready", "scheme": "HTTP"},
            })
        );

        // Volumes: the ServiceAccount's stays, ours are appended.
        let volumes = out["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 4);
        assert!(
            volumes[0]["name"]
                .as_str()
                .unwrap()
                .starts_with("kube-api-access-")
        );
        let token = &volumes[2];
        assert_eq!(token["name"], "istio-token");
        assert_eq!(
            token["projected"]["sources"][0]["serviceAccountToken"],
            json!({"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"})
        );
        assert_eq!(volumes[3]["configMap"]["name"], "istio-ca-root-cert");
        assert_eq!(volumes[1]["emptyDir"]["medium"], "Memory");

        // Annotations and labels.
        let ann = &out["metadata"]["annotations"];
        let status: Value =
            serde_json::from_str(ann["sidecar.istio.io/status"].as_str().unwrap()).unwrap();
        assert_eq!(status["containers"], json!(["istio-proxy"]));
        // The app's own Prometheus annotations are kept.
        assert_eq!(ann["prometheus.io/port"], port.to_string());
        assert_eq!(ann["kubectl.kubernetes.io/default-container"], svc);
        let labels = &out["metadata"]["labels"];
        assert_eq!(labels["security.istio.io/tlsMode"], "istio");
        assert_eq!(labels["service.istio.io/canonical-name"], svc);
        assert_eq!(labels["service.istio.io/canonical-revision"], "v1");
        assert_eq!(
            labels["pod-template-hash"],
            pod["metadata"]["labels"]["pod-template-hash"]
        );

        // Re-injection (as Istio re-injects a pod carrying the status annotation) gives the
        // same pod: nothing to patch.
        let again = inject(
            &review(&out, "voicecore-ai"),
            &InjectConfig::default(),
            &enabled,
        );
        assert!(again.allowed);
        assert!(
            again.patch.is_none(),
            "{svc} changed by re-injection: {:?}",
            again.patch_ops()
        );
        assert_eq!(again.outcome(), "injected (unchanged)");
    }
}

#[test]
fn who_gets_injected() {
    let base = fixture("bare.json");
    let with = |label: Option<&str>, annotation: Option<&str>| {
        let mut p = base.clone();
        if let Some(v) = label {
            p["metadata"]["labels"] = json!({"sidecar.istio.io/inject": v});
        }
        if let Some(v) = annotation {
            p["metadata"]["annotations"] = json!({"sidecar.istio.io/inject": v});
        }
        p
    };
    let disabled = |_: &str| {
        Some(Labels::from([(
            "istio-injection".to_string(),
            "disabled".to_string(),
        )]))
    };
    let unknown = |_: &str| None;
    let strict = InjectConfig {
        inject_unknown_namespaces: false,
        ..InjectConfig::default()
    };
    let default = InjectConfig::default();
    type Lookup<'a> = &'a dyn Fn(&str) -> Option<Labels>;
    let mut host_network = base.clone();
    host_network["spec"]["hostNetwork"] = json!(true);
    let cases: Vec<(&str, Value, &str, Lookup<'_>, &InjectConfig, bool)> = vec![
        (
            "namespace enabled",
            with(None, None),
            "default",
            &enabled,
            &default,
            true,
        ),
        (
            "pod asks (annotation)",
            with(None, Some("true")),
            "default",
            &unlabelled,
            &default,
            true,
        ),
        (
            "pod asks (label)",
            with(Some("true"), None),
            "default",
            &unlabelled,
            &default,
            true,
        ),
        (
            "nobody asks",
            with(None, None),
            "default",
            &unlabelled,
            &default,
            false,
        ),
        (
            "pod refuses",
            with(None, Some("false")),
            "default",
            &enabled,
            &default,
            false,
        ),
        (
            "label wins over annotation",
            with(Some("false"), Some("true")),
            "default",
            &enabled,
            &default,
            false,
        ),
        (
            "namespace disabled",
            with(None, Some("true")),
            "default",
            &disabled,
            &default,
            false,
        ),
        (
            "kube-system",
            with(None, Some("true")),
            "kube-system",
            &enabled,
            &default,
            false,
        ),
        (
            "meshd's namespace",
            with(None, Some("true")),
            "meshd-system",
            &enabled,
            &default,
            false,
        ),
        (
            "unknown namespace, trusting the selector",
            with(None, None),
            "default",
            &unknown,
            &default,
            true,
        ),
        (
            "unknown namespace, strict",
            with(None, None),
            "default",
            &unknown,
            &strict,
            false,
        ),
        (
            "unknown namespace, strict, pod asks",
            with(None, Some("true")),
            "default",
            &unknown,
            &strict,
            true,
        ),
        (
            "hostNetwork",
            host_network,
            "default",
            &enabled,
            &default,
            false,
        ),
    ];
    for (what, pod, ns, lookup, cfg, want) in cases {
        let resp = inject(&review(&pod, ns), cfg, lookup);
        assert!(resp.allowed, "{what}: {:?}", resp.result);
        assert_eq!(resp.patch.is_some(), want, "{what}: {}", resp.outcome());
    }
    // Not a pod CREATE: untouched.
    let resp = inject(&review_with(&base, "default", "UPDATE"), &default, &enabled);
    assert!(resp.allowed && resp.patch.is_none());
    assert_eq!(resp.outcome(), "skipped: operation UPDATE, not CREATE");
    let mut r = review(&base, "default");
    r["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let resp = inject(&r, &default, &enabled);
    assert!(resp.allowed && resp.patch.is_none());
    // The pod's own namespace field is used when the request has none.
    let mut r = review(&base, "");
    r["request"]["namespace"] = json!(null);
    let resp = inject(&r, &default, &|ns| {
        assert_eq!(ns, "default");
        enabled(ns)
    });
    assert!(resp.patch.is_some());
}

#[test]
fn annotations_override_resources_and_capture() {
    let mut pod = fixture("voicecore-billing-service.json");
    let a = pod["metadata"]["annotations"].as_object_mut().unwrap();
    for (k, v) in [
        ("sidecar.istio.io/proxyCPU", "250m"),
        ("sidecar.istio.io/proxyMemory", "256Mi"),
        ("sidecar.istio.io/proxyCPULimit", "1"),
        ("sidecar.istio.io/proxyMemoryLimit", "512Mi"),
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.96.0.0/12, 10.244.0.0/16",
        ),
        (
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "10.96.0.1/32",
        ),
        ("traffic.sidecar.istio.io/includeInboundPorts", "8007"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "9090"),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", "5432,6379"),
        (
            "sidecar.istio.io/proxyImage",
            "registry.local/envoy:v1.40.0",
        ),
    ] {
        a.insert(k.into(), v.into());
    }
    let out = injected(&pod, "voicecore-ai", &enabled).unwrap();
    let proxy = container(&out, "containers", "istio-proxy");
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}})
    );
    assert_eq!(proxy["image"], "registry.local/envoy:v1.40.0");
    let init = container(&out, "initContainers", "meshd-init");
    assert_eq!(
        strs(&init["args"]).join(" "),
        "init-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i 10.96.0.0/12,10.244.0.0/16 -b 8007 \
         -x 10.96.0.1/32 -d 9090 -o 5432,6379"
    );
}

#[test]
fn proxy_config_annotation_chooses_the_xds_protocol_and_reports_what_it_ignores() {
    let base = fixture("voicecore-billing-service.json");
    let bootstrap_env = |annotation: Option<&str>| {
        let mut pod = base.clone();
        if let Some(v) = annotation {
            pod["metadata"]["annotations"]["proxy.istio.io/config"] = json!(v);
        }
        let resp = inject(
            &review(&pod, "voicecore-ai"),
            &InjectConfig::default(),
            &enabled,
        );
        assert!(resp.allowed, "refused: {:?}", resp.result);
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(resp.patch_ops().unwrap())).unwrap();
        let mut out = pod.clone();
        json_patch::patch(&mut out, &patch).unwrap();
        let init = container(&out, "initContainers", "meshd-bootstrap").clone();
        let about_config: Vec<String> = resp
            .warnings
            .unwrap_or_default()
            .into_iter()
            .filter(|w| w.contains("proxy.istio.io/config"))
            .collect();
        (env(&init, "ISTIO_DELTA_XDS").cloned(), about_config)
    };
    // No annotation: nothing set, the bootstrap's default (Delta) holds.
    assert_eq!(bootstrap_env(None), (None, vec![]));
    // Istio's opt-out, in YAML as istioctl writes it; Go's booleans are accepted.
    let (var, warnings) = bootstrap_env(Some("proxyMetadata:\n  ISTIO_DELTA_XDS: \"F\"\n"));
    assert_eq!(
        var,
        Some(json!({"name": "ISTIO_DELTA_XDS", "value": "false"}))
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    // JSON too; what meshd does not use is reported, not silently dropped.
    let (var, warnings) = bootstrap_env(Some(
        r#"{"concurrency": 2, "proxyMetadata": {"ISTIO_DELTA_XDS": "true", "DNS_AGENT": ""}}"#,
    ));
    assert_eq!(
        var,
        Some(json!({"name": "ISTIO_DELTA_XDS", "value": "true"}))
    );
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("field `concurrency`")));
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("proxyMetadata.DNS_AGENT"))
    );

    // Not a boolean, not YAML, not a mapping: refused with the reason.
    for (bad, want) in [
        (
            "proxyMetadata: {ISTIO_DELTA_XDS: maybe}",
            "ISTIO_DELTA_XDS: `maybe` is not a boolean",
        ),
        (
            "proxyMetadata: [1, 2]",
            "proxyMetadata is not a map of strings",
        ),
        ("{unclosed", "proxy.istio.io/config: not YAML"),
        ("- a\n- b\n", "not a ProxyConfig mapping"),
    ] {
        let mut pod = base.clone();
        pod["metadata"]["annotations"]["proxy.istio.io/config"] = json!(bad);
        let resp = inject(
            &review(&pod, "voicecore-ai"),
            &InjectConfig::default(),
            &enabled,
        );
        assert!(!resp.allowed, "{bad}");
        let status = resp.result;
        assert_eq!(status.code, 400);
        assert!(status.message.contains(want), "{bad}: {}", status.message);
    }
}

#[test]
fn bad_annotations_are_refused_with_every_reason() {
    let mut pod = fixture("bare.json");
    pod["metadata"]["annotations"] = json!({
        "sidecar.istio.io/proxyCPU": "lots",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/40",
        "traffic.sidecar.istio.io/excludeOutboundPorts": "80; rm -rf /",
    });
    let resp = inject(&review(&pod, "default"), &InjectConfig::default(), &enabled);
    assert!(!resp.allowed);
    let status = resp.result;
    assert_eq!(status.code, 400);
    for want in [
        "sidecar.istio.io/proxyCPU: `lots` is not a Kubernetes quantity",
        "excludeOutboundIPRanges: `10.0.0.0/40` is not a CIDR",
        "excludeOutboundPorts: `80; rm -rf /` is not a port",
    ] {
        assert!(status.message.contains(want), "{}", status.message);
    }
}

#[test]
fn bare_pod_gets_maps_and_lists_created() {
    let pod = fixture("bare.json");
    let out = injected(&pod, "default", &enabled).unwrap();
    assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 3);
    assert_eq!(out["spec"]["initContainers"].as_array().unwrap().len(), 2);
    let ann = &out["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "15090");
    assert_eq!(ann["prometheus.io/path"], "/stats/prometheus");
    assert_eq!(
        out["metadata"]["labels"]["security.istio.io/tlsMode"],
        "istio"
    );
    assert_eq!(
        out["metadata"]["labels"]["service.istio.io/canonical-revision"],
        "latest"
    );
    let boot = container(&out, "initContainers", "meshd-bootstrap");
    assert!(env(boot, "MESHD_APP_PROBERS").is_none());

    // A pod with no metadata at all still gets a patch that applies.
    let mut naked = pod.clone();
    naked.as_object_mut().unwrap().remove("metadata");
    let out = injected(&naked, "default", &enabled).unwrap();
    assert!(out["metadata"]["annotations"]["sidecar.istio.io/status"].is_string());
}

#[test]
fn complex_probes_and_existing_init_containers() {
    let pod = fixture("complex.json");
    let resp = inject(&review(&pod, "shop"), &InjectConfig::default(), &enabled);
    assert!(
        resp.warnings
            .iter()
            .flatten()
            .any(|w| w.contains("worker: readinessProbe port does not resolve")),
        "{:?}",
        resp.warnings
    );
    let out = injected(&pod, "shop", &enabled).unwrap();
    let inits: Vec<&str> = out["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    // Capture first, before the user's init containers (Istio's order).
    assert_eq!(inits, ["meshd-init", "meshd-bootstrap", "migrate"]);
    let web = container(&out, "containers", "web");
    assert_eq!(
        web["livenessProbe"]["httpGet"],
        json!({"path": "/app-health/web/livez", "port": 15021, "scheme": "HTTP",
               "httpHeaders": [{"name": "X-Probe", "value": "1"}]})
    );
    assert_eq!(
        web["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/web/readyz", "port": 15021, "scheme": "HTTP"}})
    );
    assert_eq!(
        web["startupProbe"]["httpGet"]["path"],
        "/app-health/web/startupz"
    );
    assert_eq!(web["startupProbe"]["failureThreshold"], 30);
    let worker = container(&out, "containers", "worker");
    assert_eq!(worker["readinessProbe"]["httpGet"]["port"], "nope");
    let boot = container(&out, "initContainers", "meshd-bootstrap");
    let probers: Value = serde_json::from_str(
        env(boot, "MESHD_APP_PROBERS").unwrap()["value"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        probers,
        json!({
            "/app-health/web/livez": {"port": 9443, "path": "/healthz", "scheme": "HTTPS"},
            "/app-health/web/readyz": {"port": 8080, "kind": "tcp"},
            "/app-health/web/startupz": {"port": 8080, "path": "/", "scheme": "HTTP"},
        })
    );
    assert_eq!(
        out["metadata"]["labels"]["service.istio.io/canonical-name"],
        "shop"
    );
    assert_eq!(
        out["metadata"]["labels"]["service.istio.io/canonical-revision"],
        "2.1"
    );

    // Rewriting can be turned off per pod.
    let mut off = pod.clone();
    off["metadata"]["annotations"] = json!({"sidecar.istio.io/rewriteAppHTTPProbers": "false"});
    let out = injected(&off, "shop", &enabled).unwrap();
    assert_eq!(
        container(&out, "containers", "web")["livenessProbe"],
        pod["spec"]["containers"][0]["livenessProbe"]
    );
}

#[test]
fn configured_images_and_addresses() {
    let cfg = InjectConfig {
        init_image: "registry.local/meshd:dev".into(),
        ..InjectConfig::for_namespace("mesh")
    };
    let out = injected_with(&fixture("bare.json"), "default", &cfg, &enabled).unwrap();
    let boot = container(&out, "initContainers", "meshd-bootstrap");
    assert_eq!(boot["image"], "registry.local/meshd:dev");
    assert!(strs(&boot["args"]).contains(&"meshd.mesh.svc:15012"));
    // meshd's own namespace follows the config.
    let resp = inject(&review(&fixture("bare.json"), "mesh"), &cfg, &enabled);
    assert!(resp.patch.is_none());
}

#[test]
fn conflicting_volume_is_a_clear_refusal() {
    let mut pod = fixture("bare.json");
    pod["spec"]["volumes"] = json!([{"name": "istio-token", "emptyDir": {}}]);
    let resp = inject(&review(&pod, "default"), &InjectConfig::default(), &enabled);
    assert!(!resp.allowed);
    let s = resp.result;
    assert_eq!(s.code, 409);
    assert!(
        s.message.contains("volume named `istio-token`"),
        "{}",
        s.message
    );
}

fn refused(body: &[u8]) -> (u16, String) {
    let reply = handle(body, &InjectConfig::default(), &enabled);
    assert!(
        !reply.response.allowed,
        "allowed: {}",
        String::from_utf8_lossy(body)
    );
    let status = reply.response.result.clone();
    // The body is always an AdmissionReview the API server can decode.
    let parsed: Value = serde_json::from_slice(&reply.body()).unwrap();
    assert_eq!(parsed["kind"], "AdmissionReview");
    assert_eq!(parsed["response"]["allowed"], false);
    (reply.http_status, status.message)
}

#[test]
fn hostile_and_malformed_reviews_get_clear_errors() {
    let good = review(&fixture("bare.json"), "default");
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"".to_vec(), 400, "not JSON"),
        (b"\xff\xfe".to_vec(), 400, "not JSON"),
        (b"null".to_vec(), 400, "not an AdmissionReview object"),
        (b"[]".to_vec(), 400, "not an AdmissionReview object"),
        (b"{}".to_vec(), 400, "no apiVersion"),
        (
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}})).unwrap(),
            200,
            "admission.k8s.io/v1 only",
        ),
        (
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})).unwrap(),
            400,
            "has no request",
        ),
        ("[".repeat(100_000).into_bytes(), 400, "not JSON"),
        (vec![b' '; 5 << 20], 413, "exceeds the injector's limit"),
    ];
    for (body, code, want) in cases {
        let (status, message) = refused(&body);
        assert_eq!(status, code, "{message}");
        assert!(message.contains(want), "{message} (wanted {want})");
    }
    let mutate = |f: &dyn Fn(&mut Value)| {
        let mut r = good.clone();
        f(&mut r);
        serde_json::to_vec(&r).unwrap()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (mutate(&|r| r["request"]["uid"] = json!(7)), "no valid uid"),
        (
            mutate(&|r| r["request"]["uid"] = json!("u".repeat(10_000))),
            "no valid uid",
        ),
        (
            mutate(&|r| r["request"]["object"] = json!("pod")),
            "carries no Pod object",
        ),
        (
            mutate(&|r| r["request"]["object"]["spec"] = json!([])),
            "has no spec",
        ),
        (
            mutate(&|r| r["request"]["object"]["spec"]["containers"] = json!({})),
            "spec.containers is not a list",
        ),
        (
            mutate(&|r| r["request"]["object"]["spec"]["containers"] = json!([])),
            "has no containers",
        ),
        (
            mutate(&|r| r["request"]["object"]["spec"]["containers"] = json!([{"image": "x"}])),
            "has no name",
        ),
        (
            mutate(&|r| r["request"]["object"]["metadata"]["labels"] = json!({"a": 1})),
            "metadata.labels[a] is not a string",
        ),
        (
            mutate(&|r| r["request"]["object"]["metadata"]["annotations"] = json!([1])),
            "not a map of strings",
        ),
        (
            mutate(&|r| r["request"]["object"]["spec"]["volumes"] = json!("x")),
            "spec.volumes is not a list",
        ),
        (
            mutate(&|r| r["request"]["operation"] = json!(null)),
            "no valid operation",
        ),
    ];
    for (body, want) in cases {
        let (status, message) = refused(&body);
        assert_eq!(status, 200);
        assert!(message.contains(want), "{message} (wanted {want})");
    }
}

/// kube-core's `AdmissionRequest` types the envelope as admission/v1 does, where the hand-read
/// envelope let a wrong type pass as absent: a field of the wrong type, or an operation the API
/// never sends, is now a refusal naming the field (Go's decoder, the API server's and Istio's,
/// fails on them too). Fields absent altogether still read as Go's zero values, as before.
#[test]
fn envelope_fields_decode_as_admission_v1_types_them() {
    let good = review(&fixture("bare.json"), "default");
    let mutate = |f: &dyn Fn(&mut Value)| {
        let mut r = good.clone();
        f(&mut r);
        serde_json::to_vec(&r).unwrap()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            mutate(&|r| r["request"]["operation"] = json!("PATCH")),
            "no valid operation (unknown variant `PATCH`",
        ),
        (
            mutate(&|r| r["request"]["kind"] = json!("Pod")),
            "no valid kind",
        ),
        (
            mutate(&|r| r["request"]["namespace"] = json!(5)),
            "no valid namespace",
        ),
        (
            mutate(&|r| r["request"]["subResource"] = json!(["status"])),
            "no valid subResource",
        ),
        (
            mutate(&|r| r["request"]["userInfo"] = json!("admin")),
            "no valid userInfo",
        ),
    ];
    for (body, want) in cases {
        let (status, message) = refused(&body);
        assert_eq!(status, 200);
        assert!(message.contains(want), "{message} (wanted {want})");
    }
    // What a minimal client leaves out reads as Go's zero values: still a pod to inject.
    let minimal = mutate(&|r| {
        let request = r["request"].as_object_mut().unwrap();
        for field in [
            "userInfo",
            "resource",
            "requestKind",
            "requestResource",
            "options",
        ] {
            request.remove(field);
        }
        request["kind"] = json!({"kind": "Pod"});
        request["oldObject"] = Value::Null;
    });
    let reply = handle(&minimal, &InjectConfig::default(), &enabled);
    assert_eq!(reply.http_status, 200);
    assert_eq!(reply.response.outcome(), "injected", "{:?}", reply.response);
}

/// The fuzz target's property on stable: random mutations of real reviews never panic, always
/// answer an AdmissionReview, and every patch applies to the object it was made for.
#[test]
fn mutated_reviews_never_panic_and_patches_apply() {
    let mut seeds: Vec<Vec<u8>> = VOICECORE
        .iter()
        .map(|(svc, _)| {
            serde_json::to_vec(&review(
                &fixture(&format!("voicecore-{svc}.json")),
                "voicecore-ai",
            ))
            .unwrap()
        })
        .collect();
    seeds.push(serde_json::to_vec(&review(&fixture("complex.json"), "shop")).unwrap());
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let interesting = [
        b'"', b'{', b'}', b'[', b']', b',', b':', b'0', b'-', b'\\', 0xff,
    ];
    for i in 0..3000 {
        let mut body = seeds[i % seeds.len()].clone();
        for _ in 0..(1 + next() % 4) {
            let at = (next() as usize) % body.len();
            match next() % 3 {
                0 => body[at] = interesting[(next() as usize) % interesting.len()],
                1 => {
                    body.remove(at);
                }
                _ => body.insert(at, (next() % 256) as u8),
            }
        }
        let reply = handle(&body, &InjectConfig::default(), &enabled);
        let parsed: Value = serde_json::from_slice(&reply.body()).unwrap();
        assert_eq!(parsed["kind"], "AdmissionReview");
        if let Some(ops) = reply.response.patch_ops() {
            let review: Value = serde_json::from_slice(&body).unwrap();
            let mut pod = review["request"]["object"].clone();
            let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
            json_patch::patch(&mut pod, &patch).unwrap_or_else(|e| {
                panic!(
                    "patch does not apply ({e}) for {}",
                    String::from_utf8_lossy(&body)
                )
            });
        }
    }
}

#[test]
fn response_envelope() {
    let r = handle(
        &serde_json::to_vec(&review(&fixture("bare.json"), "default")).unwrap(),
        &InjectConfig::default(),
        &enabled,
    );
    assert_eq!(r.http_status, 200);
    let v: Value = serde_json::from_slice(&r.body()).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    assert_eq!(v["response"]["auditAnnotations"]["injection"], "injected");
    // base64, as admission/v1 documents it; kube-core on its own writes an array of numbers.
    assert!(
        v["response"]["patch"].is_string(),
        "{}",
        v["response"]["patch"]
    );
}
