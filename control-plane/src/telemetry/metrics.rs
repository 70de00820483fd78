//! Istio's standard request and TCP metrics, kept with `prometheus-client` and attributed from
//! Envoy's gRPC access-log entries plus the reporting proxy's authenticated identity.
//!
//! Trust: the reporter's own labels (workload, namespace, principal, app, version) come from its
//! authenticated stream and the registry, never from the entry. The other side comes from
//! meshd's own generated names (`outbound|PORT|SUBSET|HOST` → destination service) or, on the
//! inbound side, from the peer certificate's URI SAN, which Envoy verified during the mTLS
//! handshake against the mesh CA; without a verified peer certificate the source is `unknown`.
//!
//! Cardinality: at most `max_series` distinct label sets are kept (default
//! [`DEFAULT_MAX_SERIES`]); entries that would add one more are counted in
//! `meshd_telemetry_series_dropped_total` and not recorded. Series whose reporting workload has
//! left the registry are removed by [`MeshMetrics::retain_reporters`].

use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, AccessLogType, HttpAccessLogEntry, ResponseFlags, TcpAccessLogEntry,
    tls_properties::certificate_properties::subject_alt_name::San,
};
use meshd_xds::proxy::Identity;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::Mutex;

/// Distinct label sets kept by default: one per (reporter, peer, code, flags) combination.
pub const DEFAULT_MAX_SERIES: usize = 10_000;

/// Istio's `istio_request_duration_milliseconds` buckets.
const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's request/response size buckets: powers of ten from 1 byte to 100 MB.
const SIZE_BUCKETS: [f64; 9] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

const UNKNOWN: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Labels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub request_protocol: String,
    pub response_code: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

/// The proxy that sent the entries, as proven by its stream and known to the registry.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub identity: Identity,
    pub app: String,
    pub version: String,
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
            crate::telemetry::INBOUND_LOG => Some(Direction::Inbound),
            crate::telemetry::OUTBOUND_LOG => Some(Direction::Outbound),
            _ => None,
        }
    }
}

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS.iter().copied())
}
fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS.iter().copied())
}

pub struct MeshMetrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    duration: HistogramFamily,
    request_bytes: HistogramFamily,
    response_bytes: HistogramFamily,
    tcp_sent: Family<Labels, Counter>,
    tcp_received: Family<Labels, Counter>,
    tcp_opened: Family<Labels, Counter>,
    tcp_closed: Family<Labels, Counter>,
    dropped: Counter,
    series: Mutex<HashSet<Labels>>,
    max_series: usize,
}

impl MeshMetrics {
    pub fn new(max_series: usize) -> MeshMetrics {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let request_bytes: HistogramFamily = Family::new_with_constructor(size_histogram);
        let response_bytes: HistogramFamily = Family::new_with_constructor(size_histogram);
        let tcp_sent = Family::<Labels, Counter>::default();
        let tcp_received = Family::<Labels, Counter>::default();
        let tcp_opened = Family::<Labels, Counter>::default();
        let tcp_closed = Family::<Labels, Counter>::default();
        let dropped = Counter::default();
        registry.register("istio_requests", "Requests", requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration",
            duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request sizes",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response sizes",
            response_bytes.clone(),
        );
        registry.register("istio_tcp_sent_bytes", "Bytes sent", tcp_sent.clone());
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received",
            tcp_received.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        registry.register(
            "meshd_telemetry_series_dropped",
            "Access-log entries not recorded because the series cap was reached",
            dropped.clone(),
        );
        MeshMetrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp_sent,
            tcp_received,
            tcp_opened,
            tcp_closed,
            dropped,
            series: Mutex::new(HashSet::new()),
            max_series,
        }
    }

    /// Admits a label set under the cap; `false` means the entry is dropped (and counted).
    fn admit(&self, labels: &Labels) -> bool {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if series.contains(labels) {
            return true;
        }
        if series.len() >= self.max_series {
            self.dropped.inc();
            return false;
        }
        series.insert(labels.clone());
        true
    }

    pub fn record_http(&self, reporter: &Reporter, dir: Direction, entry: &HttpAccessLogEntry) {
        let labels = http_labels(reporter, dir, entry);
        if !self.admit(&labels) {
            return;
        }
        let common = entry.common_properties.as_ref();
        let duration_ms = common
            .and_then(|c| c.duration.or(c.time_to_last_downstream_tx_byte))
            .map(|d| d.seconds.max(0) as f64 * 1000.0 + f64::from(d.nanos.max(0)) / 1e6)
            .unwrap_or(0.0);
        let req = entry
            .request
            .as_ref()
            .map(|r| r.request_headers_bytes.saturating_add(r.request_body_bytes))
            .unwrap_or(0);
        let resp = entry
            .response
            .as_ref()
            .map(|r| {
                r.response_headers_bytes
                    .saturating_add(r.response_body_bytes)
            })
            .unwrap_or(0);
        self.requests.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(duration_ms);
        self.request_bytes
            .get_or_create(&labels)
            .observe(req as f64);
        self.response_bytes
            .get_or_create(&labels)
            .observe(resp as f64);
    }

    /// A TCP entry is one finished connection: meshd configures no periodic or start-of-
    /// connection TCP logs, so any other kind is ignored rather than counted twice.
    pub fn record_tcp(&self, reporter: &Reporter, dir: Direction, entry: &TcpAccessLogEntry) {
        let common = entry.common_properties.clone().unwrap_or_default();
        let end = [
            AccessLogType::NotSet as i32,
            AccessLogType::TcpConnectionEnd as i32,
        ];
        if !end.contains(&common.access_log_type) {
            return;
        }
        let labels = peer_labels(reporter, dir, &common, "tcp", String::new());
        if !self.admit(&labels) {
            return;
        }
        let conn = entry.connection_properties.unwrap_or_default();
        self.tcp_sent.get_or_create(&labels).inc_by(conn.sent_bytes);
        self.tcp_received
            .get_or_create(&labels)
            .inc_by(conn.received_bytes);
        self.tcp_opened.get_or_create(&labels).inc();
        self.tcp_closed.get_or_create(&labels).inc();
    }

    /// Removes every series reported by a workload `live` rejects (gone from the registry).
    pub fn retain_reporters(&self, live: impl Fn(&str, &str) -> bool) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.retain(|l| {
            let (workload, namespace) = match l.reporter.as_str() {
                "source" => (&l.source_workload, &l.source_workload_namespace),
                _ => (&l.destination_workload, &l.destination_workload_namespace),
            };
            if live(workload, namespace) {
                return true;
            }
            self.requests.remove(l);
            self.duration.remove(l);
            self.request_bytes.remove(l);
            self.response_bytes.remove(l);
            self.tcp_sent.remove(l);
            self.tcp_received.remove(l);
            self.tcp_opened.remove(l);
            self.tcp_closed.remove(l);
            false
        });
    }

    pub fn series_count(&self) -> usize {
        self.series.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Appends the families in Prometheus text format (without OpenMetrics' `# EOF`, since
    /// the admin endpoint writes more metrics around them).
    pub fn encode_into(&self, out: &mut String) {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            return;
        }
        out.push_str(text.trim_end().trim_end_matches("# EOF"));
    }
}

