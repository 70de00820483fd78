//! The accepted mesh config: every file's objects merged, checked against each other, and the
//! service registry derived from them.

use crate::networking::{DestinationRule, Gateway, Sidecar, VirtualService};
use crate::registry::{Service, Workload, services_from_entry};
use crate::security::{AuthorizationPolicy, PeerAuthentication};
use crate::{ConfigError, ConfigObject, FileConfig, Kind, ObjectKey, Spec};
use serde::Serialize;
use std::collections::BTreeMap;

/// An object (or a whole file) that is not in force, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejected {
    pub file: String,
    pub line: usize,
    pub kind: Option<Kind>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub reason: String,
}

impl Rejected {
    fn of(obj: &ConfigObject, reason: String) -> Rejected {
        Rejected {
            file: obj.source.file.clone(),
            line: obj.source.line,
            kind: Some(obj.kind()),
            namespace: Some(obj.meta.namespace().to_string()),
            name: Some(obj.meta.name.clone()),
            reason,
        }
    }

    pub fn from_error(e: &ConfigError) -> Rejected {
        Rejected {
            file: e.file.clone(),
            line: e.line,
            kind: None,
            namespace: None,
            name: None,
            reason: e.message.clone(),
        }
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let (Some(k), Some(ns), Some(n)) = (&self.kind, &self.namespace, &self.name) {
            write!(f, "{k} {ns}/{n}: ")?;
        }
        f.write_str(&self.reason)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MeshConfig {
    pub objects: BTreeMap<ObjectKey, ConfigObject>,
    pub rejected: Vec<Rejected>,
    pub services: Vec<Service>,
    pub workloads: Vec<Workload>,
}

/// Expand a short or namespace-relative host the way Istio does for `host` fields.
pub fn qualify_host(host: &str, namespace: &str, domain_suffix: &str) -> String {
    if host.contains('.') || host == "*" {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{domain_suffix}")
    }
}

impl MeshConfig {
    /// Merge per-file configs (in file order) into one mesh config.
    pub fn assemble<'a>(files: impl IntoIterator<Item = &'a FileConfig>) -> MeshConfig {
        let mut mesh = MeshConfig::default();
        for file in files {
            mesh.rejected
                .extend(file.rejected.iter().map(Rejected::from_error));
            for obj in &file.objects {
                let key = obj.key();
                if let Some(first) = mesh.objects.get(&key) {
                    let reason = format!("duplicate {key}: already defined at {}", first.source);
                    mesh.rejected.push(Rejected::of(obj, reason));
                } else {
                    mesh.objects.insert(key, obj.clone());
                }
            }
        }
        mesh.derive_registry();
        mesh.check_references();
        mesh
    }

    fn derive_registry(&mut self) {
        self.workloads = self
            .objects
            .values()
            .filter_map(|o| match &o.spec {
                Spec::WorkloadEntry(we) => {
                    Some(Workload::from_entry(&o.meta.name, o.meta.namespace(), we))
                }
                _ => None,
            })
            .collect();
        self.services = self
            .objects
            .values()
            .filter_map(|o| match &o.spec {
                Spec::ServiceEntry(se) => {
                    Some(services_from_entry(o.meta.namespace(), se, &self.workloads))
                }
                _ => None,
            })
            .flatten()
            .collect();
    }

    /// Rejects objects that point at what does not exist (e.g. a route to an undefined subset):
    /// the rest of the mesh keeps serving.
    fn check_references(&mut self) {
        let mut subsets: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for o in self.objects.values() {
            if let Spec::DestinationRule(dr) = &o.spec {
                let host = qualify_host(&dr.host, o.meta.namespace(), "cluster.local");
                subsets
                    .entry(host)
                    .or_default()
                    .extend(dr.subsets.iter().map(|s| s.name.clone()));
            }
        }
        let mut bad = Vec::new();
        for (key, o) in &self.objects {
            let Spec::VirtualService(vs) = &o.spec else {
                continue;
            };
            let destinations = vs
                .http
                .iter()
                .flat_map(|r| r.route.iter().map(|d| &d.destination).chain(&r.mirror))
                .chain(
                    vs.tcp
                        .iter()
                        .flat_map(|r| r.route.iter().map(|d| &d.destination)),
                )
                .chain(
                    vs.tls
                        .iter()
                        .flat_map(|r| r.route.iter().map(|d| &d.destination)),
                );
            for d in destinations {
                let Some(subset) = &d.subset else { continue };
                let host = qualify_host(&d.host, o.meta.namespace(), "cluster.local");
                let known = subsets.get(&host).is_some_and(|s| s.contains(subset));
                if !known {
                    bad.push((
                        key.clone(),
                        format!(
                            "route to subset `{subset}` of {host}, which no DestinationRule defines"
                        ),
                    ));
                    break;
                }
            }
        }
        for (key, reason) in bad {
            if let Some(o) = self.objects.remove(&key) {
                self.rejected.push(Rejected::of(&o, reason));
            }
        }
    }

    fn specs<'a, T: 'a>(
        &'a self,
        pick: impl Fn(&'a Spec) -> Option<&'a T> + 'a,
    ) -> impl Iterator<Item = (&'a ConfigObject, &'a T)> + 'a {
        self.objects
            .values()
            .filter_map(move |o| pick(&o.spec).map(|s| (o, s)))
    }

    pub fn destination_rules(&self) -> impl Iterator<Item = (&ConfigObject, &DestinationRule)> {
        self.specs(|s| match s {
            Spec::DestinationRule(x) => Some(x),
            _ => None,
        })
    }

    pub fn virtual_services(&self) -> impl Iterator<Item = (&ConfigObject, &VirtualService)> {
        self.specs(|s| match s {
            Spec::VirtualService(x) => Some(x),
            _ => None,
        })
    }

    pub fn gateways(&self) -> impl Iterator<Item = (&ConfigObject, &Gateway)> {
        self.specs(|s| match s {
            Spec::Gateway(x) => Some(x),
            _ => None,
        })
    }

    pub fn sidecars(&self) -> impl Iterator<Item = (&ConfigObject, &Sidecar)> {
        self.specs(|s| match s {
            Spec::Sidecar(x) => Some(x),
            _ => None,
        })
    }

    pub fn peer_authentications(
        &self,
    ) -> impl Iterator<Item = (&ConfigObject, &PeerAuthentication)> {
        self.specs(|s| match s {
            Spec::PeerAuthentication(x) => Some(x),
            _ => None,
        })
    }

    pub fn authorization_policies(
        &self,
    ) -> impl Iterator<Item = (&ConfigObject, &AuthorizationPolicy)> {
        self.specs(|s| match s {
            Spec::AuthorizationPolicy(x) => Some(x),
            _ => None,
        })
    }

    pub fn workload(&self, name: &str, namespace: &str) -> Option<&Workload> {
        self.workloads
            .iter()
            .find(|w| w.name == name && w.namespace == namespace)
    }

    pub fn service(&self, hostname: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.hostname == hostname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_file;

    #[test]
    fn route_to_missing_subset_is_rejected_alone() {
        let text = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad, namespace: ns}
spec:
  hosts: [a]
  http:
  - route:
    - destination: {host: a, subset: v9}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: good, namespace: ns}
spec:
  hosts: [b]
  http:
  - route:
    - destination: {host: b}
"#;
        let file = parse_file("vs.yaml", text).unwrap();
        let mesh = MeshConfig::assemble([&file]);
        assert_eq!(mesh.virtual_services().count(), 1);
        assert_eq!(mesh.rejected.len(), 1);
        assert!(mesh.rejected[0].reason.contains("v9"));
        assert_eq!(mesh.rejected[0].line, 2);
    }

    #[test]
    fn duplicates_keep_the_first() {
        let text =
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec: {}\n";
        let a = parse_file("a.yaml", text).unwrap();
        let b = parse_file("b.yaml", text).unwrap();
        let mesh = MeshConfig::assemble([&a, &b]);
        assert_eq!(mesh.sidecars().count(), 1);
        assert_eq!(mesh.rejected[0].file, "b.yaml");
        assert!(mesh.rejected[0].reason.contains("a.yaml:1"));
    }
}

#[cfg(test)]
mod voicecore {
    use super::*;
    use crate::parse_file;

    #[test]
    fn the_shipped_voicecore_mesh_is_clean() {
        let text = include_str!("../../../deploy/mesh/voicecore.yaml");
        let file = parse_file("voicecore.yaml", text).unwrap();
        let mesh = MeshConfig::assemble([&file]);
        assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
        assert_eq!(mesh.services.len(), 8);
        assert_eq!(mesh.workloads.len(), 9);
        assert!(mesh.services.iter().all(|s| s.endpoints.len() == 1));
    }
}
