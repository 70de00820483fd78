//! What `meshd demo` starts, read from the mesh config: a pod per WorkloadEntry (service pods
//! behind sidecars, gateway pods), the host entries every pod resolves, and the gateway's routes.

use anyhow::{Context, anyhow};
use meshd_model::MeshConfig;
use meshd_model::registry::selector_matches;
use std::net::Ipv4Addr;

/// A service workload of the demo: one sidecar pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePod {
    /// `name.namespace` of the WorkloadEntry.
    pub workload: String,
    pub address: Ipv4Addr,
    /// The service's short name, which the app answers with.
    pub service: String,
    /// The service's host (FQDN).
    pub host: String,
    /// The port the app listens on (the service's port on this endpoint).
    pub port: u16,
}

/// A gateway workload of the demo: one Envoy pod in router mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayPod {
    pub workload: String,
    pub address: Ipv4Addr,
    /// The port its Gateway servers listen on.
    pub port: u16,
}

/// A path the ingress gateway routes, and where to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRoute {
    pub prefix: String,
    pub host: String,
}

/// What the demo starts, read from the mesh config.
#[derive(Clone, Debug, Default)]
pub struct DemoPlan {
    pub services: Vec<ServicePod>,
    pub gateways: Vec<GatewayPod>,
    /// Service names (FQDN, `name.namespace`, `name`) → VIP, for every pod's /etc/hosts.
    pub hosts: Vec<(String, Ipv4Addr)>,
    pub routes: Vec<GatewayRoute>,
}

fn is_gateway(labels: &meshd_model::networking::Labels) -> bool {
    labels.get("istio").is_some_and(|v| v.ends_with("gateway"))
}

impl DemoPlan {
    /// One pod per WorkloadEntry: gateways (label `istio: ...gateway`) listen on the first
    /// port of a Gateway selecting them; every other workload runs its service's app on the
    /// service's port.
    pub fn from_mesh(mesh: &MeshConfig) -> anyhow::Result<DemoPlan> {
        let mut plan = DemoPlan::default();
        for w in &mesh.workloads {
            let address: Ipv4Addr = w.address.parse().map_err(|_| {
                anyhow!(
                    "WorkloadEntry {}: address {:?} is not IPv4",
                    w.id(),
                    w.address
                )
            })?;
            if is_gateway(&w.labels) {
                let port = mesh
                    .gateways()
                    .filter(|(_, g)| {
                        !g.selector.is_empty() && selector_matches(&g.selector, &w.labels)
                    })
                    .flat_map(|(_, g)| g.servers.iter())
                    .map(|s| s.port.target_port.unwrap_or(s.port.number))
                    .next()
                    .with_context(|| format!("no Gateway selects gateway workload {}", w.id()))?;
                plan.gateways.push(GatewayPod {
                    workload: w.id(),
                    address,
                    port: u16::try_from(port).context("gateway port")?,
                });
                continue;
            }
            let found = mesh.services.iter().find_map(|s| {
                let e = s.endpoints.iter().find(|e| {
                    e.workload.as_deref() == Some(w.name.as_str()) && e.namespace == w.namespace
                })?;
                let port = s.ports.first()?;
                Some((s, e.port_for(port)))
            });
            let Some((svc, port)) = found else {
                tracing::warn!(workload = %w.id(), "no service selects this workload; no pod for it");
                continue;
            };
            plan.services.push(ServicePod {
                workload: w.id(),
                address,
                service: svc.hostname.split('.').next().unwrap_or("").to_string(),
                host: svc.hostname.clone(),
                port: u16::try_from(port).context("service port")?,
            });
        }
        plan.services.sort_by_key(|s| s.address);
        plan.gateways.sort_by_key(|g| g.address);
        for s in &mesh.services {
            let Some(vip) = s.addresses.iter().find_map(|a| a.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            plan.hosts.push((s.hostname.clone(), vip));
            let suffix = format!(".{}.svc.cluster.local", s.namespace);
            if let Some(short) = s.hostname.strip_suffix(&suffix) {
                plan.hosts.push((format!("{short}.{}", s.namespace), vip));
                plan.hosts.push((short.to_string(), vip));
            }
        }
        for (_, vs) in mesh.virtual_services() {
            if vs.gateways.is_empty() || vs.gateways.iter().all(|g| g == "mesh") {
                continue;
            }
            for r in &vs.http {
                let Some(dest) = r.route.first() else {
                    continue;
                };
                for m in &r.matches {
                    if let Some(prefix) = m.uri.as_ref().and_then(|u| u.prefix.clone()) {
                        plan.routes.push(GatewayRoute {
                            prefix,
                            host: dest.destination.host.clone(),
                        });
                    }
                }
            }
        }
        Ok(plan)
    }

    /// How many proxies the demo runs.
    pub fn proxies(&self) -> usize {
        self.services.len() + self.gateways.len()
    }
}
