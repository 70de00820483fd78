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

use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Secret, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshd_model::networking::{Labels, Location, Resolution};
use meshd_model::registry::{self, Endpoint, Port, Protocol, Workload, selector_matches};
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

const CREDENTIAL_KEYS: [&str; 6] = ["tls.crt", "tls.key", "ca.crt", "cert", "key", "cacert"];
indexed!(Service, services);
indexed!(EndpointSlice, endpoint_slices);
indexed!(Endpoints, endpoints);
indexed!(Pod, pods);
indexed!(Namespace, namespaces);

impl KubeObjects {
    pub fn apply<K: Indexed>(&mut self, obj: K) {
        let key = obj.key();
        K::store(self).insert(key, Arc::new(obj));
    }

    pub fn delete<K: Indexed>(&mut self, obj: &K) {
        K::store(self).remove(&obj.key());
    }

    /// A relist: the kind's objects are exactly `objs` now; whatever vanished is gone.
    pub fn replace<K: Indexed>(&mut self, objs: impl IntoIterator<Item = K>) {
        *K::store(self) = objs.into_iter().map(|o| (o.key(), Arc::new(o))).collect();
    }

    pub fn apply_istio(&mut self, obj: IstioObject) {
        self.istio.insert(
            (obj.kind, obj.namespace.clone(), obj.name.clone()),
            Arc::new(obj),
        );
    }

    pub fn delete_istio(&mut self, kind: Kind, namespace: &str, name: &str) {
        self.istio
            .remove(&(kind, namespace.to_string(), name.to_string()));
    }

