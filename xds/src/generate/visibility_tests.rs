//! What a sidecar sees: `exportTo` on ServiceEntry, VirtualService and DestinationRule (by its
//! namespace, with Istio's choice of DestinationRule: own namespace, then the service's, then
//! the root namespace, among those exported to it), and Sidecar egress listeners per port.

use crate::generate::test_fixture::{self as fixture, sidecar};
use crate::generate::{GenOptions, MeshSnapshot};
use crate::json::any_to_json;
use crate::proxy::{NodeType, Proxy};
use crate::resource::{CLUSTER, ROUTE};
use meshd_model::{MeshConfig, parse_file};
use serde_json::Value;
use std::sync::Arc;

/// Two services, `web.b` seen differently from `a` and `b`, and `api.a` kept to `a`.
fn mesh() -> String {
    fixture::service_with(
        "web",
        "b",
        30,
        fixture::HTTP_80,
        "[{address: 10.44.0.30, labels: {version: v1}}]",
        "",
    ) + &fixture::service_with(
        "api",
        "a",
        31,
        fixture::HTTP_80,
        "[{address: 10.44.0.31}]",
        r#"  exportTo: ["."]
"#,
    ) + r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: b}
spec:
  host: web.b.svc.cluster.local
  exportTo: ["."]
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web-from-a, namespace: a}
spec:
  host: web.b.svc.cluster.local
  exportTo: ["."]
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 3}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: b}
spec:
  hosts: [web.b.svc.cluster.local]
  exportTo: ["."]
  http: [{timeout: 5s, route: [{destination: {host: web.b.svc.cluster.local, subset: v1}}]}]
---
"#
}

/// The TCP proxy filter's config in `listener`'s chain `chain` (the first when `None`), as the
/// sidecar in `ns` receives it.
fn tcp_proxy(snap: &MeshSnapshot, ns: &str, listener: &str, chain: Option<&str>) -> Value {
    let out = snap.generate(&sidecar("client", ns));
    let l = any_to_json(&out[crate::resource::LISTENER].get(listener).unwrap().any());
    let chains = l["filter_chains"].as_array().unwrap();
    let c = match chain {
        Some(name) => chains.iter().find(|c| c["name"] == name).unwrap(),
        None => &chains[0],
    };
    c["filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "envoy.filters.network.tcp_proxy")
        .unwrap()["typed_config"]
        .clone()
}

/// (cluster names, maxConnections of web's cluster, web's route timeout) as `ns` sees them.
fn view(snap: &MeshSnapshot, ns: &str) -> (Vec<String>, Value, Value) {
    let out = snap.generate(&sidecar("client", ns));
    let clusters: Vec<String> = out[CLUSTER]
        .iter()
        .map(|r| r.name.clone())
        .filter(|n| n.starts_with("outbound|"))
        .collect();
    let web = any_to_json(
        &out[CLUSTER]
            .get("outbound|80||web.b.svc.cluster.local")
            .unwrap()
            .any(),
    );
    let max = web["circuit_breakers"]["thresholds"][0]["max_connections"].clone();
    let routes = any_to_json(&out[ROUTE].get("80").unwrap().any());
    let vhost = routes["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web.b.svc.cluster.local:80")
        .unwrap()
        .clone();
    (
        clusters,
        max,
        vhost["routes"][0]["route"]["timeout"].clone(),
    )
}

#[test]
fn export_to_decides_what_each_namespace_sees() {
    let snap = fixture::snapshot(&mesh());
    // In b: its own rule (7, subset v1) and its own route (5 s, to v1).
    let (clusters, max, timeout) = view(&snap, "b");
    assert!(
        clusters.contains(&"outbound|80|v1|web.b.svc.cluster.local".to_string()),
        "{clusters:?}"
    );
    assert!(
        !clusters.iter().any(|c| c.contains("api.a")),
        "api is a's alone: {clusters:?}"
    );
    assert_eq!(max, 7);
    assert_eq!(timeout, "5s");
    // In a: a's own rule for web (3, no subsets), b's route is not exported here; api is.
    let (clusters, max, timeout) = view(&snap, "a");
    assert!(clusters.iter().any(|c| c.contains("api.a")), "{clusters:?}");
    assert!(!clusters.iter().any(|c| c.contains("|v1|")), "{clusters:?}");
    assert_eq!(max, 3);
    assert_ne!(timeout, "5s");
    // Elsewhere: no rule, no route, no api.
    let (clusters, max, timeout) = view(&snap, "c");
    assert!(
        !clusters
            .iter()
            .any(|c| c.contains("api.a") || c.contains("|v1|")),
        "{clusters:?}"
    );
    assert_ne!(max, 7);
    assert_ne!(max, 3);
    assert_ne!(timeout, "5s");
}

#[test]
fn bad_export_to_is_reported() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x, namespace: n}\nspec:\n  hosts: [x]\n  exportTo: [\"~\", \".\"]\n  http: [{route: [{destination: {host: x}}]}]\n";
    let file = parse_file("x.yaml", yaml).unwrap();
    assert_eq!(file.rejected.len(), 1);
    assert!(
        file.rejected[0].message.contains("`~`"),
        "{:?}",
        file.rejected
    );
    let yaml = yaml.replace("[\"~\", \".\"]", "[\"Not_A_Namespace\"]");
    let file = parse_file("x.yaml", &yaml).unwrap();
    assert!(
        file.rejected[0].message.contains("Not_A_Namespace"),
        "{:?}",
        file.rejected
    );
}

