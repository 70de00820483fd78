//! VirtualService routing proven with stock Envoy sidecars and real requests: canary weights,
//! header and sourceLabels match, fault injection, rewrite, redirect, mirror, header manipulation.

use crate::traffic_support;

use std::time::Duration;

use meshd_e2e::*;
use traffic_support::*;

const PORT: u16 = 8080;

fn url(svc: &str, path: &str) -> String {
    format!("http://{}:{PORT}{path}", fqdn(svc))
}

/// Two workloads (v1 at .20, v2 at .21) behind one ServiceEntry, DR subsets by version, a 90/10
/// split, and a header match that pins `x-canary: yes` to v2.
#[test]
fn canary_split_and_header_match() {
    let host = fqdn("reviews");
    let rules = format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: {NS}}}
spec:
  host: {host}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {NS}}}
spec:
  hosts: [{host}]
  http:
  - match:
    - headers: {{x-canary: {{exact: "yes"}}}}
    - sourceLabels: {{track: canary}}
    route:
    - destination: {{host: {host}, subset: v2}}
  - route:
    - destination: {{host: {host}, subset: v1}}
      weight: 90
    - destination: {{host: {host}, subset: v2}}
      weight: 10
"#
    );
    let yaml = [
        service("client", vip(10), PORT),
        workload("client", "client", ip(10), &[]),
        workload("client-canary", "client", ip(11), &[("track", "canary")]),
        service("reviews", vip(20), PORT),
        workload("reviews-v1", "reviews", ip(20), &[("version", "v1")]),
        workload("reviews-v2", "reviews", ip(21), &[("version", "v2")]),
        rules,
    ]
    .concat();
    let mesh = mesh("canary", &yaml, &[(host.clone(), vip(20))]);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    // The two versions answer with different names: the app reports `--name` (the pod name).
    mesh.add_sidecar_pod(&format!("reviews-v1.{NS}"), ip(20), PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("reviews-v2.{NS}"), ip(21), PORT)
        .unwrap();

    let n = 2000;
    let answers = burst(&client, &url("reviews", "/"), &[], n, 16);
    let v1 = answers
        .iter()
        .filter(|a| a.service() == "reviews-v1")
        .count();
    let v2 = answers
        .iter()
        .filter(|a| a.service() == "reviews-v2")
        .count();
    let other: Vec<_> = answers.iter().filter(|a| a.status != 200).take(3).collect();
    assert_eq!(v1 + v2, n, "non-200 answers, e.g. {other:#?}");
    // 99.9 % two-sided binomial bound: 200 ± 3.29·sqrt(2000·0.1·0.9) ≈ 200 ± 44.
    let sd = (n as f64 * 0.1 * 0.9).sqrt();
    let (lo, hi) = (200.0 - 3.29 * sd, 200.0 + 3.29 * sd);
    assert!(
        (lo..=hi).contains(&(v2 as f64)),
        "v2 got {v2} of {n}, outside [{lo:.0}, {hi:.0}]"
    );
    eprintln!("canary: v1 {v1}, v2 {v2} of {n}");

    // A caller labelled `track: canary` (sourceLabels) always gets v2 too.
    let canary_client = mesh
        .add_sidecar_pod(&format!("client-canary.{NS}"), ip(11), PORT)
        .unwrap();
    let from_canary = burst(&canary_client, &url("reviews", "/"), &[], 100, 8);
    assert!(
        from_canary.iter().all(|a| a.service() == "reviews-v2"),
        "{:?}",
        from_canary.iter().map(Answer::service).collect::<Vec<_>>()
    );

    let marked = burst(
        &client,
        &url("reviews", "/"),
        &[("x-canary", "yes")],
        100,
        8,
    );
    assert!(
        marked.iter().all(|a| a.service() == "reviews-v2"),
        "{:?}",
        marked.iter().map(Answer::service).collect::<Vec<_>>()
    );
}

/// Fault abort (without reaching the upstream), fault delay, rewrite, redirect, mirror and
/// header manipulation, each on its own path of one VirtualService.
#[test]
fn fault_rewrite_redirect_mirror_headers() {
    let host = fqdn("api");
    let shadow = fqdn("shadow");
    let vs = format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: {NS}}}
