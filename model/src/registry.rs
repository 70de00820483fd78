//! Services and workloads as the data plane sees them, derived from ServiceEntry and
//! WorkloadEntry objects (file mode) or from Kubernetes objects (Kubernetes mode).

use crate::networking::{Labels, Location, Resolution, ServiceEntry, WorkloadEntry};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
}

impl Protocol {
    /// Istio's rule: the explicit protocol, else the port name's prefix (`http-foo`), else TCP.
    pub fn detect(protocol: Option<&str>, port_name: &str) -> Protocol {
        let from = |s: &str| match s.to_ascii_lowercase().as_str() {
            "http" => Some(Protocol::Http),
            "http2" => Some(Protocol::Http2),
            "grpc" | "grpc-web" => Some(Protocol::Grpc),
            "https" => Some(Protocol::Https),
            "tls" => Some(Protocol::Tls),
            "tcp" | "mongo" | "mysql" | "redis" => Some(Protocol::Tcp),
            _ => None,
        };
        protocol
            .and_then(from)
            .or_else(|| from(port_name.split('-').next().unwrap_or("")))
            .unwrap_or(Protocol::Tcp)
    }

    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Port {
    pub name: String,
    pub number: u32,
    pub protocol: Protocol,
    pub target_port: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub address: String,
    /// Port on the endpoint, by service port name.
    pub ports: crate::networking::NamedPorts,
    pub labels: Labels,
    pub service_account: String,
    pub namespace: String,
    pub workload: Option<String>,
    pub weight: Option<u32>,
    /// `region/zone/subzone` (see [`crate::locality`]); empty when unknown.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub locality: String,
}

impl Endpoint {
    pub fn port_for(&self, port: &Port) -> u32 {
        self.ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.number)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub hostname: String,
    pub namespace: String,
    pub addresses: Vec<String>,
    pub ports: Vec<Port>,
    pub resolution: Resolution,
    pub location: Location,
    pub endpoints: Vec<Endpoint>,
    pub subject_alt_names: Vec<String>,
    /// Labels that select this service's workloads (empty for static endpoints).
    pub selector: Option<Labels>,
    /// Namespaces whose proxies see the service (`exportTo`; empty: all).
    pub export_to: Vec<String>,
}

/// Whether an object of `owner_ns` with this `exportTo` is visible in `ns` (Istio's rules:
/// none given or `*`: everywhere; `.`: its own namespace; `~`: nowhere; else the names listed).
pub fn exported_to(export_to: &[String], owner_ns: &str, ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || (e == "." && owner_ns == ns) || e == ns)
}

impl Service {
    /// Whether proxies in `ns` see this service.
    pub fn visible_in(&self, ns: &str) -> bool {
        exported_to(&self.export_to, &self.namespace, ns)
    }

    pub fn port(&self, number: u32) -> Option<&Port> {
        self.ports.iter().find(|p| p.number == number)
    }

    pub fn is_internal(&self) -> bool {
        self.location == Location::MeshInternal
    }

    /// The SPIFFE service-account identities behind this service (for peer verification).
    pub fn service_accounts(&self) -> Vec<(String, String)> {
        let mut accounts: Vec<(String, String)> = self
            .endpoints
            .iter()
            .map(|e| (e.namespace.clone(), e.service_account.clone()))
            .collect();
        accounts.sort();
        accounts.dedup();
        accounts
    }
}

/// A workload that may run a sidecar: a WorkloadEntry (file mode) or a Pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub address: String,
    pub labels: Labels,
    pub service_account: String,
    pub ports: crate::networking::NamedPorts,
    /// `region/zone/subzone` (see [`crate::locality`]); empty when unknown.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub locality: String,
}

impl Workload {
    pub fn id(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }

    pub fn from_entry(name: &str, namespace: &str, we: &WorkloadEntry) -> Workload {
        Workload {
            name: name.to_string(),
            namespace: namespace.to_string(),
            address: we.address.clone(),
            labels: we.labels.clone(),
            service_account: we
                .service_account
                .clone()
                .unwrap_or_else(|| "default".into()),
            ports: we.ports.clone(),
            locality: crate::locality::locality_of(we.locality.as_deref(), &we.labels),
        }
    }
}

/// The Sidecar in force for a workload in `namespace` with `labels`, among `sidecars` (`of`
/// gives each one's own namespace and spec), by Istio's precedence: one selecting the workload
/// in its namespace, else the namespace's default (no selector), else the mesh default (no
/// selector, root namespace); the first of equals.
pub fn sidecar_for<T>(
    sidecars: impl IntoIterator<Item = T>,
    of: impl Fn(&T) -> (&str, &crate::networking::Sidecar),
    root_namespace: &str,
    namespace: &str,
    labels: &Labels,
) -> Option<T> {
    sidecars
        .into_iter()
        .filter_map(|s| {
            let (own_namespace, sidecar) = of(&s);
            let rank = sidecar_rank(sidecar, own_namespace, root_namespace, namespace, labels)?;
            Some((rank, s))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, s)| s)
}

/// 0 when the Sidecar selects the workload in its namespace, 1 as the namespace's default, 2 as
/// the mesh default; `None` when it does not apply.
fn sidecar_rank(
    sidecar: &crate::networking::Sidecar,
    own_namespace: &str,
    root_namespace: &str,
    namespace: &str,
    labels: &Labels,
) -> Option<u8> {
    match &sidecar.workload_selector {
        Some(sel) => {
            (own_namespace == namespace && selector_matches(&sel.labels, labels)).then_some(0)
        }
        None if own_namespace == namespace => Some(1),
        None if own_namespace == root_namespace => Some(2),
        None => None,
    }
}

