//! The registry as request attribution needs it: which workload is at an address, which
//! services a workload serves, and each workload's Istio labels. Built once per mesh config.
//!
//! An address names a workload only when exactly one workload has it; a service is a
//! workload's when the registry lists the workload among the service's endpoints.

use meshd_model::MeshConfig;
use meshd_model::registry::Workload;
use meshd_model::telemetry_scope::TelemetryPolicy;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

/// Istio's default cluster id, for `source_cluster` / `destination_cluster` (one cluster).
pub const CLUSTER_ID: &str = "Kubernetes";

/// One workload's labels as Istio's metrics spell them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
}

impl Peer {
    pub fn of(w: &Workload, trust_domain: &str) -> Peer {
        let label = |keys: &[&str]| keys.iter().find_map(|k| w.labels.get(*k).cloned());
        Peer {
            workload: w.name.clone(),
            namespace: w.namespace.clone(),
            principal: format!(
                "spiffe://{trust_domain}/ns/{}/sa/{}",
                w.namespace, w.service_account
            ),
            app: label(&["app"]).unwrap_or_else(|| "unknown".into()),
            version: label(&["version"]).unwrap_or_else(|| "unknown".into()),
            // Istio's canonical service and revision: its own labels, then the Kubernetes
            // recommended ones, then app/version, then the workload name and `latest`.
            canonical_service: label(&[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ])
            .unwrap_or_else(|| w.name.clone()),
            canonical_revision: label(&[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ])
            .unwrap_or_else(|| "latest".into()),
        }
    }
}

/// A service a workload is an endpoint of, with the ports it serves it on.
#[derive(Clone, Debug)]
struct Served {
    host: String,
    /// The workload's ports for this service (target ports).
    ports: Vec<u32>,
}

#[derive(Debug, Default)]
pub struct Directory {
    peers: Vec<Peer>,
    /// Peers by namespace and name: indices into `peers`, hashed from the peer's own fields,
    /// so the table holds no second copy of either and a lookup allocates nothing.
    by_name: hashbrown::HashTable<usize>,
    name_hasher: std::hash::RandomState,
    /// Workloads by address; more than one means the address names none.
    by_address: HashMap<IpAddr, Vec<usize>>,
    served: HashMap<usize, Vec<Served>>,
    /// Every service host, and the host behind each service address (VIP).
    hosts: HashSet<String>,
    by_vip: HashMap<IpAddr, String>,
    /// The SPIFFE ids of the registry's workloads.
    principals: HashSet<String>,
    /// Telemetry policies other than the default, by workload.
    telemetry: HashMap<usize, Arc<TelemetryPolicy>>,
}

