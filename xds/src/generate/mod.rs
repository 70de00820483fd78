//! Mesh model → per-proxy Envoy resources. Pure: a `MeshSnapshot` is built once per config
//! change; resources many proxies share (clusters, endpoints, a scope's listeners and routes) are
//! encoded once per snapshot and handed out by reference.

pub mod authz;
/// The AuthorizationPolicy translation table, shared with the end-to-end tests.
#[cfg(any(test, feature = "test-tables"))]
pub mod authz_cases;
pub mod cluster;
pub mod common;
pub mod credential;
pub mod envoyfilter;
pub mod gateway;
mod index;
pub mod jwt;
pub mod l4;
pub mod listener;
pub mod locality;
pub mod route;
mod scope;
pub mod selected;
pub mod slow_start;
pub mod telemetry;
pub mod telemetry_api;

use crate::proxy::{NodeType, Proxy};
use crate::resource::{
    BOOTSTRAP, CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, Resource, ResourceSet, SECRET,
    SharedResource,
};
use bytes::Bytes;
use meshd_model::registry::{Protocol, Workload, selector_matches};
use meshd_model::{ConfigObject, MeshConfig};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

pub use index::Index;
use scope::{Scope, ScopeKey, VhostKey};

/// Resources for one proxy, by type URL then name.
pub type ProxyResources = BTreeMap<&'static str, ResourceSet>;

use crate::resource::{Layer, LayerMap, reuse_layer};

/// The stdout access log's encoding, as Istio's MeshConfig `accessLogEncoding`: JSON (the
/// seed's default) or Istio's default text format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessLogEncoding {
    #[default]
    Json,
    Text,
}

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
    /// Address (HOST:PORT) of an OpenTelemetry collector (OTLP gRPC): every proxy gets an
    /// `opentelemetry` cluster to it; the tracer when there is no Zipkin collector or a
    /// Telemetry asks for provider `opentelemetry`, and the access log a Telemetry asks it for.
    pub otel_collector: Option<String>,
    pub trace_sampling: f64,
    pub access_log: bool,
    /// Locality-prioritized load balancing for DestinationRules with outlier detection and no
    /// `localityLbSetting` of their own (Istio's MeshConfig `localityLbSetting.enabled`, on by
    /// default).
    pub locality_lb_default: bool,
    /// The stdout access log's encoding (Istio's MeshConfig `accessLogEncoding`).
    pub access_log_encoding: AccessLogEncoding,
    /// Stream every proxy's access log to meshd over gRPC (the `xds-grpc` cluster of
    /// `meshd bootstrap`) for Istio's request metrics; see [`telemetry`].
    pub request_telemetry: bool,
    /// The Telemetry API policy of the listeners being built: the mesh default here, a
    /// workload's (`meshd_model::telemetry_scope`) in the copy its listeners are built with.
    pub telemetry: meshd_model::telemetry_scope::TelemetryPolicy,
    /// The external authorizers AuthorizationPolicies with `action: CUSTOM` name (Istio's
    /// MeshConfig `extensionProviders`, `meshd serve --mesh-config`).
    pub ext_authz_providers: Vec<meshd_model::extension_provider::ExtAuthzProvider>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            trust_domain: "cluster.local".into(),
            domain_suffix: "cluster.local".into(),
            root_namespace: meshd_model::telemetry_scope::ROOT_NAMESPACE.into(),
            zipkin_cluster: None,
            otel_collector: None,
            trace_sampling: 100.0,
            access_log: true,
            access_log_encoding: AccessLogEncoding::Json,
            locality_lb_default: true,
            request_telemetry: true,
            telemetry: Default::default(),
            ext_authz_providers: Vec::new(),
        }
    }
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
    /// The clusters of `endpoints` whose assignment depends on the proxy's locality.
    locality_plans: Arc<locality::LocalityPlans>,
    /// Endpoint layers with those clusters' assignments for one proxy locality, by the shared
    /// layer they derive from (its address: it lives as long as this snapshot) and the proxy
    /// key: every proxy of a scope in one locality shares one.
    localized: Mutex<HashMap<(usize, String), Once<Layer>>>,
    scopes: Mutex<HashMap<ScopeKey, Once<Arc<Scope>>>>,
    gateways: Mutex<HashMap<String, Once<Arc<gateway::GatewayResources>>>>,
    inbound: Mutex<HashMap<String, Once<(Layer, Layer)>>>,
    /// Outbound virtual hosts, encoded, shared by the scopes' route tables: without it every
    /// namespace's scope rebuilt and re-encoded every service's routes.
    vhosts: Mutex<HashMap<VhostKey, Bytes>>,
    /// Layers with the EnvoyFilter patches selecting some proxies applied, by the shared layer
    /// (its address; the entry holds it), its kind and context, and the patches.
    patched_layers: Mutex<HashMap<envoyfilter::PatchedKey, Once<(Layer, Layer)>>>,
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
    locality_plans: Arc<locality::LocalityPlans>,
    clusters: Option<Layer>,
    endpoints: Option<Layer>,
    scopes: HashMap<ScopeKey, Arc<Scope>>,
    gateways: HashMap<String, Arc<gateway::GatewayResources>>,
    inbound: HashMap<String, (Layer, Layer)>,
    patched_layers: HashMap<envoyfilter::PatchedKey, (Layer, Layer)>,
}

