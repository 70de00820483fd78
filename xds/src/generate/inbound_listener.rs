//! A sidecar's inbound listeners: the capture listener (15006) that serves every port iptables
//! redirects, and a bound listener per Sidecar ingress port with `captureMode: NONE`. Both serve
//! a port with the same chains: mesh mTLS per PeerAuthentication (or the listener's own TLS),
//! the policy filters, and the app behind the port's inbound cluster.

use super::GenOptions;
use super::cluster::{AppEndpoint, BLACKHOLE, inbound_name};
use super::common::*;
use super::downstream_tls;
use super::listener::{RouteSource, hcm, hcm_filter, listener_filter, tcp_proxy_filter};
use super::telemetry::{self, Side};
use crate::resource::{Layer, LayerMap, any};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use meshd_model::networking::{ConnectionPoolSettings, ServerTlsSettings};
use meshd_model::registry::Protocol;
use meshd_model::security::MtlsMode;

pub const VIRTUAL_INBOUND: &str = "virtualInbound";
pub const INBOUND_PORT: u32 = 15006;

/// One inbound port of the workload, as the inbound listeners serve it.
pub struct InboundPort {
    pub port: u32,
    pub app: AppEndpoint,
    pub protocol: Protocol,
    pub mode: MtlsMode,
    /// Policy filters (authorization) ahead of the router, for HTTP ports.
    pub http_filters: Vec<HttpFilter>,
    /// Policy filters ahead of the proxy filter, for TCP ports.
    pub network_filters: Vec<Filter>,
    /// The inbound cluster's limits: the ingress listener's pool, else the Sidecar's.
    pub pool: Option<ConnectionPoolSettings>,
    /// TLS the sidecar terminates with the listener's files, in place of mesh mTLS.
    pub tls: Option<ServerTlsSettings>,
    /// Under `captureMode: NONE`, the address the port's own listener binds; `None`: the port
    /// is reached through capture (15006).
    pub bind: Option<String>,
}

impl InboundPort {
    pub fn http(&self) -> bool {
        self.protocol.is_http()
    }
}

/// 15006: captured inbound connections, matched by original destination port. The ports with a
/// listener of their own are left out: iptables does not redirect them.
pub fn virtual_inbound(ports: &[InboundPort], opts: &GenOptions) -> Listener {
    let mut chains: Vec<FilterChain> = ports
        .iter()
        .filter(|p| p.bind.is_none())
        .flat_map(|p| port_chains(p, opts))
        .collect();
    if chains.is_empty() {
        // Envoy rejects a listener without chains; a workload serving no port refuses all.
        chains.push(FilterChain {
            name: "virtualInbound-blackhole".into(),
            filters: vec![tcp_proxy_filter(BLACKHOLE, BLACKHOLE)],
            ..Default::default()
        });
    }
    Listener {
        name: VIRTUAL_INBOUND.into(),
        address: Some(socket_address("0.0.0.0", INBOUND_PORT)),
        traffic_direction: TrafficDirection::Inbound as i32,
        listener_filters: vec![
            listener_filter(
                "envoy.filters.listener.original_dst",
                any(&envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst::default()),
            ),
            tls_inspector(),
        ],
        filter_chains: chains,
        ..Default::default()
    }
}

/// The listener a `captureMode: NONE` ingress port binds (`bind`:`port`), clients sending to
/// that address directly. Named apart from the outbound listener of a service port with the
/// same number (`0.0.0.0_PORT`), which `bind: 0.0.0.0` would otherwise replace unseen: under
/// its own name Envoy reports the two addresses' clash.
pub fn bound_inbound(p: &InboundPort, opts: &GenOptions) -> Option<Listener> {
    let bind = p.bind.as_deref()?;
    Some(Listener {
        name: format!("inbound_{bind}_{}", p.port),
        address: Some(socket_address(bind, p.port)),
        traffic_direction: TrafficDirection::Inbound as i32,
        listener_filters: vec![tls_inspector()],
        filter_chains: port_chains(p, opts),
        ..Default::default()
    })
}

