//! A Gateway's TLS and TCP servers as filter chains: TLS PASSTHROUGH by SNI per the bound
//! VirtualServices' `tls` routes, AUTO_PASSTHROUGH by the mesh's SNI names (`gateway_sni`),
//! TCP servers per their `tcp` routes, and TLS servers that terminate TLS themselves (SIMPLE,
//! MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL): by SNI, with their own certificate, then per the
//! `tcp` routes, as Istio routes the decrypted stream.

use super::gateway_server::{
    bound_to, server_allows, server_names, server_tls_socket, tls_mode, with_subnets,
};
use super::l4::L4Target;
use super::selected::SelectedRules;
use super::{MeshSnapshot, gateway_sni, route};
use crate::resource::{Layer, SharedResource};
use envoy_types::pb::envoy::config::listener::v3::FilterChain;
use meshd_model::networking::{Server, VirtualService};
use std::collections::BTreeMap;

/// A server with the namespace and name of its Gateway.
pub(super) type GatewayServer<'a> = (&'a str, &'a str, &'a Server);

/// What the TLS and TCP servers of one gateway port are built from.
pub(super) struct L4Ctx<'a> {
    pub snapshot: &'a MeshSnapshot,
    /// The gateway proxy's namespace and labels (sources of route matches).
    pub namespace: &'a str,
    pub labels: &'a meshd_model::networking::Labels,
    pub rules: &'a SelectedRules,
    pub port: u32,
    /// A TCP proxy chain to a target, with the gateway's telemetry and network policy filters.
    pub chain: &'a dyn Fn(&str, Vec<String>, &L4Target) -> FilterChain,
}

impl L4Ctx<'_> {
    pub fn server_chains(
        &self,
        (gw_ns, gw_name, server): GatewayServer<'_>,
        outbound_clusters: &Layer,
        sni_clusters: &mut BTreeMap<String, SharedResource>,
    ) -> Vec<FilterChain> {
        let mut chains = Vec::new();
        if tls_mode(server).as_deref() == Some(gateway_sni::AUTO_PASSTHROUGH) {
            let dnat =
                gateway_sni::clusters(outbound_clusters.iter(), |host| server_allows(server, host));
            for sni in dnat.keys() {
                let target = L4Target::Cluster(sni.clone());
                chains.push((self.chain)(sni, vec![sni.clone()], &target));
            }
            sni_clusters.extend(dnat);
            return chains;
        }
        let tls = server.port.protocol.eq_ignore_ascii_case("TLS");
        let terminated =
            server_tls_socket(server, &self.snapshot.opts.trust_domain, false).filter(|_| tls);
        for (vo, vs) in self.snapshot.config().virtual_services() {
            if !bound_to(vs, vo.meta.namespace(), gw_ns, gw_name) {
                continue;
            }
            let ctx = route::RouteCtx {
                index: &self.snapshot.index,
                listener_port: self.port,
                namespace: vo.meta.namespace(),
                gateway: Some((gw_ns, gw_name)),
                source: Some((self.namespace, Some(self.labels))),
                rules: self.rules,
            };
            if tls && terminated.is_none() {
                chains.extend(self.passthrough_chains(&ctx, server, vs));
            } else {
                chains.extend(self.tcp_chains(&ctx, vs));
            }
        }
        if let Some(socket) = terminated {
            let names = server_names(server);
            for c in &mut chains {
                c.filter_chain_match.get_or_insert_default().server_names = names.clone();
                c.transport_socket = Some(socket.clone());
            }
        }
        chains
    }

    /// Whether a route match applies on this gateway port for this proxy.
    fn applicable(
        &self,
        ctx: &route::RouteCtx<'_>,
        (port, gateways): (Option<u32>, &[String]),
        labels: &meshd_model::networking::Labels,
        namespace: &Option<String>,
    ) -> bool {
        port.is_none_or(|p| p == self.port)
            && ctx.gateway_listed(gateways)
            && ctx.source_admits(labels, namespace.as_deref())
    }

    /// TLS PASSTHROUGH: chains by SNI per the `tls` routes.
    fn passthrough_chains(
        &self,
        ctx: &route::RouteCtx<'_>,
        server: &Server,
        vs: &VirtualService,
    ) -> Vec<FilterChain> {
        let port = self.port;
        let mut chains = Vec::new();
        for r in &vs.tls {
            let Some(target) = super::l4::target(ctx, &r.route) else {
                continue;
            };
            let mut sni: Vec<String> = Vec::new();
            for m in r.matches.iter().filter(|m| {
                self.applicable(
                    ctx,
                    (m.port, &m.gateways),
                    &m.source_labels,
                    &m.source_namespace,
                )
            }) {
                let names = m
                    .sni_hosts
                    .iter()
                    .filter(|h| server_allows(server, h))
                    .cloned();
                if m.destination_subnets.is_empty() {
                    sni.extend(names);
                    continue;
                }
                // A match on the connection's destination (the gateway's address).
                let names: Vec<String> = names.collect();
                if names.is_empty() {
                    continue;
                }
                let mut chain = (self.chain)(&format!("gateway-{port}-tls"), names, &target);
                with_subnets(&mut chain, &m.destination_subnets);
                chains.push(chain);
            }
            if !sni.is_empty() {
                chains.push((self.chain)(&format!("gateway-{port}-tls"), sni, &target));
            }
        }
        chains
    }

    /// A TCP stream (plain, or once the server decrypted it): the first applicable `tcp` route,
    /// with routes matching on destination subnets before it, in order.
    fn tcp_chains(&self, ctx: &route::RouteCtx<'_>, vs: &VirtualService) -> Vec<FilterChain> {
        let port = self.port;
        let mut chains = Vec::new();
        let mut taken = Vec::new();
        for r in &vs.tcp {
            let matched: Vec<_> = r
                .matches
                .iter()
                .filter(|m| {
                    self.applicable(
                        ctx,
                        (m.port, &m.gateways),
                        &m.source_labels,
                        &m.source_namespace,
                    )
                })
                .collect();
            if !r.matches.is_empty() && matched.is_empty() {
                continue;
            }
            let Some(target) = super::l4::target(ctx, &r.route) else {
                continue;
            };
            let mut chain = (self.chain)(&format!("gateway-{port}-tcp"), Vec::new(), &target);
            if r.matches.is_empty() || matched.iter().any(|m| m.destination_subnets.is_empty()) {
                chains.push(chain);
                break;
            }
            let subnets: Vec<String> = matched
                .iter()
                .flat_map(|m| m.destination_subnets.iter().cloned())
                .filter(|s| super::l4::unclaimed(&mut taken, s))
                .collect();
            if !subnets.is_empty() {
                with_subnets(&mut chain, &subnets);
                chains.push(chain);
            }
        }
        chains
    }
}
