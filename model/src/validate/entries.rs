//! ServiceEntry and WorkloadEntry checks: Istio's documented rules for these kinds (its API
//! reference and CRD validation), then what meshd cannot serve although Istio accepts it.

use super::{Check, address_or_cidr, export_to, port};
use crate::networking::{Resolution, ServiceEntry, WorkloadEntry};
use std::collections::BTreeSet;
use std::net::IpAddr;

const MAX_HOSTS: usize = 256;
const MAX_ADDRESSES: usize = 256;
const MAX_ADDRESS_LEN: usize = 64;
const MAX_PORTS: usize = 256;
const MAX_ENDPOINTS: usize = 4096;
const MAX_ENDPOINT_PORTS: usize = 128;
const MAX_LABELS: usize = 256;
const MAX_WORKLOAD_ADDRESS_LEN: usize = 256;
const MAX_NETWORK_LEN: usize = 2048;
const MAX_SERVICE_ACCOUNT_LEN: usize = 253;
const UNIX: &str = "unix://";

fn at_most<T>(items: &[T], max: usize, what: &str) -> Check {
    if items.len() > max {
        return Err(format!(
            "{what}: {} entries, at most {max} allowed",
            items.len()
        ));
    }
    Ok(())
}

fn longest(text: &str, max: usize, what: &str) -> Check {
    if text.len() > max {
        return Err(format!(
            "{what}: {} characters, at most {max} allowed",
            text.len()
        ));
    }
    Ok(())
}

/// A port name in an endpoint's `ports` map: a DNS-label-like name (letters, digits, `-`,
/// neither first nor last), shorter than 63 characters.
fn port_name(name: &str, what: &str) -> Check {
    let chars_ok = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if name.is_empty()
        || name.len() >= 63
        || !chars_ok
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(format!(
            "{what}: `{name}` is not a valid port name (letters, digits and `-`, starting and ending with a letter or digit, under 63 characters)"
        ));
    }
    Ok(())
}

fn is_unix(address: &str) -> bool {
    address.starts_with(UNIX)
}

/// The rules one endpoint follows wherever it is written: a WorkloadEntry's spec, or an entry
/// of a ServiceEntry's `endpoints` (`at` names which).
pub(super) fn workload(we: &WorkloadEntry, at: &str) -> Check {
    let join = |field: &str| {
        if at.is_empty() {
            format!("spec.{field}")
        } else {
            format!("{at}.{field}")
        }
    };
    if we.address.is_empty() && we.network.as_deref().is_none_or(str::is_empty) {
        return Err(format!(
            "{}: an address is required (it may be left out only when `network` is set)",
            join("address")
        ));
    }
    longest(&we.address, MAX_WORKLOAD_ADDRESS_LEN, &join("address"))?;
    if let Some(path) = we.address.strip_prefix(UNIX) {
        if !(path.starts_with('/') || path.starts_with('@')) {
            return Err(format!(
                "{}: `{}`: a unix socket must be an absolute path or an abstract socket (unix:///path or unix://@name)",
                join("address"),
                we.address
            ));
        }
        if path.ends_with('/') {
            return Err(format!(
                "{}: `{}`: a unix socket may not be a directory",
                join("address"),
                we.address
            ));
        }
        if !we.ports.is_empty() {
            return Err(format!(
                "{}: a unix socket endpoint may not have ports",
                join("ports")
            ));
        }
    }
    if we.ports.len() > MAX_ENDPOINT_PORTS {
        return Err(format!(
            "{}: {} ports, at most {MAX_ENDPOINT_PORTS} allowed",
            join("ports"),
            we.ports.len()
        ));
    }
    for (name, number) in &we.ports {
        let field = join(&format!("ports.{name}"));
        port_name(name, &field)?;
        port(*number, &field)?;
    }
    if we.labels.len() > MAX_LABELS {
        return Err(format!(
            "{}: {} labels, at most {MAX_LABELS} allowed",
            join("labels"),
            we.labels.len()
        ));
    }
    if let Some(n) = &we.network {
        longest(n, MAX_NETWORK_LEN, &join("network"))?;
    }
    if let Some(l) = &we.locality {
        longest(l, MAX_NETWORK_LEN, &join("locality"))?;
    }
    if let Some(sa) = &we.service_account {
        longest(sa, MAX_SERVICE_ACCOUNT_LEN, &join("serviceAccount"))?;
    }
    Ok(())
}

