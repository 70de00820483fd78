//! Clusters and endpoints: one outbound cluster per service port (and per subset), shaped by the
//! DestinationRule's traffic policy; inbound clusters to the app on localhost.

use super::common::*;
use super::{GenOptions, Index};
use crate::resource::any;
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlier, circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    Metadata, RoutingPriority, TcpKeepalive as EnvoyKeepalive, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use meshd_model::networking::{
    ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection, Resolution, SimpleLb, Subset,
    TlsMode, TrafficPolicy,
};
use meshd_model::registry::{Endpoint, Port, Service, selector_matches};
use meshd_model::security::MtlsMode;
use std::collections::BTreeMap;
use std::time::Duration;

pub const PASSTHROUGH: &str = "PassthroughCluster";
pub const BLACKHOLE: &str = "BlackHoleCluster";
/// The tracing collector's cluster (`--zipkin-address`).
pub const ZIPKIN: &str = "zipkin";
const TLS_MODE_KEY: &str = "tlsMode";

pub fn outbound_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

pub fn inbound_name(port: u32) -> String {
    format!("inbound|{port}||")
}

/// The policy for one port (and subset) of a destination, merged the way Istio merges:
/// subset over port-level over the rule's top level, field by field.
#[derive(Clone, Debug, Default)]
pub struct EffectivePolicy {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<meshd_model::networking::ClientTlsSettings>,
}

impl EffectivePolicy {
    fn apply(&mut self, tp: &TrafficPolicy, port: u32) {
        if tp.load_balancer.is_some() {
            self.load_balancer = tp.load_balancer.clone();
        }
        if tp.connection_pool.is_some() {
            self.connection_pool = tp.connection_pool.clone();
        }
        if tp.outlier_detection.is_some() {
            self.outlier_detection = tp.outlier_detection.clone();
        }
        if tp.tls.is_some() {
            self.tls = tp.tls.clone();
        }
        for pl in &tp.port_level_settings {
            if pl.port.as_ref().map(|p| p.number) == Some(port) {
                if pl.load_balancer.is_some() {
                    self.load_balancer = pl.load_balancer.clone();
                }
                if pl.connection_pool.is_some() {
                    self.connection_pool = pl.connection_pool.clone();
                }
                if pl.outlier_detection.is_some() {
                    self.outlier_detection = pl.outlier_detection.clone();
                }
                if pl.tls.is_some() {
                    self.tls = pl.tls.clone();
                }
            }
        }
    }

    pub fn resolve(policy: Option<&TrafficPolicy>, subset: Option<&Subset>, port: u32) -> Self {
        let mut p = EffectivePolicy::default();
        if let Some(tp) = policy {
            p.apply(tp, port);
        }
        if let Some(tp) = subset.and_then(|s| s.traffic_policy.as_ref()) {
            p.apply(tp, port);
        }
        p
    }
}

fn lb_policy(lb: Option<&LoadBalancerSettings>) -> cluster::LbPolicy {
    match lb.and_then(|l| l.simple) {
        Some(SimpleLb::RoundRobin) => cluster::LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => cluster::LbPolicy::Random,
        Some(SimpleLb::Passthrough) => cluster::LbPolicy::ClusterProvided,
        _ if lb.is_some_and(|l| l.consistent_hash.is_some()) => cluster::LbPolicy::RingHash,
        // Istio's default since 1.14.
        _ => cluster::LbPolicy::LeastRequest,
    }
}

fn circuit_breakers(pool: Option<&ConnectionPoolSettings>) -> CircuitBreakers {
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

fn outlier(od: &OutlierDetection) -> EnvoyOutlier {
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

/// Whether the sidecar speaks HTTP/2 to this destination port: HTTP2/gRPC ports, or
/// `h2UpgradePolicy: UPGRADE`.
fn speaks_h2(pool: Option<&ConnectionPoolSettings>, port: &Port) -> bool {
    matches!(
        port.protocol,
        meshd_model::registry::Protocol::Http2 | meshd_model::registry::Protocol::Grpc
    ) || pool
        .and_then(|p| p.http.as_ref())
        .and_then(|h| h.h2_upgrade_policy.as_deref())
        == Some("UPGRADE")
}

fn protocol_options(
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
    let protocol_config = if speaks_h2(pool, port) {
        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
            Http2ProtocolOptions {
                max_concurrent_streams: http.and_then(|h| h.max_concurrent_streams).and_then(u32v),
                ..Default::default()
            },
        )
    } else {
        http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
            Http1ProtocolOptions::default(),
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
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(protocol_config),
                },
            ),
        ),
        ..Default::default()
    };
    Some((
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        any(&opts),
    ))
}

