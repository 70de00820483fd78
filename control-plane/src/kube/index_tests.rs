//! Unit tests of the Kubernetes registry index (index.rs): cluster objects in, MeshConfig out.

use super::services::port_number;
use super::*;
use meshd_model::networking::{Labels, Location, Resolution};
use meshd_model::registry::Protocol;

const CLUSTER: &str = include_str!("testdata/cluster.yaml");
const ENDPOINTS_V1: &str = include_str!("testdata/endpoints-v1.yaml");

fn mesh_of(text: &str) -> MeshConfig {
    KubeObjects::from_yaml(text)
        .unwrap()
        .mesh(&IndexOptions::default())
}

fn service<'a>(mesh: &'a MeshConfig, host: &str) -> &'a registry::Service {
    mesh.service(host)
        .unwrap_or_else(|| panic!("no service {host}: {:?}", mesh.services))
}

/// The duration bomb (which once panicked the watch and crash-looped every replica) as a
/// custom resource: rejected with its namespace, name and field; every other object of the
/// cluster still serves.
#[test]
fn a_duration_bomb_resource_is_rejected_and_the_rest_serves() {
    let bomb = "\
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bomb, namespace: attacker}
spec:
  hosts: [billing-service.voicecore-ai.svc.cluster.local]
  http:
  - route: [{destination: {host: billing-service.voicecore-ai.svc.cluster.local}}]
    timeout: 99999999999999999999s
";
    let clean = mesh_of(CLUSTER);
    let mesh = mesh_of(&format!("{CLUSTER}{bomb}"));
    assert_eq!(mesh.services, clean.services);
    assert_eq!(mesh.workloads, clean.workloads);
    assert_eq!(mesh.objects, clean.objects);
    let bomb: Vec<&Rejected> = mesh
        .rejected
        .iter()
        .filter(|r| r.name.as_deref() == Some("bomb"))
        .collect();
    let [r] = bomb[..] else {
        panic!("{:?}", mesh.rejected)
    };
    assert_eq!(r.namespace.as_deref(), Some("attacker"));
    assert_eq!(r.kind, Some(Kind::VirtualService));
    assert!(r.reason.contains("spec.http[0].timeout"), "{r}");
    assert!(r.reason.contains("out of range"), "{r}");
}

/// Port numbers are `i32` in the Kubernetes API: one outside 1-65535 is dropped, not
/// wrapped into a port past 4 billion.
#[test]
fn out_of_range_kubernetes_ports_are_dropped() {
    assert_eq!(port_number(8080), Some(8080));
    assert_eq!(port_number(65535), Some(65535));
    for bad in [0, -1, 65536, i32::MIN, i32::MAX] {
        assert_eq!(port_number(bad), None, "{bad}");
    }
}

#[test]
fn services_from_endpoint_slices_joined_with_pods() {
    let mesh = mesh_of(CLUSTER);
    let billing = service(&mesh, "billing-service.voicecore-ai.svc.cluster.local");
    assert_eq!(billing.addresses, ["10.96.12.34"]);
    assert_eq!(billing.resolution, Resolution::Static);
    assert_eq!(billing.location, Location::MeshInternal);
    // The UDP port is not the mesh's.
    let ports: Vec<(&str, u32, Protocol, Option<u32>)> = billing
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.number, p.protocol, p.target_port))
        .collect();
    assert_eq!(
        ports,
        [
            ("http", 8080, Protocol::Http, None),
            ("api", 9090, Protocol::Grpc, Some(9091))
        ]
    );
    assert_eq!(
        billing.selector.as_ref().unwrap().get("app").unwrap(),
        "billing-service"
    );
    // The terminating (not ready) endpoint is not served.
    let addrs: Vec<&str> = billing
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(addrs, ["10.44.0.17", "10.44.0.19"]);
    let v1 = &billing.endpoints[0];
    assert_eq!(v1.service_account, "billing");
    assert_eq!(v1.namespace, "voicecore-ai");
    assert_eq!(
        v1.workload.as_deref(),
        Some("billing-service-v1-7d9f8c6b5-x2k4p")
    );
    assert_eq!(v1.labels.get("version").unwrap(), "v1");
    // The named targetPort resolves to the slice's port for that service port.
    assert_eq!(v1.port_for(&billing.ports[0]), 8081);
    assert_eq!(v1.port_for(&billing.ports[1]), 9091);
    assert_eq!(billing.endpoints[1].labels.get("version").unwrap(), "v2");
    assert_eq!(
        billing.service_accounts(),
        [("voicecore-ai".to_string(), "billing".to_string())]
    );
}

