//! EnvoyFilter as a general patcher, in stock Envoy: a Lua HTTP filter inserted before the
//! router on the selected workload's inbound side adds a response header a real request sees
//! (and only there); an HTTP filter REMOVE and an HTTP connection manager MERGE (NETWORK_FILTER)
//! show in Envoy's own config_dump of the selected proxies only; an HTTP_ROUTE INSERT_FIRST
//! answers on the selected client's side only; a CLUSTER ADD reaches the selected Envoy; an
//! EXTENSION_CONFIG (a Lua config served over ECDS) runs in the filter that names it.

use crate::traffic_support;

use meshd_e2e::*;
use traffic_support::*;

const PORT: u16 = 8080;

/// The HTTP filter names of every HTTP connection manager in `listener` (all its chains, the
/// default one included), as Envoy's config_dump shows them.
fn http_filters(dump: &serde_json::Value, listener: &str) -> Vec<Vec<String>> {
    hcms(dump, listener)
        .iter()
        .map(|h| {
            h["http_filters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

/// Every HTTP connection manager config of an active listener in a config_dump.
fn hcms(dump: &serde_json::Value, listener: &str) -> Vec<serde_json::Value> {
    let listeners = dump_section(dump, "ListenersConfigDump")["dynamic_listeners"]
        .as_array()
        .unwrap();
    let l = listeners
        .iter()
        .find(|l| l["name"] == listener)
        .unwrap_or_else(|| panic!("no listener {listener}"));
    let l = &l["active_state"]["listener"];
    let chains = l["filter_chains"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .chain(Some(l["default_filter_chain"].clone()).filter(|c| !c.is_null()));
    chains
        .flat_map(|c| c["filters"].as_array().cloned().unwrap_or_default())
        .filter(|f| f["name"] == "envoy.filters.network.http_connection_manager")
        .map(|f| f["typed_config"].clone())
        .collect()
}

#[test]
fn lua_insert_filter_remove_and_hcm_merge() {
    let filters = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: api-lua, namespace: {NS}}}
spec:
  workloadSelector:
    labels: {{app: api}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {{name: envoy.filters.http.router}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          default_source_code:
            inline_string: |
              function envoy_on_response(response_handle)
                response_handle:headers():add("x-lua-added", "api-inbound")
              end
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: client-patches, namespace: {NS}}}
spec:
  workloadSelector:
    labels: {{app: client}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        portNumber: {PORT}
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {{name: envoy.filters.http.fault}}
    patch:
      operation: REMOVE
  - applyTo: HTTP_ROUTE
    match:
      context: SIDECAR_OUTBOUND
      routeConfiguration:
        vhost: {{name: "{api}:{PORT}"}}
    patch:
      operation: INSERT_FIRST
      value:
        name: envoyfilter-teapot
        match: {{path: /from-envoyfilter}}
        direct_response: {{status: 418}}
  - applyTo: CLUSTER
    match: {{context: SIDECAR_OUTBOUND}}
    patch:
      operation: ADD
      value:
        name: envoyfilter-extra
        type: STATIC
        connect_timeout: 1s
        load_assignment:
          cluster_name: envoyfilter-extra
          endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9}}}}}}}}]}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: web-hcm, namespace: {NS}}}
