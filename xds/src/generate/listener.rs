//! Listeners: the sidecar's outbound capture listener (15001) and the per-port outbound
//! listeners reached through original destination; the HTTP connection manager and proxy
//! filters every listener (inbound, gateway) is made of. Inbound listeners: `inbound_listener`.

use super::GenOptions;
use super::common::*;
use super::l4::{L4Chain, L4Target};
use super::route::{CORS_FILTER, FAULT_FILTER};
use super::telemetry::{self, Side};
use crate::resource::any;
use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::core::v3::{CidrRange, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};

pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
pub const OUTBOUND_PORT: u32 = 15001;

fn router_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(
            &envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default(),
        ))),
        ..Default::default()
    }
}

/// The CORS filter: inert unless a route carries a CORS policy (per-route config).
fn cors_filter() -> HttpFilter {
    HttpFilter {
        name: CORS_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(
            &envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors::default(),
        ))),
        ..Default::default()
    }
}

fn fault_filter() -> HttpFilter {
    HttpFilter {
        name: FAULT_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(
            &envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault::default(),
        ))),
        ..Default::default()
    }
}

/// Its JSON format is a protobuf `Struct`, a map prost encodes in hash order: built and encoded
/// once, it is the same bytes in every listener of every build, so unchanged listeners keep
/// their versions.
fn stdout_access_log(encoding: super::AccessLogEncoding) -> AccessLog {
    static JSON: std::sync::OnceLock<AccessLog> = std::sync::OnceLock::new();
    static TEXT: std::sync::OnceLock<AccessLog> = std::sync::OnceLock::new();
    match encoding {
        super::AccessLogEncoding::Json => JSON.get_or_init(build_stdout_access_log).clone(),
        super::AccessLogEncoding::Text => TEXT.get_or_init(build_text_access_log).clone(),
    }
}

pub use super::telemetry_api::ISTIO_TEXT_FORMAT;

fn build_text_access_log() -> AccessLog {
    use envoy_types::pb::envoy::config::core::v3::{
        DataSource, SubstitutionFormatString, data_source, substitution_format_string,
    };
    use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
        StdoutAccessLog, stdout_access_log,
    };
    let log = StdoutAccessLog {
        access_log_format: Some(stdout_access_log::AccessLogFormat::LogFormat(
            SubstitutionFormatString {
                format: Some(substitution_format_string::Format::TextFormatSource(
                    DataSource {
                        specifier: Some(data_source::Specifier::InlineString(
                            ISTIO_TEXT_FORMAT.into(),
                        )),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            },
        )),
    };
    AccessLog {
        name: "envoy.access_loggers.stdout".into(),
        config_type: Some(access_log::ConfigType::TypedConfig(any(&log))),
        ..Default::default()
    }
}

fn build_stdout_access_log() -> AccessLog {
    use envoy_types::pb::envoy::config::core::v3::{
        SubstitutionFormatString, substitution_format_string,
    };
    use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
        StdoutAccessLog, stdout_access_log,
    };
    use envoy_types::pb::google::protobuf::{Struct, Value, value};
    let field = |k: &str, v: &str| {
        (
            k.to_string(),
            Value {
                kind: Some(value::Kind::StringValue(v.into())),
            },
        )
    };
    let format = Struct {
        fields: [
            field("start_time", "%START_TIME%"),
            field("method", "%REQ(:METHOD)%"),
            field("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
            field("protocol", "%PROTOCOL%"),
            field("response_code", "%RESPONSE_CODE%"),
            field("response_flags", "%RESPONSE_FLAGS%"),
            field("duration", "%DURATION%"),
            field("upstream_cluster", "%UPSTREAM_CLUSTER%"),
            field("upstream_host", "%UPSTREAM_HOST%"),
            field("downstream_peer_uri_san", "%DOWNSTREAM_PEER_URI_SAN%"),
            field("authority", "%REQ(:AUTHORITY)%"),
            field("request_id", "%REQ(X-REQUEST-ID)%"),
            field("trace_id", "%TRACE_ID%"),
            // true when an AUDIT AuthorizationPolicy matched the request (RBAC action LOG).
            field(
                "authz_audit",
                "%DYNAMIC_METADATA(envoy.common:access_log_hint)%",
            ),
        ]
        .into_iter()
        .collect(),
    };
    let log = StdoutAccessLog {
        access_log_format: Some(stdout_access_log::AccessLogFormat::LogFormat(
            SubstitutionFormatString {
                format: Some(substitution_format_string::Format::JsonFormat(format)),
                ..Default::default()
            },
        )),
    };
    AccessLog {
        name: "envoy.access_loggers.stdout".into(),
        config_type: Some(access_log::ConfigType::TypedConfig(any(&log))),
        ..Default::default()
    }
}

#[allow(clippy::large_enum_variant)] // built once per listener, never stored
pub enum RouteSource {
    Rds(String),
    Inline(RouteConfiguration),
}

pub fn hcm(
    stat_prefix: &str,
    routes: RouteSource,
    inbound: bool,
    policy_filters: &[HttpFilter],
    opts: &GenOptions,
) -> HttpConnectionManager {
    let route_specifier = match routes {
        RouteSource::Rds(name) => http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name,
        }),
        RouteSource::Inline(rc) => http_connection_manager::RouteSpecifier::RouteConfig(rc),
    };
    let mut filters = Vec::new();
    if !inbound {
        // Istio's outbound order: CORS answers preflights before faults are injected.
        filters.push(cors_filter());
        filters.push(fault_filter());
    }
    filters.extend(policy_filters.iter().cloned());
    filters.push(router_filter());
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(route_specifier),
        http_filters: filters,
        forward_client_cert_details: if inbound {
            http_connection_manager::ForwardClientCertDetails::AppendForward
        } else {
            http_connection_manager::ForwardClientCertDetails::Sanitize
        } as i32,
        set_current_client_cert_details: inbound.then(|| {
            http_connection_manager::SetCurrentClientCertDetails {
                subject: boolv(true),
                dns: true,
                uri: true,
                ..Default::default()
            }
        }),
        use_remote_address: boolv(false),
        tracing: super::telemetry_api::tracing(opts, !inbound),
        request_id_extension: super::telemetry_api::request_id_extension(opts, !inbound),
        access_log: telemetry::http_access_logs(
            if inbound {
                Side::Inbound
            } else {
                Side::Outbound
            },
            opts,
            || stdout_access_log(opts.access_log_encoding),
        ),
        ..Default::default()
    }
}

