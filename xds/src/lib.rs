//! Mesh model → per-proxy Envoy resources (pure), and the ADS server that streams them.

pub mod generate;
pub mod json;
pub mod proxy;
pub mod resource;
pub mod server;

pub use generate::{GenOptions, MeshSnapshot, ProxyResources};
pub use proxy::{Identity, NodeId, NodeType, Proxy};
pub use resource::{Resource, SharedResource};
