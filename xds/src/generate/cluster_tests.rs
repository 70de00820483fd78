//! Unit tests of the cluster builder (cluster.rs): DestinationRule fields, load balancing,
//! unsupported fields reported, long durations.

use super::policy::saturating_secs;
use super::*;
use crate::generate::{GenOptions, MeshSnapshot};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use meshd_model::{MeshConfig, parse_file};
use prost::Message;
use std::sync::Arc;

const SE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: x, namespace: ns}
spec:
  hosts: [x.ns.svc.cluster.local]
  addresses: [10.96.0.9]
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  - {number: 9090, name: http-admin, protocol: HTTP}
  resolution: STATIC
  workloadSelector: {labels: {app: x}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: x-v2, namespace: ns}
spec: {address: 10.44.0.9, labels: {app: x, version: v2}}
---
"#;

/// Durations past what Envoy's fields hold become the largest value, never wrap: a
/// keepalive of 2^32 s was 0 (off), and an i64 overflow a negative Duration Envoy refuses.
#[test]
fn long_durations_saturate_instead_of_wrapping() {
    let huge = std::time::Duration::from_secs(1 << 32);
    assert_eq!(saturating_secs(huge), u32::MAX);
    assert_eq!(saturating_secs(std::time::Duration::from_secs(7)), 7);
    let max = meshd_model::duration::MAX_SECONDS as i64;
    assert_eq!(
        duration(std::time::Duration::from_secs(u64::MAX)).seconds,
        max
    );
    assert_eq!(duration(std::time::Duration::new(max as u64, 5)).nanos, 5);
}

fn mesh(yaml: &str) -> MeshConfig {
    let file = parse_file("t.yaml", &format!("{SE}{yaml}")).unwrap();
    MeshConfig::assemble([&file])
}

fn clusters(yaml: &str) -> BTreeMap<String, Cluster> {
    let config = mesh(yaml);
    assert!(config.rejected.is_empty(), "{:?}", config.rejected);
    let snap = MeshSnapshot::build(1, Arc::new(config), Arc::new(GenOptions::default()));
    snap.clusters
        .iter()
        .map(|(n, r)| (n.clone(), Cluster::decode(r.value().as_ref()).unwrap()))
        .collect()
}

#[test]
fn destination_rule_fields_reach_the_cluster() {
    let c = clusters(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: x, namespace: ns}
spec:
  host: x
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool:
      tcp:
        maxConnections: 7
        connectTimeout: 3s
        maxConnectionDuration: 1h
        tcpKeepalive: {probes: 3, time: 60s, interval: 10s}
      http:
        http1MaxPendingRequests: 8
        http2MaxRequests: 9
        maxRequestsPerConnection: 10
        maxRetries: 4
        idleTimeout: 30s
    outlierDetection:
      consecutive5xxErrors: 6
      consecutiveGatewayErrors: 2
      consecutiveLocalOriginFailures: 3
      splitExternalLocalOriginErrors: true
      interval: 5s
      baseEjectionTime: 45s
      maxEjectionPercent: 20
      minHealthPercent: 40
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}
"#,
    );
    let main = &c["outbound|8080||x.ns.svc.cluster.local"];
    assert_eq!(main.lb_policy, cluster::LbPolicy::Random as i32);
    assert_eq!(main.connect_timeout.unwrap().seconds, 3);
    let t = &main.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_connections.unwrap().value, 7);
    assert_eq!(t.max_pending_requests.unwrap().value, 8);
    assert_eq!(t.max_requests.unwrap().value, 9);
    assert_eq!(t.max_retries.unwrap().value, 4);
    let ka = main
        .upstream_connection_options
        .as_ref()
        .unwrap()
        .tcp_keepalive
        .as_ref()
        .unwrap();
    assert_eq!(ka.keepalive_probes.unwrap().value, 3);
    assert_eq!(ka.keepalive_time.unwrap().value, 60);
    assert_eq!(ka.keepalive_interval.unwrap().value, 10);
    let opts = HttpProtocolOptions::decode(
            main.typed_extension_protocol_options
                ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                .value
                .as_slice(),
        )
        .unwrap();
    let common = opts.common_http_protocol_options.unwrap();
    assert_eq!(common.idle_timeout.unwrap().seconds, 30);
    assert_eq!(common.max_requests_per_connection.unwrap().value, 10);
    assert_eq!(common.max_connection_duration.unwrap().seconds, 3600);
    let od = main.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_5xx.unwrap().value, 6);
    assert_eq!(od.consecutive_gateway_failure.unwrap().value, 2);
    assert_eq!(od.enforcing_consecutive_gateway_failure.unwrap().value, 100);
    assert_eq!(od.consecutive_local_origin_failure.unwrap().value, 3);
    assert!(od.split_external_local_origin_errors);
    assert_eq!(od.interval.unwrap().seconds, 5);
    assert_eq!(od.base_ejection_time.unwrap().seconds, 45);
    assert_eq!(od.max_ejection_percent.unwrap().value, 20);
    let panic = main.common_lb_config.as_ref().unwrap();
    assert_eq!(panic.healthy_panic_threshold.as_ref().unwrap().value, 40.0);

    // Port-level settings override for their port only.
    let admin = &c["outbound|9090||x.ns.svc.cluster.local"];
    assert_eq!(admin.lb_policy, cluster::LbPolicy::RoundRobin as i32);
    let t = &admin.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_connections.unwrap().value, 7);

    // A subset's connectionPool replaces the rule's (Istio's merge), the rest is inherited.
    let v2 = &c["outbound|8080|v2|x.ns.svc.cluster.local"];
    let t = &v2.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_connections.unwrap().value, 1);
    assert_eq!(t.max_pending_requests.unwrap().value, u32::MAX);
    assert_eq!(v2.lb_policy, cluster::LbPolicy::Random as i32);
}

