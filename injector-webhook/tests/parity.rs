//! Injection at parity with Istio's webhook: native sidecars, the classic order and
//! holdApplicationUntilProxyStarts, tcpSocket/grpc probes, the `istio-proxy` override, the
//! gateway template, re-injection, resources, every annotation (honoured or warned about) and
//! revisions. Each case goes through the webhook's path (AdmissionReview in, patch applied with
//! an independent RFC 6902 implementation).

use meshd_injector::{AdmissionResponse, InjectConfig, Labels, ResponseExt, inject};
use serde_json::{Value, json};
use std::path::PathBuf;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pods")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn review(pod: &Value, namespace: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "e911857d-c318-11e8-bbad-025000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
        }
    })
}

fn ns(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn enabled(_: &str) -> Option<Labels> {
    Some(ns(&[("istio-injection", "enabled")]))
}

fn apply(pod: &Value, resp: &AdmissionResponse) -> Value {
    let mut out = pod.clone();
    if let Some(ops) = resp.patch_ops() {
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        json_patch::patch(&mut out, &patch).expect("the patch applies to the pod");
    }
    out
}

/// The injected pod and the warnings; panics on a refusal or a skip.
fn run(pod: &Value, cfg: &InjectConfig) -> (Value, Vec<String>) {
    let resp = inject(&review(pod, "shop"), cfg, &enabled);
    assert!(resp.allowed, "refused: {:?}", resp.result);
    assert_eq!(resp.outcome(), "injected", "{:?}", resp.audit_annotations);
    (apply(pod, &resp), resp.warnings.unwrap_or_default())
}

fn with_annotations(pod: &Value, pairs: &[(&str, &str)]) -> Value {
    let mut p = pod.clone();
    for (k, v) in pairs {
        p["metadata"]["annotations"][*k] = json!(v);
    }
    p
}

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn find<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} entry named {name}"))
}

fn probers(pod: &Value) -> Value {
    let boot = find(pod, "initContainers", "meshd-bootstrap");
    let env = boot["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "MESHD_APP_PROBERS")
        .expect("probers recorded");
    serde_json::from_str(env["value"].as_str().unwrap()).unwrap()
}

fn native() -> InjectConfig {
    InjectConfig {
        native_sidecars: Some(true),
        ..InjectConfig::default()
    }
}

#[test]
fn native_sidecar_goes_into_init_containers_after_capture_and_before_user_inits() {
    let pod = fixture("complex.json");
    let (out, _) = run(&pod, &native());
    assert_eq!(
        names(&out, "initContainers"),
        ["meshd-init", "meshd-bootstrap", "istio-proxy", "migrate"]
    );
    assert_eq!(names(&out, "containers"), ["web", "worker"]);
    let proxy = find(&out, "initContainers", "istio-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(
        proxy["startupProbe"]["httpGet"],
        json!({"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"})
    );
    // A native sidecar starts first anyway: no postStart hold; the preStop drain stays.
    assert!(proxy["lifecycle"].get("postStart").is_none(), "{proxy}");
    assert_eq!(proxy["lifecycle"]["preStop"]["exec"]["command"][1], "drain");
    let status: Value = serde_json::from_str(
        out["metadata"]["annotations"]["sidecar.istio.io/status"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        status["initContainers"],
        json!(["meshd-init", "meshd-bootstrap", "istio-proxy"])
    );
    assert_eq!(status["containers"], json!([]));
}

#[test]
fn native_sidecar_annotation_overrides_the_server_default() {
    let pod = fixture("bare.json");
    let placement = |cfg: &InjectConfig, annotation: Option<&str>| {
        let p = match annotation {
            Some(v) => with_annotations(&pod, &[("sidecar.istio.io/nativeSidecar", v)]),
            None => pod.clone(),
        };
        let (out, warnings) = run(&p, cfg);
        let native = names(&out, "initContainers").contains(&"istio-proxy".to_string());
        let classic = names(&out, "containers").contains(&"istio-proxy".to_string());
        assert!(native != classic);
        (native, warnings)
    };
    let unknown = InjectConfig::default();
    let old_server = InjectConfig {
        native_sidecars: Some(false),
        ..InjectConfig::default()
    };
    assert!(!placement(&unknown, None).0);
    assert!(placement(&native(), None).0);
    assert!(!placement(&native(), Some("false")).0);
    assert!(placement(&unknown, Some("true")).0);
    // An old server cannot run one: classic, and the pod's author is told.
    let (is_native, warnings) = placement(&old_server, Some("true"));
    assert!(!is_native);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("sidecar.istio.io/nativeSidecar")),
        "{warnings:?}"
    );
    let resp = inject(
        &review(
            &with_annotations(&pod, &[("sidecar.istio.io/nativeSidecar", "sometimes")]),
            "shop",
        ),
        &native(),
        &enabled,
    );
    assert!(!resp.allowed);
    assert!(
        resp.result
            .message
            .contains("sidecar.istio.io/nativeSidecar: `sometimes` is not a boolean")
    );
}

