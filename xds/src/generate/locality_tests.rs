//! Unit tests of locality load balancing (locality.rs): priorities and weights per proxy
//! locality, and the encodings proxies of one locality share.

use super::*;
use crate::generate::{GenOptions, MeshSnapshot};
use crate::proxy::{Identity, NodeType, Proxy};
use crate::resource::ENDPOINT;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::common_lb_config};
use meshd_model::{MeshConfig, parse_file};
use prost::Message;

const HOST: &str = "svc.ns.svc.cluster.local";
const CLUSTER: &str = "outbound|80|v1|svc.ns.svc.cluster.local";

/// A service with one endpoint per locality (named after it), a client in each of r1/z1 and
/// r2/z2 and one with no locality, and the DestinationRule's `trafficPolicy` body.
fn mesh(policy: &str) -> MeshConfig {
    let mut yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc, namespace: ns}}\nspec:\n  hosts: [{HOST}]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  workloadSelector: {{labels: {{app: svc}}}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc, namespace: ns}}\nspec:\n  host: {HOST}\n  trafficPolicy: {policy}\n  subsets: [{{name: v1, labels: {{app: svc}}}}]\n"
    );
    let endpoints = [
        ("r1/z1", "10.0.0.1", "v1"),
        ("r1/z2", "10.0.0.2", "v2"),
        ("r2/z2", "10.0.0.3", "v1"),
        ("r3/z3", "10.0.0.4", "v2"),
    ];
    for (i, (locality, address, version)) in endpoints.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: e{i}, namespace: ns}}\nspec: {{address: {address}, locality: {locality}, labels: {{app: svc, version: {version}}}}}\n"
        ));
    }
    for (name, labels) in [
        (
            "c-r1",
            "{app: c, topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: z1, version: v1}",
        ),
        ("c-r2", "{app: c, istio-locality: r2.z2, version: v2}"),
        ("c-none", "{app: c}"),
    ] {
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{address: 10.1.0.1, labels: {labels}}}\n"
        ));
    }
    let file = parse_file("t.yaml", &yaml).unwrap();
    let config = MeshConfig::assemble([&file]);
    assert!(config.rejected.is_empty(), "{:?}", config.rejected);
    config
}

fn proxy(workload: &str) -> Proxy {
    Proxy {
        metadata: Default::default(),
        id: format!("sidecar~10.1.0.1~{workload}.ns~ns.svc.cluster.local"),
        node_type: NodeType::Sidecar,
        ip: None,
        identity: Identity {
            workload: workload.into(),
            namespace: "ns".into(),
            service_account: "default".into(),
            trust_domain: "cluster.local".into(),
        },
    }
}

fn assignment_for(snap: &MeshSnapshot, workload: &str) -> (SharedResource, ClusterLoadAssignment) {
    let out = snap.generate(&proxy(workload));
    let r = out[ENDPOINT]
        .get(CLUSTER)
        .expect("the subset's endpoints")
        .clone();
    let la = ClusterLoadAssignment::decode(r.value().as_ref()).unwrap();
    (r, la)
}

/// Each group as `locality@priority` (with `*weight` when weighted), sorted.
fn shape(la: &ClusterLoadAssignment) -> Vec<String> {
    let mut out: Vec<String> = la
        .endpoints
        .iter()
        .map(|g| {
            let l = g.locality.as_ref().expect("locality set");
            let name = format!("{}/{}", l.region, l.zone);
            match &g.load_balancing_weight {
                Some(w) => format!("{name}@{}*{}", g.priority, w.value),
                None => format!("{name}@{}", g.priority),
            }
        })
        .collect();
    out.sort();
    out
}

fn snapshot(policy: &str) -> MeshSnapshot {
    MeshSnapshot::build(1, Arc::new(mesh(policy)), Arc::new(GenOptions::default()))
}

const OUTLIER: &str = "outlierDetection: {consecutive5xxErrors: 1}";

#[test]
fn failover_orders_localities_by_what_they_share_with_the_proxy() {
    let snap = snapshot(&format!(
        "{{{OUTLIER}, loadBalancer: {{localityLbSetting: {{failover: [{{from: r1, to: r3}}]}}}}}}"
    ));
    // From r1/z1: same zone, same region, the failover region, anywhere else.
    let (_, la) = assignment_for(&snap, "c-r1");
    assert_eq!(
        shape(&la),
        ["r1/z1@0", "r1/z2@1", "r2/z2@3", "r3/z3@2"],
        "{la:?}"
    );
    // From r2/z2 (istio-locality label): its own zone, then every other region alike.
    let (_, la) = assignment_for(&snap, "c-r2");
    assert_eq!(shape(&la), ["r1/z1@1", "r1/z2@1", "r2/z2@0", "r3/z3@1"]);
    // A proxy with no locality: grouped, all at one priority.
    let (_, la) = assignment_for(&snap, "c-none");
    assert_eq!(shape(&la), ["r1/z1@0", "r1/z2@0", "r2/z2@0", "r3/z3@0"]);
}