#[test]
fn tcp_idle_timeout_reaches_the_tcp_proxy_as_each_namespace_sees_the_rule() {
    let yaml = fixture::service("db", "b", 40, fixture::TCP_5432)
        + r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: b}
spec:
  host: db.b.svc.cluster.local
  trafficPolicy: {connectionPool: {tcp: {idleTimeout: 90s}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db-from-a, namespace: a}
spec:
  host: db.b.svc.cluster.local
  exportTo: ["."]
  trafficPolicy: {connectionPool: {tcp: {idleTimeout: 5m}}}
---
"#;
    let snap = fixture::snapshot(&yaml);
    let idle = |ns: &str| tcp_proxy(&snap, ns, "0.0.0.0_5432", None)["idle_timeout"].clone();
    assert_eq!(idle("b"), "90s");
    assert_eq!(idle("c"), "90s");
    assert_eq!(idle("a"), "300s", "a's own rule");
}

#[test]
fn sidecar_egress_listener_with_a_port_decides_that_port() {
    let yaml = fixture::service(
        "multi",
        "b",
        50,
        "[{number: 80, name: http, protocol: HTTP}, {number: 9000, name: tcp, protocol: TCP}]",
    ) + &fixture::service(
        "other",
        "c",
        51,
        "[{number: 9000, name: tcp, protocol: TCP}]",
    ) + r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: a}
spec:
  egress:
  - port: {number: 9000, protocol: TCP, name: tcp}
    hosts: ["c/*"]
  - hosts: ["b/*"]
---
"#;
    let snap = fixture::snapshot(&yaml);
    let out = snap.generate(&sidecar("client", "a"));
    let clusters: Vec<&str> = out[CLUSTER]
        .iter()
        .map(|r| r.name.as_str())
        .filter(|n| n.starts_with("outbound|"))
        .collect();
    // Port 9000 belongs to the listener naming c/*; every other port to b/*.
    assert_eq!(
        clusters,
        [
            "outbound|80||multi.b.svc.cluster.local",
            "outbound|9000||other.c.svc.cluster.local"
        ]
    );
    let l = any_to_json(
        &out[crate::resource::LISTENER]
            .get("0.0.0.0_9000")
            .unwrap()
            .any(),
    );
    let chains: Vec<&str> = l["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .filter(|n| n.starts_with("outbound|"))
        .collect();
    assert_eq!(chains, ["outbound|9000||other.c.svc.cluster.local"]);
    // Two listeners on one port: reported.
    let dup = yaml.replace(
        "  - hosts: [\"b/*\"]",
        "  - port: {number: 9000, protocol: TCP, name: t2}\n    hosts: [\"b/*\"]",
    );
    let file = parse_file("sc.yaml", &dup).unwrap();
    assert!(
        file.rejected
            .iter()
            .any(|e| e.message.contains("more than one egress listener")),
        "{:?}",
        file.rejected
    );
}

