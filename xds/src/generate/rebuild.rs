//! Building a snapshot from the one it replaces. A config edit usually touches one object, and
//! streams tell unchanged layers by pointer: so what the old snapshot built from inputs that did
//! not change is carried over as is (or, rebuilt equal, takes the old identity), and a push costs
//! each proxy only what the edit touched.

use super::memo::{Once, built};
use super::scope::{Scope, ScopeKey};
use super::{GenOptions, Index, MeshSnapshot, cluster, envoyfilter, gateway, locality};
use crate::resource::{Layer, LayerMap, Resource, reuse_layer};
use meshd_model::{ConfigObject, MeshConfig};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

/// What the snapshot this one replaced had built: a layer rebuilt with the same content keeps
/// the old one's identity (and a changed one the old pointers of its unchanged resources), so
/// streams skip unchanged layers by pointer and Delta sends only what changed.
#[derive(Default)]
pub(super) struct Previous {
    /// With the options it was built under (its config is `index.config`).
    pub(super) index: Option<(Arc<Index>, Arc<GenOptions>)>,
    pub(super) clusters_by_host: Arc<HashMap<String, Vec<String>>>,
    pub(super) locality_plans: Arc<locality::LocalityPlans>,
    pub(super) clusters: Option<Layer>,
    pub(super) endpoints: Option<Layer>,
    pub(super) scopes: HashMap<ScopeKey, Arc<Scope>>,
    pub(super) gateways: HashMap<String, Arc<gateway::GatewayResources>>,
    pub(super) inbound: HashMap<String, (Layer, Layer)>,
    pub(super) patched_layers: HashMap<envoyfilter::PatchedKey, (Layer, Layer)>,
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
}
