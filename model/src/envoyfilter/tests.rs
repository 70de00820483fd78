//! EnvoyFilter shapes: what the model accepts and what it rejects, with the field named.

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
        PatchKind::HttpFilter(p) => {
            assert_eq!(p.context, PatchContext::SidecarInbound);
            assert_eq!(p.operation, FilterOperation::InsertBefore);
            assert_eq!(p.relative_to, Some("envoy.filters.http.router"));
        }
        other => panic!("{other:?}"),
    }
}

/// Every HTTP_FILTER operation and context Istio has, on any filter type.
#[test]
fn http_filter_operations_and_contexts_are_accepted() {
    for ctx in ["SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY", "ANY"] {
        for op in [
            "INSERT_BEFORE",
            "INSERT_AFTER",
            "INSERT_FIRST",
            "ADD",
            "REMOVE",
            "REPLACE",
            "MERGE",
        ] {
            let text = RATE_LIMIT
                .replace("context: SIDECAR_INBOUND", &format!("context: {ctx}"))
                .replace("operation: INSERT_BEFORE", &format!("operation: {op}"))
                .replace(
                    "subFilter: {name: envoy.filters.http.router}",
                    "subFilter: {name: envoy.filters.http.cors}",
                )
                .replace(
                    "name: envoy.filters.http.local_ratelimit",
                    "name: envoy.filters.http.lua",
                );
            let mesh = parse(&text);
            assert!(mesh.rejected.is_empty(), "{ctx} {op}: {:?}", mesh.rejected);
        }
    }
}

/// Each unsupported shape is rejected, naming the object (by its file:line) and the field.
#[test]
fn unsupported_shapes_are_rejected_naming_the_field() {
    let no_sub = "            subFilter: {name: envoy.filters.http.router}\n";
    let cases: Vec<(String, &str)> = vec![
        (
            RATE_LIMIT.replace("context: SIDECAR_INBOUND", "context: SIDECAR"),
            "match.context `SIDECAR`",
        ),
        (
            RATE_LIMIT.replace("operation: INSERT_BEFORE", "operation: PREPEND"),
            "patch.operation `PREPEND`",
        ),
        (
            RATE_LIMIT.replace("operation: INSERT_BEFORE", "operation: INSERT_AFTER"),
            "INSERT_AFTER `envoy.filters.http.router`",
        ),
        (
            RATE_LIMIT
                .replace(no_sub, "")
                .replace("operation: INSERT_BEFORE", "operation: REMOVE"),
            "REMOVE of HTTP_FILTER needs match.listener.filterChain.filter.subFilter.name",
        ),
        (
            RATE_LIMIT
                .replace(no_sub, "")
                .replace("operation: INSERT_BEFORE", "operation: MERGE"),
            "MERGE of HTTP_FILTER needs",
        ),
        (
            RATE_LIMIT.replace(
                "name: envoy.filters.network.http_connection_manager",
                "name: envoy.filters.network.tcp_proxy",
            ),
            "match.listener.filterChain.filter.name: HTTP_FILTER patches apply inside",
        ),
        (
            RATE_LIMIT.replace("        name: envoy.filters.http.local_ratelimit\n", ""),
            "patch.value.name is required",
        ),
        (
            RATE_LIMIT.replace(
                "      listener:\n",
                "      listener:\n        listenerFilter: x\n",
            ),
            "match.listener.listenerFilter",
        ),
        (
            RATE_LIMIT.replace(
                "      context: SIDECAR_INBOUND\n",
                "      context: SIDECAR_INBOUND\n      proxy: {proxyVersion: '^1\\.(2'}\n",
            ),
            "match.proxy.proxyVersion `^1\\.(2` is not a regular expression",
        ),
        (
            RATE_LIMIT.replace(
                "      operation: INSERT_BEFORE\n",
                "      operation: INSERT_BEFORE\n      filterClass: AUTHZ\n",
            ),
            "patch.filterClass orders an ADD of an HTTP_FILTER, not INSERT_BEFORE of HTTP_FILTER",
        ),
        (
            RATE_LIMIT.replace("applyTo: HTTP_FILTER", "applyTo: NETWORK_FILTER"),
            "match.listener.filterChain.filter.subFilter: NETWORK_FILTER",
        ),
    ];
    for (text, want) in &cases {
        let mesh = parse(text);
        assert_eq!(mesh.rejected.len(), 1, "{want}: {:?}", mesh.rejected);
        let r = mesh.rejected[0].to_string();
        assert!(r.contains(want), "want `{want}` in {r}");
        assert!(r.contains("spec.configPatches[0]"), "{r}");
        assert!(r.contains("ef.yaml:"), "{r}");
        assert!(r.contains("ratelimit"), "{r}");
    }

    let listener = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: l, namespace: shop}