spec:
  hosts: [{host}]
  http:
  - match: [{{uri: {{prefix: /abort}}}}]
    fault:
      abort: {{httpStatus: 418, percentage: {{value: 100}}}}
    route: [{{destination: {{host: {host}}}}}]
  - match: [{{uri: {{prefix: /delay}}}}]
    fault:
      delay: {{fixedDelay: 700ms, percentage: {{value: 100}}}}
    route: [{{destination: {{host: {host}}}}}]
  - match: [{{uri: {{prefix: /old/}}}}]
    rewrite: {{uri: /new/, authority: rewritten.example}}
    route: [{{destination: {{host: {host}}}}}]
  - match: [{{uri: {{exact: /moved}}}}]
    redirect: {{uri: /elsewhere, authority: other.example, redirectCode: 302}}
  - match: [{{uri: {{prefix: /mirror}}}}]
    mirror: {{host: {shadow}}}
    mirrorPercentage: {{value: 100}}
    route: [{{destination: {{host: {host}}}}}]
  - match: [{{uri: {{prefix: /headers}}}}]
    headers:
      request:
        set: {{x-set: one}}
        add: {{x-added: two}}
        remove: [x-drop-me]
      response:
        set: {{x-resp-set: three}}
        remove: [content-type]
    route: [{{destination: {{host: {host}}}}}]
  - route: [{{destination: {{host: {host}}}}}]
"#
    );
    let yaml = [
        client_and_api(PORT),
        service("shadow", vip(30), PORT),
        workload("shadow", "shadow", ip(30), &[]),
        vs,
    ]
    .concat();
    let mesh = mesh(
        "routing",
        &yaml,
        &[(host.clone(), vip(20)), (shadow.clone(), vip(30))],
    );
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    let api = mesh
        .add_sidecar_pod(&format!("api.{NS}"), ip(20), PORT)
        .unwrap();
    let shadow_pod = mesh
        .add_sidecar_pod(&format!("shadow.{NS}"), ip(30), PORT)
        .unwrap();

    // Abort: the status, from the client's own fault filter, and the upstream never saw it.
    let aborts = format!("http.outbound_0.0.0.0_{PORT}.fault.aborts_injected");
    let aborts_before = stat(&client, &aborts);
    let a = get(&client, &url("api", "/abort?key=ab"));
    assert_eq!(a.status, 418, "{a:?}");
    assert_eq!(stat(&client, &aborts) - aborts_before, 1);
    assert_eq!(app_count(&api, "ab"), 0);

    // Delay: the answer comes after at least the delay, and the client's fault filter counts
    // the one delay it injected; a request on another path of the same route config gets none.
    let delays = format!("http.outbound_0.0.0.0_{PORT}.fault.delays_injected");
    let delays_before = stat(&client, &delays);
    let a = get(&client, &url("api", "/delay?key=dl"));
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.elapsed >= Duration::from_millis(700), "{:?}", a.elapsed);
    assert_eq!(app_count(&api, "dl"), 1);
    assert_eq!(stat(&client, &delays) - delays_before, 1);
    let plain = get(&client, &url("api", "/plain"));
    assert_eq!(plain.status, 200, "{plain:?}");
    assert_eq!(
        stat(&client, &delays) - delays_before,
        1,
        "/plain was delayed"
    );

    // Rewrite: prefix and authority.
    let a = get(&client, &url("api", "/old/thing"));
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["path"], "/new/thing");
    assert_eq!(a.json()["headers"]["host"], "rewritten.example");

    // Redirect.
    let a = get(&client, &url("api", "/moved"));
    assert_eq!(a.status, 302, "{a:?}");
    assert_eq!(
        a.headers.get("location").map(String::as_str),
        Some("http://other.example/elsewhere")
    );

    // Mirror: the caller gets the primary's answer; the shadow receives a copy.
    for _ in 0..3 {
        let a = get(&client, &url("api", "/mirror?key=mr"));
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.service(), "api");
    }
    assert_eq!(app_count(&api, "mr"), 3);
    assert!(
        wait_until(Duration::from_secs(5), || app_count(&shadow_pod, "mr") == 3),
        "shadow saw {}",
        app_count(&shadow_pod, "mr")
    );

    // Header manipulation, both directions.
    let a = request(
        &client,
        "GET",
        &url("api", "/headers"),
        &[("x-drop-me", "gone"), ("x-added", "zero"), ("x-set", "old")],
    );
    assert_eq!(a.status, 200, "{a:?}");
    let h = &a.json()["headers"];
    assert_eq!(h["x-set"], "one", "{h}");
    assert_eq!(h["x-added"], "zero, two", "{h}");
    assert!(h["x-drop-me"].is_null(), "{h}");
    assert_eq!(
        a.headers.get("x-resp-set").map(String::as_str),
        Some("three")
    );
    assert!(!a.headers.contains_key("content-type"), "{:?}", a.headers);
}