#[test]
fn tcp_routes_match_on_source_labels_and_namespace() {
    let yaml = fixture::service("db", "b", 60, fixture::TCP_5432)
        + &fixture::service("db-replica", "b", 61, fixture::TCP_5432)
        + r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: a}
spec: {address: 10.44.0.70, labels: {app: reports}, serviceAccount: client}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: c}
spec: {address: 10.44.0.71, labels: {app: web}, serviceAccount: client}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: b}
spec:
  hosts: [db.b.svc.cluster.local]
  tcp:
  - match: [{sourceLabels: {app: reports}}]
    route: [{destination: {host: db-replica.b.svc.cluster.local, port: {number: 5432}}}]
  - route: [{destination: {host: db.b.svc.cluster.local, port: {number: 5432}}}]
---
"#;
    let snap = fixture::snapshot(&yaml);
    let target = |ns: &str| {
        let chain = "outbound|5432||db.b.svc.cluster.local";
        tcp_proxy(&snap, ns, "0.0.0.0_5432", Some(chain))["cluster"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        target("a"),
        "outbound|5432||db-replica.b.svc.cluster.local",
        "app=reports"
    );
    assert_eq!(
        target("c"),
        "outbound|5432||db.b.svc.cluster.local",
        "app=web"
    );
}

#[test]
fn a_rebuilt_snapshot_keeps_the_identity_of_what_did_not_change() {
    use crate::resource::{ENDPOINT, LISTENER};
    let before = fixture::snapshot(&mesh());
    let config = |yaml: &str| Arc::new(fixture::mesh(yaml));
    let opts = Arc::new(GenOptions::default());
    for ns in ["a", "b", "c"] {
        before.generate(&sidecar("client", ns));
    }
    let same = before.rebuild(2, config(&mesh()), opts.clone());
    let edited = mesh().replace("maxConnections: 7", "maxConnections: 8");
    let changed = before.rebuild(2, config(&edited), opts);
    for ns in ["a", "b", "c"] {
        let old = before.generate(&sidecar("client", ns));
        let new = same.generate(&sidecar("client", ns));
        for (ty, set) in &old {
            assert!(
                set.same_as(&new[ty]),
                "{ns} {ty}: an unchanged rebuild kept it"
            );
        }
        // Only the namespace whose DestinationRule changed sees new clusters.
        let new = changed.generate(&sidecar("client", ns));
        for ty in [ENDPOINT, LISTENER, ROUTE] {
            assert!(old[ty].same_as(&new[ty]), "{ns} {ty}");
        }
        assert_eq!(old[CLUSTER].same_as(&new[CLUSTER]), ns != "b", "{ns} CDS");
        if ns == "b" {
            let differ: Vec<&str> = new[CLUSTER]
                .iter()
                .filter(|r| !Arc::ptr_eq(r, old[CLUSTER].get(&r.name).unwrap()))
                .map(|r| r.name.as_str())
                .collect();
            assert_eq!(
                differ,
                [
                    "outbound|80|v1|web.b.svc.cluster.local",
                    "outbound|80||web.b.svc.cluster.local"
                ]
            );
        }
    }
}

