//! Sidecar egress listeners with an address of their own (`bind`, `captureMode: NONE`) and the
//! outbound traffic policy's egress proxy, as the sidecar receives them.

use crate::generate::test_fixture::{self as fixture, sidecar};
use crate::json::any_to_json;
use crate::resource::{CLUSTER, LISTENER, ROUTE};
use serde_json::Value;

const HTTP_80: &str = "[{number: 80, name: http, protocol: HTTP}]";

/// `web.b` (HTTP 80), `db.b` (TCP 5432) and `other.c` (HTTP 80), and a Sidecar in `a` with
/// these egress listeners (YAML list items, indented by two spaces).
fn mesh_with_egress(egress: &str) -> String {
    fixture::service("web", "b", 30, HTTP_80)
        + &fixture::service("db", "b", 31, fixture::TCP_5432)
        + &fixture::service("other", "c", 32, HTTP_80)
        + &format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: a}}\nspec:\n  egress:\n{egress}---\n"
        )
}

fn generated(yaml: &str) -> crate::generate::ProxyResources {
    fixture::snapshot(yaml).generate(&sidecar("client", "a"))
}

fn listener(out: &crate::generate::ProxyResources, name: &str) -> Value {
    any_to_json(
        &out[LISTENER]
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name}"))
            .any(),
    )
}

