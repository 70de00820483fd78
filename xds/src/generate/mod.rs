//! Mesh model → per-proxy Envoy resources. Pure: a `MeshSnapshot` is built once per config
//! change; resources many proxies share (clusters, endpoints, a scope's listeners and routes) are
//! encoded once per snapshot and handed out by reference.

pub mod authz;
/// The AuthorizationPolicy translation table, shared with the end-to-end tests.
#[cfg(any(test, feature = "test-tables"))]
pub mod authz_cases;
pub mod cluster;
pub mod common;
pub mod envoyfilter;
pub mod gateway;
pub mod l4;
pub mod listener;
pub mod route;
pub mod telemetry;

use crate::proxy::{NodeType, Proxy};
use crate::resource::{
    CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource, ResourceSet, SECRET, SharedResource,
};
use bytes::Bytes;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use meshd_model::mesh::qualify_host;
use meshd_model::networking::{
    DestinationRule, Labels, OutboundMode, Sidecar, Subset, VirtualService,
};
use meshd_model::registry::{Endpoint, Port, Protocol, Service, Workload, selector_matches};
use meshd_model::security::{MtlsMode, PeerAuthentication};
use meshd_model::{ConfigObject, MeshConfig, SpecRef};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

/// Resources for one proxy, by type URL then name.
pub type ProxyResources = BTreeMap<&'static str, ResourceSet>;

use crate::resource::{Layer, LayerMap, reuse_layer};

/// A cache entry built once even when many proxies ask for it at the same moment.
type Once<T> = Arc<OnceLock<T>>;

#[derive(Clone, Debug, PartialEq)]
pub struct GenOptions {
    pub trust_domain: String,
    pub domain_suffix: String,
    /// Istio's root namespace: mesh-wide PeerAuthentication and Sidecar live here.
    pub root_namespace: String,
    /// Address (HOST:PORT) of a Zipkin-compatible collector: every proxy gets a `zipkin`
    /// cluster to it (CDS) and traces HTTP requests at `trace_sampling` %; no tracing when unset.
    pub zipkin_cluster: Option<String>,
    pub trace_sampling: f64,
    pub access_log: bool,
    /// Stream every proxy's access log to meshd over gRPC (the `xds-grpc` cluster of
    /// `meshd bootstrap`) for Istio's request metrics; see [`telemetry`].
    pub request_telemetry: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            trust_domain: "cluster.local".into(),
            domain_suffix: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            zipkin_cluster: None,
            trace_sampling: 100.0,
            access_log: true,
            request_telemetry: true,
        }
    }
}

/// Lookups over the accepted config.
pub struct Index {
    pub domain_suffix: String,
    pub root_namespace: String,
    /// Positions in `config.services`, by host (the last of a duplicated host).
    services: BTreeMap<String, usize>,
    destination_rules: BTreeMap<String, SpecRef<DestinationRule>>,
    /// Every DestinationRule of a host, with its namespace.
    dr_candidates: BTreeMap<String, Vec<(String, SpecRef<DestinationRule>)>>,
    restricted: bool,
    /// VirtualServices for sidecars (bound to `mesh`), by qualified host.
    mesh_routes: BTreeMap<String, Vec<(String, SpecRef<VirtualService>)>>,
    peer_authn: Vec<(String, PeerAuthentication)>,
    sidecars: Vec<(ConfigObject, Sidecar)>,
    /// Some mesh route matches on `sourceLabels`: outbound routes then depend on the proxy's
    /// labels, not only on its namespace and Sidecar.
    uses_source_labels: bool,
    /// A sidecar's outbound routes for a host depend on the proxy's namespace: some `exportTo`
    /// narrows what it sees, or some mesh route matches on `sourceNamespace`.
    routes_see_namespace: bool,
    /// Workloads by (namespace, name): a proxy's is looked up on every push.
    workloads: HashMap<(String, String), usize>,
    pub(crate) config: Arc<MeshConfig>,
}

