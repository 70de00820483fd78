//! Unit tests of the canonical JSON rendering (json.rs).

use super::*;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Http2ProtocolOptions, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    CheckSettings, ExtAuthzPerRoute, ext_authz_per_route,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, GenericSecret, Secret, TlsCertificate, UpstreamTlsContext, secret,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use prost::Name;

fn pack<M: Name + prost::Message>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn inline_bytes(b: &[u8]) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(b.to_vec())),
        ..Default::default()
    })
}

fn cluster() -> Cluster {
    let tls = UpstreamTlsContext {
        sni: "outbound_.8080_._.reviews.default.svc.cluster.local".into(),
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![TlsCertificate {
                certificate_chain: inline_bytes(b"-----BEGIN CERTIFICATE-----"),
                private_key: inline_bytes(b"-----BEGIN PRIVATE KEY----- secret"),
                ..Default::default()
            }],
            alpn_protocols: vec!["istio-peer-exchange".into(), "istio".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let protocol_options = HttpProtocolOptions {
            upstream_protocol_options: Some(
                http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(
                            http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                                Http2ProtocolOptions::default(),
                            ),
                        ),
                    },
                ),
            ),
            ..Default::default()
        };
    Cluster {
        name: "outbound|8080||reviews.default.svc.cluster.local".into(),
        connect_timeout: Some(Duration {
            seconds: 10,
            nanos: 0,
        }),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        per_connection_buffer_limit_bytes: Some(UInt32Value { value: 32768 }),
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&tls))),
        }),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            pack(&protocol_options),
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

