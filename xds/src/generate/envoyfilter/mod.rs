//! EnvoyFilter patches, in the shapes meshd supports (see `meshd_model::envoyfilter`): decoded
//! once per snapshot against Envoy's descriptors, then applied to the generated resources.
//! Pure. A patch whose value does not decode rejects its whole EnvoyFilter, with the reason
//! (`problems`), and nothing of it is applied.
//!
//! Scope: an EnvoyFilter in the root namespace without selector applies to every proxy; one in
//! a namespace applies to that namespace's proxies; a workloadSelector narrows it to the selected
//! workloads (HTTP_FILTER and NETWORK_FILTER; CLUSTER and HTTP_ROUTE take none).
//!
//! Sharing: CLUSTER and HTTP_ROUTE merges are built into the layers of the namespaces they
//! apply to. HTTP_FILTER and NETWORK_FILTER patches are applied after generation to the listener
//! layers of the proxies they select (`filters`), one patched copy per (layer, patch set) in the
//! snapshot: a proxy no such patch selects keeps the shared layers, untouched.

mod filters;

use crate::resource::{Resource, SharedResource};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use filters::{FilterPatch, FilterValue};
use meshd_model::Rejected;
use meshd_model::envoyfilter::{
    ClusterMatch, FilterOperation, PatchContext, PatchKind, RouteConfigurationMatch,
};
use meshd_model::networking::Labels;
use meshd_model::registry::selector_matches;
use meshd_model::{ConfigObject, MeshConfig};
use prost::Message;
use std::collections::BTreeMap;

const HTTP_FILTER: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter";
const NETWORK_FILTER: &str = "envoy.config.listener.v3.Filter";
const CLUSTER: &str = "envoy.config.cluster.v3.Cluster";
const ROUTE: &str = "envoy.config.route.v3.Route";

/// Which proxies a patch is for.
#[derive(Clone, Debug)]
struct Target {
    namespace: String,
    /// In the root namespace without selector: every proxy.
    mesh_wide: bool,
    selector: Option<Labels>,
    /// `GATEWAY` only, sidecars only, or both (`ANY`).
    gateways: bool,
    sidecars: bool,
}

impl Target {
    fn applies(&self, namespace: &str, labels: &Labels, gateway: bool) -> bool {
        let kind = if gateway {
            self.gateways
        } else {
            self.sidecars
        };
        let place = self.mesh_wide
            || (self.namespace == namespace
                && self
                    .selector
                    .as_ref()
                    .is_none_or(|s| selector_matches(s, labels)));
        kind && place
    }
}

struct Merge<M> {
    target: Target,
    m: M,
    /// The patch, encoded: appended to a resource's encoding it merges (protobuf semantics:
    /// scalars replaced, messages merged, repeated fields appended).
    bytes: Vec<u8>,
}

/// A listener layer patched for some proxies: the shared layer's address, the context it was
/// generated for, and the patches selecting those proxies.
pub(super) type PatchedKey = (usize, u8, Vec<usize>);

impl super::MeshSnapshot {
    /// `layer` with the filter patches `selected` applied, built once per snapshot for every
    /// proxy with the same layer and patches; `layer` itself when none changes it.
    pub(super) fn patched_listeners(
        &self,
        layer: &crate::resource::Layer,
        proxy: PatchContext,
        selected: &[usize],
    ) -> crate::resource::Layer {
        if selected.is_empty() {
            return layer.clone();
        }
        let key: PatchedKey = (
            std::sync::Arc::as_ptr(layer) as usize,
            proxy as u8,
            selected.to_vec(),
        );
        let (_, patched) = super::get_or_build(&self.patched_listeners, key, |key| {
            let patched = match self.patches.patch_listeners(layer, proxy, selected) {
                None => layer.clone(),
                Some(map) => {
                    let new = crate::resource::LayerMap::new(map);
                    // What the previous snapshot patched from the same layer, when equal, keeps
                    // its identity (streams skip it by pointer).
                    let old = self.previous.patched_listeners.get(key).map(|(_, p)| p);
                    crate::resource::reuse_layer(old, new)
                }
            };
            (layer.clone(), patched)
        });
        patched
    }
}

/// Every applicable EnvoyFilter patch of a snapshot.
#[derive(Default)]
pub struct Patches {
    /// HTTP_FILTER and NETWORK_FILTER patches, in the order they apply.
    filters: Vec<(Target, FilterPatch)>,
    clusters: Vec<Merge<ClusterMatch>>,
    routes: Vec<Merge<RouteConfigurationMatch>>,
    /// EnvoyFilters not applied, and why.
    pub problems: Vec<Rejected>,
}

fn context(ctx: Option<&str>) -> (bool, bool) {
    match ctx.unwrap_or("ANY") {
        "GATEWAY" => (true, false),
        "SIDECAR_INBOUND" | "SIDECAR_OUTBOUND" => (false, true),
        _ => (true, true),
    }
}

fn rejected(o: &ConfigObject, reason: String) -> Rejected {
    Rejected {
        file: o.source.file.clone(),
        line: o.source.line,
        kind: Some(o.kind()),
        namespace: Some(o.meta.namespace().to_string()),
        name: Some(o.meta.name.clone()),
        reason,
    }
}

