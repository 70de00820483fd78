//! The outbound CORS and fault filters: in every outbound connection manager but disabled, and
//! turned on, with their policy, by exactly the routes that carry one.

use crate::generate::test_fixture::{self as fixture, SERVER};
use crate::resource::{LISTENER, ROUTE};
use serde_json::Value;

const ROUTES: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: server, namespace: app}
spec:
  hosts: [server.app.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /faulty}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: server.app.svc.cluster.local}}]
  - match: [{uri: {prefix: /shared}}]
    corsPolicy: {allowOrigins: [{exact: "https://a.example"}], allowMethods: [GET]}
    route: [{destination: {host: server.app.svc.cluster.local}}]
  - route: [{destination: {host: server.app.svc.cluster.local}}]
"#;

fn server_routes() -> Vec<Value> {
    let snap = fixture::snapshot(&format!("{SERVER}{ROUTES}"));
    let rc = fixture::resource(&snap, &fixture::sidecar("client", "app"), ROUTE, "8080");
    let vhost = rc["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "server.app.svc.cluster.local:8080")
        .unwrap_or_else(|| panic!("no vhost for server:8080 in {rc}"))
        .clone();
    vhost["routes"].as_array().unwrap().clone()
}

#[test]
fn outbound_cors_and_fault_filters_are_listed_but_disabled() {
    let snap = fixture::snapshot(&format!("{SERVER}{ROUTES}"));
    let l = fixture::resource(
        &snap,
        &fixture::sidecar("client", "app"),
        LISTENER,
        "0.0.0.0_8080",
    );
    let hcm = l.to_string();
    let filters: Vec<(String, bool)> =
        l["default_filter_chain"]["filters"][0]["typed_config"]["http_filters"]
            .as_array()
            .unwrap_or_else(|| panic!("no HTTP filters in {hcm}"))
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap().to_string(),
                    f["disabled"].as_bool().unwrap_or(false),
                )
            })
            .collect();
    assert_eq!(
        filters,
        [
            ("envoy.filters.http.cors".to_string(), true),
            ("envoy.filters.http.fault".to_string(), true),
            ("envoy.filters.http.router".to_string(), false),
        ]
    );
}

#[test]
fn a_route_with_a_fault_or_cors_policy_turns_that_filter_on_with_it() {
    let routes = server_routes();
    assert_eq!(routes.len(), 3, "{routes:?}");
    let per_filter = |r: &Value, name: &str| r["typed_per_filter_config"][name].clone();

    let fault = per_filter(&routes[0], "envoy.filters.http.fault");
    assert_eq!(
        fault["@type"],
        "type.googleapis.com/envoy.config.route.v3.FilterConfig"
    );
    assert!(!fault["disabled"].as_bool().unwrap_or(false), "{fault}");
    assert_eq!(fault["config"]["abort"]["http_status"], 418, "{fault}");
    assert!(per_filter(&routes[0], "envoy.filters.http.cors").is_null());

    let cors = per_filter(&routes[1], "envoy.filters.http.cors");
    assert_eq!(
        cors["@type"],
        "type.googleapis.com/envoy.config.route.v3.FilterConfig"
    );
    assert_eq!(
        cors["config"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
    );
    assert!(per_filter(&routes[1], "envoy.filters.http.fault").is_null());

    // The plain route keeps both filters off.
    assert!(
        routes[2]["typed_per_filter_config"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "{}",
        routes[2]
    );
}
