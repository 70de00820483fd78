//! LISTENER, FILTER_CHAIN, CLUSTER, ROUTE_CONFIGURATION, VIRTUAL_HOST and HTTP_ROUTE patches as
//! proxies receive them: each operation, workloadSelector on every applyTo, priority order, and
//! the sharing of what no patch selects.

use super::filters_tests::{chain, listener, proxy, snapshot, snapshot_with_problems};
use crate::generate::MeshSnapshot;
use crate::resource::{CLUSTER, LISTENER, ROUTE, ResourceSet};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::listener_filter;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use prost::Message;
use std::sync::Arc;

/// An EnvoyFilter `name` in `app` selecting `app: server` with the given patches (YAML list
/// items, indented for `configPatches`), and `priority`.
fn ef(name: &str, priority: i32, patches: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: {name}, namespace: app}}\nspec:\n  workloadSelector: {{labels: {{app: server}}}}\n  priority: {priority}\n  configPatches:\n{patches}"
    )
}

fn set(snap: &MeshSnapshot, proxy_name: &str, ty: &'static str) -> ResourceSet {
    snap.generate(&proxy(snap, proxy_name))[ty].clone()
}

fn cluster(snap: &MeshSnapshot, proxy_name: &str, name: &str) -> Option<Cluster> {
    let r = set(snap, proxy_name, CLUSTER).get(name).cloned()?;
    Some(Cluster::decode(r.value().as_ref()).unwrap())
}

fn routes(snap: &MeshSnapshot, proxy_name: &str, name: &str) -> RouteConfiguration {
    let r = set(snap, proxy_name, ROUTE).get(name).cloned().unwrap();
    RouteConfiguration::decode(r.value().as_ref()).unwrap()
}

const SERVER_8080: &str = "outbound|8080||server.app.svc.cluster.local";
const SERVER_8081: &str = "outbound|8081||server.app.svc.cluster.local";

#[test]
fn cluster_merge_add_remove_for_selected_workloads_only() {
    let snap = snapshot(&ef(
        "clusters",
        0,
        r#"  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND, cluster: {service: server.app.svc.cluster.local, portNumber: 8080}}
    patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 1024}}
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND, cluster: {portNumber: 8081}}
    patch: {operation: REMOVE}
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND}
    patch:
      operation: ADD
      value: {name: extra-upstream, type: STRICT_DNS, connect_timeout: 1s, load_assignment: {cluster_name: extra-upstream, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: example.com, port_value: 443}}}}]}]}}
  - applyTo: CLUSTER
    match: {context: SIDECAR_INBOUND, cluster: {portNumber: 8080}}
    patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 2048}}
"#,
    ));
    let c = cluster(&snap, "server", SERVER_8080).unwrap();
    assert_eq!(c.per_connection_buffer_limit_bytes.unwrap().value, 1024);
    assert_eq!(c.name, SERVER_8080);
    assert!(cluster(&snap, "server", SERVER_8081).is_none());
    let extra = cluster(&snap, "server", "extra-upstream").unwrap();
    assert_eq!(extra.connect_timeout.unwrap().seconds, 1);
    let inbound = cluster(&snap, "server", "inbound|8080||").unwrap();
    assert_eq!(
        inbound.per_connection_buffer_limit_bytes.unwrap().value,
        2048
    );
    assert!(
        cluster(&snap, "server", "inbound|8081||")
            .unwrap()
            .per_connection_buffer_limit_bytes
            .is_none()
    );
    // `other` (same namespace, not selected): untouched and the very layers another
    // unselected proxy's scope has.
    let other = cluster(&snap, "other", SERVER_8080).unwrap();
    assert!(other.per_connection_buffer_limit_bytes.is_none());
    assert!(cluster(&snap, "other", SERVER_8081).is_some());
    assert!(cluster(&snap, "other", "extra-upstream").is_none());
    let plain = snapshot("");
    let before = set(&plain, "other", CLUSTER);
    let after = set(&snap, "other", CLUSTER);
    assert!(after.same_as(&set(&snap, "other", CLUSTER)));
    assert_eq!(after.len(), before.len());
    for r in after.iter() {
        assert_eq!(
            r.value(),
            before.get(&r.name).unwrap().value(),
            "{}",
            r.name
        );
    }
    // Two selected workloads share the patched layer.
    let (a, b) = (
        set(&snap, "server", CLUSTER),
        set(&snap, "server2", CLUSTER),
    );
    assert!(a.same_as(&b));
}

