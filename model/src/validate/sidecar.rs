//! A Sidecar on its own: its ingress listeners (ports, `bind`, `defaultEndpoint`, TLS the
//! sidecar terminates, connection limits), its egress listeners (hosts, ports, `bind` and
//! `captureMode`), and `outboundTrafficPolicy.egressProxy` — Istio's rules for each.

use super::{Check, gateway, port, selector, socket_path};
use crate::networking::{CaptureMode, OutboundMode, ServerTlsSettings, Sidecar};
use std::collections::BTreeSet;
use std::net::IpAddr;

pub(super) fn sidecar(sc: &Sidecar) -> Check {
    if let Some(sel) = &sc.workload_selector {
        selector::labels(&sel.labels, "spec.workloadSelector.labels")?;
    }
    if let Some(pool) = &sc.inbound_connection_pool {
        super::policy_parts("spec.inboundConnectionPool", None, Some(pool), None, None)?;
    }
    let mut ingress_ports = BTreeSet::new();
    for (i, l) in sc.ingress.iter().enumerate() {
        let at = format!("spec.ingress[{i}]");
        port(l.port.number, &format!("{at}.port"))?;
        if let Some(target) = l.port.target_port {
            port(target, &format!("{at}.port.targetPort"))?;
        }
        if !ingress_ports.insert(l.port.number) {
            return Err(format!(
                "{at}.port {} is given by more than one ingress listener",
                l.port.number
            ));
        }
        if let Some(e) = &l.default_endpoint {
            default_endpoint(&at, e)?;
        }
        if let Some(bind) = &l.bind
            && bind.parse::<IpAddr>().is_err()
        {
            return Err(format!(
                "{at}.bind: `{bind}` is not an IP address (an ingress listener binds an IPv4 or IPv6 address)"
            ));
        }
        if let Some(tls) = &l.tls {
            ingress_tls(&at, tls)?;
        }
        if let Some(pool) = &l.connection_pool {
            super::policy_parts(&at, None, Some(pool), None, None)?;
        }
    }
    let mut bound = BTreeSet::new();
    for (i, e) in sc.egress.iter().enumerate() {
        let at = format!("spec.egress[{i}]");
        egress_listener(&at, e)?;
        match &e.port {
            Some(p) => {
                // Two listeners on one port need different addresses; captured ones share none.
                let key = (e.bound_address().unwrap_or(""), p.number);
                if !bound.insert(key) {
                    return Err(format!(
                        "{at}.port {} is given by more than one egress listener{}",
                        p.number,
                        e.bound_address()
                            .map(|a| format!(" bound to {a}"))
                            .unwrap_or_default()
                    ));
                }
            }
            None if i + 1 != sc.egress.len() => {
                return Err(format!(
                    "{at}: only the last egress listener may omit its port (it takes every port the others do not)"
                ));
            }
            None => {}
        }
    }
    if let Some(policy) = &sc.outbound_traffic_policy
        && let Some(proxy) = &policy.egress_proxy
    {
        let at = "spec.outboundTrafficPolicy.egressProxy";
        if policy.mode != OutboundMode::AllowAny {
            return Err(format!(
                "{at}: an egress proxy takes the traffic ALLOW_ANY lets out; it cannot be set with mode REGISTRY_ONLY"
            ));
        }
        if proxy.host.is_empty() || proxy.host.contains('*') {
            return Err(format!("{at}.host must name one service (no wildcard)"));
        }
        match &proxy.port {
            Some(p) => port(p.number, &format!("{at}.port.number"))?,
            None => return Err(format!("{at}.port is required")),
        }
    }
    Ok(())
}

