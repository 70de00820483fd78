use super::*;
use envoy_types::pb::envoy::data::accesslog::v3::{
    ConnectionProperties, HttpResponseProperties, TlsProperties,
    tls_properties::{CertificateProperties, certificate_properties::SubjectAltName},
};

fn reporter(workload: &str, ns: &str, sa: &str, app: &str) -> Reporter {
    Reporter {
        identity: Identity {
            workload: workload.into(),
            namespace: ns.into(),
            service_account: sa.into(),
            trust_domain: "cluster.local".into(),
        },
        app: app.into(),
        version: "v1".into(),
    }
}

fn http(code: u32, cluster: &str, peer: Option<&str>, ms: i32) -> HttpAccessLogEntry {
    HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            upstream_cluster: cluster.into(),
            duration: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 0,
                nanos: ms * 1_000_000,
            }),
            tls_properties: peer.map(|p| TlsProperties {
                peer_certificate_properties: Some(CertificateProperties {
                    subject_alt_name: vec![SubjectAltName {
                        san: Some(San::Uri(p.into())),
                    }],
                    ..Default::default()
                }),
                ..Default::default()
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

#[test]
fn outbound_entries_attribute_source_from_identity_and_destination_from_cluster() {
    let r = reporter("web-v1", "shop", "web", "web");
    let l = http_labels(
        &r,
        Direction::Outbound,
        &http(503, "outbound|8080|v2|api.shop.svc.cluster.local", None, 3),
    );
    assert_eq!(l.reporter, "source");
    assert_eq!(l.source_workload, "web-v1");
    assert_eq!(l.source_workload_namespace, "shop");
    assert_eq!(l.source_principal, "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(l.source_app, "web");
    assert_eq!(l.destination_service, "api.shop.svc.cluster.local");
    assert_eq!(l.destination_service_name, "api");
    assert_eq!(l.destination_service_namespace, "shop");
    assert_eq!(l.response_code, "503");
    assert_eq!(l.response_flags, "-");
}

#[test]
fn inbound_entries_take_the_source_principal_only_from_the_verified_peer_certificate() {
    let r = reporter("api-v1", "shop", "api", "api");
    let l = http_labels(
        &r,
        Direction::Inbound,
        &http(
            200,
            "inbound|8080||",
            Some("spiffe://cluster.local/ns/front/sa/web"),
            1,
        ),
    );
    assert_eq!(l.reporter, "destination");
    assert_eq!(l.destination_workload, "api-v1");
    assert_eq!(
        l.destination_principal,
        "spiffe://cluster.local/ns/shop/sa/api"
    );
    assert_eq!(l.destination_service, "api.shop.svc.cluster.local");
    assert_eq!(l.source_principal, "spiffe://cluster.local/ns/front/sa/web");
    assert_eq!(l.source_workload_namespace, "front");
    assert_eq!(l.connection_security_policy, "mutual_tls");

    let plain = http_labels(
        &r,
        Direction::Inbound,
        &http(200, "inbound|8080||", None, 1),
    );
    assert_eq!(plain.source_principal, "unknown");
    assert_eq!(plain.connection_security_policy, "none");
}

#[test]
fn a_cluster_name_meshd_did_not_generate_names_no_destination() {
    let r = reporter("web-v1", "shop", "web", "web");
    let l = http_labels(
        &r,
        Direction::Outbound,
        &http(200, "PassthroughCluster", None, 1),
    );
    assert_eq!(l.destination_service, "unknown");
}

#[test]
fn counts_and_duration_histogram_render_with_istio_names() {
    let m = MeshMetrics::new(DEFAULT_MAX_SERIES);
    let r = reporter("web-v1", "shop", "web", "web");
    let cluster = "outbound|8080||api.shop.svc.cluster.local";
    for _ in 0..3 {
        m.record_http(&r, Direction::Outbound, &http(200, cluster, None, 7));
    }
    m.record_http(&r, Direction::Outbound, &http(500, cluster, None, 7));
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
    );
    let mut out = String::new();
    m.encode_into(&mut out);
    let line = |prefix: &str, code: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix) && l.contains(&format!("response_code=\"{code}\"")))
            .unwrap_or_else(|| panic!("no {prefix} {code} in\n{out}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(line("istio_requests_total{", "200"), "3");
    assert_eq!(line("istio_requests_total{", "500"), "1");
    assert_eq!(
        line("istio_request_duration_milliseconds_count{", "200"),
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
    assert!(out.contains("istio_tcp_sent_bytes_total{"), "{out}");
    assert!(!out.contains("# EOF"));
}

#[test]
fn the_series_cap_drops_and_counts_new_label_sets_only() {
    let m = MeshMetrics::new(2);
    let r = reporter("web-v1", "shop", "web", "web");
    let cluster = "outbound|8080||api.shop.svc.cluster.local";
    m.record_http(&r, Direction::Outbound, &http(200, cluster, None, 1));
    m.record_http(&r, Direction::Outbound, &http(500, cluster, None, 1));
    m.record_http(&r, Direction::Outbound, &http(404, cluster, None, 1));
    m.record_http(&r, Direction::Outbound, &http(200, cluster, None, 1));
    assert_eq!(m.series_count(), 2);
    let mut out = String::new();
    m.encode_into(&mut out);
    assert!(
        out.contains("meshd_telemetry_series_dropped_total 1"),
        "{out}"
    );
    assert!(!out.contains("response_code=\"404\""), "{out}");
    assert!(out.contains("response_code=\"200\""));
}

#[test]
fn series_of_workloads_gone_from_the_registry_are_removed() {
    let m = MeshMetrics::new(DEFAULT_MAX_SERIES);
    let cluster = "outbound|8080||api.shop.svc.cluster.local";
    m.record_http(
        &reporter("web-v1", "shop", "web", "web"),
        Direction::Outbound,
        &http(200, cluster, None, 1),
    );
    m.record_http(
        &reporter("old-v0", "shop", "old", "old"),
        Direction::Outbound,
        &http(200, cluster, None, 1),
    );
    m.retain_reporters(|w, _| w == "web-v1");
    assert_eq!(m.series_count(), 1);
    let mut out = String::new();
    m.encode_into(&mut out);
    assert!(!out.contains("old-v0"), "{out}");
    assert!(out.contains("web-v1"));
}
