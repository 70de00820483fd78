//! The shipped VoiceCore policies (`deploy/mesh/voicecore-authz.yaml`) in real Envoy: with
//! default-deny in `voicecore-ai`, call-service may call ai-service, while call-service →
//! billing-service (only gateway and tenant-service may) gets 403 `RBAC: access denied`; the
//! ingress gateway reaches only the API gateway, and enforces a policy of its own.

use crate::authz_support;

use authz_support::*;
use meshd_e2e::*;
use std::net::Ipv4Addr;

const VOICECORE: &str = meshd_model::voicecore::MESH_YAML;
const AUTHZ: &str = meshd_model::voicecore::AUTHZ_YAML;

fn host(name: &str) -> String {
    format!("{name}.voicecore-ai.svc.cluster.local")
}

#[test]
fn call_service_reaches_ai_service_but_not_billing() {
    let mesh = Mesh::start(
        MeshOptions::named("azvc")
            .config("voicecore.yaml", VOICECORE)
            .config("voicecore-authz.yaml", AUTHZ)
            .config("edge.yaml", EDGE),
    )
    .unwrap();
    let services = [
        ("call-service", 12, 8002),
        ("ai-service", 13, 8003),
        ("billing-service", 17, 8007),
        ("gateway", 10, 8000),
    ];
    let hosts: Vec<(String, Ipv4Addr)> = services
        .iter()
        .map(|(n, i, _)| (host(n), Ipv4Addr::new(10, 96, 0, *i)))
        .collect();
    mesh.set_hosts(&hosts).unwrap();
    let pods: Vec<SidecarPod> = services
        .iter()
        .map(|(n, i, port)| {
            mesh.add_sidecar_pod(&format!("{n}-v1.voicecore-ai"), ip(*i), *port)
                .unwrap()
        })
        .collect();
    let call = &pods[0];
    let get = |name: &str, port: u16| {
        outcome(&call.request("GET", &format!("http://{}:{port}/", host(name)), &[], None))
    };
    expect("call-service → ai-service", &allowed(), || {
        get("ai-service", 8003)
    })
    .unwrap();
    expect("call-service → billing-service", &denied(), || {
        get("billing-service", 8007)
    })
    .unwrap();
    // And ai-service, which call-service may reach, may not call back into call-service.
    let back = || {
        outcome(&pods[1].request(
            "GET",
            &format!("http://{}:8002/", host("call-service")),
            &[],
            None,
        ))
    };
    expect("ai-service → call-service", &denied(), back).unwrap();

    // Through the ingress gateway (from the node namespace): the API gateway answers, its
    // admin paths are refused by the gateway's own policy, a backend by the backend's.
    let ingress = mesh
        .add_gateway_pod("ingressgateway.istio-system", ip(2))
        .unwrap();
    let node = mesh.node();
    let edge = |path: &str| {
        let url = format!("http://{}:8080{path}", ingress.ip());
        outcome(&node.request("GET", &url, &[], None))
    };
    expect("ingress → gateway", &allowed(), || edge("/gateway/x")).unwrap();
    expect("ingress → gateway admin", &denied(), || {
        edge("/gateway/admin/x")
    })
    .unwrap();
    expect("ingress → billing-service", &denied(), || {
        edge("/billing-service/x")
    })
    .unwrap();
}

/// A policy on the ingress gateway itself (root namespace, selected by its labels).
const EDGE: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ingress-no-admin
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/gateway/admin/*"]
"#;
