//! Request totals per edge of the mesh graph (source workload → destination service →
//! destination workload, per reporter), kept beside Istio's metric families for the dashboard:
//! the duration histograms of `prometheus-client` do not expose their buckets, and the graph
//! needs them for p50/p99. Recorded under the same series cap as the metrics (one edge exists
//! only for a kept label set), and pruned with them.

use super::labels::Labels;
use std::collections::HashMap;
use std::sync::Mutex;

/// Istio's `istio_request_duration_milliseconds` bucket bounds (the last bucket is +Inf).
pub const BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// One edge as the reporting sidecar saw it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct EdgeKey {
    /// `source` or `destination`: which sidecar reported the requests.
    pub reporter: String,
    pub source_workload: String,
    pub source_namespace: String,
    /// The destination service's host (`destination_service`).
    pub service: String,
    pub service_name: String,
    pub service_namespace: String,
    pub destination_workload: String,
    pub destination_namespace: String,
}

/// Cumulative totals of one edge since its first request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EdgeTotals {
    pub requests: u64,
    /// Answers with a 5xx status, or none at all (code 0).
    pub errors: u64,
    /// Requests that arrived over mutual TLS (known to the destination reporter only).
    pub mtls: u64,
    /// Count per bucket of [`BUCKETS_MS`], plus the +Inf bucket; not cumulative.
    pub buckets: [u64; BUCKETS_MS.len() + 1],
}

impl EdgeTotals {
    /// What happened between `earlier` and `self` (counters only grow; a reset yields zero).
    pub fn since(&self, earlier: &EdgeTotals) -> EdgeTotals {
        let mut buckets = [0; BUCKETS_MS.len() + 1];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = self.buckets[i].saturating_sub(earlier.buckets[i]);
        }
        EdgeTotals {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            mtls: self.mtls.saturating_sub(earlier.mtls),
            buckets,
        }
    }

    /// The `q` quantile in milliseconds, interpolated within its bucket as PromQL's
    /// `histogram_quantile` does; `None` without requests.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { BUCKETS_MS[i - 1] };
                // In the +Inf bucket the best answer is the highest finite bound.
                let Some(&upper) = BUCKETS_MS.get(i) else {
                    return Some(lower);
                };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += n;
        }
        BUCKETS_MS.last().copied()
    }
}

#[derive(Default)]
pub struct Edges {
    totals: Mutex<HashMap<EdgeKey, EdgeTotals>>,
}

impl Edges {
    /// Adds one request of `labels` that took `duration_ms`.
    pub fn record(&self, labels: &Labels, duration_ms: f64) {
        let key = EdgeKey {
            reporter: labels.reporter.clone(),
            source_workload: labels.source_workload.clone(),
            source_namespace: labels.source_workload_namespace.clone(),
            service: labels.destination_service.clone(),
            service_name: labels.destination_service_name.clone(),
            service_namespace: labels.destination_service_namespace.clone(),
            destination_workload: labels.destination_workload.clone(),
            destination_namespace: labels.destination_workload_namespace.clone(),
        };
        let bucket = BUCKETS_MS
            .iter()
            .position(|&upper| duration_ms <= upper)
            .unwrap_or(BUCKETS_MS.len());
        let error = labels.response_code.starts_with('5') || labels.response_code == "0";
        let mtls = labels.connection_security_policy == "mutual_tls";
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let t = totals.entry(key).or_default();
        t.requests += 1;
        t.errors += u64::from(error);
        t.mtls += u64::from(mtls);
        t.buckets[bucket] += 1;
    }

    /// Drops the edges naming a workload `live` rejects (the metrics' own pruning rule).
    pub fn retain(&self, live: impl Fn(&str, &str) -> bool) {
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals.retain(|k, _| {
            live(&k.source_workload, &k.source_namespace)
                && live(&k.destination_workload, &k.destination_namespace)
        });
    }

    pub fn snapshot(&self) -> HashMap<EdgeKey, EdgeTotals> {
        self.totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels {
        let s = |v: &str| v.to_string();
        Labels {
            reporter: s("destination"),
            source_workload: s("web"),
            source_workload_namespace: s("shop"),
            source_principal: s("spiffe://cluster.local/ns/shop/sa/web"),
            source_app: s("web"),
            source_version: s("v1"),
            source_canonical_service: s("web"),
            source_canonical_revision: s("v1"),
            source_cluster: s("Kubernetes"),
            destination_service: s("api.shop.svc.cluster.local"),
            destination_service_name: s("api"),
            destination_service_namespace: s("shop"),
            destination_workload: s("api"),
            destination_workload_namespace: s("shop"),
            destination_principal: s("spiffe://cluster.local/ns/shop/sa/api"),
            destination_app: s("api"),
            destination_version: s("v1"),
            destination_canonical_service: s("api"),
            destination_canonical_revision: s("v1"),
            destination_cluster: s("Kubernetes"),
            request_protocol: s("http"),
            response_code: s("200"),
            grpc_response_status: String::new(),
            response_flags: s("-"),
            connection_security_policy: s("mutual_tls"),
            custom: Vec::new(),
        }
    }

    fn totals(buckets: &[(usize, u64)]) -> EdgeTotals {
        let mut t = EdgeTotals::default();
        for &(i, n) in buckets {
            t.buckets[i] = n;
            t.requests += n;
        }
        t
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_histogram_quantile() {
        // 100 requests between 10 and 25 ms (bucket 4): p50 is half way.
        let t = totals(&[(4, 100)]);
        assert_eq!(t.quantile_ms(0.5), Some(17.5));
        // 99 fast, 1 above 250 ms: p99 stays in the fast bucket, p100 reaches the slow one.
        let t = totals(&[(1, 99), (8, 1)]);
        assert!(t.quantile_ms(0.99).unwrap() <= 1.0);
        assert!(t.quantile_ms(1.0).unwrap() > 250.0);
        assert_eq!(EdgeTotals::default().quantile_ms(0.5), None);
        // Beyond every finite bound: the highest bound, never infinity.
        assert_eq!(totals(&[(19, 3)]).quantile_ms(0.5), Some(3600000.0));
    }

    #[test]
    fn edges_of_gone_workloads_are_dropped_with_their_series() {
        let edges = Edges::default();
        let mut labels = labels();
        edges.record(&labels, 3.0);
        labels.destination_workload = "gone".into();
        edges.record(&labels, 3.0);
        assert_eq!(edges.snapshot().len(), 2);
        edges.retain(|w, _| w != "gone");
        let left = edges.snapshot();
        assert_eq!(left.len(), 1);
        assert!(left.keys().all(|k| k.destination_workload != "gone"));
    }

    #[test]
    fn since_subtracts_and_never_underflows() {
        let later = totals(&[(1, 5)]);
        let earlier = totals(&[(1, 2)]);
        assert_eq!(later.since(&earlier).requests, 3);
        assert_eq!(earlier.since(&later).requests, 0);
    }
}