#[test]
fn listener_and_filter_chain_merge_add_remove() {
    let snap = snapshot(&ef(
        "listeners",
        0,
        r#"  - applyTo: LISTENER
    match: {context: SIDECAR_OUTBOUND, listener: {portNumber: 8081}}
    patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 4096}}
  - applyTo: LISTENER
    match: {context: SIDECAR_OUTBOUND, listener: {name: 0.0.0.0_9000}}
    patch: {operation: REMOVE}
  - applyTo: LISTENER
    match: {context: SIDECAR_OUTBOUND}
    patch:
      operation: ADD
      value:
        name: extra-listener
        address: {socket_address: {address: 127.0.0.1, port_value: 15999}}
        filter_chains:
        - filters:
          - name: envoy.filters.network.tcp_proxy
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: extra, cluster: BlackHoleCluster}
  - applyTo: FILTER_CHAIN
    match: {context: SIDECAR_INBOUND, listener: {filterChain: {transportProtocol: tls, destinationPort: 8081}}}
    patch: {operation: MERGE, value: {transport_socket_connect_timeout: 3s}}
  - applyTo: FILTER_CHAIN
    match: {context: SIDECAR_INBOUND, listener: {filterChain: {name: "inbound|9000||-mtls"}}}
    patch: {operation: REMOVE}
"#,
    ));
    let outbound = set(&snap, "server", LISTENER);
    assert!(!outbound.contains("0.0.0.0_9000"));
    assert!(outbound.contains("extra-listener"));
    let l = listener(&snap, "server", "0.0.0.0_8081");
    assert_eq!(l.per_connection_buffer_limit_bytes.unwrap().value, 4096);
    assert_eq!(l.name, "0.0.0.0_8081");
    assert!(
        listener(&snap, "server", "0.0.0.0_8080")
            .per_connection_buffer_limit_bytes
            .is_none()
    );
    let inbound = listener(&snap, "server", "virtualInbound");
    let merged = chain(&inbound, "inbound|8081||-mtls");
    assert_eq!(merged.transport_socket_connect_timeout.unwrap().seconds, 3);
    assert!(
        chain(&inbound, "inbound|8080||-mtls")
            .transport_socket_connect_timeout
            .is_none()
    );
    assert!(
        !inbound
            .filter_chains
            .iter()
            .any(|c| c.name == "inbound|9000||-mtls")
    );
    // Not selected: `other` keeps all of it.
    let other = set(&snap, "other", LISTENER);
    assert!(other.contains("0.0.0.0_9000") && !other.contains("extra-listener"));
}

/// The names of a listener's listener filters, in order.
fn listener_filter_names(l: &envoy_types::pb::envoy::config::listener::v3::Listener) -> Vec<&str> {
    l.listener_filters.iter().map(|f| f.name.as_str()).collect()
}

#[test]
fn listener_filter_operations_relative_to_the_named_filter() {
    const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";
    const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
    let snap = snapshot(&ef(
        "listener-filters",
        0,
        r#"  - applyTo: LISTENER_FILTER
    match: {context: SIDECAR_INBOUND, listener: {listenerFilter: envoy.filters.listener.tls_inspector}}
    patch:
      operation: INSERT_AFTER
      value: {name: envoy.filters.listener.http_inspector, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}}
  - applyTo: LISTENER_FILTER
    match: {context: SIDECAR_INBOUND, listener: {listenerFilter: envoy.filters.listener.original_dst}}
    patch:
      operation: INSERT_BEFORE
      value: {name: envoy.filters.listener.local_ratelimit, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.local_ratelimit.v3.LocalRateLimit, stat_prefix: inbound_conns, token_bucket: {max_tokens: 100, fill_interval: 1s}}}
  - applyTo: LISTENER_FILTER
    match: {context: SIDECAR_INBOUND, listener: {listenerFilter: envoy.filters.listener.tls_inspector}}
    patch:
      operation: REPLACE
      value: {name: envoy.filters.listener.tls_inspector, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector, initial_read_buffer_size: 512}}
  - applyTo: LISTENER_FILTER
    match: {context: SIDECAR_OUTBOUND, listener: {portNumber: 8080}}
    patch:
      operation: INSERT_FIRST
      value: {name: envoy.filters.listener.proxy_protocol, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol}}
  - applyTo: LISTENER_FILTER
    match: {context: SIDECAR_OUTBOUND, listener: {listenerFilter: envoy.filters.listener.original_dst}}
    patch: {operation: REMOVE}
