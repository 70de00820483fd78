//! A Sidecar's ingress listeners as the workload's proxy receives them: the inbound clusters'
//! connection limits, an app on a unix socket, TLS the sidecar terminates with its own files,
//! and a port bound by a listener of its own under `captureMode: NONE`.

use crate::generate::MeshSnapshot;
use crate::generate::test_fixture::{self as fixture, resource, workload_proxy};
use crate::resource::{CLUSTER, LISTENER};
use serde_json::Value;

/// [`fixture::SERVER`] with a Sidecar for its workload whose spec is `spec` (indented lines).
fn snapshot(spec: &str) -> MeshSnapshot {
    fixture::snapshot(&format!(
        "{}apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: server, namespace: app}}\nspec:\n  workloadSelector: {{labels: {{app: server}}}}\n{spec}---\n",
        fixture::SERVER
    ))
}

fn cluster(snap: &MeshSnapshot, name: &str) -> Value {
    resource(snap, &workload_proxy(snap, "server", "app"), CLUSTER, name)
}

fn listener(snap: &MeshSnapshot, name: &str) -> Value {
    resource(snap, &workload_proxy(snap, "server", "app"), LISTENER, name)
}

/// The default thresholds of a cluster's circuit breakers.
fn thresholds(c: &Value) -> Value {
    c["circuit_breakers"]["thresholds"][0].clone()
}

