//! Encoded xDS resources: built once, shared by reference between every proxy that receives them.

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// ECDS: filter configs that HTTP filters with `config_discovery` ask for by name.
pub const EXTENSION_CONFIG: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
/// What EnvoyFilter BOOTSTRAP patches add to a proxy's bootstrap: asked for once, by `meshd
/// bootstrap` before Envoy starts (Envoy reads its bootstrap only at start), never by Envoy.
pub const BOOTSTRAP: &str = "type.googleapis.com/envoy.config.bootstrap.v3.Bootstrap";
/// The one resource of type [`BOOTSTRAP`] a proxy can have.
pub const BOOTSTRAP_PATCH: &str = "bootstrap";

/// Push order: make before break (clusters and their endpoints before the listeners and routes
/// that refer to them, and the filter configs listeners' filters name; secrets last, Envoy warms
/// them on demand).
pub const PUSH_ORDER: [&str; 7] = [
    CLUSTER,
    ENDPOINT,
    EXTENSION_CONFIG,
    LISTENER,
    ROUTE,
    SECRET,
    BOOTSTRAP,
];

/// `type_url` as the static of [`PUSH_ORDER`] it equals, if this server serves it.
pub fn served_type(type_url: &str) -> Option<&'static str> {
    PUSH_ORDER.into_iter().find(|t| *t == type_url)
}

pub fn short_type(type_url: &str) -> &str {
    match type_url {
        CLUSTER => "CDS",
        ENDPOINT => "EDS",
        LISTENER => "LDS",
        ROUTE => "RDS",
        SECRET => "SDS",
        EXTENSION_CONFIG => "ECDS",
        BOOTSTRAP => "Bootstrap",
        other => other.rsplit('.').next().unwrap_or(other),
    }
}

/// Wildcard types: a proxy gets every resource of the type without naming them.
pub fn is_wildcard_type(type_url: &str) -> bool {
    matches!(type_url, CLUSTER | LISTENER)
}

#[derive(Debug)]
pub struct Resource {
    pub name: String,
    /// Content hash: equal versions mean equal bytes, so unchanged resources are not resent.
    pub version: String,
    /// The resource as field 2 of a DiscoveryResponse (an `Any`), encoded once: every SotW push
    /// of it to any proxy writes these bytes by reference. The only copy of the resource kept.
    sotw_field: Bytes,
    /// Where the `Any`'s value (the resource itself) starts in `sotw_field`.
    value_at: usize,
    type_url: &'static str,
    /// The same resource as field 2 of a DeltaDiscoveryResponse is a `Resource` message whose
    /// field 2 is the same `Any`: these bytes before `sotw_field` (key, length, version) and
    /// after it (name) make it, with no copy of the resource.
    delta_head: Bytes,
    delta_tail: Bytes,
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.version == other.version && self.value() == other.value()
    }
}

impl Eq for Resource {}

/// `field` as a length-delimited protobuf field: key, length, bytes.
pub fn length_delimited(tag: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

pub type SharedResource = Arc<Resource>;

/// The type URLs this server serves, as statics (a resource keeps a pointer, not a copy).
fn static_type_url(url: &str) -> &'static str {
    PUSH_ORDER
        .into_iter()
        .find(|t| *t == url)
        .unwrap_or_else(|| Box::leak(url.to_string().into_boxed_str()))
}

impl Resource {
    pub fn encode<M: Message + Name>(name: impl Into<String>, msg: &M) -> SharedResource {
        Self::from_value::<M>(name, msg.encode_to_vec())
    }

