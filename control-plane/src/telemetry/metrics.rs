//! Istio's standard request and TCP metrics, kept with `prometheus-client`: one series per
//! label set of [`super::labels`], recorded from Envoy's gRPC access-log entries.
//!
//! Cardinality, per [`SeriesLimits`]: at most `total` distinct label sets are kept, and at most
//! `per_reporter` of them reported by any one workload, so one proxy (misbehaving, or sending
//! what it likes) cannot take the budget of the others. An entry that would add a label set over
//! either limit is not recorded and is counted in `meshd_telemetry_series_dropped_total{limit}`.
//! Series naming a workload that has left the registry (as reporter or as peer) are removed by
//! [`MeshMetrics::retain_workloads`].

use super::attributes::EntryAttributes;
use super::directory::Directory;
use super::labels::{Direction, Labels, Reporter, Request, UNKNOWN, http_labels, labels};
use super::tcp_conns::{ConnKey, OpenConnections, Step};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, AccessLogType, HttpAccessLogEntry, TcpAccessLogEntry,
};
use meshd_model::telemetry::IstioMetric;
use meshd_model::telemetry_scope::MetricsPolicy;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// How many distinct label sets are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeriesLimits {
    /// In all: a series is one (reporter, peer, service, code, flags) combination, about 1 KiB
    /// of labels and buckets per family, so 10 000 stay within tens of MB.
    pub total: usize,
    /// Reported by one workload: a sidecar calling 20 services with 5 outcomes each needs 100
    /// per direction; a gateway more.
    pub per_reporter: usize,
}

pub const DEFAULT_MAX_SERIES: usize = 10_000;
pub const DEFAULT_MAX_SERIES_PER_REPORTER: usize = 1_000;

impl Default for SeriesLimits {
    fn default() -> Self {
        SeriesLimits {
            total: DEFAULT_MAX_SERIES,
            per_reporter: DEFAULT_MAX_SERIES_PER_REPORTER,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    limit: &'static str,
}

/// The label sets kept, and how many each reporting workload holds.
#[derive(Default)]
struct Kept {
    all: HashSet<Labels>,
    by_reporter: HashMap<(String, String), usize>,
}

/// The reporting workload of a label set.
fn reporter_of(l: &Labels) -> (String, String) {
    match l.reporter.as_str() {
        "source" => (
            l.source_workload.clone(),
            l.source_workload_namespace.clone(),
        ),
        _ => (
            l.destination_workload.clone(),
            l.destination_workload_namespace.clone(),
        ),
    }
}

/// Istio's `istio_request_duration_milliseconds` buckets.
const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's request/response size buckets: powers of ten from 1 byte to 100 MB.
const SIZE_BUCKETS: [f64; 9] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

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
    dropped: Family<DropLabels, Counter>,
    series: Mutex<Kept>,
    /// TCP connections reported while open: what of each is already counted.
    open_tcp: OpenConnections,
    limits: SeriesLimits,
    /// The dashboard's per-edge totals, recorded with the request families.
    edges: super::edges::Edges,
}

impl MeshMetrics {
    pub fn new(limits: SeriesLimits) -> MeshMetrics {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let request_bytes: HistogramFamily = Family::new_with_constructor(size_histogram);
        let response_bytes: HistogramFamily = Family::new_with_constructor(size_histogram);
        let tcp_sent = Family::<Labels, Counter>::default();
        let tcp_received = Family::<Labels, Counter>::default();
        let tcp_opened = Family::<Labels, Counter>::default();
        let tcp_closed = Family::<Labels, Counter>::default();
        let dropped = Family::<DropLabels, Counter>::default();
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
            "Access-log entries not recorded because a new series would exceed a limit (total, reporter)",
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
            series: Mutex::new(Kept::default()),
            open_tcp: OpenConnections::default(),
            limits,
            edges: Default::default(),
        }
    }

    /// Runs `record` for `labels` when the set is kept or fits under the cap, else counts a
    /// drop. The set stays locked while recording, so a concurrent prune cannot leave a series
    /// recorded but no longer counted against the cap.
    fn with_series(&self, labels: &Labels, record: impl FnOnce()) {
        let mut kept = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if !kept.all.contains(labels) {
            let reporter = reporter_of(labels);
            let held = kept.by_reporter.get(&reporter).copied().unwrap_or(0);
            let over = if kept.all.len() >= self.limits.total {
                Some("total")
            } else if held >= self.limits.per_reporter {
                Some("reporter")
            } else {
                None
            };
            if let Some(limit) = over {
                self.dropped.get_or_create(&DropLabels { limit }).inc();
                return;
            }
            kept.all.insert(labels.clone());
            kept.by_reporter.insert(reporter, held + 1);
        }
        record();
    }

