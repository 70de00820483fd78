//! The graph from known per-edge totals: nodes from the registry, each request counted once
//! (the destination reporter preferred), rates over the window, the mTLS mark.

use super::*;
use crate::telemetry::edges::EdgeTotals;

fn key(reporter: &str, src: &str, dst: &str) -> EdgeKey {
    EdgeKey {
        reporter: reporter.into(),
        source_workload: src.into(),
        source_namespace: "shop".into(),
        service: format!("{dst}.shop.svc.cluster.local"),
        service_name: dst.into(),
        service_namespace: "shop".into(),
        destination_workload: dst.into(),
        destination_namespace: "shop".into(),
    }
}

fn totals(requests: u64, errors: u64, mtls: u64) -> EdgeTotals {
    let mut t = EdgeTotals {
        requests,
        errors,
        mtls,
        ..Default::default()
    };
    t.buckets[3] = requests; // 5..10 ms
    t
}

fn mesh() -> MeshConfig {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.shop.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api, namespace: shop}
spec: {address: 10.0.0.2, labels: {app: api}, serviceAccount: api}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 10.0.0.1, labels: {app: web}, serviceAccount: web}
"#;
    let file = meshd_model::parse_file("mesh.yaml", yaml).expect("valid");
    MeshConfig::assemble(&[file])
}

fn edge<'a>(g: &'a Graph, from: &str, to: &str) -> &'a Edge {
    g.edges
        .iter()
        .find(|e| e.source == from && e.target == to)
        .unwrap_or_else(|| panic!("no edge {from} → {to}: {:#?}", g.edges))
}

#[test]
fn registry_nodes_and_traffic_edges_count_each_request_once() {
    let config = mesh();
    let mut now = Totals::new();
    now.insert(key("source", "web", "api"), totals(12, 0, 0));
    now.insert(key("destination", "web", "api"), totals(10, 2, 10));
    let g = build(&config, &now, None);
    let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
    assert!(ids.contains(&"workload:shop/web"), "{ids:?}");
    assert!(ids.contains(&"workload:shop/api"), "{ids:?}");
    assert!(
        ids.contains(&"service:api.shop.svc.cluster.local"),
        "{ids:?}"
    );
    let calls = edge(
        &g,
        "workload:shop/web",
        "service:api.shop.svc.cluster.local",
    );
    // The destination's count, not both reporters added.
    assert_eq!(calls.requests, 10);
    assert_eq!(calls.reporter, "destination");
    assert_eq!(calls.mtls, "full");
    assert_eq!(calls.error_rate, Some(0.2));
    assert_eq!(calls.rps, None, "no rate before a second sample");
    assert!(calls.p50_ms.is_some_and(|p| (5.0..=10.0).contains(&p)));
    let serves = edge(
        &g,
        "service:api.shop.svc.cluster.local",
        "workload:shop/api",
    );
    assert_eq!(serves.requests, 10);
}

#[test]
fn rates_are_the_difference_over_the_window_and_only_the_source_cannot_tell_mtls() {
    let config = mesh();
    let mut before = Totals::new();
    before.insert(key("source", "web", "api"), totals(4, 0, 0));
    let mut now = Totals::new();
    now.insert(key("source", "web", "api"), totals(24, 0, 0));
    let g = build(&config, &now, Some((10.0, &before)));
    let calls = edge(
        &g,
        "workload:shop/web",
        "service:api.shop.svc.cluster.local",
    );
    assert_eq!(calls.rps, Some(2.0));
    assert_eq!(calls.mtls, "unknown");
    assert_eq!(g.window_seconds, 10.0);
}

#[test]
fn callers_the_registry_does_not_know_still_appear() {
    let config = mesh();
    let mut now = Totals::new();
    let mut k = key("destination", "unknown", "api");
    k.source_namespace = "unknown".into();
    now.insert(k, totals(3, 0, 0));
    let g = build(&config, &now, None);
    let unknown = g
        .nodes
        .iter()
        .find(|n| n.id == "workload:unknown/unknown")
        .expect("the unknown caller is a node");
    assert!(!unknown.registered);
    assert_eq!(
        edge(
            &g,
            "workload:unknown/unknown",
            "service:api.shop.svc.cluster.local"
        )
        .mtls,
        "none"
    );
}

#[test]
fn history_keeps_the_window_and_compares_with_its_oldest_sample() {
    let mut h = History::default();
    let t0 = Instant::now();
    assert!(h.push(t0, Totals::new()).is_none());
    let (secs, _) = h.push(t0 + Duration::from_secs(5), Totals::new()).unwrap();
    assert_eq!(secs, 5.0);
    let (secs, _) = h.push(t0 + RATE_WINDOW * 3, Totals::new()).unwrap();
    // The samples older than the window are gone but one: rates never span more than needed.
    assert!(secs <= RATE_WINDOW.as_secs_f64() * 3.0 - 5.0, "{secs}");
}
