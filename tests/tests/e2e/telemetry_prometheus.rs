//! A real Prometheus (Debian's `prometheus`) scrapes meshd's `/metrics`, and PromQL shaped like
//! Istio's standard dashboards returns what the traffic was: request rate by destination
//! service, success rate, p99 from the duration histogram.
//!
//! Rates are exact when the window holds exactly two scrapes, one before and one after the
//! measured traffic (Prometheus extrapolates a rate to the window's edges; ending the window on
//! a scrape and opening it 1 ms before the other leaves nothing to extrapolate but that 1 ms).
//! So traffic comes in two phases, and the scrape timestamps are read back from Prometheus.

use crate::telemetry_support;
use crate::traffic_support;

use std::collections::BTreeMap;
use std::time::Duration;

use meshd_e2e::*;
use telemetry_support::*;
use traffic_support::*;

const PORT: u16 = 8080;
const PROM_PORT: u16 = 19090;
const SLOW_MS: u64 = 300;

/// Requests of one phase: (path, expected status, count) per service.
struct Phase {
    api: Vec<(String, u16, usize)>,
    catalog: usize,
}

fn send(client: &Pod, phase: &Phase) {
    for (path, status, n) in &phase.api {
        for a in burst(
            client,
            &format!("http://{}:{PORT}{path}", fqdn("api")),
            &[],
            *n,
            4,
        ) {
            assert_eq!(a.status, *status, "{path}: {a:?}");
        }
    }
    let url = format!("http://{}:{PORT}/list", fqdn("catalog"));
    for a in burst(client, &url, &[], phase.catalog, 4) {
        assert_eq!(a.status, 200, "{a:?}");
    }
}

fn prom_get(mesh: &Mesh, path: &str, params: &[(&str, String)]) -> serde_json::Value {
    let url = reqwest::Url::parse_with_params(
        &format!("http://127.0.0.1:{PROM_PORT}{path}"),
        params.iter().map(|(k, v)| (*k, v.as_str())),
    )
    .unwrap();
    let (status, body) = mesh.node().get(url.as_str()).expect("Prometheus answers");
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

/// An instant query's vector, as (labels, value).
fn query(mesh: &Mesh, promql: &str, at: Option<&str>) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut params = vec![("query", promql.to_string())];
    if let Some(t) = at {
        params.push(("time", t.to_string()));
    }
    let v = prom_get(mesh, "/api/v1/query", &params);
    assert_eq!(v["status"], "success", "{promql}: {v}");
    v["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{promql}: {v}"))
        .iter()
        .map(|r| {
            let labels = serde_json::from_value(r["metric"].clone()).unwrap();
            let value = r["value"][1].as_str().unwrap().parse().unwrap();
            (labels, value)
        })
        .collect()
}

fn scalar(mesh: &Mesh, promql: &str, at: Option<&str>) -> Option<f64> {
    let v = query(mesh, promql, at);
    assert!(v.len() <= 1, "{promql}: {v:?}");
    v.first().map(|(_, x)| *x)
}

/// Waits until Prometheus has scraped `total` destination-side requests.
fn wait_scraped(mesh: &Mesh, total: f64, prom: &mut Child) {
    let promql = r#"sum(istio_requests_total{reporter="destination"})"#;
    let mut last = None;
    let ok = wait_until(Duration::from_secs(60), || {
        last = scalar(mesh, promql, None);
        last == Some(total)
    });
    assert!(
        ok,
        "Prometheus did not scrape {total} requests within 60 s (last {last:?}); up: {:?}\nPrometheus log:\n{}",
        query(mesh, "up", None),
        prom.log_tail()
    );
}

/// The destination-side duration buckets of `service` (`le` → cumulative count) in meshd's
/// `/metrics`, summed over its series.
fn buckets(samples: &[Sample], service: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in matching(
        samples,
        "istio_request_duration_milliseconds_bucket",
        &[
            ("reporter", "destination"),
            ("destination_service", service),
        ],
    ) {
        *out.entry(s.labels["le"].clone()).or_insert(0.0) += s.value;
    }
    out
}