impl Index {
    pub fn new(config: Arc<MeshConfig>, opts: &GenOptions) -> Index {
        let suffix = opts.domain_suffix.clone();
        let services = config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.hostname.clone(), i))
            .collect();
        let mut dr_candidates: BTreeMap<String, Vec<(String, SpecRef<DestinationRule>)>> =
            BTreeMap::new();
        for dr in config.shared::<DestinationRule>() {
            let ns = dr.object().meta.namespace();
            let host = qualify_host(&dr.host, ns, &suffix);
            dr_candidates
                .entry(host)
                .or_default()
                .push((ns.to_string(), dr));
        }
        let narrow = |e: &[String]| !e.is_empty() && !e.iter().any(|e| e == "*");
        let restricted = dr_candidates
            .values()
            .flatten()
            .any(|(_, dr)| narrow(&dr.export_to))
            || config
                .virtual_services()
                .any(|(_, vs)| narrow(&vs.export_to))
            || config.services.iter().any(|s| narrow(&s.export_to));
        let mut mesh_routes: BTreeMap<String, Vec<(String, SpecRef<VirtualService>)>> =
            BTreeMap::new();
        for vs in config.shared::<VirtualService>() {
            let for_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
            if !for_mesh {
                continue;
            }
            let ns = vs.object().meta.namespace();
            for h in &vs.hosts {
                let host = qualify_host(h, ns, &suffix);
                mesh_routes
                    .entry(host)
                    .or_default()
                    .push((ns.to_string(), vs.clone()));
            }
        }
        // Whether some mesh route's match (HTTP, TCP or TLS) says `pred` of its source fields.
        let some_match = |pred: fn(&Labels, Option<&String>) -> bool| {
            mesh_routes.values().flatten().any(|(_, vs)| {
                vs.http.iter().any(|r| {
                    r.matches
                        .iter()
                        .any(|m| pred(&m.source_labels, m.source_namespace.as_ref()))
                }) || vs.tcp.iter().any(|r| {
                    r.matches
                        .iter()
                        .any(|m| pred(&m.source_labels, m.source_namespace.as_ref()))
                }) || vs.tls.iter().any(|r| {
                    r.matches
                        .iter()
                        .any(|m| pred(&m.source_labels, m.source_namespace.as_ref()))
                })
            })
        };
        let uses_source_labels = some_match(|labels, _| !labels.is_empty());
        let routes_see_namespace = restricted || some_match(|_, ns| ns.is_some());
        let mut workloads = HashMap::new();
        for (i, w) in config.workloads.iter().enumerate() {
            // The first of a duplicated name wins, as in `MeshConfig::workload`.
            workloads
                .entry((w.namespace.clone(), w.name.clone()))
                .or_insert(i);
        }
        let mut index = Index {
            workloads,
            uses_source_labels,
            routes_see_namespace,
            domain_suffix: suffix,
            root_namespace: opts.root_namespace.clone(),
            services,
            destination_rules: BTreeMap::new(),
            dr_candidates,
            restricted,
            mesh_routes,
            peer_authn: config
                .peer_authentications()
                .map(|(o, pa)| (o.meta.namespace().to_string(), pa.clone()))
                .collect(),
            sidecars: config
                .sidecars()
                .map(|(o, s)| (o.clone(), s.clone()))
                .collect(),
            config,
        };
        // The rule every namespace without a more specific one sees.
        index.destination_rules = index
            .dr_candidates
            .keys()
            .filter_map(|host| {
                let dr = index.pick_destination_rule(host, "")?;
                Some((host.clone(), dr.clone()))
            })
            .collect();
        index
    }

    /// Istio's choice of DestinationRule for `host` as seen from namespace `ns` (`""`: a
    /// namespace with nothing of its own, which sees only what is exported everywhere): among
    /// the rules exported to `ns`, the one in `ns`, else in the service's namespace, else in the
    /// root namespace, else the first. Without any narrowed `exportTo`: the first rule.
    fn pick_destination_rule(&self, host: &str, ns: &str) -> Option<&SpecRef<DestinationRule>> {
        let candidates = self.dr_candidates.get(host)?;
        if !self.restricted {
            return candidates.first().map(|(_, dr)| dr);
        }
        let visible: Vec<&(String, SpecRef<DestinationRule>)> = candidates
            .iter()
            .filter(|(dr_ns, dr)| meshd_model::registry::exported_to(&dr.export_to, dr_ns, ns))
            .collect();
        let service_ns = self.service(host).map(|s| s.namespace.as_str());
        let in_ns = |want: Option<&str>| {
            visible
                .iter()
                .find(|(dr_ns, _)| want.is_some_and(|w| !w.is_empty() && dr_ns == w))
        };
        in_ns(Some(ns))
            .or_else(|| in_ns(service_ns))
            .or_else(|| in_ns(Some(self.root_namespace.as_str())))
            .or_else(|| visible.first())
            .map(|(_, dr)| dr)
    }

    /// The DestinationRule proxies in `ns` get for `host` (`exportTo` applied).
    pub fn workload(&self, name: &str, namespace: &str) -> Option<&Workload> {
        let i = self
            .workloads
            .get(&(namespace.to_string(), name.to_string()))?;
        self.config.workloads.get(*i)
    }

    pub fn destination_rule_in(&self, host: &str, ns: &str) -> Option<&DestinationRule> {
        if !self.restricted {
            return self.destination_rule(host);
        }
        self.pick_destination_rule(host, ns).map(|d| &**d)
    }

    /// Whether some ServiceEntry, Service, VirtualService or DestinationRule narrows its
    /// `exportTo`: what a proxy sees then depends on its namespace.
    pub fn restricted(&self) -> bool {
        self.restricted
    }

    pub fn service(&self, host: &str) -> Option<&Service> {
        self.config.services.get(*self.services.get(host)?)
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values().map(|i| &self.config.services[*i])
    }

    pub fn destination_rule(&self, host: &str) -> Option<&DestinationRule> {
        self.destination_rules.get(host).map(|d| &**d)
    }

    /// The mesh VirtualServices for `host` that proxies in `ns` see (`exportTo`).
    pub fn mesh_virtual_services<'a>(
        &'a self,
        host: &str,
        ns: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a VirtualService)> + 'a {
        self.mesh_routes
            .get(host)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter(move |(vs_ns, vs)| meshd_model::registry::exported_to(&vs.export_to, vs_ns, ns))
            .map(|(vs_ns, vs)| (vs_ns.as_str(), &**vs))
    }

    fn subsets(&self, host: &str) -> &[Subset] {
        self.destination_rule(host)
            .map(|d| d.subsets.as_slice())
            .unwrap_or(&[])
    }

    /// The PeerAuthentication mode in force for a workload port, with Istio's precedence:
    /// workload selector, then namespace, then mesh-wide (root namespace); PERMISSIVE by default.
    pub fn mtls_mode(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        port: u32,
    ) -> MtlsMode {
        let set = |m: MtlsMode| (m != MtlsMode::Unset).then_some(m);
        let workload = self.peer_authn.iter().find(|(ns, pa)| {
            ns == namespace
                && pa
                    .selector
                    .as_ref()
                    .is_some_and(|s| selector_matches(&s.labels, labels))
        });
        if let Some((_, pa)) = workload {
            if let Some(m) = pa.port_level_mtls.get(&port).and_then(|m| set(m.mode)) {
                return m;
            }
            if let Some(m) = pa.mtls.as_ref().and_then(|m| set(m.mode)) {
                return m;
            }
        }
        let scoped = |scope: &str| {
            self.peer_authn
                .iter()
                .find(|(ns, pa)| ns == scope && pa.selector.is_none())
                .and_then(|(_, pa)| pa.mtls.as_ref().and_then(|m| set(m.mode)))
        };
        scoped(namespace)
            .or_else(|| scoped(&self.root_namespace))
            .unwrap_or(MtlsMode::Permissive)
    }

    pub fn accepts_mtls(&self, e: &Endpoint, port: &Port) -> bool {
        cluster::endpoint_accepts_mtls(self.mtls_mode(&e.namespace, &e.labels, e.port_for(port)))
    }

    /// The Sidecar resource for a workload: selector match in its namespace, else the
    /// namespace default, else the mesh default in the root namespace.
    pub fn sidecar_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<&(ConfigObject, Sidecar)> {
        let in_ns = |ns: &str, selected: bool| {
            self.sidecars.iter().find(|(o, s)| {
                o.meta.namespace() == ns
                    && match &s.workload_selector {
                        Some(sel) => selected && selector_matches(&sel.labels, labels),
                        None => !selected,
                    }
            })
        };
        in_ns(namespace, true)
            .or_else(|| in_ns(namespace, false))
            .or_else(|| in_ns(&self.root_namespace, false))
    }
}

