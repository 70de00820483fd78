//! Checks one object on its own; cross-object checks live in `mesh`.

use crate::networking::{HttpRoute, StringMatch, StringMatchKind, TlsMode};
use crate::{ConfigObject, Spec};
use std::collections::BTreeSet;
use std::net::IpAddr;

mod authz;
mod entries;
mod gateway;
mod lb;
mod request_authn;
mod selector;
mod sidecar;
mod telemetry;

type Check = Result<(), String>;

fn port(n: u32, what: &str) -> Check {
    if n == 0 || n > 65535 {
        return Err(format!("{what}: port {n} is out of range 1-65535"));
    }
    Ok(())
}

/// A unix socket address after `unix://` as Envoy's pipe takes it: an absolute path or an
/// abstract name, never empty.
fn socket_path(path: &str) -> bool {
    path.len() > 1 && (path.starts_with('/') || path.starts_with('@'))
}

/// Envoy's bound on a ring hash's `minimum_ring_size`; a larger one is refused by every proxy.
const MAX_RING_SIZE: u64 = 8_388_608;

/// An HTTP status a route may answer with (Envoy refuses others, and the proxy with them).
fn http_status(n: u32, what: &str) -> Check {
    if !(200..=599).contains(&n) {
        return Err(format!("{what}: HTTP status {n} is out of range 200-599"));
    }
    Ok(())
}

/// Destination weights, added without overflow (u32 weights once wrapped round to 100).
fn weights_total(weights: impl Iterator<Item = Option<u32>>) -> u64 {
    weights.map(|w| u64::from(w.unwrap_or(0))).sum()
}

fn destination(d: &crate::networking::Destination, what: &str) -> Check {
    if d.host.is_empty() {
        return Err(format!("{what}.host is empty"));
    }
    if let Some(p) = &d.port {
        port(p.number, &format!("{what}.port.number"))?;
    }
    Ok(())
}

/// Why `targetRef`/`targetRefs` (`field`) is refused on a kind that selects workloads with
/// `selector_field`: one message for every kind.
pub(crate) fn target_refs_refused(field: &str, selector_field: &str) -> String {
    format!(
        "spec.{field}: not supported — valid Istio, but it attaches to Kubernetes Gateway API gateways and waypoints, which meshd does not serve; select the workloads with `{selector_field}`"
    )
}

fn address_or_cidr(text: &str, what: &str) -> Check {
    if text.parse::<IpAddr>().is_ok() || text.parse::<ipnet::IpNet>().is_ok() {
        Ok(())
    } else {
        Err(format!("{what}: `{text}` is not an IP address or CIDR"))
    }
}

fn string_match(m: &StringMatch, what: &str) -> Check {
    match m.kind() {
        None => Err(format!("{what}: set exactly one of exact, prefix, regex")),
        Some(StringMatchKind::Regex(re)) => regex::Regex::new(re)
            .map(|_| ())
            .map_err(|e| format!("{what}: invalid regex `{re}`: {e}")),
        Some(_) => Ok(()),
    }
}

fn percent(value: f64, what: &str) -> Check {
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("{what}: percentage {value} is outside 0-100"));
    }
    Ok(())
}

