//! Istio's metric labels for one access-log entry.
//!
//! Trust: the reporter's own labels (workload, namespace, principal, app, version) come from its
//! authenticated stream and the registry, never from the entry. The other side comes from
//! meshd's own names and registry: on the outbound side the generated cluster name
//! (`outbound|PORT|SUBSET|HOST` → destination service) and the registry's workload at the
//! upstream address; on the inbound side the peer certificate's URI SAN, which Envoy verified
//! during the mTLS handshake against the mesh CA, and the registry's workload at the
//! downstream address only when its identity is that verified one. Without a verified peer
//! certificate the source is `unknown`.

use super::directory::{CLUSTER_ID, Directory, Peer};
use envoy_types::pb::envoy::config::core::v3::{Address, address};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, ResponseFlags,
    tls_properties::certificate_properties::subject_alt_name::San,
};
use meshd_xds::proxy::Identity;
use prometheus_client::encoding::{
    EncodeLabelKey, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};
use std::net::IpAddr;

pub const UNKNOWN: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Labels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_code: String,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: String,
    /// Tags a Telemetry object upserts beyond Istio's own, sorted by name.
    pub custom: Vec<(String, String)>,
}

/// Istio's standard labels, each a `Labels` field of the label's own name, listed once: the
/// encoder reads them in this order and a Telemetry override finds one by name.
macro_rules! istio_labels {
    ($($field:ident),* $(,)?) => {
        impl Labels {
            /// Istio's labels by name, in Istio's order.
            fn istio(&self) -> [(&'static str, &str); 25] {
                [$((stringify!($field), self.$field.as_str())),*]
            }

            /// Istio's label `name`, for a Telemetry override to set; `None` for any other name.
            pub fn istio_mut(&mut self, name: &str) -> Option<&mut String> {
                match name {
                    $(stringify!($field) => Some(&mut self.$field),)*
                    _ => None,
                }
            }
        }
    };
}

istio_labels!(
    reporter,
    source_workload,
    source_workload_namespace,
    source_principal,
    source_app,
    source_version,
    source_canonical_service,
    source_canonical_revision,
    source_cluster,
    destination_service,
    destination_service_name,
    destination_service_namespace,
    destination_workload,
    destination_workload_namespace,
    destination_principal,
    destination_app,
    destination_version,
    destination_canonical_service,
    destination_canonical_revision,
    destination_cluster,
    request_protocol,
    response_code,
    grpc_response_status,
    response_flags,
    connection_security_policy,
);

/// A label value escaped as Prometheus' text format wants it. `prometheus-client` writes label
/// values as they are, and some come from what a client sent (a header, a path) or from what a
/// reporting proxy put in its entries (a cluster name): a `"` or a newline there would end the
/// value early and break `/metrics` for the whole mesh.
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            encoder.write_str(&rest[..i])?;
            encoder.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        encoder.write_str(rest)
    }
}

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        let custom = self.custom.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (name, value) in self.istio().into_iter().chain(custom) {
            let mut label = encoder.encode_label();
            let mut key = label.encode_label_key()?;
            EncodeLabelKey::encode(&name, &mut key)?;
            let mut v = key.encode_label_value()?;
            Escaped(value).encode(&mut v)?;
            v.finish()?;
        }
        Ok(())
    }
}

/// The proxy that sent the entries, as proven by its stream and known to the registry.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub identity: Identity,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    /// The Telemetry policy in force for the workload (its metrics overrides).
    pub telemetry: std::sync::Arc<meshd_model::telemetry_scope::TelemetryPolicy>,
}

impl Reporter {
    /// The registry's labels for `identity`; `unknown` for a workload it does not list.
    pub fn new(identity: Identity, directory: &Directory) -> Reporter {
        let known = directory.workload(&identity.workload, &identity.namespace);
        let get = |f: fn(&Peer) -> &String, default: &str| {
            known.map_or_else(|| default.to_string(), |p| f(p).clone())
        };
        Reporter {
            app: get(|p| &p.app, UNKNOWN),
            version: get(|p| &p.version, UNKNOWN),
            canonical_service: get(|p| &p.canonical_service, &identity.workload),
            canonical_revision: get(|p| &p.canonical_revision, "latest"),
            telemetry: directory.telemetry(&identity.workload, &identity.namespace),
            identity,
        }
    }

    /// The metrics overrides of the side `dir` reports (outbound: CLIENT, inbound: SERVER).
    pub fn metrics(&self, dir: Direction) -> &meshd_model::telemetry_scope::MetricsPolicy {
        &self.telemetry.side(dir == Direction::Outbound).metrics
    }

    fn peer(&self) -> Peer {
        Peer {
            workload: self.identity.workload.clone(),
            namespace: self.identity.namespace.clone(),
            principal: self.identity.spiffe_id(),
            app: self.app.clone(),
            version: self.version.clone(),
            canonical_service: self.canonical_service.clone(),
            canonical_revision: self.canonical_revision.clone(),
        }
    }
}