fn keepalive(
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
fn saturating_secs(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

pub fn sni(port: u32, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

/// Peer identities a client accepts for a destination: the service's SAN list when given,
/// else the service accounts of its workloads.
fn peer_identities(svc: &Service, trust_domain: &str) -> Vec<String> {
    if !svc.subject_alt_names.is_empty() {
        return svc.subject_alt_names.clone();
    }
    svc.service_accounts()
        .into_iter()
        .map(|(ns, sa)| format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}"))
        .collect()
}

/// How a client reaches this destination: explicit TLS from the rule, else Istio's auto mTLS
/// (per endpoint: mTLS to endpoints that run a sidecar accepting it, plaintext otherwise).
enum ClientTls {
    None,
    Explicit(TransportSocket),
    Auto(TransportSocket),
}

fn client_tls(
    svc: &Service,
    policy: &EffectivePolicy,
    port: &Port,
    subset: &str,
    opts: &GenOptions,
) -> ClientTls {
    let sni = sni(port.number, subset, &svc.hostname);
    let alpn: &[&str] = if !port.protocol.is_http() {
        &["istio"]
    } else if speaks_h2(policy.connection_pool.as_ref(), port) {
        &["h2"]
    } else {
        &["http/1.1"]
    };
    let mesh = || istio_mutual_upstream(&sni, &peer_identities(svc, &opts.trust_domain), alpn);
    match policy.tls.as_ref().map(|t| t.mode) {
        Some(TlsMode::IstioMutual) => ClientTls::Explicit(mesh()),
        Some(TlsMode::Disable) => ClientTls::None,
        Some(TlsMode::Simple) | Some(TlsMode::Mutual) => ClientTls::Explicit(originate_tls(
            policy.tls.as_ref().expect("tls set"),
            &svc.hostname,
        )),
        None if svc.is_internal() => ClientTls::Auto(mesh()),
        None => ClientTls::None,
    }
}

fn originate_tls(t: &meshd_model::networking::ClientTlsSettings, host: &str) -> TransportSocket {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, TlsCertificate, UpstreamTlsContext,
        common_tls_context,
    };
    let mut common = CommonTlsContext::default();
    if let (Some(cert), Some(key)) = (&t.client_certificate, &t.private_key) {
        common.tls_certificates = vec![TlsCertificate {
            certificate_chain: Some(filename(cert)),
            private_key: Some(filename(key)),
            ..Default::default()
        }];
    }
    if let Some(ca) = &t.ca_certificates
        && !t.insecure_skip_verify.unwrap_or(false)
    {
        common.validation_context_type = Some(
            common_tls_context::ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(filename(ca)),
                    // The server must present one of these names (any, when none are given).
                    match_typed_subject_alt_names: san_matchers(&t.subject_alt_names),
                    ..Default::default()
                },
            ),
        );
    }
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: t.sni.clone().unwrap_or_else(|| host.to_string()),
        ..Default::default()
    };
    tls_socket(any(&ctx))
}

fn tls_mode_metadata() -> Metadata {
    let mut fields = BTreeMap::new();
    fields.insert(
        TLS_MODE_KEY.to_string(),
        Value {
            kind: Some(value::Kind::StringValue("istio".into())),
        },
    );
    let mut filter_metadata = std::collections::HashMap::new();
    filter_metadata.insert(
        "envoy.transport_socket_match".to_string(),
        Struct {
            fields: fields.into_iter().collect(),
        },
    );
    Metadata {
        filter_metadata,
        ..Default::default()
    }
}

pub struct OutboundCluster {
    pub cluster: Cluster,
    pub load_assignment: Option<ClusterLoadAssignment>,
}

