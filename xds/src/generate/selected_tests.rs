//! DestinationRule `workloadSelector`: the rule reaches exactly the proxies it selects in its own
//! namespace (clusters, subsets, route hash policy, TCP idle timeout; sidecars and gateways),
//! ahead of the rule they would see otherwise, and every other proxy keeps the shared layers.

use crate::generate::MeshSnapshot;
use crate::generate::test_fixture::{self as fixture, workload_proxy_as};
use crate::json::any_to_json;
use crate::proxy::NodeType;
use crate::resource::{CLUSTER, LISTENER, ROUTE};
use serde_json::Value;
use std::sync::Arc;

const WEB: &str = "outbound|80||web.b.svc.cluster.local";
const WEB_V2: &str = "outbound|80|v2|web.b.svc.cluster.local";

fn mesh(extra: &str) -> String {
    let mut yaml = fixture::service_with(
        "web",
        "b",
        30,
        fixture::HTTP_80,
        "[{address: 10.44.0.30, labels: {version: v1}}, {address: 10.44.0.31, labels: {version: v2}}]",
        "",
    ) + &fixture::service("db", "b", 40, fixture::TCP_5432)
        + r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: b}
spec:
  host: web.b.svc.cluster.local
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 3}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web-for-special, namespace: a}
spec:
  host: web.b.svc.cluster.local
  workloadSelector: {matchLabels: {app: special}}
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 9}}
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
  subsets: [{name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db-for-special, namespace: a}
spec:
  host: db.b.svc.cluster.local
  workloadSelector: {matchLabels: {app: special}}
  trafficPolicy: {connectionPool: {tcp: {idleTimeout: 7s}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: b}
spec:
  hosts: [web.b.svc.cluster.local]
  http: [{route: [{destination: {host: web.b.svc.cluster.local, subset: v2}}]}]
"#;
    let clients = [
        ("special", "a", "special"),
        ("special-twin", "a", "special"),
        ("plain", "a", "plain"),
        ("special", "c", "special"),
        ("plain", "c", "plain"),
    ];
    for (i, (name, ns, app)) in clients.into_iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{address: 10.44.1.{i}, labels: {{app: {app}}}, serviceAccount: {name}}}\n"
        ));
    }
    yaml.push_str(extra);
    yaml
}

/// What one proxy makes of web and db: web's maxConnections and lb policy, whether it has the
/// v2 subset's cluster, the route's hash policy, db's TCP idle timeout.
#[derive(Debug, PartialEq)]
struct View {
    max_connections: Value,
    lb_policy: Value,
    subset_cluster: bool,
    hash_policy: Value,
    db_idle_timeout: Value,
}