#[test]
fn selector_service_without_endpoints_object_uses_ready_pods() {
    let mesh = mesh_of(CLUSTER);
    let pay = service(&mesh, "payment-service.voicecore-ai.svc.cluster.local");
    assert_eq!(pay.ports[0].protocol, Protocol::Http, "http- prefix");
    assert_eq!(pay.endpoints.len(), 1, "{:?}", pay.endpoints);
    let ep = &pay.endpoints[0];
    assert_eq!(ep.address, "10.44.0.30");
    assert_eq!(ep.service_account, "payment-service");
    assert_eq!(ep.port_for(&pay.ports[0]), 8088, "named targetPort `web`");
}

#[test]
fn headless_and_external_name_services() {
    let mesh = mesh_of(CLUSTER);
    let pg = service(&mesh, "postgres.voicecore-ai.svc.cluster.local");
    assert!(pg.addresses.is_empty());
    assert_eq!(pg.resolution, Resolution::None);
    assert_eq!(pg.ports[0].protocol, Protocol::Tcp);
    assert_eq!(
        pg.export_to,
        [".", "billing-team"],
        "Istio's exportTo annotation"
    );
    assert!(pg.visible_in("voicecore-ai") && pg.visible_in("billing-team"));
    assert!(!pg.visible_in("shop"));
    let ext = service(&mesh, "speech-api.voicecore-ai.svc.cluster.local");
    assert_eq!(ext.resolution, Resolution::Dns);
    assert_eq!(ext.location, Location::MeshExternal);
    assert_eq!(ext.endpoints[0].address, "speech.example.com");
    assert_eq!(ext.ports[0].protocol, Protocol::Https);
}

#[test]
fn pods_become_workloads() {
    let mesh = mesh_of(CLUSTER);
    let names: Vec<&str> = mesh.workloads.iter().map(|w| w.name.as_str()).collect();
    // Not the pending pod without an IP, not the finished Job.
    assert_eq!(
        names,
        [
            "billing-service-v1-7d9f8c6b5-q8w7e",
            "billing-service-v1-7d9f8c6b5-x2k4p",
            "billing-service-v2-5c4b3a291-m3n4b",
            "payment-service-v1-6b5a4c3d2-z9y8x",
        ]
    );
    let w = mesh
        .workload("billing-service-v1-7d9f8c6b5-x2k4p", "voicecore-ai")
        .unwrap();
    assert_eq!(w.address, "10.44.0.17");
    assert_eq!(w.service_account, "billing");
    assert_eq!(w.ports.get("http"), Some(&8081));
    assert_eq!(w.ports.get("grpc"), Some(&9091));
    assert_eq!(w.labels.get("version").unwrap(), "v1");
}

#[test]
fn istio_resources_are_validated_like_files() {
    let mesh = mesh_of(CLUSTER);
    let kinds: Vec<(Kind, &str)> = mesh
        .objects
        .values()
        .map(|o| (o.kind(), o.meta.name.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (Kind::ServiceEntry, "billing-batch"),
            (Kind::DestinationRule, "billing-service"),
            (Kind::VirtualService, "billing-service"),
            (Kind::PeerAuthentication, "default"),
        ]
    );
    assert_eq!(mesh.rejected.len(), 1, "{:?}", mesh.rejected);
    let r = &mesh.rejected[0];
    assert_eq!(r.kind, Some(Kind::VirtualService));
    assert_eq!(r.name.as_deref(), Some("broken"));
    assert_eq!(r.namespace.as_deref(), Some("voicecore-ai"));
    assert!(r.reason.contains("frobnicate"), "{}", r.reason);
    assert_eq!(
        r.file,
        "kubernetes:networking.istio.io/VirtualService/voicecore-ai/broken"
    );
    // kubectl's last-applied annotation is not config.
    let dr = mesh.destination_rules().next().unwrap().0;
    assert!(dr.meta.annotations.is_empty());
    // A ServiceEntry's workloadSelector picks Pods.
    let batch = service(&mesh, "billing-batch.voicecore.internal");
    let addrs: Vec<&str> = batch.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addrs, ["10.44.0.19"]);
    assert_eq!(batch.endpoints[0].service_account, "billing");
}

