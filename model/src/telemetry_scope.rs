//! Telemetry in force for one workload: the mesh-wide object (root namespace, no selector), its
//! namespace's (no selector) and its own (selector matching its labels), the most specific
//! setting each field, as Istio documents. The result is plain data the generator and meshd's
//! metric recording both read; it is hashable so that scopes agreeing on it share listeners.

use crate::mesh::MeshConfig;
use crate::networking::Labels;
use crate::registry::selector_matches;
use crate::telemetry::{
    AccessLogging, CustomTag, IstioMetric, MetricsOverrides, PROVIDER_ENVOY, TagOverride,
    Telemetry, Tracing,
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
    /// The JSON access log on stdout (provider `envoy`).
    pub access_log: bool,
    /// A CEL expression: only the requests it holds for are logged.
    pub access_log_filter: Option<String>,
    pub metrics: MetricsPolicy,
}

impl Default for SideTelemetry {
    fn default() -> Self {
        SideTelemetry {
            tracing_provider: None,
            sampling: None,
            span_reporting: true,
            custom_tags: BTreeMap::new(),
            access_log: true,
            access_log_filter: None,
            metrics: MetricsPolicy::default(),
        }
    }
}

/// Metrics overrides: the metrics disabled, and per metric the tags upserted or removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MetricsPolicy {
    pub disabled: BTreeSet<IstioMetric>,
    pub tags: BTreeMap<IstioMetric, BTreeMap<String, TagOverride>>,
}

impl MetricsPolicy {
    pub fn enabled(&self, metric: IstioMetric) -> bool {
        !self.disabled.contains(&metric)
    }

    /// Whether no metric is recorded at all: the gRPC access-log stream feeding them is idle.
    pub fn all_disabled(&self) -> bool {
        IstioMetric::EACH.iter().all(|m| self.disabled.contains(m))
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
                self.tags
                    .entry(m)
                    .or_default()
                    .insert(tag.clone(), op.clone());
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
            for log in t
                .access_logging
                .iter()
                .filter(|x| mode_covers(&x.r#match, client))
            {
                overlay_logging(side, log);
            }
            for metrics in &t.metrics {
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
}

fn overlay_logging(side: &mut SideTelemetry, l: &AccessLogging) {
    let names_envoy =
        l.providers.is_empty() || l.providers.iter().any(|p| p.name == PROVIDER_ENVOY);
    match l.disabled {
        Some(true) => side.access_log = false,
        _ if !l.providers.is_empty() => side.access_log = names_envoy,
        Some(false) => side.access_log = true,
        None => {}
    }
    if let Some(f) = &l.filter {
        side.access_log_filter = (!f.expression.is_empty()).then(|| f.expression.clone());
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