spec:
  configPatches:
  - applyTo: INVALID
    patch: {operation: MERGE, value: {name: x}}
"#;
    let mesh = parse(listener);
    assert!(
        mesh.rejected[0]
            .reason
            .contains("applyTo INVALID is not supported"),
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
fn network_filter_patches_name_their_filter() {
    let text = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: hcm, namespace: shop}
spec:
  configPatches:
  - applyTo: NETWORK_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        portNumber: 8080
        filterChain:
          filter: {name: envoy.filters.network.http_connection_manager}
    patch:
      operation: MERGE
      value:
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          server_name: meshd
"#;
    let mesh = parse(text);
    assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
    let removal = text
            .replace("        filterChain:\n          filter: {name: envoy.filters.network.http_connection_manager}\n", "")
            .replace("operation: MERGE", "operation: REMOVE");
    let mesh = parse(&removal);
    assert!(
        mesh.rejected[0]
            .reason
            .contains("REMOVE of NETWORK_FILTER needs match.listener.filterChain.filter.name"),
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
    // A workloadSelector narrows CLUSTER and HTTP_ROUTE patches too (it was rejected before).
    let mesh = parse(&selected);
    assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);

    let m = ClusterMatch {
        service: Some("*.shop.svc.cluster.local".into()),
        port_number: Some(8080),
        ..Default::default()
    };
    assert!(m.matches("c", 8080, "", "api.shop.svc.cluster.local"));
    assert!(!m.matches("c", 9090, "", "api.shop.svc.cluster.local"));
    assert!(!m.matches("c", 8080, "", "api.other.svc.cluster.local"));
}