/// Two builds of the same config encode every resource to the same bytes (prost encodes map
/// fields in hash order, so a map built carelessly would make every rebuild look like a change).
#[test]
fn every_resource_encodes_identically_from_build_to_build() {
    let text = meshd_model::voicecore::MESH_YAML;
    let config = Arc::new(fixture::mesh(text));
    let proxies = workload_proxies(&config);
    assert!(proxies.len() >= 8, "the VoiceCore workloads");
    let opts = Arc::new(GenOptions {
        zipkin_cluster: Some("zipkin".into()),
        ..Default::default()
    });
    let one = MeshSnapshot::build(1, config.clone(), opts.clone());
    let two = MeshSnapshot::build(1, config, opts);
    for p in &proxies {
        let (a, b) = (one.generate(p), two.generate(p));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (ty, set) in &a {
            for r in set.iter() {
                let other = b[ty].get(&r.name).expect("same names");
                assert_eq!(r.version, other.version, "{} {ty} {}", p.id, r.name);
            }
        }
    }
}

fn workload_proxies(config: &MeshConfig) -> Vec<Proxy> {
    config
        .workloads
        .iter()
        .map(|w| Proxy::for_workload(w, "cluster.local"))
        .collect()
}

/// A rebuild keeps the inbound side as built when only outbound config changed, and rebuilds
/// it when a policy that shapes it did.
#[test]
fn inbound_resources_follow_their_inputs_across_rebuilds() {
    use crate::resource::LISTENER;
    let voicecore = meshd_model::voicecore::MESH_YAML;
    let config = |extra: &str| Arc::new(fixture::mesh(&format!("{voicecore}\n---\n{extra}")));
    let opts = Arc::new(GenOptions::default());
    let base = MeshSnapshot::build(1, config(""), opts.clone());
    let proxies: Vec<Proxy> = workload_proxies(&base.index.config)
        .into_iter()
        .filter(|p| p.node_type == NodeType::Sidecar)
        .collect();
    let inbound = |snap: &MeshSnapshot, p: &Proxy| {
        snap.generate(p)[LISTENER]
            .get("virtualInbound")
            .unwrap()
            .clone()
    };
    let before: Vec<_> = proxies.iter().map(|p| inbound(&base, p)).collect();
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: extra, namespace: voicecore-ai}\nspec: {host: billing-service, trafficPolicy: {connectionPool: {tcp: {maxConnections: 9}}}}\n";
    let outbound_only = base.rebuild(2, config(rule), opts.clone());
    for (p, old) in proxies.iter().zip(&before) {
        assert!(Arc::ptr_eq(old, &inbound(&outbound_only, p)), "{}", p.id);
    }
    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all-get, namespace: voicecore-ai}\nspec: {action: DENY, rules: [{to: [{operation: {methods: [GET]}}]}]}\n";
    let policy = outbound_only.rebuild(3, config(&format!("{rule}---\n{deny}")), opts);
    let changed = proxies
        .iter()
        .zip(&before)
        .filter(|(p, old)| old.version != inbound(&policy, p).version)
        .count();
    assert_eq!(
        changed,
        proxies.len(),
        "a namespace-wide DENY reaches every inbound listener"
    );
}

/// Sidecars in different namespaces share a service's encoded virtual host unless it differs
/// for them (short names in the service's own namespace, a `sourceNamespace` match); the route
/// table assembled from shared virtual hosts encodes as prost would encode it whole.
#[test]
fn route_tables_share_virtual_hosts_only_where_namespaces_agree() {
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use prost::Message;
    let service = |name: &str, ns: &str, n: u8| fixture::service(name, ns, n, fixture::HTTP_80);
    let services = service("web", "b", 30) + &service("api", "a", 31);
    let by_namespace = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: b}
spec:
  hosts: [web.b.svc.cluster.local]
  http:
  - match: [{sourceNamespace: a}]
    timeout: 1s
    route: [{destination: {host: web.b.svc.cluster.local}}]
  - timeout: 5s
    route: [{destination: {host: web.b.svc.cluster.local}}]
