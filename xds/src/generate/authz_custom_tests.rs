//! Unit tests of AuthorizationPolicy `action: CUSTOM` (authz_custom.rs, authz_custom_tcp.rs) as a
//! sidecar receives it: the filter order on HTTP and TCP ports, the ext_authz filters' config, and
//! failing closed with a reported reason.

use crate::generate::{GenOptions, MeshSnapshot};
use crate::json::any_to_json;
use crate::proxy::{Identity, NodeType, Proxy};
use crate::resource::LISTENER;
use meshd_model::extension_provider::parse_mesh_file;
use meshd_model::{MeshConfig, parse_file};
use serde_json::{Value, json};
use std::sync::Arc;

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: server, namespace: app}
spec:
  hosts: [server.app.svc.cluster.local]
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  - {number: 9000, name: tcp, protocol: TCP}
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: server}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: authz, namespace: app}
spec:
  hosts: [authz.app.svc.cluster.local]
  ports: [{number: 8000, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: authz}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: server, namespace: app}
spec: {address: 10.44.0.20, labels: {app: server}, serviceAccount: server}
---
"#;

const PROVIDERS: &str = r#"
extensionProviders:
- name: ext
  envoyExtAuthzHttp:
    service: authz.app.svc.cluster.local
    port: 8000
    includeRequestHeadersInCheck: [x-ext-authz]
    headersToUpstreamOnAllow: [x-user*]
    failOpen: true
    statusOnError: "503"
- name: other
  envoyExtAuthzGrpc: {service: app/authz.app.svc.cluster.local, port: 8000, timeout: 1s}
- name: gone
  envoyExtAuthzHttp: {service: gone.app.svc.cluster.local, port: 8000}
- name: tcp-grpc
  envoyExtAuthzGrpc: {service: authz.app.svc.cluster.local, port: 8000, timeout: 2s, failOpen: true}
"#;

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: app}}\nspec: {{selector: {{matchLabels: {{app: server}}}}, {spec}}}\n---\n"
    )
}

fn snapshot(policies: &str) -> MeshSnapshot {
    let file = parse_file("mesh.yaml", &format!("{MESH}{policies}")).unwrap();
    assert!(file.rejected.is_empty(), "{:?}", file.rejected);
    let config = MeshConfig::assemble([&file]);
    assert!(config.rejected.is_empty(), "{:?}", config.rejected);
    let opts = GenOptions {
        ext_authz_providers: parse_mesh_file(PROVIDERS).unwrap().ext_authz,
        ..GenOptions::default()
    };
    MeshSnapshot::build(1, Arc::new(config), Arc::new(opts))
}

fn proxy() -> Proxy {
    Proxy {
        metadata: Default::default(),
        id: "sidecar~10.44.0.20~server.app~app.svc.cluster.local".into(),
        node_type: NodeType::Sidecar,
        ip: None,
        identity: Identity {
            workload: "server".into(),
            namespace: "app".into(),
            service_account: "server".into(),
            trust_domain: "cluster.local".into(),
        },
    }
}

