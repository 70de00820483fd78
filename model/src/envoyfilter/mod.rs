//! `networking.istio.io` EnvoyFilter: the shapes meshd applies, and a reason for every other.
//!
//! Supported (everything else is rejected with the object, field and reason, never dropped;
//! the checks per applyTo are in `shape`):
//! - `HTTP_FILTER`: MERGE, ADD (before the router, which stays last), REMOVE, REPLACE,
//!   INSERT_BEFORE, INSERT_AFTER and INSERT_FIRST on the HTTP filters of the HTTP connection
//!   managers, relative to `match.listener.filterChain.filter.subFilter.name`; any filter type
//!   Envoy 1.40 knows (the value is decoded against Envoy's descriptors);
//! - `NETWORK_FILTER`: the same operations on a filter chain's network filters, relative to
//!   `match.listener.filterChain.filter.name` (ADD goes before the chain's terminal filter);
//!   MERGE of `envoy.filters.network.http_connection_manager` merges HCM fields;
//! - `LISTENER` (MERGE, ADD, REMOVE) and `FILTER_CHAIN` (MERGE, ADD, REMOVE);
//! - `LISTENER_FILTER` (ADD, INSERT_FIRST, INSERT_BEFORE, INSERT_AFTER, REPLACE, REMOVE) on a
//!   listener's listener filters, relative to `match.listener.listenerFilter`;
//! - for those four: `match.listener` portNumber (on `virtualInbound`: the filter chain's
//!   destination port), name, and filterChain name, sni, transportProtocol,
//!   applicationProtocols, destinationPort;
//! - `CLUSTER` (MERGE, ADD, REMOVE), matched by `match.cluster` (service, portNumber, subset,
//!   name); SIDECAR_INBOUND patches the workload's `inbound|PORT||` clusters;
//! - `ROUTE_CONFIGURATION` (MERGE), `VIRTUAL_HOST` (MERGE, ADD, REMOVE) and `HTTP_ROUTE`
//!   (MERGE, ADD, REMOVE, INSERT_BEFORE, INSERT_AFTER, INSERT_FIRST), matched by
//!   `match.routeConfiguration` (portNumber, name; vhost name and `domainName`, one of the
//!   virtual host's domains; route name and `action` ANY, ROUTE, REDIRECT, DIRECT_RESPONSE),
//!   contexts SIDECAR_OUTBOUND, GATEWAY, ANY; on gateways (ignored on sidecars, as Istio), `portName` and
//!   `gateway` (`namespace/name`) select the route configuration of one TLS-terminating server
//!   (Istio's `https.<port>.<portName>.<gateway>.<namespace>`; a port's plaintext servers share
//!   `http.<port>`, which no patch naming them matches); the checks are in `route_match`;
//! - `EXTENSION_CONFIG` (ADD): a `TypedExtensionConfig` served over ECDS to the selected
//!   proxies, which an HTTP filter's `config_discovery` names;
//! - `BOOTSTRAP` (MERGE): merged into the bootstrap `meshd bootstrap` writes for a selected
//!   proxy, which asks meshd for it before Envoy starts (a changed patch reaches a proxy when it
//!   next starts, as under Istio);
//! - `match.context` SIDECAR_INBOUND, SIDECAR_OUTBOUND, GATEWAY or ANY; `workloadSelector` on
//!   every applyTo; `priority` (root namespace first, then priority, then namespace and name);
//! - `match.proxy`: `proxyVersion` (a regular expression over the node's `ISTIO_VERSION`
//!   metadata, which `meshd bootstrap --istio-version` sets) and `metadata` (exact values);
//! - `patch.filterClass` (AUTHN, AUTHZ, STATS) on an HTTP_FILTER ADD.
//!
//! Not supported (rejected): `targetRefs`.
//! The patch `value` is Envoy's own proto JSON; the generator decodes it against Envoy's
//! descriptors (and reports what does not decode, naming the field).

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
    pub proxy: Option<ProxyMatch>,
    pub listener: Option<ListenerMatch>,
    pub route_configuration: Option<RouteConfigurationMatch>,
    pub cluster: Option<ClusterMatch>,
}

/// `match.proxy`: which proxies a patch is for, by what their Envoy node says of itself. It only
/// chooses among patches for the proxy's own config, so a node claiming another version gains
/// nothing but a config meant for that version.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyMatch {
    /// A regular expression (RE2 syntax) the node's `ISTIO_VERSION` metadata must match.
    pub proxy_version: Option<String>,
    /// Node metadata fields that must equal these values exactly.
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// The node metadata field `proxyVersion` matches (what Istio's proxies report).
pub const ISTIO_VERSION: &str = "ISTIO_VERSION";

impl ProxyMatch {
    /// The match with its `proxyVersion` compiled, once per EnvoyFilter rather than per proxy;
    /// the error names the field.
    pub fn compile(&self) -> Result<CompiledProxyMatch, String> {
        let version = match self.proxy_version.as_deref() {
            None => None,
            Some(re) => Some(regex::Regex::new(re).map_err(|e| {
                format!("match.proxy.proxyVersion `{re}` is not a regular expression: {e}")
            })?),
        };
        Ok(CompiledProxyMatch {
            version,
            metadata: self.metadata.clone(),
        })
    }

    /// Whether a proxy whose node metadata is `metadata` matches (compiling the pattern: use
    /// [`ProxyMatch::compile`] for many proxies); a pattern that does not compile matches none.
    pub fn matches(&self, metadata: &std::collections::BTreeMap<String, String>) -> bool {
        self.compile().is_ok_and(|m| m.matches(metadata))
    }
}

/// A [`ProxyMatch`] ready to test many proxies.
#[derive(Clone, Debug)]
pub struct CompiledProxyMatch {
    version: Option<regex::Regex>,
    metadata: std::collections::BTreeMap<String, String>,
}

impl CompiledProxyMatch {
    pub fn matches(&self, metadata: &std::collections::BTreeMap<String, String>) -> bool {
        let version = metadata
            .get(ISTIO_VERSION)
            .map(String::as_str)
            .unwrap_or("");
        self.version.as_ref().is_none_or(|re| re.is_match(version))
            && self
                .metadata
                .iter()
                .all(|(k, v)| metadata.get(k).is_some_and(|m| m == v))
    }
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
        self.objects_of(crate::Kind::EnvoyFilter)
            .filter_map(|o| match &o.spec {
                crate::Spec::EnvoyFilter(ef) => Some((&**o, &**ef)),
                _ => None,
            })
    }
}

mod route_match;
mod shape;
pub use route_match::*;
pub use shape::*;

impl EnvoyFilter {
    /// Every reason this EnvoyFilter cannot be applied as written (empty: all of it applies).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.target_refs.is_empty() {
            out.push(crate::validate::target_refs_refused(
                "targetRefs",
                "workloadSelector",
            ));
        }
        if self.config_patches.is_empty() {
            out.push("spec.configPatches is empty".into());
        }
        for (i, p) in self.config_patches.iter().enumerate() {
            if let Err(e) = p.kind() {
                out.push(format!("spec.configPatches[{i}]: {e}"));
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

#[cfg(test)]
mod tests;
