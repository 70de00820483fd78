//! Outbound L4 chains with `destinationSubnets`: which destination prefixes each tcp / tls route
//! gets on a sidecar and on a gateway, first-match order kept under Envoy's longest-prefix pick.

use crate::generate::test_fixture::{self as fixture, INGRESS, service_with};
use crate::json::any_to_json;
use crate::resource::LISTENER;
use serde_json::Value;

const TCP_3306: &str = "[{number: 3306, name: tcp, protocol: TCP}]";
const TLS_443: &str = "[{number: 443, name: tls, protocol: TLS}]";

/// A database service over a whole subnet (a ServiceEntry for a range of addresses), two
/// versions of it as services of their own, and `vs` (a VirtualService's spec lines).
fn mesh(ports: &str, vs: &str) -> String {
    let db = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db, namespace: app}\nspec:\n  hosts: [db.app.svc.cluster.local]\n  addresses: [10.80.0.0/16]\n  ports: PORTS\n  location: MESH_INTERNAL\n  resolution: STATIC\n  endpoints: [{address: 10.44.0.9}]\n---\n".replace("PORTS", ports);
    format!(
        "{INGRESS}{db}{}{}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: db, namespace: app}}\nspec:\n  hosts: [db.app.svc.cluster.local]\n{vs}",
        service_with("db-a", "app", 31, ports, "[{address: 10.44.0.31}]", ""),
        service_with("db-b", "app", 32, ports, "[{address: 10.44.0.32}]", ""),
    )
}

/// (chain name, destination prefixes, server names, cluster) of every chain of `listener`.
fn chains(l: &Value) -> Vec<(String, Vec<String>, Vec<String>, String)> {
    l["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let m = &c["filter_chain_match"];
            let list = |v: &Value, f: &dyn Fn(&Value) -> String| {
                v.as_array()
                    .map(|a| a.iter().map(f).collect())
                    .unwrap_or_default()
            };
            let prefixes = list(&m["prefix_ranges"], &|p| {
                format!(
                    "{}/{}",
                    p["address_prefix"].as_str().unwrap(),
                    p["prefix_len"].as_u64().unwrap()
                )
            });
            let names = list(&m["server_names"], &|n| n.as_str().unwrap().to_string());
            let proxy = c["filters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["name"] == "envoy.filters.network.tcp_proxy")
                .unwrap();
            let cluster = proxy["typed_config"]["cluster"]
                .as_str()
                .unwrap_or("")
                .to_string();
            (
                c["name"].as_str().unwrap().to_string(),
                prefixes,
                names,
                cluster,
            )
        })
        .collect()
}

fn sidecar_listener(yaml: &str, name: &str) -> Value {
    let snap = fixture::snapshot(yaml);
    let out = snap.generate(&fixture::sidecar("client", "app"));
    any_to_json(&out[LISTENER].get(name).unwrap().any())
}

fn own(s: &str) -> String {
    s.to_string()
}

#[test]
fn tcp_subnet_routes_take_their_part_of_the_service_in_order() {
    let vs = "  tcp:
  - match: [{destinationSubnets: [10.80.1.0/24]}]
    route: [{destination: {host: db-a.app.svc.cluster.local}}]
  - match: [{destinationSubnets: [10.80.0.0/8, 10.80.1.7]}]
    route: [{destination: {host: db-b.app.svc.cluster.local}}]
  - match: [{destinationSubnets: [192.168.0.0/16]}]
    route: [{destination: {host: db-b.app.svc.cluster.local}}]
  - route: [{destination: {host: db.app.svc.cluster.local}}]
";
    let l = sidecar_listener(&mesh(TCP_3306, vs), "0.0.0.0_3306");
    let db: Vec<_> = chains(&l)
        .into_iter()
        .filter(|c| c.0.starts_with("db.app") || c.0.contains("||db.app"))
        .collect();
    assert_eq!(
        db,
        vec![
            // The first route's /24; the second's /8 narrowed to the service's /16, and its
            // address inside the first route's subnet left to the first route; the third's
            // subnet is not the service's at all.
            (
                own("db.app.svc.cluster.local|tcp|0"),
                vec![own("10.80.1.0/24")],
                vec![],
                own("outbound|3306||db-a.app.svc.cluster.local")
            ),
            (
                own("db.app.svc.cluster.local|tcp|1"),
                vec![own("10.80.0.0/16")],
                vec![],
                own("outbound|3306||db-b.app.svc.cluster.local")
            ),
        ],
        "the /16 went whole to the second route, so no chain is left for the service's own"
    );
}

