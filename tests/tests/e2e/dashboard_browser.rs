//! The web dashboard in real headless Chromium, against a local mesh with stock Envoy: known
//! traffic between two sidecars, then the dashboard's graph must show both workloads and the
//! edge with exactly the request count of `/metrics`' `istio_requests_total`; the workload page
//! its proxy and certificate; a rejected config object added to the config dir must appear on
//! the open config page without a reload; no page may log a console error. Screenshots of each
//! page go to `target/test-artifacts/`.
//!
//! Every wait is on a condition (the page's DOM, `/metrics`) with a generous deadline.

use crate::browser_support;
use crate::telemetry_support;
use crate::traffic_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use browser_support::*;
use meshd_e2e::*;
use telemetry_support::*;
use traffic_support::*;

const PORT: u16 = 8080;
const DEADLINE: Duration = Duration::from_secs(90);

#[test]
fn dashboard_in_chromium_shows_the_traffic_of_metrics_and_config_changes_live() {
    let api = fqdn("api");
    let yaml = [
        service("client", vip(10), PORT),
        workload("client", "client", ip(10), &[("version", "v1")]),
        service("api", vip(20), PORT),
        workload("api", "api", ip(20), &[("version", "v2")]),
    ]
    .concat();
    let mesh = mesh("dashboard", &yaml, &[(api.clone(), vip(20))]);
    let client = client_reaching_api(&mesh, PORT);

    const OK: usize = 17;
    const ERRORS: usize = 4;
    for a in burst(&client, &format!("http://{api}:{PORT}/ok"), &[], OK, 4) {
        assert_eq!(a.status, 200, "{a:?}");
    }
    for a in burst(
        &client,
        &format!("http://{api}:{PORT}/e?status=503"),
        &[],
        ERRORS,
        4,
    ) {
        assert_eq!(a.status, 503, "{a:?}");
    }
    let from_client = vec![
        ("reporter", "destination"),
        ("source_workload", "client"),
        ("destination_service", api.as_str()),
    ];
    // The warm-up requests count too: wait for at least the known ones, then read the total.
    wait_for_counts(
        &mesh,
        "requests from client to api",
        &[(
            "istio_requests_total",
            from_client.clone(),
            (OK + ERRORS) as f64,
        )],
    );
    // Late access-log flushes (one buffer per Envoy worker) may still raise the total, so the
    // page is compared with /metrics as it is now, read by a poller in the host's namespace.
    let total = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let read_total = || sum(&metrics(&mesh), "istio_requests_total", &from_client) as u64;

    let browser = Browser::start(&mesh.node());
    let base = format!("{}/dashboard/", mesh.admin_url());
    let config_dir = mesh.config_dir().to_path_buf();
    let api_service = format!("service:{api}");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                total.store(read_total(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        // Set on the way out, panic or not, or the scope would wait on the poller forever.
        let _stop = StopOnDrop(&done);
        total.store(read_total(), Ordering::Relaxed);
        browser.run(async |s: &Session| {
            // The graph: both workloads, and the client → api edge with /metrics' count.
            s.goto(&format!("{base}#/graph")).await;
            // The console log is really collected: an error logged on purpose comes back (and is
            // consumed, so the checks below see only the page's own).
            s.eval("console.error('dashboard-test-probe'); return null;")
                .await;
            let probe = s.console().await;
            assert!(
                probe
                    .iter()
                    .any(|l| l.starts_with("SEVERE") && l.contains("dashboard-test-probe")),
                "{probe:?}"
            );
            for node in [format!("workload:{NS}/client"), format!("workload:{NS}/api"), api_service.clone()] {
                s.wait_for(
                    &format!("node {node}"),
                    DEADLINE,
                    &format!("return document.querySelector('#graph g.node[data-id=\"{node}\"]') !== null;"),
                )
                .await;
            }
            let edge = format!(
                "#graph g.edge[data-source=\"workload:{NS}/client\"][data-target=\"{api_service}\"]"
            );
            let end = std::time::Instant::now() + DEADLINE;
            let (shown, expected) = loop {
                let expected = total.load(Ordering::Relaxed);
                let shown = s
                    .eval(&format!(
                        "const e = document.querySelector('{edge}'); return e ? e.dataset : null;"
                    ))
                    .await;
                if expected >= (OK + ERRORS) as u64
                    && shown["requests"].as_str() == Some(expected.to_string().as_str())
                {
                    break (shown, expected);
                }
                if std::time::Instant::now() > end {
                    let shot = s.screenshot("failed-edge-client-api").await;
                    panic!(
                        "edge client → api: the page shows {shown} while /metrics counts {expected} \
                         after {DEADLINE:?} (screenshot {shot:?})"
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert_eq!(shown["reporter"], "destination", "{shown}");
            assert_eq!(shown["mtls"], "full", "the sidecars talk mTLS: {shown}");
            // Its label carries latency numbers, and the edge table the error rate of 4 in 21+.
            let label = s
                .eval(&format!("return document.querySelector('{edge} text').textContent;"))
                .await;
            assert!(label.as_str().is_some_and(|l| l.contains("p99")), "{label}");
            let row = s
                .eval("return [...document.querySelectorAll('#edges tbody tr')].map(r => r.textContent).join('\\n');")
                .await;
            assert!(row.as_str().is_some_and(|r| r.contains(&expected.to_string())), "{row}");
            s.screenshot("dashboard-graph").await;
            s.assert_no_console_errors("graph").await;

            // A workload page: its proxy, in sync, and its certificate.
            s.goto(&format!("{base}#/workload/{NS}/api")).await;
            s.wait_for(
                "api's proxy synced",
                DEADLINE,
                "const p = document.querySelector('#proxies code'); \
                 return p && document.querySelector('#proxies .badge.SYNCED') ? p.textContent : null;",
            )
            .await;
            let serial = s
                .wait_for(
                    "api's certificate",
                    DEADLINE,
                    "const c = document.querySelector('#certificates tbody code'); return c && c.textContent;",
                )
                .await;
            assert!(serial.as_str().is_some_and(|x| x.len() >= 8), "{serial}");
            s.screenshot("dashboard-workload").await;
            s.assert_no_console_errors("workload").await;

            // The config page, live: a rejected object shows up without a reload.
            s.goto(&format!("{base}#/config")).await;
            s.wait_for(
                "the accepted objects",
                DEADLINE,
                "return document.querySelectorAll('#accepted tbody tr').length >= 4;",
            )
            .await;
            s.eval("window.__not_reloaded = true; return null;").await;
            let broken = format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: dashboard-broken, namespace: {NS}}}\nspec:\n  host: {api}\n  trafficPolicy: {{loadBalancer: {{simple: NOT_A_POLICY}}}}\n"
            );
            let tmp = config_dir.join(".broken.yaml.tmp");
            std::fs::write(&tmp, broken).unwrap();
            std::fs::rename(&tmp, config_dir.join("broken.yaml")).unwrap();
            let message = s
                .wait_for(
                    "the rejected DestinationRule on the config page",
                    DEADLINE,
                    "const rows = [...document.querySelectorAll('#rejected tbody tr')] \
                       .filter(r => r.textContent.includes('dashboard-broken')); \
                     return rows.length ? rows[0].textContent : null;",
                )
                .await;
            assert!(
                s.eval("return window.__not_reloaded === true;").await == serde_json::Value::Bool(true),
                "the page reloaded instead of updating live"
            );
            assert!(message.as_str().is_some_and(|m| m.contains("broken.yaml")), "{message}");
            s.screenshot("dashboard-config").await;
            s.assert_no_console_errors("config").await;
        });
    });
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