fn network_filter(name: &str, typed: envoy_types::pb::google::protobuf::Any) -> Filter {
    Filter {
        name: name.into(),
        config_type: Some(filter::ConfigType::TypedConfig(typed)),
    }
}

pub fn hcm_filter(h: &HttpConnectionManager) -> Filter {
    network_filter("envoy.filters.network.http_connection_manager", any(h))
}

pub fn tcp_proxy_filter(stat_prefix: &str, cluster: &str) -> Filter {
    tcp_proxy(
        stat_prefix,
        tcp_proxy::ClusterSpecifier::Cluster(cluster.into()),
        None,
    )
}

fn tcp_proxy(
    stat_prefix: &str,
    cluster_specifier: tcp_proxy::ClusterSpecifier,
    idle_timeout: Option<std::time::Duration>,
) -> Filter {
    network_filter(
        "envoy.filters.network.tcp_proxy",
        any(&TcpProxy {
            stat_prefix: stat_prefix.into(),
            cluster_specifier: Some(cluster_specifier),
            idle_timeout: idle_timeout.map(duration),
            ..Default::default()
        }),
    )
}

/// The TCP proxy for an L4 target (one cluster, or weighted clusters from VirtualService
/// tcp/tls routes), with the destination's idle timeout when it sets one.
pub fn l4_proxy_filter(
    name: &str,
    target: &L4Target,
    idle_timeout: Option<std::time::Duration>,
) -> Filter {
    let (stat_prefix, cluster_specifier) = match target {
        L4Target::Cluster(cluster) => (
            cluster.as_str(),
            tcp_proxy::ClusterSpecifier::Cluster(cluster.clone()),
        ),
        L4Target::Weighted(clusters) => (
            name,
            tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
                clusters: clusters
                    .iter()
                    .map(
                        |(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                            name: name.clone(),
                            weight: *weight,
                            ..Default::default()
                        },
                    )
                    .collect(),
            }),
        ),
    };
    tcp_proxy(stat_prefix, cluster_specifier, idle_timeout)
}

pub(super) fn listener_filter(
    name: &str,
    typed: envoy_types::pb::google::protobuf::Any,
) -> ListenerFilter {
    ListenerFilter {
        name: name.into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(typed)),
        ..Default::default()
    }
}