/// What a proxy may see of the mesh's services (Sidecar egress scoping).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ScopeKey {
    namespace: String,
    sidecar: Option<String>,
    /// Only when some route matches on `sourceLabels`.
    labels: Option<BTreeMap<String, String>>,
}

/// What a sidecar's outbound virtual host for a service port is built from besides the snapshot:
/// scopes agreeing on it share the encoded virtual host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct VhostKey {
    host: String,
    port: u32,
    /// The proxy is in the service's namespace (short names are among the domains).
    local: bool,
    /// Only when routes depend on the proxy's namespace (`Index::routes_see_namespace`).
    namespace: Option<String>,
    /// Only when some route matches on `sourceLabels`.
    labels: Option<BTreeMap<String, String>>,
}

/// Outbound resources for every proxy in one scope.
struct Scope {
    clusters: Layer,
    endpoints: Layer,
    listeners: Layer,
    routes: Layer,
}

pub struct MeshSnapshot {
    pub version: u64,
    /// When its build began: a proxy's convergence time is measured from here.
    pub built_at: std::time::Instant,
    pub opts: Arc<GenOptions>,
    pub index: Arc<Index>,
    /// The EnvoyFilter patches in force (and those rejected, in `patches.problems`).
    pub patches: envoyfilter::Patches,
    /// Every outbound cluster and its endpoints, encoded once.
    clusters: Layer,
    endpoints: Layer,
    clusters_by_host: Arc<HashMap<String, Vec<String>>>,
    scopes: Mutex<HashMap<ScopeKey, Once<Arc<Scope>>>>,
    gateways: Mutex<HashMap<String, Once<Arc<gateway::GatewayResources>>>>,
    inbound: Mutex<HashMap<String, Once<(Layer, Layer)>>>,
    /// Outbound virtual hosts, encoded, shared by the scopes' route tables: without it every
    /// namespace's scope rebuilt and re-encoded every service's routes.
    vhosts: Mutex<HashMap<VhostKey, Bytes>>,
    previous: Previous,
}

/// What the snapshot this one replaced had built: a layer rebuilt with the same content keeps
/// the old one's identity (and a changed one the old pointers of its unchanged resources), so
/// streams skip unchanged layers by pointer and Delta sends only what changed.
#[derive(Default)]
struct Previous {
    /// With the options it was built under (its config is `index.config`).
    index: Option<(Arc<Index>, Arc<GenOptions>)>,
    clusters_by_host: Arc<HashMap<String, Vec<String>>>,
    clusters: Option<Layer>,
    endpoints: Option<Layer>,
    scopes: HashMap<ScopeKey, Arc<Scope>>,
    gateways: HashMap<String, Arc<gateway::GatewayResources>>,
    inbound: HashMap<String, (Layer, Layer)>,
}