/// LISTENER, FILTER_CHAIN, CLUSTER, ROUTE_CONFIGURATION, VIRTUAL_HOST and HTTP_ROUTE with the
/// operations Istio allows each; the others are rejected naming the field.
#[test]
fn object_patches_accept_istios_operations_and_reject_the_rest() {
    let patch = |apply_to: &str, m: &str, op: &str, value: &str| {
        format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: o, namespace: shop}}\nspec:\n  workloadSelector: {{labels: {{app: api}}}}\n  configPatches:\n  - applyTo: {apply_to}\n    match: {m}\n    patch: {{operation: {op}, value: {value}}}\n"
        )
    };
    let ok = [
        (
            "LISTENER",
            "{context: SIDECAR_OUTBOUND, listener: {portNumber: 8080}}",
            "MERGE",
            "{per_connection_buffer_limit_bytes: 1}",
        ),
        ("LISTENER", "{listener: {name: x}}", "REMOVE", "{}"),
        (
            "LISTENER",
            "{context: SIDECAR_INBOUND}",
            "ADD",
            "{name: extra}",
        ),
        (
            "FILTER_CHAIN",
            "{listener: {filterChain: {name: c}}}",
            "MERGE",
            "{name: c}",
        ),
        (
            "FILTER_CHAIN",
            "{listener: {filterChain: {sni: a.b}}}",
            "REMOVE",
            "{}",
        ),
        ("FILTER_CHAIN", "{listener: {name: x}}", "ADD", "{name: c2}"),
        (
            "CLUSTER",
            "{context: SIDECAR_INBOUND, cluster: {portNumber: 8080}}",
            "MERGE",
            "{per_connection_buffer_limit_bytes: 1}",
        ),
        ("CLUSTER", "{cluster: {service: a.b}}", "REMOVE", "{}"),
        (
            "CLUSTER",
            "{context: SIDECAR_OUTBOUND}",
            "ADD",
            "{name: extra}",
        ),
        (
            "ROUTE_CONFIGURATION",
            "{routeConfiguration: {portNumber: 80}}",
            "MERGE",
            "{validate_clusters: false}",
        ),
        (
            "VIRTUAL_HOST",
            "{routeConfiguration: {vhost: {name: v}}}",
            "MERGE",
            "{retry_policy: {num_retries: 2}}",
        ),
        (
            "VIRTUAL_HOST",
            "{routeConfiguration: {vhost: {name: v}}}",
            "REMOVE",
            "{}",
        ),
        (
            "VIRTUAL_HOST",
            "{routeConfiguration: {portNumber: 80}}",
            "ADD",
            "{name: v2, domains: [x]}",
        ),
        (
            "HTTP_ROUTE",
            "{routeConfiguration: {vhost: {name: v, route: {name: r}}}}",
            "INSERT_BEFORE",
            "{name: r0}",
        ),
        (
            "HTTP_ROUTE",
            "{routeConfiguration: {vhost: {name: v}}}",
            "INSERT_FIRST",
            "{name: r0}",
        ),
        (
            "HTTP_ROUTE",
            "{routeConfiguration: {vhost: {name: v, route: {name: r}}}}",
            "REMOVE",
            "{}",
        ),
        // The gateway server's own route configuration, a virtual host by domain, routes by
        // action (Istio's RouteConfigurationMatch).
        (
            "ROUTE_CONFIGURATION",
            "{context: GATEWAY, routeConfiguration: {portNumber: 443, portName: https-shop, gateway: shop/web.v2}}",
            "MERGE",
            "{validate_clusters: false}",
        ),
        (
            "HTTP_ROUTE",
            "{routeConfiguration: {gateway: shop/web}}",
            "MERGE",
            "{}",
        ),
        (
            "VIRTUAL_HOST",
            "{context: SIDECAR_OUTBOUND, routeConfiguration: {portName: https, vhost: {name: v}}}",
            "MERGE",
            "{}",
        ),
        (
            "VIRTUAL_HOST",
            "{context: GATEWAY, routeConfiguration: {gateway: shop/web, vhost: {domainName: shop.example.com}}}",
            "MERGE",
            "{retry_policy: {num_retries: 2}}",
        ),
        (
            "VIRTUAL_HOST",
            "{routeConfiguration: {vhost: {domainName: shop.example.com}}}",
            "REMOVE",
            "{}",
        ),
        (
            "HTTP_ROUTE",
            "{routeConfiguration: {vhost: {route: {action: REDIRECT}}}}",
            "MERGE",
            "{redirect: {https_redirect: true}}",
        ),
        (
            "HTTP_ROUTE",
            "{routeConfiguration: {vhost: {name: v, route: {action: DIRECT_RESPONSE}}}}",
            "REMOVE",
            "{}",
        ),
        (
            "HTTP_ROUTE",
            "{routeConfiguration: {vhost: {route: {name: r, action: ROUTE}}}}",
            "INSERT_AFTER",
            "{name: r1}",
        ),
        (
            "HTTP_ROUTE",
            "{routeConfiguration: {vhost: {domainName: a.b, route: {action: ANY}}}}",
            "INSERT_FIRST",
            "{name: r0}",
        ),
    ];
    for (apply_to, m, op, value) in ok {
        let mesh = parse(&patch(apply_to, m, op, value));
        assert!(
            mesh.rejected.is_empty(),
            "{apply_to} {op}: {:?}",
            mesh.rejected
        );
    }
    let bad = [
        (
            "LISTENER",
            "{listener: {filterChain: {name: c}}}",
            "MERGE",
            "{}",
            "match.listener.filterChain: LISTENER patches match whole listeners",
        ),
        (
            "LISTENER",
            "{}",
            "INSERT_BEFORE",
            "{}",
            "patch.operation INSERT_BEFORE is not supported for LISTENER",
        ),
        (
            "FILTER_CHAIN",
            "{listener: {filterChain: {filter: {name: x}}}}",
            "MERGE",
            "{}",
            "match.listener.filterChain.filter: FILTER_CHAIN",
        ),
        (
            "CLUSTER",
            "{listener: {portNumber: 1}}",
            "MERGE",
            "{}",
            "match.listener: CLUSTER patches match match.cluster",
        ),
        (
            "CLUSTER",
            "{}",
            "REPLACE",
            "{}",
            "patch.operation REPLACE is not supported for CLUSTER",
        ),
        (
            "CLUSTER",
            "{}",
            "MERGE",
            "{name: other}",
            "patch.value.name: a MERGE cannot rename",
        ),
        (
            "ROUTE_CONFIGURATION",
            "{}",
            "ADD",
            "{}",
            "patch.operation ADD is not supported for ROUTE_CONFIGURATION",
        ),
        (
            "ROUTE_CONFIGURATION",
            "{routeConfiguration: {vhost: {name: v}}}",
            "MERGE",
            "{}",
            "match.routeConfiguration.vhost: ROUTE_CONFIGURATION",
        ),
        (
            "ROUTE_CONFIGURATION",
            "{context: SIDECAR_INBOUND}",
            "MERGE",
            "{}",
            "match.context SIDECAR_INBOUND is not supported here",
        ),
        (
            "VIRTUAL_HOST",
            "{}",
            "REMOVE",
            "{}",
            "REMOVE of VIRTUAL_HOST needs match.routeConfiguration.vhost.name",
        ),
        (
            "VIRTUAL_HOST",
            "{}",
            "ADD",
            "{domains: [x]}",
            "patch.value.name is required (the virtual host's name)",
        ),
        (
            "HTTP_ROUTE",
            "{routeConfiguration: {vhost: {name: v}}}",
            "REMOVE",
            "{}",
            "REMOVE of HTTP_ROUTE needs match.routeConfiguration.vhost.route.name",
        ),
        (
            "HTTP_ROUTE",
            "{routeConfiguration: {vhost: {route: {action: BOUNCE}}}}",
            "MERGE",
            "{}",
            "match.routeConfiguration.vhost.route.action `BOUNCE` is not one of ANY, ROUTE, REDIRECT, DIRECT_RESPONSE",
        ),
        (
            "HTTP_ROUTE",
            "{routeConfiguration: {vhost: {name: v, route: {action: ANY}}}}",
            "INSERT_BEFORE",
            "{name: r0}",
            "INSERT_BEFORE of HTTP_ROUTE needs match.routeConfiguration.vhost.route.name or a route.action other than ANY",
        ),
        (
            "VIRTUAL_HOST",
            "{context: GATEWAY, routeConfiguration: {gateway: web, vhost: {name: v}}}",
            "MERGE",
            "{}",
            "match.routeConfiguration.gateway `web` is not namespace/name",
        ),
        (
            "VIRTUAL_HOST",
            "{context: GATEWAY, routeConfiguration: {vhost: {route: {name: r}}}}",
            "MERGE",
            "{}",
            "MERGE of VIRTUAL_HOST needs match.routeConfiguration.vhost.name or vhost.domainName",
        ),
        (
            "LISTENER_FILTER",
            "{}",
            "MERGE",
            "{name: x}",
            "patch.operation MERGE is not supported for LISTENER_FILTER",
        ),
        (
            "LISTENER_FILTER",
            "{}",
            "REMOVE",
            "{}",
            "REMOVE of LISTENER_FILTER needs match.listener.listenerFilter",
        ),
        (
            "LISTENER_FILTER",
            "{listener: {filterChain: {name: c}}}",
            "ADD",
            "{name: x}",
            "match.listener.filterChain: listener filters run before",
        ),
        (
            "LISTENER_FILTER",
            "{}",
            "INSERT_FIRST",
            "{typed_config: {}}",
            "patch.value.name is required (the listener filter's name)",
        ),
        (
            "LISTENER_FILTER",
            "{routeConfiguration: {portNumber: 1}}",
            "ADD",
            "{name: x}",
            "match.routeConfiguration: LISTENER_FILTER patches match match.listener",
        ),
        (
            "EXTENSION_CONFIG",
            "{}",
            "MERGE",
            "{name: x}",
            "patch.operation MERGE is not supported for EXTENSION_CONFIG",
        ),
        (
            "EXTENSION_CONFIG",
            "{}",
            "ADD",
            "{typed_config: {}}",
            "patch.value.name is required (the name HTTP filters' config_discovery asks for)",
        ),
        (
            "EXTENSION_CONFIG",
            "{listener: {portNumber: 80}}",
            "ADD",
            "{name: x}",
            "match: EXTENSION_CONFIG patches select proxies",
        ),
        (
            "BOOTSTRAP",
            "{}",
            "ADD",
            "{}",
            "patch.operation ADD is not supported for BOOTSTRAP",
        ),
        (
            "BOOTSTRAP",
            "{cluster: {name: c}}",
            "MERGE",
            "{}",
            "match: BOOTSTRAP patches select proxies",
        ),
        (
            "BOOTSTRAP",
            "{}",
            "MERGE",
            "[1]",
            "patch.value must be an object",
        ),
    ];
    for (apply_to, m, op, value, want) in bad {
        let mesh = parse(&patch(apply_to, m, op, value));
        assert_eq!(mesh.rejected.len(), 1, "{apply_to} {op}");
        let r = mesh.rejected[0].to_string();
        assert!(r.contains(want), "want `{want}` in {r}");
        assert!(
            r.contains("spec.configPatches[0]") && r.contains("shop/o"),
            "{r}"
        );
    }
}