pub fn selector_matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// One ServiceEntry expands to a Service per host, with endpoints from its inline entries or
/// from the WorkloadEntries its selector picks in the same namespace.
/// Workloads as a ServiceEntry's `workloadSelector` looks them up: only among its own
/// namespace's (a scan of every workload per entry was quadratic in the mesh's size), and there
/// only among those carrying one of its labels (a scan of the namespace per entry still cost
/// every reload of a 4000-workload mesh 20 ms).
#[derive(Default)]
pub struct WorkloadIndex<'a> {
    by_namespace: HashMap<&'a str, Vec<&'a Workload>>,
    by_label: HashMap<(&'a str, &'a str, &'a str), Vec<&'a Workload>>,
}

impl<'a> WorkloadIndex<'a> {
    pub fn new(workloads: &'a [Workload]) -> WorkloadIndex<'a> {
        let mut index = WorkloadIndex::default();
        for w in workloads {
            let ns = w.namespace.as_str();
            index.by_namespace.entry(ns).or_default().push(w);
            for (k, v) in &w.labels {
                index
                    .by_label
                    .entry((ns, k.as_str(), v.as_str()))
                    .or_default()
                    .push(w);
            }
        }
        index
    }

    /// The workloads of `namespace` that `selector` selects, in their original order.
    pub fn selected(&self, namespace: &str, selector: &Labels) -> Vec<&'a Workload> {
        let candidates = match selector.iter().next() {
            None => self.by_namespace.get(namespace),
            Some((k, v)) => self.by_label.get(&(namespace, k.as_str(), v.as_str())),
        };
        candidates
            .into_iter()
            .flatten()
            .filter(|w| selector_matches(selector, &w.labels))
            .copied()
            .collect()
    }
}

/// The services of a ServiceEntry in `namespace`; a `workloadSelector` picks from `workloads`.
pub fn services_from_entry(
    namespace: &str,
    se: &ServiceEntry,
    workloads: &WorkloadIndex<'_>,
) -> Vec<Service> {
    let ports: Vec<Port> = se
        .ports
        .iter()
        .map(|p| Port {
            name: p.name.clone(),
            number: p.number,
            protocol: Protocol::detect(p.protocol.as_deref(), &p.name),
            target_port: p.target_port,
        })
        .collect();
    let endpoints: Vec<Endpoint> = match &se.workload_selector {
        Some(sel) => workloads
            .selected(namespace, &sel.labels)
            .into_iter()
            .map(|w| Endpoint {
                address: w.address.clone(),
                ports: w.ports.clone(),
                labels: w.labels.clone(),
                service_account: w.service_account.clone(),
                namespace: w.namespace.clone(),
                workload: Some(w.name.clone()),
                weight: None,
                locality: w.locality.clone(),
            })
            .collect(),
        None => se
            .endpoints
            .iter()
            .map(|e| Endpoint {
                address: e.address.clone(),
                ports: e.ports.clone(),
                labels: e.labels.clone(),
                service_account: e
                    .service_account
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                namespace: namespace.to_string(),
                workload: None,
                weight: e.weight,
                locality: crate::locality::locality_of(e.locality.as_deref(), &e.labels),
            })
            .collect(),
    };
    se.hosts
        .iter()
        .map(|host| Service {
            hostname: host.clone(),
            namespace: namespace.to_string(),
            addresses: se.addresses.clone(),
            ports: ports.clone(),
            resolution: se.resolution,
            location: se.location,
            endpoints: endpoints.clone(),
            subject_alt_names: se.subject_alt_names.clone(),
            selector: se.workload_selector.as_ref().map(|s| s.labels.clone()),
            export_to: se.export_to.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str, ns: &str, labels: &[(&str, &str)]) -> Workload {
        Workload {
            name: name.into(),
            namespace: ns.into(),
            address: "10.0.0.1".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: "default".into(),
            ports: Default::default(),
            locality: String::new(),
        }
    }

    #[test]
    fn the_index_selects_as_a_scan_of_the_namespace_would() {
        let ws = [
            workload("a1", "a", &[("app", "x"), ("version", "v1")]),
            workload("b1", "b", &[("app", "x"), ("version", "v1")]),
            workload("a2", "a", &[("app", "y")]),
            workload("a3", "a", &[("app", "x"), ("version", "v2")]),
            workload("a4", "a", &[("version", "v1")]),
        ];
        let index = WorkloadIndex::new(&ws);
        let sel = |labels: &[(&str, &str)]| -> Labels {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        for selector in [
            sel(&[]),
            sel(&[("app", "x")]),
            sel(&[("app", "x"), ("version", "v1")]),
            sel(&[("version", "v1")]),
            sel(&[("app", "z")]),
        ] {
            let scan: Vec<&str> = ws
                .iter()
                .filter(|w| w.namespace == "a" && selector_matches(&selector, &w.labels))
                .map(|w| w.name.as_str())
                .collect();
            let got: Vec<&str> = index
                .selected("a", &selector)
                .iter()
                .map(|w| w.name.as_str())
                .collect();
            assert_eq!(got, scan, "{selector:?}");
        }
        assert!(index.selected("c", &sel(&[])).is_empty());
    }

    #[test]
    fn protocol_from_port_name_or_field() {
        assert_eq!(Protocol::detect(None, "http-api"), Protocol::Http);
        assert_eq!(Protocol::detect(Some("GRPC"), "x"), Protocol::Grpc);
        assert_eq!(Protocol::detect(None, "db"), Protocol::Tcp);
    }
}
