//! EnvoyFilter (seed 1.7, rate limits) in stock Envoy: Istio's local rate limit recipe on a
//! sidecar's inbound side answers 429 once the bucket is empty and 200 again once it refilled;
//! a LISTENER_FILTER insert, CLUSTER and HTTP_ROUTE merges reach Envoy, and a BOOTSTRAP merge
//! is in the selected Envoy's bootstrap and runtime; unsupported shapes (an unknown context)
//! and values that are not Envoy's proto JSON are reported.

use crate::traffic_support;

use std::time::Duration;

use meshd_e2e::*;
use traffic_support::*;

const PORT: u16 = 8080;

/// What `api`'s rate limit has let through (200) and refused (429) so far, as seen by the client.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    limited: u64,
}

impl Tally {
    /// Counts one answer; anything but 200 or a 429 from the limiter fails the test.
    fn count(&mut self, a: &Answer) -> u16 {
        match a.status {
            200 => self.ok += 1,
            429 => {
                assert_eq!(
                    a.headers.get("x-local-rate-limit").map(String::as_str),
                    Some("true"),
                    "a 429 not from the local rate limit: {a:?}"
                );
                self.limited += 1;
            }
            _ => panic!("neither let through nor limited: {a:?}"),
        }
        a.status
    }

    /// Sequential requests until the limiter answers 429 (the bucket ran dry); how many got 200
    /// before it. Requests, not time, bound the wait: 3 tokens per 5 s cannot keep up with
    /// back-to-back requests for long.
    fn until_limited(&mut self, client: &SidecarPod, url: &str) -> u64 {
        for let_through in 0..50 {
            if self.count(&get(client, url)) == 429 {
                return let_through;
            }
        }
        panic!("50 back-to-back requests and no 429: {self:?}");
    }
}

#[test]
fn local_rate_limit_and_merge_patches() {
    let api = fqdn("api");
    let filters = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: api-ratelimit, namespace: {NS}}}
