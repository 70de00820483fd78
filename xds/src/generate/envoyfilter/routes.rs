//! ROUTE_CONFIGURATION (MERGE), VIRTUAL_HOST (MERGE, ADD, REMOVE) and HTTP_ROUTE (MERGE, ADD,
//! REMOVE, INSERT_*) patches applied in order to a layer of route configurations. A route
//! configuration's port is its name's (`8080` outbound, `http.8080` on a gateway).

use super::filters::apply as apply_op;
use super::{Compiled, Work};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use meshd_model::envoyfilter::{FilterOperation, PatchContext, RouteConfigurationMatch};
use prost::Message;

fn port_of(rc_name: &str) -> u32 {
    rc_name
        .rsplit('.')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn config_matches(m: &RouteConfigurationMatch, rc: &RouteConfiguration) -> bool {
    m.matches_config(&rc.name, port_of(&rc.name))
}

/// Applies the route-layer patches, in order.
pub(super) fn apply(
    work: &mut Work<'_, RouteConfiguration>,
    _proxy: PatchContext,
    patches: &[&Compiled],
) {
    for p in patches {
        for name in work.names() {
            work.update(&name, |rc| match p {
                Compiled::RouteConfiguration(o) => match &o.value {
                    Some(v) if config_matches(&o.m, rc) => {
                        let patch = RouteConfiguration {
                            // The name is what listeners ask RDS for: a MERGE keeps it.
                            name: String::new(),
                            ..v.clone()
                        };
                        rc.merge(patch.encode_to_vec().as_slice()).is_ok()
                    }
                    _ => false,
                },
                Compiled::VirtualHost(o) if config_matches(&o.m, rc) => {
                    let named = o.m.vhost.as_ref().and_then(|v| v.name.as_deref());
                    match o.operation {
                        FilterOperation::Add => {
                            apply_op(&mut rc.virtual_hosts, o.operation, None, o.value.as_ref())
                        }
                        _ => apply_op(&mut rc.virtual_hosts, o.operation, named, o.value.as_ref()),
                    }
                }
                Compiled::HttpRoute(o) if config_matches(&o.m, rc) => {
                    let route =
                        o.m.vhost
                            .as_ref()
                            .and_then(|v| v.route.as_ref())
                            .and_then(|r| r.name.as_deref());
                    let mut changed = false;
                    for vh in rc
                        .virtual_hosts
                        .iter_mut()
                        .filter(|vh| o.m.matches_vhost(&vh.name))
                    {
                        changed |= apply_op(&mut vh.routes, o.operation, route, o.value.as_ref());
                    }
                    changed
                }
                _ => false,
            });
        }
    }
}