#[test]
fn proxy_match_selects_by_istio_version_and_exact_metadata() {
    let m = |version: Option<&str>, metadata: &[(&str, &str)]| ProxyMatch {
        proxy_version: version.map(str::to_string),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let node = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let v124 = node(&[("ISTIO_VERSION", "1.24.2"), ("REGION", "eu")]);
    assert!(m(Some(r"^1\.24.*"), &[]).matches(&v124));
    assert!(!m(Some(r"^1\.2[0-3]\..*"), &[]).matches(&v124));
    assert!(m(Some(r"^1\.24.*"), &[("REGION", "eu")]).matches(&v124));
    assert!(!m(None, &[("REGION", "us")]).matches(&v124));
    // No version reported: a version pattern matches only what matches the empty string.
    assert!(!m(Some(r"^1\..*"), &[]).matches(&node(&[])));
    assert!(m(Some(".*"), &[]).matches(&node(&[])));
    assert!(m(None, &[]).matches(&node(&[])));
    let mesh = parse(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: gated, namespace: shop}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {proxy: {proxyVersion: '^1\.24.*', metadata: {REGION: eu}}, cluster: {portNumber: 80}}
    patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 1}}
  - applyTo: CLUSTER
    match: {proxy: {version: '1.24'}}
    patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 1}}
