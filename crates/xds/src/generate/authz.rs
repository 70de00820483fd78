//! AuthorizationPolicy → Envoy RBAC filters on a workload's inbound path.
//! Until policies are translated here, no inbound policy filter is installed: every
//! authenticated (mTLS) caller reaches the app.

use super::{GenOptions, Index};
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use meshd_model::registry::Workload;

/// The policy filters for one inbound port of a workload.
#[derive(Default)]
pub struct InboundPolicy {
    pub http_filters: Vec<HttpFilter>,
    pub network_filters: Vec<Filter>,
}

pub fn inbound_policy(
    _index: &Index,
    _workload: &Workload,
    _port: u32,
    _http: bool,
    _opts: &GenOptions,
) -> InboundPolicy {
    InboundPolicy::default()
}
