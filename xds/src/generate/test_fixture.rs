//! The generator tests' one way to stand a mesh up: config from YAML strings (each test file
//! keeps its mesh as data beside its tests), a snapshot of it, a proxy for one of its
//! workloads, and a generated resource picked by type and name. Shared so that every test
//! reads the mesh as `meshd serve` would (rejected objects fail the test, not pass silently),
//! and so that a change to how a snapshot or a proxy is made is made once.

use crate::generate::{GenOptions, MeshSnapshot};
use crate::json::any_to_json;
use crate::proxy::{Identity, NodeType, Proxy};
use meshd_model::{MeshConfig, parse_file};
use serde_json::Value;
use std::sync::Arc;

/// An ingress gateway's workload (`istio: ingressgateway`, 10.44.0.2) in `istio-system`, for a
/// test's Gateways to select; ends with a document separator.
pub(crate) const INGRESS: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ingress, namespace: istio-system}
spec: {address: 10.44.0.2, labels: {istio: ingressgateway}, serviceAccount: ingress}
---
";

/// A service to stand a test on: `server.app` (HTTP on 8080 and 8081, TCP on 9000) and its
/// workload `server` (10.44.0.20, service account `server`). A test adds what it is about.
pub(crate) const SERVER: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: server, namespace: app}
spec:
  hosts: [server.app.svc.cluster.local]
  addresses: [10.96.0.20]
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  - {number: 8081, name: http-admin, protocol: HTTP}
  - {number: 9000, name: tcp, protocol: TCP}
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: server}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: server, namespace: app}
spec: {address: 10.44.0.20, labels: {app: server}, serviceAccount: server}
---
"#;

/// An in-mesh service `name.ns.svc.cluster.local`, as YAML: a MESH_INTERNAL, STATIC
/// ServiceEntry at the VIP `10.96.0.{n}` with `ports` (a YAML flow list) and one endpoint,
/// `10.44.0.{n}`.
pub(crate) fn service(name: &str, ns: &str, n: u8, ports: &str) -> String {
    let endpoints = format!("[{{address: 10.44.0.{n}}}]");
    service_with(name, ns, n, ports, &endpoints, "")
}

/// A [`service`] with its own `endpoints` (a YAML flow list) and `rest` (more spec fields, each
/// a line indented by two spaces).
pub(crate) fn service_with(
    name: &str,
    ns: &str,
    n: u8,
    ports: &str,
    endpoints: &str,
    rest: &str,
) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{name}.{ns}.svc.cluster.local]\n  addresses: [10.96.0.{n}]\n  ports: {ports}\n  location: MESH_INTERNAL\n  resolution: STATIC\n  endpoints: {endpoints}\n{rest}---\n"
    )
}

/// The `ports` of a [`service`] speaking HTTP on 80.
pub(crate) const HTTP_80: &str = "[{number: 80, name: http, protocol: HTTP}]";
/// The `ports` of a [`service`] speaking TCP on 5432 (a database).
pub(crate) const TCP_5432: &str = "[{number: 5432, name: tcp, protocol: TCP}]";

/// The config of `yaml` (one or more `---`-separated objects), every object of which parses
/// and passes validation.
pub(crate) fn mesh(yaml: &str) -> MeshConfig {
    let file = parse_file("mesh.yaml", yaml).unwrap();
    assert!(file.rejected.is_empty(), "{:?}", file.rejected);
    let config = MeshConfig::assemble([&file]);
    assert!(config.rejected.is_empty(), "{:?}", config.rejected);
    config
}

/// The first snapshot of [`mesh`]`(yaml)`, under the default options.
pub(crate) fn snapshot(yaml: &str) -> MeshSnapshot {
    MeshSnapshot::build(1, Arc::new(mesh(yaml)), Arc::new(GenOptions::default()))
}

/// The proxy of the registered workload `name` in `ns`, as it would connect: a sidecar, or a
/// router for a gateway workload.
pub(crate) fn workload_proxy(snap: &MeshSnapshot, name: &str, ns: &str) -> Proxy {
    let w = snap.index.workload(name, ns).expect("workload");
    Proxy::for_workload(w, "cluster.local")
}

/// The proxy of the registered workload `name` in `ns`, connecting as `node_type` whatever the
/// workload's labels say (a gateway's pod asking as a sidecar, say).
pub(crate) fn workload_proxy_as(
    snap: &MeshSnapshot,
    name: &str,
    ns: &str,
    node_type: NodeType,
) -> Proxy {
    Proxy {
        node_type,
        ..workload_proxy(snap, name, ns)
    }
}

/// A sidecar proving `workload` in `ns` (service account `workload`), whether the registry
/// knows it or not: the generator serves an unregistered one its namespace's outbound view.
pub(crate) fn sidecar(workload: &str, ns: &str) -> Proxy {
    Proxy {
        metadata: Default::default(),
        id: format!("sidecar~10.44.0.1~{workload}.{ns}~{ns}.svc.cluster.local"),
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

/// A gateway (router) proving `workload` in `ns`, as [`sidecar`].
pub(crate) fn router(workload: &str, ns: &str) -> Proxy {
    Proxy {
        node_type: NodeType::Router,
        ..sidecar(workload, ns)
    }
}

/// The resource `name` of `type_url` that `proxy` gets, as JSON.
pub(crate) fn resource(snap: &MeshSnapshot, proxy: &Proxy, type_url: &str, name: &str) -> Value {
    let out = snap.generate(proxy);
    let r = out[type_url]
        .get(name)
        .unwrap_or_else(|| panic!("no {name} of {type_url}"));
    any_to_json(&r.any())
}

/// Workload labels from `(key, value)` pairs.
pub(crate) fn labels(pairs: &[(&str, &str)]) -> meshd_model::networking::Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