"#,
    ));
    let inbound = listener(&snap, "server", "virtualInbound");
    assert_eq!(
        listener_filter_names(&inbound),
        [
            "envoy.filters.listener.local_ratelimit",
            ORIGINAL_DST,
            TLS_INSPECTOR,
            "envoy.filters.listener.http_inspector",
        ]
    );
    let tls = &inbound.listener_filters[2];
    let Some(listener_filter::ConfigType::TypedConfig(any)) = &tls.config_type else {
        panic!("{tls:?}");
    };
    let replaced = TlsInspector::decode(any.value.as_slice()).unwrap();
    assert_eq!(replaced.initial_read_buffer_size.unwrap().value, 512);
    let port_8080 = listener(&snap, "server", "0.0.0.0_8080");
    assert_eq!(
        listener_filter_names(&port_8080)[0],
        "envoy.filters.listener.proxy_protocol"
    );
    assert_ne!(
        listener_filter_names(&listener(&snap, "server", "0.0.0.0_8081")).first(),
        Some(&"envoy.filters.listener.proxy_protocol")
    );
    // REMOVE on SIDECAR_OUTBOUND: virtualOutbound loses original_dst; the inbound keeps it.
    let outbound = listener(&snap, "server", "virtualOutbound");
    assert!(!listener_filter_names(&outbound).contains(&ORIGINAL_DST));
    // Not selected: `other` has the generated listener filters.
    assert_eq!(
        listener_filter_names(&listener(&snap, "other", "virtualInbound")),
        [ORIGINAL_DST, TLS_INSPECTOR]
    );
}

#[test]
fn a_listener_filter_without_a_typed_config_rejects_its_envoy_filter() {
    let snap = snapshot_with_problems(&ef(
        "untyped",
        0,
        r#"  - applyTo: LISTENER_FILTER
    match: {context: SIDECAR_INBOUND}
    patch: {operation: ADD, value: {name: envoy.filters.listener.http_inspector}}
"#,
    ));
    let problems: Vec<String> = snap
        .patches
        .problems
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("spec.configPatches[0].patch.value.typed_config is required")),
        "{problems:?}"
    );
    assert_eq!(
        listener_filter_names(&listener(&snap, "server", "virtualInbound")),
        [
            "envoy.filters.listener.original_dst",
            "envoy.filters.listener.tls_inspector"
        ]
    );
}

#[test]
fn extension_configs_go_over_ecds_to_the_selected_proxies_only() {
    use crate::resource::EXTENSION_CONFIG;
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    let lua = |code: &str| {
        format!(
            r#"  - applyTo: EXTENSION_CONFIG
    patch:
      operation: ADD
      value:
        name: meshd.lua
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua, default_source_code: {{inline_string: "{code}"}}}}
"#
        )
    };
    let snap = snapshot(&format!(
        "{}{}",
        ef(
            "ecds",
            0,
            &format!(
                r#"  - applyTo: HTTP_FILTER
    match: {{context: SIDECAR_INBOUND, listener: {{filterChain: {{filter: {{name: envoy.filters.network.http_connection_manager, subFilter: {{name: envoy.filters.http.router}}}}}}}}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: meshd.lua
        config_discovery: {{config_source: {{ads: {{}}, resource_api_version: V3}}, type_urls: [type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua]}}
{}"#,
                lua("-- first")
            )
        ),
        // Priority 1: later, so its config of the same name is the one served.
        ef("ecds-later", 1, &lua("-- later")),
    ));
    let served = set(&snap, "server", EXTENSION_CONFIG);
    let r = served
        .get("meshd.lua")
        .expect("the config is served over ECDS");
    let config = TypedExtensionConfig::decode(r.value().as_ref()).unwrap();
    assert_eq!(config.name, "meshd.lua");
    let any = config.typed_config.unwrap();
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
    );
    assert!(String::from_utf8_lossy(&any.value).contains("-- later"));
    // The filter that asks for it, by name, before the router.
    use envoy_types::pb::envoy::config::listener::v3::filter;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_filter,
    };
    let inbound = listener(&snap, "server", "virtualInbound");
    let hcm = chain(&inbound, "inbound|8080||-mtls")
        .filters
        .iter()
        .find_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .expect("an HTTP connection manager");
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    let at = names
        .iter()
        .position(|n| *n == "meshd.lua")
        .expect("meshd.lua");
    assert_eq!(names[at + 1], "envoy.filters.http.router");
    assert!(matches!(
        hcm.http_filters[at].config_type,
        Some(http_filter::ConfigType::ConfigDiscovery(_))
    ));
    // Not selected: no ECDS at all.
    assert!(
        !snap
            .generate(&proxy(&snap, "other"))
            .contains_key(EXTENSION_CONFIG)
    );
}

