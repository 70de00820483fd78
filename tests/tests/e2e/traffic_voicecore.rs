//! The shipped VoiceCore mesh (`deploy/mesh/voicecore.yaml`) in stock Envoy: the seed's
//! eight-service table as Envoy itself reports it, the ingress gateway's path routing to every
//! service, Sidecar egress scoping, and bad input reported while the rest keeps serving.

use crate::traffic_support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use meshd_e2e::*;
use traffic_support::*;

const VOICECORE: &str = meshd_model::voicecore::MESH_YAML;
const VC: &str = "voicecore-ai";

/// The seed's table, row by row, with the retries and timeouts the shipped VirtualServices set.
struct Row {
    name: &'static str,
    port: u16,
    max_connections: u64,
    max_pending: u64,
    consecutive_errors: u64,
    ejection: &'static str,
    lb: &'static str,
    timeout: &'static str,
    attempts: u64,
    per_try: &'static str,
}

#[rustfmt::skip]
const TABLE: [Row; 8] = [
    Row { name: "gateway", port: 8000, max_connections: 500, max_pending: 250, consecutive_errors: 5, ejection: "30s", lb: "LEAST_REQUEST", timeout: "30s", attempts: 3, per_try: "10s" },
    Row { name: "tenant-service", port: 8001, max_connections: 100, max_pending: 50, consecutive_errors: 5, ejection: "30s", lb: "LEAST_REQUEST", timeout: "30s", attempts: 3, per_try: "10s" },
    Row { name: "call-service", port: 8002, max_connections: 200, max_pending: 100, consecutive_errors: 5, ejection: "30s", lb: "LEAST_REQUEST", timeout: "60s", attempts: 3, per_try: "20s" },
    Row { name: "ai-service", port: 8003, max_connections: 150, max_pending: 75, consecutive_errors: 3, ejection: "60s", lb: "ROUND_ROBIN", timeout: "120s", attempts: 2, per_try: "60s" },
    Row { name: "crm-service", port: 8004, max_connections: 100, max_pending: 50, consecutive_errors: 5, ejection: "30s", lb: "LEAST_REQUEST", timeout: "30s", attempts: 3, per_try: "10s" },
    Row { name: "analytics-service", port: 8005, max_connections: 150, max_pending: 75, consecutive_errors: 5, ejection: "30s", lb: "ROUND_ROBIN", timeout: "60s", attempts: 3, per_try: "20s" },
    Row { name: "integration-service", port: 8006, max_connections: 100, max_pending: 50, consecutive_errors: 5, ejection: "30s", lb: "LEAST_REQUEST", timeout: "45s", attempts: 3, per_try: "15s" },
    Row { name: "billing-service", port: 8007, max_connections: 100, max_pending: 50, consecutive_errors: 5, ejection: "30s", lb: "LEAST_REQUEST", timeout: "30s", attempts: 3, per_try: "10s" },
];

fn host(name: &str) -> String {
    format!("{name}.{VC}.svc.cluster.local")
}

fn pod_ip(i: usize) -> Ipv4Addr {
    ip(10 + i as u8)
}

/// The seed's thresholds, outlier detection and LB policy in one Envoy cluster (config_dump JSON).
fn check_cluster(row: &Row, c: &serde_json::Value) {
    let t = &c["circuit_breakers"]["thresholds"][0];
    assert_eq!(
        t["max_connections"], row.max_connections,
        "{}: {c}",
        row.name
    );
    assert_eq!(
        t["max_pending_requests"], row.max_pending,
        "{}: {c}",
        row.name
    );
    let od = &c["outlier_detection"];
    assert_eq!(
        od["consecutive_5xx"], row.consecutive_errors,
        "{}: {od}",
        row.name
    );
    assert_eq!(od["base_ejection_time"], row.ejection, "{}: {od}", row.name);
    assert_eq!(od["interval"], "10s", "{}: {od}", row.name);
    assert_eq!(od["max_ejection_percent"], 50, "{}: {od}", row.name);
    // ROUND_ROBIN is the enum's zero value: Envoy leaves it out of the dump.
    let lb = c["lb_policy"].as_str().unwrap_or("ROUND_ROBIN");
    assert_eq!(lb, row.lb, "{}: {c}", row.name);
    assert_eq!(c["connect_timeout"], "5s", "{}", row.name);
}