/// PromQL's `histogram_quantile` over cumulative buckets (`le` → count).
fn histogram_quantile(q: f64, buckets: &BTreeMap<String, f64>) -> f64 {
    let mut b: Vec<(f64, f64)> = buckets
        .iter()
        .map(|(le, c)| (le.parse::<f64>().unwrap(), *c))
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last().unwrap().1;
    let rank = q * total;
    let i = b.iter().position(|(_, c)| *c >= rank).unwrap();
    if b[i].0.is_infinite() {
        return b[i - 1].0;
    }
    let (start, below) = if i == 0 { (0.0, 0.0) } else { b[i - 1] };
    let (end, count) = b[i];
    start + (end - start) * (rank - below) / (count - below)
}

fn close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= expected.abs() * 0.005,
        "{what}: Prometheus says {actual}, the traffic says {expected}"
    );
}

#[test]
fn prometheus_scraping_meshd_answers_istio_dashboard_queries_with_the_traffic_sent() {
    let api = fqdn("api");
    let catalog = fqdn("catalog");
    let yaml = [
        client_and_api(PORT),
        service("catalog", vip(21), PORT),
        workload("catalog", "catalog", ip(21), &[]),
    ]
    .concat();
    let mesh = mesh(
        "promql",
        &yaml,
        &[(api.clone(), vip(20)), (catalog.clone(), vip(21))],
    );
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("api.{NS}"), ip(20), PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("catalog.{NS}"), ip(21), PORT)
        .unwrap();

    let prom_dir = mesh.dir().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
             scrape_configs:\n\
             - job_name: meshd\n  static_configs: [{{targets: ['127.0.0.1:{ADMIN_PORT}']}}]\n"
        ),
    )
    .unwrap();
    let mut prom = mesh
        .node()
        .spawn([
            "prometheus".to_string(),
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", prom_dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{PROM_PORT}"),
        ])
        .expect("Debian's prometheus (scripts/install-tools.sh installs it)");
    assert!(
        wait_until(Duration::from_secs(60), || mesh
            .node()
            .get(&format!("http://127.0.0.1:{PROM_PORT}/-/ready"))
            .is_ok_and(|(s, _)| s == 200)),
        "Prometheus ready; log:\n{}",
        prom.log_tail()
    );

    // The client's sidecar routes once a request to each service answers.
    for host in [&api, &catalog] {
        assert!(
            wait_until(Duration::from_secs(30), || get(
                &client,
                &format!("http://{host}:{PORT}/warmup")
            )
            .status
                == 200),
            "the client reaches {host}"
        );
    }
    let slow = format!("/slow?status=201&delay_ms={SLOW_MS}");
    // Phase one creates every series the queries read (a rate needs two scrapes of a series).
    send(
        &client,
        &Phase {
            api: vec![
                ("/ok".into(), 200, 3),
                ("/err?status=500".into(), 500, 1),
                (slow.clone(), 201, 1),
            ],
            catalog: 2,
        },
    );
    let destination = |s: &[Sample]| sum(s, "istio_requests_total", &[("reporter", "destination")]);
    let series = |service: &'static str, code: &'static str| {
        vec![
            ("reporter", "destination"),
            ("destination_service_name", service),
            ("response_code", code),
        ]
    };
    // Phase one and one warm-up request per service, all of it, before anything else.
    let phase_one = |ok, errors, slow, catalog| {
        vec![
            ("istio_requests_total", series("api", "200"), ok),
            ("istio_requests_total", series("api", "500"), errors),
            ("istio_requests_total", series("api", "201"), slow),
            ("istio_requests_total", series("catalog", "200"), catalog),
        ]
    };
    wait_for_counts(&mesh, "phase one", &phase_one(4.0, 1.0, 1.0, 3.0));
    let before = metrics(&mesh);
    wait_scraped(&mesh, destination(&before), &mut prom);

    let (ok, errors, slow_n, catalog_n) = (30, 10, 3, 12);
    send(
        &client,
        &Phase {
            api: vec![
                ("/ok".into(), 200, ok),
                ("/err?status=500".into(), 500, errors),
                (slow, 201, slow_n),
            ],
            catalog: catalog_n,
        },
    );
    let phase_two = (ok + errors + slow_n + catalog_n) as f64;
    wait_for_counts(
        &mesh,
        "phase two",
        &phase_one(
            (4 + ok) as f64,
            (1 + errors) as f64,
            (1 + slow_n) as f64,
            (3 + catalog_n) as f64,
        ),
    );
    let after = metrics(&mesh);
    assert_eq!(destination(&after), destination(&before) + phase_two);
    wait_scraped(&mesh, destination(&after), &mut prom);
    assert_eq!(scalar(&mesh, r#"up{job="meshd"}"#, None), Some(1.0));

    // The scrape before phase two (t1) and the first with all of it (t2), from the raw samples.
    let raw = prom_get(
        &mesh,
        "/api/v1/query",
        &[(
            "query",
            r#"istio_requests_total{reporter="destination"}[15m]"#.to_string(),
        )],
    );
    let (mut t1, mut t2) = (i64::MAX, i64::MIN);
    for series in raw["data"]["result"].as_array().unwrap() {
        let mut labels: BTreeMap<String, String> =
            serde_json::from_value(series["metric"].clone()).unwrap();
        // What Prometheus adds to meshd's labels.
        for added in ["__name__", "instance", "job"] {
            labels.remove(added);
        }
        // Prometheus drops empty labels (grpc_response_status of a non-gRPC request).
        let value = |samples: &[Sample]| -> f64 {
            matching(samples, "istio_requests_total", &[])
                .into_iter()
                .filter(|s| {
                    let mut l = s.labels.clone();
                    l.retain(|_, v| !v.is_empty());
                    l == labels
                })
                .map(|s| s.value)
                .sum()
        };
        let (was, is) = (value(&before), value(&after));
        let samples: Vec<(i64, f64)> = series["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    (v[0].as_f64().unwrap() * 1000.0).round() as i64,
                    v[1].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect();
        let last_before = samples
            .iter()
            .filter(|(_, v)| *v == was)
            .map(|(t, _)| *t)
            .max();
        let first_after = samples
            .iter()
            .filter(|(_, v)| *v == is)
            .map(|(t, _)| *t)
            .min();
        let (Some(last_before), Some(first_after)) = (last_before, first_after) else {
            panic!(
                "{labels:?}: no scrape at {was} before phase two or at {is} after it: {samples:?}"
            );
        };
        t1 = t1.min(last_before);
        t2 = t2.max(first_after);
    }
    assert!(t1 < t2, "{t1} {t2}");
    let window = format!("{}ms", t2 - t1 + 1);
    let at = format!("{}.{:03}", t2 / 1000, t2 % 1000);
    let seconds = (t2 - t1) as f64 / 1000.0;

    // Request rate by destination service (Istio's mesh and service dashboards).
    let rates: BTreeMap<String, f64> = query(
        &mesh,
        &format!(
            r#"sum(rate(istio_requests_total{{reporter="destination"}}[{window}])) by (destination_service)"#
        ),
        Some(&at),
    )
    .into_iter()
    .map(|(l, v)| (l["destination_service"].clone(), v))
    .collect();
    close(
        rates[&api],
        (ok + errors + slow_n) as f64 / seconds,
        "api request rate",
    );
    close(
        rates[&catalog],
        catalog_n as f64 / seconds,
        "catalog request rate",
    );

    // Success rate (non-5xx) per destination service.
    let success = |service: &str| {
        scalar(
            &mesh,
            &format!(
                r#"sum(rate(istio_requests_total{{reporter="destination",destination_service="{service}",response_code!~"5.*"}}[{window}])) / sum(rate(istio_requests_total{{reporter="destination",destination_service="{service}"}}[{window}]))"#
            ),
            Some(&at),
        )
        .unwrap()
    };
    close(
        success(&api),
        (ok + slow_n) as f64 / (ok + errors + slow_n) as f64,
        "api success rate",
    );
    close(success(&catalog), 1.0, "catalog success rate");

    // P99 of api's request duration from the histogram: what meshd's own buckets of phase two
    // give, and above the injected delay's bucket floor.
    let p99 = scalar(
        &mesh,
        &format!(
            r#"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{{reporter="destination",destination_service="{api}"}}[{window}])) by (le))"#
        ),
        Some(&at),
    )
    .unwrap();
    let (b1, b2) = (buckets(&before, &api), buckets(&after, &api));
    let phase_two_buckets: BTreeMap<String, f64> = b2
        .iter()
        .map(|(le, c)| (le.clone(), c - b1.get(le).copied().unwrap_or(0.0)))
        .collect();
    close(p99, histogram_quantile(0.99, &phase_two_buckets), "api p99");
    assert!(
        p99 >= 250.0,
        "p99 {p99} ms: 3 of 43 requests took at least {SLOW_MS} ms"
    );
}
