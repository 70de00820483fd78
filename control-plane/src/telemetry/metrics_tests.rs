//! Unit tests of the request-metric series: counts, histograms, labels, limits and pruning.

use super::*;
use crate::telemetry::SeriesLimits;
use crate::telemetry::directory::Directory;
use crate::telemetry::labels::{Direction, Reporter, http_labels};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, ConnectionProperties, HttpRequestProperties, HttpResponseProperties,
    TlsProperties,
    tls_properties::{
        CertificateProperties,
        certificate_properties::{SubjectAltName, subject_alt_name::San},
    },
};
use meshd_model::{MeshConfig, parse_file};
use meshd_xds::proxy::Identity;

/// `web` (10.44.0.10) calls `api` (10.44.0.20, serving `api` on 8080 and `api-admin` on 9090);
/// `batch` shares web's namespace but not its service account.
const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.shop.svc.cluster.local]
  addresses: [10.96.0.20]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api-admin, namespace: shop}
spec:
  hosts: [api-admin.shop.svc.cluster.local]
  addresses: [10.96.0.21]
  ports: [{number: 9090, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-v1, namespace: shop}
spec: {address: 10.44.0.20, labels: {app: api, version: v1}, serviceAccount: api}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web-v1, namespace: shop}
spec: {address: 10.44.0.10, labels: {app: web, version: v1}, serviceAccount: web}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: batch, namespace: shop}
spec: {address: 10.44.0.30, labels: {app: batch}, serviceAccount: batch}
"#;

fn directory() -> Directory {
    let file = parse_file("mesh.yaml", MESH).unwrap();
    assert!(file.rejected.is_empty(), "{:?}", file.rejected);
    Directory::build(&MeshConfig::assemble([&file]), "cluster.local")
}

fn reporter(workload: &str, sa: &str) -> Reporter {
    Reporter::new(
        Identity {
            workload: workload.into(),
            namespace: "shop".into(),
            service_account: sa.into(),
            trust_domain: "cluster.local".into(),
        },
        &directory(),
    )
}