    pub fn replace_istio(&mut self, kind: Kind, objs: impl IntoIterator<Item = IstioObject>) {
        self.istio.retain(|(k, _, _), _| *k != kind);
        for o in objs {
            self.apply_istio(o);
        }
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
            "Service" => self.apply(typed::<Service>(value)?),
            "EndpointSlice" => self.apply(typed::<EndpointSlice>(value)?),
            "Endpoints" => self.apply(typed::<Endpoints>(value)?),
            "Pod" => self.apply(typed::<Pod>(value)?),
            "Namespace" => self.apply(typed::<Namespace>(value)?),
            other => match Kind::from_name(other) {
                Some(k) => self.apply_istio(IstioObject::parse(k, &value)),
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
        let by_namespace = registry::workloads_by_namespace(&workloads);
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

    fn service(
        &self,
        svc: &Service,
        pods: &PodIndex<'_>,
        slices_by_service: &BTreeMap<(&str, &str), Vec<&EndpointSlice>>,
        opts: &IndexOptions,
    ) -> Option<registry::Service> {
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        // Istio's annotation: the Service's exportTo, comma-separated.
        let export_to: Vec<String> = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EXPORT_TO_ANNOTATION))
            .map(|v| {
                v.split(',')
                    .map(|e| e.trim().to_string())
                    .filter(|e| !e.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let name = svc.metadata.name.clone()?;
        let spec = svc.spec.as_ref()?;
        let hostname = format!("{name}.{namespace}.svc.{}", opts.domain_suffix);
        let service_ports: Vec<&ServicePort> = spec
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .collect();
        let ports: Vec<Port> = service_ports
            .iter()
            .filter_map(|p| {
                let port_name = p.name.clone().unwrap_or_default();
                let number = port_number(p.port)?;
                Some(Port {
                    protocol: Protocol::detect(
                        p.app_protocol.as_deref().map(app_protocol),
                        &port_name,
                    ),
                    name: port_name,
                    number,
                    target_port: match &p.target_port {
                        None => Some(number),
                        Some(IntOrString::Int(n)) => Some(port_number(*n)?),
                        // Named: resolved per endpoint (each Pod may number it differently).
                        Some(IntOrString::String(_)) => None,
                    },
                })
            })
            .collect();
        let selector: Option<Labels> = spec
            .selector
            .clone()
            .filter(|s| !s.is_empty())
            .map(|s| s.into_iter().collect());
        let new_endpoint = |address: String, ports: BTreeMap<String, u32>, pod: Option<&Pod>| {
            let (labels, service_account, workload) = match pod {
                Some(p) => (labels_of(p), service_account_of(p), p.metadata.name.clone()),
                None => (Labels::new(), "default".to_string(), None),
            };
            Endpoint {
                address,
                ports,
                labels,
                service_account,
                namespace: namespace.clone(),
                workload,
                weight: None,
            }
        };

        if spec.type_.as_deref() == Some("ExternalName") {
            let external = spec.external_name.clone()?;
            return Some(registry::Service {
                hostname,
                namespace: namespace.clone(),
                addresses: Vec::new(),
                ports,
                resolution: Resolution::Dns,
                location: Location::MeshExternal,
                endpoints: vec![new_endpoint(external, BTreeMap::new(), None)],
                subject_alt_names: Vec::new(),
                selector: None,
                export_to,
            });
        }

        let headless = spec.cluster_ip.as_deref() == Some("None");
        let addresses: Vec<String> = if headless {
            Vec::new()
        } else {
            match (&spec.cluster_ips, &spec.cluster_ip) {
                (Some(ips), _) if !ips.is_empty() => ips.clone(),
                (_, Some(ip)) if !ip.is_empty() => vec![ip.clone()],
                _ => Vec::new(),
            }
        };

        let slices: &[&EndpointSlice] = slices_by_service
            .get(&(namespace.as_str(), name.as_str()))
            .map_or(&[], |v| v.as_slice());
        let mut endpoints: Vec<Endpoint> = Vec::new();
        if !slices.is_empty() {
            for slice in slices {
                if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                    continue;
                }
                let ports: BTreeMap<String, u32> = slice
                    .ports
                    .iter()
                    .flatten()
                    .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                    .filter_map(|p| {
                        Some((p.name.clone().unwrap_or_default(), port_number(p.port?)?))
                    })
                    .collect();
                for ep in &slice.endpoints {
                    // `ready` unset means ready (the API's rule).
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    for address in &ep.addresses {
                        let pod = pods.find(&namespace, ep.target_ref.as_ref(), address);
                        endpoints.push(new_endpoint(address.clone(), ports.clone(), pod));
                    }
                }
            }
        } else if let Some(eps) = self.endpoints.get(&(namespace.clone(), name.clone())) {
            for subset in eps.subsets.iter().flatten() {
                let ports: BTreeMap<String, u32> = subset
                    .ports
                    .iter()
                    .flatten()
                    .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                    .filter_map(|p| {
                        Some((p.name.clone().unwrap_or_default(), port_number(p.port)?))
                    })
                    .collect();
                // `notReadyAddresses` are not served.
                for a in subset.addresses.iter().flatten() {
                    let pod = pods.find(&namespace, a.target_ref.as_ref(), &a.ip);
                    endpoints.push(new_endpoint(a.ip.clone(), ports.clone(), pod));
                }
            }
        } else if let Some(sel) = &selector {
            // No endpoints controller has spoken for this Service (yet): its ready Pods.
            for pod in self
                .pods
                .range((namespace.clone(), String::new())..)
                .take_while(|((ns, _), _)| *ns == namespace)
                .map(|(_, p)| &**p)
                .filter(|p| pod_ready(p) && selector_matches(sel, &labels_of(p)))
            {
                let Some(ip) = pod_ip(pod) else { continue };
                let ports: BTreeMap<String, u32> = service_ports
                    .iter()
                    .filter_map(|sp| {
                        let number = match &sp.target_port {
                            None => port_number(sp.port)?,
                            Some(IntOrString::Int(n)) => port_number(*n)?,
                            Some(IntOrString::String(named)) => container_port(pod, named)?,
                        };
                        Some((sp.name.clone().unwrap_or_default(), number))
                    })
                    .collect();
                endpoints.push(new_endpoint(ip, ports, Some(pod)));
            }
        }
        endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        endpoints.dedup_by(|a, b| a.address == b.address && a.ports == b.ports);

        Some(registry::Service {
            hostname,
            namespace: namespace.clone(),
            addresses,
            ports,
            resolution: if headless {
                Resolution::None
            } else {
                Resolution::Static
            },
            location: Location::MeshInternal,
            endpoints,
            subject_alt_names: Vec::new(),
            selector,
            export_to,
        })
    }
}

/// A Kubernetes port number (an `i32` in the API) when it is one, 1-65535: a negative number
/// cast `as u32` became a port past 4 billion that every proxy would refuse.
fn port_number(n: i32) -> Option<u32> {
    u16::try_from(n).ok().filter(|p| *p > 0).map(u32::from)
}

/// Kubernetes' standard `appProtocol` values, in Istio's protocol names.
fn app_protocol(p: &str) -> &str {
    match p {
        "kubernetes.io/h2c" => "http2",
        "kubernetes.io/ws" => "http",
        "kubernetes.io/wss" => "https",
        other => other,
    }
}

/// Pods by name and by IP, for joining endpoints.
struct PodIndex<'a> {
    by_ip: BTreeMap<(&'a str, &'a str), &'a Pod>,
    objs: &'a KubeObjects,
}

impl<'a> PodIndex<'a> {
    fn new(objs: &'a KubeObjects) -> Self {
        let mut by_ip = BTreeMap::new();
        for ((ns, _), pod) in &objs.pods {
            if pod_terminated(pod) {
                continue;
            }
            for ip in pod_ips(pod) {
                by_ip.insert((ns.as_str(), ip), &**pod);
            }
        }
        PodIndex { by_ip, objs }
    }