#[test]
fn hold_application_puts_the_proxy_first_with_a_wait_hook() {
    let pod = fixture("complex.json");
    let held = with_annotations(
        &pod,
        &[(
            "proxy.istio.io/config",
            "holdApplicationUntilProxyStarts: true",
        )],
    );
    let mesh_default = InjectConfig {
        hold_application_until_proxy_starts: true,
        ..InjectConfig::default()
    };
    for (what, p, cfg) in [
        ("annotation", &held, InjectConfig::default()),
        ("mesh default", &pod, mesh_default.clone()),
    ] {
        let (out, _) = run(p, &cfg);
        assert_eq!(
            names(&out, "containers"),
            ["istio-proxy", "web", "worker"],
            "{what}"
        );
        let hook = &out["spec"]["containers"][0]["lifecycle"]["postStart"]["exec"]["command"];
        // The proxy's image is stock Envoy: the hook runs the small waiter the bootstrap init
        // container copied into the emptyDir both containers mount, not meshd.
        let waiter = hook[0].as_str().unwrap();
        assert_eq!(waiter, "/etc/meshd/proxy/meshd-proxy-wait", "{what}");
        assert_eq!(hook[1], "--url", "{what}");
        let bootstrap = find(&out, "initContainers", "meshd-bootstrap")["args"]
            .as_array()
            .unwrap()
            .clone();
        let at = bootstrap
            .iter()
            .position(|a| a == "--install-proxy-wait")
            .unwrap_or_else(|| panic!("{what}: {bootstrap:?}"));
        assert_eq!(bootstrap[at + 1], waiter, "{what}");
        let mounted = |c: &serde_json::Value| {
            c["volumeMounts"].as_array().unwrap().iter().any(|m| {
                m["name"] == "meshd-envoy" && waiter.starts_with(m["mountPath"].as_str().unwrap())
            })
        };
        assert!(mounted(&out["spec"]["containers"][0]), "{what}");
        assert!(
            mounted(find(&out, "initContainers", "meshd-bootstrap")),
            "{what}"
        );
        // kubectl logs/exec still pick the app.
        assert_eq!(
            out["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
            "web"
        );
    }
    // The pod may turn the mesh default off.
    let off = with_annotations(
        &pod,
        &[(
            "proxy.istio.io/config",
            "holdApplicationUntilProxyStarts: false",
        )],
    );
    let (out, _) = run(&off, &mesh_default);
    assert_eq!(names(&out, "containers"), ["web", "worker", "istio-proxy"]);
    let no_hold = |out: &serde_json::Value, proxy: &serde_json::Value| {
        proxy["lifecycle"].get("postStart").is_none()
            // The waiter is still copied: the preStop drain runs it.
            && find(out, "initContainers", "meshd-bootstrap")["args"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == "--install-proxy-wait")
    };
    assert!(
        no_hold(&out, find(&out, "containers", "istio-proxy")),
        "not held"
    );
    // A native sidecar starts first anyway: no hold.
    let (out, _) = run(&held, &native());
    assert!(
        no_hold(&out, find(&out, "initContainers", "istio-proxy")),
        "native"
    );
    let bad = with_annotations(
        &pod,
        &[(
            "proxy.istio.io/config",
            "holdApplicationUntilProxyStarts: often",
        )],
    );
    let resp = inject(&review(&bad, "shop"), &InjectConfig::default(), &enabled);
    assert!(!resp.allowed);
    assert!(
        resp.result
            .message
            .contains("holdApplicationUntilProxyStarts: `often` is not a boolean")
    );
}

/// Istio's pilot-agent drains the sidecar on SIGTERM for ProxyConfig `terminationDrainDuration`
/// (5 s unless set); with no agent, the proxy's preStop hook does it, before the kubelet's
/// SIGTERM reaches Envoy. The pod's own ProxyConfig sets the duration; a bad one is refused.
#[test]
fn every_sidecar_drains_for_the_termination_drain_duration_before_sigterm() {
    let pod = fixture("complex.json");
    let hook = |out: &serde_json::Value, proxy: &str| {
        let proxy = find(out, proxy, "istio-proxy");
        proxy["lifecycle"]["preStop"]["exec"]["command"].clone()
    };
    let (out, _) = run(&pod, &InjectConfig::default());
    assert_eq!(
        hook(&out, "containers"),
        json!([
            "/etc/meshd/proxy/meshd-proxy-wait",
            "drain",
            "--admin-url",
            "http://127.0.0.1:15000",
            "--duration",
            "5000ms"
        ])
    );
    assert!(
        find(&out, "initContainers", "meshd-bootstrap")["args"]
            .as_array()
            .unwrap()
            .windows(2)
            .any(|w| w[0] == "--install-proxy-wait" && w[1] == "/etc/meshd/proxy/meshd-proxy-wait")
    );
    let pod_set = with_annotations(
        &pod,
        &[("proxy.istio.io/config", "terminationDrainDuration: 12.5s")],
    );
    let (out, _) = run(&pod_set, &InjectConfig::default());
    assert_eq!(hook(&out, "containers")[5], "12500ms");
    let mesh_set: InjectConfig =
        serde_json::from_value(json!({"terminationDrainDuration": "0.25s"})).unwrap();
    let (out, _) = run(&pod, &mesh_set);
    assert_eq!(hook(&out, "containers")[5], "250ms");
    let (out, _) = run(&pod_set, &native());
    assert_eq!(hook(&out, "initContainers")[5], "12500ms");
    assert!(
        serde_json::from_value::<InjectConfig>(json!({"terminationDrainDuration": "5 seconds"}))
            .is_err()
    );
    for bad in ["5", "-1s", "5m", "1.0000000001s", "999999s"] {
        let bad_pod = with_annotations(
            &pod,
            &[(
                "proxy.istio.io/config",
                &format!("terminationDrainDuration: {bad}"),
            )],
        );
        let resp = inject(
            &review(&bad_pod, "shop"),
            &InjectConfig::default(),
            &enabled,
        );
        assert!(!resp.allowed, "{bad}");
        assert!(
            resp.result.message.contains("terminationDrainDuration"),
            "{bad}: {}",
            resp.result.message
        );
    }
}

#[test]
fn tcp_and_grpc_probes_and_native_init_container_probes_are_rewritten() {
    let mut pod = fixture("bare.json");
    pod["spec"]["containers"][0]["ports"] = json!([{"name": "grpc", "containerPort": 9000}]);
    pod["spec"]["containers"][0]["livenessProbe"] =
        json!({"grpc": {"port": 9000, "service": "shop.v1"}, "periodSeconds": 5});
    pod["spec"]["containers"][0]["readinessProbe"] = json!({"tcpSocket": {"port": "grpc"}});
    pod["spec"]["containers"][0]["startupProbe"] = json!({"grpc": {"port": 9000}});
    pod["spec"]["initContainers"] = json!([
        {"name": "plain-init", "image": "busybox"},
        {"name": "log-shipper", "image": "shipper", "restartPolicy": "Always",
         "readinessProbe": {"tcpSocket": {"port": 2020}}},
    ]);
    let (out, _) = run(&pod, &InjectConfig::default());
    let app = find(&out, "containers", "app");
    for (field, kind) in [
        ("livenessProbe", "livez"),
        ("readinessProbe", "readyz"),
        ("startupProbe", "startupz"),
    ] {
        assert_eq!(
            app[field]["httpGet"],
            json!({"path": format!("/app-health/app/{kind}"), "port": 15021, "scheme": "HTTP"}),
            "{field}"
        );
        assert!(app[field].get("grpc").is_none() && app[field].get("tcpSocket").is_none());
    }
    assert_eq!(app["livenessProbe"]["periodSeconds"], 5);
    let shipper = find(&out, "initContainers", "log-shipper");
    assert_eq!(
        shipper["readinessProbe"]["httpGet"]["path"],
        "/app-health/log-shipper/readyz"
    );
    assert_eq!(
        probers(&out),
        json!({
            "/app-health/app/livez": {"port": 9000, "kind": "grpc", "service": "shop.v1"},
            "/app-health/app/readyz": {"port": 9000, "kind": "tcp"},
            "/app-health/app/startupz": {"port": 9000, "kind": "grpc"},
            "/app-health/log-shipper/readyz": {"port": 2020, "kind": "tcp"},
        })
    );
    // rewriteAppHTTPProbers=false leaves them all alone.
    let off = with_annotations(&pod, &[("sidecar.istio.io/rewriteAppHTTPProbers", "false")]);
    let (out, _) = run(&off, &InjectConfig::default());
    assert_eq!(
        find(&out, "containers", "app")["livenessProbe"],
        pod["spec"]["containers"][0]["livenessProbe"]
    );
}

#[test]
fn istio_proxy_container_in_the_pod_overrides_the_injected_one() {
    let mut pod = fixture("bare.json");
    pod["spec"]["containers"] = json!([
        {"name": "istio-proxy", "image": "registry.local/envoy-debug:1.40",
         "env": [{"name": "EXTRA", "value": "1"}],
         "resources": {"limits": {"memory": "2Gi"}},
         "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]},
        {"name": "app", "image": "busybox"},
    ]);
    pod["spec"]["volumes"] = json!([{"name": "cache", "emptyDir": {}}]);
    let (out, _) = run(&pod, &InjectConfig::default());
    assert_eq!(names(&out, "containers"), ["app", "istio-proxy"]);
    let proxy = find(&out, "containers", "istio-proxy");
    assert_eq!(proxy["image"], "registry.local/envoy-debug:1.40");
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "100m", "memory": "128Mi"},
               "limits": {"cpu": "2000m", "memory": "2Gi"}})
    );
    // The pod's env entries join the injected ones (merged by name, as Istio merges lists).
    let env: Vec<&str> = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        env,
        [
            "POD_NAMESPACE",
            "CANONICAL_SERVICE",
            "CANONICAL_REVISION",
            "OTEL_RESOURCE_ATTRIBUTES",
            "EXTRA"
        ],
        "{proxy}"
    );
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
            "/var/run/secrets/istio",
            "/cache"
        ]
    );
    // The injected parts the user did not touch stay.
    assert_eq!(proxy["command"], json!(["envoy"]));
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    // `image: auto` keeps the injected image.
    pod["spec"]["containers"][0]["image"] = json!("auto");
    let (out, _) = run(&pod, &InjectConfig::default());
    assert_eq!(
        find(&out, "containers", "istio-proxy")["image"],
        "envoyproxy/envoy:v1.40.0"
    );
}