fn tls_inspector() -> ListenerFilter {
    listener_filter(
        "envoy.filters.listener.tls_inspector",
        any(&envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector::default()),
    )
}

/// A port's chains: its listener TLS alone when it has one (a client of it is outside the mesh
/// and holds no mesh identity), else mTLS and/or plaintext per its PeerAuthentication mode.
fn port_chains(p: &InboundPort, opts: &GenOptions) -> Vec<FilterChain> {
    let cluster = inbound_name(p.port);
    let chain_match = |transport: &str| {
        Some(FilterChainMatch {
            destination_port: u32v(p.port),
            transport_protocol: transport.into(),
            ..Default::default()
        })
    };
    let mut chains = Vec::new();
    if let Some(tls) = &p.tls {
        let mode = tls.mode.as_deref().unwrap_or("SIMPLE").to_ascii_uppercase();
        let alpn: &[&str] = if p.http() { &["h2", "http/1.1"] } else { &[] };
        // Validation admits only SIMPLE and MUTUAL with their files: a context is always made.
        if let Some(socket) = downstream_tls::server_tls(&mode, tls, alpn) {
            chains.push(FilterChain {
                name: format!("{cluster}-tls"),
                filter_chain_match: chain_match("tls"),
                transport_socket: Some(socket),
                filters: port_filters(p, &cluster, opts),
                ..Default::default()
            });
        }
        return chains;
    }
    if p.mode != MtlsMode::Disable {
        chains.push(FilterChain {
            name: format!("{cluster}-mtls"),
            filter_chain_match: chain_match("tls"),
            transport_socket: Some(istio_mutual_downstream(&opts.trust_domain)),
            filters: port_filters(p, &cluster, opts),
            ..Default::default()
        });
    }
    if p.mode != MtlsMode::Strict {
        chains.push(FilterChain {
            name: format!("{cluster}-plaintext"),
            filter_chain_match: chain_match("raw_buffer"),
            filters: port_filters(p, &cluster, opts),
            ..Default::default()
        });
    }
    chains
}

/// The filters of one of a port's chains: an HTTP connection manager routing everything to the
/// app, or the TCP proxy to it, each behind the port's policy filters.
fn port_filters(p: &InboundPort, cluster: &str, opts: &GenOptions) -> Vec<Filter> {
    if !p.http() {
        let mut filters = p.network_filters.clone();
        filters.push(telemetry::with_tcp_log(
            tcp_proxy_filter(cluster, cluster),
            Side::Inbound,
            opts,
        ));
        return filters;
    }
    let rc = RouteConfiguration {
        name: format!("inbound|{}||", p.port),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{}", p.port),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "default".into(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.to_string(),
                    )),
                    timeout: Some(duration(std::time::Duration::ZERO)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        validate_clusters: boolv(false),
        ..Default::default()
    };
    let h = hcm(
        &format!("inbound_0.0.0.0_{}", p.port),
        RouteSource::Inline(rc),
        true,
        &p.http_filters,
        opts,
    );
    vec![hcm_filter(&h)]
}

/// The outbound listeners, less those on an address an inbound listener binds (`captureMode:
/// NONE` with a wildcard `bind` on a port the proxy also sees outbound): Envoy refuses two
/// listeners on one address, the whole update with them, and Istio keeps the inbound one.
pub(super) fn outbound_beside(outbound: &Layer, inbound: &Layer) -> Layer {
    let taken: Vec<&str> = inbound
        .keys()
        .filter_map(|n| n.strip_prefix("inbound_"))
        .filter(|n| outbound.contains_key(*n))
        .collect();
    if taken.is_empty() {
        return outbound.clone();
    }
    LayerMap::new(
        outbound
            .iter()
            .filter(|(n, _)| !taken.contains(&n.as_str()))
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect(),
    )
}
