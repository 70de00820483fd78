//! Telemetry in force for one workload: the mesh-wide object (root namespace, no selector), its
//! namespace's (no selector) and its own (selector matching its labels), the most specific
//! setting each field, as Istio documents. The result is plain data the generator and meshd's
//! metric recording both read; it is hashable so that scopes agreeing on it share listeners.

use crate::mesh::MeshConfig;
use crate::networking::Labels;
use crate::registry::selector_matches;
use crate::telemetry::{
    AccessLogging, CustomTag, IstioMetric, MetricsOverrides, PROVIDER_ENVOY,
    PROVIDER_OPENTELEMETRY, ProviderRef, TagOverride, Telemetry, Tracing,
};
use crate::{ConfigObject, Spec};
use std::collections::{BTreeMap, BTreeSet};

/// Istio's root namespace, where a Telemetry without selector is mesh-wide (meshd has no
/// MeshConfig to move it; the generator's `GenOptions::root_namespace` defaults to it too).
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Sampling in millionths of a request (Envoy's `Percent` keeps a double; these are exact and
/// hashable): 100 % is [`SAMPLING_SCALE`].
pub const SAMPLING_SCALE: u32 = 1_000_000;

/// What one side (client = outbound, server = inbound) of a workload reports.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SideTelemetry {
    /// `None`: meshd's default tracer (Zipkin when `--zipkin-address` is set, else OpenTelemetry
    /// when `--otel-address` is).
    pub tracing_provider: Option<String>,
    /// `None`: the mesh default (`meshd serve --trace-sampling`).
    pub sampling: Option<u32>,
    pub span_reporting: bool,
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// Whether Envoy samples by the request id (`None`: Envoy's default, yes), so that every
    /// proxy on a request's path takes the same decision.
    pub request_id_sampling: Option<bool>,
    /// Spans carry Istio's tags (`istio.canonical_service`, …); on unless a Telemetry says not.
    pub istio_tags: bool,
    /// The JSON access log on stdout (provider `envoy`).
    pub access_log: bool,
    /// A CEL expression: only the requests it holds for are logged on stdout.
    pub access_log_filter: Option<String>,
    /// The OTLP access log to the OpenTelemetry collector (provider `opentelemetry`): off until
    /// a Telemetry names it.
    pub otel_access_log: bool,
    /// The OTLP access log's CEL expression, as `access_log_filter` is stdout's.
    pub otel_access_log_filter: Option<String>,
    pub metrics: MetricsPolicy,
}

impl Default for SideTelemetry {
    fn default() -> Self {
        SideTelemetry {
            tracing_provider: None,
            sampling: None,
            span_reporting: true,
            custom_tags: BTreeMap::new(),
            request_id_sampling: None,
            istio_tags: true,
            access_log: true,
            access_log_filter: None,
            otel_access_log: false,
            otel_access_log_filter: None,
            metrics: MetricsPolicy::default(),
        }
    }
}

/// Metrics overrides: the metrics disabled, and per metric the tags upserted or removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MetricsPolicy {
    pub disabled: BTreeSet<IstioMetric>,
    pub tags: BTreeMap<IstioMetric, BTreeMap<String, TagAction>>,
    /// `reportingInterval`: how often a TCP connection's bytes are reported while it lasts;
    /// `None` is Istio's default, [`DEFAULT_TCP_REPORTING`].
    pub tcp_reporting: Option<std::time::Duration>,
}

/// Istio's default interval between the TCP metrics of a connection that is still open.
pub const DEFAULT_TCP_REPORTING: std::time::Duration = std::time::Duration::from_secs(15);

/// What an override does to one tag of a metric.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TagAction {
    Remove,
    Upsert(crate::telemetry_tag::TagValue),
}

impl TagAction {
    /// `None` for an override validation refuses (an UPSERT without a value meshd computes).
    fn from_override(o: &TagOverride) -> Option<TagAction> {
        match o.operation {
            crate::telemetry::TagOperation::Remove => Some(TagAction::Remove),
            crate::telemetry::TagOperation::Upsert => {
                crate::telemetry_tag::parse(o.value.as_deref()?)
                    .ok()
                    .map(TagAction::Upsert)
            }
        }
    }
}

