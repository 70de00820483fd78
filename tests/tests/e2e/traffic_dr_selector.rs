//! DestinationRule `workloadSelector` proven with stock Envoy: two clients in one namespace, a
//! rule selecting one of them; only that client's sidecar takes it (its subsets, its connection
//! pool), in requests and in its config_dump, and the other keeps the namespace's rule.

use crate::traffic_support;

use meshd_e2e::*;
use traffic_support::*;

const PORT: u16 = 8080;

#[test]
fn destination_rule_workload_selector() {
    let host = fqdn("backend");
    let rules = format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: {NS}}}
spec:
  host: {host}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend-for-canary, namespace: {NS}}}
spec:
  host: {host}
  workloadSelector:
    matchLabels: {{track: canary}}
  trafficPolicy:
    connectionPool: {{tcp: {{maxConnections: 7}}}}
  subsets:
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend, namespace: {NS}}}
spec:
  hosts: [{host}]
  http:
  - match: [{{uri: {{prefix: /v2/}}}}]
    route: [{{destination: {{host: {host}, subset: v2}}}}]
  - route: [{{destination: {{host: {host}, subset: v1}}}}]
"#
    );
    let yaml = [
        service("client", vip(10), PORT),
        workload("stable", "client", ip(10), &[("track", "stable")]),
        workload("canary", "client", ip(11), &[("track", "canary")]),
        service("backend", vip(20), PORT),
        workload("backend-v1", "backend", ip(20), &[("version", "v1")]),
        workload("backend-v2", "backend", ip(21), &[("version", "v2")]),
        rules,
    ]
    .concat();
    let mesh = mesh("drselector", &yaml, &[(host.clone(), vip(20))]);
    let stable = mesh
        .add_sidecar_pod(&format!("stable.{NS}"), ip(10), PORT)
        .unwrap();
    let canary = mesh
        .add_sidecar_pod(&format!("canary.{NS}"), ip(11), PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("backend-v1.{NS}"), ip(20), PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("backend-v2.{NS}"), ip(21), PORT)
        .unwrap();
    let url = |path: &str| format!("http://{host}:{PORT}{path}");
    let answered_by = |answers: &[Answer]| -> Vec<(u16, String)> {
        let mut seen: Vec<(u16, String)> =
            answers.iter().map(|a| (a.status, a.service())).collect();
        seen.sort();
        seen.dedup();
        seen
    };

    // The selected client routes to the subset only its rule defines: v2, and only v2.
    let got = answered_by(&burst(&canary, &url("/v2/x"), &[], 30, 4));
    assert_eq!(got, [(200, "backend-v2".to_string())]);
    // The other client has no such subset (as under Istio: no cluster, 503)...
    let got = answered_by(&burst(&stable, &url("/v2/x"), &[], 5, 1));
    assert_eq!(got, [(503, String::new())]);
    // ...and keeps the namespace's rule and its v1 subset.
    let got = answered_by(&burst(&stable, &url("/"), &[], 30, 4));
    assert_eq!(got, [(200, "backend-v1".to_string())]);
    // For the selected client the selector rule replaces the namespace's: no v1 subset there.
    let got = answered_by(&burst(&canary, &url("/"), &[], 5, 1));
    assert_eq!(got, [(503, String::new())]);

    // What each Envoy holds.
    let clusters = |pod: &SidecarPod| dump_clusters(&pod.envoy_config_dump().unwrap());
    let max_connections =
        |c: &serde_json::Value| c["circuit_breakers"]["thresholds"][0]["max_connections"].as_u64();
    let plain = format!("outbound|{PORT}||{host}");
    let v1 = format!("outbound|{PORT}|v1|{host}");
    let v2 = format!("outbound|{PORT}|v2|{host}");
    let on_canary = clusters(&canary);
    assert!(on_canary.contains_key(&v2), "{:?}", on_canary.keys());
    assert!(!on_canary.contains_key(&v1), "{:?}", on_canary.keys());
    assert_eq!(max_connections(&on_canary[&plain]), Some(7));
    assert_eq!(max_connections(&on_canary[&v2]), Some(7));
    let on_stable = clusters(&stable);
    assert!(on_stable.contains_key(&v1), "{:?}", on_stable.keys());
    assert!(!on_stable.contains_key(&v2), "{:?}", on_stable.keys());
    assert_ne!(max_connections(&on_stable[&plain]), Some(7));
}
