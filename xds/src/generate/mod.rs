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
mod downstream_tls;
mod egress;
pub mod envoyfilter;
pub mod gateway;
mod gateway_l4;
mod gateway_server;
mod gateway_sni;
mod inbound;
mod inbound_listener;
mod index;
pub mod jwt;
pub mod l4;
pub mod listener;
pub mod locality;
mod memo;
mod rebuild;
pub mod route;
mod scope;
pub mod selected;
pub mod slow_start;
pub mod telemetry;
pub mod telemetry_api;
#[cfg(test)]
mod test_fixture;

use crate::proxy::{NodeType, Proxy};
use crate::resource::{
    BOOTSTRAP, CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, ResourceSet, SECRET,
};
use bytes::Bytes;
use meshd_model::MeshConfig;
use meshd_model::registry::Workload;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

pub use index::Index;
use memo::{Once, get_or_build};
use rebuild::Previous;
use scope::{Scope, ScopeKey, VhostKey};

/// Resources for one proxy, by type URL then name.
pub type ProxyResources = BTreeMap<&'static str, ResourceSet>;

use crate::resource::{Layer, LayerMap};

/// The stdout access log's encoding, as Istio's MeshConfig `accessLogEncoding`: JSON (the
/// seed's default) or Istio's default text format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessLogEncoding {
    #[default]
    Json,
    Text,
}

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

/// The port of an `outbound|PORT|subset|host` cluster name.
fn cluster_port(name: &str) -> Option<u32> {
    name.strip_prefix("outbound|")?
        .split('|')
        .next()?
        .parse()
        .ok()
}

impl MeshSnapshot {
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
        labels: &meshd_model::networking::Labels,
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

    fn opts_for(
        &self,
        namespace: &str,
        labels: &meshd_model::networking::Labels,
    ) -> Arc<GenOptions> {
        self.with_telemetry(self.telemetry_for(namespace, labels))
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
        let empty = meshd_model::networking::Labels::new();
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
                let outbound_listeners =
                    inbound_listener::outbound_beside(&scope.listeners, &inbound_listeners);
                out.insert(
                    LISTENER,
                    ResourceSet::from_layers(self.patched_sidecar_layers(
                        &outbound_listeners,
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
                let mut cluster_set = ResourceSet::layer(patched(clusters, LayerKind::Clusters));
                if !gw.sni_clusters.is_empty() {
                    cluster_set.push_layer(patched(&gw.sni_clusters, LayerKind::Clusters));
                }
                out.insert(CLUSTER, cluster_set);
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

#[cfg(test)]
mod egress_tests;
#[cfg(test)]
mod visibility_tests;