    fn find(
        &self,
        namespace: &str,
        target: Option<&k8s_openapi::api::core::v1::ObjectReference>,
        address: &str,
    ) -> Option<&'a Pod> {
        if let Some(t) = target
            && t.kind.as_deref() == Some("Pod")
            && let Some(name) = &t.name
        {
            let ns = t.namespace.clone().unwrap_or_else(|| namespace.to_string());
            if let Some(p) = self.objs.pods.get(&(ns, name.clone())) {
                return Some(p);
            }
        }
        self.by_ip.get(&(namespace, address)).copied()
    }
}

fn labels_of(pod: &Pod) -> Labels {
    pod.metadata
        .labels
        .as_ref()
        .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn service_account_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| {
            s.service_account_name
                .clone()
                .or_else(|| s.service_account.clone())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

fn pod_terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty())
}

fn pod_ips(pod: &Pod) -> Vec<&str> {
    let Some(st) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<&str> = st.pod_ips.iter().flatten().map(|p| p.ip.as_str()).collect();
    if let Some(ip) = st.pod_ip.as_deref() {
        ips.push(ip);
    }
    ips.retain(|ip| !ip.is_empty());
    ips.dedup();
    ips
}

/// The Pod's `Ready` condition is `True` (and it has not terminated).
pub fn pod_ready(pod: &Pod) -> bool {
    !pod_terminated(pod)
        && pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn container_port(pod: &Pod, name: &str) -> Option<u32> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| port_number(p.container_port))
}

