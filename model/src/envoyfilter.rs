//! `networking.istio.io` EnvoyFilter: the shapes meshd applies, and a reason for every other.
//!
//! Supported (everything else is rejected with the object, field and reason, never dropped):
//! - `applyTo: HTTP_FILTER`: MERGE, ADD (before the router, which stays last), REMOVE, REPLACE,
//!   INSERT_BEFORE, INSERT_AFTER and INSERT_FIRST on the HTTP filters of the HTTP connection
//!   managers, relative to `match.listener.filterChain.filter.subFilter.name`; any filter type
//!   Envoy 1.40 knows (the value is decoded against Envoy's descriptors);
//! - `applyTo: NETWORK_FILTER`: the same operations on a filter chain's network filters,
//!   relative to `match.listener.filterChain.filter.name` (ADD goes before the chain's terminal
//!   filter); MERGE of `envoy.filters.network.http_connection_manager` merges HCM fields;
//! - for both: `match.context` SIDECAR_INBOUND, SIDECAR_OUTBOUND, GATEWAY or ANY;
//!   `match.listener` portNumber (on `virtualInbound`: the filter chain's destination port),
//!   name, and filterChain name, sni, transportProtocol, applicationProtocols, destinationPort;
//! - `applyTo: CLUSTER`, `operation: MERGE`, matched by `match.cluster` (service, portNumber,
//!   subset, name), context `SIDECAR_OUTBOUND`, `GATEWAY` or `ANY`;
//! - `applyTo: HTTP_ROUTE`, `operation: MERGE`, matched by `match.routeConfiguration`
//!   (vhost name, route name, portNumber), context `SIDECAR_OUTBOUND`, `GATEWAY` or `ANY`.
//!
//! Not supported (rejected): LISTENER, FILTER_CHAIN, ROUTE_CONFIGURATION, VIRTUAL_HOST,
//! EXTENSION_CONFIG, BOOTSTRAP, LISTENER_FILTER; CLUSTER and HTTP_ROUTE operations other than
//! MERGE; `match.proxy`, `patch.filterClass`, `targetRefs`.
//! CLUSTER and HTTP_ROUTE patches take no `workloadSelector`: they apply to every proxy of the
//! EnvoyFilter's namespace (all proxies when it lives in the root namespace).
//! The patch `value` is Envoy's own proto JSON; the generator decodes it against Envoy's
//! descriptors (and reports what does not decode).

use crate::networking::WorkloadSelector;
use serde::{Deserialize, Serialize};