#[test]
fn gateway_template_injects_a_router_without_capture() {
    let mut pod = fixture("bare.json");
    pod["metadata"]["labels"] = json!({"istio": "ingressgateway", "app": "istio-ingressgateway"});
    pod["metadata"]["annotations"] = json!({"inject.istio.io/templates": "gateway"});
    pod["spec"]["containers"] = json!([
        {"name": "istio-proxy", "image": "auto",
         "ports": [{"containerPort": 8080, "name": "http2"}],
         "readinessProbe": {"tcpSocket": {"port": 8080}}},
    ]);
    let (out, _) = run(&pod, &InjectConfig::default());
    assert_eq!(names(&out, "initContainers"), ["meshd-bootstrap"]);
    assert_eq!(names(&out, "containers"), ["istio-proxy"]);
    let args = find(&out, "initContainers", "meshd-bootstrap")["args"].to_string();
    assert!(args.contains("\"--node-type\",\"router\""), "{args}");
    let proxy = find(&out, "containers", "istio-proxy");
    assert_eq!(proxy["image"], "envoyproxy/envoy:v1.40.0");
    // The gateway's own probe is not the sidecar's to rewrite; the user's wins.
    assert_eq!(
        proxy["readinessProbe"],
        json!({"tcpSocket": {"port": 8080}})
    );
    let ports: Vec<i64> = proxy["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [15090, 8080]);
    // An unknown template is named in a warning; the sidecar template applies.
    let odd = with_annotations(
        &fixture("bare.json"),
        &[("inject.istio.io/templates", "sidecar,spire")],
    );
    let (out, warnings) = run(&odd, &InjectConfig::default());
    assert!(names(&out, "initContainers").contains(&"meshd-init".to_string()));
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("inject.istio.io/templates") && w.contains("`spire`")),
        "{warnings:?}"
    );
}