    /// A resource from its encoding as an `M`, assembled by the caller (a route table from its
    /// virtual hosts encoded once each, say).
    pub fn from_value<M: Name>(name: impl Into<String>, value: Vec<u8>) -> SharedResource {
        let name = name.into();
        let version = content_hash(&[&value]);
        let type_url = static_type_url(&M::type_url());
        let mut any = length_delimited(1, type_url.as_bytes());
        any.extend(length_delimited(2, &value));
        let sotw_field = length_delimited(2, &any);
        let value_at = sotw_field.len() - value.len();
        let version_field = length_delimited(1, version.as_bytes());
        let name_field = length_delimited(3, name.as_bytes());
        let mut delta_head = Vec::with_capacity(version_field.len() + 10);
        prost::encoding::encode_key(
            2,
            prost::encoding::WireType::LengthDelimited,
            &mut delta_head,
        );
        prost::encoding::encode_varint(
            (version_field.len() + sotw_field.len() + name_field.len()) as u64,
            &mut delta_head,
        );
        delta_head.extend(version_field);
        Arc::new(Resource {
            name,
            version,
            sotw_field: Bytes::from(sotw_field),
            value_at,
            type_url,
            delta_head: Bytes::from(delta_head),
            delta_tail: Bytes::from(name_field),
        })
    }

    pub fn sotw_field(&self) -> Bytes {
        self.sotw_field.clone()
    }

    /// The chunks of field 2 of a DeltaDiscoveryResponse carrying this resource.
    pub fn delta_field(&self) -> [Bytes; 3] {
        [
            self.delta_head.clone(),
            self.sotw_field.clone(),
            self.delta_tail.clone(),
        ]
    }

    pub fn type_url(&self) -> &str {
        self.type_url
    }

    /// The encoded resource (the `Any`'s value), by reference.
    pub fn value(&self) -> Bytes {
        self.sotw_field.slice(self.value_at..)
    }

    /// The resource as an `Any` (a copy: for inspection, not for the push path).
    pub fn any(&self) -> Any {
        Any {
            type_url: self.type_url.to_string(),
            value: self.value().to_vec(),
        }
    }

    pub fn size(&self) -> usize {
        self.sotw_field.len() - self.value_at
    }
}

pub fn content_hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..8])
}

/// Pack a message into an `Any` for typed_config fields.
pub fn any<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// A set of resources shared by many proxies (a scope's clusters, say), with its version
/// computed once however many proxies are sent it.
#[derive(Debug, Default)]
pub struct LayerMap {
    map: BTreeMap<String, SharedResource>,
    version: OnceLock<String>,
    sotw_chunks: OnceLock<Vec<Bytes>>,
    delta_chunks: OnceLock<Vec<Bytes>>,
}

/// Resources smaller than this are written to the wire copied together into chunks of at most
/// this size. h2 queues one frame per chunk it is given and keeps the queue's slab at its
/// largest size for the life of the connection, so the chunk size sets what a first sync leaves
/// behind on every connection: 64 KB chunks make a 2 MB response 32 slots (16 KB ones, 128).
pub const CHUNK_TARGET: usize = 64 << 10;

/// Layers smaller than this are one proxy's own (its inbound side, its certificates): they are
/// coalesced when sent rather than kept coalesced (a kept copy would double what they cost).
const KEPT_CHUNKS_MIN: usize = 16 << 10;

/// `fields` as chunks of about `CHUNK_TARGET` bytes: runs of small ones copied together into a
/// chunk of exactly their size, big ones and lone small ones by reference.
pub fn coalesce(fields: impl IntoIterator<Item = Bytes>) -> Vec<Bytes> {
    fn flush(run: &mut Vec<Bytes>, run_len: &mut usize, out: &mut Vec<Bytes>) {
        match run.len() {
            0 => {}
            1 => out.extend(run.pop()),
            _ => {
                let mut chunk = Vec::with_capacity(*run_len);
                for f in run.drain(..) {
                    chunk.extend_from_slice(&f);
                }
                out.push(Bytes::from(chunk));
            }
        }
        *run_len = 0;
    }
    let mut out = Vec::new();
    let mut run = Vec::new();
    let mut run_len = 0;
    for f in fields {
        if f.len() >= CHUNK_TARGET {
            flush(&mut run, &mut run_len, &mut out);
            out.push(f);
            continue;
        }
        if run_len + f.len() > CHUNK_TARGET {
            flush(&mut run, &mut run_len, &mut out);
        }
        run_len += f.len();
        run.push(f);
    }
    flush(&mut run, &mut run_len, &mut out);
    out
}

pub type Layer = Arc<LayerMap>;

impl LayerMap {
    pub fn new(map: BTreeMap<String, SharedResource>) -> Layer {
        Arc::new(LayerMap::from(map))
    }

