//! The accepted mesh config: every file's objects merged, checked against each other, and the
//! service registry derived from them.

use crate::networking::{DestinationRule, Gateway, Sidecar, VirtualService};
use crate::registry::{Service, Workload, WorkloadIndex, services_from_entry};
use crate::security::{AuthorizationPolicy, PeerAuthentication};
use crate::{ConfigError, ConfigObject, FileConfig, Kind, ObjectKey, Spec, SpecOf, SpecRef};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

mod fragments;
mod warnings;

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
            kind: e.object.as_ref().map(|o| o.kind),
            namespace: e.object.as_ref().map(|o| o.namespace.clone()),
            name: e.object.as_ref().map(|o| o.name.clone()),
            reason: e.message.clone(),
        }
    }
}

/// `file:line: Kind ns/name: reason`; an object from the API server (line 0) is named by its
/// kind, namespace and name alone: `Kind ns/name: spec.field.path: reason`.
impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let named = match (&self.kind, &self.namespace, &self.name) {
            (Some(k), Some(ns), Some(n)) => Some(format!("{k} {ns}/{n}")),
            _ => None,
        };
        match (self.line, named) {
            (0, Some(named)) => write!(f, "{named}: ")?,
            (0, None) => write!(f, "{}: ", self.file)?,
            (line, named) => {
                write!(f, "{}:{line}: ", self.file)?;
                if let Some(named) = named {
                    write!(f, "{named}: ")?;
                }
            }
        }
        f.write_str(&self.reason)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MeshConfig {
    pub objects: BTreeMap<ObjectKey, Arc<ConfigObject>>,
    pub rejected: Vec<Rejected>,
    /// Accepted objects with a valid field meshd does not act on yet: in force, and said so.
    pub warnings: Vec<Rejected>,
    pub services: Vec<Service>,
    pub workloads: Vec<Workload>,
    /// TLS credentials for Gateway `credentialName`, by (namespace, Secret name). Never
    /// serialized (key material).
    #[serde(skip)]
    pub credentials: BTreeMap<(String, String), crate::credential::TlsCredential>,
    /// JWK sets meshd fetched for RequestAuthentication `jwksUri`s (by the control plane, at
    /// the edge): the generator reads them as data.
    #[serde(skip)]
    pub jwks: crate::jwt::JwksByLocation,
}

