//! Outbound TCP and TLS services on a sidecar: one filter chain per service (by VIP for TCP, by
//! SNI for TLS/HTTPS), sent where the VirtualService's `tcp` / `tls` routes say (weighted), else
//! to the service's own cluster. A route matching `destinationSubnets` gets a chain of its own
//! for the part of the service's addresses inside those subnets: Envoy picks the chain with the
//! longest matching destination prefix, so routes keep their first-match order by never
//! claiming what an earlier route took. Pure.

use super::Index;
use super::cluster::outbound_name;
use super::route::{RouteCtx, destination_cluster};
use super::selected::SelectedRules;
use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::FilterChain;
use ipnet::IpNet;
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
    super::cluster::EffectivePolicy::resolve(rule.traffic_policy.as_deref(), subset, port)
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
    if matches!(port.protocol, Protocol::Tls | Protocol::Https) {
        return tls_chains(index, namespace, rules, svc, port, vs.zip(ctx));
    }
    // TCP: by VIP. The first tcp route matching this port without subnets decides for what
    // the subnet routes before it did not take.
    let mut out = Vec::new();
    let mut taken: Vec<IpNet> = Vec::new();
    let mut routed = None;
    if let (Some((_, vs)), Some(ctx)) = (vs, &ctx) {
        for (i, r) in vs.tcp.iter().enumerate() {
            let applicable: Vec<_> = r
                .matches
                .iter()
                .filter(|m| {
                    port_ok(m.port)
                        && ctx.gateway_listed(&m.gateways)
                        && ctx.source_admits(&m.source_labels, m.source_namespace.as_deref())
                })
                .collect();
            if !r.matches.is_empty() && applicable.is_empty() {
                continue;
            }
            if r.matches.is_empty() || applicable.iter().any(|m| m.destination_subnets.is_empty()) {
                routed = target(ctx, &r.route);
                break;
            }
            let subnets = applicable.iter().flat_map(|m| &m.destination_subnets);
            let nets = claim(&mut taken, subnets, &svc.addresses);
            let Some(t) = target(ctx, &r.route).filter(|_| !nets.is_empty()) else {
                continue;
            };
            out.push(L4Chain {
                name: format!("{}|tcp|{i}", svc.hostname),
                vips: nets,
                sni: Vec::new(),
                idle_timeout: idle_timeout(index, namespace, rules, &t),
                target: t,
            });
        }
    }
    let target = routed.unwrap_or(own);
    // An address a subnet route took whole is that route's alone: Envoy refuses two chains
    // matching the same prefix.
    let vips: Vec<String> = svc
        .addresses
        .iter()
        .filter(|a| net(a).is_none_or(|a| !taken.contains(&a)))
        .cloned()
        .collect();
    if vips.is_empty() && !svc.addresses.is_empty() {
        return out;
    }
    out.push(L4Chain {
        name: outbound_name(port.number, "", &svc.hostname),
        vips,
        sni: Vec::new(),
        idle_timeout: idle_timeout(index, namespace, rules, &target),
        target,
    });
    out
}

