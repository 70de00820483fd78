//! A Gateway server on its own, as the listeners built from it read it: the hosts it admits,
//! the VirtualServices bound to its Gateway, its TLS mode and downstream TLS, the SNI names it
//! answers; and a chain's restriction to destination subnets.

use super::common::*;
use super::downstream_tls;
use envoy_types::pb::envoy::config::listener::v3::FilterChain;
use meshd_model::networking::{Server, VirtualService};

pub(super) fn server_allows(server: &Server, host: &str) -> bool {
    server.hosts.iter().any(|h| {
        let h = h.split_once('/').map(|(_, h)| h).unwrap_or(h);
        h == "*"
            || h == host
            || h.strip_prefix('*')
                .is_some_and(|suffix| host.ends_with(suffix))
    })
}

/// `chain` matched only for connections to `subnets` (IP addresses or CIDRs).
pub(super) fn with_subnets(chain: &mut FilterChain, subnets: &[String]) {
    if let Some(m) = chain.filter_chain_match.as_mut() {
        m.prefix_ranges = subnets
            .iter()
            .filter_map(|s| super::listener::cidr(s))
            .collect();
    }
}

pub(super) fn bound_to(vs: &VirtualService, vs_ns: &str, gw_ns: &str, gw_name: &str) -> bool {
    vs.gateways.iter().any(|g| match g.split_once('/') {
        Some((ns, name)) => ns == gw_ns && name == gw_name,
        None => g == gw_name && vs_ns == gw_ns,
    })
}

pub(super) fn tls_mode(server: &Server) -> Option<String> {
    let tls = server.tls.as_ref()?;
    let mode = tls.mode.clone().map(|m| m.to_ascii_uppercase());
    match mode {
        Some(m) => Some(m),
        // `tls: {httpsRedirect: true}` alone is a plaintext server.
        None if tls.server_certificate.is_some() || tls.credential_name.is_some() => {
            Some("SIMPLE".into())
        }
        None => None,
    }
}

/// The server's downstream TLS: SIMPLE, MUTUAL and OPTIONAL_MUTUAL with files or a
/// credentialName, ISTIO_MUTUAL with the gateway's mesh identity; `None` for plaintext servers
/// and PASSTHROUGH. `http`: the server carries HTTP (ALPN offered); a terminated TCP stream
/// negotiates no application protocol.
pub(super) fn server_tls_socket(
    server: &Server,
    trust_domain: &str,
    http: bool,
) -> Option<envoy_types::pb::envoy::config::core::v3::TransportSocket> {
    let mode = tls_mode(server)?;
    if mode == "ISTIO_MUTUAL" {
        return Some(istio_mutual_downstream(trust_domain));
    }
    let alpn: &[&str] = if http { &["h2", "http/1.1"] } else { &[] };
    downstream_tls::server_tls(&mode, server.tls.as_ref()?, alpn)
}

/// SNI names a server answers (none: any).
pub(super) fn server_names(server: &Server) -> Vec<String> {
    let hosts: Vec<String> = server
        .hosts
        .iter()
        .map(|h| h.split_once('/').map(|(_, h)| h).unwrap_or(h).to_string())
        .collect();
    if hosts.iter().any(|h| h == "*") {
        Vec::new()
    } else {
        hosts
    }
}
