//! Clusters and endpoints: one outbound cluster per service port (and per subset), shaped by the
//! DestinationRule's traffic policy; inbound clusters to the app on localhost.

use super::common::*;
use super::{GenOptions, Index};
use crate::resource::any;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Metadata, TransportSocket};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use meshd_model::networking::LocalityLbSetting;
use meshd_model::networking::{
    ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection, Resolution, SimpleLb, Subset,
    TlsMode, TrafficPolicy,
};
use meshd_model::registry::{Endpoint, Port, Service, selector_matches};
use meshd_model::security::MtlsMode;
use std::collections::BTreeMap;
use std::time::Duration;

#[path = "cluster_policy.rs"]
mod policy;
use policy::{
    circuit_breakers, keepalive, lb_policy, originate_tls, outlier, protocol_options, speaks_h2,
    uses_client_protocol,
};

pub const PASSTHROUGH: &str = "PassthroughCluster";
pub const BLACKHOLE: &str = "BlackHoleCluster";
/// The tracing collector's cluster (`--zipkin-address`).
pub const ZIPKIN: &str = "zipkin";
pub const OPENTELEMETRY: &str = "opentelemetry";
const TLS_MODE_KEY: &str = "tlsMode";

pub fn outbound_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Where the sidecar hands an inbound port's traffic to the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppEndpoint {
    /// A port on loopback.
    Port(u32),
    /// A unix socket (`/path`, or `@name` in the abstract namespace), as Envoy's `Pipe` takes it.
    Pipe(String),
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

/// `credentials`: whether this proxy reads a `credentialName` (see [`outbound_with_rule`]).
fn client_tls(
    svc: &Service,
    policy: &EffectivePolicy,
    (port, subset): (&Port, &str),
    credentials: bool,
    opts: &GenOptions,
) -> ClientTls {
    let sni = sni(port.number, subset, &svc.hostname);
    let alpn: &[&str] = if !port.protocol.is_http() {
        &["istio"]
    } else if uses_client_protocol(policy.connection_pool.as_ref()) {
        // None here: Envoy's HTTP/1 and HTTP/2 connection pools each offer their own codec's
        // ALPN when the TLS context names none, and the peer's inbound picks its codec by it.
        &[]
    } else if speaks_h2(policy.connection_pool.as_ref(), port) {
        &["h2"]
    } else {
        &["http/1.1"]
    };
    let mesh = || istio_mutual_upstream(&sni, &peer_identities(svc, &opts.trust_domain), alpn);
    match policy.tls.as_ref().map(|t| t.mode) {
        Some(TlsMode::IstioMutual) => {
            // As Istio: the rule's `sni` and `subjectAltNames` replace the mesh's own (a
            // server reached through another network's gateway is named by the SNI it routes on).
            let t = policy.tls.as_ref().expect("tls set");
            let sni = t.sni.clone().unwrap_or(sni);
            let sans = if t.subject_alt_names.is_empty() {
                peer_identities(svc, &opts.trust_domain)
            } else {
                t.subject_alt_names.clone()
            };
            ClientTls::Explicit(istio_mutual_upstream(&sni, &sans, alpn))
        }
        Some(TlsMode::Disable) => ClientTls::None,
        Some(TlsMode::Simple) | Some(TlsMode::Mutual) => {
            let t = policy.tls.as_ref().expect("tls set");
            if t.credential_name.is_some() && !credentials {
                // istiod's rule: such a sidecar has no certificate paths to fall back on (the
                // API allows only one of the two) and gets no TLS context at all.
                return ClientTls::None;
            }
            ClientTls::Explicit(originate_tls(t, &svc.hostname))
        }
        None if svc.is_internal() => ClientTls::Auto(mesh()),
        None => ClientTls::None,
    }
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
    /// Set when the load assignment depends on the proxy's locality (`localityLbSetting`).
    pub locality: Option<std::sync::Arc<super::locality::LocalityPlan>>,
}

pub fn outbound(
    index: &Index,
    svc: &Service,
    port: &Port,
    subset: Option<&Subset>,
    opts: &GenOptions,
) -> OutboundCluster {
    let rule = index.destination_rule(&svc.hostname);
    outbound_with_rule(index, (rule, false), svc, port, subset, opts)
}