/// The seed's timeout and retries on the service's route (config_dump JSON of route `PORT`).
fn check_route(row: &Row, rc: &serde_json::Value) {
    let domain = format!("{}:{}", host(row.name), row.port);
    let vh = rc["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == domain)
        .unwrap_or_else(|| panic!("no virtual host {domain} in {rc}"));
    let r = &vh["routes"][0]["route"];
    assert_eq!(r["timeout"], row.timeout, "{}: {r}", row.name);
    let rp = &r["retry_policy"];
    assert_eq!(rp["num_retries"], row.attempts, "{}: {rp}", row.name);
    assert_eq!(rp["per_try_timeout"], row.per_try, "{}: {rp}", row.name);
    assert_eq!(
        rp["retry_on"], "5xx,reset,connect-failure",
        "{}: {rp}",
        row.name
    );
    assert_eq!(
        r["cluster"],
        format!("outbound|{}||{}", row.port, host(row.name)),
        "{}",
        row.name
    );
}

#[test]
fn voicecore_table_ingress_scoping_and_bad_input() {
    let mut hosts: Vec<(String, Ipv4Addr)> = Vec::new();
    for (i, row) in TABLE.iter().enumerate() {
        hosts.push((host(row.name), Ipv4Addr::new(10, 96, 0, 10 + i as u8)));
    }
    let mesh = mesh_with(
        MeshOptions::named("voicecore").config("voicecore.yaml", VOICECORE),
        &hosts,
    );
    let mut pods = BTreeMap::new();
    for (i, row) in TABLE.iter().enumerate() {
        let pod = mesh
            .add_sidecar_pod(&format!("{}-v1.{VC}", row.name), pod_ip(i), row.port)
            .unwrap();
        pods.insert(row.name, pod);
    }
    let ingress = mesh
        .add_sidecar_pod_with(
            "ingressgateway.istio-system",
            ip(2),
            8080,
            gateway_options(),
        )
        .unwrap();
    let outside = mesh.add_plain_pod("outside", ip(100)).unwrap();

    // 1. Envoy's own config_dump (here: the gateway service's sidecar) shows the seed's table.
    let dump = pods["gateway"].envoy_config_dump().unwrap();
    let clusters = dump_clusters(&dump);
    let routes = dump_routes(&dump);
    for row in &TABLE {
        let name = format!("outbound|{}||{}", row.port, host(row.name));
        let c = clusters
            .get(&name)
            .unwrap_or_else(|| panic!("no cluster {name}"));
        check_cluster(row, c);
        let subset = format!("outbound|{}|v1|{}", row.port, host(row.name));
        check_cluster(row, &clusters[&subset]);
        let rc = routes
            .get(&row.port.to_string())
            .unwrap_or_else(|| panic!("no route config {}: {:?}", row.port, routes.keys()));
        check_route(row, rc);
    }

    // 2. Mesh traffic: every service reached from the gateway service's sidecar over mTLS.
    for row in &TABLE {
        let a = get(
            &pods["gateway"],
            &format!("http://{}:{}/from-gateway", host(row.name), row.port),
        );
        assert_eq!(a.status, 200, "{}: {a:?}", row.name);
        assert_eq!(a.service(), format!("{}-v1", row.name));
        assert_eq!(
            a.json()["caller"],
            format!("spiffe://cluster.local/ns/{VC}/sa/gateway"),
            "{}",
            row.name
        );
    }

    // 3. The ingress gateway routes each path prefix to its service (prefix rewritten to /).
    for row in &TABLE {
        let a = get(
            &outside,
            &format!("http://{}:8080/{}/orders/42", ingress.ip(), row.name),
        );
        assert_eq!(a.status, 200, "{}: {a:?}", row.name);
        assert_eq!(a.service(), format!("{}-v1", row.name));
        assert_eq!(a.json()["path"], "/orders/42");
        assert_eq!(
            a.json()["caller"],
            "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway"
        );
    }
    let a = get(&outside, &format!("http://{}:8080/nowhere", ingress.ip()));
    assert_eq!(a.status, 404, "{a:?}");

    // 4. Sidecar scoping: crm-service may only call billing-service.
    mesh.write_config(
        "sidecar.yaml",
        &format!(
            r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: crm-only-billing, namespace: {VC}}}
spec:
  workloadSelector:
    labels: {{app: crm-service}}
  egress:
  - hosts: ["./{billing}"]
"#,
            billing = host("billing-service")
        ),
    )
    .unwrap();
    let crm = &pods["crm-service"];
    let outbound = |pod: &SidecarPod| -> Vec<String> {
        dump_clusters(&pod.envoy_config_dump().unwrap())
            .into_keys()
            .filter(|n| n.starts_with("outbound|"))
            .collect()
    };
    let mut want = vec![
        format!("outbound|8007||{}", host("billing-service")),
        format!("outbound|8007|v1|{}", host("billing-service")),
    ];
    want.sort();
    assert!(
        wait_until(Duration::from_secs(10), || outbound(crm) == want),
        "crm's clusters: {:?}",
        outbound(crm)
    );
    let mut listeners = dump_active_listeners(&crm.envoy_config_dump().unwrap());
    listeners.sort();
    assert_eq!(
        listeners,
        vec!["0.0.0.0_8007", "virtualInbound", "virtualOutbound"],
        "crm's listeners"
    );
    let a = get(crm, &format!("http://{}:8007/", host("billing-service")));
    assert_eq!(a.status, 200, "{a:?}");
    // Others keep their full view.
    assert_eq!(outbound(&pods["tenant-service"]).len(), 16);

    // 5. Bad input: a route to a missing subset and an invalid regex are rejected with their
    // reasons; the rest keeps serving.
    mesh.write_config(
        "bad.yaml",
        &format!(
            r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tenant-canary, namespace: {VC}}}
