//! The config path the server runs on every change, shared by the config fuzz targets: a
//! file's text → parse and validate → `MeshConfig` → snapshot → the resources of one proxy per
//! workload (and of a sidecar with no workload). Any text must give objects and rejections,
//! never a panic.

use meshd_model::{MeshConfig, parse_file};
use meshd_xds::proxy::{Identity, NodeType, Proxy};
use meshd_xds::{GenOptions, MeshSnapshot};
use std::sync::Arc;

/// At most this many workloads' proxies are generated per input (each costs a scope build).
const PROXIES: usize = 3;

pub fn run(text: &str) {
    let Ok(file) = parse_file("fuzz.yaml", text) else {
        return;
    };
    for e in &file.rejected {
        assert!(!e.message.is_empty(), "a rejection says why");
    }
    let mesh = MeshConfig::assemble([&file]);
    let workloads = mesh.workloads.clone();
    let snapshot = MeshSnapshot::build(1, Arc::new(mesh), Arc::new(GenOptions::default()));
    let mut proxies: Vec<Proxy> = workloads
        .iter()
        .take(PROXIES)
        .map(|w| Proxy::for_workload(w, "cluster.local"))
        .collect();
    proxies.push(Proxy {
        metadata: Default::default(),
        id: "sidecar~10.0.0.1~stranger.default~default.svc.cluster.local".into(),
        node_type: NodeType::Sidecar,
        ip: Some("10.0.0.1".into()),
        identity: Identity {
            workload: "stranger".into(),
            namespace: "default".into(),
            service_account: "default".into(),
            trust_domain: "cluster.local".into(),
        },
    });
    for proxy in &proxies {
        let _ = snapshot.generate(proxy);
    }
}