/// The chains of a TLS (or HTTPS) port: by SNI, the VirtualService's tls routes first (a match
/// with `destinationSubnets` only for those addresses), then the service's own name.
fn tls_chains(
    index: &Index,
    namespace: &str,
    rules: &SelectedRules,
    svc: &Service,
    port: &Port,
    routes: Option<(
        (&str, &meshd_model::networking::VirtualService),
        RouteCtx<'_>,
    )>,
) -> Vec<L4Chain> {
    let own = L4Target::Cluster(outbound_name(port.number, "", &svc.hostname));
    let port_ok = |p: Option<u32>| p.is_none_or(|p| p == port.number);
    let mut out = Vec::new();
    // SNI names claimed for every address, and (subnet, name) pairs claimed for some.
    let mut taken: Vec<String> = Vec::new();
    let mut taken_nets: Vec<(IpNet, String)> = Vec::new();
    if let Some(((_, vs), ctx)) = &routes {
        for (i, r) in vs.tls.iter().enumerate() {
            let Some(t) = target(ctx, &r.route) else {
                continue;
            };
            let applicable = r.matches.iter().filter(|m| {
                port_ok(m.port)
                    && ctx.gateway_listed(&m.gateways)
                    && ctx.source_admits(&m.source_labels, m.source_namespace.as_deref())
            });
            let mut sni: Vec<String> = Vec::new();
            for (j, m) in applicable.enumerate() {
                let names = m
                    .sni_hosts
                    .iter()
                    .filter(|h| !taken.contains(h) && !sni.contains(h));
                if m.destination_subnets.is_empty() {
                    sni.extend(names.cloned().collect::<Vec<_>>());
                    continue;
                }
                let names: Vec<String> = names.cloned().collect();
                let mut nets: Vec<IpNet> = Vec::new();
                for s in &m.destination_subnets {
                    let within = if svc.addresses.is_empty() {
                        net(s).into_iter().collect()
                    } else {
                        intersect(s, &svc.addresses)
                    };
                    for n in within {
                        if !nets.contains(&n)
                            && names.iter().all(|h| {
                                !taken_nets.iter().any(|(t, th)| th == h && t.contains(&n))
                            })
                        {
                            nets.push(n);
                        }
                    }
                }
                if names.is_empty() || nets.is_empty() {
                    continue;
                }
                for n in &nets {
                    taken_nets.extend(names.iter().map(|h| (*n, h.clone())));
                }
                out.push(L4Chain {
                    name: format!("{}|tls|{i}|{j}", svc.hostname),
                    vips: nets.iter().map(IpNet::to_string).collect(),
                    sni: names,
                    idle_timeout: idle_timeout(index, namespace, rules, &t),
                    target: t.clone(),
                });
            }
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
    out
}

/// Whether `subnet` is a network no earlier route took (then it is taken now).
pub(super) fn unclaimed(taken: &mut Vec<IpNet>, subnet: &str) -> bool {
    match net(subnet) {
        Some(n) if !taken.iter().any(|t| t.contains(&n)) => {
            taken.push(n);
            true
        }
        _ => false,
    }
}

/// An address or CIDR as a network with its host bits cleared.
fn net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

/// Where `subnet` and `addresses` overlap: for each address, the narrower of the two when one
/// holds the other (two CIDRs never overlap in part).
fn intersect(subnet: &str, addresses: &[String]) -> Vec<IpNet> {
    let Some(s) = net(subnet) else {
        return Vec::new();
    };
    addresses
        .iter()
        .filter_map(|a| net(a))
        .filter_map(|a| {
            if a.contains(&s) {
                Some(s)
            } else if s.contains(&a) {
                Some(a)
            } else {
                None
            }
        })
        .collect()
}

/// The parts of `addresses` inside `subnets` that no earlier route took, now taken; as CIDR
/// text.
fn claim<'a>(
    taken: &mut Vec<IpNet>,
    subnets: impl Iterator<Item = &'a String>,
    addresses: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    for s in subnets {
        for n in intersect(s, addresses) {
            // Inside what an earlier route took: that route's, being first.
            if !taken.iter().any(|t| t.contains(&n)) {
                taken.push(n);
                out.push(n.to_string());
            }
        }
    }
    out
}

/// Envoy narrows a connection by destination address before it looks at the SNI, and never
/// goes back: under an address that some chain matches together with SNI names, every name
/// another chain matches on any address needs a chain there too, or a connection to that
/// address with that name would fall to the default chain.
pub(super) fn sni_under_prefixes(chains: &mut Vec<FilterChain>) {
    let match_of = |c: &FilterChain| c.filter_chain_match.clone().unwrap_or_default();
    let mut prefixes: Vec<CidrRange> = Vec::new();
    for c in chains.iter() {
        let m = match_of(c);
        if m.server_names.is_empty() {
            continue;
        }
        for p in m.prefix_ranges {
            if !prefixes.contains(&p) {
                prefixes.push(p);
            }
        }
    }
    let anywhere: Vec<FilterChain> = chains
        .iter()
        .filter(|c| {
            let m = match_of(c);
            m.prefix_ranges.is_empty() && !m.server_names.is_empty()
        })
        .cloned()
        .collect();
    let mut copies = Vec::new();
    for p in &prefixes {
        let taken = |name: &String| {
            chains.iter().any(|c| {
                let m = match_of(c);
                m.prefix_ranges.contains(p) && m.server_names.contains(name)
            })
        };
        for c in &anywhere {
            let mut m = match_of(c);
            m.server_names.retain(|n| !taken(n));
            if m.server_names.is_empty() {
                continue;
            }
            m.prefix_ranges = vec![p.clone()];
            let len = p.prefix_len.as_ref().map_or(0, |l| l.value);
            copies.push(FilterChain {
                name: format!("{}|{}/{len}", c.name, p.address_prefix),
                filter_chain_match: Some(m),
                ..c.clone()
            });
        }
    }
    chains.extend(copies);
}

#[cfg(test)]
#[path = "l4_tests.rs"]
mod tests;
