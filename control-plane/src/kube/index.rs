//! The Kubernetes registry as a pure function: cluster objects in, `MeshConfig` out.
//!
//! [`KubeObjects`] holds the last known state of every watched object (kept current by
//! `kube::watch`, or filled from YAML fixtures in tests); [`KubeObjects::mesh`] derives the mesh
//! config from it with no I/O:
//!
//! - a Service becomes a `registry::Service` named `<svc>.<ns>.svc.<domain>`, its ClusterIP(s) as
//!   addresses, its TCP ports with Istio's protocol rule (`appProtocol`, else the port name's
//!   prefix), and endpoints from its EndpointSlices (discovery.k8s.io/v1), else its core Endpoints
//!   (servers without EndpointSlice v1, e.g. 1.20), else — for a selector Service no endpoints
//!   controller has reconciled yet — its selected ready Pods; every endpoint is joined with its
//!   Pod (by `targetRef`, else by IP) for labels and service account;
//! - a Pod with an IP that has not terminated becomes a `Workload`;
//! - an Istio custom resource's JSON goes through `meshd_model`'s reader and validator, the same
//!   as a file's document: an invalid one lands in `MeshConfig::rejected` with its reason and
//!   field path, the rest serves.

use crate::reg_events::RegEvent;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use meshd_model::registry::{self, Workload};
use meshd_model::{
    ConfigError, ConfigObject, FileConfig, Kind, MeshConfig, ObjectKey, Rejected, Spec,
};
use serde::Deserialize as _;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Namespace label that turns sidecar injection (and the root-cert ConfigMap) on.
pub const INJECTION_LABEL: &str = "istio-injection";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexOptions {
    /// DNS suffix of Service hostnames (`<svc>.<ns>.svc.<domain_suffix>`).
    pub domain_suffix: String,
    /// Watch Secrets for Gateway `credentialName` (needs cluster-wide read of Secrets).
    pub gateway_credentials: bool,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            domain_suffix: "cluster.local".into(),
            gateway_credentials: true,
        }
    }
}

/// `(namespace, name)`; cluster-scoped objects have an empty namespace.
pub type ObjKey = (String, String);

/// One Istio custom resource, parsed when it arrives (not on every rebuild).
#[derive(Clone, Debug, PartialEq)]
pub struct IstioObject {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub resource_version: Option<String>,
    pub parsed: Result<Arc<ConfigObject>, Rejected>,
    /// A rejected DestinationRule's host (what routes to its subsets name).
    pub rejected_host: Option<Box<String>>,
}

/// Where a custom resource is said to come from in `file:line` messages.
pub fn source_name(kind: Kind, namespace: &str, name: &str) -> String {
    format!("kubernetes:{}/{kind}/{namespace}/{name}", kind.group())
}

impl IstioObject {
    /// Reads a custom resource (the API server's JSON) into the model directly, with the same
    /// reading as `meshd analyze` and file mode give a YAML document; a rejection names the
    /// object and the field's path. A panic while reading it (a meshd bug) rejects this object
    /// only: the watch, and every other object, carry on.
    pub fn parse(kind: Kind, value: &serde_json::Value) -> IstioObject {
        std::panic::catch_unwind(|| Self::parse_unguarded(kind, value)).unwrap_or_else(|panic| {
            let meta = &value["metadata"];
            let namespace = meta["namespace"].as_str().unwrap_or("default").to_string();
            let name = meta["name"].as_str().unwrap_or_default().to_string();
            let reason = format!(
                "reading this object panicked (a meshd bug): {}",
                crate::supervise::panic_text(&*panic)
            );
            tracing::error!(%kind, %namespace, %name, "{reason}");
            IstioObject {
                kind,
                parsed: Err(Rejected {
                    file: source_name(kind, &namespace, &name),
                    line: 0,
                    kind: Some(kind),
                    namespace: Some(namespace.clone()),
                    name: Some(name.clone()),
                    reason,
                }),
                namespace,
                name,
                resource_version: meta["resourceVersion"].as_str().map(str::to_string),
                rejected_host: None,
            }
        })
    }