fn view(snap: &MeshSnapshot, name: &str, ns: &str) -> View {
    let out = snap.generate(&workload_proxy_as(snap, name, ns, NodeType::Sidecar));
    let web = any_to_json(&out[CLUSTER].get(WEB).unwrap().any());
    let routes = any_to_json(&out[ROUTE].get("80").unwrap().any());
    let vhost = routes["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web.b.svc.cluster.local:80")
        .unwrap()
        .clone();
    let db = any_to_json(&out[LISTENER].get("0.0.0.0_5432").unwrap().any());
    let tcp_proxy = db["filter_chains"][0]["filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "envoy.filters.network.tcp_proxy")
        .unwrap()["typed_config"]
        .clone();
    View {
        max_connections: web["circuit_breakers"]["thresholds"][0]["max_connections"].clone(),
        lb_policy: web["lb_policy"].clone(),
        subset_cluster: out[CLUSTER].contains(WEB_V2),
        hash_policy: vhost["routes"][0]["route"]["hash_policy"].clone(),
        db_idle_timeout: tcp_proxy["idle_timeout"].clone(),
    }
}

#[test]
fn a_selector_rule_reaches_only_the_proxies_it_selects_in_its_namespace() {
    let snap = fixture::snapshot(&mesh(""));
    let selected = view(&snap, "special", "a");
    assert_eq!(selected.max_connections, 9);
    assert_eq!(selected.lb_policy, "RING_HASH");
    assert!(selected.subset_cluster, "the selector rule's subset");
    assert_eq!(
        selected.hash_policy[0]["header"]["header_name"], "x-user",
        "{selected:?}"
    );
    assert_eq!(selected.db_idle_timeout, "7s");

    // Same namespace, not selected: the rule it would see anyway (the service's namespace's).
    let plain = view(&snap, "plain", "a");
    assert_eq!(plain.max_connections, 3);
    assert_ne!(plain.lb_policy, "RING_HASH");
    assert!(!plain.subset_cluster);
    assert_eq!(plain.hash_policy, Value::Null);
    assert_ne!(plain.db_idle_timeout, "7s");

    // Selected labels, another namespace: selectors do not cross namespaces.
    assert_eq!(view(&snap, "special", "c"), plain);
    assert_eq!(view(&snap, "plain", "c"), plain);
}

#[test]
fn proxies_no_selector_rule_selects_keep_sharing_the_mesh_wide_layers() {
    let snap = fixture::snapshot(&mesh(""));
    let clusters = |name: &str, ns: &str| {
        snap.generate(&workload_proxy_as(&snap, name, ns, NodeType::Sidecar))[CLUSTER].layers()[0]
            .clone()
    };
    for (name, ns) in [("plain", "a"), ("plain", "c"), ("special", "c")] {
        assert!(
            Arc::ptr_eq(&clusters(name, ns), &snap.clusters),
            "{ns}/{name} got a layer of its own"
        );
    }
    // The selected proxies share one layer of their own.
    let special = clusters("special", "a");
    assert!(!Arc::ptr_eq(&special, &snap.clusters));
    assert!(Arc::ptr_eq(&special, &clusters("special-twin", "a")));
    // A rebuild keeps the selected scope's layer (it did not change).
    let again = snap.rebuild(2, snap.index.config.clone(), snap.opts.clone());
    let rebuilt = again.generate(&workload_proxy_as(
        &again,
        "special",
        "a",
        NodeType::Sidecar,
    ))[CLUSTER]
        .layers()[0]
        .clone();
    assert!(Arc::ptr_eq(&rebuilt, &special));
}

/// Of two rules selecting one proxy for a host, the first by name; `exportTo` neither hides a
/// selector rule from its own namespace nor carries it to another (Istio makes it private).
#[test]
fn the_first_selecting_rule_by_name_wins() {
    let extra = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: aa-web, namespace: a}
spec:
  host: web.b.svc.cluster.local
  workloadSelector: {matchLabels: {app: special}}
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 11}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: private, namespace: c}
spec:
  host: web.b.svc.cluster.local
  exportTo: [a]
  workloadSelector: {matchLabels: {app: special}}
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 12}}}
"#;
    let snap = fixture::snapshot(&mesh(extra));
    assert_eq!(view(&snap, "special", "a").max_connections, 11);
    assert_eq!(view(&snap, "plain", "a").max_connections, 3);
    assert_eq!(view(&snap, "special", "c").max_connections, 12);
    assert_eq!(view(&snap, "plain", "c").max_connections, 3);
}

/// Gateways are workloads too; a rule in the root namespace selects only proxies there (Istio:
/// selectors do not cross namespace boundaries, the root namespace's included).
#[test]
fn gateways_and_the_root_namespace() {
    let extra = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web-for-gw, namespace: istio-system}
spec:
  host: web.b.svc.cluster.local
  workloadSelector: {matchLabels: {istio: egressgateway}}
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 21}}}
  subsets: [{name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: egress, namespace: istio-system}
spec: {address: 10.44.2.1, labels: {istio: egressgateway}, serviceAccount: egress}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: egress, namespace: a}
spec: {address: 10.44.2.2, labels: {istio: egressgateway}, serviceAccount: egress}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: gw-special, namespace: a}
spec: {address: 10.44.2.3, labels: {app: special}, serviceAccount: gw}
"#;
    let snap = fixture::snapshot(&mesh(extra));
    let max = |name: &str, ns: &str, t: NodeType| {
        let out = snap.generate(&workload_proxy_as(&snap, name, ns, t));
        let web = any_to_json(&out[CLUSTER].get(WEB).unwrap().any());
        (
            web["circuit_breakers"]["thresholds"][0]["max_connections"].clone(),
            out[CLUSTER].contains(WEB_V2),
        )
    };
    assert_eq!(
        max("egress", "istio-system", NodeType::Router),
        (21.into(), true)
    );
    assert_eq!(max("egress", "a", NodeType::Router), (3.into(), false));
    assert_eq!(
        max("gw-special", "a", NodeType::Router),
        (9.into(), true),
        "a gateway the namespace's rule selects"
    );
    assert_eq!(
        max("egress", "a", NodeType::Sidecar),
        (3.into(), false),
        "the root namespace's selector rule stays in the root namespace"
    );
    // A gateway nothing selects takes the mesh-wide layer itself.
    let out = snap.generate(&workload_proxy_as(&snap, "egress", "a", NodeType::Router));
    assert!(Arc::ptr_eq(&out[CLUSTER].layers()[0], &snap.clusters));
}