/// The Envoy `@type`s in a patch value that meshd's descriptors (Envoy 1.40's) do not know, with
/// the path of the field holding each.
fn unknown_types(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            let typed_struct = o
                .get("@type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.ends_with(".TypedStruct"));
            for (k, x) in o {
                let here = format!("{path}.{k}");
                let url = match k.as_str() {
                    "@type" if !typed_struct => x.as_str(),
                    "type_url" | "typeUrl" if typed_struct => x.as_str(),
                    _ => None,
                };
                match url {
                    Some(url) if !crate::json::knows_type(url) => out.push(format!(
                        "{here}: unknown type `{url}` (not an Envoy 1.40 type)"
                    )),
                    _ => unknown_types(x, &here, out),
                }
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                unknown_types(x, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes an HTTP_FILTER (`HttpFilter`) or NETWORK_FILTER (`Filter`) patch value; the error
/// starts with the field it is about, relative to `patch.value`.
fn decode_filter(
    f: &meshd_model::envoyfilter::FilterPatch<'_>,
    http: bool,
) -> Result<Option<FilterValue>, String> {
    let Some(value) = f.value else {
        return Ok(None);
    };
    let mut unknown = Vec::new();
    unknown_types(value, "", &mut unknown);
    if let Some(first) = unknown.into_iter().next() {
        return Err(first);
    }
    let configured = value
        .get("typed_config")
        .or_else(|| value.get("typedConfig"));
    if configured.is_none() && f.operation != FilterOperation::Merge {
        return Err(".typed_config is required (Envoy 1.40 configures filters by type)".into());
    }
    let full_name = if http { HTTP_FILTER } else { NETWORK_FILTER };
    let bytes = crate::json::json_to_proto(full_name, value).map_err(|e| format!(": {e}"))?;
    let decoded = if http {
        HttpFilter::decode(bytes.as_slice()).map(FilterValue::Http)
    } else {
        Filter::decode(bytes.as_slice()).map(FilterValue::Network)
    };
    decoded.map(Some).map_err(|e| format!(": {e}"))
}

impl Patches {
    pub fn build(config: &MeshConfig, root_namespace: &str) -> Patches {
        let mut filters: Vec<_> = config.envoy_filters().collect();
        // Istio's order: root namespace first, then by priority, then by name.
        filters.sort_by_key(|(o, ef)| {
            (
                o.meta.namespace() != root_namespace,
                ef.priority.unwrap_or(0),
                o.meta.namespace().to_string(),
                o.meta.name.clone(),
            )
        });
        let mut out = Patches::default();
        for (o, ef) in filters {
            let mut inserts = Vec::new();
            let mut clusters = Vec::new();
            let mut routes = Vec::new();
            let mut problem = None;
            for (i, p) in ef.config_patches.iter().enumerate() {
                let (gateways, sidecars) =
                    context(p.matches.as_ref().and_then(|m| m.context.as_deref()));
                let target = Target {
                    namespace: o.meta.namespace().to_string(),
                    mesh_wide: o.meta.namespace() == root_namespace
                        && ef.workload_selector.is_none(),
                    selector: ef.workload_selector.as_ref().map(|s| s.labels.clone()),
                    gateways,
                    sidecars,
                };
                let at = format!("spec.configPatches[{i}].patch.value");
                let decoded = match p.kind() {
                    Err(e) => Err(format!("spec.configPatches[{i}]: {e}")),
                    Ok(PatchKind::HttpFilter(f) | PatchKind::NetworkFilter(f)) => {
                        let http = p.apply_to == "HTTP_FILTER";
                        decode_filter(&f, http)
                            .map(|value| {
                                inserts.push((
                                    target.clone(),
                                    FilterPatch {
                                        context: f.context,
                                        listener: f.listener.clone(),
                                        operation: f.operation,
                                        relative_to: f.relative_to.map(str::to_string),
                                        value,
                                        http,
                                    },
                                ))
                            })
                            .map_err(|e| format!("{at}{e}"))
                    }
                    Ok(PatchKind::MergeCluster { m, value }) => {
                        if value.get("name").is_some() {
                            Err(format!("{at}: a MERGE cannot rename the cluster"))
                        } else {
                            crate::json::json_to_proto(CLUSTER, value)
                                .map(|bytes| {
                                    clusters.push(Merge {
                                        target: target.clone(),
                                        m: m.clone(),
                                        bytes,
                                    })
                                })
                                .map_err(|e| format!("{at}: {e}"))
                        }
                    }
                    Ok(PatchKind::MergeRoute { m, value }) => {
                        crate::json::json_to_proto(ROUTE, value)
                            .map(|bytes| {
                                routes.push(Merge {
                                    target: target.clone(),
                                    m: m.clone(),
                                    bytes,
                                })
                            })
                            .map_err(|e| format!("{at}: {e}"))
                    }
                };
                if let Err(e) = decoded {
                    problem = Some(e);
                    break;
                }
            }
            match problem {
                Some(reason) => out.problems.push(rejected(o, reason)),
                None => {
                    out.filters.extend(inserts);
                    out.clusters.extend(clusters);
                    out.routes.extend(routes);
                }
            }
        }
        out
    }

    /// The HTTP_FILTER and NETWORK_FILTER patches selecting a proxy (by index, in order).
    pub fn filter_patches_for(
        &self,
        namespace: &str,
        labels: &Labels,
        gateway: bool,
    ) -> Vec<usize> {
        self.filters
            .iter()
            .enumerate()
            .filter(|(_, (t, _))| t.applies(namespace, labels, gateway))
            .map(|(i, _)| i)
            .collect()
    }

    /// `layer`'s listeners, generated for a proxy in context `proxy`, with the patches
    /// `selected` (from [`Patches::filter_patches_for`]) applied: `None` when none changes any.
    /// Listeners no patch changes keep their shared encoding.
    pub fn patch_listeners(
        &self,
        layer: &crate::resource::LayerMap,
        proxy: PatchContext,
        selected: &[usize],
    ) -> Option<BTreeMap<String, SharedResource>> {
        let patches: Vec<&FilterPatch> = selected
            .iter()
            .filter_map(|&i| self.filters.get(i))
            .map(|(_, p)| p)
            .filter(|p| p.context.includes(proxy))
            .collect();
        if patches.is_empty() {
            return None;
        }
        let mut out: Option<BTreeMap<String, SharedResource>> = None;
        for (name, res) in layer.iter() {
            let Ok(mut l) = Listener::decode(res.value().as_ref()) else {
                continue;
            };
            if filters::patch_listener(&mut l, proxy, &patches) {
                out.get_or_insert_with(|| (**layer).clone())
                    .insert(name.clone(), Resource::encode(name.clone(), &l));
            }
        }
        out
    }

    pub fn has_filter_patches(&self) -> bool {
        !self.filters.is_empty()
    }

    /// The clusters of `layer` with the CLUSTER merges for this proxy kind and namespace applied;
    /// `None` when no patch applies (share the layer as it is).
    pub fn patch_clusters(
        &self,
        layer: &BTreeMap<String, SharedResource>,
        namespace: &str,
        gateway: bool,
    ) -> Option<BTreeMap<String, SharedResource>> {
        let none = Labels::new();
        let merges: Vec<_> = self
            .clusters
            .iter()
            .filter(|m| m.target.applies(namespace, &none, gateway))
            .collect();
        if merges.is_empty() {
            return None;
        }
        let mut out = layer.clone();
        for (name, res) in out.iter_mut() {
            let mut parts = name.splitn(4, '|');
            let (Some("outbound"), Some(port), Some(subset), Some(host)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let port: u32 = port.parse().unwrap_or(0);
            let mut bytes: Option<Vec<u8>> = None;
            for m in merges
                .iter()
                .filter(|m| m.m.matches(name, port, subset, host))
            {
                let b = bytes.get_or_insert_with(|| res.value().to_vec());
                b.extend_from_slice(&m.bytes);
            }
            if let Some(b) = bytes
                && let Ok(c) = Cluster::decode(b.as_slice())
            {
                *res = Resource::encode(name.clone(), &c);
            }
        }
        Some(out)
    }

    /// [`Patches::patch_clusters`] in place, for a shared layer.
    pub fn patch_cluster_layer(
        &self,
        layer: &mut crate::resource::Layer,
        namespace: &str,
        gateway: bool,
    ) {
        if let Some(patched) = self.patch_clusters(layer, namespace, gateway) {
            *layer = crate::resource::LayerMap::new(patched);
        }
    }

    /// Applies the HTTP_ROUTE merges for this proxy kind and namespace to a route configuration
    /// served on `port`.
    /// Whether some route patch applies to route tables built for `namespace`.
    pub fn patches_routes(&self, namespace: &str, gateway: bool) -> bool {
        let none = Labels::new();
        self.routes
            .iter()
            .any(|m| m.target.applies(namespace, &none, gateway))
    }

    pub fn patch_routes(
        &self,
        rc: &mut RouteConfiguration,
        port: u32,
        namespace: &str,
        gateway: bool,
    ) {
        let none = Labels::new();
        let merges: Vec<_> = self
            .routes
            .iter()
            .filter(|m| m.target.applies(namespace, &none, gateway))
            .collect();
        if merges.is_empty() {
            return;
        }
        let rc_name = rc.name.clone();
        for vh in &mut rc.virtual_hosts {
            for r in &mut vh.routes {
                let mut bytes: Option<Vec<u8>> = None;
                for m in merges
                    .iter()
                    .filter(|m| m.m.matches(&rc_name, port, &vh.name, &r.name))
                {
                    bytes
                        .get_or_insert_with(|| r.encode_to_vec())
                        .extend_from_slice(&m.bytes);
                }
                if let Some(b) = bytes
                    && let Ok(merged) = Route::decode(b.as_slice())
                {
                    *r = merged;
                }
            }
        }
    }
}

#[cfg(test)]
mod filters_tests;
#[cfg(test)]
mod tests;