/// Which side of the connection the reporting sidecar is on; set by the listener meshd
/// generated (the log name), so a proxy can only mislabel its own traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn from_log_name(name: &str) -> Option<Direction> {
        match name {
            super::INBOUND_LOG => Some(Direction::Inbound),
            super::OUTBOUND_LOG => Some(Direction::Outbound),
            _ => None,
        }
    }
}

/// What the protocol-specific part of an entry contributes.
pub struct Request<'a> {
    pub protocol: &'a str,
    pub response_code: String,
    pub grpc_status: String,
    /// `:authority`, empty for TCP.
    pub authority: &'a str,
}

/// `ns` of a SPIFFE id `spiffe://TD/ns/NS/sa/SA`.
fn spiffe_namespace(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/').skip(1);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("ns"), Some(ns), Some("sa"), Some(_)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

/// The URI SANs of the peer certificate Envoy verified, if the connection was mTLS.
pub(super) fn peer_uris(common: &AccessLogCommon) -> impl Iterator<Item = &str> {
    let peer = common
        .tls_properties
        .as_ref()
        .and_then(|t| t.peer_certificate_properties.as_ref());
    peer.into_iter()
        .flat_map(|p| &p.subject_alt_name)
        .filter_map(|s| match &s.san {
            Some(San::Uri(u)) => Some(u.as_str()),
            _ => None,
        })
}

/// The SPIFFE id of the peer certificate Envoy verified, if the connection was mTLS.
fn verified_peer(common: &AccessLogCommon) -> Option<&str> {
    peer_uris(common).find(|u| u.starts_with("spiffe://"))
}

/// `outbound|PORT|SUBSET|HOST` → HOST (the service's FQDN), for clusters meshd generated.
fn outbound_host(cluster: &str) -> Option<&str> {
    let mut parts = cluster.splitn(4, '|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("outbound"), Some(_), Some(_), Some(host)) if !host.is_empty() => Some(host),
        _ => None,
    }
}

/// An address's IP and port (0 when it has none), if it is an IP socket address.
pub(super) fn socket(a: Option<&Address>) -> Option<(IpAddr, u32)> {
    match a?.address.as_ref()? {
        address::Address::SocketAddress(s) => {
            let ip = s.address.parse().ok()?;
            let port = match s.port_specifier {
                Some(
                    envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                        p,
                    ),
                ) => p,
                _ => 0,
            };
            Some((ip, port))
        }
        _ => None,
    }
}

fn unknown() -> String {
    UNKNOWN.to_string()
}

fn set_source(l: &mut Labels, p: &Peer) {
    l.source_workload = p.workload.clone();
    l.source_workload_namespace = p.namespace.clone();
    l.source_principal = p.principal.clone();
    l.source_app = p.app.clone();
    l.source_version = p.version.clone();
    l.source_canonical_service = p.canonical_service.clone();
    l.source_canonical_revision = p.canonical_revision.clone();
    l.source_cluster = CLUSTER_ID.into();
}

fn set_destination(l: &mut Labels, p: &Peer) {
    l.destination_workload = p.workload.clone();
    l.destination_workload_namespace = p.namespace.clone();
    l.destination_principal = p.principal.clone();
    l.destination_app = p.app.clone();
    l.destination_version = p.version.clone();
    l.destination_canonical_service = p.canonical_service.clone();
    l.destination_canonical_revision = p.canonical_revision.clone();
    l.destination_cluster = CLUSTER_ID.into();
}

fn set_destination_service(l: &mut Labels, host: &str) {
    l.destination_service = host.to_string();
    let mut parts = host.split('.');
    l.destination_service_name = parts.next().unwrap_or(UNKNOWN).to_string();
    l.destination_service_namespace = parts.next().unwrap_or(UNKNOWN).to_string();
}

