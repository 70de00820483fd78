//! AuthorizationPolicy `action: CUSTOM` on a TCP port: the network filters that ask an
//! `envoyExtAuthzGrpc` provider about the connections a CUSTOM rule matches, as Istio builds
//! them. An `envoy.filters.network.rbac` filter holds the CUSTOM rules (their TCP-meaningful
//! fields, as DENY keeps them) as shadow rules: it never closes a connection, it records the
//! rule that matched in the connection's dynamic metadata (namespace `envoy.filters.network.rbac`,
//! key `istio_ext_authz_shadow_effective_policy_id`). The `envoy.filters.network.ext_authz`
//! filter after it calls the authorizer only for connections carrying that mark
//! (`filter_enabled_metadata`), and closes those it refuses. Both evaluate on the connection's
//! first bytes from the client, the RBAC filter first, so the mark is there when ext_authz looks.
//!
//! Which providers can serve here is decided by `serves_tcp`; the rules of one that cannot
//! become deny rules in authz_custom.rs.

use super::super::{Action, NETWORK_RBAC, NetworkRbacConfig, Policies, sorted};
use super::{Resolved, STAT_PREFIX, grpc_service, marked_by};
use envoy_types::pb::envoy::config::core::v3::ApiVersion;
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz;
use envoy_types::pb::google::protobuf::Any;
use meshd_model::extension_provider::{ExtAuthzKind, ExtAuthzProvider};
use prost::{Message, Name};

pub const NETWORK_EXT_AUTHZ: &str = "envoy.filters.network.ext_authz";

/// Envoy's network ext_authz filter speaks the gRPC Authorization API only: an
/// `envoyExtAuthzHttp` provider has nothing to call on a TCP connection.
pub(super) fn serves_tcp(provider: &ExtAuthzProvider) -> bool {
    matches!(provider.kind, ExtAuthzKind::Grpc(_))
}

/// The marker and the ext_authz filter, to run after AUDIT and before DENY.
pub(super) fn filters(shadow: &Policies, r: &Resolved<'_>) -> Vec<Filter> {
    let ExtAuthzKind::Grpc(g) = &r.provider.kind else {
        return Vec::new();
    };
    let marker = NetworkRbacConfig {
        rules: None,
        shadow_rules: Some(sorted(Action::Allow, shadow)),
        stat_prefix: "tcp.custom.".into(),
        shadow_rules_stat_prefix: STAT_PREFIX.into(),
    };
    let ext_authz = ExtAuthz {
        stat_prefix: "tcp.".into(),
        grpc_service: Some(grpc_service(r, &g.timeout)),
        failure_mode_allow: g.fail_open,
        transport_api_version: ApiVersion::V3 as i32,
        filter_enabled_metadata: Some(marked_by(NETWORK_RBAC)),
        ..Default::default()
    };
    vec![
        Filter {
            name: NETWORK_RBAC.into(),
            config_type: Some(filter::ConfigType::TypedConfig(Any {
                type_url:
                    envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac::type_url(),
                value: marker.encode_to_vec(),
            })),
        },
        Filter {
            name: NETWORK_EXT_AUTHZ.into(),
            config_type: Some(filter::ConfigType::TypedConfig(Any {
                type_url: ExtAuthz::type_url(),
                value: ext_authz.encode_to_vec(),
            })),
        },
    ]
}