#[test]
fn reinjection_is_idempotent_and_follows_the_current_config() {
    let cases = [
        (
            "complex classic",
            fixture("complex.json"),
            InjectConfig::default(),
        ),
        ("complex native", fixture("complex.json"), native()),
        (
            "held",
            with_annotations(
                &fixture("complex.json"),
                &[(
                    "proxy.istio.io/config",
                    "holdApplicationUntilProxyStarts: true",
                )],
            ),
            InjectConfig::default(),
        ),
        ("bare", fixture("bare.json"), InjectConfig::default()),
    ];
    for (what, pod, cfg) in cases {
        let (once, _) = run(&pod, &cfg);
        let again = inject(&review(&once, "shop"), &cfg, &enabled);
        assert!(again.allowed, "{what}: {:?}", again.result);
        assert_eq!(
            apply(&once, &again),
            once,
            "{what}: re-injection changed the pod: {:?}",
            again.patch_ops()
        );
        assert_eq!(again.outcome(), "injected (unchanged)", "{what}");
    }
    // A pod injected under an older config is re-injected under the current one.
    let (once, _) = run(&fixture("complex.json"), &InjectConfig::default());
    let newer = InjectConfig {
        proxy_image: "envoyproxy/envoy:v1.40.1".into(),
        ..native()
    };
    let (twice, _) = run(&once, &newer);
    assert_eq!(
        names(&twice, "initContainers"),
        ["meshd-init", "meshd-bootstrap", "istio-proxy", "migrate"]
    );
    assert_eq!(names(&twice, "containers"), ["web", "worker"]);
    assert_eq!(
        find(&twice, "initContainers", "istio-proxy")["image"],
        "envoyproxy/envoy:v1.40.1"
    );
    // The app's probes were restored and rewritten again, not pointed at 15021 twice.
    assert_eq!(probers(&twice), probers(&once));
}

