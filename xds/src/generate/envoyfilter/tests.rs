//! EnvoyFilter patch decoding, and the CLUSTER and HTTP_ROUTE merges.

use super::*;
use envoy_types::pb::envoy::config::route::v3::VirtualHost;

pub(super) fn patches(yaml: &str) -> Patches {
    Patches::build(&crate::generate::test_fixture::mesh(yaml), "istio-system")
}

pub(super) const RATE_LIMIT: &str = r#"
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
fn a_value_that_does_not_decode_rejects_the_filter() {
    let p = patches(&RATE_LIMIT.replace("max_tokens: 2", "max_tokenz: 2"));
    assert_eq!(p.problems.len(), 1);
    assert!(
        p.problems[0].reason.contains("max_tokenz"),
        "{}",
        p.problems[0]
    );
    assert!(!p.has_patches());
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
    let layer = LayerMap::new(layer);
    let none = Labels::new();
    let node = Default::default();
    let sidecar = p.selected_for("shop", &none, false, &node);
    let gateway = p.selected_for("shop", &none, true, &node);
    assert!(
        p.patch_layer(&layer, LayerKind::Clusters, PatchContext::Gateway, &gateway)
            .is_none(),
        "sidecar-only"
    );
    let patched = p
        .patch_layer(
            &layer,
            LayerKind::Clusters,
            PatchContext::SidecarOutbound,
            &sidecar,
        )
        .unwrap();
    let get = |m: &BTreeMap<String, SharedResource>, n: &str| {
        Cluster::decode(m[n].value().as_ref()).unwrap()
    };
    let api = get(&patched, "outbound|8080||api.shop.svc.cluster.local");
    assert_eq!(api.per_connection_buffer_limit_bytes.unwrap().value, 32768);
    assert_eq!(api.connect_timeout.unwrap().seconds, 2);
    assert_eq!(api.name, "outbound|8080||api.shop.svc.cluster.local");
    let web = get(&patched, "outbound|8080||web.shop.svc.cluster.local");
    assert!(web.per_connection_buffer_limit_bytes.is_none());

    let rc = RouteConfiguration {
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
    let routes = LayerMap::new([("8080".to_string(), Resource::encode("8080", &rc))].into());
    let patched = p
        .patch_layer(&routes, LayerKind::Routes, PatchContext::Gateway, &gateway)
        .unwrap();
    let rc = RouteConfiguration::decode(patched["8080"].value().as_ref()).unwrap();
    let r = &rc.virtual_hosts[0].routes[0];
    assert_eq!(
        r.request_headers_to_add[0].header.as_ref().unwrap().key,
        "x-patched"
    );
    assert_eq!(r.name, "default");
}