    /// A hash of the names and versions in the layer.
    pub fn version(&self) -> &str {
        self.version.get_or_init(|| {
            let parts: Vec<&[u8]> = self
                .map
                .values()
                .flat_map(|r| [r.name.as_bytes(), r.version.as_bytes()])
                .collect();
            content_hash(&parts)
        })
    }

    /// Every resource of the layer as SotW response fields, in chunks built once and written
    /// by reference into the response of every proxy that gets the whole layer.
    pub fn sotw_chunks(&self) -> Cow<'_, [Bytes]> {
        let fields = || self.map.values().map(|r| r.sotw_field());
        if self.small() {
            return Cow::Owned(coalesce(fields()));
        }
        Cow::Borrowed(self.sotw_chunks.get_or_init(|| coalesce(fields())))
    }

    /// The same for Delta responses (a proxy's first sync of the layer).
    pub fn delta_chunks(&self) -> Cow<'_, [Bytes]> {
        let fields = || self.map.values().flat_map(|r| r.delta_field());
        if self.small() {
            return Cow::Owned(coalesce(fields()));
        }
        Cow::Borrowed(self.delta_chunks.get_or_init(|| coalesce(fields())))
    }

    /// Whether the layer is below `KEPT_CHUNKS_MIN`.
    fn small(&self) -> bool {
        let mut total = 0;
        self.map.values().all(|r| {
            total += r.size();
            total < KEPT_CHUNKS_MIN
        })
    }
}

impl Clone for LayerMap {
    fn clone(&self) -> Self {
        LayerMap::from(self.map.clone())
    }
}

impl std::ops::Deref for LayerMap {
    type Target = BTreeMap<String, SharedResource>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl std::ops::DerefMut for LayerMap {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.version = OnceLock::new();
        self.sotw_chunks = OnceLock::new();
        self.delta_chunks = OnceLock::new();
        &mut self.map
    }
}

impl From<BTreeMap<String, SharedResource>> for LayerMap {
    fn from(map: BTreeMap<String, SharedResource>) -> Self {
        LayerMap {
            map,
            version: OnceLock::new(),
            sotw_chunks: OnceLock::new(),
            delta_chunks: OnceLock::new(),
        }
    }
}

/// `new`, with every resource `old` has at the same version replaced by `old`'s pointer, and
/// `old` itself when nothing differs: a rebuilt mesh keeps the identity of what did not change,
/// so streams tell unchanged layers by pointer and send only what changed.
pub fn reuse_layer(old: Option<&Layer>, new: Layer) -> Layer {
    let Some(old) = old else {
        return new;
    };
    if Arc::ptr_eq(old, &new) {
        return new;
    }
    let unchanged = |name: &String, r: &SharedResource| {
        old.get(name)
            .filter(|o| Arc::ptr_eq(o, r) || o.version == r.version)
            .cloned()
    };
    if old.len() == new.len() && new.iter().all(|(n, r)| unchanged(n, r).is_some()) {
        return old.clone();
    }
    let map = new
        .iter()
        .map(|(n, r)| (n.clone(), unchanged(n, r).unwrap_or_else(|| r.clone())))
        .collect();
    LayerMap::new(map)
}

/// One type's resources for one proxy: shared layers (a scope's set, encoded once and held by
/// every proxy in that scope) plus, at most, a small layer of the proxy's own. Names are
/// disjoint across layers. Cloning copies pointers, never resources.
#[derive(Clone, Debug, Default)]
pub struct ResourceSet {
    layers: Vec<Layer>,
}

impl ResourceSet {
    pub fn from_layers(layers: Vec<Layer>) -> ResourceSet {
        ResourceSet { layers }
    }

    pub fn layer(layer: Layer) -> ResourceSet {
        ResourceSet {
            layers: vec![layer],
        }
    }

    pub fn into_layers(self) -> Vec<Layer> {
        self.layers
    }

    /// Adds a layer (names disjoint from the others').
    pub fn push_layer(&mut self, layer: Layer) {
        self.layers.push(layer);
    }