    fn parse_unguarded(kind: Kind, value: &serde_json::Value) -> IstioObject {
        let meta = &value["metadata"];
        let namespace = meta["namespace"].as_str().unwrap_or("default").to_string();
        let name = meta["name"].as_str().unwrap_or_default().to_string();
        let resource_version = meta["resourceVersion"].as_str().map(str::to_string);
        let file = source_name(kind, &namespace, &name);
        let reject = |line: usize, reason: String| Rejected {
            file: file.clone(),
            line,
            kind: Some(kind),
            namespace: Some(namespace.clone()),
            name: Some(name.clone()),
            reason,
        };
        // An object whose header does not read (no name, another kind) is still named by what
        // the watch says it is.
        let named = |mut r: Rejected| {
            r.kind.get_or_insert(kind);
            r.namespace.get_or_insert_with(|| namespace.clone());
            r.name.get_or_insert_with(|| name.clone());
            r
        };
        // Only what a user wrote: server-managed metadata (managedFields, uid…) stays out, so a
        // status-only update does not look like a config change.
        let mut doc = serde_json::Map::new();
        for key in ["apiVersion", "kind", "spec"] {
            if let Some(v) = value.get(key) {
                doc.insert(key.into(), v.clone());
            }
        }
        let mut m = serde_json::Map::new();
        for key in ["name", "namespace", "labels", "annotations"] {
            if let Some(v) = meta.get(key).filter(|v| !v.is_null()) {
                m.insert(key.into(), v.clone());
            }
        }
        // Kubernetes keeps the last `kubectl apply` in an annotation; it is not config.
        if let Some(serde_json::Value::Object(a)) = m.get_mut("annotations") {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        doc.insert("metadata".into(), serde_json::Value::Object(m));
        let doc = serde_json::Value::Object(doc);
        let mut rejected_host = None;
        let parsed = match meshd_model::cluster_object(&file, &doc) {
            Err(e) => {
                rejected_host = e.host.clone();
                Err(named(Rejected::from_error(&e)))
            }
            Ok(o) if o.kind() == kind => Ok(Arc::new(o)),
            Ok(o) => Err(reject(
                0,
                format!("watched as {kind} but the object says kind {}", o.kind()),
            )),
        };
        IstioObject {
            kind,
            namespace,
            name,
            resource_version,
            parsed,
            rejected_host,
        }
    }
}

/// Everything the registry is derived from, as last seen from the API server.
#[derive(Clone, Debug, Default)]
pub struct KubeObjects {
    pub services: BTreeMap<ObjKey, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjKey, Arc<EndpointSlice>>,
    pub endpoints: BTreeMap<ObjKey, Arc<Endpoints>>,
    pub pods: BTreeMap<ObjKey, Arc<Pod>>,
    pub namespaces: BTreeMap<ObjKey, Arc<Namespace>>,
    /// Secrets, with the data of those that hold no TLS credential dropped ([`Indexed::slim`]).
    pub secrets: BTreeMap<ObjKey, Arc<Secret>>,
    pub istio: BTreeMap<(Kind, String, String), Arc<IstioObject>>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// A Kubernetes object kind the index stores.
pub trait Indexed: Sized {
    fn store(objs: &mut KubeObjects) -> &mut BTreeMap<ObjKey, Arc<Self>>;
    fn key(&self) -> ObjKey;
    /// Drops what the index never reads, before the object is kept.
    fn slim(&mut self) {}
}

macro_rules! indexed {
    ($ty:ty, $field:ident) => {
        impl Indexed for $ty {
            fn store(objs: &mut KubeObjects) -> &mut BTreeMap<ObjKey, Arc<Self>> {
                &mut objs.$field
            }
            fn key(&self) -> ObjKey {
                key_of(&self.metadata)
            }
        }
    };
}

impl Indexed for Secret {
    fn store(objs: &mut KubeObjects) -> &mut BTreeMap<ObjKey, Arc<Self>> {
        &mut objs.secrets
    }
    fn key(&self) -> ObjKey {
        key_of(&self.metadata)
    }
    /// Only TLS credentials are read (Gateway `credentialName`); any other Secret (tokens,
    /// Helm releases, application secrets) is kept as its name alone.
    fn slim(&mut self) {
        let has_credential_keys = self
            .data
            .as_ref()
            .is_some_and(|d| CREDENTIAL_KEYS.iter().any(|k| d.contains_key(*k)));
        if !has_credential_keys {
            self.data = None;
        }
        self.string_data = None;
    }
}

const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

const CREDENTIAL_KEYS: [&str; 7] = [
    "tls.crt", "tls.key", "ca.crt", "cert", "key", "cacert", "ca.crl",
];
indexed!(Service, services);
indexed!(EndpointSlice, endpoint_slices);
indexed!(Endpoints, endpoints);
indexed!(Pod, pods);
indexed!(Namespace, namespaces);

impl KubeObjects {
    pub fn apply<K: Indexed>(&mut self, obj: K) -> RegEvent {
        let key = obj.key();
        match K::store(self).insert(key, Arc::new(obj)) {
            None => RegEvent::Add,
            Some(_) => RegEvent::Update,
        }
    }

