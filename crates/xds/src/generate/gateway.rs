//! Gateway proxies (Envoy in router mode): one listener per Gateway server port, routes from the
//! VirtualServices bound to those Gateways.

use super::common::*;
use super::listener::{RouteSource, hcm, hcm_filter};
use super::{MeshSnapshot, route};
use crate::resource::{Resource, SharedResource, any};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost, virtual_host};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, TlsCertificate,
};
use meshd_model::networking::{Server, VirtualService};
use meshd_model::registry::selector_matches;
use std::collections::BTreeMap;

pub struct GatewayResources {
    pub listeners: BTreeMap<String, SharedResource>,
    pub routes: BTreeMap<String, SharedResource>,
}

fn server_allows(server: &Server, host: &str) -> bool {
    server.hosts.iter().any(|h| {
        let h = h.split_once('/').map(|(_, h)| h).unwrap_or(h);
        h == "*"
            || h == host
            || h.strip_prefix('*')
                .is_some_and(|suffix| host.ends_with(suffix))
    })
}

fn bound_to(vs: &VirtualService, vs_ns: &str, gw_ns: &str, gw_name: &str) -> bool {
    vs.gateways.iter().any(|g| match g.split_once('/') {
        Some((ns, name)) => ns == gw_ns && name == gw_name,
        None => g == gw_name && vs_ns == gw_ns,
    })
}

fn downstream_tls(
    server: &Server,
) -> Option<envoy_types::pb::envoy::config::core::v3::TransportSocket> {
    let tls = server.tls.as_ref()?;
    let (cert, key) = (tls.server_certificate.as_ref()?, tls.private_key.as_ref()?);
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![TlsCertificate {
                certificate_chain: Some(filename(cert)),
                private_key: Some(filename(key)),
                ..Default::default()
            }],
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    Some(tls_socket(any(&ctx)))
}

pub fn build(
    snapshot: &MeshSnapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> GatewayResources {
    let config = snapshot.config();
    let gateways: Vec<_> = config
        .gateways()
        .filter(|(_, g)| !g.selector.is_empty() && selector_matches(&g.selector, labels))
        .collect();
    let mut by_port: BTreeMap<u32, Vec<(&str, &str, &Server)>> = BTreeMap::new();
    for (o, g) in &gateways {
        for s in &g.servers {
            by_port.entry(s.port.number).or_default().push((
                o.meta.namespace(),
                o.meta.name.as_str(),
                s,
            ));
        }
    }
    let mut listeners = BTreeMap::new();
    let mut routes = BTreeMap::new();
    let mut gateway_filters = Vec::new();
    snapshot
        .patches
        .insert_http_filters(namespace, labels, true, &mut gateway_filters);
    for (port, servers) in by_port {
        let route_name = format!("http.{port}");
        let mut vhosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
        for (gw_ns, gw_name, server) in &servers {
            let redirect = server
                .tls
                .as_ref()
                .and_then(|t| t.https_redirect)
                .unwrap_or(false);
            for (vo, vs) in config.virtual_services() {
                if !bound_to(vs, vo.meta.namespace(), gw_ns, gw_name) {
                    continue;
                }
                let ctx = route::RouteCtx {
                    index: &snapshot.index,
                    listener_port: port,
                    namespace: vo.meta.namespace(),
                    gateway: Some((gw_ns, gw_name)),
                    source: Some((namespace, Some(labels))),
                };
                for host in vs.hosts.iter().filter(|h| server_allows(server, h)) {
                    let vh = vhosts.entry(host.clone()).or_insert_with(|| VirtualHost {
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
                    vh.routes.extend(route::http_routes(&ctx, &vs.http));
                }
            }
        }
        let mut rc = RouteConfiguration {
            name: route_name.clone(),
            virtual_hosts: vhosts.into_values().collect(),
            validate_clusters: boolv(false),
            ..Default::default()
        };
        snapshot
            .patches
            .patch_routes(&mut rc, port, namespace, true);
        routes.insert(
            route_name.clone(),
            Resource::encode(route_name.clone(), &rc),
        );
        let h = hcm(
            &format!("gateway_{port}"),
            RouteSource::Rds(route_name),
            false,
            &gateway_filters,
            &snapshot.opts,
        );
        let transport_socket = servers.iter().find_map(|(_, _, s)| downstream_tls(s));
        let name = format!("0.0.0.0_{port}");
        let l = Listener {
            name: name.clone(),
            address: Some(socket_address("0.0.0.0", port)),
            traffic_direction: TrafficDirection::Outbound as i32,
            filter_chains: vec![FilterChain {
                name: format!("gateway-{port}"),
                filters: vec![hcm_filter(&h)],
                transport_socket,
                ..Default::default()
            }],
            ..Default::default()
        };
        listeners.insert(name.clone(), Resource::encode(name, &l));
    }
    GatewayResources { listeners, routes }
}
