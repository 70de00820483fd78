//! Gateway listeners by the address their servers bind to; AUTO_PASSTHROUGH servers routing
//! mesh mTLS by SNI to SNI-DNAT clusters.

use crate::generate::test_fixture::{INGRESS, SERVER, resource, router, snapshot};
use crate::resource::LISTENER;

/// A server with `bind` listens on that address only, in a listener of its own named
/// `<bind>_<port>` as istiod names it; servers without one share `0.0.0.0_<port>`.
#[test]
fn servers_listen_where_they_bind() {
    let yaml = format!(
        r#"{SERVER}---
{INGRESS}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: app}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: 8080, name: http-local, protocol: HTTP}}
    hosts: ["*"]
    bind: 127.0.0.1
  - port: {{number: 9000, name: tcp-local, protocol: TCP}}
    hosts: ["*"]
    bind: 127.0.0.1
  - port: {{number: 8080, name: http-socket, protocol: HTTP}}
    hosts: ["*"]
    bind: unix:///var/run/gw/http.sock
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: app}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route:
    - destination: {{host: server.app.svc.cluster.local, port: {{number: 8080}}}}
  tcp:
  - route:
    - destination: {{host: server.app.svc.cluster.local, port: {{number: 9000}}}}
"#
    );
    let snap = snapshot(&yaml);
    let gw = router("ingress", "istio-system");
    for (name, ip, port) in [
        ("0.0.0.0_8080", "0.0.0.0", 8080),
        ("127.0.0.1_8080", "127.0.0.1", 8080),
        ("127.0.0.1_9000", "127.0.0.1", 9000),
    ] {
        let l = resource(&snap, &gw, LISTENER, name);
        let addr = &l["address"]["socket_address"];
        assert_eq!(addr["address"], ip, "{name}");
        assert_eq!(addr["port_value"], port, "{name}");
        assert!(
            !l["filter_chains"].as_array().unwrap().is_empty(),
            "{name} serves its routes: {l:#}"
        );
    }
    // A server bound to a unix socket: a pipe listener named by the socket.
    let l = resource(&snap, &gw, LISTENER, "unix:///var/run/gw/http.sock");
    assert_eq!(
        l["address"]["pipe"]["path"], "/var/run/gw/http.sock",
        "{l:#}"
    );
    assert!(!l["filter_chains"].as_array().unwrap().is_empty(), "{l:#}");
    let out = snap.generate(&gw);
    assert!(
        out[LISTENER].get("0.0.0.0_9000").is_none(),
        "a bound server is not reachable on every address"
    );
}

