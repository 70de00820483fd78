//! The mesh graph the dashboard draws: workloads and services as nodes, edges with requests/s,
//! error rate, p50/p99 and an mTLS mark, computed from the telemetry's per-edge totals
//! ([`crate::telemetry::edges`]) and the registry. Rates come from the difference to an earlier
//! sample kept in a [`History`] by each live stream.

use crate::telemetry::edges::{EdgeKey, EdgeTotals};
use meshd_model::MeshConfig;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

pub type Totals = HashMap<EdgeKey, EdgeTotals>;

/// How far back rates look: long enough to smooth the sidecars' access-log flushes (about a
/// second apart), short enough to follow a change of load.
pub const RATE_WINDOW: Duration = Duration::from_secs(20);

/// The samples one stream took, oldest first, none older than [`RATE_WINDOW`] but the oldest.
#[derive(Default)]
pub struct History {
    samples: VecDeque<(Instant, Totals)>,
}

impl History {
    /// Records `totals` taken at `now` and returns the sample rates compare against with the
    /// seconds between them (`None` for the first sample).
    pub fn push(&mut self, now: Instant, totals: Totals) -> Option<(f64, &Totals)> {
        while self.samples.len() > 1
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        self.samples.push_back((now, totals));
        let (then, base) = self.samples.front()?;
        let secs = now.duration_since(*then).as_secs_f64();
        (secs > 0.0).then_some((secs, base))
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Node {
    pub id: String,
    /// `workload` or `service`.
    pub kind: &'static str,
    pub name: String,
    pub namespace: String,
    /// Known to the registry (else only seen in traffic, e.g. `unknown` callers).
    pub registered: bool,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Edge {
    pub source: String,
    pub target: String,
    /// Requests since the first one seen, as `istio_requests_total` of the chosen reporter.
    pub requests: u64,
    /// `destination` when the destination's sidecar reported them, else `source`.
    pub reporter: String,
    pub rps: Option<f64>,
    pub error_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// `full`, `partial`, `none`, or `unknown` (only the source reported, which cannot tell).
    pub mtls: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Seconds the rates span (0 before a second sample).
    pub window_seconds: f64,
}

pub fn workload_id(name: &str, namespace: &str) -> String {
    format!("workload:{namespace}/{name}")
}

pub fn service_id(host: &str) -> String {
    format!("service:{host}")
}

/// The triple a request took; both reporters of one request share it.
type Path = (String, String, String, String, String);

fn path_of(k: &EdgeKey) -> Path {
    (
        workload_id(&k.source_workload, &k.source_namespace),
        k.service.clone(),
        k.service_name.clone(),
        k.service_namespace.clone(),
        workload_id(&k.destination_workload, &k.destination_namespace),
    )
}

/// Per path, the totals of the destination reporter when there are any, else the source's:
/// each request counted once, with the mTLS state only the destination knows.
fn per_path(totals: &Totals) -> BTreeMap<Path, (&'static str, EdgeTotals)> {
    let mut out: BTreeMap<Path, (&'static str, EdgeTotals)> = BTreeMap::new();
    for (k, t) in totals {
        let reporter = if k.reporter == "destination" {
            "destination"
        } else {
            "source"
        };
        let entry = out.entry(path_of(k));
        match entry {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert((reporter, t.clone()));
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                if reporter == "destination" && o.get().0 == "source" {
                    o.insert((reporter, t.clone()));
                }
            }
        }
    }
    out
}

fn add(into: &mut EdgeTotals, t: &EdgeTotals) {
    into.requests += t.requests;
    into.errors += t.errors;
    into.mtls += t.mtls;
    for (a, b) in into.buckets.iter_mut().zip(t.buckets.iter()) {
        *a += b;
    }
}

#[derive(Default)]
struct Sums {
    reporter: &'static str,
    now: EdgeTotals,
    before: EdgeTotals,
}

fn edge(source: String, target: String, s: &Sums, window: Option<f64>) -> Edge {
    let recent = s.now.since(&s.before);
    // Latency and errors of the window while there is traffic, else of all time.
    let basis = if window.is_some() && recent.requests > 0 {
        &recent
    } else {
        &s.now
    };
    let mtls = match s.reporter {
        _ if s.now.requests == 0 => "unknown",
        "source" => "unknown",
        _ if s.now.mtls == 0 => "none",
        _ if s.now.mtls >= s.now.requests => "full",
        _ => "partial",
    };
    Edge {
        source,
        target,
        requests: s.now.requests,
        reporter: s.reporter.to_string(),
        rps: window.map(|secs| recent.requests as f64 / secs),
        error_rate: (basis.requests > 0).then(|| basis.errors as f64 / basis.requests as f64),
        p50_ms: basis.quantile_ms(0.5),
        p99_ms: basis.quantile_ms(0.99),
        mtls,
    }
}

/// The graph of `config`'s workloads and services with the traffic of `now`, rates against
/// `before` (`secs` earlier).
pub fn build(config: &MeshConfig, now: &Totals, before: Option<(f64, &Totals)>) -> Graph {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for w in &config.workloads {
        let id = workload_id(&w.name, &w.namespace);
        nodes.insert(
            id.clone(),
            Node {
                id,
                kind: "workload",
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                registered: true,
            },
        );
    }
    for s in &config.services {
        let id = service_id(&s.hostname);
        nodes.insert(
            id.clone(),
            Node {
                id,
                kind: "service",
                name: s.hostname.clone(),
                namespace: s.namespace.clone(),
                registered: true,
            },
        );
    }
    let current = per_path(now);
    let earlier = before.map(|(_, b)| per_path(b)).unwrap_or_default();
    let window = before.map(|(secs, _)| secs);
    let mut calls: BTreeMap<(String, String), Sums> = BTreeMap::new();
    let mut serves: BTreeMap<(String, String), Sums> = BTreeMap::new();
    // The registry's endpoints draw the services' workloads even before any traffic.
    for svc in &config.services {
        for e in &svc.endpoints {
            if let Some(w) = &e.workload {
                let target = workload_id(w, &e.namespace);
                if nodes.contains_key(&target) {
                    serves
                        .entry((service_id(&svc.hostname), target))
                        .or_default();
                }
            }
        }
    }
    for (path, (reporter, totals)) in &current {
        let (source, host, name, namespace, destination) = path;
        let service = service_id(host);
        let unseen = |id: &str, kind, name: &str, namespace: &str| Node {
            id: id.to_string(),
            kind,
            name: name.to_string(),
            namespace: namespace.to_string(),
            registered: false,
        };
        if !nodes.contains_key(source) {
            let (ns, wl) = source
                .trim_start_matches("workload:")
                .split_once('/')
                .unwrap_or(("unknown", "unknown"));
            nodes.insert(source.clone(), unseen(source, "workload", wl, ns));
        }
        if !nodes.contains_key(&service) {
            let label = if name.is_empty() { host } else { name };
            nodes.insert(
                service.clone(),
                unseen(&service, "service", label, namespace),
            );
        }
        let old = earlier
            .get(path)
            .filter(|(r, _)| r == reporter)
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        let accumulate = |map: &mut BTreeMap<(String, String), Sums>, key| {
            let sums = map.entry(key).or_default();
            // Destination wins for the whole edge once any part of it has it.
            if sums.reporter != "destination" {
                sums.reporter = reporter;
            }
            add(&mut sums.now, totals);
            add(&mut sums.before, &old);
        };
        accumulate(&mut calls, (source.clone(), service.clone()));
        if nodes.contains_key(destination) {
            accumulate(&mut serves, (service.clone(), destination.clone()));
        }
    }
    let edges = calls
        .iter()
        .chain(serves.iter())
        .map(|((from, to), sums)| edge(from.clone(), to.clone(), sums, window))
        .collect();
    Graph {
        nodes: nodes.into_values().collect(),
        edges,
        window_seconds: window.unwrap_or(0.0),
    }
}

#[cfg(test)]
#[path = "graph_tests.rs"]
mod tests;
