//! What the ADS server does, under Istio's control-plane metric names (`pilot_xds`,
//! `pilot_xds_pushes`, `pilot_total_xds_rejects`, `pilot_xds_{cds,eds,lds,rds}_reject`,
//! `pilot_proxy_convergence_time`), so the dashboards and alerts written for istiod read meshd
//! unchanged. Labels are bounded: the xDS type only, never a proxy.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// A counter exposed under the name it is registered with, without OpenMetrics' `_total`
/// suffix: Istio's control-plane counters (`pilot_xds_pushes`, `citadel_server_csr_count`) are
/// named so, and the dashboards query those names.
#[derive(Clone, Debug, Default)]
pub struct BareCounter(Counter);

impl BareCounter {
    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn inc_by(&self, n: u64) {
        self.0.inc_by(n);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for BareCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for BareCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        // The text encoder appends `_total` to counters; a gauge-shaped sample line does not.
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsType {
    /// `cds`, `eds`, `lds`, `rds`, `sds`, `ecds` (Istio's short names), `bootstrap`; `other`
    /// for any other.
    pub r#type: &'static str,
}

impl XdsType {
    pub fn of(type_url: &str) -> XdsType {
        use meshd_xds::resource::{
            BOOTSTRAP, CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SECRET,
        };
        let short = match type_url {
            CLUSTER => "cds",
            ENDPOINT => "eds",
            LISTENER => "lds",
            ROUTE => "rds",
            SECRET => "sds",
            EXTENSION_CONFIG => "ecds",
            BOOTSTRAP => "bootstrap",
            _ => "other",
        };
        XdsType { r#type: short }
    }
}

/// Istio's `pilot_proxy_convergence_time` buckets (seconds).
const CONVERGENCE_BUCKETS: [f64; 8] = [0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];
/// Istio's `pilot_xds_push_time` buckets (seconds).
const PUSH_TIME_BUCKETS: [f64; 8] = [0.01, 0.1, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];

fn push_time_histogram() -> Histogram {
    Histogram::new(PUSH_TIME_BUCKETS)
}

#[derive(Debug)]
pub struct PilotMetrics {
    /// Proxies with an open ADS stream.
    pub xds: Gauge,
    pub pushes: Family<XdsType, BareCounter>,
    pub rejects: Family<XdsType, BareCounter>,
    /// From a snapshot's build to the end of the push it caused, per proxy.
    pub convergence: Histogram,
    /// One response's diff, encoding and hand-over to its stream, by type.
    pub push_time: Family<XdsType, Histogram, fn() -> Histogram>,
}

impl Default for PilotMetrics {
    fn default() -> Self {
        PilotMetrics {
            xds: Gauge::default(),
            pushes: Family::default(),
            rejects: Family::default(),
            convergence: Histogram::new(CONVERGENCE_BUCKETS),
            push_time: Family::new_with_constructor(push_time_histogram),
        }
    }
}

impl PilotMetrics {
    pub fn pushed(&self, type_url: &str) {
        self.pushes.get_or_create(&XdsType::of(type_url)).inc();
    }

    pub fn rejected(&self, type_url: &str) {
        self.rejects.get_or_create(&XdsType::of(type_url)).inc();
    }

    pub fn push_took(&self, type_url: &str, took: Duration) {
        self.push_time
            .get_or_create(&XdsType::of(type_url))
            .observe(took.as_secs_f64());
    }

    pub fn converged(&self, after: Duration) {
        self.convergence.observe(after.as_secs_f64());
    }

    /// Adds these metrics to `registry` under Istio's names.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pilot_xds",
            "Number of endpoints connected to this pilot using XDS",
            self.xds.clone(),
        );
        registry.register(
            "pilot_xds_pushes",
            "Pilot build and send errors for lds, rds, cds and eds",
            self.pushes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "Total number of XDS responses from pilot rejected by proxy",
            self.rejects.clone(),
        );
        for (name, short) in [
            ("pilot_xds_cds_reject", "cds"),
            ("pilot_xds_eds_reject", "eds"),
            ("pilot_xds_lds_reject", "lds"),
            ("pilot_xds_rds_reject", "rds"),
        ] {
            registry.register(
                name,
                format!("Pilot rejected {} configs", short.to_uppercase()),
                self.rejects
                    .get_or_create(&XdsType { r#type: short })
                    .clone(),
            );
        }
        registry.register(
            "pilot_xds_push_time",
            "Total time in seconds Pilot takes to push lds, rds, cds and eds",
            self.push_time.clone(),
        );
        registry.register(
            "pilot_proxy_convergence_time",
            "Delay in seconds between config change and a proxy receiving all required configuration",
            self.convergence.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &PilotMetrics) -> String {
        let mut r = Registry::default();
        m.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn istio_names_without_a_total_suffix() {
        let m = PilotMetrics::default();
        m.pushed(meshd_xds::resource::CLUSTER);
        m.pushed(meshd_xds::resource::CLUSTER);
        m.rejected(meshd_xds::resource::ENDPOINT);
        m.xds.set(3);
        m.converged(Duration::from_millis(250));
        m.push_took(meshd_xds::resource::LISTENER, Duration::from_millis(5));
        let out = text(&m);
        for line in [
            "# TYPE pilot_xds_pushes counter",
            "pilot_xds_pushes{type=\"cds\"} 2",
            "pilot_total_xds_rejects{type=\"eds\"} 1",
            "pilot_xds_eds_reject 1",
            "pilot_xds_cds_reject 0",
            "pilot_xds 3",
            "pilot_proxy_convergence_time_bucket{le=\"0.5\"} 1",
            "pilot_proxy_convergence_time_count 1",
            "pilot_xds_push_time_bucket{le=\"0.01\",type=\"lds\"} 1",
        ] {
            assert!(out.contains(line), "{line:?} not in\n{out}");
        }
        assert!(!out.contains("pilot_xds_pushes_total"), "{out}");
    }
}
