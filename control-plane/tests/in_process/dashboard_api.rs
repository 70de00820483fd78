//! The web dashboard's server side against the whole control plane in-process: the embedded
//! page and assets (no other origin allowed), the guard covering it, the graph computed from
//! access-log entries (its counts equal `/metrics`), the workload page's data, and config
//! changes pushed live over server-sent events.

use crate::access_log_support;

use access_log_support::*;
use meshd::testing::TestServer;
use serde_json::Value;
use std::time::Duration;

async fn send_logs(server: &TestServer, credential: &str, codes: &[u32]) {
    let logs = vec![message("meshd-outbound", codes)];
    stream(server, Some(credential), logs).await.unwrap();
}

async fn get(server: &TestServer, path: &str) -> reqwest::Response {
    reqwest::get(format!("{}{path}", server.admin_url()))
        .await
        .unwrap()
}

async fn json(server: &TestServer, path: &str) -> Value {
    let r = get(server, path).await;
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

#[tokio::test]
async fn the_page_and_its_assets_are_embedded_and_allow_no_other_origin() {
    let server = TestServer::start(None).await.unwrap();
    let page = get(&server, "/dashboard/").await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    for asset in ["dashboard.css", "graph.js", "pages.js", "app.js"] {
        assert!(
            html.contains(&format!("assets/{asset}")),
            "{asset} in {html}"
        );
        let r = get(&server, &format!("/dashboard/assets/{asset}")).await;
        assert_eq!(r.status(), 200, "{asset}");
        // Nothing is fetched from elsewhere (SVG's namespace name is a name, not a fetch).
        let body = r
            .text()
            .await
            .unwrap()
            .replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{asset}"
        );
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    assert_eq!(
        get(&server, "/dashboard/assets/../admin.rs").await.status(),
        404
    );
    assert_eq!(
        get(&server, "/dashboard/assets/nope.js").await.status(),
        404
    );
    // `/dashboard` leads to the page.
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/dashboard", server.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.headers()["location"], "/dashboard/");
}

#[test]
fn every_dashboard_path_needs_a_trusted_caller_like_debug() {
    use axum::http::Method;
    use meshd::admin::access::{Need, need};
    for path in [
        "/dashboard",
        "/dashboard/",
        "/dashboard/events",
        "/dashboard/api/graph",
        "/dashboard/api/workload/ns/name",
        "/dashboard/assets/app.js",
    ] {
        assert!(
            matches!(need(&Method::GET, path), Need::Admin { verb: "get", .. }),
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_graph_counts_the_access_logs_as_metrics_does() {
    let server = TestServer::start(None).await.unwrap();
    let billing = server.credential("billing-service-v1", NS, "billing-service");
    send_logs(&server, &billing, &[200, 200, 200, 503]).await;
    let g = json(&server, "/dashboard/api/graph").await;
    let ids: Vec<&str> = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    for id in [
        "workload:voicecore-ai/billing-service-v1",
        "workload:voicecore-ai/call-service-v1",
        "workload:istio-system/ingressgateway",
    ] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    let edge = g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["source"] == "workload:voicecore-ai/billing-service-v1"
                && e["target"] == format!("service:{CALL}")
        })
        .unwrap_or_else(|| panic!("billing → call-service edge in {g:#}"));
    let metrics = get(&server, "/metrics").await.text().await.unwrap();
    let counted: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| l.contains("source_workload=\"billing-service-v1\""))
        .filter(|l| l.contains(&format!("destination_service=\"{CALL}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(counted, 4, "{metrics}");
    assert_eq!(edge["requests"], counted, "{edge}");
    assert_eq!(edge["error_rate"], 0.25, "{edge}");
    assert_eq!(edge["reporter"], "source", "{edge}");
    // Only the destination's sidecar knows whether the request came over mTLS.
    assert_eq!(edge["mtls"], "unknown", "{edge}");
    let serves = g["edges"].as_array().unwrap().iter().find(|e| {
        e["source"] == format!("service:{CALL}")
            && e["target"] == "workload:voicecore-ai/call-service-v1"
    });
    assert_eq!(serves.unwrap()["requests"], 4, "{g:#}");
}

#[tokio::test]
async fn a_workload_page_has_its_policies_and_no_key_material() {
    let server = TestServer::start(None).await.unwrap();
    let path = "/dashboard/api/workload/voicecore-ai/billing-service-v1";
    let w = json(&server, path).await;
    assert_eq!(
        w["principal"],
        "spiffe://cluster.local/ns/voicecore-ai/sa/billing-service"
    );
    assert!(w["proxies"].as_array().unwrap().is_empty(), "{w:#}");
    let inbound = w["inbound"].as_array().unwrap();
    assert!(
        inbound.iter().any(|p| p["kind"] == "AuthorizationPolicy"
            && p["name"] == "billing-service"
            && p["scope"] == "workload"),
        "{inbound:#?}"
    );
    // Another workload's policy is not this one's.
    assert!(
        !inbound.iter().any(|p| p["name"] == "call-service"),
        "{inbound:#?}"
    );
    let text = get(&server, path).await.text().await.unwrap();
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let missing = get(&server, "/dashboard/api/workload/voicecore-ai/nobody").await;
    assert_eq!(missing.status(), 404);
}

/// The next server-sent event named `name` whose data contains `needle` (or panics after a
/// generous deadline, naming what arrived).
async fn next_event(
    response: &mut reqwest::Response,
    buf: &mut String,
    name: &str,
    needle: &str,
) -> Value {
    let wait = async {
        loop {
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let event = block.lines().find_map(|l| l.strip_prefix("event: "));
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if event == Some(name) && data.contains(needle) {
                    return serde_json::from_str::<Value>(&data).unwrap();
                }
            }
            let chunk = response
                .chunk()
                .await
                .unwrap()
                .expect("the stream stays open");
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("no `{name}` event with {needle:?}; last: {buf}"))
}

#[tokio::test]
async fn config_changes_arrive_live_over_server_sent_events() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ok.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api, namespace: shop}\nspec:\n  hosts: [api.shop.svc.cluster.local]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n",
    )
    .unwrap();
    let server = TestServer::start(Some(dir.path().to_path_buf()))
        .await
        .unwrap();
    let mut events = get(&server, "/dashboard/events?topics=config,graph").await;
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut buf = String::new();
    let first = next_event(&mut events, &mut buf, "config", "\"accepted\"").await;
    assert_eq!(first["rejected"].as_array().unwrap().len(), 0, "{first:#}");
    next_event(
        &mut events,
        &mut buf,
        "graph",
        "service:api.shop.svc.cluster.local",
    )
    .await;
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dashboard-broken, namespace: shop}\nspec:\n  host: api.shop.svc.cluster.local\n  trafficPolicy: {loadBalancer: {simple: NOT_A_POLICY}}\n",
    )
    .unwrap();
    let changed = next_event(&mut events, &mut buf, "config", "dashboard-broken").await;
    let rejected = changed["rejected"].as_array().unwrap();
    assert!(
        rejected.iter().any(|r| r["name"] == "dashboard-broken"
            && r["file"].as_str().unwrap().ends_with("broken.yaml")),
        "{changed:#}"
    );
}

#[test]
fn meshd_dashboard_prints_the_url_of_the_admin_it_is_given() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args([
            "dashboard",
            "--admin",
            "http://127.0.0.1:25999/",
            "--no-browser",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "meshd dashboard: http://127.0.0.1:25999/dashboard/",
        "{out:?}"
    );
}
