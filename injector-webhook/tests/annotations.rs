//! Table tests: every Istio annotation the webhook reads, with a valid and an invalid value —
//! honoured (the pod shows it), warned about (the warning names it), or refused (the message
//! names it). Then revisions: which pods this injector takes, by namespace and pod labels.

use meshd_injector::{InjectConfig, Labels, ResponseExt, inject};
use serde_json::{Value, json};

fn bare() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bare", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "busybox",
            "readinessProbe": {"tcpSocket": {"port": 8080}}}]}
    })
}

fn review(pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "9a7c5f1e-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": pod,
        }
    })
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What one annotation value did.
enum Want {
    /// Injected; the check holds on the patched pod; no warning names the annotation.
    Honoured(fn(&Value) -> bool),
    /// Injected with a warning naming the annotation.
    Warned,
    /// Refused (400) with a message naming the annotation.
    Refused,
}

fn proxy(pod: &Value) -> &Value {
    pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["spec"]["initContainers"].as_array().unwrap())
        .find(|c| c["name"] == "istio-proxy")
        .unwrap()
}

fn has_init(pod: &Value, name: &str) -> bool {
    pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == name)
}

fn init_args(pod: &Value, name: &str) -> String {
    pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["args"].to_string())
        .unwrap_or_default()
}

/// The JSON stats inclusion the `meshd-bootstrap` init container is given, if any.
fn stats_matcher_env(pod: &Value) -> Option<Value> {
    pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "meshd-bootstrap")?["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == "MESHD_STATS_MATCHER")
        .and_then(|e| serde_json::from_str(e["value"].as_str()?).ok())
}