spec:
  workloadSelector:
    labels: {{app: web}}
  configPatches:
  - applyTo: NETWORK_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        portNumber: {PORT}
        filterChain:
          filter: {{name: envoy.filters.network.http_connection_manager}}
    patch:
      operation: MERGE
      value:
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          server_name: meshd-merged
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {{name: envoy.filters.http.router}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: web.lua.ecds
        config_discovery:
          config_source: {{ads: {{}}, resource_api_version: V3}}
          type_urls: [type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua]
  - applyTo: EXTENSION_CONFIG
    patch:
      operation: ADD
      value:
        name: web.lua.ecds
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          default_source_code:
            inline_string: |
              function envoy_on_response(response_handle)
                response_handle:headers():add("x-ecds-lua", "web-inbound")
              end
"#,
        api = fqdn("api"),
    );
    let yaml = [
        client_and_api(PORT),
        service("web", vip(21), PORT),
        workload("web", "web", ip(21), &[]),
        filters,
    ]
    .concat();
    let mesh = mesh(
        "envoyfilter-lua",
        &yaml,
        &[(fqdn("api"), vip(20)), (fqdn("web"), vip(21))],
    );
    let configz = mesh.admin_json("/debug/configz").unwrap();
    assert_eq!(configz["rejected"], serde_json::json!([]), "{configz}");
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    let api = mesh
        .add_sidecar_pod(&format!("api.{NS}"), ip(20), PORT)
        .unwrap();
    let web = mesh
        .add_sidecar_pod(&format!("web.{NS}"), ip(21), PORT)
        .unwrap();

    // A real request through api's sidecar carries the Lua filter's header; web's does not.
    let a = get(&client, &format!("http://{}:{PORT}/", fqdn("api")));
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.headers.get("x-lua-added").map(String::as_str),
        Some("api-inbound"),
        "{a:?}"
    );
    let w = get(&client, &format!("http://{}:{PORT}/", fqdn("web")));
    assert_eq!(w.status, 200, "{w:?}");
    assert!(!w.headers.contains_key("x-lua-added"), "{w:?}");
    // EXTENSION_CONFIG: web's Lua filter names its config, which meshd serves over ECDS (its
    // listener would not leave warming without it); api has no such filter.
    assert_eq!(
        w.headers.get("x-ecds-lua").map(String::as_str),
        Some("web-inbound"),
        "{w:?}"
    );
    assert!(!a.headers.contains_key("x-ecds-lua"), "{a:?}");
    let ecds = dump_section(&web.envoy_config_dump().unwrap(), "EcdsConfigDump").to_string();
    assert!(
        ecds.contains("web.lua.ecds") && ecds.contains("x-ecds-lua"),
        "{ecds}"
    );

    // Envoy's own config: the Lua filter right before the router in every inbound HTTP
    // connection manager of api, in none of web's.
    let api_dump = api.envoy_config_dump().unwrap();
    let inbound = http_filters(&api_dump, "virtualInbound");
    assert!(!inbound.is_empty());
    for filters in &inbound {
        let n = filters.len();
        assert_eq!(
            filters[n - 2..],
            ["envoy.filters.http.lua", "envoy.filters.http.router"],
            "{filters:?}"
        );
    }
    let web_dump = web.envoy_config_dump().unwrap();
    for filters in http_filters(&web_dump, "virtualInbound") {
        assert!(
            !filters.contains(&"envoy.filters.http.lua".into()),
            "{filters:?}"
        );
    }

    // REMOVE: client's outbound HCM on the port has no fault filter; web's still has it.
    let listener = format!("0.0.0.0_{PORT}");
    let client_out = http_filters(&client.envoy_config_dump().unwrap(), &listener);
    assert!(!client_out.is_empty());
    for filters in &client_out {
        assert!(
            !filters.contains(&"envoy.filters.http.fault".into()),
            "{filters:?}"
        );
        assert_eq!(filters.last().unwrap(), "envoy.filters.http.router");
    }
    for filters in http_filters(&web_dump, &listener) {
        assert!(
            filters.contains(&"envoy.filters.http.fault".into()),
            "{filters:?}"
        );
    }

    // HTTP_ROUTE INSERT_FIRST: client's route to api answers the patched path itself; web's
    // sidecar (not selected) has no such route, so api's app answers there.
    let teapot = get(
        &client,
        &format!("http://{}:{PORT}/from-envoyfilter", fqdn("api")),
    );
    assert_eq!(teapot.status, 418, "{teapot:?}");
    let from_web = get(
        &web,
        &format!("http://{}:{PORT}/from-envoyfilter", fqdn("api")),
    );
    assert_eq!(from_web.status, 200, "{from_web:?}");
    // CLUSTER ADD: in client's Envoy only.
    assert!(dump_clusters(&client.envoy_config_dump().unwrap()).contains_key("envoyfilter-extra"));
    assert!(!dump_clusters(&web_dump).contains_key("envoyfilter-extra"));

    // MERGE of the HCM (NETWORK_FILTER): web's inbound managers carry the merged field and
    // keep the rest as generated; api's do not.
    let merged = hcms(&web_dump, "virtualInbound");
    assert!(!merged.is_empty());
    for h in &merged {
        assert_eq!(h["server_name"], "meshd-merged", "{h}");
        assert_eq!(
            h["http_filters"].as_array().unwrap().last().unwrap()["name"],
            "envoy.filters.http.router"
        );
    }
    for h in hcms(&api_dump, "virtualInbound") {
        assert!(h["server_name"].is_null(), "{h}");
    }
    // The merged manager still serves.
    assert_eq!(
        get(&client, &format!("http://{}:{PORT}/", fqdn("web"))).status,
        200
    );
}
