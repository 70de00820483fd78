//! DestinationRule fragments proven with stock Envoy: two rules for one service in one
//! namespace act as one (Istio's merge), so a VirtualService routes to subsets of either, and a
//! subset the second fragment repeats keeps the first fragment's definition.

use crate::traffic_support;

use std::collections::BTreeSet;

use meshd_e2e::*;
use traffic_support::*;

const PORT: u16 = 8080;

#[test]
fn fragments_merge_subsets_for_routing() {
    let host = fqdn("reviews");
    let rules = format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews-stable, namespace: {NS}}}
spec:
  host: {host}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews-trial, namespace: {NS}}}
spec:
  host: reviews
  subsets:
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
  - {{name: v1, labels: {{version: v3}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {NS}}}
spec:
  hosts: [{host}]
  http:
  - match: [{{headers: {{x-version: {{exact: v2}}}}}}]
    route: [{{destination: {{host: {host}, subset: v2}}}}]
  - match: [{{headers: {{x-version: {{exact: v3}}}}}}]
    route: [{{destination: {{host: {host}, subset: v3}}}}]
  - route: [{{destination: {{host: {host}, subset: v1}}}}]
"#
    );
    let yaml = [
        service("client", vip(10), PORT),
        workload("client", "client", ip(10), &[]),
        service("reviews", vip(20), PORT),
        workload("reviews-v1", "reviews", ip(20), &[("version", "v1")]),
        workload("reviews-v2", "reviews", ip(21), &[("version", "v2")]),
        workload("reviews-v3", "reviews", ip(22), &[("version", "v3")]),
        rules,
    ]
    .concat();
    let mesh = mesh("drmerge", &yaml, &[(host.clone(), vip(20))]);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    for (name, at) in [("reviews-v1", 20), ("reviews-v2", 21), ("reviews-v3", 22)] {
        mesh.add_sidecar_pod(&format!("{name}.{NS}"), ip(at), PORT)
            .unwrap();
    }
    let url = format!("http://{host}:{PORT}/");
    let answered = |headers: &[(&str, &str)]| -> BTreeSet<String> {
        let answers = burst(&client, &url, headers, 30, 4);
        for a in &answers {
            assert_eq!(a.status, 200, "{headers:?}: {a:?}");
        }
        answers.iter().map(Answer::service).collect()
    };

    // Subsets of the second fragment: each header reaches its version.
    assert_eq!(
        answered(&[("x-version", "v2")]),
        ["reviews-v2".to_string()].into()
    );
    assert_eq!(
        answered(&[("x-version", "v3")]),
        ["reviews-v3".to_string()].into()
    );
    // v1 is the first fragment's (version v1); the second's redefinition (version v3) is
    // ignored, as in Istio.
    assert_eq!(answered(&[]), ["reviews-v1".to_string()].into());

    // The client's Envoy has one cluster per merged subset.
    let dump = client.envoy_config_dump().unwrap();
    let clusters = dump_clusters(&dump);
    for subset in ["v1", "v2", "v3"] {
        let name = format!("outbound|{PORT}|{subset}|{host}");
        assert!(
            clusters.contains_key(&name),
            "{name} missing: {:?}",
            clusters.keys()
        );
    }
}
