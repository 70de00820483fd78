//! Gateway proxies (Envoy in router mode): one listener per Gateway server port, routes from the
//! VirtualServices bound to those Gateways. As in Istio, the plaintext HTTP servers of a port
//! share its route table `http.<port>`; each TLS-terminating server (SIMPLE, MUTUAL,
//! OPTIONAL_MUTUAL, ISTIO_MUTUAL) gets its own filter chain (by SNI, its own certificate) and its own table
//! `https.<port>.<portName>.<gateway>.<namespace>`, with only its Gateway's VirtualServices for
//! its hosts (the names EnvoyFilters' `portName` and `gateway` select by). TLS PASSTHROUGH and
//! TCP servers proxy connections per the bound tls / tcp routes.

use super::common::*;
use super::downstream_tls::verifies_clients;
use super::gateway_l4::{self, GatewayServer};
use super::gateway_server::{bound_to, server_allows, server_names, server_tls_socket, tls_mode};
use super::l4::L4Target;
use super::listener::{RouteSource, hcm, hcm_filter, l4_proxy_filter};
use super::telemetry::Side;
use super::{MeshSnapshot, route};
use crate::resource::{Layer, LayerMap, Resource, any, reuse_layer};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, FilterChainMatch, Listener, ListenerFilter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost, virtual_host};
use meshd_model::networking::Server;
use meshd_model::registry::selector_matches;
use std::collections::BTreeMap;

pub struct GatewayResources {
    pub listeners: Layer,
    pub routes: Layer,
    /// SDS secrets of the servers' `credentialName`s, from the Secrets of the gateway's own
    /// namespace (as Istio: a gateway reads credentials only there).
    pub secrets: Layer,
    /// Outbound clusters when DestinationRules with a `workloadSelector` select the gateway
    /// (`None`: the mesh-wide ones).
    pub outbound: Option<super::selected::Outbound>,
    /// The SNI-DNAT clusters of its AUTO_PASSTHROUGH servers (`gateway_sni`).
    pub sni_clusters: Layer,
}

impl GatewayResources {
    /// These resources, keeping `old`'s layers and resources where they did not change.
    pub fn reusing(self, old: &GatewayResources) -> GatewayResources {
        GatewayResources {
            listeners: reuse_layer(Some(&old.listeners), self.listeners),
            routes: reuse_layer(Some(&old.routes), self.routes),
            secrets: reuse_layer(Some(&old.secrets), self.secrets),
            sni_clusters: reuse_layer(Some(&old.sni_clusters), self.sni_clusters),
            outbound: match (self.outbound, &old.outbound) {
                (Some(new), Some(old)) => Some(new.reusing(old)),
                (new, _) => new,
            },
        }
    }
}

/// A TCP proxy chain (TLS passthrough by SNI when `sni` is given).
fn l4_chain(
    name: &str,
    sni: Vec<String>,
    target: &L4Target,
    idle_timeout: Option<std::time::Duration>,
) -> FilterChain {
    let proxy = l4_proxy_filter(name, target, idle_timeout);
    FilterChain {
        name: name.into(),
        filter_chain_match: Some(FilterChainMatch {
            server_names: sni,
            ..Default::default()
        }),
        filters: vec![proxy],
        ..Default::default()
    }
}

/// Whether a server carries HTTP (HTTP, HTTPS, HTTP2, GRPC): an HTTP connection manager; else
/// TLS (passthrough by SNI) or TCP: a TCP proxy.
fn is_http(server: &Server) -> bool {
    matches!(
        server.port.protocol.to_ascii_uppercase().as_str(),
        "HTTP" | "HTTPS" | "HTTP2" | "GRPC"
    )
}

/// What HTTP routes are built from for a gateway proxy: the mesh, and the proxy's namespace and
/// labels (for `sourceNamespace` / `sourceLabels` matches).
struct HttpCtx<'a> {
    snapshot: &'a MeshSnapshot,
    namespace: &'a str,
    labels: &'a meshd_model::networking::Labels,
    rules: &'a super::selected::SelectedRules,
}