/// Whether two configs agree on everything a workload's inbound resources are built from.
fn same_inbound_inputs(a: &MeshConfig, b: &MeshConfig) -> bool {
    a.services == b.services
        && a.workloads == b.workloads
        && inbound_objects(a).count() == inbound_objects(b).count()
        && inbound_objects(a)
            .zip(inbound_objects(b))
            .all(|(x, y)| Arc::ptr_eq(x, y) || x == y)
}

fn inbound_objects(c: &MeshConfig) -> impl Iterator<Item = &Arc<ConfigObject>> {
    use meshd_model::Kind;
    c.objects.values().filter(|o| {
        matches!(
            o.kind(),
            Kind::Sidecar
                | Kind::PeerAuthentication
                | Kind::AuthorizationPolicy
                | Kind::EnvoyFilter
        )
    })
}

/// The entries of a build-once cache that were built.
fn built<K: Clone + Eq + std::hash::Hash, V: Clone>(
    cache: &Mutex<HashMap<K, Once<V>>>,
) -> HashMap<K, V> {
    cache
        .lock()
        .expect("snapshot cache")
        .iter()
        .filter_map(|(k, v)| v.get().map(|v| (k.clone(), v.clone())))
        .collect()
}

/// The value for `key`, built by `build` on the first call; concurrent callers wait for it
/// rather than build it again.
fn get_or_build<K: Clone + Eq + std::hash::Hash, V: Clone>(
    cache: &Mutex<HashMap<K, Once<V>>>,
    key: K,
    build: impl FnOnce(&K) -> V,
) -> V {
    let cell = cache
        .lock()
        .expect("snapshot cache")
        .entry(key.clone())
        .or_default()
        .clone();
    cell.get_or_init(|| build(&key)).clone()
}

/// The port of an `outbound|PORT|subset|host` cluster name.
fn cluster_port(name: &str) -> Option<u32> {
    name.strip_prefix("outbound|")?
        .split('|')
        .next()?
        .parse()
        .ok()
}

fn egress_host_matches(pattern: &str, proxy_ns: &str, svc: &Service) -> bool {
    let Some((ns, host)) = pattern.split_once('/') else {
        return false;
    };
    let ns_ok = match ns {
        "*" => true,
        "." => svc.namespace == proxy_ns,
        "~" => false,
        other => svc.namespace == other,
    };
    let host_ok = host == "*"
        || host == svc.hostname
        || host
            .strip_prefix('*')
            .is_some_and(|suffix| svc.hostname.ends_with(suffix));
    ns_ok && host_ok
}

impl MeshSnapshot {
    pub fn build(version: u64, config: Arc<MeshConfig>, opts: Arc<GenOptions>) -> MeshSnapshot {
        Self::build_after(Previous::default(), version, config, opts)
    }

    /// The snapshot of `config` that replaces this one: what did not change keeps its identity.
    pub fn rebuild(
        &self,
        version: u64,
        config: Arc<MeshConfig>,
        opts: Arc<GenOptions>,
    ) -> MeshSnapshot {
        let previous = Previous {
            index: Some((self.index.clone(), self.opts.clone())),
            clusters_by_host: self.clusters_by_host.clone(),
            clusters: Some(self.clusters.clone()),
            endpoints: Some(self.endpoints.clone()),
            scopes: built(&self.scopes),
            gateways: built(&self.gateways),
            inbound: built(&self.inbound),
        };
        Self::build_after(previous, version, config, opts)
    }