pub const LOCAL_RATELIMIT: &str = "envoy.filters.http.local_ratelimit";
pub const HCM: &str = "envoy.filters.network.http_connection_manager";

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyFilter {
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub target_refs: Vec<serde_json::Value>,
    #[serde(default)]
    pub config_patches: Vec<ConfigPatch>,
    pub priority: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigPatch {
    pub apply_to: String,
    #[serde(rename = "match")]
    pub matches: Option<ObjectMatch>,
    pub patch: Patch,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMatch {
    pub context: Option<String>,
    pub proxy: Option<serde_json::Value>,
    pub listener: Option<ListenerMatch>,
    pub route_configuration: Option<RouteConfigurationMatch>,
    pub cluster: Option<ClusterMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerMatch {
    pub port_number: Option<u32>,
    pub filter_chain: Option<FilterChainMatch>,
    pub listener_filter: Option<String>,
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterChainMatch {
    pub name: Option<String>,
    pub sni: Option<String>,
    pub transport_protocol: Option<String>,
    pub application_protocols: Option<String>,
    pub filter: Option<FilterMatch>,
    pub destination_port: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterMatch {
    pub name: Option<String>,
    pub sub_filter: Option<SubFilterMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubFilterMatch {
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfigurationMatch {
    pub port_number: Option<u32>,
    pub port_name: Option<String>,
    pub gateway: Option<String>,
    pub vhost: Option<VirtualHostMatch>,
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHostMatch {
    pub name: Option<String>,
    pub domain_name: Option<String>,
    pub route: Option<RouteMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    pub name: Option<String>,
    pub action: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterMatch {
    pub port_number: Option<u32>,
    pub service: Option<String>,
    pub subset: Option<String>,
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Patch {
    pub operation: String,
    pub value: Option<serde_json::Value>,
    pub filter_class: Option<String>,
}

impl crate::MeshConfig {
    /// The accepted EnvoyFilters, with their objects (namespace, source).
    pub fn envoy_filters(&self) -> impl Iterator<Item = (&crate::ConfigObject, &EnvoyFilter)> {
        self.objects.values().filter_map(|o| match &o.spec {
            crate::Spec::EnvoyFilter(ef) => Some((&**o, ef)),
            _ => None,
        })
    }
}

/// Which generated listeners a listener-level patch (HTTP_FILTER, NETWORK_FILTER) applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchContext {
    /// A sidecar's `virtualInbound` listener.
    SidecarInbound,
    /// A sidecar's outbound listeners (`virtualOutbound` and the per-port ones).
    SidecarOutbound,
    /// A gateway's listeners.
    Gateway,
    Any,
}

impl PatchContext {
    fn parse(m: Option<&ObjectMatch>) -> Result<PatchContext, String> {
        match m.and_then(|m| m.context.as_deref()).unwrap_or("ANY") {
            "SIDECAR_INBOUND" => Ok(PatchContext::SidecarInbound),
            "SIDECAR_OUTBOUND" => Ok(PatchContext::SidecarOutbound),
            "GATEWAY" => Ok(PatchContext::Gateway),
            "ANY" => Ok(PatchContext::Any),
            other => Err(format!(
                "match.context `{other}` is not one of SIDECAR_INBOUND, SIDECAR_OUTBOUND, GATEWAY, ANY"
            )),
        }
    }

    /// Whether a listener generated for `proxy` (never `Any`) is in this context.
    pub fn includes(self, proxy: PatchContext) -> bool {
        self == PatchContext::Any || self == proxy
    }
}

/// A patch operation on a list of named filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterOperation {
    Merge,
    Add,
    Remove,
    InsertBefore,
    InsertAfter,
    InsertFirst,
    Replace,
}

impl FilterOperation {
    fn parse(op: &str) -> Result<FilterOperation, String> {
        Ok(match op {
            "MERGE" => FilterOperation::Merge,
            "ADD" => FilterOperation::Add,
            "REMOVE" => FilterOperation::Remove,
            "INSERT_BEFORE" => FilterOperation::InsertBefore,
            "INSERT_AFTER" => FilterOperation::InsertAfter,
            "INSERT_FIRST" => FilterOperation::InsertFirst,
            "REPLACE" => FilterOperation::Replace,
            other => {
                return Err(format!(
                    "patch.operation `{other}` is not one of MERGE, ADD, REMOVE, INSERT_BEFORE, INSERT_AFTER, INSERT_FIRST, REPLACE"
                ));
            }
        })
    }
}

/// An HTTP_FILTER or NETWORK_FILTER patch: where it applies and what it does.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterPatch<'a> {
    pub context: PatchContext,
    /// `match.listener` (portNumber, name, filterChain); every field optional.
    pub listener: &'a ListenerMatch,
    pub operation: FilterOperation,
    /// The filter the operation is relative to: `subFilter.name` for HTTP filters,
    /// `filter.name` for network filters (`None`: none named).
    pub relative_to: Option<&'a str>,
    /// An Envoy `HttpFilter` / `Filter` (proto JSON); `None` only for REMOVE.
    pub value: Option<&'a serde_json::Value>,
}

/// What one supported patch does, for the generator.
#[derive(Clone, Debug, PartialEq)]
pub enum PatchKind<'a> {
    /// An operation on the HTTP filters of the HTTP connection managers of matching listeners.
    HttpFilter(FilterPatch<'a>),
    /// An operation on the network filters of matching filter chains.
    NetworkFilter(FilterPatch<'a>),
    /// Merge `value` (an Envoy `Cluster`) into the matching outbound clusters.
    MergeCluster {
        m: &'a ClusterMatch,
        value: &'a serde_json::Value,
    },
    /// Merge `value` (an Envoy `Route`) into the matching routes.
    MergeRoute {
        m: &'a RouteConfigurationMatch,
        value: &'a serde_json::Value,
    },
}

/// The Envoy filters that must stay last in their list (Envoy refuses a filter after them).
pub const TERMINAL_FILTERS: [&str; 3] = [ROUTER, HCM, TCP_PROXY];
pub const ROUTER: &str = "envoy.filters.http.router";
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

fn context_is(m: Option<&ObjectMatch>, allowed: &[&str]) -> Result<String, String> {
    let ctx = m
        .and_then(|m| m.context.clone())
        .unwrap_or_else(|| "ANY".into());
    if allowed.contains(&ctx.as_str()) {
        Ok(ctx)
    } else {
        Err(format!(
            "match.context {ctx} is not supported here (meshd supports {})",
            allowed.join(", ")
        ))
    }
}

static ANY_LISTENER: ListenerMatch = ListenerMatch {
    port_number: None,
    filter_chain: None,
    listener_filter: None,
    name: None,
};

impl ConfigPatch {
    /// HTTP_FILTER and NETWORK_FILTER: the shared checks, then the filter named relative to.
    fn filter_patch(&self, http: bool) -> Result<FilterPatch<'_>, String> {
        let m = self.matches.as_ref();
        let context = PatchContext::parse(m)?;
        if m.is_some_and(|m| m.route_configuration.is_some() || m.cluster.is_some()) {
            return Err(format!(
                "match.{}: {} patches match a listener, not routes or clusters",
                if m.is_some_and(|m| m.cluster.is_some()) {
                    "cluster"
                } else {
                    "routeConfiguration"
                },
                self.apply_to
            ));
        }
        let listener = m.and_then(|m| m.listener.as_ref()).unwrap_or(&ANY_LISTENER);
        if listener.listener_filter.is_some() {
            return Err("match.listener.listenerFilter is not supported (it selects listener filters, which meshd does not patch)".into());
        }
        let filter = listener
            .filter_chain
            .as_ref()
            .and_then(|fc| fc.filter.as_ref());
        let filter_name = filter.and_then(|f| f.name.as_deref());
        let sub = filter
            .and_then(|f| f.sub_filter.as_ref())
            .and_then(|s| s.name.as_deref());
        let relative_to = if http {
            if let Some(name) = filter_name
                && name != HCM
            {
                return Err(format!(
                    "match.listener.filterChain.filter.name: HTTP_FILTER patches apply inside {HCM}, not `{name}`"
                ));
            }
            sub
        } else {
            if sub.is_some() {
                return Err("match.listener.filterChain.filter.subFilter: NETWORK_FILTER patches select a network filter by filter.name; subFilter is for HTTP_FILTER".into());
            }
            filter_name
        };
        let operation = FilterOperation::parse(&self.patch.operation)?;
        let what = if http {
            "match.listener.filterChain.filter.subFilter.name"
        } else {
            "match.listener.filterChain.filter.name"
        };
        match operation {
            FilterOperation::Merge | FilterOperation::Remove | FilterOperation::Replace
                if relative_to.is_none() =>
            {
                return Err(format!(
                    "{} of {} needs {what}",
                    self.patch.operation, self.apply_to
                ));
            }
            FilterOperation::InsertAfter
                if relative_to.is_some_and(|n| TERMINAL_FILTERS.contains(&n)) =>
            {
                return Err(format!(
                    "{what}: INSERT_AFTER `{}` would put a filter after the terminal filter, which Envoy refuses",
                    relative_to.unwrap_or_default()
                ));
            }
            _ => {}
        }
        let value = match (operation, self.patch.value.as_ref()) {
            (FilterOperation::Remove, _) => None,
            (_, None) => return Err("patch.value is required".into()),
            (_, Some(v)) => {
                if !v.is_object() {
                    return Err("patch.value must be an object (Envoy's proto JSON)".into());
                }
                let named = v
                    .get("name")
                    .and_then(|n| n.as_str())
                    .is_some_and(|n| !n.is_empty());
                if !named && operation != FilterOperation::Merge {
                    return Err("patch.value.name is required (the filter's name)".into());
                }
                Some(v)
            }
        };
        Ok(FilterPatch {
            context,
            listener,
            operation,
            relative_to,
            value,
        })
    }

    /// The supported shape of this patch, or why it is not supported.
    pub fn kind(&self) -> Result<PatchKind<'_>, String> {
        let m = self.matches.as_ref();
        if m.and_then(|m| m.proxy.as_ref()).is_some() {
            return Err("match.proxy is not supported".into());
        }
        if self.patch.filter_class.is_some() {
            return Err(
                "patch.filterClass is not supported; order filters with INSERT_BEFORE/INSERT_AFTER"
                    .into(),
            );
        }
        match self.apply_to.as_str() {
            "HTTP_FILTER" => return self.filter_patch(true).map(PatchKind::HttpFilter),
            "NETWORK_FILTER" => return self.filter_patch(false).map(PatchKind::NetworkFilter),
            _ => {}
        }
        let value = self
            .patch
            .value
            .as_ref()
            .ok_or_else(|| "patch.value is required".to_string())?;
        if !value.is_object() {
            return Err("patch.value must be an object (Envoy's proto JSON)".into());
        }
        let op = self.patch.operation.as_str();
        match self.apply_to.as_str() {
            "CLUSTER" => {
                context_is(m, &["SIDECAR_OUTBOUND", "GATEWAY", "ANY"])?;
                if op != "MERGE" {
                    return Err(format!(
                        "CLUSTER operation {op} is not supported (only MERGE)"
                    ));
                }
                if m.is_some_and(|m| m.listener.is_some() || m.route_configuration.is_some()) {
                    return Err("CLUSTER patches match a cluster, not listeners or routes".into());
                }
                static ANY: ClusterMatch = ClusterMatch {
                    port_number: None,
                    service: None,
                    subset: None,
                    name: None,
                };
                Ok(PatchKind::MergeCluster {
                    m: m.and_then(|m| m.cluster.as_ref()).unwrap_or(&ANY),
                    value,
                })
            }
            "HTTP_ROUTE" => {
                context_is(m, &["SIDECAR_OUTBOUND", "GATEWAY", "ANY"])?;
                if op != "MERGE" {
                    return Err(format!(
                        "HTTP_ROUTE operation {op} is not supported (only MERGE)"
                    ));
                }
                if m.is_some_and(|m| m.listener.is_some() || m.cluster.is_some()) {
                    return Err("HTTP_ROUTE patches match a route configuration".into());
                }
                let rc = m
                    .and_then(|m| m.route_configuration.as_ref())
                    .ok_or_else(|| {
                        "HTTP_ROUTE patches need match.routeConfiguration".to_string()
                    })?;
                if rc.gateway.is_some() || rc.port_name.is_some() {
                    return Err(
                        "match.routeConfiguration: gateway and portName are not supported".into(),
                    );
                }
                if rc.vhost.as_ref().is_some_and(|v| v.domain_name.is_some())
                    || rc
                        .vhost
                        .as_ref()
                        .and_then(|v| v.route.as_ref())
                        .is_some_and(|r| r.action.is_some())
                {
                    return Err(
                        "match.routeConfiguration.vhost: domainName and route.action are not supported"
                            .into(),
                    );
                }
                Ok(PatchKind::MergeRoute { m: rc, value })
            }
            other => Err(format!(
                "applyTo {other} is not supported (meshd applies HTTP_FILTER, NETWORK_FILTER, CLUSTER MERGE and HTTP_ROUTE MERGE)"
            )),
        }
    }
}

impl EnvoyFilter {
    /// Every reason this EnvoyFilter cannot be applied as written (empty: all of it applies).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.target_refs.is_empty() {
            out.push("spec.targetRefs is not supported; use workloadSelector".into());
        }
        if self.config_patches.is_empty() {
            out.push("spec.configPatches is empty".into());
        }
        for (i, p) in self.config_patches.iter().enumerate() {
            match p.kind() {
                Err(e) => out.push(format!("spec.configPatches[{i}]: {e}")),
                Ok(PatchKind::MergeCluster { .. } | PatchKind::MergeRoute { .. })
                    if self.workload_selector.is_some() =>
                {
                    out.push(format!(
                        "spec.configPatches[{i}]: {} patches apply namespace-wide; remove workloadSelector",
                        p.apply_to
                    ));
                }
                Ok(_) => {}
            }
        }
        out
    }
}

impl ClusterMatch {
    /// Whether an outbound cluster (port, subset, host) matches.
    pub fn matches(&self, name: &str, port: u32, subset: &str, host: &str) -> bool {
        self.name.as_deref().is_none_or(|n| n == name)
            && self.port_number.is_none_or(|p| p == port)
            && self.subset.as_deref().is_none_or(|s| s == subset)
            && self.service.as_deref().is_none_or(|s| {
                s == host
                    || s.strip_prefix('*')
                        .is_some_and(|suffix| host.ends_with(suffix))
            })
    }
}

impl RouteConfigurationMatch {
    /// Whether a route (in route configuration `rc_name` on `port`, virtual host `vhost`,
    /// named `route`) matches.
    pub fn matches(&self, rc_name: &str, port: u32, vhost: &str, route: &str) -> bool {
        self.name.as_deref().is_none_or(|n| n == rc_name)
            && self.port_number.is_none_or(|p| p == port)
            && self.vhost.as_ref().is_none_or(|v| {
                v.name.as_deref().is_none_or(|n| n == vhost)
                    && v.route
                        .as_ref()
                        .and_then(|r| r.name.as_deref())
                        .is_none_or(|n| n == route)
            })
    }
}

#[cfg(test)]
#[path = "envoyfilter_tests.rs"]
mod tests;