/// A Pod that can run a sidecar: it has an address and has not terminated.
fn workload(pod: &Pod) -> Option<Workload> {
    if pod_terminated(pod) {
        return None;
    }
    let address = pod_ip(pod)?;
    let ports = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some((p.name.clone()?, port_number(p.container_port)?)))
        .collect();
    Some(Workload {
        name: pod.metadata.name.clone()?,
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        address,
        labels: labels_of(pod),
        service_account: service_account_of(pod),
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = include_str!("testdata/cluster.yaml");
    const ENDPOINTS_V1: &str = include_str!("testdata/endpoints-v1.yaml");

    fn mesh_of(text: &str) -> MeshConfig {
        KubeObjects::from_yaml(text)
            .unwrap()
            .mesh(&IndexOptions::default())
    }

    fn service<'a>(mesh: &'a MeshConfig, host: &str) -> &'a registry::Service {
        mesh.service(host)
            .unwrap_or_else(|| panic!("no service {host}: {:?}", mesh.services))
    }

    /// The duration bomb (which once panicked the watch and crash-looped every replica) as a
    /// custom resource: rejected with its namespace, name and field; every other object of the
    /// cluster still serves.
    #[test]
    fn a_duration_bomb_resource_is_rejected_and_the_rest_serves() {
        let bomb = "\
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bomb, namespace: attacker}
spec:
  hosts: [billing-service.voicecore-ai.svc.cluster.local]
  http:
  - route: [{destination: {host: billing-service.voicecore-ai.svc.cluster.local}}]
    timeout: 99999999999999999999s
";
        let clean = mesh_of(CLUSTER);
        let mesh = mesh_of(&format!("{CLUSTER}{bomb}"));
        assert_eq!(mesh.services, clean.services);
        assert_eq!(mesh.workloads, clean.workloads);
        assert_eq!(mesh.objects, clean.objects);
        let bomb: Vec<&Rejected> = mesh
            .rejected
            .iter()
            .filter(|r| r.name.as_deref() == Some("bomb"))
            .collect();
        let [r] = bomb[..] else {
            panic!("{:?}", mesh.rejected)
        };
        assert_eq!(r.namespace.as_deref(), Some("attacker"));
        assert_eq!(r.kind, Some(Kind::VirtualService));
        assert!(r.reason.contains("spec.http[0].timeout"), "{r}");
        assert!(r.reason.contains("out of range"), "{r}");
    }

    /// Port numbers are `i32` in the Kubernetes API: one outside 1-65535 is dropped, not
    /// wrapped into a port past 4 billion.
    #[test]
    fn out_of_range_kubernetes_ports_are_dropped() {
        assert_eq!(port_number(8080), Some(8080));
        assert_eq!(port_number(65535), Some(65535));
        for bad in [0, -1, 65536, i32::MIN, i32::MAX] {
            assert_eq!(port_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn services_from_endpoint_slices_joined_with_pods() {
        let mesh = mesh_of(CLUSTER);
        let billing = service(&mesh, "billing-service.voicecore-ai.svc.cluster.local");
        assert_eq!(billing.addresses, ["10.96.12.34"]);
        assert_eq!(billing.resolution, Resolution::Static);
        assert_eq!(billing.location, Location::MeshInternal);
        // The UDP port is not the mesh's.
        let ports: Vec<(&str, u32, Protocol, Option<u32>)> = billing
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.number, p.protocol, p.target_port))
            .collect();
        assert_eq!(
            ports,
            [
                ("http", 8080, Protocol::Http, None),
                ("api", 9090, Protocol::Grpc, Some(9091))
            ]
        );
        assert_eq!(
            billing.selector.as_ref().unwrap().get("app").unwrap(),
            "billing-service"
        );
        // The terminating (not ready) endpoint is not served.
        let addrs: Vec<&str> = billing
            .endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect();
        assert_eq!(addrs, ["10.44.0.17", "10.44.0.19"]);
        let v1 = &billing.endpoints[0];
        assert_eq!(v1.service_account, "billing");
        assert_eq!(v1.namespace, "voicecore-ai");
        assert_eq!(
            v1.workload.as_deref(),
            Some("billing-service-v1-7d9f8c6b5-x2k4p")
        );
        assert_eq!(v1.labels.get("version").unwrap(), "v1");
        // The named targetPort resolves to the slice's port for that service port.
        assert_eq!(v1.port_for(&billing.ports[0]), 8081);
        assert_eq!(v1.port_for(&billing.ports[1]), 9091);
        assert_eq!(billing.endpoints[1].labels.get("version").unwrap(), "v2");
        assert_eq!(
            billing.service_accounts(),
            [("voicecore-ai".to_string(), "billing".to_string())]
        );
    }

    #[test]
    fn selector_service_without_endpoints_object_uses_ready_pods() {
        let mesh = mesh_of(CLUSTER);
        let pay = service(&mesh, "payment-service.voicecore-ai.svc.cluster.local");
        assert_eq!(pay.ports[0].protocol, Protocol::Http, "http- prefix");
        assert_eq!(pay.endpoints.len(), 1, "{:?}", pay.endpoints);
        let ep = &pay.endpoints[0];
        assert_eq!(ep.address, "10.44.0.30");
        assert_eq!(ep.service_account, "payment-service");
        assert_eq!(ep.port_for(&pay.ports[0]), 8088, "named targetPort `web`");
    }

    #[test]
    fn headless_and_external_name_services() {
        let mesh = mesh_of(CLUSTER);
        let pg = service(&mesh, "postgres.voicecore-ai.svc.cluster.local");
        assert!(pg.addresses.is_empty());
        assert_eq!(pg.resolution, Resolution::None);
        assert_eq!(pg.ports[0].protocol, Protocol::Tcp);
        assert_eq!(
            pg.export_to,
            [".", "billing-team"],
            "Istio's exportTo annotation"
        );
        assert!(pg.visible_in("voicecore-ai") && pg.visible_in("billing-team"));
        assert!(!pg.visible_in("shop"));
        let ext = service(&mesh, "speech-api.voicecore-ai.svc.cluster.local");
        assert_eq!(ext.resolution, Resolution::Dns);
        assert_eq!(ext.location, Location::MeshExternal);
        assert_eq!(ext.endpoints[0].address, "speech.example.com");
        assert_eq!(ext.ports[0].protocol, Protocol::Https);
    }

    #[test]
    fn pods_become_workloads() {
        let mesh = mesh_of(CLUSTER);
        let names: Vec<&str> = mesh.workloads.iter().map(|w| w.name.as_str()).collect();
        // Not the pending pod without an IP, not the finished Job.
        assert_eq!(
            names,
            [
                "billing-service-v1-7d9f8c6b5-q8w7e",
                "billing-service-v1-7d9f8c6b5-x2k4p",
                "billing-service-v2-5c4b3a291-m3n4b",
                "payment-service-v1-6b5a4c3d2-z9y8x",
            ]
        );
        let w = mesh
            .workload("billing-service-v1-7d9f8c6b5-x2k4p", "voicecore-ai")
            .unwrap();
        assert_eq!(w.address, "10.44.0.17");
        assert_eq!(w.service_account, "billing");
        assert_eq!(w.ports.get("http"), Some(&8081));
        assert_eq!(w.ports.get("grpc"), Some(&9091));
        assert_eq!(w.labels.get("version").unwrap(), "v1");
    }

    #[test]
    fn istio_resources_are_validated_like_files() {
        let mesh = mesh_of(CLUSTER);
        let kinds: Vec<(Kind, &str)> = mesh
            .objects
            .values()
            .map(|o| (o.kind(), o.meta.name.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (Kind::ServiceEntry, "billing-batch"),
                (Kind::DestinationRule, "billing-service"),
                (Kind::VirtualService, "billing-service"),
                (Kind::PeerAuthentication, "default"),
            ]
        );
        assert_eq!(mesh.rejected.len(), 1, "{:?}", mesh.rejected);
        let r = &mesh.rejected[0];
        assert_eq!(r.kind, Some(Kind::VirtualService));
        assert_eq!(r.name.as_deref(), Some("broken"));
        assert_eq!(r.namespace.as_deref(), Some("voicecore-ai"));
        assert!(r.reason.contains("frobnicate"), "{}", r.reason);
        assert_eq!(
            r.file,
            "kubernetes:networking.istio.io/VirtualService/voicecore-ai/broken"
        );
        // kubectl's last-applied annotation is not config.
        let dr = mesh.destination_rules().next().unwrap().0;
        assert!(dr.meta.annotations.is_empty());
        // A ServiceEntry's workloadSelector picks Pods.
        let batch = service(&mesh, "billing-batch.voicecore.internal");
        let addrs: Vec<&str> = batch.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addrs, ["10.44.0.19"]);
        assert_eq!(batch.endpoints[0].service_account, "billing");
    }

    #[test]
    fn cross_object_checks_follow_deletions() {
        let mut objs = KubeObjects::from_yaml(CLUSTER).unwrap();
        objs.delete_istio(Kind::DestinationRule, "voicecore-ai", "billing-service");
        let mesh = objs.mesh(&IndexOptions::default());
        assert!(
            mesh.rejected
                .iter()
                .any(|r| r.name.as_deref() == Some("billing-service")
                    && r.reason.contains("subset `v1`")),
            "{:?}",
            mesh.rejected
        );
        assert_eq!(mesh.virtual_services().count(), 0);
    }

    #[test]
    fn core_endpoints_where_there_are_no_slices() {
        let mesh = mesh_of(ENDPOINTS_V1);
        let crm = service(&mesh, "legacy-crm.default.svc.cluster.local");
        assert!(crm.selector.is_none());
        let addrs: Vec<&str> = crm.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(
            addrs,
            ["192.0.2.10", "192.0.2.11"],
            "notReadyAddresses are not served"
        );
        assert_eq!(crm.endpoints[0].service_account, "default");
        assert_eq!(crm.endpoints[0].workload, None);
        assert_eq!(crm.endpoints[0].port_for(&crm.ports[0]), 8080);
        let web = service(&mesh, "web.default.svc.cluster.local");
        assert_eq!(web.ports[0].name, "");
        assert_eq!(web.endpoints.len(), 1);
        assert_eq!(web.endpoints[0].service_account, "web");
        assert_eq!(web.endpoints[0].labels.get("version").unwrap(), "v3");
        assert_eq!(web.endpoints[0].port_for(&web.ports[0]), 8080);
    }

    #[test]
    fn a_relist_removes_what_vanished() {
        let mut objs = KubeObjects::from_yaml(CLUSTER).unwrap();
        let before = objs.mesh(&IndexOptions::default());
        // The same objects again: the same mesh (publishing compares for equality).
        assert_eq!(objs.clone().mesh(&IndexOptions::default()), before);
        // Relist pods: only the v2 pod is left.
        let keep: Vec<Pod> = objs
            .pods
            .values()
            .filter(|p| p.metadata.name.as_deref() == Some("billing-service-v2-5c4b3a291-m3n4b"))
            .map(|p| (**p).clone())
            .collect();
        objs.replace(keep);
        objs.replace::<Service>(
            objs.services
                .values()
                .filter(|s| s.metadata.name.as_deref() != Some("postgres"))
                .map(|s| (**s).clone())
                .collect::<Vec<_>>(),
        );
        objs.replace_istio(Kind::VirtualService, Vec::new());
        let after = objs.mesh(&IndexOptions::default());
        assert_eq!(after.workloads.len(), 1);
        assert!(
            after
                .service("postgres.voicecore-ai.svc.cluster.local")
                .is_none()
        );
        assert_eq!(after.virtual_services().count(), 0);
        assert!(
            after.rejected.is_empty(),
            "the broken VirtualService went too"
        );
        // The slice still names the v1 pod, but without it the endpoint has no pod labels.
        let billing = service(&after, "billing-service.voicecore-ai.svc.cluster.local");
        assert_eq!(billing.endpoints[0].labels, Labels::new());
        let payments = service(&after, "payment-service.voicecore-ai.svc.cluster.local");
        assert!(payments.endpoints.is_empty());
    }

    #[test]
    fn injection_namespaces_by_label() {
        let objs = KubeObjects::from_yaml(CLUSTER).unwrap();
        assert_eq!(
            objs.injection_namespaces().into_iter().collect::<Vec<_>>(),
            ["voicecore-ai"]
        );
    }

    /// The API server's JSON spells every map key as a string: an integer-keyed map
    /// (PeerAuthentication `portLevelMtls`) is read from it directly, not rejected whole (which
    /// once silently dropped the workload's STRICT mode). A bad field is reported by the
    /// object's name and the field's path, with no line of any internal rendering.
    #[test]
    fn integer_keyed_maps_from_the_api_server_are_read() {
        let pa = |port_level: serde_json::Value| {
            serde_json::json!({
                "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": {"name": "p", "namespace": "shop"},
                "spec": {"selector": {"matchLabels": {"app": "x"}}, "mtls": {"mode": "STRICT"},
                         "portLevelMtls": port_level}
            })
        };
        let ok = IstioObject::parse(
            Kind::PeerAuthentication,
            &pa(serde_json::json!({"8080": {"mode": "DISABLE"}})),
        );
        let o = ok.parsed.expect("accepted");
        let Spec::PeerAuthentication(spec) = &o.spec else {
            panic!("{o:?}")
        };
        use meshd_model::security::MtlsMode;
        assert_eq!(spec.mtls.as_ref().unwrap().mode, MtlsMode::Strict);
        assert_eq!(spec.port_level_mtls[&8080].mode, MtlsMode::Disable);

        let bad = IstioObject::parse(
            Kind::PeerAuthentication,
            &pa(serde_json::json!({"8080": {"mode": "SOMETIMES"}})),
        );
        let r = bad.parsed.unwrap_err();
        assert_eq!(r.line, 0);
        let shown = r.to_string();
        assert!(
            shown.starts_with("PeerAuthentication shop/p: spec.portLevelMtls.8080.mode: "),
            "{shown}"
        );
        assert!(shown.contains("SOMETIMES"), "{shown}");
    }

    /// From the cluster too, a route to a rejected DestinationRule's subsets names the rule.
    #[test]
    fn a_route_to_a_rejected_rules_subsets_names_it() {
        let mut objs = KubeObjects::default();
        objs.apply_istio(IstioObject::parse(
            Kind::DestinationRule,
            &serde_json::json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "cart", "namespace": "shop"},
                "spec": {"host": "cart", "trafficPolicy": {"loadBalancer": {"simple": "SOMETIMES"}},
                         "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}
            }),
        ));
        objs.apply_istio(IstioObject::parse(
            Kind::VirtualService,
            &serde_json::json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "cart", "namespace": "shop"},
                "spec": {"hosts": ["cart"],
                         "http": [{"route": [{"destination": {"host": "cart", "subset": "v1"}}]}]}
            }),
        ));
        let mesh = objs.mesh(&IndexOptions::default());
        let shown: Vec<String> = mesh.rejected.iter().map(|r| r.to_string()).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown[0]
                .starts_with("DestinationRule shop/cart: spec.trafficPolicy.loadBalancer.simple: "),
            "{shown:?}"
        );
        assert!(
            shown[1].starts_with("VirtualService shop/cart: route to subset `v1` of cart.shop.svc.cluster.local: DestinationRule shop/cart was rejected: "),
            "{shown:?}"
        );
    }

    #[test]
    fn server_fields_do_not_change_the_parsed_object() {
        let v: serde_json::Value = serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": "s", "namespace": "a", "resourceVersion": "1", "uid": "u",
                          "managedFields": [{"manager": "kubectl"}], "generation": 1},
            "spec": {}, "status": {"observedGeneration": "1"}
        });
        let mut w = v.clone();
        w["metadata"]["resourceVersion"] = "2".into();
        w["status"] = serde_json::json!({"validationMessages": []});
        let a = IstioObject::parse(Kind::Sidecar, &v);
        let b = IstioObject::parse(Kind::Sidecar, &w);
        assert!(a.parsed.is_ok(), "{:?}", a.parsed);
        assert_eq!(a.parsed, b.parsed);
        let wrong = IstioObject::parse(Kind::Gateway, &v);
        assert!(wrong.parsed.unwrap_err().reason.contains("kind Sidecar"));
    }
}
