//! Resilience from DestinationRule and VirtualService, proven with stock Envoy sidecars and real
//! requests: circuit breaker overflow, retries, timeouts, outlier ejection.

use crate::traffic_support;

use std::time::Duration;

use meshd_e2e::*;
use traffic_support::*;

const PORT: u16 = 8080;

/// A client pod (`client`, 10.44.0.10) and a service `backend` with one workload (10.44.0.20)
/// plus `extra` YAML; returns the mesh and both pods.
fn client_and_backend(name: &str, extra: &str) -> (Mesh, SidecarPod, SidecarPod) {
    let yaml = format!(
        "{}{}{}{}{extra}",
        service("client", vip(10), PORT),
        workload("client", "client", ip(10), &[]),
        service("backend", vip(20), PORT),
        workload("backend-v1", "backend", ip(20), &[("version", "v1")]),
    );
    let mesh = mesh(name, &yaml, &[(fqdn("backend"), vip(20))]);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    let backend = mesh
        .add_sidecar_pod(&format!("backend-v1.{NS}"), ip(20), PORT)
        .unwrap();
    (mesh, client, backend)
}

fn url(path: &str) -> String {
    format!("http://{}:{PORT}{path}", fqdn("backend"))
}

#[test]
fn circuit_breaker_overflows_pending_requests() {
    let dr = format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: {NS}}}
spec:
  host: {host}
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: 1}}
      http: {{http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend, namespace: {NS}}}
spec:
  hosts: [{host}]
  http:
  - route:
    - destination: {{host: {host}}}
    retries: {{attempts: 0}}
"#,
        host = fqdn("backend")
    );
    let (_mesh, client, _backend) = client_and_backend("cb", &dr);
    let cluster = format!("outbound|{PORT}||{}", fqdn("backend"));
    let c = &dump_clusters(&client.envoy_config_dump().unwrap())[&cluster];
    let t = &c["circuit_breakers"]["thresholds"][0];
    assert_eq!(t["max_connections"], 1, "{c}");
    assert_eq!(t["max_pending_requests"], 1, "{c}");

    // 10 concurrent slow requests over one connection slot and one pending slot.
    let answers = burst(&client, &url("/slow?delay_ms=1500"), &[], 10, 10);
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let overflow: Vec<_> = answers.iter().filter(|a| a.status == 503).collect();
    assert!(ok >= 1, "{answers:#?}");
    assert!(overflow.len() >= 5, "{answers:#?}");
    assert!(
        overflow
            .iter()
            .any(|a| a.headers.get("x-envoy-overloaded").map(String::as_str) == Some("true")),
        "{overflow:#?}"
    );
    let pending_overflow = stat(
        &client,
        &format!("cluster.{cluster}.upstream_rq_pending_overflow"),
    );
    assert!(
        pending_overflow >= 5,
        "upstream_rq_pending_overflow = {pending_overflow}"
    );
}

#[test]
fn retries_and_timeouts() {
    let vs = format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend, namespace: {NS}}}
