//! `networking.istio.io` EnvoyFilter: the shapes meshd applies, and a reason for every other.
//!
//! Supported (everything else is rejected with the reason, never dropped silently):
//! - `applyTo: HTTP_FILTER`, `context: SIDECAR_INBOUND` or `GATEWAY`, `operation: INSERT_BEFORE`
//!   (before `match.listener.filterChain.filter.subFilter.name`, e.g. the router; first when no
//!   sub-filter is named) or `INSERT_FIRST`, inserting `envoy.filters.http.local_ratelimit` into
//!   the HTTP connection manager — Istio's local rate limit recipe;
//! - `applyTo: CLUSTER`, `operation: MERGE`, matched by `match.cluster` (service, portNumber,
//!   subset, name), context `SIDECAR_OUTBOUND`, `GATEWAY` or `ANY`;
//! - `applyTo: HTTP_ROUTE`, `operation: MERGE`, matched by `match.routeConfiguration`
//!   (vhost name, route name, portNumber), context `SIDECAR_OUTBOUND`, `GATEWAY` or `ANY`.
//!
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

/// What one supported patch does, for the generator.
#[derive(Clone, Debug, PartialEq)]
pub enum PatchKind<'a> {
    /// Insert an HTTP filter (`value`: an Envoy `HttpFilter`) into the inbound (sidecar) or
    /// gateway HTTP connection managers, before the named filter (first when `None`).
    InsertHttpFilter {
        gateway: bool,
        before: Option<&'a str>,
        value: &'a serde_json::Value,
    },
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

impl ConfigPatch {
    /// The supported shape of this patch, or why it is not supported.
    pub fn kind(&self) -> Result<PatchKind<'_>, String> {
        let m = self.matches.as_ref();
        if m.and_then(|m| m.proxy.as_ref()).is_some() {
            return Err("match.proxy is not supported".into());
        }
        let value = self
            .patch
            .value
            .as_ref()
            .ok_or_else(|| "patch.value is required".to_string())?;
        if !value.is_object() {
            return Err("patch.value must be an object (Envoy's proto JSON)".into());
        }
        if self.patch.filter_class.is_some() {
            return Err("patch.filterClass is not supported".into());
        }
        let op = self.patch.operation.as_str();
        match self.apply_to.as_str() {
            "HTTP_FILTER" => {
                let ctx = context_is(m, &["SIDECAR_INBOUND", "GATEWAY"])?;
                if m.is_some_and(|m| m.route_configuration.is_some() || m.cluster.is_some()) {
                    return Err(
                        "HTTP_FILTER patches match a listener, not routes or clusters".into(),
                    );
                }
                let listener = m.and_then(|m| m.listener.as_ref());
                if let Some(l) = listener {
                    if l.listener_filter.is_some() || l.name.is_some() {
                        return Err(
                            "match.listener: only portNumber and filterChain.filter are supported"
                                .into(),
                        );
                    }
                    if let Some(fc) = &l.filter_chain {
                        let other = fc.name.is_some()
                            || fc.sni.is_some()
                            || fc.transport_protocol.is_some()
                            || fc.application_protocols.is_some()
                            || fc.destination_port.is_some();
                        if other {
                            return Err(
                                "match.listener.filterChain: only filter is supported".into()
                            );
                        }
                    }
                }
                let filter = listener
                    .and_then(|l| l.filter_chain.as_ref())
                    .and_then(|fc| fc.filter.as_ref());
                if let Some(name) = filter.and_then(|f| f.name.as_deref())
                    && name != HCM
                {
                    return Err(format!(
                        "HTTP_FILTER patches apply inside {HCM}, not `{name}`"
                    ));
                }
                let sub = filter
                    .and_then(|f| f.sub_filter.as_ref())
                    .and_then(|s| s.name.as_deref());
                let before = match op {
                    "INSERT_BEFORE" => sub,
                    "INSERT_FIRST" => None,
                    other => {
                        return Err(format!(
                            "HTTP_FILTER operation {other} is not supported (INSERT_BEFORE, INSERT_FIRST)"
                        ));
                    }
                };
                let name = value.get("name").and_then(|n| n.as_str()).unwrap_or("");
                if name != LOCAL_RATELIMIT {
                    return Err(format!(
                        "HTTP_FILTER `{name}` is not supported (meshd inserts only {LOCAL_RATELIMIT})"
                    ));
                }
                Ok(PatchKind::InsertHttpFilter {
                    gateway: ctx == "GATEWAY",
                    before,
                    value,
                })
            }
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
                "applyTo {other} is not supported (meshd applies HTTP_FILTER local rate limits, CLUSTER and HTTP_ROUTE merges)"
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
mod tests {
    use super::*;
    use crate::{MeshConfig, Spec, parse_file};

    const RATE_LIMIT: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: ratelimit, namespace: shop}
spec:
  workloadSelector:
    labels: {app: api}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.router}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket: {max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s}
"#;

