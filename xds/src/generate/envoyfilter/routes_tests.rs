//! `match.routeConfiguration` as proxies receive it: a virtual host by `domainName`, routes by
//! `action`, and on a gateway the route configuration of one TLS-terminating server, selected by
//! `portName` and `gateway` (each such server has its own, as in Istio).

use super::filters_tests::{chain, listener, proxy, snapshot};
use crate::generate::MeshSnapshot;
use crate::resource::ROUTE;
use envoy_types::pb::envoy::config::listener::v3::filter;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost, route};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use prost::Message;

/// The server's routes: a redirect, then two forwarding routes.
const SERVER_ROUTES: &str = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: server-routes, namespace: app}
spec:
  hosts: [server.app.svc.cluster.local]
  http:
  - name: old-path
    match: [{uri: {prefix: /old}}]
    redirect: {uri: /new}
  - name: api
    match: [{uri: {prefix: /api}}]
    route: [{destination: {host: server.app.svc.cluster.local, port: {number: 8080}}}]
  - name: main
    route: [{destination: {host: server.app.svc.cluster.local, port: {number: 8080}}}]
"#;

/// An EnvoyFilter in `app` for every proxy of the namespace, with these patches (YAML list
/// items, indented for `configPatches`).
fn ef(patches: &str) -> String {
    ef_in("app", patches)
}

/// The same in `namespace` (`istio-system`, the root namespace: for every proxy).
fn ef_in(namespace: &str, patches: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: routes, namespace: {namespace}}}\nspec:\n  configPatches:\n{patches}"
    )
}

fn route_config(snap: &MeshSnapshot, proxy_name: &str, name: &str) -> RouteConfiguration {
    let out = snap.generate(&proxy(snap, proxy_name));
    let r = out[ROUTE]
        .get(name)
        .unwrap_or_else(|| panic!("no route configuration {name}"));
    RouteConfiguration::decode(r.value().as_ref()).unwrap()
}

fn vhost<'a>(rc: &'a RouteConfiguration, name: &str) -> &'a VirtualHost {
    rc.virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no virtual host {name} in {}", rc.name))
}

fn route_names(vh: &VirtualHost) -> Vec<&str> {
    vh.routes.iter().map(|r| r.name.as_str()).collect()
}

fn response_headers(vh: &VirtualHost) -> Vec<&str> {
    vh.response_headers_to_add
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| h.key.as_str())
        .collect()
}

const SERVER_VHOST: &str = "server.app.svc.cluster.local:8080";
const OTHER_VHOST: &str = "other.app.svc.cluster.local:8080";