#[test]
fn without_outlier_detection_or_when_disabled_there_are_no_priorities() {
    for policy in [
        "{loadBalancer: {localityLbSetting: {failover: [{from: r1, to: r3}]}}}".to_string(),
        format!("{{{OUTLIER}, loadBalancer: {{localityLbSetting: {{enabled: false}}}}}}"),
    ] {
        let snap = snapshot(&policy);
        let (_, la) = assignment_for(&snap, "c-r1");
        assert_eq!(
            shape(&la),
            ["r1/z1@0", "r1/z2@0", "r2/z2@0", "r3/z3@0"],
            "{policy}"
        );
    }
}

/// Istio's MeshConfig default (`localityLbSetting.enabled: true`): outlier detection alone is
/// enough for the proxy's own locality first, then its zone's, then its region's, then the rest;
/// `--locality-lb false` (the mesh setting off) leaves one flat priority.
#[test]
fn outlier_detection_alone_prefers_the_proxys_locality_as_istios_mesh_default() {
    let policy = OUTLIER.replace("outlierDetection", "{outlierDetection") + "}";
    let (_, la) = assignment_for(&snapshot(&policy), "c-r1");
    assert_eq!(
        shape(&la),
        ["r1/z1@0", "r1/z2@1", "r2/z2@2", "r3/z3@2"],
        "{la:?}"
    );
    let off = MeshSnapshot::build(
        1,
        Arc::new(mesh(&policy)),
        Arc::new(GenOptions {
            locality_lb_default: false,
            ..GenOptions::default()
        }),
    );
    let (_, la) = assignment_for(&off, "c-r1");
    assert_eq!(shape(&la), ["r1/z1@0", "r1/z2@0", "r2/z2@0", "r3/z3@0"]);
}

#[test]
fn failover_priority_ranks_by_leading_labels_shared_with_the_proxy() {
    let snap = snapshot(&format!(
        "{{{OUTLIER}, loadBalancer: {{localityLbSetting: {{failoverPriority: [topology.kubernetes.io/region, version]}}}}}}"
    ));
    // c-r1 is r1 and version v1: r1+v1 first, r1 next, the rest last.
    let (_, la) = assignment_for(&snap, "c-r1");
    assert_eq!(shape(&la), ["r1/z1@0", "r1/z2@1", "r2/z2@2", "r3/z3@2"]);
    let snap = snapshot(&format!(
        "{{{OUTLIER}, loadBalancer: {{localityLbSetting: {{failoverPriority: [\"version=v2\"]}}}}}}"
    ));
    let (_, la) = assignment_for(&snap, "c-r1");
    assert_eq!(shape(&la), ["r1/z1@1", "r1/z2@0", "r2/z2@1", "r3/z3@0"]);
}

#[test]
fn distribute_weighs_localities_from_the_proxys_locality() {
    let snap = snapshot(
        "{loadBalancer: {localityLbSetting: {distribute: [{from: \"r1/z1/*\", to: {\"r1/*\": 80, \"r3/z3\": 20}}]}}}",
    );
    let cluster = Cluster::decode(snap.clusters[CLUSTER].value().as_ref()).unwrap();
    assert!(matches!(
        cluster.common_lb_config.unwrap().locality_config_specifier,
        Some(common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
    ));
    // r1/* matches two localities: they share its 80; r2 is named nowhere and gets nothing.
    let (_, la) = assignment_for(&snap, "c-r1");
    assert_eq!(shape(&la), ["r1/z1@0*40", "r1/z2@0*40", "r3/z3@0*20"]);
    // No rule for r2: every locality weighs what its endpoints do.
    let (_, la) = assignment_for(&snap, "c-r2");
    assert_eq!(
        shape(&la),
        ["r1/z1@0*1", "r1/z2@0*1", "r2/z2@0*1", "r3/z3@0*1"]
    );
}

/// Proxies in one locality share one encoding (and one layer); another locality gets its own.
#[test]
fn proxies_in_one_locality_share_the_encoded_assignment() {
    let mut config = mesh(&format!(
        "{{{OUTLIER}, loadBalancer: {{localityLbSetting: {{}}}}}}"
    ));
    let mut twin = config
        .workloads
        .iter()
        .find(|w| w.name == "c-r1")
        .unwrap()
        .clone();
    twin.name = "c-r1-twin".into();
    config.workloads.push(twin);
    let snap = MeshSnapshot::build(1, Arc::new(config), Arc::new(GenOptions::default()));
    let (a, _) = assignment_for(&snap, "c-r1");
    let (b, _) = assignment_for(&snap, "c-r1-twin");
    let (c, _) = assignment_for(&snap, "c-r2");
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!Arc::ptr_eq(&a, &c));
    let layers = |w: &str| snap.generate(&proxy(w))[ENDPOINT].layers()[0].clone();
    assert!(Arc::ptr_eq(&layers("c-r1"), &layers("c-r1-twin")));
}