    fn parse(text: &str) -> MeshConfig {
        let f = parse_file("ef.yaml", text).unwrap();
        MeshConfig::assemble([&f])
    }

    #[test]
    fn the_local_rate_limit_recipe_is_accepted() {
        let mesh = parse(RATE_LIMIT);
        assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
        let ef = mesh
            .objects
            .values()
            .find_map(|o| match &o.spec {
                Spec::EnvoyFilter(e) => Some(e),
                _ => None,
            })
            .unwrap();
        match ef.config_patches[0].kind().unwrap() {
            PatchKind::InsertHttpFilter {
                gateway, before, ..
            } => {
                assert!(!gateway);
                assert_eq!(before, Some("envoy.filters.http.router"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_shapes_are_rejected_with_a_reason() {
        let cases = [
            ("SIDECAR_INBOUND", "INSERT_AFTER", "operation INSERT_AFTER"),
            (
                "SIDECAR_OUTBOUND",
                "INSERT_BEFORE",
                "match.context SIDECAR_OUTBOUND",
            ),
        ];
        for (ctx, op, want) in cases {
            let text = RATE_LIMIT
                .replace("context: SIDECAR_INBOUND", &format!("context: {ctx}"))
                .replace("operation: INSERT_BEFORE", &format!("operation: {op}"));
            let mesh = parse(&text);
            assert_eq!(mesh.rejected.len(), 1, "{ctx} {op}");
            assert!(
                mesh.rejected[0].reason.contains(want),
                "{}",
                mesh.rejected[0]
            );
        }
        let text = RATE_LIMIT.replace(
            "name: envoy.filters.http.local_ratelimit",
            "name: envoy.filters.http.lua",
        );
        let mesh = parse(&text);
        assert!(
            mesh.rejected[0].reason.contains("lua"),
            "{}",
            mesh.rejected[0]
        );

        let listener = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: l, namespace: shop}
spec:
  configPatches:
  - applyTo: LISTENER
    patch: {operation: ADD, value: {name: x}}
"#;
        let mesh = parse(listener);
        assert!(
            mesh.rejected[0]
                .reason
                .contains("applyTo LISTENER is not supported"),
            "{}",
            mesh.rejected[0]
        );
        let unknown = listener.replace("patch:", "bogus: 1\n    patch:");
        let mesh = parse(&unknown);
        assert!(
            mesh.rejected[0].reason.contains("bogus"),
            "{}",
            mesh.rejected[0]
        );
    }

    #[test]
    fn cluster_and_route_merges() {
        let text = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: merges, namespace: istio-system}
spec:
  configPatches:
  - applyTo: CLUSTER
    match:
      context: SIDECAR_OUTBOUND
      cluster: {service: api.shop.svc.cluster.local, portNumber: 8080}
    patch:
      operation: MERGE
      value: {per_connection_buffer_limit_bytes: 32768}
  - applyTo: HTTP_ROUTE
    match:
      context: SIDECAR_OUTBOUND
      routeConfiguration:
        vhost: {name: "api.shop.svc.cluster.local:8080", route: {name: default}}
    patch:
      operation: MERGE
      value: {route: {idle_timeout: 5s}}
"#;
        let mesh = parse(text);
        assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
        let selected = text.replace("spec:\n", "spec:\n  workloadSelector: {labels: {app: x}}\n");
        let mesh = parse(&selected);
        assert_eq!(mesh.rejected.len(), 1);
        assert!(mesh.rejected[0].reason.contains("namespace-wide"));

        let m = ClusterMatch {
            service: Some("*.shop.svc.cluster.local".into()),
            port_number: Some(8080),
            ..Default::default()
        };
        assert!(m.matches("c", 8080, "", "api.shop.svc.cluster.local"));
        assert!(!m.matches("c", 9090, "", "api.shop.svc.cluster.local"));
        assert!(!m.matches("c", 8080, "", "api.other.svc.cluster.local"));
    }
}