/// AUTO_PASSTHROUGH: a chain per destination the server's hosts admit, matched by the SNI a
/// sidecar's ISTIO_MUTUAL cluster sends, to a cluster of that name carrying the connection
/// as it is (no TLS of its own) to the outbound cluster's endpoints.
#[test]
fn auto_passthrough_routes_mesh_tls_by_sni_to_sni_dnat_clusters() {
    use crate::resource::CLUSTER;
    let yaml = format!(
        r#"{SERVER}---
{INGRESS}apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner, namespace: app}}
spec:
  hosts: [api.partner.example]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  location: MESH_EXTERNAL
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: server, namespace: app}}
spec:
  host: server.app.svc.cluster.local
  subsets: [{{name: v1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: cross-network, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 15443, name: tls, protocol: TLS}}
    hosts: ["*.svc.cluster.local"]
    tls: {{mode: AUTO_PASSTHROUGH}}
"#
    );
    let snap = snapshot(&yaml);
    let gw = router("ingress", "istio-system");
    let l = resource(&snap, &gw, LISTENER, "0.0.0.0_15443");
    let chains: Vec<(String, String)> = l["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let names = &c["filter_chain_match"]["server_names"];
            assert_eq!(names.as_array().unwrap().len(), 1, "{c:#}");
            let proxy = c["filters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["name"] == "envoy.filters.network.tcp_proxy")
                .unwrap();
            (
                names[0].as_str().unwrap().to_string(),
                proxy["typed_config"]["cluster"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    let want = [
        "outbound_.8080_._.server.app.svc.cluster.local",
        "outbound_.8080_.v1_.server.app.svc.cluster.local",
        "outbound_.8081_._.server.app.svc.cluster.local",
        "outbound_.8081_.v1_.server.app.svc.cluster.local",
        "outbound_.9000_._.server.app.svc.cluster.local",
        "outbound_.9000_.v1_.server.app.svc.cluster.local",
    ];
    assert_eq!(
        chains,
        want.iter()
            .map(|n| (n.to_string(), n.to_string()))
            .collect::<Vec<_>>(),
        "one chain per in-mesh destination, none for api.partner.example"
    );
    assert!(
        l["listener_filters"].to_string().contains("tls_inspector"),
        "{l:#}"
    );
    let dnat = resource(&snap, &gw, CLUSTER, want[1]);
    assert_eq!(
        dnat["transport_socket"],
        serde_json::Value::Null,
        "{dnat:#}"
    );
    assert_eq!(
        dnat["transport_socket_matches"],
        serde_json::Value::Null,
        "{dnat:#}"
    );
    assert_eq!(
        dnat["eds_cluster_config"]["service_name"], "outbound|8080|v1|server.app.svc.cluster.local",
        "the same endpoints as the outbound cluster: {dnat:#}"
    );
    let outbound = resource(
        &snap,
        &gw,
        CLUSTER,
        "outbound|8080|v1|server.app.svc.cluster.local",
    );
    assert_ne!(
        outbound["transport_socket_matches"],
        serde_json::Value::Null,
        "{outbound:#}"
    );
}

/// A TLS server in a terminating mode decrypts (by SNI, with its own certificate, no ALPN) and
/// routes the stream per the `tcp` routes; ISTIO_MUTUAL with the gateway's mesh identity.
#[test]
fn tls_servers_that_terminate_route_the_stream_by_tcp_routes() {
    let gateway = |tls: &str| {
        format!(
            r#"{SERVER}---
{INGRESS}apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: app}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 9443, name: tls, protocol: TLS}}
    hosts: [db.example.com]
    tls: {tls}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: app}}
spec:
  hosts: [db.example.com]
  gateways: [gw]
  tcp:
  - match: [{{port: 9443}}]
    route:
    - destination: {{host: server.app.svc.cluster.local, port: {{number: 9000}}}}
"#
        )
    };
    let gw = router("ingress", "istio-system");
    let chain_of = |tls: &str| {
        let l = resource(&snapshot(&gateway(tls)), &gw, LISTENER, "0.0.0.0_9443");
        let chains = l["filter_chains"].as_array().unwrap().clone();
        assert_eq!(chains.len(), 1, "{l:#}");
        chains[0].clone()
    };
    let c = chain_of("{mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}");
    assert_eq!(
        c["filter_chain_match"]["server_names"],
        serde_json::json!(["db.example.com"])
    );
    let ctx = &c["transport_socket"]["typed_config"];
    let common = &ctx["common_tls_context"];
    assert_eq!(
        common["tls_certificates"][0]["certificate_chain"]["filename"],
        "/c.pem"
    );
    assert!(common["alpn_protocols"].is_null(), "{common:#}");
    let proxy = c["filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "envoy.filters.network.tcp_proxy")
        .unwrap();
    assert_eq!(
        proxy["typed_config"]["cluster"],
        "outbound|9000||server.app.svc.cluster.local"
    );
    let mtls = chain_of("{mode: ISTIO_MUTUAL}");
    let ctx = &mtls["transport_socket"]["typed_config"];
    assert_eq!(ctx["require_client_certificate"], true, "{ctx:#}");
    // PASSTHROUGH keeps routing by the tls routes: the tcp route has no say.
    let l = resource(
        &snapshot(&gateway("{mode: PASSTHROUGH}")),
        &gw,
        LISTENER,
        "0.0.0.0_9443",
    );
    assert!(
        l["filter_chains"].as_array().is_none_or(|c| c.is_empty()),
        "{l:#}"
    );
}
