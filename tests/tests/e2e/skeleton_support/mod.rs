//! Shared by the issue-2 end-to-end tests (`walking_skeleton`, `control_plane_down`): the
//! VoiceCore mesh from `deploy/mesh/voicecore.yaml` in a [`Mesh`], its service pods, and waiting
//! for every proxy to be SYNCED.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use meshd_e2e::*;
use serde_json::Value;

pub const VOICECORE: &str = meshd_model::voicecore::MESH_YAML;
pub const NS: &str = "voicecore-ai";
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The VoiceCore services: (name, last byte of VIP and of the workload address, port).
pub const SERVICES: [(&str, u8, u16); 8] = [
    ("gateway", 10, 8000),
    ("tenant-service", 11, 8001),
    ("call-service", 12, 8002),
    ("ai-service", 13, 8003),
    ("crm-service", 14, 8004),
    ("analytics-service", 15, 8005),
    ("integration-service", 16, 8006),
    ("billing-service", 17, 8007),
];

pub const LISTENERS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const CLUSTERS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ROUTES: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRETS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

pub fn service(name: &str) -> (&'static str, u8, u16) {
    *SERVICES
        .iter()
        .find(|s| s.0 == name)
        .unwrap_or_else(|| panic!("no VoiceCore service {name}"))
}

pub fn fqdn(svc: &str) -> String {
    format!("{svc}.{NS}.svc.cluster.local")
}

pub fn vip(svc: &str) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, service(svc).1)
}

pub fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{NS}/sa/{sa}")
}

pub fn url(svc: &str, path: &str) -> String {
    format!("http://{}:{}{path}", fqdn(svc), service(svc).2)
}

/// A mesh serving the VoiceCore config (copied into its config dir), every pod resolving the
/// service names to their VIPs.
pub fn voicecore_mesh(name: &str) -> Mesh {
    let mesh = Mesh::start(MeshOptions::named(name).config("voicecore.yaml", VOICECORE))
        .expect("control plane starts with the VoiceCore mesh");
    let hosts: Vec<(String, Ipv4Addr)> =
        SERVICES.iter().map(|(s, _, _)| (fqdn(s), vip(s))).collect();
    mesh.set_hosts(&hosts).unwrap();
    mesh
}

/// The pod of `<svc>-v1` (its WorkloadEntry's address), app on the service port.
pub fn service_pod(mesh: &Mesh, svc: &str) -> SidecarPod {
    let (_, host, port) = service(svc);
    mesh.add_sidecar_pod(&format!("{svc}-v1.{NS}"), ip(host), port)
        .unwrap_or_else(|e| panic!("sidecar pod for {svc}: {e:#}"))
}

/// GET from inside a pod: (status, JSON body or Null).
pub fn get_json(pod: &Pod, url: &str) -> anyhow::Result<(u16, Value)> {
    let r = pod.request("GET", url, &[], None)?;
    Ok((r.status, r.json().unwrap_or(Value::Null)))
}

/// Status of a GET from inside a pod, or 0 when the request failed.
pub fn status_of(pod: &Pod, url: &str) -> u16 {
    pod.get(url).map(|(s, _)| s).unwrap_or(0)
}

/// Envoy's node id for a VoiceCore service pod.
pub fn proxy_id(svc: &str) -> String {
    format!(
        "sidecar~10.44.0.{}~{svc}-v1.{NS}~{NS}.svc.cluster.local",
        service(svc).1
    )
}

/// Waits until `/debug/syncz` lists exactly `ids`, each with CDS, EDS, LDS, RDS and SDS SYNCED.
pub fn wait_synced(mesh: &Mesh, ids: &[String]) {
    let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let mut last = Value::Null;
    let ok = wait_until(TIMEOUT, || {
        let Ok(syncz) = mesh.admin_json("/debug/syncz") else {
            return false;
        };
        last = syncz.clone();
        let Some(proxies) = syncz.as_array() else {
            return false;
        };
        let got: BTreeSet<&str> = proxies
            .iter()
            .filter_map(|p| p["proxy_id"].as_str())
            .collect();
        got == want
            && proxies.iter().all(|p| {
                let types = p["types"].as_object();
                types.is_some_and(|t| t.len() == 5 && t.values().all(|s| s["status"] == "SYNCED"))
            })
    });
    assert!(
        ok,
        "not every proxy SYNCED for all five types; /debug/syncz:\n{last:#}"
    );
}
