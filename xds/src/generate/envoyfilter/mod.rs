//! EnvoyFilter patches, in the shapes meshd supports (see `meshd_model::envoyfilter`): decoded
//! once per snapshot against Envoy's descriptors, then applied to the generated resources.
//! Pure. A patch whose value does not decode rejects its whole EnvoyFilter, with the reason
//! (`problems`), and nothing of it is applied.
//!
//! Scope: an EnvoyFilter in the root namespace without selector applies to every proxy; one in
//! a namespace applies to that namespace's proxies; a workloadSelector narrows it to the
//! selected workloads. Order: root namespace first, then by priority, then namespace and name.
//!
//! Sharing: patches are applied after generation, per resource type, to the layers of the
//! proxies they select: one patched copy per (shared layer, patch set) in a snapshot, reused
//! across rebuilds when equal. A proxy no patch selects keeps the shared layers, untouched.
//! Which layer is which context: a sidecar's scope layers are SIDECAR_OUTBOUND, its inbound
//! layers SIDECAR_INBOUND, a gateway's layers GATEWAY; an ADD with context ANY goes to the
//! outbound (or gateway) layer.

mod clusters;
mod decode;
mod filters;
mod listeners;
mod routes;

use crate::resource::{Layer, LayerMap, Resource, SharedResource};
use decode::{compile, context, rejected};
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, ListenerFilter};
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
use filters::FilterPatch;
use meshd_model::envoyfilter::{
    ClusterMatch, FilterOperation, ListenerMatch, PatchContext, RouteConfigurationMatch,
};
use meshd_model::networking::Labels;
use meshd_model::registry::selector_matches;
use meshd_model::{MeshConfig, Rejected};
use prost::{Message, Name};
use std::collections::BTreeMap;

const HTTP_FILTER: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter";
const NETWORK_FILTER: &str = "envoy.config.listener.v3.Filter";

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
    /// `match.proxy`: by what the proxy's node says of itself.
    proxy: Option<meshd_model::envoyfilter::CompiledProxyMatch>,
}

impl Target {
    fn applies(
        &self,
        namespace: &str,
        labels: &Labels,
        gateway: bool,
        metadata: &crate::proxy::NodeMetadata,
    ) -> bool {
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
        kind && place && self.proxy.as_ref().is_none_or(|p| p.matches(metadata))
    }
}

/// A whole-object patch, decoded: where it applies, what it does, with what.
#[derive(Clone, Debug)]
struct Obj<M, V> {
    pub(super) context: PatchContext,
    pub(super) m: M,
    pub(super) operation: FilterOperation,
    /// `None` only for REMOVE.
    pub(super) value: Option<V>,
}

/// One patch, decoded, by the resource type it changes.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // a few per snapshot, built once
enum Compiled {
    /// HTTP_FILTER, NETWORK_FILTER.
    Filter(FilterPatch),
    Listener(Obj<ListenerMatch, Listener>),
    FilterChain(Obj<ListenerMatch, FilterChain>),
    ListenerFilter(Obj<ListenerMatch, ListenerFilter>),
    Cluster(Obj<ClusterMatch, Cluster>),
    RouteConfiguration(Obj<RouteConfigurationMatch, RouteConfiguration>),
    VirtualHost(Obj<RouteConfigurationMatch, VirtualHost>),
    HttpRoute(Obj<RouteConfigurationMatch, Route>),
    ExtensionConfig(Obj<(), TypedExtensionConfig>),
    Bootstrap(Obj<(), Bootstrap>),
}

/// The resource types patches change, each a kind of layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum LayerKind {
    Listeners,
    Clusters,
    Routes,
    /// ECDS: no layer is generated; EXTENSION_CONFIG patches ADD to an empty one.
    ExtensionConfigs,
    /// BOOTSTRAP patches MERGE, in order, into one resource of an empty layer.
    Bootstrap,
}

impl Compiled {
    fn layer_kind(&self) -> LayerKind {
        match self {
            Compiled::Filter(_)
            | Compiled::Listener(_)
            | Compiled::FilterChain(_)
            | Compiled::ListenerFilter(_) => LayerKind::Listeners,
            Compiled::Cluster(_) => LayerKind::Clusters,
            Compiled::ExtensionConfig(_) => LayerKind::ExtensionConfigs,
            Compiled::Bootstrap(_) => LayerKind::Bootstrap,
            _ => LayerKind::Routes,
        }
    }

    fn context(&self) -> PatchContext {
        match self {
            Compiled::Filter(p) => p.context,
            Compiled::Listener(o) => o.context,
            Compiled::FilterChain(o) => o.context,
            Compiled::ListenerFilter(o) => o.context,
            Compiled::Cluster(o) => o.context,
            Compiled::RouteConfiguration(o) => o.context,
            Compiled::VirtualHost(o) => o.context,
            Compiled::HttpRoute(o) => o.context,
            Compiled::ExtensionConfig(o) => o.context,
            Compiled::Bootstrap(o) => o.context,
        }
    }
}

