//! Outbound TCP and TLS services on a sidecar: one filter chain per service (by VIP for TCP, by
//! SNI for TLS/HTTPS), sent where the VirtualService's `tcp` / `tls` routes say (weighted), else
//! to the service's own cluster. Pure.

use super::Index;
use super::cluster::outbound_name;
use super::route::{RouteCtx, destination_cluster};
use super::selected::SelectedRules;
use meshd_model::networking::RouteDestination;
use meshd_model::registry::{Port, Protocol, Service};

/// Where a TCP/TLS filter chain sends connections.
#[derive(Clone, Debug, PartialEq)]
pub enum L4Target {
    Cluster(String),
    Weighted(Vec<(String, u32)>),
}

/// One outbound L4 filter chain: matched by destination VIPs, or by SNI.
#[derive(Clone, Debug, PartialEq)]
pub struct L4Chain {
    pub name: String,
    pub vips: Vec<String>,
    pub sni: Vec<String>,
    pub target: L4Target,
    /// DestinationRule `connectionPool.tcp.idleTimeout` of the destination.
    pub idle_timeout: Option<std::time::Duration>,
}

/// The DestinationRule `connectionPool.tcp.idleTimeout` where `target` sends (its first
/// cluster: host, port and subset from the name), as a proxy in `ns` selected by `rules` sees
/// the rule.
pub fn idle_timeout(
    index: &Index,
    ns: &str,
    rules: &SelectedRules,
    target: &L4Target,
) -> Option<std::time::Duration> {
    let cluster = match target {
        L4Target::Cluster(c) => c.as_str(),
        L4Target::Weighted(cs) => cs.first()?.0.as_str(),
    };
    let mut parts = cluster.splitn(4, '|');
    let _direction = parts.next()?;
    let port: u32 = parts.next()?.parse().ok()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    let rule = index.rule_for(host, ns, rules)?;
    let subset = rule.subsets.iter().find(|s| s.name == subset);
    super::cluster::EffectivePolicy::resolve(rule.traffic_policy.as_ref(), subset, port)
        .connection_pool?
        .tcp?
        .idle_timeout
}

/// Where a tcp / tls route sends connections.
pub fn target(ctx: &RouteCtx<'_>, route: &[RouteDestination]) -> Option<L4Target> {
    match route {
        [] => None,
        [only] => Some(L4Target::Cluster(destination_cluster(
            ctx,
            &only.destination,
        ))),
        many => Some(L4Target::Weighted(
            many.iter()
                .filter(|d| d.weight.unwrap_or(0) > 0)
                .map(|d| {
                    (
                        destination_cluster(ctx, &d.destination),
                        d.weight.unwrap_or(0),
                    )
                })
                .collect(),
        )),
    }
}

/// The outbound chains for one non-HTTP port of a service, for a proxy in `namespace` with
/// `labels` (only when some route matches on `sourceLabels`, else `None`) selected by `rules`.
pub fn chains(
    index: &Index,
    (namespace, labels): (&str, Option<&meshd_model::networking::Labels>),
    rules: &SelectedRules,
    svc: &Service,
    port: &Port,
) -> Vec<L4Chain> {
    let own = L4Target::Cluster(outbound_name(port.number, "", &svc.hostname));
    let vs = index.mesh_virtual_services(&svc.hostname, namespace).next();
    let ctx = vs.map(|(ns, _)| RouteCtx {
        index,
        listener_port: port.number,
        namespace: ns,
        gateway: None,
        source: Some((namespace, labels)),
        rules,
    });
    let port_ok = |p: Option<u32>| p.is_none_or(|p| p == port.number);
    let mut out = Vec::new();
    if matches!(port.protocol, Protocol::Tls | Protocol::Https) {
        // TLS: by SNI. The VirtualService's tls routes first, then the service's own name.
        let mut taken: Vec<String> = Vec::new();
        if let (Some((_, vs)), Some(ctx)) = (vs, &ctx) {
            for (i, r) in vs.tls.iter().enumerate() {
                let Some(t) = target(ctx, &r.route) else {
                    continue;
                };
                let sni: Vec<String> = r
                    .matches
                    .iter()
                    .filter(|m| {
                        port_ok(m.port)
                            && ctx.gateway_listed(&m.gateways)
                            && ctx.source_admits(&m.source_labels, m.source_namespace.as_deref())
                    })
                    .flat_map(|m| m.sni_hosts.iter().cloned())
                    .filter(|h| !taken.contains(h))
                    .collect();
                if sni.is_empty() {
                    continue;
                }
                taken.extend(sni.iter().cloned());
                out.push(L4Chain {
                    name: format!("{}|tls|{i}", svc.hostname),
                    vips: Vec::new(),
                    sni,
                    idle_timeout: idle_timeout(index, namespace, rules, &t),
                    target: t,
                });
            }
        }
        if !taken.contains(&svc.hostname) {
            out.push(L4Chain {
                name: outbound_name(port.number, "", &svc.hostname),
                vips: Vec::new(),
                sni: vec![svc.hostname.clone()],
                idle_timeout: idle_timeout(index, namespace, rules, &own),
                target: own,
            });
        }
        return out;
    }
    // TCP: by VIP; the first tcp route that matches this port decides.
    let routed = match (vs, &ctx) {
        (Some((_, vs)), Some(ctx)) => vs
            .tcp
            .iter()
            .find(|r| {
                r.matches.is_empty()
                    || r.matches.iter().any(|m| {
                        port_ok(m.port)
                            && ctx.gateway_listed(&m.gateways)
                            && ctx.source_admits(&m.source_labels, m.source_namespace.as_deref())
                    })
            })
            .and_then(|r| target(ctx, &r.route)),
        _ => None,
    };
    let target = routed.unwrap_or(own);
    out.push(L4Chain {
        name: outbound_name(port.number, "", &svc.hostname),
        vips: svc.addresses.clone(),
        sni: Vec::new(),
        idle_timeout: idle_timeout(index, namespace, rules, &target),
        target,
    });
    out
}