fn http_route(i: usize, r: &HttpRoute) -> Check {
    let at = format!("spec.http[{i}]");
    let actions = [
        !r.route.is_empty(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
    ];
    match actions.iter().filter(|a| **a).count() {
        0 => {
            return Err(format!(
                "{at}: needs one of route, redirect or directResponse"
            ));
        }
        1 => {}
        _ => {
            return Err(format!(
                "{at}: route, redirect and directResponse are mutually exclusive"
            ));
        }
    }
    for (j, m) in r.matches.iter().enumerate() {
        let mat = format!("{at}.match[{j}]");
        for (name, sm) in [
            ("uri", &m.uri),
            ("method", &m.method),
            ("authority", &m.authority),
            ("scheme", &m.scheme),
        ] {
            if let Some(sm) = sm {
                string_match(sm, &format!("{mat}.{name}"))?;
            }
        }
        for (h, sm) in m.headers.iter().chain(&m.query_params) {
            string_match(sm, &format!("{mat}[{h}]"))?;
        }
        if let Some(p) = m.port {
            port(p, &format!("{mat}.port"))?;
        }
    }
    if r.route.len() > 1 {
        let total = weights_total(r.route.iter().map(|d| d.weight));
        if total != 100 {
            return Err(format!(
                "{at}.route: weights add up to {total}; with several destinations they must add up to 100"
            ));
        }
    }
    for (j, d) in r.route.iter().enumerate() {
        destination(&d.destination, &format!("{at}.route[{j}].destination"))?;
    }
    if let Some(m) = &r.mirror {
        destination(m, &format!("{at}.mirror"))?;
    }
    if let Some(redirect) = &r.redirect {
        if let Some(p) = redirect.port {
            port(p, &format!("{at}.redirect.port"))?;
        }
        if let Some(code) = redirect.redirect_code
            && !matches!(code, 301 | 302 | 303 | 307 | 308)
        {
            return Err(format!(
                "{at}.redirect.redirectCode: {code} is not 301, 302, 303, 307 or 308"
            ));
        }
    }
    if let Some(d) = &r.direct_response {
        http_status(d.status, &format!("{at}.directResponse.status"))?;
    }
    if let Some(retry) = &r.retries
        && let Some(on) = &retry.retry_on
    {
        for cond in on.split(',').map(str::trim) {
            let known = matches!(
                cond,
                "5xx"
                    | "gateway-error"
                    | "connect-failure"
                    | "reset"
                    | "retriable-4xx"
                    | "refused-stream"
                    | "retriable-status-codes"
                    | "retriable-headers"
                    | "envoy-ratelimited"
                    | "reset-before-request"
                    | "cancelled"
                    | "deadline-exceeded"
                    | "internal"
                    | "resource-exhausted"
                    | "unavailable"
            ) || cond.parse::<u16>().is_ok();
            if !known {
                return Err(format!("{at}.retries.retryOn: unknown condition `{cond}`"));
            }
        }
    }
    if let Some(f) = &r.fault {
        if let Some(p) = f.delay.as_ref().and_then(|d| d.percentage.as_ref()) {
            percent(p.value, &format!("{at}.fault.delay.percentage"))?;
        }
        if let Some(p) = f.abort.as_ref().and_then(|d| d.percentage.as_ref()) {
            percent(p.value, &format!("{at}.fault.abort.percentage"))?;
        }
        if let Some(status) = f.abort.as_ref().and_then(|a| a.http_status) {
            http_status(status, &format!("{at}.fault.abort.httpStatus"))?;
        }
    }
    if let Some(p) = &r.mirror_percentage {
        percent(p.value, &format!("{at}.mirrorPercentage"))?;
    }
    Ok(())
}

/// A tcp or tls route's destinations.
fn l4_route(at: &str, route: &[crate::networking::RouteDestination]) -> Check {
    if route.is_empty() {
        return Err(format!("{at}.route must name at least one destination"));
    }
    for (j, d) in route.iter().enumerate() {
        destination(&d.destination, &format!("{at}.route[{j}].destination"))?;
    }
    if route.len() > 1 {
        let total = weights_total(route.iter().map(|d| d.weight));
        if total != 100 {
            return Err(format!(
                "{at}.route: weights add up to {total}; with several destinations they must add up to 100"
            ));
        }
    }
    Ok(())
}

/// An L4 match's port and destination subnets (each an IP address or a CIDR, as Istio's).
fn l4_match(at: &str, port_number: Option<u32>, subnets: &[String]) -> Check {
    if let Some(p) = port_number {
        port(p, &format!("{at}.port"))?;
    }
    for (k, s) in subnets.iter().enumerate() {
        address_or_cidr(s, &format!("{at}.destinationSubnets[{k}]"))?;
    }
    Ok(())
}

/// `exportTo`: `*`, `.`, `~` (alone) or namespace names.
fn export_to(list: &[String]) -> Check {
    for e in list {
        let name_ok = !e.is_empty()
            && e.len() <= 63
            && e.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !e.starts_with('-')
            && !e.ends_with('-');
        if !(e == "*" || e == "." || e == "~" || name_ok) {
            return Err(format!(
                "spec.exportTo: `{e}` is not `*`, `.`, `~` or a namespace name"
            ));
        }
    }
    if list.len() > 1 && list.iter().any(|e| e == "~") {
        return Err(
            "spec.exportTo: `~` (export nowhere) cannot be combined with other entries".into(),
        );
    }
    Ok(())
}

/// The traffic policy fields meshd does not implement, reported.
fn policy_parts(
    at: &str,
    lb: Option<&crate::networking::LoadBalancerSettings>,
    pool: Option<&crate::networking::ConnectionPoolSettings>,
    outlier: Option<&crate::networking::OutlierDetection>,
    tls: Option<&crate::networking::ClientTlsSettings>,
) -> Check {
    if let Some(od) = outlier {
        if let Some(p) = od.max_ejection_percent {
            percent(
                f64::from(p),
                &format!("{at}.outlierDetection.maxEjectionPercent"),
            )?;
        }
        if let Some(p) = od.min_health_percent {
            percent(
                f64::from(p),
                &format!("{at}.outlierDetection.minHealthPercent"),
            )?;
        }
    }
    if let Some(lb) = lb {
        lb::settings(&format!("{at}.loadBalancer"), lb)?;
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            return Err(format!(
                "{at}.loadBalancer: simple and consistentHash are mutually exclusive"
            ));
        }
        if let Some(ch) = &lb.consistent_hash {
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip == Some(true),
                ch.http_query_parameter_name.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 {
                return Err(format!(
                    "{at}.loadBalancer.consistentHash: set exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName"
                ));
            }
            if let Some(size) = ch.minimum_ring_size
                && size > MAX_RING_SIZE
            {
                return Err(format!(
                    "{at}.loadBalancer.consistentHash.minimumRingSize: {size} is over {MAX_RING_SIZE}"
                ));
            }
        }
    }
    if let Some(p) = pool
        .and_then(|pool| pool.http.as_ref())
        .and_then(|h| h.h2_upgrade_policy.as_ref())
        && !matches!(p.as_str(), "DEFAULT" | "DO_NOT_UPGRADE" | "UPGRADE")
    {
        return Err(format!(
            "{at}.connectionPool.http.h2UpgradePolicy `{p}` is not DEFAULT, DO_NOT_UPGRADE or UPGRADE"
        ));
    }
    if let Some(t) = tls
        && t.ca_crl.is_some()
    {
        gateway::crl_with_ca(at, t.credential_name.is_some(), t.ca_certificates.is_some())?;
    }
    if let Some(t) = tls
        && t.credential_name.is_some()
        && matches!(t.mode, TlsMode::Simple | TlsMode::Mutual)
    {
        if t.client_certificate.is_some() || t.private_key.is_some() || t.ca_certificates.is_some()
        {
            return Err(format!(
                "{at}.tls: give either credentialName or clientCertificate, privateKey and caCertificates, not both"
            ));
        }
        if t.mode == TlsMode::Simple && t.insecure_skip_verify == Some(true) {
            return Err(format!(
                "{at}.tls: credentialName (its CA) cannot be given with insecureSkipVerify in mode SIMPLE"
            ));
        }
    }
    Ok(())
}