#[test]
fn consistent_hash_is_ring_hash_and_passthrough_is_original_dst() {
    let c = clusters(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: x, namespace: ns}
spec:
  host: x.ns.svc.cluster.local
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user, minimumRingSize: 2048}}
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer: {simple: PASSTHROUGH}
"#,
    );
    let main = &c["outbound|8080||x.ns.svc.cluster.local"];
    assert_eq!(main.lb_policy, cluster::LbPolicy::RingHash as i32);
    match &main.lb_config {
        Some(cluster::LbConfig::RingHashLbConfig(r)) => {
            assert_eq!(r.minimum_ring_size.unwrap().value, 2048)
        }
        other => panic!("{other:?}"),
    }
    let admin = &c["outbound|9090||x.ns.svc.cluster.local"];
    assert_eq!(
        admin.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32
        ))
    );
}

/// `useClientProtocol`: the cluster follows the downstream's codec (HTTP/1.1 or HTTP/2, each
/// with the pool's settings), whatever the port's protocol or `h2UpgradePolicy` say.
#[test]
fn use_client_protocol_follows_the_downstream_codec() {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
    let c = clusters(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: x, namespace: ns}
spec:
  host: x
  trafficPolicy:
    connectionPool: {http: {useClientProtocol: true, h2UpgradePolicy: UPGRADE, maxConcurrentStreams: 5}}
    portLevelSettings:
    - port: {number: 9090}
      connectionPool: {http: {h2UpgradePolicy: UPGRADE}}
"#,
    );
    let upstream = |name: &str| {
        HttpProtocolOptions::decode(
            c[name].typed_extension_protocol_options
                ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                .value
                .as_slice(),
        )
        .unwrap()
        .upstream_protocol_options
        .unwrap()
    };
    match upstream("outbound|8080||x.ns.svc.cluster.local") {
        UpstreamProtocolOptions::UseDownstreamProtocolConfig(d) => {
            assert!(d.http_protocol_options.is_some());
            let h2 = d.http2_protocol_options.unwrap();
            assert_eq!(h2.max_concurrent_streams.unwrap().value, 5);
        }
        other => panic!("{other:?}"),
    }
    // The port's own connectionPool replaces the rule's: that port is upgraded, not the client's.
    assert!(matches!(
        upstream("outbound|9090||x.ns.svc.cluster.local"),
        UpstreamProtocolOptions::ExplicitHttpConfig(_)
    ));
}

#[test]
fn unsupported_policy_fields_are_reported() {
    for (field, want) in [
        (
            "connectionPool: {http: {h2UpgradePolicy: SOMETIMES}}",
            "SOMETIMES",
        ),
        (
            "tls: {mode: MUTUAL, credentialName: c, clientCertificate: /c.pem}",
            "either credentialName",
        ),
        (
            "loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}",
            "mutually exclusive",
        ),
    ] {
        let config = mesh(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: x, namespace: ns}}\nspec:\n  host: x\n  trafficPolicy: {{{field}}}\n"
        ));
        assert_eq!(config.rejected.len(), 1, "{field}");
        assert!(
            config.rejected[0].reason.contains(want),
            "{field}: {}",
            config.rejected[0]
        );
    }
    // exportTo is served (generate/visibility_tests.rs); only a malformed one is reported.
    let config = mesh(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x, namespace: ns}\nspec:\n  host: x\n  exportTo: [.]\n",
    );
    assert!(config.rejected.is_empty(), "{:?}", config.rejected);
    let config = mesh(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x, namespace: ns}\nspec:\n  host: x\n  exportTo: [\"a/b\"]\n",
    );
    assert!(config.rejected[0].reason.contains("exportTo"));
}

