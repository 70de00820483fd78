//! Revisions and coexistence with istiod, offline: the chart's MutatingWebhookConfiguration
//! (`helm template`, for the `default` revision and for `revision=meshd`) is evaluated against
//! namespace and pod labels with Kubernetes' label-selector rules, and must agree with the
//! injector's own check of the same labels. Then the migration in docs/migrating-from-istio.md:
//! namespace `shop` moved to `istio.io/rev=meshd`, `billing` left on `istio-injection=enabled`.

use crate::kube_support;

use meshd_injector::{InjectConfig, Labels, inject};
use serde_json::{Value, json};
use std::path::Path;

fn webhooks(revision: &str) -> Vec<Value> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/meshd");
    let out = std::process::Command::new(kube_support::helm())
        .args(["template", "meshd"])
        .arg(&chart)
        .args([
            "--namespace",
            "meshd-system",
            "--set",
            &format!("revision={revision}"),
            "--show-only",
            "templates/webhook.yaml",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(config["kind"], "MutatingWebhookConfiguration");
    config["webhooks"].as_array().unwrap().clone()
}

/// `metav1.LabelSelector` matchExpressions semantics.
fn matches(selector: &Value, labels: &Labels) -> bool {
    selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap())
                .collect();
            let value = labels.get(key).map(String::as_str);
            match e["operator"].as_str().unwrap() {
                "In" => value.is_some_and(|v| values.contains(&v)),
                "NotIn" => value.is_none_or(|v| !values.contains(&v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                op => panic!("operator {op}"),
            }
        })
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether the API server would call this webhook configuration for the pod.
fn selected(webhooks: &[Value], ns: &Labels, pod: &Labels) -> bool {
    webhooks
        .iter()
        .any(|w| matches(&w["namespaceSelector"], ns) && matches(&w["objectSelector"], pod))
}

/// Whether the injector, once called, injects.
fn injects(revision: &str, ns: &Labels, pod_labels: &Labels) -> bool {
    let cfg = InjectConfig {
        revision: revision.into(),
        ..InjectConfig::default()
    };
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": pod_labels},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]}});
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "namespace": "shop", "operation": "CREATE", "object": pod}});
    let ns = ns.clone();
    let resp = inject(&review, &cfg, &move |_| Some(ns.clone()));
    assert!(resp.allowed);
    resp.patch.is_some()
}

#[test]
fn the_chart_selects_what_the_injector_injects_per_revision() {
    let namespaces: Vec<Labels> = vec![
        labels(&[]),
        labels(&[("istio-injection", "enabled")]),
        labels(&[("istio-injection", "disabled")]),
        labels(&[("istio.io/rev", "meshd")]),
        labels(&[("istio.io/rev", "default")]),
        labels(&[("istio.io/rev", "1-24")]),
        labels(&[("istio-injection", "enabled"), ("istio.io/rev", "meshd")]),
    ];
    let pods: Vec<Labels> = vec![
        labels(&[]),
        labels(&[("sidecar.istio.io/inject", "true")]),
        labels(&[("sidecar.istio.io/inject", "false")]),
        labels(&[("istio.io/rev", "meshd")]),
        labels(&[("istio.io/rev", "1-24")]),
    ];
    for revision in ["default", "meshd"] {
        let hooks = webhooks(revision);
        let mut selected_any = 0;
        for ns in &namespaces {
            for pod in &pods {
                let by_chart = selected(&hooks, ns, pod);
                let by_injector = injects(revision, ns, pod);
                assert_eq!(
                    by_chart, by_injector,
                    "revision {revision}, namespace {ns:?}, pod {pod:?}: chart selects {by_chart}, injector injects {by_injector}"
                );
                selected_any += usize::from(by_chart);
            }
        }
        assert!(
            selected_any >= 4,
            "revision {revision} selects almost nothing"
        );
    }
}

#[test]
fn one_namespace_moves_to_meshd_while_another_stays_on_istiod() {
    // istiod stands for the default revision's selection; meshd runs as revision `meshd`.
    let istiod_style = webhooks("default");
    let meshd = webhooks("meshd");
    let shop = labels(&[("istio.io/rev", "meshd")]);
    let billing = labels(&[("istio-injection", "enabled")]);
    let pod = labels(&[("app", "web")]);
    assert!(selected(&meshd, &shop, &pod) && injects("meshd", &shop, &pod));
    assert!(!selected(&istiod_style, &shop, &pod));
    assert!(!selected(&meshd, &billing, &pod) && !injects("meshd", &billing, &pod));
    assert!(selected(&istiod_style, &billing, &pod));
    // Forgetting to drop istio-injection keeps the namespace on istiod (it wins).
    let half_moved = labels(&[("istio-injection", "enabled"), ("istio.io/rev", "meshd")]);
    assert!(!selected(&meshd, &half_moved, &pod));
    assert!(selected(&istiod_style, &half_moved, &pod));
}