/// Adds to `table` (by host) the virtual hosts of the VirtualServices bound to `server`'s
/// Gateway (`gateway`: namespace, name) for the hosts the server allows; on a `plaintext`
/// server `httpsRedirect` makes them require TLS.
fn add_virtual_hosts(
    table: &mut BTreeMap<String, VirtualHost>,
    ctx: &HttpCtx<'_>,
    port: u32,
    (gw_ns, gw_name): (&str, &str),
    server: &Server,
    plaintext: bool,
) {
    let redirect = plaintext
        && server
            .tls
            .as_ref()
            .and_then(|t| t.https_redirect)
            .unwrap_or(false);
    for (vo, vs) in ctx.snapshot.config().virtual_services() {
        if !bound_to(vs, vo.meta.namespace(), gw_ns, gw_name) {
            continue;
        }
        let route_ctx = route::RouteCtx {
            index: &ctx.snapshot.index,
            listener_port: port,
            namespace: vo.meta.namespace(),
            gateway: Some((gw_ns, gw_name)),
            source: Some((ctx.namespace, Some(ctx.labels))),
            rules: ctx.rules,
        };
        for host in vs.hosts.iter().filter(|h| server_allows(server, h)) {
            let vh = table.entry(host.clone()).or_insert_with(|| VirtualHost {
                name: format!("{host}:{port}"),
                domains: if host == "*" {
                    vec!["*".into()]
                } else {
                    vec![host.clone(), format!("{host}:{port}")]
                },
                ..Default::default()
            });
            if redirect {
                vh.require_tls = virtual_host::TlsRequirementType::All as i32;
            }
            vh.routes.extend(route::http_routes(&route_ctx, &vs.http));
        }
    }
}

/// Where a server without `bind` listens, as istiod: every IPv4 address.
const ANY_ADDRESS: &str = "0.0.0.0";