#[test]
fn cross_object_checks_follow_deletions() {
    let mut objs = KubeObjects::from_yaml(CLUSTER).unwrap();
    objs.delete_istio(Kind::DestinationRule, "voicecore-ai", "billing-service");
    let mesh = objs.mesh(&IndexOptions::default());
    assert!(
        mesh.rejected
            .iter()
            .any(|r| r.name.as_deref() == Some("billing-service")
                && r.reason.contains("subset `v1`")),
        "{:?}",
        mesh.rejected
    );
    assert_eq!(mesh.virtual_services().count(), 0);
}

#[test]
fn core_endpoints_where_there_are_no_slices() {
    let mesh = mesh_of(ENDPOINTS_V1);
    let crm = service(&mesh, "legacy-crm.default.svc.cluster.local");
    assert!(crm.selector.is_none());
    let addrs: Vec<&str> = crm.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(
        addrs,
        ["192.0.2.10", "192.0.2.11"],
        "notReadyAddresses are not served"
    );
    assert_eq!(crm.endpoints[0].service_account, "default");
    assert_eq!(crm.endpoints[0].workload, None);
    assert_eq!(crm.endpoints[0].port_for(&crm.ports[0]), 8080);
    let web = service(&mesh, "web.default.svc.cluster.local");
    assert_eq!(web.ports[0].name, "");
    assert_eq!(web.endpoints.len(), 1);
    assert_eq!(web.endpoints[0].service_account, "web");
    assert_eq!(web.endpoints[0].labels.get("version").unwrap(), "v3");
    assert_eq!(web.endpoints[0].port_for(&web.ports[0]), 8080);
}

#[test]
fn a_relist_removes_what_vanished() {
    let mut objs = KubeObjects::from_yaml(CLUSTER).unwrap();
    let before = objs.mesh(&IndexOptions::default());
    // The same objects again: the same mesh (publishing compares for equality).
    assert_eq!(objs.clone().mesh(&IndexOptions::default()), before);
    // Relist pods: only the v2 pod is left.
    let keep: Vec<Pod> = objs
        .pods
        .values()
        .filter(|p| p.metadata.name.as_deref() == Some("billing-service-v2-5c4b3a291-m3n4b"))
        .map(|p| (**p).clone())
        .collect();
    objs.replace(keep);
    objs.replace::<Service>(
        objs.services
            .values()
            .filter(|s| s.metadata.name.as_deref() != Some("postgres"))
            .map(|s| (**s).clone())
            .collect::<Vec<_>>(),
    );
    objs.replace_istio(Kind::VirtualService, Vec::new());
    let after = objs.mesh(&IndexOptions::default());
    assert_eq!(after.workloads.len(), 1);
    assert!(
        after
            .service("postgres.voicecore-ai.svc.cluster.local")
            .is_none()
    );
    assert_eq!(after.virtual_services().count(), 0);
    assert!(
        after.rejected.is_empty(),
        "the broken VirtualService went too"
    );
    // The slice still names the v1 pod, but without it the endpoint has no pod labels.
    let billing = service(&after, "billing-service.voicecore-ai.svc.cluster.local");
    assert_eq!(billing.endpoints[0].labels, Labels::new());
    let payments = service(&after, "payment-service.voicecore-ai.svc.cluster.local");
    assert!(payments.endpoints.is_empty());
}

#[test]
fn injection_namespaces_by_label() {
    let objs = KubeObjects::from_yaml(CLUSTER).unwrap();
    assert_eq!(
        objs.injection_namespaces().into_iter().collect::<Vec<_>>(),
        ["voicecore-ai"]
    );
}