    pub fn get(&self, name: &str) -> Option<&SharedResource> {
        self.layers.iter().find_map(|l| l.get(name))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = &SharedResource> {
        self.layers.iter().flat_map(|l| l.values())
    }

    pub fn len(&self) -> usize {
        self.layers.iter().map(|l| l.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The version of what `sub` selects: from the layers' cached versions when it selects
    /// everything, so a push to many proxies hashes each shared layer once.
    pub fn version(&self, sub: &Subscription) -> String {
        match sub {
            Subscription::All if self.layers.len() == 1 => self.layers[0].version().to_string(),
            Subscription::All => {
                let parts: Vec<&[u8]> =
                    self.layers.iter().map(|l| l.version().as_bytes()).collect();
                content_hash(&parts)
            }
            Subscription::Names(_) => {
                let mut selected: Vec<&SharedResource> = select(self, sub).collect();
                selected.sort_by(|a, b| a.name.cmp(&b.name));
                let parts: Vec<&[u8]> = selected
                    .iter()
                    .flat_map(|r| [r.name.as_bytes(), r.version.as_bytes()])
                    .collect();
                content_hash(&parts)
            }
        }
    }

    /// Same layers by pointer: nothing in the set can differ.
    pub fn same_as(&self, other: &ResourceSet) -> bool {
        self.layers.len() == other.layers.len()
            && self
                .layers
                .iter()
                .zip(&other.layers)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl FromIterator<(String, SharedResource)> for ResourceSet {
    fn from_iter<I: IntoIterator<Item = (String, SharedResource)>>(iter: I) -> Self {
        ResourceSet::layer(LayerMap::new(iter.into_iter().collect()))
    }
}

/// Which resources of a type a proxy asked for. A request naming exactly what is available
/// collapses to `All`, so the common case keeps no per-proxy copy of the names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscription {
    All,
    Names(Arc<BTreeSet<String>>),
}

impl Subscription {
    pub fn from_names(names: BTreeSet<String>, available: &ResourceSet) -> Subscription {
        if !names.is_empty()
            && names.len() == available.len()
            && names.iter().all(|n| available.contains(n))
        {
            Subscription::All
        } else {
            Subscription::Names(Arc::new(names))
        }
    }

    /// The subscription a request naming `names` (repeats allowed) asks for. `All` is told
    /// without copying a name: a sidecar's first EDS request names every cluster, for each of
    /// thousands of proxies connecting at once.
    pub fn requested(names: &[String], available: &ResourceSet) -> Subscription {
        if Subscription::All.is_requested_by(names, available) {
            Subscription::All
        } else {
            Subscription::from_names(names.iter().cloned().collect(), available)
        }
    }

    /// Whether a request naming `names` asks for exactly this subscription (no allocation: an
    /// ACK repeats its names, often every cluster).
    pub fn is_requested_by(&self, names: &[String], available: &ResourceSet) -> bool {
        let distinct = || {
            names
                .iter()
                .map(String::as_str)
                .collect::<std::collections::HashSet<&str>>()
                .len()
        };
        match self {
            Subscription::All => {
                !names.is_empty()
                    && names.len() >= available.len()
                    && names.iter().all(|n| available.contains(n))
                    && distinct() == available.len()
            }
            Subscription::Names(set) => {
                names.len() >= set.len()
                    && names.iter().all(|n| set.contains(n))
                    && distinct() == set.len()
            }
        }
    }

    pub fn selects(&self, name: &str) -> bool {
        match self {
            Subscription::All => true,
            Subscription::Names(n) => n.contains(name),
        }
    }

    /// The names subscribed, spelled out against what is available.
    pub fn names(&self, available: &ResourceSet) -> BTreeSet<String> {
        match self {
            Subscription::All => available.iter().map(|r| r.name.clone()).collect(),
            Subscription::Names(n) => n.as_ref().clone(),
        }
    }
}

/// The resources of `set` that `sub` selects.
pub fn select<'a>(
    set: &'a ResourceSet,
    sub: &'a Subscription,
) -> Box<dyn Iterator<Item = &'a SharedResource> + 'a> {
    match sub {
        Subscription::All => Box::new(set.iter()),
        Subscription::Names(names) => Box::new(names.iter().filter_map(|n| set.get(n))),
    }
}

#[cfg(test)]
#[path = "resource_tests.rs"]
mod tests;
