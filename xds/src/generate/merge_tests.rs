//! DestinationRule fragments as Istio merges them: one host, one namespace, same `exportTo`, no
//! `workloadSelector`. Their subsets all become clusters, the first top-level trafficPolicy
//! applies whole; rules of other namespaces, other visibilities or with a selector stay apart.

use crate::generate::{GenOptions, MeshSnapshot};
use crate::json::any_to_json;
use crate::proxy::{Identity, NodeType, Proxy};
use crate::resource::{CLUSTER, ENDPOINT};
use meshd_model::{MeshConfig, parse_file};
use serde_json::Value;
use std::sync::Arc;

const SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: b}
spec:
  hosts: [web.b.svc.cluster.local]
  addresses: [10.96.0.30]
  ports: [{number: 80, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - {address: 10.44.0.30, labels: {version: v1}}
  - {address: 10.44.0.31, labels: {version: v2}}
  - {address: 10.44.0.32, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: special, namespace: a}
spec: {address: 10.44.1.1, labels: {app: special}, serviceAccount: special}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: plain, namespace: a}
spec: {address: 10.44.1.2, labels: {app: plain}, serviceAccount: plain}
"#;

fn rule(ns: &str, name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: web.b.svc.cluster.local\n{body}\n"
    )
}

fn snapshot(rules: &[String]) -> MeshSnapshot {
    let yaml = format!("{SERVICE}{}", rules.concat());
    let file = parse_file("mesh.yaml", &yaml).unwrap();
    assert!(file.rejected.is_empty(), "{:?}", file.rejected);
    let config = MeshConfig::assemble([&file]);
    assert!(config.rejected.is_empty(), "{:?}", config.rejected);
    MeshSnapshot::build(1, Arc::new(config), Arc::new(GenOptions::default()))
}

fn sidecar(ns: &str, workload: &str) -> Proxy {
    Proxy {
        metadata: Default::default(),
        id: format!("sidecar~10.44.0.9~{workload}.{ns}~{ns}.svc.cluster.local"),
        node_type: NodeType::Sidecar,
        ip: None,
        identity: Identity {
            workload: workload.into(),
            namespace: ns.into(),
            service_account: workload.into(),
            trust_domain: "cluster.local".into(),
        },
    }
}

/// The proxy's clusters of web, by the name's part between the port and the host (the subset,
/// empty for the service itself), each with its maxConnections.
fn web_clusters(snap: &MeshSnapshot, proxy: &Proxy) -> Vec<(String, Value)> {
    let proxy = match snap
        .index
        .workload(&proxy.identity.workload, &proxy.identity.namespace)
    {
        Some(w) => Proxy::for_workload(w, "cluster.local"),
        None => proxy.clone(),
    };
    let out = snap.generate(&proxy);
    let mut view: Vec<(String, Value)> = out[CLUSTER]
        .iter()
        .filter_map(|r| {
            let subset = r
                .name
                .strip_prefix("outbound|80|")?
                .strip_suffix("|web.b.svc.cluster.local")?;
            let c = any_to_json(&r.any());
            let max = c["circuit_breakers"]["thresholds"][0]["max_connections"].clone();
            Some((subset.to_string(), max))
        })
        .collect();
    view.sort_by(|a, b| a.0.cmp(&b.0));
    view
}

fn subsets(view: &[(String, Value)]) -> Vec<&str> {
    view.iter().map(|(s, _)| s.as_str()).collect()
}

#[test]
fn fragments_give_every_subset_a_cluster_and_the_first_policy_whole() {
    let snap = snapshot(&[
        rule(
            "b",
            "web-1",
            "  subsets: [{name: v1, labels: {version: v1}}]",
        ),
        rule(
            "b",
            "web-2",
            "  trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}\n  subsets: [{name: v2, labels: {version: v2}}, {name: v1, labels: {version: v3}}]",
        ),
        rule(
            "b",
            "web-3",
            "  trafficPolicy: {connectionPool: {tcp: {maxConnections: 9}}, loadBalancer: {simple: RANDOM}}",
        ),
    ]);
    let view = web_clusters(&snap, &sidecar("c", "client"));
    assert_eq!(subsets(&view), ["", "v1", "v2"]);
    // web-2's policy, whole: web-3's loadBalancer is not taken field by field.
    assert!(view.iter().all(|(_, max)| *max == 7), "{view:?}");
    let out = snap.generate(&sidecar("c", "client"));
    let v1 = any_to_json(
        &out[CLUSTER]
            .get("outbound|80|v1|web.b.svc.cluster.local")
            .unwrap()
            .any(),
    );
    assert_ne!(v1["lb_policy"], "RANDOM");
    // v1 is web-1's: its endpoints are the version v1 ones, not web-2's duplicate.
    let v1_endpoints = out[ENDPOINT]
        .get("outbound|80|v1|web.b.svc.cluster.local")
        .unwrap();
    let text = any_to_json(&v1_endpoints.any()).to_string();
    assert!(
        text.contains("10.44.0.30") && !text.contains("10.44.0.32"),
        "{text}"
    );
    // The merged rule is built once: every proxy applies the same one.
    let a = snap
        .index
        .destination_rule_in("web.b.svc.cluster.local", "a")
        .unwrap();
    let b = snap
        .index
        .destination_rule_in("web.b.svc.cluster.local", "x")
        .unwrap();
    assert!(std::ptr::eq(a, b));
}