    fn build_after(
        previous: Previous,
        version: u64,
        config: Arc<MeshConfig>,
        opts: Arc<GenOptions>,
    ) -> MeshSnapshot {
        let built_at = std::time::Instant::now();
        let index = Arc::new(Index::new(config, &opts));
        let patches = envoyfilter::Patches::build(&index.config, &opts.root_namespace);
        let same_opts = previous
            .index
            .as_ref()
            .is_some_and(|(_, old)| Arc::ptr_eq(old, &opts) || **old == *opts);
        // Inbound listeners and clusters depend on the workloads, the services selecting them,
        // Sidecars, PeerAuthentication, AuthorizationPolicy, EnvoyFilters and the options: when
        // none of those changed (a DestinationRule or VirtualService edit), the previous ones
        // stand as built.
        let inbound: HashMap<String, Once<(Layer, Layer)>> = match &previous.index {
            Some((old, _)) if same_opts && same_inbound_inputs(&old.config, &index.config) => {
                previous
                    .inbound
                    .iter()
                    .map(|(k, v)| (k.clone(), Arc::new(OnceLock::from(v.clone()))))
                    .collect()
            }
            _ => HashMap::new(),
        };
        let mut clusters = BTreeMap::new();
        let mut endpoints = BTreeMap::new();
        let mut clusters_by_host: HashMap<String, Vec<String>> = HashMap::new();
        // A host's clusters and endpoints are built from its service, its DestinationRule, the
        // PeerAuthentications (whether endpoints take mTLS) and the options: where none of those
        // changed, the previous snapshot's stand.
        let unchanged_host = |host: &str| -> Option<&Vec<String>> {
            let (old, _) = previous.index.as_ref()?;
            let same = same_opts
                && old.peer_authn == index.peer_authn
                && old.service(host) == index.service(host)
                && old.destination_rule(host) == index.destination_rule(host);
            same.then(|| previous.clusters_by_host.get(host))?
        };
        for svc in index.services() {
            if let Some(names) = unchanged_host(&svc.hostname)
                && let (Some(old_clusters), Some(old_endpoints)) =
                    (&previous.clusters, &previous.endpoints)
                && names.iter().all(|n| old_clusters.contains_key(n))
            {
                for name in names {
                    clusters.insert(name.clone(), old_clusters[name].clone());
                    if let Some(e) = old_endpoints.get(name) {
                        endpoints.insert(name.clone(), e.clone());
                    }
                }
                clusters_by_host.insert(svc.hostname.clone(), names.clone());
                continue;
            }
            for port in &svc.ports {
                let subsets =
                    std::iter::once(None).chain(index.subsets(&svc.hostname).iter().map(Some));
                for subset in subsets {
                    let out = cluster::outbound(&index, svc, port, subset, &opts);
                    let name = out.cluster.name.clone();
                    if let Some(la) = out.load_assignment {
                        endpoints.insert(name.clone(), Resource::encode(name.clone(), &la));
                    }
                    clusters_by_host
                        .entry(svc.hostname.clone())
                        .or_default()
                        .push(name.clone());
                    clusters.insert(name.clone(), Resource::encode(name, &out.cluster));
                }
            }
        }
        let zipkin = opts.zipkin_cluster.as_deref().map(cluster::zipkin);
        for c in [cluster::passthrough(), cluster::blackhole()]
            .into_iter()
            .chain(zipkin)
        {
            clusters.insert(c.name.clone(), Resource::encode(c.name.clone(), &c));
        }
        MeshSnapshot {
            version,
            built_at,
            opts,
            index,
            patches,
            clusters: reuse_layer(previous.clusters.as_ref(), LayerMap::new(clusters)),
            endpoints: reuse_layer(previous.endpoints.as_ref(), LayerMap::new(endpoints)),
            clusters_by_host: Arc::new(clusters_by_host),
            scopes: Mutex::new(HashMap::new()),
            gateways: Mutex::new(HashMap::new()),
            inbound: Mutex::new(inbound),
            vhosts: Mutex::new(HashMap::new()),
            previous,
        }
    }

    pub fn config(&self) -> &MeshConfig {
        &self.index.config
    }

