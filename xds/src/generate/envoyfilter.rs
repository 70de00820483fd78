//! EnvoyFilter patches, in the shapes meshd supports (see `meshd_model::envoyfilter`): decoded
//! once per snapshot against Envoy's descriptors, then applied to the generated resources.
//! Pure. A patch whose value does not decode rejects its whole EnvoyFilter, with the reason
//! (`problems`), and nothing of it is applied.
//!
//! Scope: an EnvoyFilter in the root namespace without selector applies to every proxy; one in
//! a namespace applies to that namespace's proxies; a workloadSelector narrows HTTP_FILTER
//! inserts to the selected workloads.

use crate::resource::{Resource, SharedResource};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use meshd_model::Rejected;
use meshd_model::envoyfilter::{ClusterMatch, PatchKind, RouteConfigurationMatch};
use meshd_model::networking::Labels;
use meshd_model::registry::selector_matches;
use meshd_model::{ConfigObject, MeshConfig};
use prost::Message;
use std::collections::BTreeMap;

const HTTP_FILTER: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter";
const CLUSTER: &str = "envoy.config.cluster.v3.Cluster";
const ROUTE: &str = "envoy.config.route.v3.Route";
const LOCAL_RATELIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// Which proxies a patch is for.
#[derive(Clone, Debug)]
struct Target {
    namespace: String,
    /// In the root namespace without selector: every proxy.
    mesh_wide: bool,
    selector: Option<Labels>,
    /// `GATEWAY` only, sidecars only, or both (`ANY`).
    gateways: bool,
    sidecars: bool,
}

impl Target {
    fn applies(&self, namespace: &str, labels: &Labels, gateway: bool) -> bool {
        let kind = if gateway {
            self.gateways
        } else {
            self.sidecars
        };
        let place = self.mesh_wide
            || (self.namespace == namespace
                && self
                    .selector
                    .as_ref()
                    .is_none_or(|s| selector_matches(s, labels)));
        kind && place
    }
}

struct Insert {
    target: Target,
    before: Option<String>,
    filter: HttpFilter,
}

struct Merge<M> {
    target: Target,
    m: M,
    /// The patch, encoded: appended to a resource's encoding it merges (protobuf semantics:
    /// scalars replaced, messages merged, repeated fields appended).
    bytes: Vec<u8>,
}

/// Every applicable EnvoyFilter patch of a snapshot.
#[derive(Default)]
pub struct Patches {
    inserts: Vec<Insert>,
    clusters: Vec<Merge<ClusterMatch>>,
    routes: Vec<Merge<RouteConfigurationMatch>>,
    /// EnvoyFilters not applied, and why.
    pub problems: Vec<Rejected>,
}

fn context(ctx: Option<&str>) -> (bool, bool) {
    match ctx.unwrap_or("ANY") {
        "GATEWAY" => (true, false),
        "SIDECAR_INBOUND" | "SIDECAR_OUTBOUND" => (false, true),
        _ => (true, true),
    }
}

fn rejected(o: &ConfigObject, reason: String) -> Rejected {
    Rejected {
        file: o.source.file.clone(),
        line: o.source.line,
        kind: Some(o.kind()),
        namespace: Some(o.meta.namespace().to_string()),
        name: Some(o.meta.name.clone()),
        reason,
    }
}

