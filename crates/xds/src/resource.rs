//! Encoded xDS resources: built once, shared by reference between every proxy that receives them.

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use sha2::{Digest, Sha256};
use std::sync::Arc;

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    /// Content hash: equal versions mean equal bytes, so unchanged resources are not resent.
    pub version: String,
    pub any: Any,
}

pub type SharedResource = Arc<Resource>;

impl Resource {
    pub fn encode<M: Message + Name>(name: impl Into<String>, msg: &M) -> SharedResource {
        let value = msg.encode_to_vec();
        let version = content_hash(&[&value]);
        Arc::new(Resource {
            name: name.into(),
            version,
            any: Any {
                type_url: M::type_url(),
                value,
            },
        })
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