/// Whether an ADD in context `patch` adds to a layer generated for `layer`: its own context, or
/// for ANY the outbound (gateway) layer, so a name never lands in two layers of one proxy.
pub(super) fn adds_to(patch: PatchContext, layer: PatchContext) -> bool {
    patch == layer || (patch == PatchContext::Any && layer != PatchContext::SidecarInbound)
}

/// A patched layer: the shared layer's address, its kind and context, and the patches.
pub(super) type PatchedKey = (usize, LayerKind, PatchContextKey, Vec<usize>);
pub(super) type PatchContextKey = u8;

impl super::MeshSnapshot {
    /// `layer` (of `kind`, generated for context `proxy`) with the patches `selected` applied,
    /// built once per snapshot for every proxy with the same layer and patches; `layer` itself
    /// when none changes it.
    pub(super) fn patched_layer(
        &self,
        layer: &Layer,
        kind: LayerKind,
        proxy: PatchContext,
        selected: &[usize],
    ) -> Layer {
        if selected.is_empty() {
            return layer.clone();
        }
        let key: PatchedKey = (
            std::sync::Arc::as_ptr(layer) as usize,
            kind,
            proxy as u8,
            selected.to_vec(),
        );
        let (_, patched) = super::get_or_build(&self.patched_layers, key, |key| {
            let patched = match self.patches.patch_layer(layer, kind, proxy, selected) {
                None => layer.clone(),
                Some(map) => {
                    // What the previous snapshot patched from the same layer, when equal, keeps
                    // its identity (streams skip it by pointer).
                    let old = self.previous.patched_layers.get(key).map(|(_, p)| p);
                    crate::resource::reuse_layer(old, LayerMap::new(map))
                }
            };
            (layer.clone(), patched)
        });
        patched
    }
}

impl super::MeshSnapshot {
    /// A sidecar's outbound and inbound layers of `kind`, patched: names stay disjoint across
    /// the two (a name an ADD put in both is kept in the outbound layer only).
    pub(super) fn patched_sidecar_layers(
        &self,
        outbound: &Layer,
        inbound: &Layer,
        kind: LayerKind,
        selected: &[usize],
    ) -> Vec<Layer> {
        let out = self.patched_layer(outbound, kind, PatchContext::SidecarOutbound, selected);
        let mut inb = self.patched_layer(inbound, kind, PatchContext::SidecarInbound, selected);
        let patched =
            !std::sync::Arc::ptr_eq(&out, outbound) || !std::sync::Arc::ptr_eq(&inb, inbound);
        if patched && inb.keys().any(|k| out.contains_key(k)) {
            let kept: BTreeMap<String, SharedResource> = inb
                .iter()
                .filter(|(k, _)| !out.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            inb = LayerMap::new(kept);
        }
        vec![out, inb]
    }
}

/// Every applicable EnvoyFilter patch of a snapshot.
#[derive(Default)]
pub struct Patches {
    /// In the order they apply.
    patches: Vec<(Target, Compiled)>,
    /// EnvoyFilters not applied, and why.
    pub problems: Vec<Rejected>,
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
            let mut compiled = Vec::new();
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
                    // (A pattern that does not compile rejected the EnvoyFilter when read.)
                    proxy: p
                        .matches
                        .as_ref()
                        .and_then(|m| m.proxy.as_ref())
                        .and_then(|p| p.compile().ok()),
                };
                let decoded = match p.kind() {
                    Err(e) => Err(format!("spec.configPatches[{i}]: {e}")),
                    Ok(kind) => compile(kind, p.apply_to == "HTTP_FILTER")
                        .map_err(|e| format!("spec.configPatches[{i}].patch.value{e}")),
                };
                match decoded {
                    Ok(c) => compiled.push((target, c)),
                    Err(e) => {
                        problem = Some(e);
                        break;
                    }
                }
            }
            match problem {
                Some(reason) => out.problems.push(rejected(o, reason)),
                None => out.patches.extend(compiled),
            }
        }
        out
    }

    /// The patches selecting a proxy (by index, in order).
    pub fn selected_for(
        &self,
        namespace: &str,
        labels: &Labels,
        gateway: bool,
        metadata: &crate::proxy::NodeMetadata,
    ) -> Vec<usize> {
        self.patches
            .iter()
            .enumerate()
            .filter(|(_, (t, _))| t.applies(namespace, labels, gateway, metadata))
            .map(|(i, _)| i)
            .collect()
    }

    pub fn has_patches(&self) -> bool {
        !self.patches.is_empty()
    }

    /// `layer`'s resources (of `kind`, generated for a proxy in context `proxy`) with the
    /// patches `selected` (from [`Patches::selected_for`]) applied: `None` when none changes
    /// any. Resources no patch changes keep their shared encoding.
    pub(super) fn patch_layer(
        &self,
        layer: &LayerMap,
        kind: LayerKind,
        proxy: PatchContext,
        selected: &[usize],
    ) -> Option<BTreeMap<String, SharedResource>> {
        let patches: Vec<&Compiled> = selected
            .iter()
            .filter_map(|&i| self.patches.get(i))
            .map(|(_, p)| p)
            .filter(|p| p.layer_kind() == kind && p.context().includes(proxy))
            .collect();
        if patches.is_empty() {
            return None;
        }
        match kind {
            LayerKind::Listeners => {
                let mut work = Work::new(layer);
                listeners::apply(&mut work, proxy, &patches);
                work.finish()
            }
            LayerKind::Clusters => {
                let mut work = Work::new(layer);
                clusters::apply(&mut work, proxy, &patches);
                work.finish()
            }
            LayerKind::Routes => {
                let mut work = Work::new(layer);
                routes::apply(&mut work, proxy, &patches);
                work.finish()
            }
            LayerKind::ExtensionConfigs => {
                let mut work = Work::new(layer);
                for p in &patches {
                    // ADD only; a later patch with the same name wins (Istio's priority order).
                    if let Compiled::ExtensionConfig(Obj { value: Some(v), .. }) = p {
                        work.add(v.name.clone(), v.clone());
                    }
                }
                work.finish()
            }
            LayerKind::Bootstrap => {
                let mut work = Work::new(layer);
                let mut merged = Bootstrap::default();
                for p in &patches {
                    if let Compiled::Bootstrap(Obj { value: Some(v), .. }) = p {
                        // Protobuf merge, as Istio's MERGE: later scalars win, lists append.
                        let _ = merged.merge(v.encode_to_vec().as_slice());
                    }
                }
                work.add(crate::resource::BOOTSTRAP_PATCH.to_string(), merged);
                work.finish()
            }
        }
    }
}