/// Where the sidecar hands inbound traffic: a loopback or wildcard address with a port, or a
/// unix socket the app listens on.
fn default_endpoint(at: &str, e: &str) -> Check {
    if let Some(path) = e.strip_prefix("unix://") {
        if socket_path(path) {
            return Ok(());
        }
        return Err(format!(
            "{at}.defaultEndpoint: `{e}` is not a unix socket (unix:///absolute/path or unix://@abstract)"
        ));
    }
    let ok = e.rsplit_once(':').is_some_and(|(host, p)| {
        matches!(host, "127.0.0.1" | "0.0.0.0" | "[::1]" | "[::]")
            && p.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if !ok {
        return Err(format!(
            "{at}.defaultEndpoint: `{e}` must be 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT, [::]:PORT or unix:///path"
        ));
    }
    Ok(())
}

/// TLS a sidecar terminates itself: SIMPLE or MUTUAL with files mounted in the proxy.
fn ingress_tls(at: &str, t: &ServerTlsSettings) -> Check {
    let mode = t.mode.as_deref().unwrap_or("").to_ascii_uppercase();
    if !matches!(mode.as_str(), "SIMPLE" | "MUTUAL") {
        return Err(format!(
            "{at}.tls.mode `{}`: a sidecar terminates TLS in mode SIMPLE or MUTUAL only (mesh mTLS is PeerAuthentication's)",
            t.mode.as_deref().unwrap_or("")
        ));
    }
    if t.https_redirect.is_some() {
        return Err(format!(
            "{at}.tls.httpsRedirect is for Gateway servers, not sidecar ingress listeners"
        ));
    }
    if t.credential_name.is_some() {
        return Err(format!(
            "{at}.tls.credentialName is for Gateway servers; a sidecar reads serverCertificate and privateKey files"
        ));
    }
    if t.server_certificate.is_none() || t.private_key.is_none() {
        return Err(format!(
            "{at}.tls: mode {mode} needs serverCertificate and privateKey"
        ));
    }
    if mode == "MUTUAL" && t.ca_certificates.is_none() {
        return Err(format!(
            "{at}.tls: mode MUTUAL needs caCertificates to verify clients"
        ));
    }
    if t.ca_crl.is_some() {
        gateway::crl_with_ca(at, false, t.ca_certificates.is_some())?;
    }
    Ok(())
}

fn egress_listener(at: &str, e: &crate::networking::IstioEgressListener) -> Check {
    let socket = e.bind.as_deref().and_then(|b| b.strip_prefix("unix://"));
    match (&e.port, socket) {
        (Some(p), None) => port(p.number, &format!("{at}.port"))?,
        (Some(p), Some(_)) if p.number != 0 => {
            return Err(format!(
                "{at}.port.number: a unix-socket listener has port number 0 (the socket is its address), not {}",
                p.number
            ));
        }
        (Some(p), Some(_)) if p.protocol.is_empty() => {
            return Err(format!(
                "{at}.port.protocol: a unix-socket listener names its protocol (HTTP, TCP, ...)"
            ));
        }
        _ => {}
    }
    if e.hosts.is_empty() {
        return Err(format!("{at}.hosts must name at least one namespace/host"));
    }
    for h in &e.hosts {
        if !h.contains('/') {
            return Err(format!(
                "{at}.hosts: `{h}` must be namespace/host (e.g. `./*`, `istio-system/*`)"
            ));
        }
    }
    if let Some(path) = socket {
        if !socket_path(path) {
            return Err(format!(
                "{at}.bind: `unix://{path}` is not a unix socket (unix:///absolute/path or unix://@abstract)"
            ));
        }
        if e.capture_mode == CaptureMode::Iptables {
            return Err(format!(
                "{at}.captureMode: IPTABLES cannot capture into a unix socket (use DEFAULT or NONE)"
            ));
        }
    } else if let Some(bind) = &e.bind
        && bind.parse::<IpAddr>().is_err()
    {
        return Err(format!(
            "{at}.bind: `{bind}` is not an IP address (x.x.x.x, an IPv6 address, or unix://path)"
        ));
    }
    if e.port.is_none() && (e.bind.is_some() || e.capture_mode == CaptureMode::None) {
        return Err(format!(
            "{at}.port is required with bind or captureMode NONE (the listener binds that port)"
        ));
    }
    Ok(())
}