fn listener(filter_config: Any) -> Listener {
    Listener {
        name: "0.0.0.0_8080".into(),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(filter_config)),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn hcm() -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: "outbound_0.0.0.0_8080".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            route_config_name: "8080".into(),
            ..Default::default()
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack(
                &Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn descriptor_pool_loads_and_has_the_types_meshd_sends() {
    let registry = REGISTRY.as_ref().expect("descriptor pool");
    for name in [
        "envoy.config.cluster.v3.Cluster",
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        "envoy.config.listener.v3.Listener",
        "envoy.config.route.v3.RouteConfiguration",
        "envoy.extensions.transport_sockets.tls.v3.Secret",
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "envoy.extensions.filters.http.router.v3.Router",
        "envoy.extensions.filters.http.rbac.v3.RBAC",
        "envoy.extensions.filters.network.rbac.v3.RBAC",
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "envoy.extensions.filters.http.fault.v3.HTTPFault",
        "envoy.extensions.filters.http.cors.v3.Cors",
        "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "envoy.extensions.filters.http.health_check.v3.HealthCheck",
        "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
        "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
        "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
        "envoy.config.trace.v3.ZipkinConfig",
        "envoy.config.trace.v3.OpenTelemetryConfig",
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "envoy.extensions.clusters.original_dst.v3.OriginalDstCluster",
        "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
        "envoy.service.discovery.v3.DiscoveryResponse",
        "envoy.service.discovery.v3.DeltaDiscoveryResponse",
        "google.protobuf.Struct",
        "google.protobuf.Duration",
    ] {
        assert!(
            registry.pool.get_message_by_name(name).is_some(),
            "{name} missing from descriptors/envoy.bin"
        );
    }
    assert!(
        registry
            .sensitive
            .contains("envoy.extensions.transport_sockets.tls.v3.TlsCertificate.private_key"),
        "sensitive annotations not read: {:?}",
        registry.sensitive
    );
}

#[test]
fn cluster_with_nested_anys() {
    let json = any_to_json(&pack(&cluster()));
    assert_eq!(
        json["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert_eq!(
        json["name"],
        "outbound|8080||reviews.default.svc.cluster.local"
    );
    assert_eq!(json["type"], "EDS");
    assert_eq!(json["connect_timeout"], "10s");
    assert_eq!(json["per_connection_buffer_limit_bytes"], 32768);
    assert!(
        json.get("connectTimeout").is_none(),
        "snake_case names: {json}"
    );

    let opts = &json["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert_eq!(
        opts["@type"],
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    );
    assert!(
        opts["explicit_http_config"]["http2_protocol_options"].is_object(),
        "{opts}"
    );

    let ts = &json["transport_socket"];
    assert_eq!(ts["name"], "envoy.transport_sockets.tls");
    let tls = &ts["typed_config"];
    assert_eq!(
        tls["@type"],
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    );
    assert_eq!(
        tls["sni"],
        "outbound_.8080_._.reviews.default.svc.cluster.local"
    );
    let ctx = &tls["common_tls_context"];
    assert_eq!(ctx["alpn_protocols"][1], "istio");
    let cert = &ctx["tls_certificates"][0];
    // Not sensitive: rendered as base64 of the original bytes.
    assert_eq!(
        cert["certificate_chain"]["inline_bytes"],
        "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"
    );
    // Sensitive: redacted like Envoy's /config_dump (base64 of "[redacted]").
    assert_eq!(cert["private_key"]["inline_bytes"], "W3JlZGFjdGVkXQ==");
    assert!(!json.to_string().contains("UFJJVkFURSBLRVk"), "{json}");
}

#[test]
fn listener_with_hcm_typed_config() {
    let json = any_to_json(&pack(&listener(pack(&hcm()))));
    assert_eq!(
        json["@type"],
        "type.googleapis.com/envoy.config.listener.v3.Listener"
    );
    assert_eq!(json["name"], "0.0.0.0_8080");
    let filter = &json["filter_chains"][0]["filters"][0];
    assert_eq!(
        filter["name"],
        "envoy.filters.network.http_connection_manager"
    );
    let hcm = &filter["typed_config"];
    assert_eq!(
        hcm["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    assert_eq!(hcm["stat_prefix"], "outbound_0.0.0.0_8080");
    assert_eq!(hcm["rds"]["route_config_name"], "8080");
    assert_eq!(
        hcm["http_filters"][0]["typed_config"],
        serde_json::json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"})
    );
}

#[test]
fn message_to_json_has_no_type_key() {
    let json = message_to_json(&hcm());
    assert!(json.get("@type").is_none(), "{json}");
    assert_eq!(json["stat_prefix"], "outbound_0.0.0.0_8080");
}

#[test]
fn unknown_top_level_type_is_an_error_object() {
    let any = Any {
        type_url: "type.googleapis.com/com.example.Nope".into(),
        value: vec![1, 2, 3],
    };
    let json = any_to_json(&any);
    assert_eq!(json["@type"], "type.googleapis.com/com.example.Nope");
    assert!(
        json["error"].as_str().unwrap().contains("com.example.Nope"),
        "{json}"
    );
}

#[test]
fn malformed_payload_is_an_error_object() {
    let any = Any {
        type_url: Cluster::type_url(),
        value: vec![0x0a, 0xff],
    };
    let json = any_to_json(&any);
    assert_eq!(json["@type"], Cluster::type_url());
    assert!(json["error"].is_string(), "{json}");
}

#[test]
fn unknown_nested_any_fails_locally() {
    let unknown = Any {
        type_url: "type.googleapis.com/com.example.CustomFilter".into(),
        value: b"\x0a\x03abc".to_vec(),
    };
    let json = any_to_json(&pack(&listener(unknown)));
    assert_eq!(json["name"], "0.0.0.0_8080");
    let filter = &json["filter_chains"][0]["filters"][0];
    assert_eq!(
        filter["name"],
        "envoy.filters.network.http_connection_manager"
    );
    assert_eq!(
        filter["typed_config"]["@type"],
        "type.googleapis.com/com.example.CustomFilter"
    );
    assert!(filter["typed_config"]["error"].is_string(), "{json}");

    // Also below a map inside a nested, known Any.
    let mut c = cluster();
    c.typed_extension_protocol_options.insert(
        "com.example".into(),
        Any {
            type_url: "type.googleapis.com/com.example.Opts".into(),
            value: vec![],
        },
    );
    let json = any_to_json(&pack(&c));
    let opts = &json["typed_extension_protocol_options"];
    assert!(opts["com.example"]["error"].is_string(), "{json}");
    assert!(
        opts["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
            .is_object(),
        "{json}"
    );
    assert_eq!(json["connect_timeout"], "10s");
    assert_eq!(
        json["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"][0]["private_key"]
            ["inline_bytes"],
        "W3JlZGFjdGVkXQ=="
    );
}

#[test]
fn well_known_type_any_uses_value_key() {
    let any = pack(&Duration {
        seconds: 5,
        nanos: 0,
    });
    assert_eq!(
        any_to_json(&any),
        serde_json::json!({"@type": "type.googleapis.com/google.protobuf.Duration", "value": "5s"})
    );
}

#[test]
fn sensitive_map_values_are_redacted_keys_kept() {
    let per_route = ExtAuthzPerRoute {
        r#override: Some(ext_authz_per_route::Override::CheckSettings(
            CheckSettings {
                context_extensions: [("tenant".to_owned(), "acme-secret".to_owned())]
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
        )),
    };
    let json = any_to_json(&pack(&per_route));
    assert_eq!(
        json["check_settings"]["context_extensions"],
        serde_json::json!({"tenant": "[redacted]"})
    );
}

#[test]
fn generic_secret_is_redacted() {
    let secret = Secret {
        name: "hmac".into(),
        r#type: Some(secret::Type::GenericSecret(GenericSecret {
            secret: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString("hunter2".into())),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let json = any_to_json(&pack(&secret));
    assert_eq!(json["name"], "hmac");
    assert_eq!(
        json["generic_secret"]["secret"]["inline_string"],
        "[redacted]"
    );
    assert!(!json.to_string().contains("hunter2"));
}