impl Directory {
    pub fn build(mesh: &MeshConfig, trust_domain: &str) -> Directory {
        // Sized once: growing by doubling left up to 40 % of the peers' room unused (1 MB at
        // 10 000 workloads, issue 19).
        let mut d = Directory {
            peers: Vec::with_capacity(mesh.workloads.len()),
            ..Default::default()
        };
        let telemetries = meshd_model::telemetry_scope::telemetries(mesh);
        for w in &mesh.workloads {
            if d.index_of(&w.name, &w.namespace).is_some() {
                continue;
            }
            let i = d.peers.len();
            let peer = Peer::of(w, trust_domain);
            d.principals.insert(peer.principal.clone());
            let policy = meshd_model::telemetry_scope::resolve(
                &telemetries,
                meshd_model::telemetry_scope::ROOT_NAMESPACE,
                &w.namespace,
                &w.labels,
            );
            if policy != TelemetryPolicy::default() {
                d.telemetry.insert(i, Arc::new(policy));
            }
            let hash = d
                .name_hasher
                .hash_one((peer.namespace.as_str(), peer.workload.as_str()));
            d.peers.push(peer);
            let Directory {
                peers,
                by_name,
                name_hasher,
                ..
            } = &mut d;
            by_name.insert_unique(hash, i, |&j| {
                name_hasher.hash_one((peers[j].namespace.as_str(), peers[j].workload.as_str()))
            });
            if let Ok(ip) = w.address.parse::<IpAddr>() {
                d.by_address.entry(ip).or_default().push(i);
            }
        }
        for s in &mesh.services {
            d.hosts.insert(s.hostname.clone());
            for a in &s.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    d.by_vip.entry(ip).or_insert_with(|| s.hostname.clone());
                }
            }
            for e in &s.endpoints {
                let Some(name) = &e.workload else { continue };
                let Some(i) = d.index_of(name, &e.namespace) else {
                    continue;
                };
                let served = d.served.entry(i).or_default();
                if served.iter().any(|x| x.host == s.hostname) {
                    continue;
                }
                served.push(Served {
                    host: s.hostname.clone(),
                    ports: s.ports.iter().map(|p| e.port_for(p)).collect(),
                });
            }
        }
        // A workload serves one service or a few and has an address of its own; a list's
        // first push makes room for four.
        for served in d.served.values_mut() {
            served.shrink_to_fit();
        }
        for at in d.by_address.values_mut() {
            at.shrink_to_fit();
        }
        d
    }

    fn index_of(&self, name: &str, namespace: &str) -> Option<usize> {
        let hash = self.name_hasher.hash_one((namespace, name));
        self.by_name
            .find(hash, |&i| {
                self.peers[i].namespace == namespace && self.peers[i].workload == name
            })
            .copied()
    }

    pub fn workload(&self, name: &str, namespace: &str) -> Option<&Peer> {
        self.index_of(name, namespace).map(|i| &self.peers[i])
    }

    /// The Telemetry policy in force for a workload (the default for one the registry lacks).
    pub fn telemetry(&self, name: &str, namespace: &str) -> Arc<TelemetryPolicy> {
        static DEFAULT: std::sync::OnceLock<Arc<TelemetryPolicy>> = std::sync::OnceLock::new();
        self.index_of(name, namespace)
            .and_then(|i| self.telemetry.get(&i))
            .unwrap_or_else(|| DEFAULT.get_or_init(Default::default))
            .clone()
    }

    /// The one workload at `ip`, if exactly one is.
    pub fn at(&self, ip: IpAddr) -> Option<&Peer> {
        match self.by_address.get(&ip).map(Vec::as_slice) {
            Some([i]) => Some(&self.peers[*i]),
            _ => None,
        }
    }

    /// The service `peer` answered as: the one the request's authority names among those it
    /// serves, else the first it serves on `port`, else the first it serves at all.
    pub fn service_of(&self, peer: &Peer, port: Option<u32>, authority: &str) -> Option<&str> {
        let i = self.index_of(&peer.workload, &peer.namespace)?;
        let served = self.served.get(&i)?;
        let host = authority_host(authority);
        let named = (!host.is_empty())
            .then(|| {
                served.iter().find(|s| {
                    s.host == host
                        || s.host
                            .strip_prefix(host)
                            .is_some_and(|rest| rest.starts_with('.'))
                })
            })
            .flatten();
        let on_port = || port.and_then(|p| served.iter().find(|s| s.ports.contains(&p)));
        named
            .or_else(on_port)
            .or_else(|| served.first())
            .map(|s| s.host.as_str())
    }

    /// The registry's service a caller in `namespace` named by `authority`: its host, a short
    /// name (`api`, `api.shop`) in Kubernetes' search order, or its address (VIP).
    pub fn service_named(&self, authority: &str, namespace: &str) -> Option<&str> {
        let host = authority_host(authority);
        if host.is_empty() {
            return None;
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.by_vip.get(&ip).map(String::as_str);
        }
        let candidates = [
            host.to_string(),
            format!("{host}.{namespace}.svc.cluster.local"),
            format!("{host}.svc.cluster.local"),
        ];
        candidates
            .iter()
            .find_map(|c| self.hosts.get(c.as_str()).map(String::as_str))
    }

    /// Whether `principal` is the identity of a workload in the registry.
    pub fn knows_principal(&self, principal: &str) -> bool {
        self.principals.contains(principal)
    }

    /// Every workload this directory knows, as (name, namespace).
    pub fn live(&self) -> HashSet<(String, String)> {
        self.peers
            .iter()
            .map(|p| (p.workload.clone(), p.namespace.clone()))
            .collect()
    }
}

/// `host[:port]` or `[v6]:port` → host.
fn authority_host(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_keeps_no_spare_room_per_workload() {
        let mut yaml = String::from(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc, namespace: ns}\nspec:\n  hosts: [svc.ns.svc.cluster.local]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: svc}}\n",
        );
        for i in 0..5 {
            yaml.push_str(&format!(
                "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: w{i}, namespace: ns}}\nspec: {{address: 10.0.0.{i}, labels: {{app: svc}}}}\n"
            ));
        }
        let file = meshd_model::parse_file("t.yaml", &yaml).unwrap();
        let mesh = MeshConfig::assemble([&file]);
        let d = Directory::build(&mesh, "cluster.local");
        assert_eq!(d.peers.len(), 5);
        assert_eq!(d.peers.capacity(), d.peers.len());
        assert_eq!(d.served.len(), 5, "each workload serves svc");
        for served in d.served.values() {
            assert_eq!((served.len(), served.capacity()), (1, 1));
        }
        assert_eq!(d.by_address.len(), 5);
        for at in d.by_address.values() {
            assert_eq!((at.len(), at.capacity()), (1, 1));
        }
        let peer = d
            .at("10.0.0.3".parse().unwrap())
            .expect("w3 by its address");
        assert_eq!(peer.workload, "w3");
        assert_eq!(
            d.service_of(peer, Some(80), ""),
            Some("svc.ns.svc.cluster.local")
        );
    }
}
