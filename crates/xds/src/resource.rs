//! Encoded xDS resources: built once, shared by reference between every proxy that receives them.

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Push order: make before break (clusters and their endpoints before the listeners and routes
/// that refer to them; secrets last, Envoy warms them on demand).
pub const PUSH_ORDER: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET];

pub fn short_type(type_url: &str) -> &str {
    match type_url {
        CLUSTER => "CDS",
        ENDPOINT => "EDS",
        LISTENER => "LDS",
        ROUTE => "RDS",
        SECRET => "SDS",
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
    pub any: Any,
    /// The resource as field 2 of a DiscoveryResponse, encoded once: every SotW push of it to
    /// any proxy writes these bytes by reference.
    sotw_field: Bytes,
    /// The same as field 2 of a DeltaDiscoveryResponse (a `Resource` with name and version).
    delta_field: OnceLock<Bytes>,
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.version == other.version && self.any == other.any
    }
}

impl Eq for Resource {}

/// `field` as a length-delimited protobuf field: key, length, bytes.
pub(crate) fn length_delimited(tag: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

pub type SharedResource = Arc<Resource>;

impl Resource {
    pub fn encode<M: Message + Name>(name: impl Into<String>, msg: &M) -> SharedResource {
        let value = msg.encode_to_vec();
        let version = content_hash(&[&value]);
        let any = Any {
            type_url: M::type_url(),
            value,
        };
        Arc::new(Resource {
            name: name.into(),
            version,
            sotw_field: Bytes::from(length_delimited(2, &any.encode_to_vec())),
            delta_field: OnceLock::new(),
            any,
        })
    }

    pub fn sotw_field(&self) -> Bytes {
        self.sotw_field.clone()
    }

    pub fn delta_field(&self) -> Bytes {
        self.delta_field
            .get_or_init(|| {
                let r = envoy_types::pb::envoy::service::discovery::v3::Resource {
                    name: self.name.clone(),
                    version: self.version.clone(),
                    resource: Some(self.any.clone()),
                    ..Default::default()
                };
                Bytes::from(length_delimited(2, &r.encode_to_vec()))
            })
            .clone()
    }

    pub fn type_url(&self) -> &str {
        &self.any.type_url
    }

    pub fn size(&self) -> usize {
        self.any.value.len()
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

/// One type's resources for one proxy: shared layers (a scope's set, encoded once and held by
/// every proxy in that scope) plus, at most, a small layer of the proxy's own. Names are
/// disjoint across layers. Cloning copies pointers, never resources.
#[derive(Clone, Debug, Default)]
pub struct ResourceSet {
    layers: Vec<Arc<BTreeMap<String, SharedResource>>>,
}

impl ResourceSet {
    pub fn from_layers(layers: Vec<Arc<BTreeMap<String, SharedResource>>>) -> ResourceSet {
        ResourceSet { layers }
    }

    pub fn layer(layer: Arc<BTreeMap<String, SharedResource>>) -> ResourceSet {
        ResourceSet {
            layers: vec![layer],
        }
    }

    pub fn into_layers(self) -> Vec<Arc<BTreeMap<String, SharedResource>>> {
        self.layers
    }

    /// Adds a layer (names disjoint from the others').
    pub fn push_layer(&mut self, layer: Arc<BTreeMap<String, SharedResource>>) {
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
        ResourceSet::layer(Arc::new(iter.into_iter().collect()))
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