pub fn build(
    snapshot: &MeshSnapshot,
    namespace: &str,
    labels: &meshd_model::networking::Labels,
) -> GatewayResources {
    let config = snapshot.config();
    let gateways: Vec<_> = config
        .gateways()
        .filter(|(_, g)| !g.selector.is_empty() && selector_matches(&g.selector, labels))
        .collect();
    // One listener per address the servers bind to (`bind`, else every address) and port.
    let mut by_port: BTreeMap<(u32, &str), Vec<GatewayServer<'_>>> = BTreeMap::new();
    for (o, g) in &gateways {
        for s in &g.servers {
            let bind = s.bind.as_deref().unwrap_or(ANY_ADDRESS);
            by_port.entry((s.port.number, bind)).or_default().push((
                o.meta.namespace(),
                o.meta.name.as_str(),
                s,
            ));
        }
    }
    let mut listeners = BTreeMap::new();
    let mut routes = BTreeMap::new();
    let mut gateway_filters = Vec::new();
    // AuthorizationPolicies selecting this gateway (or mesh-wide): RBAC ahead of the router
    // and of the TCP proxies.
    let authz = super::authz::gateway_policy(&snapshot.index, namespace, labels, &snapshot.opts);
    gateway_filters.extend(super::jwt::jwt_filter(
        config,
        &snapshot.index.root_namespace,
        namespace,
        labels,
    ));
    gateway_filters.extend(authz.http_filters);
    // The Telemetry policy selecting the gateway: its listeners are the client side.
    let telemetry_opts = snapshot.opts_for(namespace, labels);
    let rules = snapshot.index.selected_rules(namespace, labels);
    // Its servers' credentials and those its clusters originate TLS with, from its namespace.
    let (outbound, mut wants) = snapshot.gateway_outbound(&rules);
    let outbound_clusters = match &outbound {
        Some(o) => &o.clusters,
        None => &snapshot.clusters,
    };
    let mut sni_clusters = BTreeMap::new();
    let http_ctx = HttpCtx {
        snapshot,
        namespace,
        labels,
        rules: &rules,
    };
    let l4_chain = |name: &str, sni: Vec<String>, target: &L4Target| {
        let idle = super::l4::idle_timeout(&snapshot.index, namespace, &rules, target);
        let mut chain = l4_chain(name, sni, target, idle);
        for f in &mut chain.filters {
            *f = super::telemetry::with_tcp_log(std::mem::take(f), Side::Outbound, &telemetry_opts);
        }
        chain
            .filters
            .splice(0..0, authz.network_filters.iter().cloned());
        chain
    };
    for ((port, bind), servers) in by_port {
        let mut chains: Vec<FilterChain> = Vec::new();
        let http_servers: Vec<&(&str, &str, &Server)> =
            servers.iter().filter(|(_, _, s)| is_http(s)).collect();
        if !http_servers.is_empty() {
            let trust_domain = &snapshot.opts.trust_domain;
            // Istio's tables: the plaintext servers of the port share `http.<port>`, each
            // TLS-terminating server has its own (EnvoyFilters select it by portName and
            // gateway).
            let route_name = |gw_ns: &str, gw_name: &str, s: &Server| {
                if server_tls_socket(s, trust_domain, true).is_some() {
                    format!("https.{port}.{}.{gw_name}.{gw_ns}", s.port.name)
                } else {
                    format!("http.{port}")
                }
            };
            let mut tables: BTreeMap<String, BTreeMap<String, VirtualHost>> = BTreeMap::new();
            for (gw_ns, gw_name, server) in &http_servers {
                let table = tables
                    .entry(route_name(gw_ns, gw_name, server))
                    .or_default();
                let plaintext = server_tls_socket(server, trust_domain, true).is_none();
                add_virtual_hosts(table, &http_ctx, port, (gw_ns, gw_name), server, plaintext);
            }
            for (name, vhosts) in tables {
                let rc = RouteConfiguration {
                    name: name.clone(),
                    virtual_hosts: vhosts.into_values().collect(),
                    validate_clusters: boolv(false),
                    ..Default::default()
                };
                routes.insert(name.clone(), Resource::encode(name, &rc));
            }
            // One chain per TLS server (by SNI, with its own certificate), one for plaintext.
            let plaintext = http_servers
                .iter()
                .any(|(_, _, s)| server_tls_socket(s, trust_domain, true).is_none());
            for (gw_ns, gw_name, s) in &http_servers {
                let socket = server_tls_socket(s, trust_domain, true);
                let tls = socket.is_some();
                let h = hcm(
                    &format!("gateway_{port}"),
                    RouteSource::Rds(route_name(gw_ns, gw_name, s)),
                    false,
                    &gateway_filters,
                    &telemetry_opts,
                );
                chains.push(FilterChain {
                    name: format!("gateway-{port}-{}", s.port.name),
                    filter_chain_match: Some(FilterChainMatch {
                        server_names: if tls { server_names(s) } else { Vec::new() },
                        transport_protocol: match (tls, plaintext) {
                            (true, true) => "tls".into(),
                            (false, _) if http_servers.len() > 1 => "raw_buffer".into(),
                            _ => String::new(),
                        },
                        ..Default::default()
                    }),
                    filters: vec![hcm_filter(&h)],
                    transport_socket: socket,
                    ..Default::default()
                });
            }
        }
        // TLS and TCP servers: the bound VirtualServices' tls / tcp routes.
        let l4 = gateway_l4::L4Ctx {
            snapshot,
            namespace,
            labels,
            rules: &rules,
            port,
            chain: &l4_chain,
        };
        for server in servers.iter().filter(|(_, _, s)| !is_http(s)) {
            chains.extend(l4.server_chains(*server, outbound_clusters, &mut sni_clusters));
        }
        // Envoy refuses two chains with the same match: the first claim wins.
        let mut seen = Vec::new();
        chains.retain(|c| {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            if seen.contains(&m) {
                false
            } else {
                seen.push(m);
                true
            }
        });
        super::l4::sni_under_prefixes(&mut chains);
        let inspect = chains.iter().any(|c| {
            c.filter_chain_match
                .as_ref()
                .is_some_and(|m| !m.server_names.is_empty() || !m.transport_protocol.is_empty())
        });
        let name = super::listener::OutboundAddress {
            ip: bind,
            bound: true,
        }
        .listener_name(port);
        let l = Listener {
            name: name.clone(),
            address: Some(listener_address(bind, port)),
            traffic_direction: TrafficDirection::Outbound as i32,
            listener_filters: if inspect {
                vec![ListenerFilter {
                    name: "envoy.filters.listener.tls_inspector".into(),
                    config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                        &envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector::default(),
                    ))),
                    ..Default::default()
                }]
            } else {
                Vec::new()
            },
            filter_chains: chains,
            ..Default::default()
        };
        listeners.insert(name.clone(), Resource::encode(name, &l));
    }
    server_wants(&gateways, &mut wants);
    GatewayResources {
        listeners: LayerMap::new(listeners),
        routes: LayerMap::new(routes),
        secrets: LayerMap::new(super::credential::secrets(config, namespace, &wants)),
        outbound,
        sni_clusters: LayerMap::new(sni_clusters),
    }
}

/// What `gateways`' servers ask of their `credentialName`s: the certificate, and the CA where
/// the server checks clients.
fn server_wants(
    gateways: &[(
        &meshd_model::ConfigObject,
        &meshd_model::networking::Gateway,
    )],
    wants: &mut super::credential::CredentialWants,
) {
    for (_, g) in gateways {
        for server in &g.servers {
            if let Some(name) = server.tls.as_ref().and_then(|t| t.credential_name.as_ref()) {
                let ca = tls_mode(server).as_deref().is_some_and(verifies_clients);
                super::credential::want(wants, name, true, ca);
            }
        }
    }
}

#[cfg(test)]
#[path = "gateway_tests.rs"]
mod tests;