#[test]
fn every_annotation_is_honoured_warned_about_or_refused() {
    use Want::*;
    let cases: Vec<(&str, &str, Want)> = vec![
        (
            "sidecar.istio.io/interceptionMode",
            "NONE",
            Honoured(|p| !has_init(p, "meshd-init") && has_init(p, "meshd-bootstrap")),
        ),
        (
            "sidecar.istio.io/interceptionMode",
            "REDIRECT",
            Honoured(|p| init_args(p, "meshd-init").contains("REDIRECT")),
        ),
        ("sidecar.istio.io/interceptionMode", "TPROXY", Warned),
        ("sidecar.istio.io/interceptionMode", "BPF", Refused),
        (
            "traffic.sidecar.istio.io/kubevirtInterfaces",
            "net1",
            Warned,
        ),
        ("istio.io/reroute-virtual-interfaces", "net1,net2", Warned),
        (
            "status.sidecar.istio.io/port",
            "0",
            Honoured(|p| proxy(p).get("readinessProbe").is_none()),
        ),
        ("status.sidecar.istio.io/port", "15020", Warned),
        ("status.sidecar.istio.io/port", "http", Refused),
        (
            "readiness.status.sidecar.istio.io/initialDelaySeconds",
            "7",
            Honoured(|p| proxy(p)["readinessProbe"]["initialDelaySeconds"] == 7),
        ),
        (
            "readiness.status.sidecar.istio.io/initialDelaySeconds",
            "-1",
            Refused,
        ),
        (
            "readiness.status.sidecar.istio.io/periodSeconds",
            "9",
            Honoured(|p| proxy(p)["readinessProbe"]["periodSeconds"] == 9),
        ),
        (
            "readiness.status.sidecar.istio.io/periodSeconds",
            "0",
            Refused,
        ),
        (
            "readiness.status.sidecar.istio.io/failureThreshold",
            "4",
            Honoured(|p| proxy(p)["readinessProbe"]["failureThreshold"] == 4),
        ),
        (
            "readiness.status.sidecar.istio.io/failureThreshold",
            "many",
            Refused,
        ),
        (
            "readiness.status.sidecar.istio.io/applicationPorts",
            "8080",
            Warned,
        ),
        (
            "sidecar.istio.io/userVolume",
            r#"[{"name":"lua-libs","configMap":{"name":"lua-libs"}}]"#,
            Honoured(|p| {
                p["spec"]["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v["name"] == "lua-libs" && v["configMap"]["name"] == "lua-libs")
            }),
        ),
        (
            "sidecar.istio.io/userVolume",
            r#"{"certs":{"secret":{"secretName":"extra-certs"}}}"#,
            Honoured(|p| {
                p["spec"]["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v["name"] == "certs" && v["secret"]["secretName"] == "extra-certs")
            }),
        ),
        ("sidecar.istio.io/userVolume", r#"[{"name": 3}]"#, Refused),
        (
            "sidecar.istio.io/userVolumeMount",
            r#"[{"name":"lua-libs","mountPath":"/var/lib/lua"}]"#,
            Honoured(|p| {
                proxy(p)["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["mountPath"] == "/var/lib/lua")
            }),
        ),
        ("sidecar.istio.io/userVolumeMount", "not json", Refused),
        (
            "inject.istio.io/templates",
            "gateway",
            Honoured(|p| init_args(p, "meshd-bootstrap").contains("router")),
        ),
        ("inject.istio.io/templates", "grpc-agent", Warned),
        (
            "prometheus.io/scrape",
            "false",
            Honoured(|p| {
                p["metadata"]["annotations"]["prometheus.io/scrape"] == "false"
                    && p["metadata"]["annotations"]
                        .get("prometheus.io/port")
                        .is_none()
            }),
        ),
        ("prometheus.io/scrape", "true", Warned),
        (
            "sidecar.istio.io/nativeSidecar",
            "true",
            Honoured(|p| has_init(p, "istio-proxy")),
        ),
        ("sidecar.istio.io/nativeSidecar", "yes", Refused),
        (
            "sidecar.istio.io/rewriteAppHTTPProbers",
            "false",
            Honoured(|p| p["spec"]["containers"][0]["readinessProbe"]["tcpSocket"]["port"] == 8080),
        ),
        ("sidecar.istio.io/rewriteAppHTTPProbers", "nah", Refused),
        (
            "sidecar.istio.io/proxyCPU",
            "4000m",
            // Honoured with the limit raised: see resources_are_never_invalid.
            Honoured(|p| proxy(p)["resources"]["requests"]["cpu"] == "4000m"),
        ),
        ("sidecar.istio.io/proxyCPU", "four", Refused),
        (
            "proxy.istio.io/config",
            "holdApplicationUntilProxyStarts: true",
            Honoured(|p| p["spec"]["containers"][0]["name"] == "istio-proxy"),
        ),
        ("proxy.istio.io/config", "tracing: {}", Warned),
        (
            "proxy.istio.io/config",
            "proxyStatsMatcher: {inclusionRegexps: ['.*outlier_detection.*']}",
            Honoured(|p| {
                stats_matcher_env(p)
                    .is_some_and(|m| m["inclusionRegexps"] == json!([".*outlier_detection.*"]))
            }),
        ),
        (
            "proxy.istio.io/config",
            "proxyStatsMatcher: {inclusionRegexps: ['(?<=x)']}",
            Refused,
        ),
        (
            "sidecar.istio.io/statsInclusionPrefixes",
            "cluster.outbound,listener",
            Honoured(|p| {
                stats_matcher_env(p).is_some_and(|m| {
                    m["inclusionPrefixes"] == json!(["cluster.outbound", "listener"])
                })
            }),
        ),
        ("sidecar.istio.io/statsInclusionRegexps", "[bad", Refused),
    ];
    for (key, value, want) in cases {
        let mut pod = bare();
        pod["metadata"]["annotations"] = json!({key: value});
        let resp = inject(&review(&pod), &InjectConfig::default(), &|_| {
            Some(labels(&[("istio-injection", "enabled")]))
        });
        let named = |w: &String| w.contains(key);
        match want {
            Refused => {
                assert!(!resp.allowed, "{key}={value} was not refused");
                let status = resp.result;
                assert_eq!(status.code, 400, "{key}={value}");
                assert!(
                    status.message.contains(key),
                    "{key}={value}: {}",
                    status.message
                );
            }
            Warned | Honoured(_) => {
                assert!(resp.allowed, "{key}={value}: {:?}", resp.result);
                assert_eq!(resp.outcome(), "injected", "{key}={value}");
                let mut out = pod.clone();
                let patch: json_patch::Patch =
                    serde_json::from_value(Value::Array(resp.patch_ops().unwrap())).unwrap();
                json_patch::patch(&mut out, &patch).unwrap();
                let warned = resp.warnings.iter().flatten().any(named);
                match want {
                    Warned => assert!(warned, "{key}={value}: no warning in {:?}", resp.warnings),
                    Honoured(check) => {
                        assert!(!warned, "{key}={value}: warned {:?}", resp.warnings);
                        assert!(check(&out), "{key}={value} not honoured: {out:#}");
                    }
                    Refused => unreachable!(),
                }
            }
        }
    }
}

#[test]
fn canonical_labels_are_derived_without_an_app_label() {
    let mut pod = bare();
    pod["metadata"] = json!({
        "generateName": "checkout-5d8f7c9b4-",
        "namespace": "shop",
        "labels": {"pod-template-hash": "5d8f7c9b4"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": "checkout-5d8f7c9b4", "uid": "u1", "controller": true}],
    });
    let cases = [
        (pod.clone(), "checkout", "latest"),
        (
            {
                let mut p = pod.clone();
                p["metadata"]["labels"]["version"] = json!("v3");
                p["metadata"]["labels"]["app"] = json!("shop-checkout");
                p
            },
            "shop-checkout",
            "v3",
        ),
        (
            {
                let mut p = bare();
                p["metadata"] = json!({"generateName": "nightly-report-28391234-", "namespace": "shop",
                    "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                        "name": "nightly-report-28391234", "uid": "u2", "controller": true}]});
                p
            },
            "nightly-report-28391234",
            "latest",
        ),
        (bare(), "bare", "latest"),
    ];
    for (p, name, revision) in cases {
        let resp = inject(&review(&p), &InjectConfig::default(), &|_| {
            Some(labels(&[("istio-injection", "enabled")]))
        });
        let mut out = p.clone();
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(resp.patch_ops().unwrap())).unwrap();
        json_patch::patch(&mut out, &patch).unwrap();
        assert_eq!(
            out["metadata"]["labels"]["service.istio.io/canonical-name"],
            name
        );
        assert_eq!(
            out["metadata"]["labels"]["service.istio.io/canonical-revision"],
            revision
        );
    }
}

#[test]
fn each_injector_takes_only_its_revision() {
    let pod_with = |pod_labels: &[(&str, &str)]| {
        let mut p = bare();
        p["metadata"]["labels"] = serde_json::to_value(labels(pod_labels)).unwrap();
        p
    };
    let default_rev = InjectConfig::default();
    let canary = InjectConfig {
        revision: "meshd-1".into(),
        ..InjectConfig::default()
    };
    // (namespace labels, pod labels, injected by default?, injected by meshd-1?)
    type Case<'a> = (
        &'a [(&'a str, &'a str)],
        &'a [(&'a str, &'a str)],
        bool,
        bool,
    );
    let cases: Vec<Case<'_>> = vec![
        (&[("istio-injection", "enabled")], &[], true, false),
        (&[("istio.io/rev", "meshd-1")], &[], false, true),
        (&[("istio.io/rev", "default")], &[], true, false),
        (&[("istio.io/rev", "1-22-istiod")], &[], false, false),
        // istio-injection wins over istio.io/rev, as in Istio.
        (
            &[("istio-injection", "enabled"), ("istio.io/rev", "meshd-1")],
            &[],
            true,
            false,
        ),
        (
            &[("istio-injection", "disabled")],
            &[("istio.io/rev", "meshd-1")],
            false,
            false,
        ),
        (&[], &[("istio.io/rev", "meshd-1")], false, true),
        (&[], &[("sidecar.istio.io/inject", "true")], true, false),
        (
            &[],
            &[
                ("sidecar.istio.io/inject", "true"),
                ("istio.io/rev", "meshd-1"),
            ],
            false,
            true,
        ),
        (
            &[("istio.io/rev", "meshd-1")],
            &[("sidecar.istio.io/inject", "false")],
            false,
            false,
        ),
        (&[], &[], false, false),
    ];
    for (ns_labels, pod_labels, by_default, by_canary) in cases {
        let ns = labels(ns_labels);
        let pod = pod_with(pod_labels);
        for (cfg, want) in [(&default_rev, by_default), (&canary, by_canary)] {
            let resp = inject(&review(&pod), cfg, &|_| Some(ns.clone()));
            assert!(resp.allowed);
            assert_eq!(
                resp.patch.is_some(),
                want,
                "ns {ns_labels:?} pod {pod_labels:?} revision {}: {}",
                cfg.revision,
                resp.outcome()
            );
        }
    }
    // The status annotation records the revision that injected the pod.
    let resp = inject(
        &review(&pod_with(&[("istio.io/rev", "meshd-1")])),
        &canary,
        &|_| Some(Labels::new()),
    );
    let ops = resp.patch_ops().unwrap();
    let status = ops
        .iter()
        .find_map(|op| {
            op["value"]["sidecar.istio.io/status"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap();
    assert!(status.contains("\"revision\":\"meshd-1\""), "{status}");
}
