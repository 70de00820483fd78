//! Mesh model → per-proxy Envoy resources: the pure generator and the snapshot it builds.

pub mod generate;
pub mod json;
pub mod proxy;
pub mod resource;

pub use generate::{GenOptions, MeshSnapshot, ProxyResources};
pub use proxy::{Identity, NodeId, NodeType, Proxy};
pub use resource::{Resource, SharedResource};