spec:
  hosts: [{tenant}]
  http:
  - route:
    - destination: {{host: {tenant}, subset: v9}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: billing-regex, namespace: {VC}}}
spec:
  hosts: [{billing}]
  http:
  - match:
    - uri: {{regex: "/invoices/([0-9+"}}
    route:
    - destination: {{host: {billing}}}
"#,
            tenant = host("tenant-service"),
            billing = host("billing-service"),
        ),
    )
    .unwrap();
    let rejected = || -> Vec<serde_json::Value> {
        mesh.admin_json("/debug/configz").unwrap()["rejected"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(10), || rejected().len() == 2),
        "{:#?}",
        rejected()
    );
    let rejected = rejected();
    let messages: Vec<&str> = rejected
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("bad.yaml:1:") && m.contains("subset `v9`")),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("bad.yaml:") && m.contains("invalid regex")),
        "{messages:#?}"
    );
    let accepted = mesh.admin_json("/debug/configz").unwrap()["accepted"].clone();
    assert!(
        accepted
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "crm-only-billing"),
        "the good change stays in force"
    );
    for row in &TABLE {
        let a = get(
            &outside,
            &format!("http://{}:8080/{}/still", ingress.ip(), row.name),
        );
        assert_eq!(a.status, 200, "{}: {a:?}", row.name);
    }
    let a = get(
        &pods["gateway"],
        &format!("http://{}:8001/still", host("tenant-service")),
    );
    assert_eq!(a.status, 200, "{a:?}");
}