fn principal(id: &Identity) -> String {
    id.spiffe_id()
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

/// The URI SAN of the peer certificate Envoy verified, if the connection was mTLS.
fn verified_peer(common: &AccessLogCommon) -> Option<String> {
    let peer = common
        .tls_properties
        .as_ref()?
        .peer_certificate_properties
        .as_ref()?;
    peer.subject_alt_name.iter().find_map(|s| match &s.san {
        Some(San::Uri(u)) if u.starts_with("spiffe://") => Some(u.clone()),
        _ => None,
    })
}

/// `outbound|PORT|SUBSET|HOST` → HOST (the service's FQDN), for clusters meshd generated.
fn outbound_host(cluster: &str) -> Option<&str> {
    let mut parts = cluster.splitn(4, '|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("outbound"), Some(_), Some(_), Some(host)) if !host.is_empty() => Some(host),
        _ => None,
    }
}

fn unknown() -> String {
    UNKNOWN.to_string()
}

fn peer_labels(
    reporter: &Reporter,
    dir: Direction,
    common: &AccessLogCommon,
    protocol: &str,
    response_code: String,
) -> Labels {
    let me = &reporter.identity;
    let flags = response_flags(common.response_flags.as_ref());
    let peer = verified_peer(common);
    let mut l = Labels {
        reporter: String::new(),
        source_workload: unknown(),
        source_workload_namespace: unknown(),
        source_principal: unknown(),
        source_app: unknown(),
        source_version: unknown(),
        destination_service: unknown(),
        destination_service_name: unknown(),
        destination_service_namespace: unknown(),
        destination_workload: unknown(),
        destination_workload_namespace: unknown(),
        destination_principal: unknown(),
        destination_app: unknown(),
        destination_version: unknown(),
        request_protocol: protocol.to_string(),
        response_code,
        response_flags: flags,
        connection_security_policy: unknown(),
    };
    match dir {
        Direction::Outbound => {
            l.reporter = "source".into();
            l.source_workload = me.workload.clone();
            l.source_workload_namespace = me.namespace.clone();
            l.source_principal = principal(me);
            l.source_app = reporter.app.clone();
            l.source_version = reporter.version.clone();
            if let Some(host) = outbound_host(&common.upstream_cluster) {
                set_destination_service(&mut l, host);
            }
        }
        Direction::Inbound => {
            l.reporter = "destination".into();
            l.destination_workload = me.workload.clone();
            l.destination_workload_namespace = me.namespace.clone();
            l.destination_principal = principal(me);
            l.destination_app = reporter.app.clone();
            l.destination_version = reporter.version.clone();
            l.connection_security_policy = match &peer {
                Some(_) => "mutual_tls".into(),
                None => "none".into(),
            };
            if let Some(p) = peer {
                if let Some(ns) = spiffe_namespace(&p) {
                    l.source_workload_namespace = ns.to_string();
                }
                l.source_principal = p;
            }
            // The service the caller asked for: the authority's host when it is a mesh name,
            // else the reporter's app (Istio falls back to the workload's canonical name).
            let app = if reporter.app == UNKNOWN {
                me.workload.clone()
            } else {
                reporter.app.clone()
            };
            set_destination_service(&mut l, &format!("{app}.{}.svc.cluster.local", me.namespace));
        }
    }
    l
}

fn set_destination_service(l: &mut Labels, host: &str) {
    l.destination_service = host.to_string();
    let mut parts = host.split('.');
    l.destination_service_name = parts.next().unwrap_or(UNKNOWN).to_string();
    l.destination_service_namespace = parts.next().unwrap_or(UNKNOWN).to_string();
}

pub fn http_labels(reporter: &Reporter, dir: Direction, entry: &HttpAccessLogEntry) -> Labels {
    let common = entry.common_properties.clone().unwrap_or_default();
    let code = entry
        .response
        .as_ref()
        .and_then(|r| r.response_code)
        .map(|c| c.value.to_string())
        .unwrap_or_else(|| "0".into());
    // HTTP/2 and HTTP/3 are "grpc" in Istio only by content type; meshd reports "http".
    peer_labels(reporter, dir, &common, "http", code)
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

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