    fn scope(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Arc<Scope> {
        let sidecar = self.index.sidecar_for(namespace, labels);
        let key = ScopeKey {
            namespace: namespace.to_string(),
            sidecar: sidecar.map(|(o, _)| o.key().to_string()),
            labels: self.index.uses_source_labels.then(|| labels.clone()),
        };
        get_or_build(&self.scopes, key, |key| {
            let scope = self.build_scope(namespace, key.labels.as_ref(), sidecar.map(|(_, s)| s));
            let Some(old) = self.previous.scopes.get(key) else {
                return Arc::new(scope);
            };
            Arc::new(Scope {
                clusters: reuse_layer(Some(&old.clusters), scope.clusters),
                endpoints: reuse_layer(Some(&old.endpoints), scope.endpoints),
                listeners: reuse_layer(Some(&old.listeners), scope.listeners),
                routes: reuse_layer(Some(&old.routes), scope.routes),
            })
        })
    }

    fn build_scope(
        &self,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
        sidecar: Option<&Sidecar>,
    ) -> Scope {
        let opts = &self.opts;
        let restricted = self.index.restricted();
        // Sidecar egress: a listener with a port decides for that port; the port-less ones for
        // every other port (Istio's rule).
        let egress_allows = |svc: &Service, port: u32| match sidecar {
            None => true,
            Some(sc) if sc.egress.is_empty() => true,
            Some(sc) => {
                let on_port: Vec<_> = sc
                    .egress
                    .iter()
                    .filter(|e| e.port.as_ref().is_some_and(|p| p.number == port))
                    .collect();
                let listeners = if on_port.is_empty() {
                    sc.egress.iter().filter(|e| e.port.is_none()).collect()
                } else {
                    on_port
                };
                listeners.iter().any(|e| {
                    e.hosts
                        .iter()
                        .any(|h| egress_host_matches(h, namespace, svc))
                })
            }
        };
        let mut port_hidden = false;
        let visible: Vec<&Service> = self
            .index
            .services()
            .filter(|svc| !restricted || svc.visible_in(namespace))
            .filter(|svc| {
                let shown = svc
                    .ports
                    .iter()
                    .filter(|p| egress_allows(svc, p.number))
                    .count();
                port_hidden |= shown > 0 && shown < svc.ports.len();
                shown > 0
            })
            .collect();
        let port_visible = |svc: &Service, port: u32| egress_allows(svc, port);
        let allow_any = sidecar
            .and_then(|s| s.outbound_traffic_policy.as_ref())
            .map(|p| p.mode)
            .unwrap_or(OutboundMode::AllowAny)
            == OutboundMode::AllowAny;
        // Services whose DestinationRule differs in this namespace (`exportTo`): their clusters
        // are generated for it rather than taken from the mesh-wide layer.
        let own_rule: Vec<(&Service, Option<&DestinationRule>)> = if restricted {
            visible
                .iter()
                .filter_map(|svc| {
                    let here = self.index.destination_rule_in(&svc.hostname, namespace);
                    let everywhere = self.index.destination_rule(&svc.hostname);
                    let same = match (here, everywhere) {
                        (None, None) => true,
                        (Some(a), Some(b)) => std::ptr::eq(a, b) || a == b,
                        _ => false,
                    };
                    (!same).then_some((*svc, here))
                })
                .collect()
        } else {
            Vec::new()
        };
        let (mut clusters, endpoints) = if own_rule.is_empty()
            && !port_hidden
            && visible.len() == self.index.services().count()
        {
            // Unscoped: the mesh-wide layers themselves, shared with every other such scope.
            (self.clusters.clone(), self.endpoints.clone())
        } else {
            let mut clusters = BTreeMap::new();
            let mut endpoints = BTreeMap::new();
            for svc in &visible {
                for name in self
                    .clusters_by_host
                    .get(&svc.hostname)
                    .into_iter()
                    .flatten()
                    .filter(|n| cluster_port(n).is_none_or(|port| port_visible(svc, port)))
                {
                    clusters.insert(name.clone(), self.clusters[name].clone());
                    if let Some(e) = self.endpoints.get(name) {
                        endpoints.insert(name.clone(), e.clone());
                    }
                }
            }
            for name in [cluster::PASSTHROUGH, cluster::BLACKHOLE, cluster::ZIPKIN]
                .into_iter()
                .filter(|n| self.clusters.contains_key(*n))
            {
                clusters.insert(name.to_string(), self.clusters[name].clone());
            }
            for (svc, rule) in &own_rule {
                for name in self
                    .clusters_by_host
                    .get(&svc.hostname)
                    .into_iter()
                    .flatten()
                {
                    clusters.remove(name);
                    endpoints.remove(name);
                }
                let subsets: &[Subset] = rule.map(|r| r.subsets.as_slice()).unwrap_or(&[]);
                for port in svc.ports.iter().filter(|p| port_visible(svc, p.number)) {
                    for subset in std::iter::once(None).chain(subsets.iter().map(Some)) {
                        let out = cluster::outbound_with_rule(
                            &self.index,
                            *rule,
                            svc,
                            port,
                            subset,
                            opts,
                        );
                        let name = out.cluster.name.clone();
                        if let Some(la) = out.load_assignment {
                            endpoints.insert(name.clone(), Resource::encode(name.clone(), &la));
                        }
                        clusters.insert(name.clone(), Resource::encode(name, &out.cluster));
                    }
                }
            }
            (LayerMap::new(clusters), LayerMap::new(endpoints))
        };
        self.patches
            .patch_cluster_layer(&mut clusters, namespace, false);
        // Ports: HTTP services share a listener and a route table per port.
        let mut http_ports: BTreeMap<u32, Vec<&Service>> = BTreeMap::new();
        let mut tcp_ports: BTreeMap<u32, Vec<l4::L4Chain>> = BTreeMap::new();
        for svc in &visible {
            for port in svc.ports.iter().filter(|p| port_visible(svc, p.number)) {
                if port.protocol.is_http() {
                    http_ports.entry(port.number).or_default().push(svc);
                } else {
                    tcp_ports.entry(port.number).or_default().extend(l4::chains(
                        &self.index,
                        namespace,
                        labels,
                        svc,
                        port,
                    ));
                }
            }
        }
        let mut listeners = BTreeMap::new();
        let vo = listener::virtual_outbound(allow_any);
        listeners.insert(vo.name.clone(), Resource::encode(vo.name.clone(), &vo));
        let ports: BTreeSet<u32> = http_ports.keys().chain(tcp_ports.keys()).copied().collect();
        for port in ports {
            let tcp = tcp_ports.get(&port).map(Vec::as_slice).unwrap_or(&[]);
            let l =
                listener::outbound_port(port, http_ports.contains_key(&port), tcp, allow_any, opts);
            listeners.insert(l.name.clone(), Resource::encode(l.name.clone(), &l));
        }
        let mut routes = BTreeMap::new();
        for (port, services) in &http_ports {
            let rc = self.outbound_routes(*port, namespace, labels, services, allow_any);
            routes.insert(rc.name.clone(), rc);
        }
        Scope {
            clusters,
            endpoints,
            listeners: LayerMap::new(listeners),
            routes: LayerMap::new(routes),
        }
    }

    fn outbound_routes(
        &self,
        port: u32,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
        services: &[&Service],
        allow_any: bool,
    ) -> SharedResource {
        let mut vhosts: Vec<Bytes> = Vec::with_capacity(services.len() + 1);
        let mut seen_domains = BTreeSet::new();
        for svc in services {
            let local = svc.namespace == namespace;
            let mut domains = self.vhost_domains(svc, port, local);
            let all = domains.len();
            domains.retain(|d| seen_domains.insert(d.clone()));
            if domains.is_empty() {
                continue;
            }
            let build = |domains| self.outbound_vhost(svc, port, namespace, labels, domains);
            if domains.len() < all {
                // A domain another service claimed first: this one is particular to the scope.
                vhosts.push(build(domains).encode_to_vec().into());
                continue;
            }
            let key = VhostKey {
                host: svc.hostname.clone(),
                port,
                local,
                namespace: self
                    .index
                    .routes_see_namespace
                    .then(|| namespace.to_string()),
                labels: labels.cloned(),
            };
            let memo = self.vhosts.lock().expect("vhost memo").get(&key).cloned();
            let vhost = memo.unwrap_or_else(|| {
                let encoded: Bytes = build(domains).encode_to_vec().into();
                self.vhosts
                    .lock()
                    .expect("vhost memo")
                    .insert(key, encoded.clone());
                encoded
            });
            vhosts.push(vhost);
        }
        vhosts.push(catch_all_vhost(allow_any).encode_to_vec().into());
        let name = port.to_string();
        let validate_clusters = common::boolv(false);
        if self.patches.patches_routes(namespace, false) {
            let mut rc = RouteConfiguration {
                name: name.clone(),
                virtual_hosts: vhosts
                    .iter()
                    .map(|v| VirtualHost::decode(v.as_ref()).expect("a virtual host we encoded"))
                    .collect(),
                validate_clusters,
                ..Default::default()
            };
            self.patches.patch_routes(&mut rc, port, namespace, false);
            return Resource::encode(name, &rc);
        }
        // The table's encoding is its fields in number order: the name, the virtual hosts
        // (field 2, each as encoded once), then validate_clusters.
        let head = RouteConfiguration {
            name: name.clone(),
            ..Default::default()
        };
        let tail = RouteConfiguration {
            validate_clusters,
            ..Default::default()
        };
        let mut value = head.encode_to_vec();
        for v in &vhosts {
            prost::encoding::bytes::encode(2, v, &mut value);
        }
        tail.encode(&mut value).expect("a Vec grows");
        Resource::from_value::<RouteConfiguration>(name, value)
    }

    /// A service's names on `port` as a sidecar's route table matches them: its host, its
    /// short names for proxies in its namespace, its addresses; each with and without the port.
    fn vhost_domains(&self, svc: &Service, port: u32, local: bool) -> Vec<String> {
        let mut domains = vec![svc.hostname.clone(), format!("{}:{port}", svc.hostname)];
        if local
            && let Some(short) = svc.hostname.strip_suffix(&format!(
                ".{}.svc.{}",
                svc.namespace, self.index.domain_suffix
            ))
        {
            for d in [
                short.to_string(),
                format!("{short}.{}", svc.namespace),
                format!("{short}.{}.svc", svc.namespace),
            ] {
                domains.push(format!("{d}:{port}"));
                domains.push(d);
            }
        }
        for vip in &svc.addresses {
            if !vip.contains('/') {
                domains.push(vip.clone());
                domains.push(format!("{vip}:{port}"));
            }
        }
        domains
    }

    fn outbound_vhost(
        &self,
        svc: &Service,
        port: u32,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
        domains: Vec<String>,
    ) -> VirtualHost {
        let vs = self.index.mesh_virtual_services(&svc.hostname, namespace);
        let routes = match vs.into_iter().next() {
            Some((vs_ns, vs)) => {
                let ctx = route::RouteCtx {
                    index: &self.index,
                    listener_port: port,
                    namespace: vs_ns,
                    gateway: None,
                    source: Some((namespace, labels)),
                };
                route::http_routes(&ctx, &vs.http)
            }
            None => vec![route::default_route(cluster::outbound_name(
                port,
                "",
                &svc.hostname,
            ))],
        };
        VirtualHost {
            name: format!("{}:{port}", svc.hostname),
            domains,
            routes,
            ..Default::default()
        }
    }

    /// The ports a workload serves, where its app listens, and their mTLS modes: the ingress
    /// listeners of its Sidecar when it has any, else its services' target ports.
    fn inbound_ports(&self, w: &Workload) -> Vec<listener::InboundPort> {
        let mut ports: Vec<(u32, u32, bool)> = self
            .index
            .sidecar_for(&w.namespace, &w.labels)
            .map(|(_, sc)| {
                sc.ingress
                    .iter()
                    .map(|i| {
                        let app_port = ingress_endpoint_port(i.default_endpoint.as_deref())
                            .unwrap_or(i.port.target_port.unwrap_or(i.port.number));
                        let protocol = Protocol::detect(Some(&i.port.protocol), &i.port.name);
                        (i.port.number, app_port, protocol.is_http())
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
                    ports.push((app_port, app_port, port.protocol.is_http()));
                }
            }
        }
        let mut by_port: BTreeMap<u32, listener::InboundPort> = BTreeMap::new();
        for (port, app_port, http) in ports {
            by_port.entry(port).or_insert_with(|| {
                let policy = authz::inbound_policy(&self.index, w, port, http, &self.opts);
                listener::InboundPort {
                    port,
                    app_port,
                    http,
                    mode: self.index.mtls_mode(&w.namespace, &w.labels, port),
                    http_filters: {
                        let mut filters = policy.http_filters;
                        self.patches.insert_http_filters(
                            &w.namespace,
                            &w.labels,
                            false,
                            &mut filters,
                        );
                        filters
                    },
                    network_filters: policy.network_filters,
                }
            });
        }
        by_port.into_values().collect()
    }

    /// A workload's inbound clusters and listener, shared by every proxy of the same workload
    /// shape (namespace, labels, ports).
    fn inbound(&self, workload: Option<&Workload>) -> (Layer, Layer) {
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
                let c = cluster::inbound(p.port, p.app_port);
                (c.name.clone(), Resource::encode(c.name.clone(), &c))
            })
            .collect();
        let vi = listener::virtual_inbound(&ports, &self.opts);
        let listeners: BTreeMap<String, SharedResource> =
            [(vi.name.clone(), Resource::encode(vi.name.clone(), &vi))]
                .into_iter()
                .collect();
        (LayerMap::new(clusters), LayerMap::new(listeners))
    }