/// Whether two configs agree on everything a workload's inbound resources are built from.
fn same_inbound_inputs(a: &MeshConfig, b: &MeshConfig) -> bool {
    a.jwks == b.jwks
        && a.services == b.services
        && a.workloads == b.workloads
        && inbound_objects(a).count() == inbound_objects(b).count()
        && inbound_objects(a)
            .zip(inbound_objects(b))
            .all(|(x, y)| Arc::ptr_eq(x, y) || x == y)
}

fn inbound_objects(c: &MeshConfig) -> impl Iterator<Item = &Arc<ConfigObject>> {
    use meshd_model::Kind;
    [
        Kind::Sidecar,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::Telemetry,
    ]
    .into_iter()
    .flat_map(|k| c.objects_of(k))
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
            locality_plans: self.locality_plans.clone(),
            clusters: Some(self.clusters.clone()),
            endpoints: Some(self.endpoints.clone()),
            scopes: built(&self.scopes),
            gateways: built(&self.gateways),
            inbound: built(&self.inbound),
            patched_layers: built(&self.patched_layers),
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
        // Sidecars, PeerAuthentication, AuthorizationPolicy and the options (EnvoyFilters patch
        // the built layers afterwards, in `patched_layer`): when none of those changed (a
        // DestinationRule, VirtualService or EnvoyFilter edit), the previous ones stand as built.
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
        let mut locality_plans = locality::LocalityPlans::default();
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
                    if let Some(plan) = previous.locality_plans.plans.get(name) {
                        locality_plans.insert(name.clone(), plan.clone());
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
                    if let Some(plan) = out.locality {
                        locality_plans.insert(name.clone(), plan);
                    }
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
        let otel = opts.otel_collector.as_deref().map(cluster::opentelemetry);
        for c in [cluster::passthrough(), cluster::blackhole()]
            .into_iter()
            .chain(zipkin)
            .chain(otel)
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
            locality_plans: Arc::new(locality_plans),
            localized: Mutex::new(HashMap::new()),
            scopes: Mutex::new(HashMap::new()),
            gateways: Mutex::new(HashMap::new()),
            inbound: Mutex::new(inbound),
            vhosts: Mutex::new(HashMap::new()),
            patched_layers: Mutex::new(HashMap::new()),
            previous,
        }
    }

    pub fn config(&self) -> &MeshConfig {
        &self.index.config
    }

    /// Accepted objects this snapshot does not apply, with why: EnvoyFilters whose values do not
    /// decode, Telemetry naming a provider the server's options leave without a collector,
    /// AuthorizationPolicies with `action: CUSTOM` whose provider it cannot call (they fail closed).
    pub fn problems(&self) -> impl Iterator<Item = &meshd_model::Rejected> {
        self.patches
            .problems
            .iter()
            .chain(&self.index.telemetries_refused)
            .chain(&self.index.authz_refused)
    }

    /// The Telemetry policy in force for a workload (or gateway) in `namespace` with `labels`.
    pub fn telemetry_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> meshd_model::telemetry_scope::TelemetryPolicy {
        meshd_model::telemetry_scope::resolve(
            &self.index.telemetries,
            &self.index.root_namespace,
            namespace,
            labels,
        )
    }

    /// The options listeners under `policy` are built with: the snapshot's when it is the default.
    fn with_telemetry(
        &self,
        policy: meshd_model::telemetry_scope::TelemetryPolicy,
    ) -> Arc<GenOptions> {
        if policy == self.opts.telemetry {
            return self.opts.clone();
        }
        Arc::new(GenOptions {
            telemetry: policy,
            ..(*self.opts).clone()
        })
    }

    fn opts_for(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Arc<GenOptions> {
        self.with_telemetry(self.telemetry_for(namespace, labels))
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

    /// `base` with the assignments that depend on the proxy's locality made for this proxy.
    fn localized(
        &self,
        base: &Layer,
        plans: &locality::LocalityPlans,
        workload: Option<&Workload>,
    ) -> Layer {
        let Some(w) = workload.filter(|_| !plans.is_empty()) else {
            return base.clone();
        };
        let proxy = meshd_model::locality::Locality::parse(&w.locality);
        let key = plans.proxy_key(&proxy, &w.labels);
        if key == plans.proxy_key(&Default::default(), &Default::default()) {
            return base.clone();
        }
        let cache_key = (Arc::as_ptr(base) as usize, key);
        get_or_build(&self.localized, cache_key, |_| {
            let mut layer = (**base).clone();
            for (name, plan) in &plans.plans {
                if layer.contains_key(name) {
                    layer.insert(name.clone(), plan.encoded_for(&proxy, &w.labels));
                }
            }
            Arc::new(layer)
        })
    }

    /// The resources of a type only patches make (ECDS configs, the bootstrap patch), when a
    /// proxy has any: one layer per patch set in a snapshot, shared by every proxy with the
    /// same set.
    fn insert_patch_made(
        &self,
        out: &mut ProxyResources,
        proxy: meshd_model::envoyfilter::PatchContext,
        selected: &[usize],
    ) {
        static NONE: std::sync::OnceLock<Layer> = std::sync::OnceLock::new();
        let none = NONE.get_or_init(|| LayerMap::new(BTreeMap::new()));
        for (type_url, kind) in [
            (EXTENSION_CONFIG, envoyfilter::LayerKind::ExtensionConfigs),
            (BOOTSTRAP, envoyfilter::LayerKind::Bootstrap),
        ] {
            let made = self.patched_layer(none, kind, proxy, selected);
            if !made.is_empty() {
                out.insert(type_url, ResourceSet::layer(made));
            }
        }
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
                let selected = self.patches.selected_for(
                    &proxy.identity.namespace,
                    labels,
                    false,
                    &proxy.metadata,
                );
                use envoyfilter::LayerKind;
                out.insert(
                    CLUSTER,
                    ResourceSet::from_layers(self.patched_sidecar_layers(
                        &scope.clusters,
                        &inbound_clusters,
                        LayerKind::Clusters,
                        &selected,
                    )),
                );
                let endpoints = self.localized(&scope.endpoints, &scope.locality, workload);
                out.insert(ENDPOINT, ResourceSet::layer(endpoints));
                if !scope.secrets.is_empty() {
                    out.insert(SECRET, ResourceSet::layer(scope.secrets.clone()));
                }
                out.insert(
                    LISTENER,
                    ResourceSet::from_layers(self.patched_sidecar_layers(
                        &scope.listeners,
                        &inbound_listeners,
                        LayerKind::Listeners,
                        &selected,
                    )),
                );
                out.insert(
                    ROUTE,
                    ResourceSet::layer(self.patched_layer(
                        &scope.routes,
                        LayerKind::Routes,
                        meshd_model::envoyfilter::PatchContext::SidecarOutbound,
                        &selected,
                    )),
                );
                self.insert_patch_made(
                    &mut out,
                    meshd_model::envoyfilter::PatchContext::SidecarOutbound,
                    &selected,
                );
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
                let selected = self.patches.selected_for(
                    &proxy.identity.namespace,
                    labels,
                    true,
                    &proxy.metadata,
                );
                use envoyfilter::LayerKind;
                let patched = |layer: &Layer, kind| {
                    self.patched_layer(
                        layer,
                        kind,
                        meshd_model::envoyfilter::PatchContext::Gateway,
                        &selected,
                    )
                };
                let (clusters, endpoints, plans) = match &gw.outbound {
                    Some(o) => (&o.clusters, &o.endpoints, &*o.locality),
                    None => (&self.clusters, &self.endpoints, &*self.locality_plans),
                };
                out.insert(
                    CLUSTER,
                    ResourceSet::layer(patched(clusters, LayerKind::Clusters)),
                );
                let endpoints = self.localized(endpoints, plans, workload);
                out.insert(ENDPOINT, ResourceSet::layer(endpoints));
                out.insert(
                    LISTENER,
                    ResourceSet::layer(patched(&gw.listeners, LayerKind::Listeners)),
                );
                out.insert(
                    ROUTE,
                    ResourceSet::layer(patched(&gw.routes, LayerKind::Routes)),
                );
                if !gw.secrets.is_empty() {
                    out.insert(SECRET, ResourceSet::layer(gw.secrets.clone()));
                }
                self.insert_patch_made(
                    &mut out,
                    meshd_model::envoyfilter::PatchContext::Gateway,
                    &selected,
                );
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

#[cfg(test)]
mod visibility_tests;
