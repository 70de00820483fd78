//! `match.routeConfiguration` as proxies receive it: a virtual host by `domainName`, routes by
//! `action`.

use super::filters_tests::{proxy, snapshot};
use crate::generate::MeshSnapshot;
use crate::resource::ROUTE;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost, route};
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
    format!(
        "---\napiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: routes, namespace: app}}\nspec:\n  configPatches:\n{patches}"
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