    /// Everything one proxy should have, except secrets (those come from the CA).
    pub fn generate(&self, proxy: &Proxy) -> ProxyResources {
        let workload = self
            .index
            .workload(&proxy.identity.workload, &proxy.identity.namespace);
        let empty = BTreeMap::new();
        let labels = workload.map(|w| &w.labels).unwrap_or(&empty);
        let mut out = ProxyResources::new();
        match proxy.node_type {
            NodeType::Sidecar => {
                let scope = self.scope(&proxy.identity.namespace, labels);
                let (inbound_clusters, inbound_listeners) = self.inbound(workload);
                out.insert(
                    CLUSTER,
                    ResourceSet::from_layers(vec![scope.clusters.clone(), inbound_clusters]),
                );
                out.insert(ENDPOINT, ResourceSet::layer(scope.endpoints.clone()));
                out.insert(
                    LISTENER,
                    ResourceSet::from_layers(vec![scope.listeners.clone(), inbound_listeners]),
                );
                out.insert(ROUTE, ResourceSet::layer(scope.routes.clone()));
            }
            NodeType::Router => {
                let key = format!("{}|{labels:?}", proxy.identity.namespace);
                let gw = get_or_build(&self.gateways, key, |key| {
                    let g = gateway::build(self, &proxy.identity.namespace, labels);
                    Arc::new(match self.previous.gateways.get(key) {
                        Some(old) => g.reusing(old),
                        None => g,
                    })
                });
                let mut clusters = self.clusters.clone();
                self.patches
                    .patch_cluster_layer(&mut clusters, &proxy.identity.namespace, true);
                out.insert(CLUSTER, ResourceSet::layer(clusters));
                out.insert(ENDPOINT, ResourceSet::layer(self.endpoints.clone()));
                out.insert(LISTENER, ResourceSet::layer(gw.listeners.clone()));
                out.insert(ROUTE, ResourceSet::layer(gw.routes.clone()));
                if !gw.secrets.is_empty() {
                    out.insert(SECRET, ResourceSet::layer(gw.secrets.clone()));
                }
            }
        }
        out
    }
}