/// Objects shared with the config compared against (what a reload did not touch) are equal
/// without a look inside.
impl PartialEq for MeshConfig {
    fn eq(&self, other: &Self) -> bool {
        let MeshConfig {
            objects,
            rejected,
            warnings,
            services,
            workloads,
            credentials,
            jwks,
        } = self;
        objects.len() == other.objects.len()
            && objects
                .iter()
                .zip(&other.objects)
                .all(|((ka, a), (kb, b))| ka == kb && (Arc::ptr_eq(a, b) || a == b))
            && *rejected == other.rejected
            && *warnings == other.warnings
            && *services == other.services
            && *workloads == other.workloads
            && *credentials == other.credentials
            && *jwks == other.jwks
    }
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
        // Rejected DestinationRules by the host they were for: routes to their subsets say so.
        let mut rejected_rules: BTreeMap<String, Rejected> = BTreeMap::new();
        for file in files {
            mesh.rejected
                .extend(file.rejected.iter().map(Rejected::from_error));
            for e in &file.rejected {
                if let (Some(host), Some(key)) = (&e.host, &e.object)
                    && key.kind == Kind::DestinationRule
                {
                    rejected_rules
                        .entry(qualify_host(host, &key.namespace, "cluster.local"))
                        .or_insert_with(|| Rejected::from_error(e));
                }
            }
            for c in &file.credentials {
                let key = (c.namespace.clone(), c.name.clone());
                match mesh.credentials.entry(key) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        mesh.rejected.push(Rejected {
                            file: c.source.file.clone(),
                            line: c.source.line,
                            kind: None,
                            namespace: Some(c.namespace.clone()),
                            name: Some(c.name.clone()),
                            reason: format!("duplicate Secret {}/{}", c.namespace, c.name),
                        })
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(c.tls.clone());
                    }
                }
            }
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
        mesh.check_references(&rejected_rules);
        mesh.check_authorization_policies();
        mesh.warnings = warnings::warnings(&mesh);
        mesh
    }

    /// AuthorizationPolicies meshd cannot enforce as written (an unsupported or invalid field, a
    /// spec that does not read) are reported, and kept: the generator turns each into a deny-all
    /// for the workloads it selects, so a policy never silently stops restricting.
    fn check_authorization_policies(&mut self) {
        for o in self.objects.values() {
            let Spec::AuthorizationPolicy(ap) = &o.spec else {
                continue;
            };
            let problems = ap.problems();
            if problems.is_empty() {
                continue;
            }
            let mut r = Rejected::of(
                o,
                format!(
                    "{}; the policy fails closed: it denies every request to the workloads it selects",
                    problems.join("; ")
                ),
            );
            if let Some(e) = &ap.unreadable {
                r.line = e.line;
            }
            self.rejected.push(r);
        }
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
        // Collected through a filter, the vectors grew by doubling: up to half of each unused
        // (≈ 1.2 MB at 10 000 workloads, issue 19).
        self.workloads.shrink_to_fit();
        let workloads = WorkloadIndex::new(&self.workloads);
        self.services = self
            .objects
            .values()
            .filter_map(|o| match &o.spec {
                Spec::ServiceEntry(se) => {
                    Some(services_from_entry(o.meta.namespace(), se, &workloads))
                }
                _ => None,
            })
            .flatten()
            .collect();
        self.services.shrink_to_fit();
    }

    /// Rejects objects that point at what does not exist (e.g. a route to an undefined subset):
    /// the rest of the mesh keeps serving.
    fn check_references(&mut self, rejected_rules: &BTreeMap<String, Rejected>) {
        let mut subsets: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for o in self.objects_of(Kind::DestinationRule) {
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
                    let reason = match rejected_rules.get(&host) {
                        Some(r) => format!(
                            "route to subset `{subset}` of {host}: {} {}/{} was rejected: {}",
                            Kind::DestinationRule,
                            r.namespace.as_deref().unwrap_or_default(),
                            r.name.as_deref().unwrap_or_default(),
                            r.reason
                        ),
                        None => format!(
                            "route to subset `{subset}` of {host}, which no DestinationRule defines"
                        ),
                    };
                    bad.push((key.clone(), reason));
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

    /// The accepted objects of `kind`: keys sort by kind first, so this is a range of the map,
    /// not a scan of every object (generators ask per proxy scope).
    pub fn objects_of(&self, kind: Kind) -> impl Iterator<Item = &Arc<ConfigObject>> {
        let from = ObjectKey {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        self.objects
            .range(from..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, o)| o)
    }

    fn specs<'a, T: SpecOf + 'a>(&'a self) -> impl Iterator<Item = (&'a ConfigObject, &'a T)> + 'a {
        self.objects_of(T::KIND)
            .filter_map(|o| T::of(&o.spec).map(|s| (&**o, s)))
    }

    /// The accepted objects of one kind, each by reference to the shared object.
    pub fn shared<'a, T: SpecOf + 'a>(&'a self) -> impl Iterator<Item = SpecRef<T>> + 'a {
        self.objects_of(T::KIND).filter_map(SpecRef::new)
    }

    pub fn destination_rules(&self) -> impl Iterator<Item = (&ConfigObject, &DestinationRule)> {
        self.specs()
    }

    pub fn virtual_services(&self) -> impl Iterator<Item = (&ConfigObject, &VirtualService)> {
        self.specs()
    }

    pub fn gateways(&self) -> impl Iterator<Item = (&ConfigObject, &Gateway)> {
        self.specs()
    }

    pub fn sidecars(&self) -> impl Iterator<Item = (&ConfigObject, &Sidecar)> {
        self.specs()
    }

    pub fn peer_authentications(
        &self,
    ) -> impl Iterator<Item = (&ConfigObject, &PeerAuthentication)> {
        self.specs()
    }

    pub fn authorization_policies(
        &self,
    ) -> impl Iterator<Item = (&ConfigObject, &AuthorizationPolicy)> {
        self.specs()
    }

    pub fn request_authentications(
        &self,
    ) -> impl Iterator<Item = (&ConfigObject, &crate::security::RequestAuthentication)> {
        self.specs()
    }

    /// Every JWK set meshd must fetch for the accepted RequestAuthentications, with the
    /// shortest fetch timeout any rule asks of it.
    pub fn jwks_to_fetch(&self) -> BTreeMap<crate::jwt::JwksLocation, std::time::Duration> {
        let mut out = BTreeMap::new();
        for rule in self
            .request_authentications()
            .flat_map(|(_, ra)| &ra.jwt_rules)
        {
            if let crate::jwt::KeySource::Fetched(at) = rule.key_source() {
                let timeout = out.entry(at).or_insert(rule.fetch_timeout());
                *timeout = rule.fetch_timeout().min(*timeout);
            }
        }
        out
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
mod tests;