#[test]
fn match_proxy_selects_by_the_nodes_istio_version_and_metadata() {
    let snap = snapshot(&ef(
        "gated",
        0,
        r#"  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND, proxy: {proxyVersion: '^1\.24\..*'}, cluster: {portNumber: 8080}}
    patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 1024}}
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND, proxy: {metadata: {REGION: eu}}, cluster: {portNumber: 8081}}
    patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 2048}}
"#,
    ));
    let limit = |metadata: &[(&str, &str)], name: &str| {
        let mut p = proxy(&snap, "server");
        p.metadata = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = snap.generate(&p)[CLUSTER].get(name).cloned().unwrap();
        Cluster::decode(r.value().as_ref())
            .unwrap()
            .per_connection_buffer_limit_bytes
            .map(|v| v.value)
    };
    assert_eq!(
        limit(&[("ISTIO_VERSION", "1.24.3")], SERVER_8080),
        Some(1024)
    );
    assert_eq!(limit(&[("ISTIO_VERSION", "1.23.0")], SERVER_8080), None);
    // No version reported: a version pattern does not match.
    assert_eq!(limit(&[], SERVER_8080), None);
    assert_eq!(limit(&[("REGION", "eu")], SERVER_8081), Some(2048));
    assert_eq!(limit(&[("REGION", "us")], SERVER_8081), None);
}

#[test]
fn route_configuration_virtual_host_and_route_operations() {
    let vhost = "server.app.svc.cluster.local:8080";
    let snap = snapshot(&ef(
        "routes",
        0,
        &format!(
            r#"  - applyTo: ROUTE_CONFIGURATION
    match: {{context: SIDECAR_OUTBOUND, routeConfiguration: {{portNumber: 8080}}}}
    patch: {{operation: MERGE, value: {{max_direct_response_body_size_bytes: 2048}}}}
  - applyTo: VIRTUAL_HOST
    match: {{context: SIDECAR_OUTBOUND, routeConfiguration: {{portNumber: 8080}}}}
    patch:
      operation: ADD
      value: {{name: added, domains: [added.example], routes: [{{name: added-route, match: {{prefix: /}}, direct_response: {{status: 204}}}}]}}
  - applyTo: VIRTUAL_HOST
    match: {{context: SIDECAR_OUTBOUND, routeConfiguration: {{vhost: {{name: "other.app.svc.cluster.local:8080"}}}}}}
    patch: {{operation: REMOVE}}
  - applyTo: VIRTUAL_HOST
    match: {{context: SIDECAR_OUTBOUND, routeConfiguration: {{vhost: {{name: "{vhost}"}}}}}}
    patch: {{operation: MERGE, value: {{request_headers_to_add: [{{header: {{key: x-vhost, value: "1"}}}}]}}}}
  - applyTo: HTTP_ROUTE
    match: {{context: SIDECAR_OUTBOUND, routeConfiguration: {{vhost: {{name: "{vhost}"}}}}}}
    patch:
      operation: INSERT_FIRST
      value: {{name: health, match: {{path: /healthz}}, direct_response: {{status: 200}}}}
"#
        ),
    ));
    let rc = routes(&snap, "server", "8080");
    assert_eq!(rc.name, "8080");
    assert_eq!(rc.max_direct_response_body_size_bytes.unwrap().value, 2048);
    let names: Vec<&str> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert!(names.contains(&"added"), "{names:?}");
    assert!(
        !names.contains(&"other.app.svc.cluster.local:8080"),
        "{names:?}"
    );
    let vh = rc.virtual_hosts.iter().find(|v| v.name == vhost).unwrap();
    assert_eq!(
        vh.request_headers_to_add[0].header.as_ref().unwrap().key,
        "x-vhost"
    );
    assert_eq!(vh.routes[0].name, "health");
    assert!(vh.routes.len() > 1);
    // Port 8081's table and the unselected workload's are as generated.
    assert!(
        routes(&snap, "server", "8081")
            .max_direct_response_body_size_bytes
            .is_none()
    );
    let plain = snapshot("");
    assert_eq!(
        set(&snap, "other", ROUTE).get("8080").unwrap().value(),
        set(&plain, "other", ROUTE).get("8080").unwrap().value()
    );
}