fn vhost_domains(out: &crate::generate::ProxyResources, route: &str) -> Vec<String> {
    let rc = any_to_json(&out[ROUTE].get(route).expect("route").any());
    rc["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"] != "allow_any" && v["name"] != "block_all")
        .map(|v| v["domains"][0].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn capture_mode_none_binds_loopback_and_routes_only_its_hosts() {
    let out = generated(&mesh_with_egress(
        "  - port: {number: 80, protocol: HTTP, name: http}\n    captureMode: NONE\n    hosts: [\"b/*\"]\n  - hosts: [\"c/*\"]\n",
    ));
    let l = listener(&out, "127.0.0.1_80");
    assert_eq!(l["address"]["socket_address"]["address"], "127.0.0.1");
    assert_eq!(l["address"]["socket_address"]["port_value"], 80);
    // Bound (the default, so absent or true), unlike the captured listeners.
    assert_ne!(l["bind_to_port"], false, "{l}");
    assert_eq!(listener(&out, "0.0.0.0_80")["bind_to_port"], false);
    // Its own route table holds its hosts; the captured port 80 the port-less listener's.
    assert_eq!(
        vhost_domains(&out, "127.0.0.1_80"),
        ["web.b.svc.cluster.local"]
    );
    assert_eq!(vhost_domains(&out, "80"), ["other.c.svc.cluster.local"]);
    let hcm = &l["default_filter_chain"]["filters"][0]["typed_config"];
    assert_eq!(hcm["rds"]["route_config_name"], "127.0.0.1_80");
    assert!(
        out[CLUSTER]
            .get("outbound|80||web.b.svc.cluster.local")
            .is_some()
    );
}

#[test]
fn a_bound_tcp_listener_forwards_to_its_one_service() {
    let out = generated(&mesh_with_egress(
        "  - port: {number: 5432, protocol: TCP, name: tcp}\n    bind: 127.0.0.2\n    captureMode: NONE\n    hosts: [\"b/db.b.svc.cluster.local\"]\n",
    ));
    let l = listener(&out, "127.0.0.2_5432");
    // The app names no VIP: the service's chain takes every connection.
    assert!(
        l["filter_chains"].as_array().is_none_or(|c| c.is_empty()),
        "{l}"
    );
    let proxy = &l["default_filter_chain"]["filters"][0]["typed_config"];
    assert_eq!(
        proxy["cluster"], "outbound|5432||db.b.svc.cluster.local",
        "{l}"
    );
    // Nothing else: the only listener is bound, so captured traffic reaches no service.
    assert!(out[LISTENER].get("0.0.0.0_5432").is_none());
    assert!(out[LISTENER].get("0.0.0.0_80").is_none());
}

#[test]
fn bind_under_iptables_capture_is_an_unbound_listener_for_that_address() {
    let out = generated(&mesh_with_egress(
        "  - port: {number: 80, protocol: HTTP, name: http}\n    bind: 10.1.2.3\n    hosts: [\"b/*\"]\n  - hosts: [\"c/*\"]\n",
    ));
    let l = listener(&out, "10.1.2.3_80");
    assert_eq!(
        l["bind_to_port"], false,
        "reached from 15001 by original destination"
    );
    assert_eq!(
        vhost_domains(&out, "10.1.2.3_80"),
        ["web.b.svc.cluster.local"]
    );
}

#[test]
fn egress_proxy_takes_unknown_destinations() {
    let yaml = mesh_with_egress("  - hosts: [\"c/*\"]\n")
        + "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: via-proxy, namespace: d}\nspec:\n  egress:\n  - hosts: [\"c/*\"]\n  outboundTrafficPolicy:\n    mode: ALLOW_ANY\n    egressProxy: {host: web.b.svc.cluster.local, port: {number: 80}}\n---\n";
    let snap = fixture::snapshot(&yaml);
    let out = snap.generate(&sidecar("client", "d"));
    let to = "outbound|80||web.b.svc.cluster.local";
    let vo = any_to_json(&out[LISTENER].get("virtualOutbound").unwrap().any());
    assert_eq!(
        vo["filter_chains"][0]["filters"][0]["typed_config"]["cluster"],
        to
    );
    let rc = any_to_json(&out[ROUTE].get("80").unwrap().any());
    let catch_all = rc["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "allow_any")
        .unwrap();
    assert_eq!(catch_all["routes"][0]["route"]["cluster"], to);
    // The proxy's cluster comes with the scope though its host is not among the egress hosts.
    assert!(out[CLUSTER].get(to).is_some());
    // Without the egress proxy: passthrough.
    let plain = snap.generate(&sidecar("client", "a"));
    let vo = any_to_json(&plain[LISTENER].get("virtualOutbound").unwrap().any());
    assert_eq!(
        vo["filter_chains"][0]["filters"][0]["typed_config"]["cluster"],
        "PassthroughCluster"
    );
}

/// A short egress proxy host is relative to the Sidecar's namespace, as every Istio `host`.
#[test]
fn a_short_egress_proxy_host_is_the_service_of_the_sidecars_namespace() {
    let yaml = fixture::service("web", "b", 30, HTTP_80)
        + "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: b}\nspec:\n  outboundTrafficPolicy:\n    mode: ALLOW_ANY\n    egressProxy: {host: web, port: {number: 80}}\n---\n";
    let out = fixture::snapshot(&yaml).generate(&sidecar("client", "b"));
    let to = "outbound|80||web.b.svc.cluster.local";
    let vo = any_to_json(&out[LISTENER].get("virtualOutbound").unwrap().any());
    assert_eq!(
        vo["filter_chains"][0]["filters"][0]["typed_config"]["cluster"],
        to
    );
    assert!(out[CLUSTER].get(to).is_some());
}

#[test]
fn a_unix_socket_listener_serves_its_hosts_on_their_ports() {
    let out = generated(&mesh_with_egress(
        "  - port: {number: 0, protocol: HTTP, name: http}\n    bind: unix:///var/run/mesh/web.sock\n    hosts: [\"b/web.b.svc.cluster.local\"]\n  - port: {number: 0, protocol: TCP, name: tcp}\n    bind: unix://@db\n    hosts: [\"b/db.b.svc.cluster.local\"]\n  - hosts: [\"c/*\"]\n",
    ));
    let web = listener(&out, "unix:///var/run/mesh/web.sock");
    let pipe = &web["address"]["pipe"];
    assert_eq!(pipe["path"], "/var/run/mesh/web.sock", "{web}");
    assert_eq!(pipe["mode"], 0o666, "the app's uid connects: {web}");
    assert_ne!(web["bind_to_port"], false, "{web}");
    let hcm = &web["default_filter_chain"]["filters"][0]["typed_config"];
    assert_eq!(
        hcm["rds"]["route_config_name"],
        "unix:///var/run/mesh/web.sock"
    );
    assert_eq!(
        vhost_domains(&out, "unix:///var/run/mesh/web.sock"),
        ["web.b.svc.cluster.local"]
    );
    let db = listener(&out, "unix://@db");
    assert_eq!(db["address"]["pipe"]["path"], "@db");
    assert!(db["address"]["pipe"]["mode"].is_null(), "{db}");
    assert_eq!(
        db["default_filter_chain"]["filters"][0]["typed_config"]["cluster"],
        "outbound|5432||db.b.svc.cluster.local",
        "{db}"
    );
}

/// TLS services behind a bound listener: the app names no VIP, so their chains match by SNI
/// alone; a plain TCP service on the port takes the rest.
#[test]
fn a_bound_listener_tells_tls_services_apart_by_sni() {
    let tls = |name: &str, n: u8| {
        fixture::service(name, "b", n, "[{number: 443, name: tls, protocol: TLS}]")
    };
    let yaml = tls("one", 40)
        + &tls("two", 41)
        + &fixture::service(
            "plain",
            "b",
            42,
            "[{number: 443, name: tcp, protocol: TCP}]",
        )
        + "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: a}\nspec:\n  egress:\n  - port: {number: 443, protocol: TLS, name: tls}\n    captureMode: NONE\n    hosts: [\"b/*\"]\n---\n";
    let out = generated(&yaml);
    let l = listener(&out, "127.0.0.1_443");
    let chains = l["filter_chains"].as_array().unwrap();
    let snis: Vec<&Value> = chains
        .iter()
        .map(|c| &c["filter_chain_match"]["server_names"][0])
        .collect();
    assert_eq!(
        snis,
        ["one.b.svc.cluster.local", "two.b.svc.cluster.local"],
        "{l:#}"
    );
    assert!(
        chains
            .iter()
            .all(|c| c["filter_chain_match"]["prefix_ranges"].is_null()),
        "{l:#}"
    );
    assert_eq!(
        l["listener_filters"][0]["name"],
        "envoy.filters.listener.tls_inspector"
    );
    assert_eq!(
        l["default_filter_chain"]["filters"][0]["typed_config"]["cluster"],
        "outbound|443||plain.b.svc.cluster.local",
        "{l:#}"
    );
}
