//! A DestinationRule's traffic policy as Envoy cluster settings: load balancer, connection-pool
//! limits as circuit breakers, outlier detection, HTTP/2 and keepalive protocol options, TLS
//! origination (SIMPLE, MUTUAL; certificate files or a `credentialName` over SDS).

use crate::generate::common::*;
use crate::resource::any;
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, OutlierDetection as EnvoyOutlier, circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{RoutingPriority, TcpKeepalive as EnvoyKeepalive};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use meshd_model::networking::{
    ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection, SimpleLb,
};
use meshd_model::registry::Port;

pub(super) fn lb_policy(lb: Option<&LoadBalancerSettings>) -> cluster::LbPolicy {
    match lb.and_then(|l| l.simple) {
        Some(SimpleLb::RoundRobin) => cluster::LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => cluster::LbPolicy::Random,
        Some(SimpleLb::Passthrough) => cluster::LbPolicy::ClusterProvided,
        _ if lb.is_some_and(|l| l.consistent_hash.is_some()) => cluster::LbPolicy::RingHash,
        // Istio's default since 1.14.
        _ => cluster::LbPolicy::LeastRequest,
    }
}

pub(super) fn circuit_breakers(pool: Option<&ConnectionPoolSettings>) -> CircuitBreakers {
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    // Istio lifts Envoy's small defaults (1024) to "unlimited" unless the rule says otherwise.
    let unlimited = u32::MAX;
    CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: u32v(tcp.and_then(|t| t.max_connections).unwrap_or(unlimited)),
            max_pending_requests: u32v(
                http.and_then(|h| h.http1_max_pending_requests)
                    .unwrap_or(unlimited),
            ),
            max_requests: u32v(http.and_then(|h| h.http2_max_requests).unwrap_or(unlimited)),
            max_retries: u32v(http.and_then(|h| h.max_retries).unwrap_or(unlimited)),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(super) fn outlier(od: &OutlierDetection) -> EnvoyOutlier {
    let consecutive_5xx = od.consecutive_5xx_errors.or(od.consecutive_errors);
    EnvoyOutlier {
        consecutive_5xx: consecutive_5xx.and_then(u32v),
        enforcing_consecutive_5xx: u32v(if consecutive_5xx.unwrap_or(0) > 0 {
            100
        } else {
            0
        }),
        consecutive_gateway_failure: od.consecutive_gateway_errors.and_then(u32v),
        enforcing_consecutive_gateway_failure: u32v(
            if od.consecutive_gateway_errors.unwrap_or(0) > 0 {
                100
            } else {
                0
            },
        ),
        consecutive_local_origin_failure: od.consecutive_local_origin_failures.and_then(u32v),
        enforcing_consecutive_local_origin_failure: od
            .consecutive_local_origin_failures
            .map(|_| 100)
            .and_then(u32v),
        split_external_local_origin_errors: od.split_external_local_origin_errors.unwrap_or(false),
        interval: od.interval.map(duration),
        base_ejection_time: od.base_ejection_time.map(duration),
        max_ejection_percent: od.max_ejection_percent.and_then(u32v),
        enforcing_success_rate: u32v(0),
        ..Default::default()
    }
}

/// `connectionPool.http.useClientProtocol`: the sidecar speaks to this destination what the
/// client spoke to it (and `h2UpgradePolicy` does not apply, as in Istio).
pub(super) fn uses_client_protocol(pool: Option<&ConnectionPoolSettings>) -> bool {
    pool.and_then(|p| p.http.as_ref())
        .and_then(|h| h.use_client_protocol)
        .unwrap_or(false)
}

/// Whether the sidecar speaks HTTP/2 to this destination port: HTTP2/gRPC ports, or
/// `h2UpgradePolicy: UPGRADE`.
pub(super) fn speaks_h2(pool: Option<&ConnectionPoolSettings>, port: &Port) -> bool {
    !uses_client_protocol(pool)
        && matches!(
            port.protocol,
            meshd_model::registry::Protocol::Http2 | meshd_model::registry::Protocol::Grpc
        )
        || pool
            .and_then(|p| p.http.as_ref())
            .and_then(|h| h.h2_upgrade_policy.as_deref())
            == Some("UPGRADE")
}

pub(super) fn protocol_options(
    pool: Option<&ConnectionPoolSettings>,
    port: &Port,
) -> Option<(String, envoy_types::pb::google::protobuf::Any)> {
    use envoy_types::pb::envoy::config::core::v3::{
        Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttp,
    };
    let http = pool.and_then(|p| p.http.as_ref());
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    if !port.protocol.is_http() {
        return None;
    }
    let h2_options = || Http2ProtocolOptions {
        max_concurrent_streams: http.and_then(|h| h.max_concurrent_streams).and_then(u32v),
        ..Default::default()
    };
    let upstream = if uses_client_protocol(pool) {
        http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            http_protocol_options::UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(h2_options()),
                ..Default::default()
            },
        )
    } else {
        let protocol_config = if speaks_h2(pool, port) {
            http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                h2_options(),
            )
        } else {
            http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                Http1ProtocolOptions::default(),
            )
        };
        http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(protocol_config),
            },
        )
    };
    let opts = HttpProtocolOptions {
        common_http_protocol_options: Some(CommonHttp {
            idle_timeout: http.and_then(|h| h.idle_timeout).map(duration),
            max_requests_per_connection: http
                .and_then(|h| h.max_requests_per_connection)
                .filter(|n| *n > 0)
                .and_then(u32v),
            max_connection_duration: tcp.and_then(|t| t.max_connection_duration).map(duration),
            ..Default::default()
        }),
        upstream_protocol_options: Some(upstream),
        ..Default::default()
    };
    Some((
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        any(&opts),
    ))
}