---
"#;
    let route_table = |snap: &MeshSnapshot, ns: &str| {
        let out = snap.generate(&sidecar("client", ns));
        let value = out[ROUTE].get("80").unwrap().value();
        let whole = RouteConfiguration::decode(value.as_ref()).unwrap();
        assert_eq!(whole.encode_to_vec(), value.as_ref(), "{ns}: canonical");
        whole
    };
    let web = |rc: &RouteConfiguration| {
        rc.virtual_hosts
            .iter()
            .find(|v| v.name == "web.b.svc.cluster.local:80")
            .unwrap()
            .clone()
    };

    let plain = fixture::snapshot(&services);
    let tables: Vec<RouteConfiguration> = ["a", "b", "c"].map(|ns| route_table(&plain, ns)).into();
    assert_eq!(web(&tables[0]), web(&tables[2]), "a and c see web alike");
    assert!(web(&tables[1]).domains.contains(&"web".to_string()));
    assert!(!web(&tables[0]).domains.contains(&"web".to_string()));
    assert_eq!(
        plain.vhosts.lock().unwrap().len(),
        4,
        "each service once for its own namespace and once for the others"
    );

    let routed = fixture::snapshot(&format!("{services}{by_namespace}"));
    let timeout = |ns: &str| {
        let vh = web(&route_table(&routed, ns));
        any_to_json(&crate::resource::any(&vh))["routes"][0]["route"]["timeout"].clone()
    };
    assert_eq!(timeout("a"), "1s", "sourceNamespace a");
    assert_eq!(timeout("c"), "5s", "another namespace");
    assert_eq!(
        routed.vhosts.lock().unwrap().len(),
        4,
        "a sourceNamespace match gives a and c their own of both services (shared: 3)"
    );
}

/// A rebuild that keeps unchanged hosts' clusters and endpoints from the snapshot it replaces
/// serves exactly what a fresh build of the new config serves, whichever input changed: a
/// PeerAuthentication (endpoints' mTLS), a workload's address, a DestinationRule, the options.
#[test]
fn a_rebuild_serves_what_a_fresh_build_serves() {
    let voicecore = meshd_model::voicecore::MESH_YAML;
    let config = |text: &str| Arc::new(fixture::mesh(text));
    let plaintext = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: voicecore-ai}\nspec: {mtls: {mode: DISABLE}}\n";
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: extra, namespace: voicecore-ai}\nspec: {host: billing-service, trafficPolicy: {connectionPool: {tcp: {maxConnections: 9}}}}\n";
    let opts = Arc::new(GenOptions::default());
    let other_domain = Arc::new(GenOptions {
        trust_domain: "other.local".into(),
        ..GenOptions::default()
    });
    let steps = [
        (format!("{voicecore}\n---\n{plaintext}"), opts.clone()),
        (
            format!("{voicecore}\n---\n{plaintext}").replace("10.44.0.10", "10.44.0.99"),
            opts.clone(),
        ),
        (format!("{voicecore}\n---\n{rule}"), opts.clone()),
        (format!("{voicecore}\n---\n{rule}"), other_domain),
    ];
    let proxies = workload_proxies(&config(voicecore));
    let mut previous = MeshSnapshot::build(1, config(voicecore), opts);
    for p in &proxies {
        previous.generate(p);
    }
    for (i, (text, opts)) in steps.into_iter().enumerate() {
        let rebuilt = previous.rebuild(i as u64 + 2, config(&text), opts.clone());
        let fresh = MeshSnapshot::build(i as u64 + 2, config(&text), opts);
        let mut changed = 0;
        for p in &proxies {
            let (a, b, old) = (rebuilt.generate(p), fresh.generate(p), previous.generate(p));
            for (ty, set) in &b {
                let versions = |s: &crate::resource::ResourceSet| {
                    s.iter()
                        .map(|r| (r.name.clone(), r.version.clone()))
                        .collect::<Vec<_>>()
                };
                assert_eq!(versions(&a[ty]), versions(set), "step {i}, {} {ty}", p.id);
                changed += usize::from(versions(&old[ty]) != versions(set));
            }
        }
        assert!(changed > 0, "step {i} changed what some proxy gets");
        previous = rebuilt;
    }
}
