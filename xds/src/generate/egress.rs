//! A Sidecar's egress listeners as they shape a proxy's outbound side: which service ports
//! captured traffic reaches, the listeners with an address of their own (`bind`,
//! `captureMode: NONE`) that an app sends to explicitly, and where traffic to unknown
//! destinations goes (`outboundTrafficPolicy`: passthrough, black hole, or an egress proxy).

use super::listener::{self, OutboundAddress};
use super::selected::SelectedRules;
use super::{GenOptions, MeshSnapshot, cluster, l4};
use crate::resource::{Resource, SharedResource};
use meshd_model::mesh::qualify_host;
use meshd_model::networking::{CaptureMode, IstioEgressListener, OutboundMode, Sidecar};
use meshd_model::registry::{Protocol, Service};

/// Pattern `namespace/host` of a Sidecar egress listener, against a service seen from
/// `proxy_ns` (`.` is the proxy's namespace, `~` nothing, `*` a wildcard).
pub(super) fn egress_host_matches(pattern: &str, proxy_ns: &str, svc: &Service) -> bool {
    let Some((ns, host)) = pattern.split_once('/') else {
        return false;
    };
    let ns_ok = match ns {
        "*" => true,
        "." => svc.namespace == proxy_ns,
        "~" => false,
        other => svc.namespace == other,
    };
    let host_ok = host == "*"
        || host == svc.hostname
        || host
            .strip_prefix('*')
            .is_some_and(|suffix| svc.hostname.ends_with(suffix));
    ns_ok && host_ok
}

/// The egress side of the Sidecar in force for a proxy in `namespace` (none: everything).
pub(super) struct Egress<'a> {
    sidecar: Option<&'a Sidecar>,
    /// The Sidecar's own namespace (the proxy's, or the root namespace's mesh default): its
    /// short hosts are relative to it.
    sidecar_namespace: &'a str,
    namespace: &'a str,
    /// Its listeners with an address of their own, read once: every service port asks.
    bound: Vec<BoundListener<'a>>,
}

/// An egress listener with its own address: the app sends to `address:port`.
pub(super) struct BoundListener<'a> {
    pub address: OutboundAddress<'a>,
    pub port: u32,
    /// The listener's declared protocol; else its services' decide.
    pub protocol: Option<Protocol>,
    listener: &'a IstioEgressListener,
}

impl<'a> BoundListener<'a> {
    /// The listener, when it has an address of its own (and so a port).
    fn of(e: &'a IstioEgressListener) -> Option<BoundListener<'a>> {
        let ip = e.bound_address()?;
        let port = e.port.as_ref()?;
        Some(BoundListener {
            address: OutboundAddress {
                ip,
                // A socket is never captured: the app connects to it.
                bound: e.capture_mode == CaptureMode::None || ip.starts_with("unix://"),
            },
            port: port.number,
            protocol: (!port.protocol.is_empty() || !port.name.is_empty())
                .then(|| Protocol::detect(Some(&port.protocol), &port.name)),
            listener: e,
        })
    }

    /// Port 0 (a unix socket's, as Istio spells it): the hosts' services on any port.
    fn on_port(&self, port: u32) -> bool {
        self.port == 0 || self.port == port
    }

    pub fn serves(&self, namespace: &str, svc: &Service) -> bool {
        svc.ports.iter().any(|p| self.on_port(p.number))
            && self
                .listener
                .hosts
                .iter()
                .any(|h| egress_host_matches(h, namespace, svc))
    }
}

impl<'a> Egress<'a> {
    pub fn new(sidecar: Option<(&'a str, &'a Sidecar)>, namespace: &'a str) -> Egress<'a> {
        let (sidecar_namespace, sidecar) = match sidecar {
            Some((ns, sc)) => (ns, Some(sc)),
            None => (namespace, None),
        };
        let bound = sidecar
            .into_iter()
            .flat_map(|sc| sc.egress.iter())
            .filter_map(BoundListener::of)
            .collect();
        Egress {
            sidecar,
            sidecar_namespace,
            namespace,
            bound,
        }
    }

    fn listeners(&self) -> impl Iterator<Item = &'a IstioEgressListener> {
        self.sidecar.into_iter().flat_map(|sc| sc.egress.iter())
    }