impl Patches {
    pub fn build(config: &MeshConfig, root_namespace: &str) -> Patches {
        let mut filters: Vec<_> = config.envoy_filters().collect();
        // Istio's order: root namespace first, then by priority, then by name.
        filters.sort_by_key(|(o, ef)| {
            (
                o.meta.namespace() != root_namespace,
                ef.priority.unwrap_or(0),
                o.meta.namespace().to_string(),
                o.meta.name.clone(),
            )
        });
        let mut out = Patches::default();
        for (o, ef) in filters {
            let mut inserts = Vec::new();
            let mut clusters = Vec::new();
            let mut routes = Vec::new();
            let mut problem = None;
            for (i, p) in ef.config_patches.iter().enumerate() {
                let (gateways, sidecars) =
                    context(p.matches.as_ref().and_then(|m| m.context.as_deref()));
                let target = Target {
                    namespace: o.meta.namespace().to_string(),
                    mesh_wide: o.meta.namespace() == root_namespace
                        && ef.workload_selector.is_none(),
                    selector: ef.workload_selector.as_ref().map(|s| s.labels.clone()),
                    gateways,
                    sidecars,
                };
                let at = format!("spec.configPatches[{i}].patch.value");
                let decoded = match p.kind() {
                    Err(e) => Err(format!("spec.configPatches[{i}]: {e}")),
                    Ok(PatchKind::InsertHttpFilter { before, value, .. }) => {
                        crate::json::json_to_proto(HTTP_FILTER, value)
                            .and_then(|b| HttpFilter::decode(b.as_slice()).map_err(|e| e.to_string()))
                            .and_then(|f| {
                                let typed = match &f.config_type {
                                    Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(a)) => a.type_url.as_str(),
                                    _ => "",
                                };
                                if typed == LOCAL_RATELIMIT_TYPE {
                                    Ok(f)
                                } else {
                                    Err(format!("typed_config must be {LOCAL_RATELIMIT_TYPE}, not `{typed}`"))
                                }
                            })
                            .map(|filter| {
                                inserts.push(Insert {
                                    target: target.clone(),
                                    before: before.map(str::to_string),
                                    filter,
                                })
                            })
                            .map_err(|e| format!("{at}: {e}"))
                    }
                    Ok(PatchKind::MergeCluster { m, value }) => {
                        if value.get("name").is_some() {
                            Err(format!("{at}: a MERGE cannot rename the cluster"))
                        } else {
                            crate::json::json_to_proto(CLUSTER, value)
                                .map(|bytes| {
                                    clusters.push(Merge {
                                        target: target.clone(),
                                        m: m.clone(),
                                        bytes,
                                    })
                                })
                                .map_err(|e| format!("{at}: {e}"))
                        }
                    }
                    Ok(PatchKind::MergeRoute { m, value }) => {
                        crate::json::json_to_proto(ROUTE, value)
                            .map(|bytes| {
                                routes.push(Merge {
                                    target: target.clone(),
                                    m: m.clone(),
                                    bytes,
                                })
                            })
                            .map_err(|e| format!("{at}: {e}"))
                    }
                };
                if let Err(e) = decoded {
                    problem = Some(e);
                    break;
                }
            }
            match problem {
                Some(reason) => out.problems.push(rejected(o, reason)),
                None => {
                    out.inserts.extend(inserts);
                    out.clusters.extend(clusters);
                    out.routes.extend(routes);
                }
            }
        }
        out
    }

    /// Inserts the HTTP filters that apply to this proxy into `filters` (an HCM's filters,
    /// without the router, which always stays last).
    pub fn insert_http_filters(
        &self,
        namespace: &str,
        labels: &Labels,
        gateway: bool,
        filters: &mut Vec<HttpFilter>,
    ) {
        const ROUTER: &str = "envoy.filters.http.router";
        for ins in self
            .inserts
            .iter()
            .filter(|i| i.target.applies(namespace, labels, gateway))
        {
            match ins.before.as_deref() {
                None => filters.insert(0, ins.filter.clone()),
                Some(ROUTER) => filters.push(ins.filter.clone()),
                Some(name) => {
                    if let Some(i) = filters.iter().position(|f| f.name == name) {
                        filters.insert(i, ins.filter.clone());
                    }
                }
            }
        }
    }

    pub fn has_http_filters(&self) -> bool {
        !self.inserts.is_empty()
    }

    /// The clusters of `layer` with the CLUSTER merges for this proxy kind and namespace applied;
    /// `None` when no patch applies (share the layer as it is).
    pub fn patch_clusters(
        &self,
        layer: &BTreeMap<String, SharedResource>,
        namespace: &str,
        gateway: bool,
    ) -> Option<BTreeMap<String, SharedResource>> {
        let none = Labels::new();
        let merges: Vec<_> = self
            .clusters
            .iter()
            .filter(|m| m.target.applies(namespace, &none, gateway))
            .collect();
        if merges.is_empty() {
            return None;
        }
        let mut out = layer.clone();
        for (name, res) in out.iter_mut() {
            let mut parts = name.splitn(4, '|');
            let (Some("outbound"), Some(port), Some(subset), Some(host)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let port: u32 = port.parse().unwrap_or(0);
            let mut bytes: Option<Vec<u8>> = None;
            for m in merges
                .iter()
                .filter(|m| m.m.matches(name, port, subset, host))
            {
                let b = bytes.get_or_insert_with(|| res.value().to_vec());
                b.extend_from_slice(&m.bytes);
            }
            if let Some(b) = bytes
                && let Ok(c) = Cluster::decode(b.as_slice())
            {
                *res = Resource::encode(name.clone(), &c);
            }
        }
        Some(out)
    }

    /// [`Patches::patch_clusters`] in place, for a shared layer.
    pub fn patch_cluster_layer(
        &self,
        layer: &mut crate::resource::Layer,
        namespace: &str,
        gateway: bool,
    ) {
        if let Some(patched) = self.patch_clusters(layer, namespace, gateway) {
            *layer = crate::resource::LayerMap::new(patched);
        }
    }

    /// Applies the HTTP_ROUTE merges for this proxy kind and namespace to a route configuration
    /// served on `port`.
    /// Whether some route patch applies to route tables built for `namespace`.
    pub fn patches_routes(&self, namespace: &str, gateway: bool) -> bool {
        let none = Labels::new();
        self.routes
            .iter()
            .any(|m| m.target.applies(namespace, &none, gateway))
    }

    pub fn patch_routes(
        &self,
        rc: &mut RouteConfiguration,
        port: u32,
        namespace: &str,
        gateway: bool,
    ) {
        let none = Labels::new();
        let merges: Vec<_> = self
            .routes
            .iter()
            .filter(|m| m.target.applies(namespace, &none, gateway))
            .collect();
        if merges.is_empty() {
            return;
        }
        let rc_name = rc.name.clone();
        for vh in &mut rc.virtual_hosts {
            for r in &mut vh.routes {
                let mut bytes: Option<Vec<u8>> = None;
                for m in merges
                    .iter()
                    .filter(|m| m.m.matches(&rc_name, port, &vh.name, &r.name))
                {
                    bytes
                        .get_or_insert_with(|| r.encode_to_vec())
                        .extend_from_slice(&m.bytes);
                }
                if let Some(b) = bytes
                    && let Ok(merged) = Route::decode(b.as_slice())
                {
                    *r = merged;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::VirtualHost;
    use meshd_model::parse_file;

    fn patches(yaml: &str) -> Patches {
        let f = parse_file("ef.yaml", yaml).unwrap();
        let mesh = MeshConfig::assemble([&f]);
        assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
        Patches::build(&mesh, "istio-system")
    }

    const RATE_LIMIT: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: rl, namespace: shop}
spec:
  workloadSelector: {labels: {app: api}}
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
            filter_enabled:
              runtime_key: local_rate_limit_enabled
              default_value: {numerator: 100, denominator: HUNDRED}
"#;

    #[test]
    fn local_rate_limit_goes_before_the_router_of_selected_workloads() {
        let p = patches(RATE_LIMIT);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let api: Labels = [("app".to_string(), "api".to_string())].into();
        let other: Labels = [("app".to_string(), "web".to_string())].into();
        let rbac = HttpFilter {
            name: "envoy.filters.http.rbac".into(),
            ..Default::default()
        };
        let mut filters = vec![rbac.clone()];
        p.insert_http_filters("shop", &api, false, &mut filters);
        assert_eq!(
            filters.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            vec![
                "envoy.filters.http.rbac",
                "envoy.filters.http.local_ratelimit"
            ]
        );
        let json = crate::json::message_to_json(&filters[1]);
        assert_eq!(
            json["typed_config"]["token_bucket"]["max_tokens"], 2,
            "{json}"
        );
        for (ns, labels, gw) in [
            ("shop", &other, false),
            ("other", &api, false),
            ("shop", &api, true),
        ] {
            let mut filters = vec![rbac.clone()];
            p.insert_http_filters(ns, labels, gw, &mut filters);
            assert_eq!(filters.len(), 1, "{ns} {labels:?} {gw}");
        }
    }

    #[test]
    fn a_value_that_does_not_decode_rejects_the_filter() {
        let p = patches(&RATE_LIMIT.replace("max_tokens: 2", "max_tokenz: 2"));
        assert_eq!(p.problems.len(), 1);
        assert!(
            p.problems[0].reason.contains("max_tokenz"),
            "{}",
            p.problems[0]
        );
        assert!(!p.has_http_filters());
    }

    #[test]
    fn cluster_and_route_merges_apply_by_match() {
        let p = patches(
            r#"
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
      value: {per_connection_buffer_limit_bytes: 32768, connect_timeout: 2s}
  - applyTo: HTTP_ROUTE
    match:
      routeConfiguration:
        vhost: {name: "api.shop.svc.cluster.local:8080"}
    patch:
      operation: MERGE
      value: {route: {idle_timeout: 5s}, request_headers_to_add: [{header: {key: x-patched, value: "yes"}}]}
"#,
        );
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let mk = |name: &str| {
            let c = Cluster {
                name: name.into(),
                connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
                ..Default::default()
            };
            (name.to_string(), Resource::encode(name, &c))
        };
        let layer: BTreeMap<_, _> = [
            mk("outbound|8080||api.shop.svc.cluster.local"),
            mk("outbound|8080||web.shop.svc.cluster.local"),
        ]
        .into();
        assert!(
            p.patch_clusters(&layer, "shop", true).is_none(),
            "sidecar-only"
        );
        let patched = p.patch_clusters(&layer, "shop", false).unwrap();
        let get = |m: &BTreeMap<String, SharedResource>, n: &str| {
            Cluster::decode(m[n].value().as_ref()).unwrap()
        };
        let api = get(&patched, "outbound|8080||api.shop.svc.cluster.local");
        assert_eq!(api.per_connection_buffer_limit_bytes.unwrap().value, 32768);
        assert_eq!(api.connect_timeout.unwrap().seconds, 2);
        assert_eq!(api.name, "outbound|8080||api.shop.svc.cluster.local");
        let web = get(&patched, "outbound|8080||web.shop.svc.cluster.local");
        assert!(web.per_connection_buffer_limit_bytes.is_none());

        let mut rc = RouteConfiguration {
            name: "8080".into(),
            virtual_hosts: vec![VirtualHost {
                name: "api.shop.svc.cluster.local:8080".into(),
                routes: vec![Route {
                    name: "default".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        p.patch_routes(&mut rc, 8080, "shop", true);
        let r = &rc.virtual_hosts[0].routes[0];
        assert_eq!(
            r.request_headers_to_add[0].header.as_ref().unwrap().key,
            "x-patched"
        );
        assert_eq!(r.name, "default");
    }
}