    pub fn record_http(
        &self,
        reporter: &Reporter,
        dir: Direction,
        entry: &HttpAccessLogEntry,
        directory: &Directory,
    ) {
        let labels = http_labels(reporter, dir, entry, directory);
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
        let policy = reporter.metrics(dir);
        if super::overrides::is_default(policy) {
            self.with_series(&labels, || {
                self.requests.get_or_create(&labels).inc();
                self.duration.get_or_create(&labels).observe(duration_ms);
                self.request_bytes
                    .get_or_create(&labels)
                    .observe(req as f64);
                self.response_bytes
                    .get_or_create(&labels)
                    .observe(resp as f64);
                self.edges.record(&labels, duration_ms);
            });
            return;
        }
        // The dashboard's edges are meshd's own, not Istio's metrics: overrides leave them be.
        self.with_series(&labels, || self.edges.record(&labels, duration_ms));
        let default = Default::default();
        let attrs =
            EntryAttributes::http(entry.common_properties.as_ref().unwrap_or(&default), entry);
        let each =
            |metric, record: &dyn Fn(&Labels)| self.each(policy, &labels, metric, &attrs, record);
        each(IstioMetric::RequestCount, &|l| {
            self.requests.get_or_create(l).inc();
        });
        each(IstioMetric::RequestDuration, &|l| {
            self.duration.get_or_create(l).observe(duration_ms);
        });
        each(IstioMetric::RequestSize, &|l| {
            self.request_bytes.get_or_create(l).observe(req as f64);
        });
        each(IstioMetric::ResponseSize, &|l| {
            self.response_bytes.get_or_create(l).observe(resp as f64);
        });
    }

    /// Records one metric of an entry under a Telemetry metrics override: not at all when it is
    /// disabled, with its tags removed otherwise.
    fn each(
        &self,
        policy: &MetricsPolicy,
        labels: &Labels,
        metric: IstioMetric,
        attrs: &EntryAttributes<'_>,
        record: &dyn Fn(&Labels),
    ) {
        if let Some(l) = super::overrides::labels_for(policy, metric, labels, attrs) {
            self.with_series(&l, || record(&l));
        }
    }

    /// A TCP entry reports a connection when its upstream connects, periodically while it
    /// lasts, and when it ends ([`OpenConnections`]): the connection counts as opened and
    /// closed once each, its bytes as they flow.
    pub fn record_tcp(
        &self,
        reporter: &Reporter,
        dir: Direction,
        entry: &TcpAccessLogEntry,
        directory: &Directory,
    ) {
        let default = Default::default();
        let common = entry.common_properties.as_ref().unwrap_or(&default);
        let Ok(kind) = AccessLogType::try_from(common.access_log_type) else {
            return;
        };
        let conn = entry.connection_properties.unwrap_or_default();
        let key = ConnKey {
            workload: reporter.identity.workload.clone(),
            namespace: reporter.identity.namespace.clone(),
            outbound: dir == Direction::Outbound,
            id: connection_id(common),
        };
        let step = self
            .open_tcp
            .step(key, kind, conn.sent_bytes, conn.received_bytes);
        if step == Step::default() {
            return;
        }
        let req = Request {
            protocol: "tcp",
            response_code: String::new(),
            grpc_status: String::new(),
            authority: "",
        };
        let labels = labels(reporter, dir, common, req, directory);
        let policy = reporter.metrics(dir);
        let count = |family: &Family<Labels, Counter>, l: &Labels, n: u64| {
            if n > 0 {
                family.get_or_create(l).inc_by(n);
            }
        };
        if super::overrides::is_default(policy) {
            self.with_series(&labels, || {
                count(&self.tcp_sent, &labels, step.sent);
                count(&self.tcp_received, &labels, step.received);
                count(&self.tcp_opened, &labels, u64::from(step.opened));
                count(&self.tcp_closed, &labels, u64::from(step.closed));
            });
            return;
        }
        let attrs = EntryAttributes::tcp(common);
        let each =
            |metric, record: &dyn Fn(&Labels)| self.each(policy, &labels, metric, &attrs, record);
        each(IstioMetric::TcpSentBytes, &|l| {
            count(&self.tcp_sent, l, step.sent)
        });
        each(IstioMetric::TcpReceivedBytes, &|l| {
            count(&self.tcp_received, l, step.received)
        });
        each(IstioMetric::TcpOpenedConnections, &|l| {
            count(&self.tcp_opened, l, u64::from(step.opened))
        });
        each(IstioMetric::TcpClosedConnections, &|l| {
            count(&self.tcp_closed, l, u64::from(step.closed))
        });
    }

    /// Removes every series naming a workload (reporter or peer) that `live` rejects: gone
    /// from the registry. `unknown` peers are no workload and never remove a series.
    pub fn retain_workloads(&self, live: impl Fn(&str, &str) -> bool) {
        let named_live = |w: &str, ns: &str| w == UNKNOWN || live(w, ns);
        let mut kept = self.series.lock().unwrap_or_else(|e| e.into_inner());
        self.edges.retain(named_live);
        let Kept { all, by_reporter } = &mut *kept;
        all.retain(|l| {
            if named_live(&l.source_workload, &l.source_workload_namespace)
                && named_live(&l.destination_workload, &l.destination_workload_namespace)
            {
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
            let reporter = reporter_of(l);
            if let Some(n) = by_reporter.get_mut(&reporter) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    by_reporter.remove(&reporter);
                }
            }
            false
        });
    }

    /// Request totals per graph edge, for the dashboard.
    pub fn edges(
        &self,
    ) -> std::collections::HashMap<super::edges::EdgeKey, super::edges::EdgeTotals> {
        self.edges.snapshot()
    }

    pub fn series_count(&self) -> usize {
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all
            .len()
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

/// A connection's identity across its entries: Envoy's stream id, or (without one) its
/// downstream address pair, unique among the reporter's open connections.
fn connection_id(common: &AccessLogCommon) -> String {
    if !common.stream_id.is_empty() {
        return common.stream_id.clone();
    }
    format!(
        "{:?}>{:?}",
        common.downstream_remote_address, common.downstream_local_address
    )
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