/// The inbound chain of `port`: its HTTP filters (HTTP port) or network filters (TCP port).
fn chain_filters(snap: &MeshSnapshot, port: u64) -> Vec<Value> {
    let out = snap.generate(&proxy());
    let l = any_to_json(&out[LISTENER].get("virtualInbound").unwrap().any());
    let chain = l["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["filter_chain_match"]["destination_port"] == json!(port))
        .unwrap_or_else(|| panic!("no chain for {port}: {l}"))
        .clone();
    let filters = chain["filters"].as_array().unwrap().clone();
    match filters
        .iter()
        .find_map(|f| f["typed_config"]["http_filters"].as_array())
    {
        Some(http) => http.clone(),
        None => filters,
    }
}

fn rbac_kind(f: &Value) -> String {
    let c = &f["typed_config"];
    if c["rules"].is_object() {
        // ALLOW is the enum's zero, left out of the JSON.
        return format!("rbac:{}", c["rules"]["action"].as_str().unwrap_or("ALLOW"));
    }
    format!(
        "rbac:shadow:{}",
        c["shadow_rules_stat_prefix"].as_str().unwrap_or_default()
    )
}

fn names(filters: &[Value]) -> Vec<String> {
    filters
        .iter()
        .map(|f| match f["name"].as_str().unwrap() {
            "envoy.filters.http.rbac" | "envoy.filters.network.rbac" => rbac_kind(f),
            n => n.to_string(),
        })
        .collect()
}

fn four_layers() -> String {
    four_layers_with("ext")
}

fn four_layers_with(provider: &str) -> String {
    [
        policy("audit", "action: AUDIT, rules: [{}]"),
        policy(
            "ext",
            &format!("action: CUSTOM, provider: {{name: {provider}}}, rules: [{{to: [{{operation: {{paths: ['/custom/*']}}}}]}}]"),
        ),
        policy("deny", "action: DENY, rules: [{to: [{operation: {paths: ['/deny']}}]}]"),
        policy("allow", "rules: [{}]"),
    ]
    .concat()
}

#[test]
fn custom_runs_after_audit_and_before_deny_then_allow() {
    let snap = snapshot(&four_layers());
    // The one problem is the TCP port's (see an_http_provider_on_a_tcp_port_…).
    assert!(
        snap.problems()
            .all(|p| p.reason.contains("cannot authorize TCP")),
        "{:?}",
        snap.problems().collect::<Vec<_>>()
    );
    let http = chain_filters(&snap, 8080);
    let got = names(&http);
    assert_eq!(
        got[..5],
        [
            "rbac:LOG",
            "rbac:shadow:istio_ext_authz_",
            "envoy.filters.http.ext_authz",
            "rbac:DENY",
            "rbac:ALLOW"
        ],
        "{got:?}"
    );
    let marker = &http[1]["typed_config"];
    assert_eq!(marker["rules"], Value::Null, "the marker enforces nothing");
    assert_eq!(
        marker["shadow_rules"]["action"],
        Value::Null,
        "ALLOW, the zero"
    );
    let keys: Vec<&String> = marker["shadow_rules"]["policies"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(keys, ["istio-ext-authz-ns[app]-policy[ext]-rule[0]"]);
    let ext = &http[2]["typed_config"];
    assert_eq!(
        ext["filter_enabled_metadata"],
        json!({"filter": "envoy.filters.http.rbac",
               "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
               "value": {"string_match": {"prefix": "istio-ext-authz"}}})
    );
    assert_eq!(
        ext["http_service"]["server_uri"],
        json!({"uri": "http://authz.app.svc.cluster.local",
               "cluster": "outbound|8000||authz.app.svc.cluster.local",
               "timeout": "600s"})
    );
    assert_eq!(
        ext["allowed_headers"],
        json!({"patterns": [{"exact": "x-ext-authz", "ignore_case": true}]})
    );
    assert_eq!(
        ext["http_service"]["authorization_response"]["allowed_upstream_headers"],
        json!({"patterns": [{"prefix": "x-user", "ignore_case": true}]})
    );
    assert_eq!(ext["failure_mode_allow"], true);
    assert_eq!(
        ext["status_on_error"],
        json!({"code": "ServiceUnavailable"})
    );
    assert_eq!(ext["transport_api_version"], "V3");
    // TCP: no authorizer call; the CUSTOM rule (its HTTP-only path dropped) denies.
    let tcp = chain_filters(&snap, 9000);
    let deny = tcp
        .iter()
        .find(|f| rbac_kind(f) == "rbac:DENY")
        .expect("deny filter");
    assert!(
        deny["typed_config"]["rules"]["policies"]
            .get("istio-ext-authz-ns[app]-policy[ext]-rule[0]")
            .is_some(),
        "{deny}"
    );
}

#[test]
fn a_grpc_provider_calls_its_cluster_over_envoy_grpc() {
    let snap = snapshot(&policy(
        "ext",
        "action: CUSTOM, provider: {name: other}, rules: [{}]",
    ));
    let http = chain_filters(&snap, 8080);
    let ext = &http
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.ext_authz")
        .unwrap()["typed_config"];
    assert_eq!(
        ext["grpc_service"],
        json!({"envoy_grpc": {"cluster_name": "outbound|8000||authz.app.svc.cluster.local",
                              "authority": "authz.app.svc.cluster.local"},
               "timeout": "1s"})
    );
    assert_eq!(ext["failure_mode_allow"], Value::Null);
}

/// The deny rules on the HTTP port and the reasons `problems()` gives, by policy.
fn failed(snap: &MeshSnapshot) -> (Vec<String>, Vec<(String, String)>) {
    let http = chain_filters(snap, 8080);
    assert!(
        !names(&http).contains(&"envoy.filters.http.ext_authz".to_string()),
        "{:?}",
        names(&http)
    );
    let deny = http
        .iter()
        .find(|f| rbac_kind(f) == "rbac:DENY")
        .expect("fails closed");
    let rules = deny["typed_config"]["rules"]["policies"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let problems = snap
        .problems()
        .map(|r| (r.name.clone().unwrap(), r.reason.clone()))
        .collect();
    (rules, problems)
}

#[test]
fn an_unknown_provider_or_service_fails_closed_and_is_reported() {
    for (provider, why) in [
        (
            "nope",
            "`nope` is not an envoyExtAuthzHttp or envoyExtAuthzGrpc extension provider",
        ),
        (
            "gone",
            "service `gone.app.svc.cluster.local` port 8000 is not in the registry",
        ),
    ] {
        let snap = snapshot(&policy(
            "ext",
            &format!("action: CUSTOM, provider: {{name: {provider}}}, rules: [{{}}]"),
        ));
        let (rules, problems) = failed(&snap);
        assert_eq!(rules, ["ns[app]-policy[ext]-fail-closed"]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains(why), "{problems:?}");
        assert!(problems[0].1.contains("fails closed"), "{problems:?}");
    }
}

#[test]
fn two_providers_for_one_workload_fail_closed() {
    let snap = snapshot(
        &[
            policy("a", "action: CUSTOM, provider: {name: ext}, rules: [{}]"),
            policy("b", "action: CUSTOM, provider: {name: other}, rules: [{}]"),
        ]
        .concat(),
    );
    let (rules, problems) = failed(&snap);
    assert_eq!(
        rules,
        [
            "ns[app]-policy[a]-fail-closed",
            "ns[app]-policy[b]-fail-closed"
        ]
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0]
            .1
            .contains("name different providers (ext, other)")
            && problems[0].1.contains("workload app/server"),
        "{problems:?}"
    );
}

#[test]
fn a_grpc_provider_on_a_tcp_port_is_asked_about_the_connections_custom_matches() {
    let snap = snapshot(&four_layers_with("tcp-grpc"));
    assert_eq!(snap.problems().count(), 0);
    let tcp = chain_filters(&snap, 9000);
    let got = names(&tcp);
    assert_eq!(
        got[..5],
        [
            "rbac:LOG",
            "rbac:shadow:istio_ext_authz_",
            "envoy.filters.network.ext_authz",
            "rbac:DENY",
            "rbac:ALLOW"
        ],
        "{got:?}"
    );
    assert_eq!(got.last().unwrap(), "envoy.filters.network.tcp_proxy");
    let marker = &tcp[1]["typed_config"];
    assert_eq!(marker["rules"], Value::Null, "the marker closes nothing");
    let rules = marker["shadow_rules"]["policies"].as_object().unwrap();
    assert_eq!(
        rules.keys().collect::<Vec<_>>(),
        ["istio-ext-authz-ns[app]-policy[ext]-rule[0]"]
    );
    assert!(
        !rules
            .values()
            .next()
            .unwrap()
            .to_string()
            .contains("/custom"),
        "the HTTP-only path is dropped on TCP: {marker}"
    );
    let ext = &tcp[2]["typed_config"];
    assert_eq!(
        ext["filter_enabled_metadata"],
        json!({"filter": "envoy.filters.network.rbac",
               "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
               "value": {"string_match": {"prefix": "istio-ext-authz"}}})
    );
    assert_eq!(
        ext["grpc_service"],
        json!({"envoy_grpc": {"cluster_name": "outbound|8000||authz.app.svc.cluster.local",
                              "authority": "authz.app.svc.cluster.local"},
               "timeout": "2s"})
    );
    assert_eq!(ext["transport_api_version"], "V3");
    assert_eq!(ext["failure_mode_allow"], true);
    let deny = &tcp[3]["typed_config"]["rules"]["policies"];
    assert!(
        deny.get("istio-ext-authz-ns[app]-policy[ext]-rule[0]")
            .is_none(),
        "asked, not denied: {deny}"
    );
}

#[test]
fn an_http_provider_on_a_tcp_port_still_denies_what_custom_matches() {
    let snap = snapshot(&four_layers_with("ext"));
    let tcp = chain_filters(&snap, 9000);
    let got = names(&tcp);
    assert_eq!(
        got[..3],
        ["rbac:LOG", "rbac:DENY", "rbac:ALLOW"],
        "no marker, no ext_authz: {got:?}"
    );
    assert!(
        tcp[1]["typed_config"]["rules"]["policies"]
            .get("istio-ext-authz-ns[app]-policy[ext]-rule[0]")
            .is_some(),
        "{}",
        tcp[1]
    );
    // The HTTP port of the same workload still asks that provider.
    assert!(names(&chain_filters(&snap, 8080)).contains(&"envoy.filters.http.ext_authz".into()));
    // And the policy is reported: on the TCP port it denies instead of asking.
    let reasons: Vec<String> = snap.problems().map(|p| p.to_string()).collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("app/ext")
            && reasons[0].contains(
                "provider `ext` is an envoyExtAuthzHttp provider, which cannot authorize TCP: on TCP port 9000 of workload app/server the policy denies the connections it matches"
            )
            && !reasons[0].contains("fails closed"),
        "{reasons:?}"
    );
    // A rule only for the HTTP port leaves the TCP port alone: nothing to report.
    let http_only = snapshot(&policy(
        "ext",
        "action: CUSTOM, provider: {name: ext}, rules: [{to: [{operation: {ports: ['8080']}}]}]",
    ));
    assert_eq!(http_only.problems().count(), 0);
}

#[test]
fn the_tcp_port_report_follows_the_sidecars_ingress_ports() {
    let ext = policy("ext", "action: CUSTOM, provider: {name: ext}, rules: [{}]");
    let sidecar = |ports: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: server, namespace: app}}\n\
             spec:\n  workloadSelector: {{labels: {{app: server}}}}\n  ingress:\n{ports}---\n"
        )
    };
    // The Sidecar serves 9100 as TCP (and 8080 as HTTP): the report names 9100, not the
    // service's 9000, which the workload no longer serves.
    let tcp_9100 = sidecar(
        "  - {port: {number: 8080, protocol: HTTP, name: http}, defaultEndpoint: '127.0.0.1:8080'}\n  \
         - {port: {number: 9100, protocol: TCP, name: tcp}, defaultEndpoint: '127.0.0.1:9000'}\n",
    );
    let reasons: Vec<String> = snapshot(&format!("{tcp_9100}{ext}"))
        .problems()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("on TCP port 9100 of workload app/server"),
        "{reasons:?}"
    );
    // Only HTTP ingress ports: no TCP port, nothing to report.
    let http_only = sidecar(
        "  - {port: {number: 8080, protocol: HTTP, name: http}, defaultEndpoint: '127.0.0.1:8080'}\n",
    );
    assert_eq!(snapshot(&format!("{http_only}{ext}")).problems().count(), 0);
}