"#,
    );
    assert_eq!(mesh.rejected.len(), 1, "{:?}", mesh.rejected);
    assert!(
        mesh.rejected[0].reason.contains("version"),
        "{}",
        mesh.rejected[0]
    );
}

#[test]
fn bootstrap_merge_selects_proxies_by_context_and_version() {
    let mesh = parse(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: boot, namespace: shop}
spec:
  configPatches:
  - applyTo: BOOTSTRAP
    match: {context: GATEWAY, proxy: {proxyVersion: '^1\.2.*'}}
    patch: {operation: MERGE, value: {stats_flush_interval: 10s}}
"#,
    );
    assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
    let (_, ef) = mesh.envoy_filters().next().expect("accepted");
    match ef.config_patches[0].kind() {
        Ok(PatchKind::Bootstrap(p)) => {
            assert_eq!(p.context, PatchContext::Gateway);
            assert_eq!(p.operation, FilterOperation::Merge);
            assert!(
                p.value
                    .is_some_and(|v| v.get("stats_flush_interval").is_some())
            );
        }
        other => panic!("not a bootstrap patch: {other:?}"),
    }
}

/// What `match.routeConfiguration` selects: a gateway server's configuration by port name and
/// Gateway (none on a shared `http.<port>` one), a virtual host by one of its domains, a route by
/// its action.
#[test]
fn route_configuration_match_selects_by_server_domain_and_action() {
    let rc = |json: &str| -> RouteConfigurationMatch { serde_json::from_str(json).unwrap() };
    let shop = GatewayServer {
        port_name: "https-shop",
        gateway_namespace: "shop",
        gateway_name: "web.v2",
    };
    let by_server =
        rc(r#"{"portNumber": 443, "portName": "https-shop", "gateway": "shop/web.v2"}"#);
    let name = "https.443.https-shop.web.v2.shop";
    assert!(by_server.matches_config(name, 443, Some(shop), true));
    assert!(!by_server.matches_config(name, 8443, Some(shop), true));
    assert!(!by_server.matches_config("http.443", 443, None, true));
    let other_port_name = GatewayServer {
        port_name: "https-admin",
        ..shop
    };
    assert!(!by_server.matches_config(name, 443, Some(other_port_name), true));
    let other_namespace = GatewayServer {
        gateway_namespace: "web",
        ..shop
    };
    assert!(!by_server.matches_config(name, 443, Some(other_namespace), true));
    // Unset (or empty, as Istio reads it): any configuration.
    assert!(rc(r#"{"portName": ""}"#).matches_config("http.80", 80, None, true));
    // A sidecar's configurations: Istio ignores portName and gateway there.
    assert!(by_server.matches_config("443", 443, None, false));
    assert!(!by_server.matches_config("8443", 8443, None, false));

    let domains = [
        "shop.example.com".to_string(),
        "shop.example.com:443".into(),
    ];
    let by_domain = rc(r#"{"vhost": {"domainName": "shop.example.com:443"}}"#);
    assert!(by_domain.matches_vhost("anything", &domains));
    assert!(!by_domain.matches_vhost("anything", &domains[..1]));
    assert!(
        !rc(r#"{"vhost": {"name": "x", "domainName": "shop.example.com"}}"#)
            .matches_vhost("y", &domains)
    );

    let redirects = rc(r#"{"vhost": {"route": {"action": "REDIRECT"}}}"#);
    assert!(redirects.selects_routes());
    assert!(redirects.matches_route("r", Some(RouteAction::Redirect)));
    assert!(!redirects.matches_route("r", Some(RouteAction::Route)));
    assert!(!redirects.matches_route("r", None));
    let named = rc(r#"{"vhost": {"route": {"name": "r", "action": "ANY"}}}"#);
    assert!(named.matches_route("r", Some(RouteAction::DirectResponse)));
    assert!(!named.matches_route("s", Some(RouteAction::DirectResponse)));
    assert!(!rc(r#"{"vhost": {"route": {"action": "ANY"}}}"#).selects_routes());
}