impl MetricsPolicy {
    /// How often an open TCP connection's bytes are reported.
    pub fn tcp_reporting_interval(&self) -> std::time::Duration {
        self.tcp_reporting.unwrap_or(DEFAULT_TCP_REPORTING)
    }

    pub fn enabled(&self, metric: IstioMetric) -> bool {
        !self.disabled.contains(&metric)
    }

    /// Whether no metric is recorded at all: the gRPC access-log stream feeding them is idle.
    pub fn all_disabled(&self) -> bool {
        IstioMetric::EACH.iter().all(|m| self.disabled.contains(m))
    }

    /// The request and response headers upserted tags read: the access-log entries must carry
    /// them, since Envoy logs only the headers it is told to.
    pub fn headers_read(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        use crate::telemetry_tag::{Attribute, TagValue};
        let mut request = BTreeSet::new();
        let mut response = BTreeSet::new();
        for action in self.tags.values().flat_map(|t| t.values()) {
            match action {
                TagAction::Upsert(TagValue::Attribute(Attribute::RequestHeader(h))) => {
                    request.insert(h.clone());
                }
                TagAction::Upsert(TagValue::Attribute(Attribute::ResponseHeader(h))) => {
                    response.insert(h.clone());
                }
                _ => {}
            }
        }
        (request, response)
    }

    fn apply(&mut self, o: &MetricsOverrides) {
        let metric = o
            .r#match
            .as_ref()
            .and_then(|m| m.metric)
            .unwrap_or(IstioMetric::AllMetrics);
        for m in IstioMetric::EACH.into_iter().filter(|m| metric.covers(*m)) {
            match o.disabled {
                Some(true) => {
                    self.disabled.insert(m);
                }
                Some(false) => {
                    self.disabled.remove(&m);
                }
                None => {}
            }
            for (tag, op) in &o.tag_overrides {
                if let Some(action) = TagAction::from_override(op) {
                    self.tags.entry(m).or_default().insert(tag.clone(), action);
                }
            }
        }
    }
}

/// Both sides of a workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TelemetryPolicy {
    pub client: SideTelemetry,
    pub server: SideTelemetry,
}

impl TelemetryPolicy {
    pub fn side(&self, client: bool) -> &SideTelemetry {
        if client { &self.client } else { &self.server }
    }

    fn sides(&mut self) -> [(bool, &mut SideTelemetry); 2] {
        [(true, &mut self.client), (false, &mut self.server)]
    }