fn chains_of_port(l: &Value, port: u64) -> Vec<Value> {
    l["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["filter_chain_match"]["destination_port"] == port)
        .cloned()
        .collect()
}

const UNLIMITED: u64 = u32::MAX as u64;

/// `inboundConnectionPool` limits every inbound cluster; a listener's own `connectionPool`
/// replaces it whole for its port (a field it leaves out is unlimited, not the Sidecar's).
#[test]
fn inbound_clusters_take_the_sidecar_pool_or_the_listener_own() {
    let snap = snapshot(
        "  inboundConnectionPool:
    tcp: {maxConnections: 10, connectTimeout: 3s, tcpKeepalive: {time: 60s}}
    http: {http2MaxRequests: 20}
  ingress:
  - port: {number: 8080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:18080
    connectionPool: {http: {http1MaxPendingRequests: 5, idleTimeout: 30s}}
  - port: {number: 9000, protocol: TCP, name: tcp}
    defaultEndpoint: 127.0.0.1:19000
",
    );
    let own = cluster(&snap, "inbound|8080||");
    let t = thresholds(&own);
    assert_eq!(t["max_pending_requests"], 5, "{own}");
    assert_eq!(t["max_connections"], UNLIMITED, "{own}");
    assert_eq!(t["max_requests"], UNLIMITED, "{own}");
    assert_eq!(own["connect_timeout"], "10s", "{own}");
    let options = own["typed_extension_protocol_options"].to_string();
    assert!(options.contains("idle_timeout"), "{options}");

    let shared = cluster(&snap, "inbound|9000||");
    let t = thresholds(&shared);
    assert_eq!(t["max_connections"], 10, "{shared}");
    assert_eq!(t["max_requests"], 20, "{shared}");
    assert_eq!(t["max_pending_requests"], UNLIMITED, "{shared}");
    assert_eq!(shared["connect_timeout"], "3s", "{shared}");
    assert_eq!(
        shared["upstream_connection_options"]["tcp_keepalive"]["keepalive_time"], 60,
        "{shared}"
    );
}

/// Without ingress listeners the Sidecar's pool limits the clusters of the service ports.
#[test]
fn the_sidecar_pool_limits_service_ports_too() {
    let snap = snapshot("  inboundConnectionPool: {tcp: {maxConnections: 7}}\n");
    for name in ["inbound|8080||", "inbound|9000||"] {
        let c = cluster(&snap, name);
        assert_eq!(thresholds(&c)["max_connections"], 7, "{c}");
    }
}

/// `defaultEndpoint: unix://…`: the inbound cluster reaches the app over that socket (a path,
/// or a name in the abstract namespace).
#[test]
fn a_unix_default_endpoint_is_the_inbound_cluster_pipe() {
    let snap = snapshot(
        "  ingress:
  - port: {number: 8080, protocol: HTTP, name: http}
    defaultEndpoint: unix:///var/run/app.sock
  - port: {number: 9000, protocol: TCP, name: tcp}
    defaultEndpoint: unix://@app
",
    );
    let address = |name: &str| {
        let c = cluster(&snap, name);
        assert_eq!(c["type"], "STATIC", "{c}");
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"].clone()
    };
    assert_eq!(
        address("inbound|8080||")["pipe"]["path"],
        "/var/run/app.sock"
    );
    assert_eq!(address("inbound|9000||")["pipe"]["path"], "@app");
}

/// `tls` on an ingress listener: the port's one chain terminates TLS with the listener's files
/// in place of mesh mTLS; MUTUAL requires a client certificate and checks it against the CA.
#[test]
fn ingress_tls_terminates_with_the_listener_files() {
    let snap = snapshot(
        "  ingress:
  - port: {number: 8080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:18080
    tls: {mode: SIMPLE, serverCertificate: /etc/certs/cert.pem, privateKey: /etc/certs/key.pem}
  - port: {number: 9000, protocol: TCP, name: tcp}
    defaultEndpoint: 127.0.0.1:19000
    tls:
      mode: MUTUAL
      serverCertificate: /etc/certs/cert.pem
      privateKey: /etc/certs/key.pem
      caCertificates: /etc/certs/ca.pem
      subjectAltNames: [client.example.com]
      minProtocolVersion: TLSV1_2
",
    );
    let l = listener(&snap, "virtualInbound");
    let only_chain = |port: u64| {
        let chains = chains_of_port(&l, port);
        assert_eq!(chains.len(), 1, "{chains:?}");
        assert_eq!(chains[0]["name"], format!("inbound|{port}||-tls"));
        assert_eq!(chains[0]["filter_chain_match"]["transport_protocol"], "tls");
        chains[0]["transport_socket"]["typed_config"].clone()
    };
    let simple = only_chain(8080);
    let common = &simple["common_tls_context"];
    let cert = &common["tls_certificates"][0];
    assert_eq!(cert["certificate_chain"]["filename"], "/etc/certs/cert.pem");
    // The key's path is not checked: the JSON view redacts every private key.
    assert!(simple["require_client_certificate"].is_null(), "{simple}");
    assert!(common["validation_context"].is_null(), "{simple}");
    assert!(
        !simple.to_string().contains("sds"),
        "no mesh identity: {simple}"
    );

    let mutual = only_chain(9000);
    assert_eq!(mutual["require_client_certificate"], true, "{mutual}");
    let validation = &mutual["common_tls_context"]["validation_context"];
    assert_eq!(validation["trusted_ca"]["filename"], "/etc/certs/ca.pem");
    assert!(
        validation.to_string().contains("client.example.com"),
        "{validation}"
    );
    assert_eq!(
        mutual["common_tls_context"]["tls_params"]["tls_minimum_protocol_version"],
        "TLSv1_2"
    );
}

/// `captureMode: NONE`: the port gets a listener bound to `bind` (the workload's address by
/// default) with the port's chains, and leaves the capture listener.
#[test]
fn capture_mode_none_binds_a_listener_of_its_own() {
    let snap = snapshot(
        "  ingress:
  - port: {number: 8080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:18080
    captureMode: NONE
    bind: 127.0.0.1
  - port: {number: 9000, protocol: TCP, name: tcp}
    defaultEndpoint: 127.0.0.1:19000
    captureMode: NONE
  - port: {number: 8081, protocol: HTTP, name: http-admin}
    defaultEndpoint: 127.0.0.1:18081
    bind: 10.44.0.20
",
    );
    let bound = listener(&snap, "inbound_127.0.0.1_8080");
    let address = &bound["address"]["socket_address"];
    assert_eq!(address["address"], "127.0.0.1", "{bound}");
    assert_eq!(address["port_value"], 8080, "{bound}");
    assert!(bound["bind_to_port"].is_null() || bound["bind_to_port"] == true);
    let names: Vec<_> = chains_of_port(&bound, 8080)
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["inbound|8080||-mtls", "inbound|8080||-plaintext"]);

    // Not 0.0.0.0: Envoy refuses a bound listener on the address of the outbound one.
    let own = listener(&snap, "inbound_10.44.0.20_9000");
    assert_eq!(own["address"]["socket_address"]["address"], "10.44.0.20");
    assert_eq!(own["address"]["socket_address"]["port_value"], 9000);
    let outbound = listener(&snap, "0.0.0.0_9000");
    assert_eq!(outbound["traffic_direction"], "OUTBOUND", "{outbound}");

    // Captured ports stay on 15006, a `bind` with them restricting nothing.
    let captured = listener(&snap, "virtualInbound");
    assert!(chains_of_port(&captured, 8080).is_empty(), "{captured}");
    assert!(chains_of_port(&captured, 9000).is_empty(), "{captured}");
    assert_eq!(chains_of_port(&captured, 8081).len(), 2, "{captured}");
    let out = snap.generate(&workload_proxy(&snap, "server", "app"));
    assert!(out[LISTENER].get("inbound_10.44.0.20_8081").is_none());
}

/// A wildcard `bind` under `captureMode: NONE` on a port the proxy also sees outbound: the
/// inbound listener takes the address and the outbound one of that port goes, as in Istio
/// (Envoy would refuse the pair, and every later update with it).
#[test]
fn a_wildcard_bound_port_takes_the_outbound_listener_address() {
    let snap = snapshot(
        "  ingress:
  - port: {number: 9000, protocol: TCP, name: tcp}
    defaultEndpoint: 127.0.0.1:19000
    captureMode: NONE
    bind: 0.0.0.0
",
    );
    let out = snap.generate(&workload_proxy(&snap, "server", "app"));
    assert!(out[LISTENER].get("inbound_0.0.0.0_9000").is_some());
    assert!(out[LISTENER].get("0.0.0.0_9000").is_none());
    assert!(
        out[LISTENER].get("0.0.0.0_8080").is_some(),
        "other ports keep theirs"
    );
    // Another workload of the namespace keeps the outbound listener.
    let other = snap.generate(&fixture::sidecar("client", "app"));
    assert!(other[LISTENER].get("0.0.0.0_9000").is_some());
}