/// A layer being patched: the resources changed so far (decoded) and those removed; the rest
/// stays as shared.
pub(super) struct Work<'a, T> {
    layer: &'a LayerMap,
    changed: BTreeMap<String, T>,
    removed: std::collections::BTreeSet<String>,
}

impl<'a, T: Message + Name + Default + Clone> Work<'a, T> {
    fn new(layer: &'a LayerMap) -> Self {
        Work {
            layer,
            changed: BTreeMap::new(),
            removed: Default::default(),
        }
    }

    /// The names of the resources in the layer as patched so far.
    pub(super) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .layer
            .keys()
            .filter(|n| !self.removed.contains(*n))
            .cloned()
            .collect();
        names.extend(
            self.changed
                .keys()
                .filter(|n| !self.layer.contains_key(*n))
                .cloned(),
        );
        names
    }

    /// The resource as patched so far (a layer resource that does not decode: `None`).
    pub(super) fn get(&self, name: &str) -> Option<T> {
        if self.removed.contains(name) {
            return None;
        }
        match self.changed.get(name) {
            Some(t) => Some(t.clone()),
            None => T::decode(self.layer.get(name)?.value().as_ref()).ok(),
        }
    }

    /// Applies `f` to the named resource; keeps the result when `f` says it changed.
    pub(super) fn update(&mut self, name: &str, f: impl FnOnce(&mut T) -> bool) {
        if let Some(mut t) = self.get(name)
            && f(&mut t)
        {
            self.changed.insert(name.to_string(), t);
        }
    }

    pub(super) fn add(&mut self, name: String, t: T) {
        self.removed.remove(&name);
        self.changed.insert(name, t);
    }

    pub(super) fn remove(&mut self, name: &str) {
        self.changed.remove(name);
        if self.layer.contains_key(name) {
            self.removed.insert(name.to_string());
        }
    }

    fn finish(self) -> Option<BTreeMap<String, SharedResource>> {
        if self.changed.is_empty() && self.removed.is_empty() {
            return None;
        }
        let mut out: BTreeMap<String, SharedResource> = (**self.layer).clone();
        for name in &self.removed {
            out.remove(name);
        }
        for (name, t) in self.changed {
            out.insert(name.clone(), Resource::encode(name, &t));
        }
        Some(out)
    }
}

#[cfg(test)]
mod filters_tests;
#[cfg(test)]
mod istio_examples_tests;
#[cfg(test)]
mod objects_tests;
#[cfg(test)]
mod routes_tests;
#[cfg(test)]
mod tests;