pub fn labels(
    reporter: &Reporter,
    dir: Direction,
    common: &AccessLogCommon,
    req: Request<'_>,
    directory: &Directory,
) -> Labels {
    let mut l = Labels {
        reporter: String::new(),
        source_workload: unknown(),
        source_workload_namespace: unknown(),
        source_principal: unknown(),
        source_app: unknown(),
        source_version: unknown(),
        source_canonical_service: unknown(),
        source_canonical_revision: unknown(),
        source_cluster: unknown(),
        destination_service: unknown(),
        destination_service_name: unknown(),
        destination_service_namespace: unknown(),
        destination_workload: unknown(),
        destination_workload_namespace: unknown(),
        destination_principal: unknown(),
        destination_app: unknown(),
        destination_version: unknown(),
        destination_canonical_service: unknown(),
        destination_canonical_revision: unknown(),
        destination_cluster: unknown(),
        request_protocol: req.protocol.to_string(),
        response_code: req.response_code,
        grpc_response_status: req.grpc_status,
        response_flags: response_flags(common.response_flags.as_ref()),
        connection_security_policy: unknown(),
        custom: Vec::new(),
    };
    let me = reporter.peer();
    match dir {
        Direction::Outbound => {
            // Istio's source reporter cannot see the server's policy: `unknown`.
            l.reporter = "source".into();
            set_source(&mut l, &me);
            // A request that never reached a cluster (a fault abort, no route) has none: the
            // registry's service its authority names.
            let host = outbound_host(&common.upstream_cluster)
                .or_else(|| directory.service_named(req.authority, &me.namespace));
            if let Some(host) = host {
                set_destination_service(&mut l, host);
            }
            if let Some(peer) =
                socket(common.upstream_remote_address.as_ref()).and_then(|(ip, _)| directory.at(ip))
            {
                set_destination(&mut l, peer);
            }
        }
        Direction::Inbound => {
            l.reporter = "destination".into();
            set_destination(&mut l, &me);
            let verified = verified_peer(common);
            l.connection_security_policy = match verified {
                Some(_) => "mutual_tls".into(),
                None => "none".into(),
            };
            // An identity the registry has none of would be a label value of the reporter's
            // choosing (one series each): the policy stays, the identity is `unknown`.
            if let Some(p) = verified.filter(|p| directory.knows_principal(p)) {
                if let Some(ns) = spiffe_namespace(p) {
                    l.source_workload_namespace = ns.to_string();
                }
                l.source_principal = p.to_string();
                let at = socket(common.downstream_remote_address.as_ref())
                    .and_then(|(ip, _)| directory.at(ip))
                    .filter(|peer| peer.principal == p);
                if let Some(peer) = at {
                    set_source(&mut l, peer);
                }
            }
            let port = socket(common.downstream_local_address.as_ref()).map(|(_, port)| port);
            match directory.service_of(&me, port, req.authority) {
                Some(host) => set_destination_service(&mut l, host),
                // A workload no service selects: Istio falls back to its canonical name.
                None => set_destination_service(
                    &mut l,
                    &format!(
                        "{}.{}.svc.cluster.local",
                        me.canonical_service, me.namespace
                    ),
                ),
            }
        }
    }
    l
}

pub fn http_labels(
    reporter: &Reporter,
    dir: Direction,
    entry: &HttpAccessLogEntry,
    directory: &Directory,
) -> Labels {
    let default = AccessLogCommon::default();
    let common = entry.common_properties.as_ref().unwrap_or(&default);
    let response = entry.response.as_ref();
    // Envoy's 0 for no response; anything outside HTTP's codes is not one.
    let code = response
        .and_then(|r| r.response_code)
        .map(|c| c.value)
        .filter(|c| (100..=599).contains(c))
        .map_or_else(|| "0".into(), |c| c.to_string());
    let grpc = entry
        .request
        .as_ref()
        .and_then(|r| r.request_headers.get("content-type"))
        .is_some_and(|t| t.starts_with("application/grpc"));
    // A trailers-only gRPC answer carries its status as a header.
    let grpc_status = response
        .and_then(|r| {
            r.response_trailers
                .get("grpc-status")
                .or_else(|| r.response_headers.get("grpc-status"))
        })
        .filter(|s| s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit()))
        .cloned()
        .unwrap_or_default();
    let authority = entry
        .request
        .as_ref()
        .map(|r| r.authority.as_str())
        .unwrap_or("");
    let req = Request {
        protocol: if grpc { "grpc" } else { "http" },
        response_code: code,
        grpc_status,
        authority,
    };
    labels(reporter, dir, common, req, directory)
}

/// Envoy's short response-flag codes, `-` when none is set.
fn response_flags(flags: Option<&ResponseFlags>) -> String {
    let Some(f) = flags else { return "-".into() };
    let table = [
        (f.no_healthy_upstream, "UH"),
        (f.upstream_connection_failure, "UF"),
        (f.upstream_overflow, "UO"),
        (f.no_route_found, "NR"),
        (f.upstream_retry_limit_exceeded, "URX"),
        (f.upstream_request_timeout, "UT"),
        (f.local_reset, "LR"),
        (f.upstream_remote_reset, "UR"),
        (f.upstream_connection_termination, "UC"),
        (f.downstream_connection_termination, "DC"),
        (f.delay_injected, "DI"),
        (f.fault_injected, "FI"),
        (f.rate_limited, "RL"),
        (f.unauthorized_details.is_some(), "UAEX"),
        (f.downstream_protocol_error, "DPE"),
        (f.no_cluster_found, "NC"),
        (f.stream_idle_timeout, "SI"),
    ];
    let set: Vec<&str> = table
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, c)| *c)
        .collect();
    if set.is_empty() {
        "-".into()
    } else {
        set.join(",")
    }
}