#[test]
fn rules_of_other_namespaces_are_not_merged() {
    let snap = snapshot(&[
        rule(
            "a",
            "web",
            "  trafficPolicy: {connectionPool: {tcp: {maxConnections: 3}}}\n  subsets: [{name: v3, labels: {version: v3}}]",
        ),
        rule(
            "b",
            "web",
            "  trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}\n  subsets: [{name: v1, labels: {version: v1}}]",
        ),
        rule(
            "b",
            "web-more",
            "  subsets: [{name: v2, labels: {version: v2}}]",
        ),
    ]);
    // The proxy's own namespace first: a's rule alone.
    let in_a = web_clusters(&snap, &sidecar("a", "client"));
    assert_eq!(subsets(&in_a), ["", "v3"]);
    assert!(in_a.iter().all(|(_, max)| *max == 3), "{in_a:?}");
    // Elsewhere the service's namespace: b's fragments merged, nothing of a's.
    let in_c = web_clusters(&snap, &sidecar("c", "client"));
    assert_eq!(subsets(&in_c), ["", "v1", "v2"]);
    assert!(in_c.iter().all(|(_, max)| *max == 7), "{in_c:?}");
}

#[test]
fn rules_with_other_export_to_are_not_merged() {
    let snap = snapshot(&[
        rule(
            "b",
            "web-1",
            "  exportTo: [a]\n  subsets: [{name: v1, labels: {version: v1}}]",
        ),
        rule(
            "b",
            "web-2",
            "  exportTo: [\"*\"]\n  subsets: [{name: v2, labels: {version: v2}}]",
        ),
        rule(
            "b",
            "web-3",
            "  subsets: [{name: v3, labels: {version: v3}}]",
        ),
    ]);
    // web-2 and web-3 are both exported everywhere: merged. web-1 stands alone, and is the
    // first by name in b visible from a.
    assert_eq!(
        subsets(&web_clusters(&snap, &sidecar("a", "client"))),
        ["", "v1"]
    );
    assert_eq!(
        subsets(&web_clusters(&snap, &sidecar("c", "client"))),
        ["", "v2", "v3"]
    );
}

#[test]
fn selector_rules_are_not_merged_with_rules_without_one() {
    let snap = snapshot(&[
        rule("a", "web", "  subsets: [{name: v1, labels: {version: v1}}]"),
        rule(
            "a",
            "web-special",
            "  workloadSelector: {matchLabels: {app: special}}\n  subsets: [{name: v2, labels: {version: v2}}]",
        ),
        rule(
            "a",
            "web-special-more",
            "  workloadSelector: {matchLabels: {app: special}}\n  subsets: [{name: v3, labels: {version: v3}}]",
        ),
    ]);
    // The selected proxy applies the first selecting rule by name, alone.
    assert_eq!(
        subsets(&web_clusters(&snap, &sidecar("a", "special"))),
        ["", "v2"]
    );
    assert_eq!(
        subsets(&web_clusters(&snap, &sidecar("a", "plain"))),
        ["", "v1"]
    );
}

/// Istio looks for a host's rule in the proxy's namespace, the service's and the root
/// namespace, and nowhere else: a rule in a third namespace is the client-side rule of that
/// namespace's proxies only, not a fallback for everyone.
#[test]
fn a_rule_outside_the_lookup_path_applies_to_its_own_namespace_only() {
    let snap = snapshot(&[rule(
        "a",
        "web",
        "  trafficPolicy: {connectionPool: {tcp: {maxConnections: 3}}}\n  subsets: [{name: v3, labels: {version: v3}}]",
    )]);
    assert!(
        snap.index.restricted(),
        "which rule applies depends on the namespace"
    );
    let in_a = web_clusters(&snap, &sidecar("a", "client"));
    assert_eq!(subsets(&in_a), ["", "v3"]);
    assert!(in_a.iter().all(|(_, max)| *max == 3), "{in_a:?}");
    for ns in ["b", "c"] {
        let other = web_clusters(&snap, &sidecar(ns, "client"));
        assert_eq!(subsets(&other), [""], "{ns}");
        assert!(other.iter().all(|(_, max)| *max != 3), "{ns}: {other:?}");
    }
    // In the root namespace the rule is everyone's fallback.
    let snap = snapshot(&[rule(
        "istio-system",
        "web",
        "  subsets: [{name: v3, labels: {version: v3}}]",
    )]);
    assert!(!snap.index.restricted());
    assert_eq!(
        subsets(&web_clusters(&snap, &sidecar("c", "client"))),
        ["", "v3"]
    );
}