/// What meshd cannot serve in an endpoint Istio accepts.
pub(super) fn workload_supported(we: &WorkloadEntry, at: &str) -> Check {
    let field = if at.is_empty() {
        "spec.address".to_string()
    } else {
        format!("{at}.address")
    };
    if we.address.is_empty() {
        return Err(format!(
            "{field}: an endpoint without address (reached through its network's gateway) is valid Istio, but meshd does not route between networks"
        ));
    }
    Ok(())
}

pub(super) fn service_entry(se: &ServiceEntry) -> Check {
    if se.hosts.is_empty() {
        return Err("spec.hosts must name at least one host".into());
    }
    at_most(&se.hosts, MAX_HOSTS, "spec.hosts")?;
    for (i, h) in se.hosts.iter().enumerate() {
        if h == "*" {
            return Err(format!(
                "spec.hosts[{i}]: `*` is not allowed: a ServiceEntry's host cannot be only a wildcard"
            ));
        }
        if h.is_empty() {
            return Err(format!("spec.hosts[{i}] is empty"));
        }
    }
    export_to(&se.export_to)?;
    at_most(&se.addresses, MAX_ADDRESSES, "spec.addresses")?;
    for (i, a) in se.addresses.iter().enumerate() {
        let at = format!("spec.addresses[{i}]");
        longest(a, MAX_ADDRESS_LEN, &at)?;
        if is_unix(a) {
            return Err(format!(
                "{at}: `{a}`: unix socket addresses are not allowed here"
            ));
        }
        address_or_cidr(a, &at)?;
        if a.contains('/') && !matches!(se.resolution, Resolution::None | Resolution::Static) {
            return Err(format!(
                "{at}: `{a}`: CIDR addresses are allowed only with resolution NONE or STATIC"
            ));
        }
    }
    at_most(&se.ports, MAX_PORTS, "spec.ports")?;
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, p) in se.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        port(p.number, &format!("{at}.number"))?;
        if let Some(target) = p.target_port {
            port(target, &format!("{at}.targetPort"))?;
        }
        if p.name.is_empty() {
            return Err(format!("{at}.name is required"));
        }
        if !names.insert(&p.name) {
            return Err(format!("{at}.name: duplicate port name `{}`", p.name));
        }
        if !numbers.insert(p.number) {
            return Err(format!(
                "{at}.number: port number {} is given twice",
                p.number
            ));
        }
    }
    if se.workload_selector.is_some() && !se.endpoints.is_empty() {
        return Err(
            "spec: workloadSelector and endpoints are mutually exclusive (set only one)".into(),
        );
    }
    at_most(&se.endpoints, MAX_ENDPOINTS, "spec.endpoints")?;
    match se.resolution {
        Resolution::None if !se.endpoints.is_empty() => {
            return Err(
                "spec.endpoints: resolution NONE cannot have endpoints (use STATIC for fixed addresses)"
                    .into(),
            );
        }
        Resolution::DnsRoundRobin if se.endpoints.len() > 1 => {
            return Err(format!(
                "spec.endpoints: resolution DNS_ROUND_ROBIN can have at most one endpoint ({} given)",
                se.endpoints.len()
            ));
        }
        _ => {}
    }
    let sockets = se.endpoints.iter().filter(|e| is_unix(&e.address)).count();
    if sockets > 0 {
        if matches!(se.resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
            return Err(
                "spec.resolution: DNS resolution cannot be used with unix socket endpoints".into(),
            );
        }
        if se.ports.len() != 1 {
            return Err(format!(
                "spec.ports: with unix socket endpoints there must be exactly one port ({} given)",
                se.ports.len()
            ));
        }
    }
    for (i, e) in se.endpoints.iter().enumerate() {
        let at = format!("spec.endpoints[{i}]");
        workload(e, &at)?;
        let is_ip = e.address.parse::<IpAddr>().is_ok();
        if se.resolution == Resolution::Static
            && !is_ip
            && !is_unix(&e.address)
            && !e.address.is_empty()
        {
            return Err(format!(
                "{at}.address: `{}` is not an IP address; a domain name needs resolution DNS",
                e.address
            ));
        }
    }
    for (i, e) in se.endpoints.iter().enumerate() {
        workload_supported(e, &format!("spec.endpoints[{i}]"))?;
    }
    Ok(())
}