    /// Whether captured traffic to this service port is routed: a captured listener on the
    /// port decides for it, the port-less one for every other port (Istio's rule). Listeners
    /// with an address of their own take no captured traffic.
    pub fn captured_allows(&self, svc: &Service, port: u32) -> bool {
        let Some(sc) = self.sidecar else {
            return true;
        };
        if sc.egress.is_empty() {
            return true;
        }
        let captured = || self.listeners().filter(|e| e.bound_address().is_none());
        let on_port: Vec<_> = captured()
            .filter(|e| e.port.as_ref().is_some_and(|p| p.number == port))
            .collect();
        let deciding = if on_port.is_empty() {
            captured().filter(|e| e.port.is_none()).collect()
        } else {
            on_port
        };
        deciding.iter().any(|e| {
            e.hosts
                .iter()
                .any(|h| egress_host_matches(h, self.namespace, svc))
        })
    }

    /// Whether the proxy needs this service port at all: captured, or behind a bound listener.
    pub fn allows(&self, svc: &Service, port: u32) -> bool {
        self.captured_allows(svc, port)
            || self
                .bound
                .iter()
                .any(|b| b.on_port(port) && b.serves(self.namespace, svc))
    }

    pub fn bound(&self) -> &[BoundListener<'a>] {
        &self.bound
    }

    /// The cluster taking traffic to destinations no service claims.
    pub fn unmatched(&self, domain_suffix: &str) -> String {
        let policy = self
            .sidecar
            .and_then(|s| s.outbound_traffic_policy.as_ref());
        match policy {
            Some(p) if p.mode == OutboundMode::RegistryOnly => cluster::BLACKHOLE.into(),
            Some(p) => match &p.egress_proxy {
                Some(proxy) => cluster::outbound_name(
                    proxy.port.as_ref().map(|p| p.number).unwrap_or(0),
                    proxy.subset.as_deref().unwrap_or(""),
                    &qualify_host(&proxy.host, self.sidecar_namespace, domain_suffix),
                ),
                None => cluster::PASSTHROUGH.into(),
            },
            None => cluster::PASSTHROUGH.into(),
        }
    }
}

impl MeshSnapshot {
    /// The listeners (and, for HTTP, route tables) of a Sidecar's egress listeners with an
    /// address of their own, over the services the scope sees.
    pub(super) fn bound_egress(
        &self,
        egress: &Egress<'_>,
        visible: &[&Service],
        source: (&str, Option<&meshd_model::networking::Labels>),
        rules: &SelectedRules,
        unmatched: &str,
        opts: &GenOptions,
    ) -> Vec<(SharedResource, Option<SharedResource>)> {
        let mut out = Vec::new();
        for bound in egress.bound() {
            // Each service on the listener's port (port 0: on its first port of the protocol).
            let served: Vec<(&Service, &meshd_model::registry::Port)> = visible
                .iter()
                .copied()
                .filter(|svc| bound.serves(egress.namespace, svc))
                .filter_map(|svc| {
                    let port = svc.ports.iter().find(|p| {
                        bound.on_port(p.number)
                            && bound
                                .protocol
                                .is_none_or(|want| want.is_http() == p.protocol.is_http())
                    })?;
                    Some((svc, port))
                })
                .collect();
            let http = match bound.protocol {
                Some(p) => p.is_http(),
                None => served.first().is_some_and(|(_, p)| p.protocol.is_http()),
            };
            let at = (bound.port, bound.address);
            let mut routes = None;
            let tcp: Vec<l4::L4Chain> = if http {
                let services: Vec<(&Service, u32)> =
                    served.iter().map(|(svc, p)| (*svc, p.number)).collect();
                let name = bound.address.route_name(bound.port);
                routes = Some(self.outbound_routes(name, source, rules, &services, unmatched));
                Vec::new()
            } else {
                served
                    .iter()
                    .flat_map(|(svc, port)| l4::chains(&self.index, source, rules, svc, port))
                    .collect()
            };
            let l = listener::outbound_port(at, http, &tcp, unmatched, opts);
            out.push((Resource::encode(l.name.clone(), &l), routes));
        }
        out
    }
}
