//! Observability from the seed, in stock Envoy: 100 % tracing to a Zipkin-compatible collector
//! (`meshd serve --zipkin-address`) with one trace id across two sidecars, JSON access logs on
//! stdout, Prometheus stats on 15090.

use crate::traffic_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshd_e2e::*;
use traffic_support::*;

const PORT: u16 = 8080;
const COLLECTOR_PORT: u16 = 9411;

/// A minimal Zipkin collector: accepts `POST /api/v2/spans` (HTTP/1.1, keep-alive) and keeps
/// every span it receives.
fn collector(listener: TcpListener) -> Arc<Mutex<Vec<serde_json::Value>>> {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let out = spans.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let spans = spans.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut writer = conn;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    let mut chunked = false;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let lower = h.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                            chunked = true;
                        }
                    }
                    let mut body = Vec::new();
                    if chunked {
                        loop {
                            let mut size = String::new();
                            reader.read_line(&mut size).unwrap();
                            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                            let mut chunk = vec![0; n + 2];
                            reader.read_exact(&mut chunk).unwrap();
                            if n == 0 {
                                break;
                            }
                            body.extend_from_slice(&chunk[..n]);
                        }
                    } else {
                        body.resize(length, 0);
                        reader.read_exact(&mut body).unwrap();
                    }
                    if line.starts_with("POST /api/v2/spans")
                        && let Ok(serde_json::Value::Array(batch)) =
                            serde_json::from_slice::<serde_json::Value>(&body)
                    {
                        spans.lock().unwrap().extend(batch);
                    }
                    let _ = writer.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    out
}

#[test]
fn one_trace_across_two_sidecars_json_access_logs_and_stats() {
    let api = fqdn("api");
    let yaml = client_and_api(PORT);
    let collector_addr = format!("{}:{COLLECTOR_PORT}", ip(1));
    let mesh = mesh_with(
        MeshOptions::named("tracing")
            .config("mesh.yaml", &yaml)
            .serve_arg("--zipkin-address")
            .serve_arg(&collector_addr),
        &[(api.clone(), vip(20))],
    );
    let listener = mesh
        .node()
        .in_netns(move || TcpListener::bind(("10.44.0.1", COLLECTOR_PORT)).unwrap())
        .unwrap();
    let spans = collector(listener);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    let api_pod = mesh
        .add_sidecar_pod(&format!("api.{NS}"), ip(20), PORT)
        .unwrap();
    assert!(dump_clusters(&client.envoy_config_dump().unwrap()).contains_key("zipkin"));

    let a = get(&client, &format!("http://{api}:{PORT}/orders?key=t1"));
    assert_eq!(a.status, 200, "{a:?}");
    // The server side saw the B3 context the client's sidecar started.
    let trace_id = a.json()["headers"]["x-b3-traceid"]
        .as_str()
        .unwrap_or_else(|| panic!("no x-b3-traceid: {}", a.body))
        .to_string();

    // Both sidecars report a span of that trace (Envoy flushes every 5 s).
    let of_trace = || -> Vec<serde_json::Value> {
        spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s["traceId"] == trace_id)
            .cloned()
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(20), || {
            let s = of_trace();
            s.iter().any(|s| s["kind"] == "CLIENT") && s.iter().any(|s| s["kind"] == "SERVER")
        }),
        "spans of {trace_id}: {:#?}\nall: {:#?}",
        of_trace(),
        spans.lock().unwrap()
    );
    let s = of_trace();
    let client_span = s.iter().find(|s| s["kind"] == "CLIENT").unwrap();
    let server_span = s.iter().find(|s| s["kind"] == "SERVER").unwrap();
    assert_eq!(
        server_span["parentId"], client_span["id"],
        "the server span is the client span's child: {s:#?}"
    );
    assert_eq!(client_span["localEndpoint"]["ipv4"], ip(10).to_string());
    assert_eq!(server_span["localEndpoint"]["ipv4"], ip(20).to_string());
    // Istio's span tags: each proxy's canonical service and namespace, the mesh id.
    for (span, service) in [(client_span, "client"), (server_span, "api")] {
        let tags = &span["tags"];
        assert_eq!(tags["istio.canonical_service"], service, "{span:#}");
        assert_eq!(tags["istio.namespace"], NS, "{span:#}");
        assert_eq!(tags["istio.mesh_id"], "cluster.local", "{span:#}");
    }

    // JSON access logs on stdout, with the trace id.
    let find_log = |pod: &str, cluster: &str| -> Option<serde_json::Value> {
        mesh.envoy_log(pod)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["upstream_cluster"] == cluster && v["path"] == "/orders?key=t1")
    };
    let out_cluster = format!("outbound|{PORT}||{api}");
    assert!(
        wait_until(Duration::from_secs(5), || find_log("client", &out_cluster)
            .is_some()),
        "client log:\n{}",
        mesh.envoy_log("client")
    );
    let log = find_log("client", &out_cluster).unwrap();
    assert_eq!(log["response_code"], 200);
    assert_eq!(log["method"], "GET");
    assert_eq!(log["trace_id"], trace_id.as_str());
    let inbound = format!("inbound|{PORT}||");
    assert!(
        wait_until(Duration::from_secs(5), || find_log("api", &inbound)
            .is_some()),
        "api log:\n{}",
        mesh.envoy_log("api")
    );
    let log = find_log("api", &inbound).unwrap();
    assert_eq!(
        log["downstream_peer_uri_san"],
        format!("spiffe://cluster.local/ns/{NS}/sa/client")
    );

    // Prometheus stats on 15090, from outside the pod.
    let outside = mesh.add_plain_pod("scraper", ip(100)).unwrap();
    let a = get(
        &outside,
        &format!("http://{}:15090/stats/prometheus", api_pod.ip()),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.body.contains("envoy_cluster_upstream_rq"),
        "{}",
        &a.body[..500.min(a.body.len())]
    );
}