pub fn outbound(
    index: &Index,
    svc: &Service,
    port: &Port,
    subset: Option<&Subset>,
    opts: &GenOptions,
) -> OutboundCluster {
    let rule = index.destination_rule(&svc.hostname);
    outbound_with_rule(index, rule, svc, port, subset, opts)
}

/// [`outbound`] under a given DestinationRule (the one a namespace sees, with `exportTo`).
pub fn outbound_with_rule(
    index: &Index,
    rule: Option<&meshd_model::networking::DestinationRule>,
    svc: &Service,
    port: &Port,
    subset: Option<&Subset>,
    opts: &GenOptions,
) -> OutboundCluster {
    let subset_name = subset.map(|s| s.name.as_str()).unwrap_or("");
    let name = outbound_name(port.number, subset_name, &svc.hostname);
    let policy = EffectivePolicy::resolve(
        rule.and_then(|r| r.traffic_policy.as_ref()),
        subset,
        port.number,
    );
    let pool = policy.connection_pool.as_ref();
    let mut c = Cluster {
        name: name.clone(),
        connect_timeout: Some(duration(
            pool.and_then(|p| p.tcp.as_ref())
                .and_then(|t| t.connect_timeout)
                .unwrap_or(Duration::from_secs(10)),
        )),
        lb_policy: lb_policy(policy.load_balancer.as_ref()) as i32,
        circuit_breakers: Some(circuit_breakers(pool)),
        outlier_detection: policy.outlier_detection.as_ref().map(outlier),
        upstream_connection_options: keepalive(pool),
        common_lb_config: Some(cluster::CommonLbConfig {
            // Without this, one ejected endpoint of two would make Envoy ignore ejection.
            healthy_panic_threshold: Some(envoy_types::pb::envoy::r#type::v3::Percent {
                value: policy
                    .outlier_detection
                    .as_ref()
                    .and_then(|o| o.min_health_percent)
                    .unwrap_or(0) as f64,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Some((key, opts_any)) = protocol_options(pool, port) {
        c.typed_extension_protocol_options.insert(key, opts_any);
    }
    if let Some(ch) = policy
        .load_balancer
        .as_ref()
        .and_then(|l| l.consistent_hash.as_ref())
        && let Some(size) = ch.minimum_ring_size
    {
        c.lb_config = Some(cluster::LbConfig::RingHashLbConfig(
            cluster::RingHashLbConfig {
                minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value {
                    value: size,
                }),
                ..Default::default()
            },
        ));
    }
    super::slow_start::apply(&mut c, policy.load_balancer.as_ref());
    let tls = client_tls(svc, &policy, port, subset_name, opts);
    let auto_mtls = matches!(tls, ClientTls::Auto(_));
    match tls {
        ClientTls::None => {}
        ClientTls::Explicit(ts) => c.transport_socket = Some(ts),
        ClientTls::Auto(ts) => {
            c.transport_socket_matches = vec![
                cluster::TransportSocketMatch {
                    name: "tlsMode-istio".into(),
                    r#match: Some(Struct {
                        fields: [(
                            TLS_MODE_KEY.to_string(),
                            Value {
                                kind: Some(value::Kind::StringValue("istio".into())),
                            },
                        )]
                        .into_iter()
                        .collect(),
                    }),
                    transport_socket: Some(ts),
                },
                cluster::TransportSocketMatch {
                    name: "tlsMode-disabled".into(),
                    r#match: Some(Struct::default()),
                    transport_socket: Some(TransportSocket {
                        name: "envoy.transport_sockets.raw_buffer".into(),
                        config_type: Some(
                            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                                any(&envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer {}),
                            ),
                        ),
                    }),
                },
            ];
        }
    }
    let endpoints: Vec<&Endpoint> = svc
        .endpoints
        .iter()
        .filter(|e| subset.is_none_or(|s| selector_matches(&s.labels, &e.labels)))
        .collect();
    let lb_endpoints: Vec<LbEndpoint> = endpoints
        .iter()
        .map(|e| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(socket_address(&e.address, e.port_for(port))),
                ..Default::default()
            })),
            load_balancing_weight: e.weight.and_then(u32v),
            metadata: (auto_mtls && runs_sidecar(e) && index.accepts_mtls(e, port))
                .then(tls_mode_metadata),
            ..Default::default()
        })
        .collect();
    let load_assignment = ClusterLoadAssignment {
        cluster_name: name.clone(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    };
    let passthrough =
        policy.load_balancer.as_ref().and_then(|l| l.simple) == Some(SimpleLb::Passthrough);
    match svc.resolution {
        _ if passthrough => {
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::OriginalDst as i32,
            ));
            OutboundCluster {
                cluster: c,
                load_assignment: None,
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            let dns_endpoints = if svc.endpoints.is_empty() {
                ClusterLoadAssignment {
                    cluster_name: name,
                    endpoints: vec![LocalityLbEndpoints {
                        lb_endpoints: vec![LbEndpoint {
                            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                                EnvoyEndpoint {
                                    address: Some(socket_address(
                                        &svc.hostname,
                                        port.target_port.unwrap_or(port.number),
                                    )),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            } else {
                load_assignment
            };
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(if svc.resolution
                == Resolution::Dns
            {
                cluster::DiscoveryType::StrictDns
            } else {
                cluster::DiscoveryType::LogicalDns
            }
                as i32));
            c.load_assignment = Some(dns_endpoints);
            OutboundCluster {
                cluster: c,
                load_assignment: None,
            }
        }
        Resolution::None if svc.endpoints.is_empty() && svc.selector.is_none() => {
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::OriginalDst as i32,
            ));
            c.lb_policy = cluster::LbPolicy::ClusterProvided as i32;
            OutboundCluster {
                cluster: c,
                load_assignment: None,
            }
        }
        _ => {
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            ));
            c.eds_cluster_config = Some(cluster::EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: String::new(),
            });
            OutboundCluster {
                cluster: c,
                load_assignment: Some(load_assignment),
            }
        }
    }
}

