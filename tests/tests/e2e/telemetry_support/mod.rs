//! Shared by the telemetry end-to-end tests: meshd's `/metrics` parsed into samples, sums over
//! label matches, and waiting (polling, with a deadline) for counts to arrive.

use std::collections::BTreeMap;
use std::time::Duration;

use meshd_e2e::*;

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses `name{k="v",...} value` lines (label values with `\"`, `\\`, `\n` escapes).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| parse_line(l).unwrap_or_else(|| panic!("not a sample: {l}")))
        .collect()
}

pub fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, labels)) = series.split_once('{') else {
        return Some(Sample {
            name: series.into(),
            labels: BTreeMap::new(),
            value,
        });
    };
    let mut rest = labels.strip_suffix('}')?;
    let mut map = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut v = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        v.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => v.push(c),
            }
        }
        map.insert(key.to_string(), v);
        rest = after[end? + 1..].trim_start_matches(',');
    }
    Some(Sample {
        name: name.into(),
        labels: map,
        value,
    })
}

pub fn metrics(mesh: &Mesh) -> Vec<Sample> {
    let (status, body) = mesh.admin_get("/metrics").expect("meshd's /metrics");
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

/// The sum of `name` over the samples carrying every label of `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    matching(samples, name, want).iter().map(|s| s.value).sum()
}

pub fn matching<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// A metric, the labels its samples must carry, and the least their sum must reach.
pub type Expected<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// Polls `/metrics` until every `(metric, labels, at least)` holds, or fails saying which did
/// not and what `/metrics` had.
pub fn wait_for_counts(mesh: &Mesh, what: &str, expected: &[Expected<'_>]) {
    let mut last = Vec::new();
    let reached = wait_until(Duration::from_secs(60), || {
        last = metrics(mesh);
        expected
            .iter()
            .all(|(name, labels, n)| sum(&last, name, labels) >= *n)
    });
    if !reached {
        let missing: Vec<String> = expected
            .iter()
            .filter(|(name, labels, n)| sum(&last, name, labels) < *n)
            .map(|(name, labels, n)| {
                format!("{name}{labels:?}: {} of {n}", sum(&last, name, labels))
            })
            .collect();
        let istio: Vec<String> = last
            .iter()
            .filter(|s| {
                s.name.starts_with("istio_requests_total") || s.name.starts_with("istio_tcp")
            })
            .map(|s| format!("{} {:?} {}", s.name, s.labels, s.value))
            .collect();
        // Each sidecar's own view of its access-log streams and its connection to meshd.
        let mut streams = String::new();
        for pod in ["client", "api", "catalog", "db"] {
            let Some(p) = mesh.sidecar(pod) else { continue };
            let stats = p.envoy_stats().unwrap_or_default();
            for l in stats.lines().filter(|l| {
                l.contains("access_log")
                    || l.contains("cluster.xds-grpc.upstream_rq")
                    || l.contains("cluster.xds-grpc.upstream_cx")
            }) {
                streams.push_str(&format!("{pod}: {l}\n"));
            }
        }
        mesh.dump_logs();
        eprintln!("sidecar access-log stats:\n{streams}");
        panic!(
            "{what}: /metrics did not reach the expected counts within 60 s.\nmissing: {missing:#?}\nistio series: {istio:#?}"
        );
    }
}