spec:
  workloadSelector:
    labels: {{app: api}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {{name: envoy.filters.http.router}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket: {{max_tokens: 3, tokens_per_fill: 3, fill_interval: 5s}}
            filter_enabled:
              runtime_key: local_rate_limit_enabled
              default_value: {{numerator: 100, denominator: HUNDRED}}
            filter_enforced:
              runtime_key: local_rate_limit_enforced
              default_value: {{numerator: 100, denominator: HUNDRED}}
            response_headers_to_add:
            - append_action: OVERWRITE_IF_EXISTS_OR_ADD
              header: {{key: x-local-rate-limit, value: "true"}}
  - applyTo: LISTENER_FILTER
    match:
      context: SIDECAR_INBOUND
      listener: {{listenerFilter: envoy.filters.listener.tls_inspector}}
    patch:
      operation: INSERT_AFTER
      value:
        name: envoy.filters.listener.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.listener.local_ratelimit.v3.LocalRateLimit
          stat_prefix: inbound_sockets
          token_bucket: {{max_tokens: 10000, tokens_per_fill: 10000, fill_interval: 1s}}
  - applyTo: BOOTSTRAP
    patch:
      operation: MERGE
      value:
        layered_runtime:
          layers:
          - name: patched
            static_layer: {{meshd.e2e.bootstrap_patched: "on"}}
          - name: admin
            admin_layer: {{}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: mesh-merges, namespace: istio-system}}
spec:
  configPatches:
  - applyTo: CLUSTER
    match:
      context: SIDECAR_OUTBOUND
      cluster: {{service: {web}, portNumber: {PORT}}}
    patch:
      operation: MERGE
      value: {{per_connection_buffer_limit_bytes: 32768}}
  - applyTo: HTTP_ROUTE
    match:
      context: SIDECAR_OUTBOUND
      routeConfiguration:
        vhost: {{name: "{web}:{PORT}"}}
    patch:
      operation: MERGE
      value:
        request_headers_to_add:
        - header: {{key: x-patched-by, value: envoyfilter}}
"#,
        web = fqdn("web"),
    );
    let yaml = [
        client_and_api(PORT),
        service("web", vip(21), PORT),
        workload("web", "web", ip(21), &[]),
        filters,
    ]
    .concat();
    let mesh = mesh(
        "envoyfilter",
        &yaml,
        &[(api.clone(), vip(20)), (fqdn("web"), vip(21))],
    );
    let configz = mesh.admin_json("/debug/configz").unwrap();
    assert_eq!(configz["rejected"], serde_json::json!([]), "{configz}");
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    let api_pod = mesh
        .add_sidecar_pod(&format!("api.{NS}"), ip(20), PORT)
        .unwrap();
    let web_pod = mesh
        .add_sidecar_pod(&format!("web.{NS}"), ip(21), PORT)
        .unwrap();

    // The bucket starts full with 3 tokens: at least three requests pass, then api's sidecar
    // answers 429. Once it has refilled, requests pass again. Limited requests never reach the
    // app, and api's Envoy counted each of them.
    let rl_url = format!("http://{api}:{PORT}/?key=rl");
    let rate_limited = "http_local_rate_limiter.http_local_rate_limit.rate_limited";
    let mut tally = Tally::default();
    let first = tally.until_limited(&client, &rl_url);
    assert!(first >= 3, "a full bucket of 3 let {first} through");
    wait_for(Duration::from_secs(30), "the bucket to refill", || {
        tally.count(&get(&client, &rl_url)) == 200
    })
    .unwrap();
    assert_eq!(
        app_count(&api_pod, "rl"),
        tally.ok,
        "limited requests never reach the app: {tally:?}"
    );
    assert_eq!(stat(&api_pod, rate_limited), tally.limited, "{tally:?}");
    // The LISTENER_FILTER patch: api's virtualInbound runs the listener filter right after
    // the TLS inspector, and Envoy built it (its counter exists; the bucket never ran dry).
    let dump = api_pod.envoy_config_dump().unwrap();
    let inbound = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["dynamic_listeners"].as_array())
        .flatten()
        .find(|l| l["name"] == "virtualInbound")
        .unwrap_or_else(|| panic!("no virtualInbound in {dump}"));
    let names: Vec<&str> = inbound["active_state"]["listener"]["listener_filters"]
        .as_array()
        .unwrap_or_else(|| panic!("virtualInbound not active: {inbound}"))
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.listener.original_dst",
            "envoy.filters.listener.tls_inspector",
            "envoy.filters.listener.local_ratelimit"
        ]
    );
    assert_eq!(
        stat(
            &api_pod,
            "listener_local_ratelimit.inbound_sockets.rate_limited"
        ),
        0
    );
    // The BOOTSTRAP patch: api's Envoy started with the runtime layer merged into the
    // bootstrap `meshd bootstrap` wrote; web (not selected) has none.
    let (code, runtime) = api_pod.envoy_admin("/runtime").unwrap();
    assert_eq!(code, 200, "{runtime}");
    let runtime: serde_json::Value = serde_json::from_str(&runtime).unwrap();
    assert_eq!(
        runtime["entries"]["meshd.e2e.bootstrap_patched"]["final_value"], "on",
        "{runtime}"
    );
    let boot = &dump["configs"][0]["bootstrap"];
    assert_eq!(
        boot["layered_runtime"]["layers"][0]["name"], "patched",
        "{boot}"
    );
    let (_, runtime) = web_pod.envoy_admin("/runtime").unwrap();
    assert!(!runtime.contains("bootstrap_patched"), "{runtime}");

    // Only the selected workload is limited: web (no EnvoyFilter) answers every request.
    let web = burst(
        &client,
        &format!("http://{}:{PORT}/", fqdn("web")),
        &[],
        8,
        1,
    );
    assert!(web.iter().all(|a| a.status == 200), "{web:#?}");

    // The mesh-wide merges: web's route adds a header, web's cluster has the buffer limit.
    assert_eq!(web[0].json()["headers"]["x-patched-by"], "envoyfilter");
    let clusters = dump_clusters(&client.envoy_config_dump().unwrap());
    let c = &clusters[&format!("outbound|{PORT}||{}", fqdn("web"))];
    assert_eq!(c["per_connection_buffer_limit_bytes"], 32768, "{c}");
    let c = &clusters[&format!("outbound|{PORT}||{api}")];
    assert!(c["per_connection_buffer_limit_bytes"].is_null(), "{c}");

    // Unsupported shapes, and values that are not Envoy's proto JSON, are reported; what was
    // in force stays.
    mesh.write_config(
        "bad-filters.yaml",
        &format!(
            r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: lua, namespace: {NS}}}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match: {{context: SIDECAR}}
    patch:
      operation: INSERT_BEFORE
      value: {{name: envoy.filters.http.lua}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: typo, namespace: {NS}}}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {{cluster: {{service: {api}}}}}
    patch:
      operation: MERGE
      value: {{per_connection_buffer_limit_bytez: 1}}
"#
        ),
    )
    .unwrap();
    let rejected = || -> Vec<String> {
        mesh.admin_json("/debug/configz").unwrap()["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["message"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || rejected().len() == 2),
        "{:#?}",
        rejected()
    );
    let r = rejected();
    assert!(
        r.iter()
            // (the line of the patch the field is in)
            .any(|m| m.contains("bad-filters.yaml:6:") && m.contains("match.context `SIDECAR`")),
        "{r:#?}"
    );
    assert!(
        r.iter()
            .any(|m| m.contains("shop/typo") && m.contains("per_connection_buffer_limit_bytez")),
        "{r:#?}"
    );
    // meshd analyze reports the same, as file:line.
    let out = std::process::Command::new(mesh.meshd_bin())
        .arg("analyze")
        .arg(mesh.config_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bad-filters.yaml:"), "{text}");
    assert!(text.contains("per_connection_buffer_limit_bytez"), "{text}");
    assert!(text.contains("match.context `SIDECAR`"), "{text}");
    // Still limited, still merged.
    tally.until_limited(&client, &rl_url);
    assert_eq!(app_count(&api_pod, "rl"), tally.ok, "{tally:?}");
    assert_eq!(stat(&api_pod, rate_limited), tally.limited, "{tally:?}");
    let a = get(&client, &format!("http://{}:{PORT}/", fqdn("web")));
    assert_eq!(a.json()["headers"]["x-patched-by"], "envoyfilter");
}