#[test]
fn patches_apply_in_priority_order() {
    // The later (higher priority) MERGE wins; the REMOVE at priority -10 runs before the ADD at
    // 0 re-adds the cluster, so it is there.
    let add = r#"  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND}
    patch: {operation: ADD, value: {name: ordered, connect_timeout: 7s}}
"#;
    let remove = r#"  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND, cluster: {name: ordered}}
    patch: {operation: REMOVE}
"#;
    let merge = |secs: u32| {
        format!(
            "  - applyTo: CLUSTER\n    match: {{context: SIDECAR_OUTBOUND, cluster: {{name: ordered}}}}\n    patch: {{operation: MERGE, value: {{connect_timeout: {secs}s}}}}\n"
        )
    };
    let snap = snapshot(&format!(
        "{}{}{}{}",
        ef("z-late", 20, &merge(9)),
        ef("a-early", 10, &merge(8)),
        ef("added", 0, add),
        ef("removed-first", -10, remove),
    ));
    let c = cluster(&snap, "server", "ordered").unwrap();
    assert_eq!(c.connect_timeout.unwrap().seconds, 9);
    // REMOVE after the ADD (higher priority): gone.
    let snap = snapshot(&format!(
        "{}{}",
        ef("added", 0, add),
        ef("removed-after", 5, remove)
    ));
    assert!(cluster(&snap, "server", "ordered").is_none());
}

#[test]
fn a_rebuild_keeps_patched_layers_identity() {
    let snap = snapshot(&ef(
        "c",
        0,
        "  - applyTo: CLUSTER\n    match: {context: SIDECAR_OUTBOUND}\n    patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 1}}\n",
    ));
    // What proxies were served before the rebuild is what a rebuild reuses.
    let (server, other) = (set(&snap, "server", CLUSTER), set(&snap, "other", CLUSTER));
    let again = snap.rebuild(2, Arc::new(snap.config().clone()), snap.opts.clone());
    assert!(server.same_as(&set(&again, "server", CLUSTER)));
    assert!(other.same_as(&set(&again, "other", CLUSTER)));
}

#[test]
fn an_added_name_never_lands_in_two_layers_of_a_proxy() {
    // An inbound ADD reusing an outbound cluster's name: the proxy still gets each name once,
    // the outbound cluster as generated.
    let snap = snapshot(&ef(
        "dup",
        0,
        &format!(
            "  - applyTo: CLUSTER\n    match: {{context: SIDECAR_INBOUND}}\n    patch: {{operation: ADD, value: {{name: \"{SERVER_8080}\", connect_timeout: 9s}}}}\n"
        ),
    ));
    let clusters = set(&snap, "server", CLUSTER);
    let named = clusters.iter().filter(|r| r.name == SERVER_8080).count();
    assert_eq!(named, 1);
    let c = cluster(&snap, "server", SERVER_8080).unwrap();
    assert_ne!(c.connect_timeout.unwrap().seconds, 9);
}
