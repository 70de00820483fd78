//! A workload's inbound side: the ports it serves, with their mTLS, JWT and RBAC filters, and
//! the listener and clusters built from them. Kept apart from the outbound scope because it is
//! keyed by workload shape, not namespace, and survives rebuilds that touch only outbound config.

use super::cluster::AppEndpoint;
use super::inbound_listener::{self, InboundPort};
use super::memo::get_or_build;
use super::{MeshSnapshot, authz, cluster, jwt};
use crate::resource::{Layer, LayerMap, Resource, SharedResource, reuse_layer};
use meshd_model::networking::{
    CaptureMode, ConnectionPoolSettings, IstioIngressListener, ServerTlsSettings,
};
use meshd_model::registry::{Protocol, Workload, selector_matches};
use std::collections::BTreeMap;

/// What a workload's inbound port is before its policy: where it is served from and how.
struct PortShape {
    port: u32,
    app: AppEndpoint,
    protocol: Protocol,
    pool: Option<ConnectionPoolSettings>,
    tls: Option<ServerTlsSettings>,
    bind: Option<String>,
}

impl MeshSnapshot {
    /// The ports a workload serves, where its app listens, and their mTLS modes: the ingress
    /// listeners of its Sidecar when it has any, else its services' target ports.
    fn inbound_ports(&self, w: &Workload) -> Vec<InboundPort> {
        let sidecar = self
            .index
            .sidecar_for(&w.namespace, &w.labels)
            .map(|(_, sc)| sc);
        let sidecar_pool = sidecar.and_then(|sc| sc.inbound_connection_pool.as_ref());
        let mut ports: Vec<PortShape> = sidecar
            .map(|sc| {
                sc.ingress
                    .iter()
                    .map(|i| ingress_shape(i, sidecar_pool, &w.address))
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
                    ports.push(PortShape {
                        port: app_port,
                        app: AppEndpoint::Port(app_port),
                        protocol: port.protocol,
                        pool: sidecar_pool.cloned(),
                        tls: None,
                        bind: None,
                    });
                }
            }
        }
        let mut by_port: BTreeMap<u32, InboundPort> = BTreeMap::new();
        for shape in ports {
            let port = shape.port;
            let http = shape.protocol.is_http();
            by_port.entry(port).or_insert_with(|| {
                let policy = authz::inbound_policy(&self.index, w, port, http, &self.opts);
                InboundPort {
                    port,
                    app: shape.app,
                    protocol: shape.protocol,
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
                    pool: shape.pool,
                    tls: shape.tls,
                    bind: shape.bind,
                }
            });
        }
        by_port.into_values().collect()
    }

    /// A workload's inbound clusters and listeners, shared by every proxy of the same workload
    /// shape (namespace, labels, ports; its address too when a listener binds it).
    pub(super) fn inbound(&self, workload: Option<&Workload>) -> (Layer, Layer) {
        let key = workload
            .map(|w| {
                let address = if self.binds_own_address(w) {
                    w.address.as_str()
                } else {
                    ""
                };
                format!("{}|{:?}|{:?}|{address}", w.namespace, w.labels, w.ports)
            })
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

    /// Whether the workload's Sidecar binds a port to the workload's address (captureMode NONE
    /// without `bind`).
    fn binds_own_address(&self, w: &Workload) -> bool {
        self.index
            .sidecar_for(&w.namespace, &w.labels)
            .is_some_and(|(_, sc)| {
                sc.ingress
                    .iter()
                    .any(|i| i.capture_mode == CaptureMode::None && i.bind.is_none())
            })
    }

    fn build_inbound(&self, workload: Option<&Workload>) -> (Layer, Layer) {
        let ports = workload.map(|w| self.inbound_ports(w)).unwrap_or_default();
        let clusters: BTreeMap<String, SharedResource> = ports
            .iter()
            .map(|p| {
                let c = cluster::inbound(p.port, &p.app, p.protocol, p.pool.as_ref());
                (c.name.clone(), Resource::encode(c.name.clone(), &c))
            })
            .collect();
        let opts = match workload {
            Some(w) => self.opts_for(&w.namespace, &w.labels),
            None => self.opts.clone(),
        };
        let listeners: BTreeMap<String, SharedResource> =
            std::iter::once(inbound_listener::virtual_inbound(&ports, &opts))
                .chain(
                    ports
                        .iter()
                        .filter_map(|p| inbound_listener::bound_inbound(p, &opts)),
                )
                .map(|l| (l.name.clone(), Resource::encode(l.name.clone(), &l)))
                .collect();
        (LayerMap::new(clusters), LayerMap::new(listeners))
    }
}

/// An ingress listener's port as the sidecar serves it. Its own pool replaces the Sidecar's
/// whole (Istio's rule: the two are not merged field by field).
fn ingress_shape(
    i: &IstioIngressListener,
    sidecar_pool: Option<&ConnectionPoolSettings>,
    workload_address: &str,
) -> PortShape {
    let endpoint = i.default_endpoint.as_deref();
    let app = match endpoint.and_then(|e| e.strip_prefix("unix://")) {
        Some(path) => AppEndpoint::Pipe(path.to_string()),
        None => AppEndpoint::Port(
            ingress_endpoint_port(endpoint).unwrap_or(i.port.target_port.unwrap_or(i.port.number)),
        ),
    };
    PortShape {
        port: i.port.number,
        app,
        protocol: Protocol::detect(Some(&i.port.protocol), &i.port.name),
        pool: i.connection_pool.as_ref().or(sidecar_pool).cloned(),
        tls: i.tls.clone(),
        // With iptables capture the connection reaches 15006 whatever address it was sent to,
        // and its original destination is the pod's address: a `bind` there would restrict
        // nothing the sidecar can see, so only captureMode NONE binds. By default it binds the
        // workload's address, as Istio: on 0.0.0.0 it would share the address of the outbound
        // listener of any service port with the same number, and Envoy refuses the update.
        bind: (i.capture_mode == CaptureMode::None).then(|| {
            i.bind
                .clone()
                .unwrap_or_else(|| workload_address.to_string())
        }),
    }
}

/// The app port of a Sidecar ingress listener's `defaultEndpoint` (`127.0.0.1:PORT`,
/// `0.0.0.0:PORT` or `[::1]:PORT`; the app is reached on loopback either way).
fn ingress_endpoint_port(endpoint: Option<&str>) -> Option<u32> {
    let (_, port) = endpoint?.rsplit_once(':')?;
    port.parse().ok()
}

#[cfg(test)]
#[path = "inbound_tests.rs"]
mod tests;