/// ISTIO_MUTUAL with the rule's own `sni` and `subjectAltNames` (as Istio: a server reached
/// through another network's gateway is named by the SNI the gateway routes on): they replace
/// the mesh's `outbound_.PORT_.SUBSET_.HOST` and the service's identities.
#[test]
fn istio_mutual_takes_the_rules_sni_and_subject_alt_names() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    let upstream = |yaml: &str| {
        let c = clusters(yaml)
            .remove("outbound|8080||x.ns.svc.cluster.local")
            .unwrap();
        let socket = c.transport_socket.expect("explicit TLS");
        let Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                any,
            ),
        ) = socket.config_type
        else {
            panic!("typed config")
        };
        let ctx = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
        let json = crate::json::any_to_json(&crate::resource::any(&ctx));
        (ctx.sni, json["common_tls_context"].to_string())
    };
    let rule = |tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: x, namespace: ns}}\nspec:\n  host: x.ns.svc.cluster.local\n  trafficPolicy: {{tls: {tls}}}\n"
        )
    };
    let (sni, ctx) = upstream(&rule("{mode: ISTIO_MUTUAL}"));
    assert_eq!(sni, "outbound_.8080_._.x.ns.svc.cluster.local");
    assert!(!ctx.contains("spiffe://remote"), "{ctx}");
    let (sni, ctx) = upstream(&rule(
        "{mode: ISTIO_MUTUAL, sni: outbound_.8080_._.x.remote.svc.cluster.local, subjectAltNames: [\"spiffe://remote/ns/x/sa/x\"]}",
    ));
    assert_eq!(sni, "outbound_.8080_._.x.remote.svc.cluster.local");
    assert!(ctx.contains("spiffe://remote/ns/x/sa/x"), "{ctx}");
}

/// The inbound cluster of a gRPC (or HTTP2) port speaks HTTP/2 to the app, so gRPC trailers
/// (grpc-status) reach the caller; an HTTP port's keeps HTTP/1.1.
#[test]
fn inbound_cluster_of_a_grpc_port_speaks_http2_to_the_app() {
    use crate::generate::test_fixture::{SERVER, resource, snapshot, workload_proxy};
    let yaml = format!(
        r#"{SERVER}apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server-grpc, namespace: app}}
spec:
  hosts: [server-grpc.app.svc.cluster.local]
  addresses: [10.96.0.21]
  ports: [{{number: 7070, name: grpc, protocol: GRPC}}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {{labels: {{app: server}}}}
"#
    );
    let snap = snapshot(&yaml);
    let proxy = workload_proxy(&snap, "server", "app");
    let options = |name: &str| {
        resource(&snap, &proxy, crate::resource::CLUSTER, name)["typed_extension_protocol_options"]
            .to_string()
    };
    let grpc = options("inbound|7070||");
    assert!(grpc.contains("http2_protocol_options"), "{grpc}");
    let http = options("inbound|8080||");
    assert!(!http.contains("http2_protocol_options"), "{http}");
}

/// A unix socket endpoint (ServiceEntry endpoint or WorkloadEntry) is Envoy's pipe address,
/// reached without mesh mTLS (no sidecar fronts a socket).
#[test]
fn unix_socket_endpoints_are_pipes() {
    let yaml = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: local, namespace: ns}
spec:
  hosts: [local.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: "unix:///run/app/app.sock"}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: abstract, namespace: ns}
spec:
  hosts: [abstract.ns.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  location: MESH_INTERNAL
  workloadSelector: {labels: {app: abstract}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: abstract, namespace: ns}
spec: {address: "unix://@meshd-test", labels: {app: abstract}, serviceAccount: abstract}
"#;
    let snap = MeshSnapshot::build(1, Arc::new(mesh(yaml)), Arc::new(GenOptions::default()));
    for (cluster, path) in [
        ("outbound|80||local.example.com", "/run/app/app.sock"),
        ("outbound|80||abstract.ns.svc.cluster.local", "@meshd-test"),
    ] {
        let cla = crate::json::any_to_json(&snap.endpoints[cluster].any());
        let ep = &cla["endpoints"][0]["lb_endpoints"][0];
        assert_eq!(ep["endpoint"]["address"]["pipe"]["path"], path, "{cla:#}");
        assert!(ep["metadata"].is_null(), "no tlsMode for a socket: {ep:#}");
    }
}