spec:
  hosts: [{host}]
  http:
  - match: [{{uri: {{prefix: /retry}}}}]
    route:
    - destination: {{host: {host}}}
    retries: {{attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,reset,connect-failure"}}
  - match: [{{uri: {{prefix: /once}}}}]
    route:
    - destination: {{host: {host}}}
    retries: {{attempts: 0}}
  - match: [{{uri: {{prefix: /slow}}}}]
    route:
    - destination: {{host: {host}}}
    timeout: 1s
    retries: {{attempts: 0}}
"#,
        host = fqdn("backend")
    );
    let (_mesh, client, backend) = client_and_backend("retry", &vs);
    let cluster = format!("cluster.outbound|{PORT}||{}", fqdn("backend"));
    let per_try_timeouts = format!("{cluster}.upstream_rq_per_try_timeout");
    let route_timeouts = format!("{cluster}.upstream_rq_timeout");

    // Fails the first two attempts with 503: the caller sees 200, the app saw 3 attempts.
    let a = get(&client, &url("/retry?fail_first=2&key=r1"));
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(app_count(&backend, "r1"), 3);

    // Without retries the first 503 reaches the caller.
    let a = get(&client, &url("/once?fail_first=1&key=o1"));
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(app_count(&backend, "o1"), 1);

    // perTryTimeout: each attempt of a 2 s request is cut at 500 ms; 1 + 3 attempts, then 504.
    // Envoy counts every attempt its per-try timer cut (and none cut by the route timeout); the
    // lower bound shows the four timers ran one after the other.
    let (per_try_before, route_before) = (
        stat(&client, &per_try_timeouts),
        stat(&client, &route_timeouts),
    );
    let a = get(&client, &url("/retry?delay_ms=2000&key=p1"));
    assert_eq!(
        (a.status, a.body.as_str()),
        (504, "upstream request timeout"),
        "{a:?}"
    );
    assert!(a.elapsed >= Duration::from_millis(1900), "{:?}", a.elapsed);
    assert_eq!(stat(&client, &per_try_timeouts) - per_try_before, 4);
    assert_eq!(stat(&client, &route_timeouts), route_before);
    assert!(
        wait_until(Duration::from_secs(3), || app_count(&backend, "p1") == 4),
        "attempts seen: {}",
        app_count(&backend, "p1")
    );

    // Route timeout 1 s on a 3 s upstream: 504 from the route's timer, not before 1 s.
    let per_try_before = stat(&client, &per_try_timeouts);
    let a = get(&client, &url("/slow?delay_ms=3000"));
    assert_eq!(
        (a.status, a.body.as_str()),
        (504, "upstream request timeout"),
        "{a:?}"
    );
    assert!(a.elapsed >= Duration::from_millis(950), "{:?}", a.elapsed);
    assert_eq!(stat(&client, &route_timeouts) - route_before, 1);
    assert_eq!(stat(&client, &per_try_timeouts), per_try_before);
}

#[test]
fn outlier_detection_ejects_the_failing_endpoint() {
    // Two workloads behind `backend`; v2's sidecar has no app behind it, so every request
    // routed there fails with 503 (upstream connect failure at its sidecar).
    let dr = format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: {NS}}}
spec:
  host: {host}
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 100ms
      baseEjectionTime: 60s
      maxEjectionPercent: 100
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend, namespace: {NS}}}
spec:
  hosts: [{host}]
  http:
  - route:
    - destination: {{host: {host}}}
    retries: {{attempts: 0}}
"#,
        host = fqdn("backend")
    );
    let yaml = [
        service("client", vip(10), PORT),
        workload("client", "client", ip(10), &[]),
        service("backend", vip(20), PORT),
        workload("backend-v1", "backend", ip(20), &[("version", "v1")]),
        workload("backend-v2", "backend", ip(21), &[("version", "v2")]),
        dr,
    ]
    .concat();
    let mesh = mesh("outlier", &yaml, &[(fqdn("backend"), vip(20))]);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    let _good = mesh
        .add_sidecar_pod(&format!("backend-v1.{NS}"), ip(20), PORT)
        .unwrap();
    let _bad = mesh
        .add_sidecar_pod_with(
            &format!("backend-v2.{NS}"),
            ip(21),
            PORT,
            SidecarOptions {
                start_app: false,
                ..Default::default()
            },
        )
        .unwrap();
    let cluster = format!("outbound|{PORT}||{}", fqdn("backend"));

    let first = burst(&client, &url("/"), &[], 20, 1);
    let failed = first.iter().filter(|a| a.status == 503).count();
    assert!(failed >= 2, "the bad endpoint was never tried: {first:#?}");
    assert!(
        wait_until(Duration::from_secs(5), || {
            stat(
                &client,
                &format!("cluster.{cluster}.outlier_detection.ejections_enforced_total"),
            ) >= 1
        }),
        "no ejection; stats:\n{}",
        client
            .envoy_stats()
            .unwrap()
            .lines()
            .filter(|l| l.contains("outlier"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        stat(
            &client,
            &format!("cluster.{cluster}.outlier_detection.ejections_active")
        ),
        1
    );
    // Traffic has moved: every request now reaches the healthy workload.
    let after = burst(&client, &url("/"), &[], 40, 4);
    assert!(after.iter().all(|a| a.status == 200), "{after:#?}");
    let (_, clusters) = client.envoy_admin("/clusters").unwrap();
    assert!(
        clusters
            .lines()
            .any(|l| l.contains("10.44.0.21") && l.contains("health_flags::/failed_outlier_check")),
        "{clusters}"
    );
}
