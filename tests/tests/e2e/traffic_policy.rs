//! Per-destination policy proven with stock Envoy: consistent-hash load balancing by header,
//! cookie and source IP (per-subset traffic policies), CORS, and h2UpgradePolicy.

use crate::traffic_support;

use std::collections::BTreeSet;

use meshd_e2e::*;
use traffic_support::*;

const PORT: u16 = 8080;

#[test]
fn consistent_hash_cors_and_h2_upgrade() {
    let host = fqdn("backend");
    let rules = format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: {NS}}}
spec:
  host: {host}
  subsets:
  - name: byheader
    labels: {{app: backend}}
    trafficPolicy: {{loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}}}
  - name: bycookie
    labels: {{app: backend}}
    trafficPolicy: {{loadBalancer: {{consistentHash: {{httpCookie: {{name: sticky, ttl: 60s}}}}}}}}
  - name: bysource
    labels: {{app: backend}}
    trafficPolicy: {{loadBalancer: {{consistentHash: {{useSourceIp: true}}}}}}
  - name: h2
    labels: {{app: backend}}
    trafficPolicy: {{connectionPool: {{http: {{h2UpgradePolicy: UPGRADE}}}}}}
  - name: asclient
    labels: {{app: backend}}
    trafficPolicy: {{connectionPool: {{http: {{useClientProtocol: true}}}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend, namespace: {NS}}}
spec:
  hosts: [{host}]
  http:
  - match: [{{uri: {{prefix: /h/}}}}]
    route: [{{destination: {{host: {host}, subset: byheader}}}}]
  - match: [{{uri: {{prefix: /c/}}}}]
    route: [{{destination: {{host: {host}, subset: bycookie}}}}]
  - match: [{{uri: {{prefix: /ip/}}}}]
    route: [{{destination: {{host: {host}, subset: bysource}}}}]
  - match: [{{uri: {{prefix: /h2/}}}}]
    route: [{{destination: {{host: {host}, subset: h2}}}}]
  - match: [{{uri: {{prefix: /uc/}}}}]
    route: [{{destination: {{host: {host}, subset: asclient}}}}]
  - match: [{{uri: {{prefix: /cors/}}}}]
    corsPolicy:
      allowOrigins: [{{exact: "https://good.example"}}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      exposeHeaders: [x-exposed]
      maxAge: 1h
    route: [{{destination: {{host: {host}}}}}]
  - route: [{{destination: {{host: {host}}}}}]
"#
    );
    let yaml = [
        service("client", vip(10), PORT),
        workload("client", "client", ip(10), &[]),
        service("backend", vip(20), PORT),
        workload("backend-a", "backend", ip(20), &[]),
        workload("backend-b", "backend", ip(21), &[]),
        rules,
    ]
    .concat();
    let mesh = mesh("lbpolicy", &yaml, &[(host.clone(), vip(20))]);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("backend-a.{NS}"), ip(20), PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("backend-b.{NS}"), ip(21), PORT)
        .unwrap();
    let url = |path: &str| format!("http://{host}:{PORT}{path}");
    let backends = |answers: &[Answer]| -> BTreeSet<String> {
        for a in answers {
            assert_eq!(a.status, 200, "{a:?}");
        }
        answers.iter().map(Answer::service).collect()
    };

    // The plain route spreads (LEAST_REQUEST): both backends answer.
    assert_eq!(backends(&burst(&client, &url("/"), &[], 40, 4)).len(), 2);

    // Header: one user always lands on one backend; users spread over both.
    let mut seen = BTreeSet::new();
    for user in 0..16 {
        let u = format!("user-{user}");
        let got = backends(&burst(&client, &url("/h/x"), &[("x-user", &u)], 6, 2));
        assert_eq!(got.len(), 1, "{u} went to {got:?}");
        seen.extend(got);
    }
    assert_eq!(seen.len(), 2, "16 users all hashed to {seen:?}");

    // Cookie: Envoy issues the cookie; requests carrying it stick to one backend.
    let first = get(&client, &url("/c/x"));
    assert_eq!(first.status, 200, "{first:?}");
    let cookie = first
        .headers
        .get("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no set-cookie: {first:?}"))
        .to_string();
    assert!(cookie.starts_with("sticky="), "{cookie}");
    let got = backends(&burst(&client, &url("/c/x"), &[("cookie", &cookie)], 20, 4));
    assert_eq!(got.len(), 1, "{got:?}");

    // Source IP: every request from this pod lands on one backend.
    let got = backends(&burst(&client, &url("/ip/x"), &[], 30, 4));
    assert_eq!(got.len(), 1, "{got:?}");

    // h2UpgradePolicy UPGRADE: the client's sidecar speaks HTTP/2 to that subset.
    backends(&burst(&client, &url("/h2/x"), &[], 4, 1));
    let h2 = format!("cluster.outbound|{PORT}|h2|{host}.upstream_cx_http2_total");
    let h1 = format!("cluster.outbound|{PORT}||{host}.upstream_cx_http1_total");
    assert!(stat(&client, &h2) >= 1, "{h2} = 0");
    assert!(stat(&client, &h1) >= 1, "{h1} = 0");
    assert_eq!(
        stat(
            &client,
            &format!("cluster.outbound|{PORT}||{host}.upstream_cx_http2_total")
        ),
        0
    );

    // useClientProtocol: the sidecar speaks to that subset what the client spoke to it, HTTP/1.1
    // for an HTTP/1.1 request, HTTP/2 for an HTTP/2 (prior knowledge) one.
    let uc =
        |codec: &str| format!("cluster.outbound|{PORT}|asclient|{host}.upstream_cx_{codec}_total");
    backends(&burst(&client, &url("/uc/x"), &[], 2, 1));
    assert!(stat(&client, &uc("http1")) >= 1, "{} = 0", uc("http1"));
    assert_eq!(
        stat(&client, &uc("http2")),
        0,
        "an HTTP/1.1 request went out as HTTP/2"
    );
    let h2_answer = curl_in(
        &client,
        &[
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            &url("/uc/y"),
        ],
    );
    assert_eq!(h2_answer.stdout.trim(), "200 2", "{h2_answer:?}");
    assert!(stat(&client, &uc("http2")) >= 1, "{} = 0", uc("http2"));

    // CORS: a preflight from an allowed origin is answered by the sidecar.
    let origin = [
        ("origin", "https://good.example"),
        ("access-control-request-method", "POST"),
    ];
    let a = request(&client, "OPTIONS", &url("/cors/x?key=pre"), &origin);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("https://good.example"),
        "{a:?}"
    );
    assert_eq!(
        a.headers
            .get("access-control-allow-methods")
            .map(String::as_str),
        Some("GET,POST")
    );
    assert_eq!(
        a.headers.get("access-control-max-age").map(String::as_str),
        Some("3600")
    );
    // A simple request from the allowed origin gets the CORS headers on the app's answer.
    let a = request(
        &client,
        "GET",
        &url("/cors/x"),
        &[("origin", "https://good.example")],
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("https://good.example")
    );
    assert_eq!(
        a.headers
            .get("access-control-expose-headers")
            .map(String::as_str),
        Some("x-exposed")
    );
    // Another origin gets none.
    let a = request(
        &client,
        "GET",
        &url("/cors/x"),
        &[("origin", "https://evil.example")],
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        !a.headers.contains_key("access-control-allow-origin"),
        "{a:?}"
    );
}