#[test]
fn domain_name_selects_the_virtual_host_answering_it() {
    let snap = snapshot(&format!(
        "{SERVER_ROUTES}{}",
        ef(r#"  - applyTo: VIRTUAL_HOST
    match: {context: SIDECAR_OUTBOUND, routeConfiguration: {vhost: {domainName: other.app.svc.cluster.local}}}
    patch: {operation: MERGE, value: {response_headers_to_add: [{header: {key: x-by-domain, value: "1"}}]}}
  - applyTo: HTTP_ROUTE
    match: {context: SIDECAR_OUTBOUND, routeConfiguration: {vhost: {domainName: server.app.svc.cluster.local}}}
    patch:
      operation: INSERT_FIRST
      value: {name: health, match: {path: /healthz}, direct_response: {status: 200}}
  - applyTo: VIRTUAL_HOST
    match: {context: SIDECAR_OUTBOUND, routeConfiguration: {vhost: {domainName: nobody.example}}}
    patch: {operation: REMOVE}
"#)
    ));
    let rc = route_config(&snap, "server", "8080");
    assert_eq!(
        response_headers(vhost(&rc, OTHER_VHOST)),
        ["x-by-domain"],
        "{rc:?}"
    );
    assert!(response_headers(vhost(&rc, SERVER_VHOST)).is_empty());
    assert_eq!(route_names(vhost(&rc, SERVER_VHOST))[0], "health");
    assert_ne!(route_names(vhost(&rc, OTHER_VHOST))[0], "health");
    // A domain no virtual host answers removes nothing.
    let plain = route_config(&snapshot(SERVER_ROUTES), "server", "8080");
    assert_eq!(rc.virtual_hosts.len(), plain.virtual_hosts.len());
}

#[test]
fn route_action_selects_routes_by_the_kind_of_their_action() {
    let snap = snapshot(&format!(
        "{SERVER_ROUTES}{}",
        ef(&format!(
            r#"  - applyTo: HTTP_ROUTE
    match: {{context: SIDECAR_OUTBOUND, routeConfiguration: {{vhost: {{name: "{SERVER_VHOST}", route: {{action: REDIRECT}}}}}}}}
    patch: {{operation: MERGE, value: {{redirect: {{response_code: TEMPORARY_REDIRECT}}}}}}
  - applyTo: HTTP_ROUTE
    match: {{context: SIDECAR_OUTBOUND, routeConfiguration: {{vhost: {{name: "{SERVER_VHOST}", route: {{action: ROUTE}}}}}}}}
    patch:
      operation: INSERT_AFTER
      value: {{name: after-first-forward, match: {{path: /after}}, direct_response: {{status: 204}}}}
"#
        ))
    ));
    let rc = route_config(&snap, "server", "8080");
    let vh = vhost(&rc, SERVER_VHOST);
    // INSERT_AFTER goes after the FIRST forwarding route only.
    assert_eq!(
        route_names(vh),
        ["old-path", "api", "after-first-forward", "main"]
    );
    // The MERGE reached the redirect route and nothing else.
    let Some(route::Action::Redirect(redirect)) = &vh.routes[0].action else {
        panic!("{:?}", vh.routes[0]);
    };
    use envoy_types::pb::envoy::config::route::v3::redirect_action::RedirectResponseCode;
    assert_eq!(
        redirect.response_code,
        RedirectResponseCode::TemporaryRedirect as i32
    );
    for r in &vh.routes[1..] {
        assert!(
            !matches!(r.action, Some(route::Action::Redirect(_))),
            "{r:?}"
        );
    }
}

#[test]
fn remove_by_action_drops_every_route_of_that_kind() {
    let snap = snapshot(&format!(
        "{SERVER_ROUTES}{}",
        ef(r#"  - applyTo: HTTP_ROUTE
    match: {context: SIDECAR_OUTBOUND, routeConfiguration: {portNumber: 8080, vhost: {route: {action: REDIRECT}}}}
    patch: {operation: REMOVE}
  - applyTo: HTTP_ROUTE
    match: {context: SIDECAR_OUTBOUND, routeConfiguration: {portNumber: 8080, vhost: {route: {name: main, action: DIRECT_RESPONSE}}}}
    patch: {operation: REMOVE}
"#)
    ));
    let rc = route_config(&snap, "server", "8080");
    // The redirect is gone; `main` forwards, so the DIRECT_RESPONSE removal does not take it.
    assert_eq!(route_names(vhost(&rc, SERVER_VHOST)), ["api", "main"]);
}

/// A Gateway `web.v2` (a name with a dot) in `app` with two HTTPS servers on 443 and a
/// plaintext one on 80 that redirects to HTTPS, and a VirtualService bound to it.
const HTTPS_GATEWAY: &str = r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web.v2, namespace: app}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-a, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: SIMPLE, serverCertificate: /etc/certs/a.pem, privateKey: /etc/certs/a-key.pem}
  - port: {number: 443, name: https-b, protocol: HTTPS}
    hosts: [app/b.example.com]
    tls: {mode: SIMPLE, serverCertificate: /etc/certs/b.pem, privateKey: /etc/certs/b-key.pem}
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: app}
spec:
  hosts: [a.example.com, b.example.com]
  gateways: [web.v2]
  http:
  - route: [{destination: {host: server.app.svc.cluster.local, port: {number: 8080}}}]
"#;

const HTTPS_A: &str = "https.443.https-a.web.v2.app";
const HTTPS_B: &str = "https.443.https-b.web.v2.app";

fn vhost_names(rc: &RouteConfiguration) -> Vec<&str> {
    rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect()
}