fn addr(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn peer_cert(uri: &str) -> Option<TlsProperties> {
    Some(TlsProperties {
        peer_certificate_properties: Some(CertificateProperties {
            subject_alt_name: vec![SubjectAltName {
                san: Some(San::Uri(uri.into())),
            }],
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn http(code: u32, cluster: &str, ms: i32) -> HttpAccessLogEntry {
    HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            upstream_cluster: cluster.into(),
            duration: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 0,
                nanos: ms * 1_000_000,
            }),
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(envoy_types::pb::google::protobuf::UInt32Value { value: code }),
            response_body_bytes: 10,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An inbound entry at api (8080) from `from` presenting certificate `cert`.
fn inbound(from: &str, cert: Option<&str>, authority: &str) -> HttpAccessLogEntry {
    let mut e = http(200, "inbound|8080||", 1);
    let common = e.common_properties.as_mut().unwrap();
    common.downstream_remote_address = addr(from, 40000);
    common.downstream_local_address = addr("10.44.0.20", 8080);
    common.tls_properties = cert.and_then(peer_cert);
    e.request = Some(HttpRequestProperties {
        authority: authority.into(),
        ..Default::default()
    });
    e
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const API: &str = "spiffe://cluster.local/ns/shop/sa/api";

#[test]
fn outbound_entries_attribute_source_from_identity_and_destination_from_meshd_names() {
    let mut e = http(503, "outbound|8080|v2|api.shop.svc.cluster.local", 3);
    e.common_properties
        .as_mut()
        .unwrap()
        .upstream_remote_address = addr("10.44.0.20", 8080);
    let l = http_labels(
        &reporter("web-v1", "web"),
        Direction::Outbound,
        &e,
        &directory(),
    );
    assert_eq!(l.reporter, "source");
    assert_eq!(l.source_workload, "web-v1");
    assert_eq!(l.source_workload_namespace, "shop");
    assert_eq!(l.source_principal, WEB);
    assert_eq!(l.source_app, "web");
    assert_eq!(l.source_version, "v1");
    assert_eq!(l.source_canonical_service, "web");
    assert_eq!(l.source_canonical_revision, "v1");
    assert_eq!(l.destination_service, "api.shop.svc.cluster.local");
    assert_eq!(l.destination_service_name, "api");
    assert_eq!(l.destination_service_namespace, "shop");
    // The registry's workload at the upstream address meshd's EDS sent.
    assert_eq!(l.destination_workload, "api-v1");
    assert_eq!(l.destination_principal, API);
    assert_eq!(l.destination_version, "v1");
    assert_eq!(l.response_code, "503");
    assert_eq!(l.response_flags, "-");
    assert_eq!(l.request_protocol, "http");
    assert_eq!(l.connection_security_policy, "unknown");
}

#[test]
fn inbound_entries_take_the_source_only_from_the_verified_peer_certificate() {
    let api = reporter("api-v1", "api");
    let l = http_labels(
        &api,
        Direction::Inbound,
        &inbound("10.44.0.10", Some(WEB), "api.shop.svc.cluster.local:8080"),
        &directory(),
    );
    assert_eq!(l.reporter, "destination");
    assert_eq!(l.destination_workload, "api-v1");
    assert_eq!(l.destination_principal, API);
    assert_eq!(l.destination_service, "api.shop.svc.cluster.local");
    assert_eq!(l.source_principal, WEB);
    assert_eq!(l.source_workload, "web-v1");
    assert_eq!(l.source_app, "web");
    assert_eq!(l.connection_security_policy, "mutual_tls");

    // An address whose workload is not the verified identity names no source workload.
    let l = http_labels(
        &api,
        Direction::Inbound,
        &inbound("10.44.0.30", Some(WEB), ""),
        &directory(),
    );
    assert_eq!(l.source_principal, WEB);
    assert_eq!(l.source_workload_namespace, "shop");
    assert_eq!(l.source_workload, "unknown");

    // Plaintext: no verified identity, no source at all, whatever the address.
    let plain = http_labels(
        &api,
        Direction::Inbound,
        &inbound("10.44.0.10", None, ""),
        &directory(),
    );
    assert_eq!(plain.source_principal, "unknown");
    assert_eq!(plain.source_workload, "unknown");
    assert_eq!(plain.connection_security_policy, "none");
}

#[test]
fn inbound_destination_service_is_the_one_the_caller_named_else_the_ports() {
    let api = reporter("api-v1", "api");
    let service = |authority: &str, port: u32| {
        let mut e = inbound("10.44.0.10", Some(WEB), authority);
        e.common_properties
            .as_mut()
            .unwrap()
            .downstream_local_address = addr("10.44.0.20", port);
        http_labels(&api, Direction::Inbound, &e, &directory()).destination_service
    };
    assert_eq!(
        service("api-admin", 8080),
        "api-admin.shop.svc.cluster.local"
    );
    assert_eq!(
        service("api-admin.shop:9090", 8080),
        "api-admin.shop.svc.cluster.local"
    );
    assert_eq!(
        service("10.44.0.20:9090", 9090),
        "api-admin.shop.svc.cluster.local"
    );
    assert_eq!(service("", 8080), "api.shop.svc.cluster.local");
}

#[test]
fn a_request_that_reached_no_cluster_names_the_service_of_its_authority() {
    let web = reporter("web-v1", "web");
    let service = |authority: &str| {
        let mut e = http(503, "", 0);
        e.request = Some(HttpRequestProperties {
            authority: authority.into(),
            ..Default::default()
        });
        http_labels(&web, Direction::Outbound, &e, &directory()).destination_service
    };
    assert_eq!(service("api:8080"), "api.shop.svc.cluster.local");
    assert_eq!(service("api.shop"), "api.shop.svc.cluster.local");
    assert_eq!(
        service("api.shop.svc.cluster.local:8080"),
        "api.shop.svc.cluster.local"
    );
    assert_eq!(
        service("10.96.0.21:9090"),
        "api-admin.shop.svc.cluster.local"
    );
    // Names the registry does not have stay unknown (no series per made-up host).
    assert_eq!(service("evil.example.com"), "unknown");
    assert_eq!(service("10.1.2.3"), "unknown");
}

#[test]
fn a_cluster_name_meshd_did_not_generate_names_no_destination() {
    let l = http_labels(
        &reporter("web-v1", "web"),
        Direction::Outbound,
        &http(200, "PassthroughCluster", 1),
        &directory(),
    );
    assert_eq!(l.destination_service, "unknown");
    assert_eq!(l.destination_workload, "unknown");
}

#[test]
fn grpc_requests_carry_their_protocol_and_status() {
    let mut e = http(200, "outbound|8080||api.shop.svc.cluster.local", 1);
    e.request = Some(HttpRequestProperties {
        request_headers: [("content-type".to_string(), "application/grpc".to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    });
    e.response.as_mut().unwrap().response_trailers =
        [("grpc-status".to_string(), "14".to_string())]
            .into_iter()
            .collect();
    let l = http_labels(
        &reporter("web-v1", "web"),
        Direction::Outbound,
        &e,
        &directory(),
    );
    assert_eq!(l.request_protocol, "grpc");
    assert_eq!(l.grpc_response_status, "14");
    // A status that is no gRPC code is no label value (it would be a series per string).
    e.response.as_mut().unwrap().response_trailers = [("grpc-status".to_string(), "x".repeat(100))]
        .into_iter()
        .collect();
    let l = http_labels(
        &reporter("web-v1", "web"),
        Direction::Outbound,
        &e,
        &directory(),
    );
    assert_eq!(l.grpc_response_status, "");
}

fn value(out: &str, prefix: &str, code: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(prefix) && l.contains(&format!("response_code=\"{code}\"")))
        .unwrap_or_else(|| panic!("no {prefix} {code} in\n{out}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn counts_and_duration_histogram_render_with_istio_names() {
    let m = MeshMetrics::new(SeriesLimits::default());
    let d = directory();
    let r = reporter("web-v1", "web");
    let cluster = "outbound|8080||api.shop.svc.cluster.local";
    for _ in 0..3 {
        m.record_http(&r, Direction::Outbound, &http(200, cluster, 7), &d);
    }
    m.record_http(&r, Direction::Outbound, &http(500, cluster, 7), &d);
    m.record_tcp(
        &r,
        Direction::Outbound,
        &TcpAccessLogEntry {
            common_properties: Some(AccessLogCommon {
                upstream_cluster: "outbound|9000||db.shop.svc.cluster.local".into(),
                ..Default::default()
            }),
            connection_properties: Some(ConnectionProperties {
                received_bytes: 5,
                sent_bytes: 11,
            }),
        },
        &d,
    );
    let mut out = String::new();
    m.encode_into(&mut out);
    assert_eq!(value(&out, "istio_requests_total{", "200"), "3");
    assert_eq!(value(&out, "istio_requests_total{", "500"), "1");
    assert_eq!(
        value(&out, "istio_request_duration_milliseconds_count{", "200"),
        "3"
    );
    assert!(
        out.lines().any(
            |l| l.starts_with("istio_request_duration_milliseconds_bucket{")
                && l.contains("le=\"10.0\"")
                && l.contains("response_code=\"200\"")
                && l.ends_with(" 3")
        ),
        "{out}"
    );
    let tcp = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("no {name} in\n{out}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(tcp("istio_tcp_sent_bytes_total"), "11");
    assert_eq!(tcp("istio_tcp_received_bytes_total"), "5");
    assert_eq!(tcp("istio_tcp_connections_opened_total"), "1");
    assert_eq!(tcp("istio_tcp_connections_closed_total"), "1");
    assert!(!out.contains("# EOF"));
}

#[test]
fn the_series_cap_drops_and_counts_new_label_sets_only() {
    let m = MeshMetrics::new(SeriesLimits {
        total: 2,
        per_reporter: 10,
    });
    let d = directory();
    let r = reporter("web-v1", "web");
    let cluster = "outbound|8080||api.shop.svc.cluster.local";
    m.record_http(&r, Direction::Outbound, &http(200, cluster, 1), &d);
    m.record_http(&r, Direction::Outbound, &http(500, cluster, 1), &d);
    m.record_http(&r, Direction::Outbound, &http(404, cluster, 1), &d);
    m.record_http(&r, Direction::Outbound, &http(200, cluster, 1), &d);
    assert_eq!(m.series_count(), 2);
    let mut out = String::new();
    m.encode_into(&mut out);
    assert!(
        out.contains("meshd_telemetry_series_dropped_total{limit=\"total\"} 1"),
        "{out}"
    );
    assert!(!out.contains("response_code=\"404\""), "{out}");
    assert_eq!(value(&out, "istio_requests_total{", "200"), "2");
}

#[test]
fn one_reporter_cannot_take_the_budget_of_the_others() {
    let m = MeshMetrics::new(SeriesLimits {
        total: 100,
        per_reporter: 3,
    });
    let d = directory();
    let web = reporter("web-v1", "web");
    let cluster = "outbound|8080||api.shop.svc.cluster.local";
    // web makes up label sets: every code it likes.
    for code in 200..260 {
        m.record_http(&web, Direction::Outbound, &http(code, cluster, 1), &d);
    }
    assert_eq!(m.series_count(), 3);
    // api's own series are still recorded.
    let api = reporter("api-v1", "api");
    m.record_http(
        &api,
        Direction::Inbound,
        &inbound("10.44.0.10", Some(WEB), ""),
        &d,
    );
    assert_eq!(m.series_count(), 4);
    let mut out = String::new();
    m.encode_into(&mut out);
    assert!(
        out.contains("meshd_telemetry_series_dropped_total{limit=\"reporter\"} 57"),
        "{out}"
    );
    // Pruning gives the budget back (api's series from web goes too).
    m.retain_workloads(|w, _| w != "web-v1");
    assert_eq!(m.series_count(), 0);
    for code in 200..203 {
        m.record_http(&web, Direction::Outbound, &http(code, cluster, 1), &d);
    }
    assert_eq!(m.series_count(), 3);
}

#[test]
fn label_values_a_proxy_could_make_up_are_bounded() {
    let api = reporter("api-v1", "api");
    // An identity the registry has none of.
    let l = http_labels(
        &api,
        Direction::Inbound,
        &inbound(
            "10.44.0.10",
            Some("spiffe://cluster.local/ns/x/sa/random-1234"),
            "",
        ),
        &directory(),
    );
    assert_eq!(l.source_principal, "unknown");
    assert_eq!(l.source_workload_namespace, "unknown");
    assert_eq!(l.connection_security_policy, "mutual_tls");
    // Codes that are no HTTP status.
    for code in [0, 99, 600, 4_000_000] {
        let l = http_labels(
            &api,
            Direction::Outbound,
            &http(code, "outbound|8080||api.shop.svc.cluster.local", 1),
            &directory(),
        );
        assert_eq!(l.response_code, "0", "{code}");
    }
}

/// A reporter writes what it likes in its entries (here a cluster name with a quote, a newline
/// and a backslash): the value is escaped, so `/metrics` keeps one line per sample and every
/// other series intact.
#[test]
fn label_values_are_escaped_so_no_entry_can_break_the_exposition() {
    let metrics = MeshMetrics::new(SeriesLimits::default());
    let web = reporter("web-v1", "web");
    let evil = "outbound|8080||a\"} 1\nistio_requests_total{x=\"\\";
    metrics.record_http(&web, Direction::Outbound, &http(200, evil, 1), &directory());
    metrics.record_http(
        &web,
        Direction::Outbound,
        &http(200, "outbound|8080||api.shop.svc.cluster.local", 1),
        &directory(),
    );
    let mut out = String::new();
    metrics.encode_into(&mut out);
    let samples: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("istio_requests_total"))
        .collect();
    assert_eq!(samples.len(), 2, "{out}");
    assert!(
        samples
            .iter()
            .any(|l| l.contains(r#"destination_service="a\"} 1\nistio_requests_total{x=\"\\","#)),
        "{out}"
    );
    for l in &samples {
        assert!(l.ends_with("} 1"), "one sample per line: {l}");
    }
}

#[test]
fn series_naming_a_workload_gone_from_the_registry_are_removed() {
    let m = MeshMetrics::new(SeriesLimits::default());
    let d = directory();
    let api = reporter("api-v1", "api");
    // Reported by api, from web; reported by api, from batch (source unknown: its address is
    // not web's identity); reported by web.
    m.record_http(
        &api,
        Direction::Inbound,
        &inbound("10.44.0.10", Some(WEB), ""),
        &d,
    );
    m.record_http(
        &api,
        Direction::Inbound,
        &inbound("10.44.0.30", Some(WEB), ""),
        &d,
    );
    let cluster = "outbound|8080||api.shop.svc.cluster.local";
    m.record_http(
        &reporter("web-v1", "web"),
        Direction::Outbound,
        &http(200, cluster, 1),
        &d,
    );
    assert_eq!(m.series_count(), 3);
    // web leaves: its own series and the one naming it as the source go.
    m.retain_workloads(|w, _| w != "web-v1");
    assert_eq!(m.series_count(), 1);
    let mut out = String::new();
    m.encode_into(&mut out);
    assert!(!out.contains("web-v1"), "{out}");
    assert!(out.contains("destination_workload=\"api-v1\""), "{out}");
    // The dashboard's edges go with them.
    let edges = m.edges();
    assert!(!edges.is_empty());
    assert!(
        edges
            .keys()
            .all(|k| k.source_workload != "web-v1" && k.destination_workload != "web-v1"),
        "{edges:?}"
    );
}

#[test]
fn label_names_are_istios() {
    let m = MeshMetrics::new(SeriesLimits::default());
    m.record_http(
        &reporter("web-v1", "web"),
        Direction::Outbound,
        &http(200, "outbound|8080||api.shop.svc.cluster.local", 1),
        &directory(),
    );
    let mut out = String::new();
    m.encode_into(&mut out);
    let line = out
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .unwrap();
    for name in [
        "reporter",
        "source_workload",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_canonical_service",
        "source_canonical_revision",
        "source_cluster",
        "destination_service",
        "destination_service_name",
        "destination_service_namespace",
        "destination_workload",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_cluster",
        "request_protocol",
        "response_code",
        "grpc_response_status",
        "response_flags",
        "connection_security_policy",
    ] {
        assert!(
            line.contains(&format!("{{{name}=\"")) || line.contains(&format!(",{name}=\"")),
            "{name} in {line}"
        );
    }
}