    pub fn delete<K: Indexed>(&mut self, obj: &K) -> RegEvent {
        K::store(self).remove(&obj.key());
        RegEvent::Delete
    }

    /// A relist: the kind's objects are exactly `objs` now; whatever vanished is gone. Returns
    /// how many there are.
    pub fn replace<K: Indexed>(&mut self, objs: impl IntoIterator<Item = K>) -> usize {
        *K::store(self) = objs.into_iter().map(|o| (o.key(), Arc::new(o))).collect();
        K::store(self).len()
    }

    pub fn apply_istio(&mut self, obj: IstioObject) -> RegEvent {
        match self.istio.insert(
            (obj.kind, obj.namespace.clone(), obj.name.clone()),
            Arc::new(obj),
        ) {
            None => RegEvent::Add,
            Some(_) => RegEvent::Update,
        }
    }

    pub fn delete_istio(&mut self, kind: Kind, namespace: &str, name: &str) -> RegEvent {
        self.istio
            .remove(&(kind, namespace.to_string(), name.to_string()));
        RegEvent::Delete
    }

    /// A relist of one Istio kind; returns how many objects it holds.
    pub fn replace_istio(
        &mut self,
        kind: Kind,
        objs: impl IntoIterator<Item = IstioObject>,
    ) -> usize {
        self.istio.retain(|(k, _, _), _| *k != kind);
        let mut count = 0;
        for o in objs {
            self.apply_istio(o);
            count += 1;
        }
        count
    }

    /// Loads objects from YAML (`kubectl get -o yaml` documents or `List`s): fixtures and tests.
    pub fn from_yaml(text: &str) -> Result<KubeObjects, String> {
        let mut objs = KubeObjects::default();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_json::Value::deserialize(doc).map_err(|e| e.to_string())?;
            objs.add_value(value)?;
        }
        Ok(objs)
    }

    fn add_value(&mut self, value: serde_json::Value) -> Result<(), String> {
        fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, String> {
            serde_json::from_value(v).map_err(|e| e.to_string())
        }
        if value.is_null() {
            return Ok(());
        }
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "List" | "ServiceList" | "PodList" | "EndpointsList" | "EndpointSliceList"
            | "NamespaceList" => {
                if let serde_json::Value::Array(items) = value["items"].clone() {
                    for mut item in items {
                        // Items of a typed list omit apiVersion/kind.
                        if item.get("kind").is_none() {
                            item["kind"] = kind.trim_end_matches("List").into();
                            item["apiVersion"] = api_version.clone().into();
                        }
                        self.add_value(item)?;
                    }
                }
            }
            "Service" => {
                self.apply(typed::<Service>(value)?);
            }
            "EndpointSlice" => {
                self.apply(typed::<EndpointSlice>(value)?);
            }
            "Endpoints" => {
                self.apply(typed::<Endpoints>(value)?);
            }
            "Pod" => {
                self.apply(typed::<Pod>(value)?);
            }
            "Namespace" => {
                self.apply(typed::<Namespace>(value)?);
            }
            other => match Kind::from_name(other) {
                Some(k) => {
                    self.apply_istio(IstioObject::parse(k, &value));
                }
                None => return Err(format!("unsupported kind `{other}` in fixture")),
            },
        }
        Ok(())
    }