/// [`outbound`] under a given DestinationRule (the one a namespace sees, with `exportTo`, or
/// one selecting the proxy), for a gateway or not: a client `credentialName` is read at gateways,
/// and at sidecars only from a rule with a `workloadSelector` (Istio's rule).
pub fn outbound_with_rule(
    index: &Index,
    (rule, gateway): (Option<&meshd_model::networking::DestinationRule>, bool),
    svc: &Service,
    port: &Port,
    subset: Option<&Subset>,
    opts: &GenOptions,
) -> OutboundCluster {
    let credentials = gateway || rule.is_some_and(|r| r.workload_selector.is_some());
    let subset_name = subset.map(|s| s.name.as_str()).unwrap_or("");
    let name = outbound_name(port.number, subset_name, &svc.hostname);
    let policy = EffectivePolicy::resolve(
        rule.and_then(|r| r.traffic_policy.as_deref()),
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
    let tls = client_tls(svc, &policy, (port, subset_name), credentials, opts);
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
    let lb_endpoints = endpoints.iter().map(|e| {
        let lb = LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(endpoint_address(&e.address, e.port_for(port))),
                ..Default::default()
            })),
            load_balancing_weight: e.weight.and_then(u32v),
            metadata: (auto_mtls && runs_sidecar(e) && index.accepts_mtls(e, port))
                .then(tls_mode_metadata),
            ..Default::default()
        };
        (*e, lb)
    });
    // Istio's mesh default (MeshConfig `localityLbSetting.enabled: true`): a DestinationRule
    // with outlier detection and no locality setting of its own still prefers the proxy's own
    // locality, failing over as the endpoints there are ejected.
    static MESH_DEFAULT: LocalityLbSetting = LocalityLbSetting {
        distribute: Vec::new(),
        failover: Vec::new(),
        failover_priority: Vec::new(),
        enabled: Some(true),
    };
    let locality_setting = policy
        .load_balancer
        .as_ref()
        .and_then(|l| l.locality_lb_setting.as_ref())
        .or(opts.locality_lb_default.then_some(&MESH_DEFAULT));
    let (load_assignment, locality_plan) = super::locality::assignment(
        &name,
        lb_endpoints.collect(),
        locality_setting,
        policy.outlier_detection.is_some(),
    );
    if super::locality::weighted(locality_setting)
        && let Some(common) = c.common_lb_config.as_mut()
    {
        common.locality_config_specifier = Some(
            cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                cluster::common_lb_config::LocalityWeightedLbConfig {},
            ),
        );
    }
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
                locality: None,
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
                locality: None,
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
                locality: None,
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
                locality: locality_plan,
            }
        }
    }
}

/// The cluster to the app behind inbound `port`, limited by the Sidecar's connection pool as a
/// DestinationRule's limits an outbound cluster. An HTTP/2 or gRPC port reaches the app over
/// HTTP/2 (as Istio's): over HTTP/1.1 a gRPC answer would lose its trailers, grpc-status with
/// them.
pub fn inbound(
    port: u32,
    app: &AppEndpoint,
    protocol: meshd_model::registry::Protocol,
    pool: Option<&ConnectionPoolSettings>,
) -> Cluster {
    let address = match app {
        AppEndpoint::Port(app_port) => socket_address("127.0.0.1", *app_port),
        AppEndpoint::Pipe(path) => pipe_address(path),
    };
    let service_port = Port {
        name: String::new(),
        number: port,
        protocol,
        target_port: None,
    };
    Cluster {
        // An HTTP/1.1 port without a pool needs no options: Envoy's default codec is HTTP/1.1.
        typed_extension_protocol_options: protocol_options(pool, &service_port)
            .filter(|_| pool.is_some() || speaks_h2(None, &service_port))
            .into_iter()
            .collect(),
        name: inbound_name(port),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration(
            pool.and_then(|p| p.tcp.as_ref())
                .and_then(|t| t.connect_timeout)
                .unwrap_or(Duration::from_secs(10)),
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: inbound_name(port),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                        address: Some(address),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        circuit_breakers: Some(circuit_breakers(pool)),
        upstream_connection_options: keepalive(pool),
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
    collector(ZIPKIN, address, 9411)
}

/// The OpenTelemetry collector at `address` (HOST:PORT, OTLP gRPC, 4317 by default): HTTP/2, as
/// the protocol options of any gRPC port give it.
pub fn opentelemetry(address: &str) -> Cluster {
    let mut c = collector(OPENTELEMETRY, address, 4317);
    let grpc = Port {
        name: "grpc-otlp".into(),
        number: 4317,
        protocol: meshd_model::registry::Protocol::Grpc,
        target_port: None,
    };
    c.typed_extension_protocol_options
        .extend(protocol_options(None, &grpc));
    c
}

/// A trace collector cluster `name` at `address` (HOST:PORT; a name resolves by DNS).
fn collector(name: &str, address: &str, default_port: u32) -> Cluster {
    let (host, port) = address
        .rsplit_once(':')
        .map(|(h, p)| (h, p.parse().unwrap_or(default_port)))
        .unwrap_or((address, default_port));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let discovery = if host.parse::<std::net::IpAddr>().is_ok() {
        cluster::DiscoveryType::Static
    } else {
        cluster::DiscoveryType::StrictDns
    };
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        connect_timeout: Some(duration(Duration::from_secs(1))),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.into(),
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
    // A unix socket is a process beside the caller, with no sidecar in front of it.
    e.workload.is_some()
        && !e.address.starts_with("unix://")
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
#[path = "cluster_tests.rs"]
mod tests;