pub(super) fn keepalive(
    pool: Option<&ConnectionPoolSettings>,
) -> Option<envoy_types::pb::envoy::config::cluster::v3::UpstreamConnectionOptions> {
    let ka = pool
        .and_then(|p| p.tcp.as_ref())
        .and_then(|t| t.tcp_keepalive.as_ref())?;
    Some(
        envoy_types::pb::envoy::config::cluster::v3::UpstreamConnectionOptions {
            tcp_keepalive: Some(EnvoyKeepalive {
                keepalive_probes: ka.probes.and_then(u32v),
                keepalive_time: ka.time.map(saturating_secs).and_then(u32v),
                keepalive_interval: ka.interval.map(saturating_secs).and_then(u32v),
            }),
            ..Default::default()
        },
    )
}

/// Whole seconds as Envoy's 32-bit fields hold them: a longer duration is the longest one, not
/// its low bits (`as u32` turned 2^32 s into 0, keepalive off).
pub(super) fn saturating_secs(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// SIMPLE / MUTUAL origination. With `credentialName` the certificate and key (MUTUAL) and the
/// CA come over SDS under Istio's names, from the Secrets of the proxy's namespace
/// (`generate::credential`); without the CA's secret Envoy keeps the cluster warming rather than
/// trust any server.
pub(super) fn originate_tls(
    t: &meshd_model::networking::ClientTlsSettings,
    host: &str,
) -> envoy_types::pb::envoy::config::core::v3::TransportSocket {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, TlsCertificate, UpstreamTlsContext,
        common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    };
    use meshd_model::credential::{sds_ca_name, sds_name};
    use meshd_model::networking::TlsMode;
    let verify = !t.insecure_skip_verify.unwrap_or(false);
    let sans = || san_matchers(&t.subject_alt_names);
    let mut common = CommonTlsContext::default();
    match &t.credential_name {
        Some(name) => {
            if t.mode == TlsMode::Mutual {
                common.tls_certificate_sds_secret_configs = vec![sds(&sds_name(name))];
            }
            if verify {
                common.validation_context_type =
                    Some(ValidationContextType::CombinedValidationContext(
                        CombinedCertificateValidationContext {
                            default_validation_context: Some(CertificateValidationContext {
                                match_typed_subject_alt_names: sans(),
                                ..Default::default()
                            }),
                            validation_context_sds_secret_config: Some(sds(&sds_ca_name(name))),
                            ..Default::default()
                        },
                    ));
            }
        }
        None => {
            if let (Some(cert), Some(key)) = (&t.client_certificate, &t.private_key) {
                common.tls_certificates = vec![TlsCertificate {
                    certificate_chain: Some(filename(cert)),
                    private_key: Some(filename(key)),
                    ..Default::default()
                }];
            }
            if let Some(ca) = &t.ca_certificates
                && verify
            {
                common.validation_context_type = Some(ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(filename(ca)),
                        crl: t.ca_crl.as_deref().map(filename),
                        // The server must present one of these names (any, when none are given).
                        match_typed_subject_alt_names: sans(),
                        ..Default::default()
                    },
                ));
            }
        }
    }
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: t.sni.clone().unwrap_or_else(|| host.to_string()),
        ..Default::default()
    };
    tls_socket(any(&ctx))
}