#[test]
fn resources_are_never_invalid() {
    let pod = fixture("bare.json");
    for (annotations, want_limits, warned) in [
        (
            vec![("sidecar.istio.io/proxyCPU", "4000m")],
            json!({"cpu": "4000m", "memory": "1024Mi"}),
            Some("cpu limit 2000m is below its request 4000m"),
        ),
        (
            vec![
                ("sidecar.istio.io/proxyMemory", "2Gi"),
                ("sidecar.istio.io/proxyMemoryLimit", "1500Mi"),
            ],
            json!({"cpu": "2000m", "memory": "2Gi"}),
            Some("memory limit 1500Mi is below its request 2Gi"),
        ),
        (
            vec![("sidecar.istio.io/proxyCPU", "1.5")],
            json!({"cpu": "2000m", "memory": "1024Mi"}),
            None,
        ),
    ] {
        let (out, warnings) = run(
            &with_annotations(&pod, &annotations),
            &InjectConfig::default(),
        );
        let proxy = find(&out, "containers", "istio-proxy");
        assert_eq!(proxy["resources"]["limits"], want_limits, "{annotations:?}");
        match warned {
            Some(w) => assert!(warnings.iter().any(|x| x.contains(w)), "{warnings:?}"),
            None => assert!(
                warnings.iter().all(|x| !x.contains("limit")),
                "{warnings:?}"
            ),
        }
    }
}

#[test]
fn the_alignment_of_named_lists_keeps_unknown_fields_on_their_container() {
    let mut pod = fixture("complex.json");
    pod["spec"]["initContainers"][0]["fieldFromTheFuture"] = json!({"x": 1});
    let (out, _) = run(&pod, &InjectConfig::default());
    assert_eq!(
        find(&out, "initContainers", "migrate")["fieldFromTheFuture"],
        json!({"x": 1})
    );
    assert!(
        find(&out, "initContainers", "meshd-init")
            .get("fieldFromTheFuture")
            .is_none()
    );
}