#[test]
fn tcp_subnet_routes_after_a_catch_all_route_are_never_reached() {
    let vs = "  tcp:
  - route: [{destination: {host: db-a.app.svc.cluster.local}}]
  - match: [{destinationSubnets: [10.80.1.0/24]}]
    route: [{destination: {host: db-b.app.svc.cluster.local}}]
";
    let l = sidecar_listener(&mesh(TCP_3306, vs), "0.0.0.0_3306");
    let db: Vec<_> = chains(&l)
        .into_iter()
        .filter(|c| c.0.contains("db.app"))
        .collect();
    assert_eq!(
        db,
        vec![(
            own("outbound|3306||db.app.svc.cluster.local"),
            vec![own("10.80.0.0/16")],
            vec![],
            own("outbound|3306||db-a.app.svc.cluster.local")
        )]
    );
}

#[test]
fn tls_subnet_match_gets_a_chain_for_its_name_on_those_addresses() {
    let vs = "  tls:
  - match: [{sniHosts: [db.app.svc.cluster.local], destinationSubnets: [10.80.2.0/24]}]
    route: [{destination: {host: db-a.app.svc.cluster.local}}]
  - match: [{sniHosts: [db.app.svc.cluster.local]}]
    route: [{destination: {host: db-b.app.svc.cluster.local}}]
";
    let l = sidecar_listener(&mesh(TLS_443, vs), "0.0.0.0_443");
    let db: Vec<_> = chains(&l)
        .into_iter()
        .filter(|c| c.2.contains(&own("db.app.svc.cluster.local")))
        .collect();
    assert_eq!(
        db,
        vec![
            (
                own("db.app.svc.cluster.local|tls|0|0"),
                vec![own("10.80.2.0/24")],
                vec![own("db.app.svc.cluster.local")],
                own("outbound|443||db-a.app.svc.cluster.local")
            ),
            (
                own("db.app.svc.cluster.local|tls|1"),
                vec![],
                vec![own("db.app.svc.cluster.local")],
                own("outbound|443||db-b.app.svc.cluster.local")
            ),
        ]
    );
}

/// Envoy picks the destination address before the SNI and never goes back: under the subnet
/// of a TLS route every other service's name needs a chain too, or a connection to that
/// address naming another service would fall to the default chain.
#[test]
fn other_sni_names_are_served_under_a_tls_routes_subnet() {
    let vs = "  tls:
  - match: [{sniHosts: [db.app.svc.cluster.local], destinationSubnets: [10.80.2.0/24]}]
    route: [{destination: {host: db-a.app.svc.cluster.local}}]
";
    let l = sidecar_listener(&mesh(TLS_443, vs), "0.0.0.0_443");
    let all = chains(&l);
    let under_subnet = |name: &str| {
        all.iter()
            .filter(|c| c.1 == [own("10.80.2.0/24")] && c.2.contains(&own(name)))
            .map(|c| c.3.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        under_subnet("db.app.svc.cluster.local"),
        [own("outbound|443||db-a.app.svc.cluster.local")],
        "the route's own chain, once"
    );
    assert_eq!(
        under_subnet("db-b.app.svc.cluster.local"),
        [own("outbound|443||db-b.app.svc.cluster.local")],
        "{all:#?}"
    );
}

#[test]
fn gateway_tcp_subnet_route_matches_the_connections_destination() {
    let gw = "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 3306, name: tcp, protocol: TCP}, hosts: ['*']}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge-db, namespace: app}
spec:
  hosts: ['*']
  gateways: [istio-system/edge]
  tcp:
  - match: [{destinationSubnets: [10.44.0.2/32]}]
    route: [{destination: {host: db-a.app.svc.cluster.local}}]
  - route: [{destination: {host: db-b.app.svc.cluster.local}}]
";
    let yaml = mesh(
        TCP_3306,
        "  tcp: [{route: [{destination: {host: db.app.svc.cluster.local}}]}]\n",
    ) + gw;
    let snap = fixture::snapshot(&yaml);
    let proxy = fixture::workload_proxy(&snap, "ingress", "istio-system");
    let l = fixture::resource(&snap, &proxy, LISTENER, "0.0.0.0_3306");
    let got: Vec<_> = chains(&l).into_iter().map(|c| (c.1, c.3)).collect();
    assert_eq!(
        got,
        vec![
            (
                vec![own("10.44.0.2/32")],
                own("outbound|3306||db-a.app.svc.cluster.local")
            ),
            (vec![], own("outbound|3306||db-b.app.svc.cluster.local")),
        ]
    );
}
