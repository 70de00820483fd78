//! ROUTE_CONFIGURATION (MERGE), VIRTUAL_HOST (MERGE, ADD, REMOVE) and HTTP_ROUTE (MERGE, ADD,
//! REMOVE, INSERT_*) patches applied in order to a layer of route configurations. What a route
//! configuration is comes from its name, as in Istio: `8080` outbound; on a gateway `http.8080`
//! (the plaintext servers of the port) or `https.443.<portName>.<gateway>.<namespace>` (one
//! TLS-terminating server).

use super::filters::{apply as apply_op, apply_where};
use super::{Compiled, Work};
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost, route};
use meshd_model::envoyfilter::{
    FilterOperation, GatewayServer, PatchContext, RouteAction, RouteConfigurationMatch,
};
use prost::Message;

/// The port a route configuration is served on, and the gateway server it was generated for
/// (only a TLS-terminating server's has one). A gateway's name may contain dots, its namespace
/// cannot: the namespace is the last part, the Gateway's name what lies between the port name
/// and it.
fn parse_name(rc_name: &str) -> (u32, Option<GatewayServer<'_>>) {
    let port = |p: &str| p.parse().unwrap_or(0);
    if let Some(rest) = rc_name.strip_prefix("https.") {
        let mut parts = rest.splitn(3, '.');
        let (Some(p), Some(port_name), Some(gateway)) = (parts.next(), parts.next(), parts.next())
        else {
            return (0, None);
        };
        let server = gateway
            .rsplit_once('.')
            .map(|(gateway_name, gateway_namespace)| GatewayServer {
                port_name,
                gateway_namespace,
                gateway_name,
            });
        return (port(p), server);
    }
    (port(rc_name.strip_prefix("http.").unwrap_or(rc_name)), None)
}

fn config_matches(
    m: &RouteConfigurationMatch,
    rc: &RouteConfiguration,
    proxy: PatchContext,
) -> bool {
    let (port, server) = parse_name(&rc.name);
    m.matches_config(&rc.name, port, server, proxy == PatchContext::Gateway)
}

/// The kind of a route's action, by Istio's names for them (`None`: another kind).
fn action_of(r: &Route) -> Option<RouteAction> {
    match r.action.as_ref()? {
        route::Action::Route(_) => Some(RouteAction::Route),
        route::Action::Redirect(_) => Some(RouteAction::Redirect),
        route::Action::DirectResponse(_) => Some(RouteAction::DirectResponse),
        _ => None,
    }
}

/// Applies the route-layer patches, in order.
pub(super) fn apply(
    work: &mut Work<'_, RouteConfiguration>,
    proxy: PatchContext,
    patches: &[&Compiled],
) {
    for p in patches {
        for name in work.names() {
            work.update(&name, |rc| match p {
                Compiled::RouteConfiguration(o) => match &o.value {
                    Some(v) if config_matches(&o.m, rc, proxy) => {
                        let patch = RouteConfiguration {
                            // The name is what listeners ask RDS for: a MERGE keeps it.
                            name: String::new(),
                            ..v.clone()
                        };
                        rc.merge(patch.encode_to_vec().as_slice()).is_ok()
                    }
                    _ => false,
                },
                Compiled::VirtualHost(o) if config_matches(&o.m, rc, proxy) => match o.operation {
                    FilterOperation::Add => {
                        apply_op(&mut rc.virtual_hosts, o.operation, None, o.value.as_ref())
                    }
                    _ => apply_where(
                        &mut rc.virtual_hosts,
                        o.operation,
                        Some(|vh: &VirtualHost| o.m.matches_vhost(&vh.name, &vh.domains)),
                        o.value.as_ref(),
                    ),
                },
                Compiled::HttpRoute(o) if config_matches(&o.m, rc, proxy) => {
                    let selects = o.m.selects_routes();
                    let mut changed = false;
                    for vh in rc
                        .virtual_hosts
                        .iter_mut()
                        .filter(|vh| o.m.matches_vhost(&vh.name, &vh.domains))
                    {
                        let picked = |r: &Route| o.m.matches_route(&r.name, action_of(r));
                        changed |= apply_where(
                            &mut vh.routes,
                            o.operation,
                            selects.then_some(picked),
                            o.value.as_ref(),
                        );
                    }
                    changed
                }
                _ => false,
            });
        }
    }
}