/// The route configuration the HTTP connection manager of a gateway chain asks RDS for.
fn rds_name(
    l: &envoy_types::pb::envoy::config::listener::v3::Listener,
    chain_name: &str,
) -> String {
    let c = chain(l, chain_name);
    let Some(filter::ConfigType::TypedConfig(any)) = &c.filters[0].config_type else {
        panic!("{c:?}");
    };
    match HttpConnectionManager::decode(any.value.as_slice())
        .unwrap()
        .route_specifier
    {
        Some(RouteSpecifier::Rds(rds)) => rds.route_config_name,
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_tls_server_of_a_gateway_has_its_own_route_configuration() {
    let snap = snapshot(HTTPS_GATEWAY);
    let out = snap.generate(&proxy(&snap, "ingress"));
    let mut names: Vec<&str> = out[ROUTE].iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["http.80", "http.8080", HTTPS_A, HTTPS_B]);

    let a = route_config(&snap, "ingress", HTTPS_A);
    assert_eq!(vhost_names(&a), ["a.example.com:443"]);
    let b = route_config(&snap, "ingress", HTTPS_B);
    assert_eq!(vhost_names(&b), ["b.example.com:443"]);
    // httpsRedirect is the plaintext server's: its table requires TLS, the TLS servers' do not.
    let plain = route_config(&snap, "ingress", "http.80");
    assert_eq!(
        vhost_names(&plain),
        ["a.example.com:80", "b.example.com:80"]
    );
    assert!(plain.virtual_hosts.iter().all(|v| v.require_tls != 0));
    assert!(
        a.virtual_hosts
            .iter()
            .chain(&b.virtual_hosts)
            .all(|v| v.require_tls == 0)
    );

    // One chain per TLS server (by SNI), each asking for its own table.
    let l = listener(&snap, "ingress", "0.0.0.0_443");
    assert_eq!(rds_name(&l, "gateway-443-https-a"), HTTPS_A);
    assert_eq!(rds_name(&l, "gateway-443-https-b"), HTTPS_B);
    assert_eq!(
        chain(&l, "gateway-443-https-b")
            .filter_chain_match
            .as_ref()
            .unwrap()
            .server_names,
        ["b.example.com"]
    );
    assert_eq!(
        rds_name(&listener(&snap, "ingress", "0.0.0.0_80"), "gateway-80-http"),
        "http.80"
    );
}

#[test]
fn port_name_and_gateway_select_one_tls_servers_route_configuration() {
    // Mesh-wide (root namespace): the sidecars' tables are as generated only because no
    // patch matches them.
    let patched = snapshot(&format!(
        "{HTTPS_GATEWAY}{}",
        ef_in(
            "istio-system",
            r#"  - applyTo: VIRTUAL_HOST
    match:
      context: GATEWAY
      routeConfiguration: {portNumber: 443, portName: https-b, gateway: app/web.v2, vhost: {domainName: b.example.com}}
    patch: {operation: MERGE, value: {response_headers_to_add: [{header: {key: x-server, value: b}}]}}
  - applyTo: ROUTE_CONFIGURATION
    match: {context: GATEWAY, routeConfiguration: {portName: https-b, gateway: app/web.v2}}
    patch: {operation: MERGE, value: {max_direct_response_body_size_bytes: 2048}}
  - applyTo: ROUTE_CONFIGURATION
    match: {context: GATEWAY, routeConfiguration: {portNumber: 80, portName: http}}
    patch: {operation: MERGE, value: {max_direct_response_body_size_bytes: 4096}}
  - applyTo: ROUTE_CONFIGURATION
    match: {context: GATEWAY, routeConfiguration: {gateway: other/web.v2}}
    patch: {operation: MERGE, value: {max_direct_response_body_size_bytes: 8192}}
"#
        )
    ));
    let b = route_config(&patched, "ingress", HTTPS_B);
    assert_eq!(
        response_headers(vhost(&b, "b.example.com:443")),
        ["x-server"]
    );
    assert_eq!(b.max_direct_response_body_size_bytes.unwrap().value, 2048);
    // Server a's table, the plaintext ones (no port name or Gateway to match: the portName
    // `http` patch matches none) and the sidecars' are as generated.
    let plain = snapshot(HTTPS_GATEWAY);
    for name in [HTTPS_A, "http.80", "http.8080"] {
        assert_eq!(
            route_config(&patched, "ingress", name),
            route_config(&plain, "ingress", name),
            "{name}"
        );
    }
    assert_eq!(
        route_config(&patched, "server", "8080"),
        route_config(&plain, "server", "8080")
    );
}

#[test]
fn port_name_and_gateway_are_ignored_on_a_sidecars_route_configurations() {
    // Istio matches them only against a gateway's route configuration names: a patch for any
    // context that sets them still patches sidecars by its other fields.
    let snap = snapshot(&format!(
        "{SERVER_ROUTES}{}",
        ef(r#"  - applyTo: VIRTUAL_HOST
    match: {routeConfiguration: {portNumber: 8080, portName: https, gateway: app/web, vhost: {domainName: other.app.svc.cluster.local}}}
    patch: {operation: MERGE, value: {response_headers_to_add: [{header: {key: x-sidecar, value: "1"}}]}}
"#)
    ));
    let rc = route_config(&snap, "server", "8080");
    assert_eq!(
        response_headers(vhost(&rc, OTHER_VHOST)),
        ["x-sidecar"],
        "{rc:?}"
    );
}