/// The app port of a Sidecar ingress listener's `defaultEndpoint` (`127.0.0.1:PORT`,
/// `0.0.0.0:PORT` or `[::1]:PORT`; the app is reached on loopback either way).
fn ingress_endpoint_port(endpoint: Option<&str>) -> Option<u32> {
    let (_, port) = endpoint?.rsplit_once(':')?;
    port.parse().ok()
}

fn catch_all_vhost(allow_any: bool) -> VirtualHost {
    use envoy_types::pb::envoy::config::route::v3::{
        DirectResponseAction, Route, RouteAction, route, route_action,
    };
    let action = if allow_any {
        route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                cluster::PASSTHROUGH.into(),
            )),
            timeout: Some(common::duration(std::time::Duration::ZERO)),
            ..Default::default()
        })
    } else {
        route::Action::DirectResponse(DirectResponseAction {
            status: 502,
            ..Default::default()
        })
    };
    VirtualHost {
        name: if allow_any { "allow_any" } else { "block_all" }.into(),
        domains: vec!["*".into()],
        routes: vec![Route {
            name: if allow_any { "allow_any" } else { "block_all" }.into(),
            r#match: Some(envoy_types::pb::envoy::config::route::v3::RouteMatch {
                path_specifier: Some(
                    envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::Prefix(
                        "/".into(),
                    ),
                ),
                ..Default::default()
            }),
            action: Some(action),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod visibility_tests;
