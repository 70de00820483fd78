//! The EnvoyFilter shapes Istio's reference documents as examples (a Lua filter calling out to
//! an added cluster on a workload's inbound side, an HCM tweak on every HTTP listener, a Lua
//! filter and HCM tweak on the ingress gateway), written for this test's mesh: they are
//! accepted and applied as Istio would.

use super::filters_tests::{chain, listener, proxy, snapshot};
use crate::resource::CLUSTER;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use prost::Message;

/// The per-workload Lua example: INSERT_BEFORE the router on inbound port 8080, its cluster
/// added on the outbound side; and the mesh-wide HCM MERGE (idle timeout on every HCM).
const WORKLOAD_LUA: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: server-lua, namespace: app}
spec:
  workloadSelector:
    labels: {app: server}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        portNumber: 8080
        filterChain:
          filter:
            name: "envoy.filters.network.http_connection_manager"
            subFilter:
              name: "envoy.filters.http.router"
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.lua
        typed_config:
          "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
          inlineCode: |
            function envoy_on_request(request_handle)
              local headers, body = request_handle:httpCall("lua_cluster",
                {[":method"] = "POST", [":path"] = "/acl", [":authority"] = "internal.org.net"},
                "authorize call", 5000)
            end
  - applyTo: CLUSTER
    match:
      context: SIDECAR_OUTBOUND
    patch:
      operation: ADD
      value:
        name: "lua_cluster"
        type: STRICT_DNS
        connect_timeout: 0.5s
        lb_policy: ROUND_ROBIN
        load_assignment:
          cluster_name: lua_cluster
          endpoints:
          - lb_endpoints:
            - endpoint:
                address:
                  socket_address:
                    protocol: TCP
                    address: "internal.org.net"
                    port_value: 8888
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: hcm-idle, namespace: istio-system}
spec:
  configPatches:
  - applyTo: NETWORK_FILTER
    match:
      listener:
        filterChain:
          filter:
            name: "envoy.filters.network.http_connection_manager"
    patch:
      operation: MERGE
      value:
        typed_config:
          "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
          common_http_protocol_options:
            idle_timeout: 30s
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: gateway-tweaks, namespace: istio-system}
spec:
  workloadSelector:
    labels: {istio: ingressgateway}
  configPatches:
  - applyTo: NETWORK_FILTER
    match:
      context: GATEWAY
      listener:
        filterChain:
          filter:
            name: "envoy.filters.network.http_connection_manager"
    patch:
      operation: MERGE
      value:
        typed_config:
          "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
          xff_num_trusted_hops: 5
  - applyTo: HTTP_FILTER
    match:
      context: GATEWAY
      listener:
        portNumber: 8080
        filterChain:
          filter:
            name: "envoy.filters.network.http_connection_manager"
            subFilter:
              name: "envoy.filters.http.router"
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.lua
        typed_config:
          "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
          inlineCode: |
            function envoy_on_response(response_handle)
              response_handle:headers():add("x-gateway-lua", "1")
            end
"#;

fn hcm(c: &FilterChain) -> HttpConnectionManager {
    let f = c
        .filters
        .iter()
        .find(|f| f.name == meshd_model::envoyfilter::HCM)
        .unwrap();
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!()
    };
    HttpConnectionManager::decode(any.value.as_slice()).unwrap()
}

fn names(h: &HttpConnectionManager) -> Vec<&str> {
    h.http_filters.iter().map(|f| f.name.as_str()).collect()
}

#[test]
fn istios_reference_examples_apply() {
    let snap = snapshot(WORKLOAD_LUA);
    // The workload's inbound port 8080 runs the Lua filter before the router; port 8081 not.
    let inbound = listener(&snap, "server", "virtualInbound");
    let h = hcm(chain(&inbound, "inbound|8080||-mtls"));
    let n = names(&h);
    assert_eq!(
        n[n.len() - 2..],
        ["envoy.lua", "envoy.filters.http.router"],
        "{n:?}"
    );
    assert!(!names(&hcm(chain(&inbound, "inbound|8081||-mtls"))).contains(&"envoy.lua"));
    // Its cluster is there for the selected workload only.
    let server = snap.generate(&proxy(&snap, "server"));
    assert!(server[CLUSTER].contains("lua_cluster"));
    let other = snap.generate(&proxy(&snap, "other"));
    assert!(!other[CLUSTER].contains("lua_cluster"));
    // The mesh-wide HCM merge reaches every HTTP connection manager (sidecars and gateway),
    // the rest of each as generated.
    for (p, l, c) in [
        ("other", "virtualInbound", "inbound|8080||-mtls"),
        ("other", "0.0.0.0_8080", "0.0.0.0_8080-http"),
        ("ingress", "0.0.0.0_8080", "gateway-8080-http"),
    ] {
        let h = hcm(chain(&listener(&snap, p, l), c));
        let idle = h
            .common_http_protocol_options
            .unwrap()
            .idle_timeout
            .unwrap();
        assert_eq!(idle.seconds, 30, "{p} {l}");
        assert_eq!(
            h.http_filters.last().unwrap().name,
            "envoy.filters.http.router"
        );
    }
    // The gateway's own: trusted hops and its Lua filter, on the gateway only.
    let gw = hcm(chain(
        &listener(&snap, "ingress", "0.0.0.0_8080"),
        "gateway-8080-http",
    ));
    assert_eq!(gw.xff_num_trusted_hops, 5);
    assert!(names(&gw).contains(&"envoy.lua"));
    let side = hcm(chain(
        &listener(&snap, "other", "0.0.0.0_8080"),
        "0.0.0.0_8080-http",
    ));
    assert_eq!(side.xff_num_trusted_hops, 0);
}
