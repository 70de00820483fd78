//! A workload's inbound side: the ports it serves, with their mTLS, JWT and RBAC filters, and
//! the listener and clusters built from them. Kept apart from the outbound scope because it is
//! keyed by workload shape, not namespace, and survives rebuilds that touch only outbound config.

use super::memo::get_or_build;
use super::{MeshSnapshot, authz, cluster, jwt, listener};
use crate::resource::{Layer, LayerMap, Resource, SharedResource, reuse_layer};
use meshd_model::registry::{Protocol, Workload, selector_matches};
use std::collections::BTreeMap;

impl MeshSnapshot {
    /// The ports a workload serves, where its app listens, and their mTLS modes: the ingress
    /// listeners of its Sidecar when it has any, else its services' target ports.
    fn inbound_ports(&self, w: &Workload) -> Vec<listener::InboundPort> {
        let mut ports: Vec<(u32, u32, Protocol)> = self
            .index
            .sidecar_for(&w.namespace, &w.labels)
            .map(|(_, sc)| {
                sc.ingress
                    .iter()
                    .map(|i| {
                        let app_port = ingress_endpoint_port(i.default_endpoint.as_deref())
                            .unwrap_or(i.port.target_port.unwrap_or(i.port.number));
                        let protocol = Protocol::detect(Some(&i.port.protocol), &i.port.name);
                        (i.port.number, app_port, protocol)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if ports.is_empty() {
            for svc in self.index.services() {
                let selected = svc.namespace == w.namespace
                    && svc
                        .selector
                        .as_ref()
                        .is_some_and(|sel| selector_matches(sel, &w.labels));
                if !selected {
                    continue;
                }
                for port in &svc.ports {
                    let app_port = w
                        .ports
                        .get(&port.name)
                        .copied()
                        .or(port.target_port)
                        .unwrap_or(port.number);
                    ports.push((app_port, app_port, port.protocol));
                }
            }
        }
        let mut by_port: BTreeMap<u32, listener::InboundPort> = BTreeMap::new();
        for (port, app_port, protocol) in ports {
            let http = protocol.is_http();
            by_port.entry(port).or_insert_with(|| {
                let policy = authz::inbound_policy(&self.index, w, port, http, &self.opts);
                listener::InboundPort {
                    port,
                    app_port,
                    http,
                    h2: matches!(protocol, Protocol::Http2 | Protocol::Grpc),
                    mode: self.index.mtls_mode(&w.namespace, &w.labels, port),
                    // JWT verification first: RBAC matches the payload it leaves.
                    http_filters: jwt::jwt_filter(
                        &self.index.config,
                        &self.index.root_namespace,
                        &w.namespace,
                        &w.labels,
                    )
                    .filter(|_| http)
                    .into_iter()
                    .chain(policy.http_filters)
                    .collect(),
                    network_filters: policy.network_filters,
                }
            });
        }
        by_port.into_values().collect()
    }

    /// A workload's inbound clusters and listener, shared by every proxy of the same workload
    /// shape (namespace, labels, ports).
    pub(super) fn inbound(&self, workload: Option<&Workload>) -> (Layer, Layer) {
        let key = workload
            .map(|w| format!("{}|{:?}|{:?}", w.namespace, w.labels, w.ports))
            .unwrap_or_default();
        get_or_build(&self.inbound, key, |key| {
            let (clusters, listeners) = self.build_inbound(workload);
            match self.previous.inbound.get(key) {
                Some((c, l)) => (
                    reuse_layer(Some(c), clusters),
                    reuse_layer(Some(l), listeners),
                ),
                None => (clusters, listeners),
            }
        })
    }

    fn build_inbound(&self, workload: Option<&Workload>) -> (Layer, Layer) {
        let ports = workload.map(|w| self.inbound_ports(w)).unwrap_or_default();
        let clusters: BTreeMap<String, SharedResource> = ports
            .iter()
            .map(|p| {
                let c = cluster::inbound(p.port, p.app_port, p.h2);
                (c.name.clone(), Resource::encode(c.name.clone(), &c))
            })
            .collect();
        let opts = match workload {
            Some(w) => self.opts_for(&w.namespace, &w.labels),
            None => self.opts.clone(),
        };
        let vi = listener::virtual_inbound(&ports, &opts);
        let listeners: BTreeMap<String, SharedResource> =
            [(vi.name.clone(), Resource::encode(vi.name.clone(), &vi))]
                .into_iter()
                .collect();
        (LayerMap::new(clusters), LayerMap::new(listeners))
    }
}

/// The app port of a Sidecar ingress listener's `defaultEndpoint` (`127.0.0.1:PORT`,
/// `0.0.0.0:PORT` or `[::1]:PORT`; the app is reached on loopback either way).
fn ingress_endpoint_port(endpoint: Option<&str>) -> Option<u32> {
    let (_, port) = endpoint?.rsplit_once(':')?;
    port.parse().ok()
}