/// 15001: every captured outbound connection lands here and is handed, by its original
/// destination, to the per-port listener; what matches none goes to `unmatched` (passthrough,
/// black hole, or the Sidecar's egress proxy).
pub fn virtual_outbound(unmatched: &str) -> Listener {
    let target = unmatched;
    Listener {
        name: VIRTUAL_OUTBOUND.into(),
        address: Some(socket_address("0.0.0.0", OUTBOUND_PORT)),
        use_original_dst: boolv(true),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![FilterChain {
            name: "virtualOutbound-catchall-tcp".into(),
            filters: vec![tcp_proxy_filter(target, target)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Where an outbound listener listens: `0.0.0.0` not bound, reached from 15001 by original
/// destination; or a Sidecar egress listener's own address, bound when nothing captures for it.
#[derive(Clone, Copy)]
pub struct OutboundAddress<'a> {
    pub ip: &'a str,
    pub bound: bool,
}

impl OutboundAddress<'_> {
    pub const CAPTURED: OutboundAddress<'static> = OutboundAddress {
        ip: "0.0.0.0",
        bound: false,
    };

    /// `<ip>_<port>`, or a unix socket's own address (it has no port).
    pub fn listener_name(&self, port: u32) -> String {
        if self.ip.starts_with("unix://") {
            self.ip.to_string()
        } else {
            format!("{}_{port}", self.ip)
        }
    }

    /// The RDS name of its HTTP routes: the port, as Istio names them, for the captured ones.
    pub fn route_name(&self, port: u32) -> String {
        if self.ip == Self::CAPTURED.ip {
            port.to_string()
        } else {
            self.listener_name(port)
        }
    }
}

/// The chains of a listener an app dials itself: it names no VIP, so only SNI names tell
/// destinations apart (the first claim of a name wins); the first chain without one is
/// returned, matching every other connection.
fn bound_chains(chains: &mut Vec<FilterChain>) -> Option<FilterChain> {
    let mut first_plain = None;
    let mut claimed: Vec<Vec<String>> = Vec::new();
    chains.retain_mut(|c| {
        let m = c.filter_chain_match.get_or_insert_default();
        m.prefix_ranges.clear();
        if m.server_names.is_empty() {
            if first_plain.is_none() {
                let mut plain = c.clone();
                plain.filter_chain_match = None;
                first_plain = Some(plain);
            }
            return false;
        }
        let first = !claimed.contains(&m.server_names);
        claimed.push(m.server_names.clone());
        first
    });
    first_plain
}

/// A per-port outbound listener. HTTP ports route by Host through RDS; TCP services get a chain
/// per VIP, except on a bound address, where the app names no VIP and the first service takes
/// the connection.
pub fn outbound_port(
    (port, address): (u32, OutboundAddress<'_>),
    http: bool,
    l4_chains: &[L4Chain],
    unmatched: &str,
    opts: &GenOptions,
) -> Listener {
    let name = address.listener_name(port);
    // One chain per match: the first service (or route) claiming a VIP, an SNI name, or an SNI
    // name on some addresses wins; Envoy refuses two chains with the same match.
    let mut claimed: Vec<(Vec<CidrRange>, String)> = Vec::new();
    let mut chains: Vec<FilterChain> = Vec::new();
    for c in l4_chains {
        let prefix_ranges: Vec<CidrRange> = c.vips.iter().filter_map(|v| cidr(v)).collect();
        let server_names: Vec<String> = c
            .sni
            .iter()
            .filter(|n| {
                !claimed
                    .iter()
                    .any(|(p, s)| s == *n && (p.is_empty() || *p == prefix_ranges))
            })
            .cloned()
            .collect();
        let unclaimed = if c.sni.is_empty() {
            !prefix_ranges.is_empty()
                && !claimed
                    .iter()
                    .any(|(p, s)| s.is_empty() && *p == prefix_ranges)
        } else {
            !server_names.is_empty()
        };
        if !unclaimed {
            continue;
        }
        if server_names.is_empty() {
            claimed.push((prefix_ranges.clone(), String::new()));
        } else {
            claimed.extend(
                server_names
                    .iter()
                    .map(|n| (prefix_ranges.clone(), n.clone())),
            );
        }
        let proxy = telemetry::with_tcp_log(
            l4_proxy_filter(&c.name, &c.target, c.idle_timeout),
            Side::Outbound,
            opts,
        );
        chains.push(FilterChain {
            name: c.name.clone(),
            filter_chain_match: Some(FilterChainMatch {
                prefix_ranges,
                server_names,
                ..Default::default()
            }),
            filters: vec![proxy],
            ..Default::default()
        });
    }
    super::l4::sni_under_prefixes(&mut chains);
    let bound_default = if address.bound {
        bound_chains(&mut chains)
    } else {
        None
    };
    let sni_matched = chains.iter().any(|c| {
        c.filter_chain_match
            .as_ref()
            .is_some_and(|m| !m.server_names.is_empty())
    });
    let default_chain = if http {
        let h = hcm(
            &format!("outbound_{name}"),
            RouteSource::Rds(address.route_name(port)),
            false,
            &[],
            opts,
        );
        FilterChain {
            name: format!("{name}-http"),
            filters: vec![hcm_filter(&h)],
            ..Default::default()
        }
    } else if let Some(first) = bound_default {
        first
    } else {
        FilterChain {
            name: format!("{name}-passthrough"),
            filters: vec![tcp_proxy_filter(unmatched, unmatched)],
            ..Default::default()
        }
    };
    let sni_matched = sni_matched && !chains.is_empty();
    Listener {
        name,
        address: Some(listener_address(address.ip, port)),
        bind_to_port: boolv(address.bound),
        traffic_direction: TrafficDirection::Outbound as i32,
        // SNI chains need the ClientHello read first.
        listener_filters: if sni_matched {
            vec![listener_filter(
                "envoy.filters.listener.tls_inspector",
                any(&envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector::default()),
            )]
        } else {
            Vec::new()
        },
        filter_chains: chains,
        default_filter_chain: Some(default_chain),
        ..Default::default()
    }
}

pub(super) fn cidr(text: &str) -> Option<CidrRange> {
    let (ip, len) = match text.split_once('/') {
        Some((ip, len)) => (ip, len.parse().ok()?),
        None => (text, if text.contains(':') { 128 } else { 32 }),
    };
    Some(CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: u32v(len),
    })
}