pub fn inbound(port: u32, app_port: u32) -> Cluster {
    Cluster {
        name: inbound_name(port),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration(Duration::from_secs(10))),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: inbound_name(port),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                        address: Some(socket_address("127.0.0.1", app_port)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        circuit_breakers: Some(circuit_breakers(None)),
        ..Default::default()
    }
}

pub fn passthrough() -> Cluster {
    Cluster {
        name: PASSTHROUGH.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(duration(Duration::from_secs(10))),
        circuit_breakers: Some(circuit_breakers(None)),
        ..Default::default()
    }
}

/// The Zipkin collector at `address` (HOST:PORT; a name resolves by DNS).
pub fn zipkin(address: &str) -> Cluster {
    let (host, port) = address
        .rsplit_once(':')
        .map(|(h, p)| (h, p.parse().unwrap_or(9411)))
        .unwrap_or((address, 9411));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let discovery = if host.parse::<std::net::IpAddr>().is_ok() {
        cluster::DiscoveryType::Static
    } else {
        cluster::DiscoveryType::StrictDns
    };
    Cluster {
        name: ZIPKIN.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        connect_timeout: Some(duration(Duration::from_secs(1))),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: ZIPKIN.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                        address: Some(socket_address(host, port)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn blackhole() -> Cluster {
    Cluster {
        name: BLACKHOLE.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration(Duration::from_secs(10))),
        ..Default::default()
    }
}

/// Whether an endpoint is a workload with a sidecar (auto mTLS applies): a workload, and not a
/// gateway (Istio's gateways carry no `tlsMode: istio` label; they terminate what their Gateway
/// servers say).
fn runs_sidecar(e: &Endpoint) -> bool {
    e.workload.is_some()
        && !e
            .labels
            .get("istio")
            .is_some_and(|v| v.ends_with("gateway"))
}

/// Whether an endpoint's sidecar accepts mTLS on this port (not DISABLE'd by PeerAuthentication).
pub fn endpoint_accepts_mtls(mode: MtlsMode) -> bool {
    mode != MtlsMode::Disable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{GenOptions, MeshSnapshot};
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

    #[test]
    fn unsupported_policy_fields_are_reported() {
        for (field, want) in [
            (
                "connectionPool: {http: {useClientProtocol: true}}",
                "useClientProtocol",
            ),
            (
                "connectionPool: {http: {h2UpgradePolicy: SOMETIMES}}",
                "SOMETIMES",
            ),
            ("tls: {mode: SIMPLE, credentialName: c}", "credentialName"),
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
}