/// The API server's JSON spells every map key as a string: an integer-keyed map
/// (PeerAuthentication `portLevelMtls`) is read from it directly, not rejected whole (which
/// once silently dropped the workload's STRICT mode). A bad field is reported by the
/// object's name and the field's path, with no line of any internal rendering.
#[test]
fn integer_keyed_maps_from_the_api_server_are_read() {
    let pa = |port_level: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "mtls": {"mode": "STRICT"},
                     "portLevelMtls": port_level}
        })
    };
    let ok = IstioObject::parse(
        Kind::PeerAuthentication,
        &pa(serde_json::json!({"8080": {"mode": "DISABLE"}})),
    );
    let o = ok.parsed.expect("accepted");
    let Spec::PeerAuthentication(spec) = &o.spec else {
        panic!("{o:?}")
    };
    use meshd_model::security::MtlsMode;
    assert_eq!(spec.mtls.as_ref().unwrap().mode, MtlsMode::Strict);
    assert_eq!(spec.port_level_mtls[&8080].mode, MtlsMode::Disable);

    let bad = IstioObject::parse(
        Kind::PeerAuthentication,
        &pa(serde_json::json!({"8080": {"mode": "SOMETIMES"}})),
    );
    let r = bad.parsed.unwrap_err();
    assert_eq!(r.line, 0);
    let shown = r.to_string();
    assert!(
        shown.starts_with("PeerAuthentication shop/p: spec.portLevelMtls.8080.mode: "),
        "{shown}"
    );
    assert!(shown.contains("SOMETIMES"), "{shown}");
}

/// From the cluster too, a route to a rejected DestinationRule's subsets names the rule.
#[test]
fn a_route_to_a_rejected_rules_subsets_names_it() {
    let mut objs = KubeObjects::default();
    objs.apply_istio(IstioObject::parse(
        Kind::DestinationRule,
        &serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "cart", "namespace": "shop"},
            "spec": {"host": "cart", "trafficPolicy": {"loadBalancer": {"simple": "SOMETIMES"}},
                     "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}
        }),
    ));
    objs.apply_istio(IstioObject::parse(
        Kind::VirtualService,
        &serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "cart", "namespace": "shop"},
            "spec": {"hosts": ["cart"],
                     "http": [{"route": [{"destination": {"host": "cart", "subset": "v1"}}]}]}
        }),
    ));
    let mesh = objs.mesh(&IndexOptions::default());
    let shown: Vec<String> = mesh.rejected.iter().map(|r| r.to_string()).collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown[0].starts_with("DestinationRule shop/cart: spec.trafficPolicy.loadBalancer.simple: "),
        "{shown:?}"
    );
    assert!(
        shown[1].starts_with("VirtualService shop/cart: route to subset `v1` of cart.shop.svc.cluster.local: DestinationRule shop/cart was rejected: "),
        "{shown:?}"
    );
}

#[test]
fn server_fields_do_not_change_the_parsed_object() {
    let v: serde_json::Value = serde_json::json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": {"name": "s", "namespace": "a", "resourceVersion": "1", "uid": "u",
                      "managedFields": [{"manager": "kubectl"}], "generation": 1},
        "spec": {}, "status": {"observedGeneration": "1"}
    });
    let mut w = v.clone();
    w["metadata"]["resourceVersion"] = "2".into();
    w["status"] = serde_json::json!({"validationMessages": []});
    let a = IstioObject::parse(Kind::Sidecar, &v);
    let b = IstioObject::parse(Kind::Sidecar, &w);
    assert!(a.parsed.is_ok(), "{:?}", a.parsed);
    assert_eq!(a.parsed, b.parsed);
    let wrong = IstioObject::parse(Kind::Gateway, &v);
    assert!(wrong.parsed.unwrap_err().reason.contains("kind Sidecar"));
}

/// meshd does not watch Nodes: a Pod's locality (workload and endpoint alike) comes from the
/// topology labels on the Pod itself.
#[test]
fn a_pods_locality_comes_from_its_topology_labels() {
    let labelled = CLUSTER.replace(
        "    pod-template-hash: 7d9f8c6b5\n    version: v1\n  name: billing-service-v1-7d9f8c6b5-x2k4p\n",
        "    pod-template-hash: 7d9f8c6b5\n    topology.kubernetes.io/region: r1\n    topology.kubernetes.io/zone: z1\n    version: v1\n  name: billing-service-v1-7d9f8c6b5-x2k4p\n",
    );
    assert_ne!(labelled, CLUSTER, "the test data changed");
    let mesh = mesh_of(&labelled);
    let w = mesh
        .workload("billing-service-v1-7d9f8c6b5-x2k4p", "voicecore-ai")
        .unwrap();
    assert_eq!(w.locality, "r1/z1");
    let billing = service(&mesh, "billing-service.voicecore-ai.svc.cluster.local");
    let localities: Vec<&str> = billing
        .endpoints
        .iter()
        .map(|e| e.locality.as_str())
        .collect();
    assert_eq!(localities, ["r1/z1", ""]);
}