/// Envoy's OpenTelemetry tracer names a proxy's spans from `OTEL_RESOURCE_ATTRIBUTES` (meshd's
/// generated tracer config is shared by many workloads): `canonical-name.namespace`, as Istio.
#[test]
fn the_proxy_names_its_service_for_opentelemetry() {
    let pod = fixture("complex.json");
    let (out, _) = run(&pod, &InjectConfig::default());
    let proxy = find(&out, "containers", "istio-proxy");
    let env = proxy["env"].as_array().unwrap();
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {proxy}"))
            .clone()
    };
    assert_eq!(
        value("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    let canonical = out["metadata"]["labels"]["service.istio.io/canonical-name"]
        .as_str()
        .unwrap_or_else(|| out["metadata"]["labels"]["app"].as_str().unwrap())
        .to_string();
    assert_eq!(
        value("OTEL_RESOURCE_ATTRIBUTES")["value"],
        format!("service.name={canonical}.$(POD_NAMESPACE)")
    );
}

/// MeshConfig's `defaultConfig` is a ProxyConfig read with the annotation's rules: it becomes
/// the mesh default, a pod's `proxy.istio.io/config` still overrides it field by field, and its
/// `proxyStatsMatcher` adds to the injector config's as a pod's does.
#[test]
fn mesh_default_config_is_the_default_a_pod_overrides() {
    use meshd_injector::annotations::read_proxy_config;
    let default_config: serde_yaml::Value = serde_yaml::from_str(
        "holdApplicationUntilProxyStarts: true\n\
         terminationDrainDuration: 7s\n\
         proxyMetadata: {ISTIO_DELTA_XDS: \"false\", DNS_AGENT: \"\"}\n\
         proxyStatsMatcher: {inclusionPrefixes: [upstream_rq]}\n\
         concurrency: 2\n",
    )
    .unwrap();
    let at = "--mesh-config mesh.yaml: defaultConfig";
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let defaults = read_proxy_config(default_config, at, &mut errors, &mut warnings);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings.iter().all(|w| w.starts_with(at)), "{warnings:?}");
    let mut cfg = InjectConfig {
        proxy_stats_matcher: serde_json::from_value(json!({"inclusionSuffixes": ["rbac.allowed"]}))
            .unwrap(),
        ..InjectConfig::default()
    };
    cfg.apply_proxy_defaults(defaults);

    let bootstrap_env = |out: &Value, name: &str| {
        find(out, "initContainers", "meshd-bootstrap")["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap().to_string())
    };
    let drain = |out: &Value| {
        find(out, "containers", "istio-proxy")["lifecycle"]["preStop"]["exec"]["command"][5].clone()
    };
    let pod = fixture("complex.json");
    let (out, _) = run(&pod, &cfg);
    assert_eq!(names(&out, "containers"), ["istio-proxy", "web", "worker"]);
    assert_eq!(drain(&out), "7000ms");
    assert_eq!(
        bootstrap_env(&out, "ISTIO_DELTA_XDS").as_deref(),
        Some("false")
    );
    let stats: Value =
        serde_json::from_str(&bootstrap_env(&out, "MESHD_STATS_MATCHER").unwrap()).unwrap();
    assert_eq!(stats["inclusionPrefixes"], json!(["upstream_rq"]));
    assert_eq!(stats["inclusionSuffixes"], json!(["rbac.allowed"]));

    // The pod's own ProxyConfig wins, field by field.
    let own = with_annotations(
        &pod,
        &[(
            "proxy.istio.io/config",
            "holdApplicationUntilProxyStarts: false\nproxyMetadata: {ISTIO_DELTA_XDS: \"true\"}",
        )],
    );
    let (out, _) = run(&own, &cfg);
    assert_eq!(names(&out, "containers"), ["web", "worker", "istio-proxy"]);
    assert_eq!(drain(&out), "7000ms");
    assert_eq!(
        bootstrap_env(&out, "ISTIO_DELTA_XDS").as_deref(),
        Some("true")
    );

    // What the annotation refuses, the mesh default refuses too, naming where it came from.
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    read_proxy_config(
        serde_yaml::from_str("terminationDrainDuration: forever").unwrap(),
        at,
        &mut errors,
        &mut warnings,
    );
    assert_eq!(
        errors,
        [format!(
            "{at}: terminationDrainDuration: `forever` is not a duration (`5s`, `1.5s`)"
        )]
    );
}