    /// Namespaces whose pods get sidecars (`istio-injection=enabled`).
    pub fn injection_namespaces(&self) -> BTreeSet<String> {
        self.namespaces
            .values()
            .filter(|ns| {
                ns.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(INJECTION_LABEL))
                    .is_some_and(|v| v == "enabled")
            })
            .filter_map(|ns| ns.metadata.name.clone())
            .collect()
    }

    /// Each namespace's labels.
    pub fn namespace_labels(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.namespaces
            .values()
            .filter_map(|ns| {
                let name = ns.metadata.name.clone()?;
                Some((name, ns.metadata.labels.clone().unwrap_or_default()))
            })
            .collect()
    }

    /// The mesh config these objects describe.
    pub fn mesh(&self, opts: &IndexOptions) -> MeshConfig {
        // Rejections go in too, so a route to a rejected DestinationRule's subsets says why.
        let files: Vec<FileConfig> = self
            .istio
            .values()
            .map(|o| match &o.parsed {
                Ok(obj) => FileConfig {
                    objects: vec![obj.clone()],
                    ..Default::default()
                },
                Err(r) => FileConfig {
                    rejected: vec![ConfigError {
                        file: r.file.clone(),
                        line: r.line,
                        message: r.reason.clone(),
                        object: Some(ObjectKey {
                            kind: o.kind,
                            namespace: o.namespace.clone(),
                            name: o.name.clone(),
                        }),
                        host: o.rejected_host.clone(),
                    }],
                    ..Default::default()
                },
            })
            .collect();
        // Cross-object checks (routes to undefined subsets…) are the same as in file mode.
        let mut mesh = MeshConfig::assemble(&files);
        for ((ns, name), secret) in &self.secrets {
            let Some(data) = &secret.data else { continue };
            let data: BTreeMap<String, Vec<u8>> =
                data.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect();
            match meshd_model::credential::from_secret_data(&data) {
                Ok(Some(tls)) => {
                    mesh.credentials.insert((ns.clone(), name.clone()), tls);
                }
                Ok(None) => {}
                Err(reason) => mesh.rejected.push(Rejected {
                    file: format!("kubernetes://{ns}/secrets/{name}"),
                    line: 0,
                    kind: None,
                    namespace: Some(ns.clone()),
                    name: Some(name.clone()),
                    reason: format!("Secret {ns}/{name} cannot be a gateway credential: {reason}"),
                }),
            }
        }
        mesh.rejected.sort_by(|a, b| {
            (&a.kind, &a.namespace, &a.name, &a.reason).cmp(&(
                &b.kind,
                &b.namespace,
                &b.name,
                &b.reason,
            ))
        });

        let pods = PodIndex::new(self);
        let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
        for ((ns, _), slice) in &self.endpoint_slices {
            if let Some(svc) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            {
                slices
                    .entry((ns.as_str(), svc.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        let mut workloads: Vec<Workload> = self.pods.values().filter_map(|p| workload(p)).collect();
        workloads.append(&mut mesh.workloads);
        let mut services: Vec<registry::Service> = self
            .services
            .values()
            .filter_map(|s| self.service(s, &pods, &slices, opts))
            .collect();
        let kube_hosts: BTreeSet<String> = services.iter().map(|s| s.hostname.clone()).collect();
        // ServiceEntries again, now that their workloadSelector can pick Pods too.
        let by_namespace = registry::WorkloadIndex::new(&workloads);
        for o in mesh.objects.values() {
            if let Spec::ServiceEntry(se) = &o.spec {
                for svc in registry::services_from_entry(o.meta.namespace(), se, &by_namespace) {
                    if kube_hosts.contains(&svc.hostname) {
                        mesh.rejected.push(Rejected {
                            file: o.source.file.clone(),
                            line: o.source.line,
                            kind: Some(Kind::ServiceEntry),
                            namespace: Some(o.meta.namespace().to_string()),
                            name: Some(o.meta.name.clone()),
                            reason: format!(
                                "host {} is a Kubernetes Service; the Service wins",
                                svc.hostname
                            ),
                        });
                    } else {
                        services.push(svc);
                    }
                }
            }
        }
        workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        mesh.workloads = workloads;
        mesh.services = services;
        mesh
    }
}

#[path = "index_services.rs"]
mod services;
pub use services::pod_ready;
use services::{PodIndex, workload};

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
