//! The RBAC filters' wire form. Envoy's `RBAC.policies` is a protobuf map, which prost encodes
//! in `HashMap` order: the bytes (and so the content hash that decides whether a listener is
//! resent) would change from one generation to the next. This module owns the mirror messages
//! that encode the map as its wire-identical repeated entries, in name order, and the stat
//! prefixes Istio's dashboards expect, apart from the translation that decides what the rules are.

use super::{HTTP_RBAC, NETWORK_RBAC, Policies, RbacSet};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::config::rbac::v3::Policy;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// One RBAC filter: what it enforces (`None`: nothing, every request passes) and what it
/// evaluates in the shadow.
struct FilterRules<'a> {
    action: Action,
    rules: Option<&'a Policies>,
    shadow: Option<&'a Policies>,
}

impl RbacSet {
    fn in_order(&self) -> impl Iterator<Item = FilterRules<'_>> {
        [
            (Action::Log, &self.audit, &None),
            (Action::Deny, &self.deny, &self.shadow_deny),
            (Action::Allow, &self.allow, &self.shadow_allow),
        ]
        .into_iter()
        .filter(|(_, rules, shadow)| rules.is_some() || shadow.is_some())
        .map(|(action, rules, shadow)| FilterRules {
            action,
            rules: rules.as_ref(),
            shadow: shadow.as_ref(),
        })
    }

    pub fn http_filters(&self) -> Vec<HttpFilter> {
        self.in_order()
            .map(|f| HttpFilter {
                name: HTTP_RBAC.into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(http_rbac_any(&f))),
                ..Default::default()
            })
            .collect()
    }

    pub fn network_filters(&self) -> Vec<Filter> {
        self.in_order()
            .map(|f| Filter {
                name: NETWORK_RBAC.into(),
                config_type: Some(filter::ConfigType::TypedConfig(network_rbac_any(&f))),
            })
            .collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(i32)]
pub(super) enum Action {
    Allow = 0,
    Deny = 1,
    Log = 2,
}

impl Action {
    /// In stat names: `http.<listener>.rbac.<name>.denied`, `tcp.<name>.rbac.denied`.
    fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Log => "audit",
        }
    }
}

#[derive(Clone, PartialEq, Message)]
struct PolicyEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<Policy>,
}

/// `envoy.config.rbac.v3.RBAC`.
#[derive(Clone, PartialEq, Message)]
pub(super) struct SortedRbac {
    #[prost(int32, tag = "1")]
    action: i32,
    #[prost(message, repeated, tag = "2")]
    policies: Vec<PolicyEntry>,
}

/// `envoy.extensions.filters.http.rbac.v3.RBAC` (the fields we set).
#[derive(Clone, PartialEq, Message)]
pub(super) struct HttpRbacConfig {
    #[prost(message, optional, tag = "1")]
    pub(super) rules: Option<SortedRbac>,
    #[prost(message, optional, tag = "2")]
    pub(super) shadow_rules: Option<SortedRbac>,
    #[prost(string, tag = "3")]
    pub(super) shadow_rules_stat_prefix: String,
    #[prost(string, tag = "6")]
    pub(super) rules_stat_prefix: String,
}

/// `envoy.extensions.filters.network.rbac.v3.RBAC` (the fields we set).
#[derive(Clone, PartialEq, Message)]
pub(super) struct NetworkRbacConfig {
    #[prost(message, optional, tag = "1")]
    pub(super) rules: Option<SortedRbac>,
    #[prost(message, optional, tag = "2")]
    pub(super) shadow_rules: Option<SortedRbac>,
    #[prost(string, tag = "3")]
    pub(super) stat_prefix: String,
    #[prost(string, tag = "5")]
    pub(super) shadow_rules_stat_prefix: String,
}

pub(super) fn sorted(action: Action, policies: &Policies) -> SortedRbac {
    SortedRbac {
        action: action as i32,
        policies: policies
            .iter()
            .map(|(k, v)| PolicyEntry {
                key: k.clone(),
                value: Some(v.clone()),
            })
            .collect(),
    }
}

/// The stat prefix for dry-run results: `http.<listener>.rbac.istio_dry_run_allow.shadow_denied`.
fn shadow_stat_prefix(f: &FilterRules<'_>) -> String {
    match f.shadow {
        Some(_) => format!("istio_dry_run_{}", f.action.name()),
        None => String::new(),
    }
}

fn http_rbac_any(f: &FilterRules<'_>) -> Any {
    // `rules` is present whenever policies of the action are enforced, even none: an RBAC
    // filter without rules allows everything, while ALLOW with no policy denies everything.
    let cfg = HttpRbacConfig {
        rules: f.rules.map(|p| sorted(f.action, p)),
        shadow_rules: f.shadow.map(|p| sorted(f.action, p)),
        shadow_rules_stat_prefix: shadow_stat_prefix(f),
        rules_stat_prefix: f.action.name().into(),
    };
    Any {
        type_url: envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac::type_url(),
        value: cfg.encode_to_vec(),
    }
}

fn network_rbac_any(f: &FilterRules<'_>) -> Any {
    let cfg = NetworkRbacConfig {
        rules: f.rules.map(|p| sorted(f.action, p)),
        shadow_rules: f.shadow.map(|p| sorted(f.action, p)),
        stat_prefix: format!("tcp.{}.", f.action.name()),
        shadow_rules_stat_prefix: shadow_stat_prefix(f),
    };
    Any {
        type_url: envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac::type_url(),
        value: cfg.encode_to_vec(),
    }
}