    /// `t` laid over what is already resolved (a less specific scope's).
    fn overlay(&mut self, t: &Telemetry) {
        for (client, side) in self.sides() {
            for tracing in t.tracing.iter().filter(|x| mode_covers(&x.r#match, client)) {
                overlay_tracing(side, tracing);
            }
            let logging: Vec<&AccessLogging> = t
                .access_logging
                .iter()
                .filter(|x| mode_covers(&x.r#match, client))
                .collect();
            overlay_logging(side, &logging);
            for metrics in &t.metrics {
                let interval = metrics.reporting_interval.as_deref();
                if let Some(d) = interval.and_then(|i| crate::duration::parse(i).ok()) {
                    side.metrics.tcp_reporting = Some(d);
                }
                for o in metrics.overrides.iter().filter(|o| {
                    o.r#match.as_ref().is_none_or(|m| m.mode.covers(client))
                        && o.r#match.as_ref().is_none_or(|m| m.custom_metric.is_none())
                }) {
                    side.metrics.apply(o);
                }
            }
        }
    }
}

fn mode_covers(selector: &Option<crate::telemetry::ModeSelector>, client: bool) -> bool {
    selector.as_ref().is_none_or(|m| m.mode.covers(client))
}

fn overlay_tracing(side: &mut SideTelemetry, t: &Tracing) {
    if let Some(p) = t.providers.first() {
        side.tracing_provider = Some(p.name.clone());
    }
    if let Some(pct) = t.random_sampling_percentage
        && (0.0..=100.0).contains(&pct)
    {
        side.sampling = Some((pct * f64::from(SAMPLING_SCALE) / 100.0).round() as u32);
    }
    if let Some(off) = t.disable_span_reporting {
        side.span_reporting = !off;
    }
    if !t.custom_tags.is_empty() {
        side.custom_tags = t.custom_tags.clone();
    }
    if let Some(v) = t.use_request_id_for_trace_sampling {
        side.request_id_sampling = Some(v);
    }
    if let Some(v) = t.enable_istio_tags {
        side.istio_tags = v;
    }
}

/// Which access logs a Telemetry entry is about.
#[derive(Clone, Copy)]
struct Logs {
    stdout: bool,
    otel: bool,
}

impl Logs {
    /// An entry naming no provider is about access logging as a whole.
    const EVERY: Logs = Logs {
        stdout: true,
        otel: true,
    };

    fn named<'a>(providers: impl IntoIterator<Item = &'a ProviderRef>) -> Logs {
        let mut logs = Logs {
            stdout: false,
            otel: false,
        };
        for p in providers {
            match p.name.as_str() {
                PROVIDER_ENVOY => logs.stdout = true,
                PROVIDER_OPENTELEMETRY => logs.otel = true,
                _ => {}
            }
        }
        logs
    }
}

impl SideTelemetry {
    fn turn(&mut self, logs: Logs, on: bool) {
        if logs.stdout {
            self.access_log = on;
        }
        if logs.otel {
            self.otel_access_log = on;
        }
    }
}

/// One scope's `accessLogging` entries (those for this side) over the less specific scopes'.
/// As Istio: the providers a scope names, across its entries, are the logs that run (a scope
/// naming none keeps the ones in force); then each entry in order turns the logs it names (every
/// log when it names none) off with `disabled: true`, and sets their filter. `disabled: false`
/// naming none brings back the stdout log, the default provider.
fn overlay_logging(side: &mut SideTelemetry, entries: &[&AccessLogging]) {
    let named = Logs::named(entries.iter().flat_map(|e| &e.providers));
    if named.stdout || named.otel {
        side.access_log = named.stdout;
        side.otel_access_log = named.otel;
    }
    for e in entries {
        let logs = if e.providers.is_empty() {
            Logs::EVERY
        } else {
            Logs::named(&e.providers)
        };
        match e.disabled {
            Some(true) => side.turn(logs, false),
            Some(false) if e.providers.is_empty() => side.access_log = true,
            _ if !e.providers.is_empty() => side.turn(logs, true),
            _ => {}
        }
        if let Some(f) = &e.filter {
            let expression = (!f.expression.is_empty()).then(|| f.expression.clone());
            if logs.stdout {
                side.access_log_filter = expression.clone();
            }
            if logs.otel {
                side.otel_access_log_filter = expression;
            }
        }
    }
}

/// The Telemetry objects of `config`, in (namespace, name) order.
pub fn telemetries(config: &MeshConfig) -> Vec<std::sync::Arc<ConfigObject>> {
    config
        .objects
        .values()
        .filter(|o| matches!(o.spec, Spec::Telemetry(_)))
        .cloned()
        .collect()
}

/// The Telemetry in force for a workload in `namespace` with `labels` (a gateway too), from
/// `objects` (those of [`telemetries`]). Where several objects of one scope apply, the first by
/// name wins, as one must.
pub fn resolve(
    objects: &[std::sync::Arc<ConfigObject>],
    root_namespace: &str,
    namespace: &str,
    labels: &Labels,
) -> TelemetryPolicy {
    let mut policy = TelemetryPolicy::default();
    if objects.is_empty() {
        return policy;
    }
    let in_ns = |ns: &str, selected: bool| {
        objects
            .iter()
            .filter_map(|o| match &o.spec {
                Spec::Telemetry(t) => Some((o, t)),
                _ => None,
            })
            .find(|(o, t)| {
                o.meta.namespace() == ns
                    && match (&t.selector, selected) {
                        (None, false) => true,
                        (Some(s), true) => selector_matches(&s.labels, labels),
                        _ => false,
                    }
            })
            .map(|(_, t)| t)
    };
    if let Some(t) = in_ns(root_namespace, false) {
        policy.overlay(t);
    }
    if namespace != root_namespace
        && let Some(t) = in_ns(namespace, false)
    {
        policy.overlay(t);
    }
    if let Some(t) = in_ns(namespace, true) {
        policy.overlay(t);
    }
    policy
}

#[cfg(test)]
#[path = "telemetry_scope_tests.rs"]
mod tests;