fn traffic_policy(at: &str, tp: &crate::networking::TrafficPolicy) -> Check {
    policy_parts(
        at,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    )?;
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let at = format!("{at}.portLevelSettings[{i}]");
        let Some(p) = &pl.port else {
            return Err(format!("{at}.port is required"));
        };
        port(p.number, &format!("{at}.port.number"))?;
        policy_parts(
            &at,
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
        )?;
    }
    Ok(())
}

pub(crate) fn object(obj: &ConfigObject) -> Check {
    match &obj.spec {
        Spec::ServiceEntry(se) => {
            entries::service_entry(se)?;
            if let Some(sel) = &se.workload_selector {
                selector::labels(&sel.labels, "spec.workloadSelector.labels")?;
            }
        }
        Spec::WorkloadEntry(we) => {
            entries::workload(we, "")?;
            entries::workload_supported(we, "")?;
        }
        Spec::DestinationRule(dr) => {
            if dr.host.is_empty() {
                return Err("spec.host is required".into());
            }
            let mut names = BTreeSet::new();
            for s in &dr.subsets {
                if s.name.is_empty() {
                    return Err("spec.subsets: a subset needs a name".into());
                }
                if !names.insert(&s.name) {
                    return Err(format!("spec.subsets: duplicate subset `{}`", s.name));
                }
            }
            if let Some(sel) = &dr.workload_selector {
                selector::labels(&sel.labels, "spec.workloadSelector.matchLabels")?;
            }
            export_to(&dr.export_to)?;
            if let Some(tp) = &dr.traffic_policy {
                traffic_policy("spec.trafficPolicy", tp)?;
            }
            for (i, s) in dr.subsets.iter().enumerate() {
                if let Some(tp) = &s.traffic_policy {
                    traffic_policy(&format!("spec.subsets[{i}].trafficPolicy"), tp)?;
                }
            }
        }
        Spec::VirtualService(vs) => {
            if vs.hosts.is_empty() {
                return Err("spec.hosts must name at least one host".into());
            }
            export_to(&vs.export_to)?;
            for (i, r) in vs.http.iter().enumerate() {
                http_route(i, r)?;
            }
            for (i, r) in vs.tcp.iter().enumerate() {
                let at = format!("spec.tcp[{i}]");
                l4_route(&at, &r.route)?;
                for (j, m) in r.matches.iter().enumerate() {
                    l4_match(&format!("{at}.match[{j}]"), m.port, &m.destination_subnets)?;
                }
            }
            for (i, r) in vs.tls.iter().enumerate() {
                let at = format!("spec.tls[{i}]");
                l4_route(&at, &r.route)?;
                if r.matches.is_empty() {
                    return Err(format!(
                        "{at}.match: needs at least one match with sniHosts"
                    ));
                }
                for (j, m) in r.matches.iter().enumerate() {
                    let mat = format!("{at}.match[{j}]");
                    if m.sni_hosts.is_empty() {
                        return Err(format!("{mat}.sniHosts must name at least one host"));
                    }
                    l4_match(&mat, m.port, &m.destination_subnets)?;
                }
            }
        }
        Spec::Gateway(gw) => {
            if gw.servers.is_empty() {
                return Err("spec.servers must list at least one server".into());
            }
            for (i, s) in gw.servers.iter().enumerate() {
                port(s.port.number, &format!("spec.servers[{i}].port"))?;
                if s.hosts.is_empty() {
                    return Err(format!("spec.servers[{i}].hosts must not be empty"));
                }
                gateway::server(&format!("spec.servers[{i}]"), s)?;
            }
        }
        Spec::Sidecar(sc) => sidecar::sidecar(sc)?,
        Spec::PeerAuthentication(pa) => selector::peer_authentication(pa)?,
        // Never rejected here: a policy that cannot be enforced as written stays in force as a
        // deny-all (see `authorization_policy` below and `MeshConfig`).
        Spec::AuthorizationPolicy(_) => {}
        Spec::RequestAuthentication(ra) => request_authn::request_authentication(ra)?,
        Spec::Telemetry(t) => telemetry::telemetry(t)?,
        Spec::EnvoyFilter(ef) => {
            let problems = ef.problems();
            if !problems.is_empty() {
                return Err(problems.join("; "));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod gateway_tests;
#[cfg(test)]
mod parity_tests;
#[cfg(test)]
mod sidecar_tests;
#[cfg(test)]
mod tests;
