//! HTTP_FILTER and NETWORK_FILTER patches as proxies receive them: each operation and context,
//! `match.listener`, workloadSelector, and the sharing of what no patch selects.

use crate::generate::MeshSnapshot;
use crate::generate::test_fixture as fixture;
use crate::proxy::Proxy;
use crate::resource::LISTENER;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use prost::Message;
use std::sync::Arc;

/// With [`fixture::SERVER`]: another service, more workloads, an ingress gateway.
pub(super) const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: other, namespace: app}
spec:
  hosts: [other.app.svc.cluster.local]
  addresses: [10.96.0.21]
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: other}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: server2, namespace: app}
spec: {address: 10.44.0.22, labels: {app: server}, serviceAccount: server}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other, namespace: app}
spec: {address: 10.44.0.21, labels: {app: other}, serviceAccount: other}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ingress, namespace: istio-system}
spec: {address: 10.44.0.2, labels: {istio: ingressgateway}, serviceAccount: ingress}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: app}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: app}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route:
    - destination: {host: server.app.svc.cluster.local, port: {number: 8080}}
---
"#;

const LUA: &str = r#"
        name: envoy.filters.http.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          default_source_code:
            inline_string: |
              function envoy_on_response(h) h:headers():add("x-lua", "1") end
"#;

/// An EnvoyFilter in `app` with one patch: `apply_to`, `op`, `listener` (the YAML of
/// `match.listener`, indented for it), `value` (the YAML of `patch.value`, ditto).
fn filter(
    selector: &str,
    apply_to: &str,
    context: &str,
    listener: &str,
    op: &str,
    value: &str,
) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: ef, namespace: app}}
spec:
{selector}  configPatches:
  - applyTo: {apply_to}
    match:
      context: {context}
      listener:
{listener}
    patch:
      operation: {op}
      value:{value}
"#
    )
}

const SERVER_ONLY: &str = "  workloadSelector: {labels: {app: server}}\n";
const ROUTER: &str = "        filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.router}}}";

/// The snapshot of the mesh with `extra`, whose objects all parse and validate; EnvoyFilters
/// the generator rejects are in `patches.problems`.
pub(super) fn snapshot_with_problems(extra: &str) -> MeshSnapshot {
    fixture::snapshot(&format!("{}{MESH}{extra}", fixture::SERVER))
}

pub(super) fn snapshot(extra: &str) -> MeshSnapshot {
    let snap = snapshot_with_problems(extra);
    assert!(
        snap.patches.problems.is_empty(),
        "{:?}",
        snap.patches.problems
    );
    snap
}

/// The proxy of workload `name` of [`MESH`] (each name is used once across its namespaces).
pub(super) fn proxy(snap: &MeshSnapshot, name: &str) -> Proxy {
    let ns = if name == "ingress" {
        "istio-system"
    } else {
        "app"
    };
    fixture::workload_proxy(snap, name, ns)
}

pub(super) fn listener(snap: &MeshSnapshot, proxy_name: &str, name: &str) -> Listener {
    let out = snap.generate(&proxy(snap, proxy_name));
    let r = out[LISTENER].get(name).unwrap_or_else(|| panic!("{name}"));
    Listener::decode(r.value().as_ref()).unwrap()
}

pub(super) fn chain<'a>(l: &'a Listener, name: &str) -> &'a FilterChain {
    l.filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no chain {name} in {}", l.name))
}

fn hcm(c: &FilterChain) -> HttpConnectionManager {
    let f = c
        .filters
        .iter()
        .find(|f| f.name == meshd_model::envoyfilter::HCM)
        .unwrap();
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!()
    };
    HttpConnectionManager::decode(any.value.as_slice()).unwrap()
}

/// The HTTP filter names of a proxy's listener chain.
fn http_filters(snap: &MeshSnapshot, proxy_name: &str, l: &str, c: &str) -> Vec<String> {
    let l = listener(snap, proxy_name, l);
    hcm(chain(&l, c))
        .http_filters
        .into_iter()
        .map(|f| f.name)
        .collect()
}

const INBOUND: &str = "virtualInbound";
const IN_8080: &str = "inbound|8080||-mtls";
const IN_8081: &str = "inbound|8081||-mtls";

#[test]
fn lua_goes_before_the_router_of_selected_workloads_only() {
    let snap = snapshot(&filter(
        SERVER_ONLY,
        "HTTP_FILTER",
        "SIDECAR_INBOUND",
        ROUTER,
        "INSERT_BEFORE",
        LUA,
    ));
    let with = http_filters(&snap, "server", INBOUND, IN_8080);
    assert_eq!(
        with[with.len() - 2..],
        ["envoy.filters.http.lua", "envoy.filters.http.router"],
        "{with:?}"
    );
    assert!(
        http_filters(&snap, "server", INBOUND, IN_8081).contains(&"envoy.filters.http.lua".into())
    );
    // Another workload of the namespace, the outbound side and the gateway are untouched.
    let other = http_filters(&snap, "other", INBOUND, IN_8080);
    assert!(
        !other.contains(&"envoy.filters.http.lua".into()),
        "{other:?}"
    );
    let out = http_filters(&snap, "server", "0.0.0.0_8080", "0.0.0.0_8080-http");
    assert!(!out.contains(&"envoy.filters.http.lua".into()), "{out:?}");
}

#[test]
fn unselected_proxies_keep_the_shared_layers_and_selected_ones_share_the_patched_one() {
    let plain = snapshot("");
    let snap = snapshot(&filter(
        SERVER_ONLY,
        "HTTP_FILTER",
        "SIDECAR_INBOUND",
        ROUTER,
        "INSERT_BEFORE",
        LUA,
    ));
    let layers = |s: &MeshSnapshot, name: &str| s.generate(&proxy(s, name))[LISTENER].clone();
    // `other`: the very layers a second generate hands out (shared), byte-identical to those
    // of a mesh without the EnvoyFilter.
    let other = layers(&snap, "other");
    assert!(other.same_as(&layers(&snap, "other")));
    let before = layers(&plain, "other");
    assert_eq!(other.len(), before.len());
    for r in other.iter() {
        assert_eq!(
            r.value(),
            before.get(&r.name).unwrap().value(),
            "{}",
            r.name
        );
    }
    // The outbound layer stays shared with `other` (no outbound patch); the inbound one is a
    // copy, shared by both selected workloads.
    let server = layers(&snap, "server");
    let server2 = layers(&snap, "server2");
    assert!(Arc::ptr_eq(&server.layers()[0], &other.layers()[0]));
    assert!(Arc::ptr_eq(&server.layers()[1], &server2.layers()[1]));
    assert!(!Arc::ptr_eq(&server.layers()[1], &other.layers()[1]));
    // A rebuild of the same config serves the same patched layer (same identity).
    let again = snap.rebuild(2, Arc::new(snap.config().clone()), snap.opts.clone());
    assert!(Arc::ptr_eq(
        &layers(&again, "server").layers()[1],
        &server.layers()[1]
    ));
}

#[test]
fn every_http_filter_operation() {
    let cors = "        filterChain: {filter: {subFilter: {name: envoy.filters.http.cors}}}";
    let fault = "        filterChain: {filter: {subFilter: {name: envoy.filters.http.fault}}}";
    let out = |op: &str, listener: &str, value: &str| {
        let snap = snapshot(&filter(
            "",
            "HTTP_FILTER",
            "SIDECAR_OUTBOUND",
            listener,
            op,
            value,
        ));
        http_filters(&snap, "other", "0.0.0.0_8080", "0.0.0.0_8080-http")
    };
    let (cors_f, fault_f, lua, router) = (
        "envoy.filters.http.cors",
        "envoy.filters.http.fault",
        "envoy.filters.http.lua",
        "envoy.filters.http.router",
    );
    assert_eq!(
        out("INSERT_FIRST", cors, LUA),
        [lua, cors_f, fault_f, router]
    );
    assert_eq!(
        out("INSERT_BEFORE", fault, LUA),
        [cors_f, lua, fault_f, router]
    );
    assert_eq!(
        out("INSERT_AFTER", cors, LUA),
        [cors_f, lua, fault_f, router]
    );
    assert_eq!(out("ADD", cors, LUA), [cors_f, fault_f, lua, router]);
    assert_eq!(out("REMOVE", fault, " {}"), [cors_f, router]);
    assert_eq!(out("REPLACE", fault, LUA), [cors_f, lua, router]);
    // A sub-filter the chain lacks: relative inserts do not apply.
    let absent = "        filterChain: {filter: {subFilter: {name: envoy.filters.http.absent}}}";
    assert_eq!(out("INSERT_BEFORE", absent, LUA), [cors_f, fault_f, router]);
    assert_eq!(out("INSERT_FIRST", absent, LUA), [cors_f, fault_f, router]);

    // MERGE: the router's config gains a field, keeps its type.
    let merge = r#"
        name: envoy.filters.http.router
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          suppress_envoy_headers: true
"#;
    let mesh_wide = filter("", "HTTP_FILTER", "ANY", ROUTER, "MERGE", merge)
        .replace("namespace: app}", "namespace: istio-system}");
    let snap = snapshot(&mesh_wide);
    for (p, l, c) in [
        ("other", "0.0.0.0_8080", "0.0.0.0_8080-http"),
        ("other", INBOUND, IN_8080),
        ("ingress", "0.0.0.0_8080", "gateway-8080-http"),
    ] {
        let l = listener(&snap, p, l);
        let h = hcm(chain(&l, c));
        let router = h.http_filters.last().unwrap();
        let json = crate::json::message_to_json(router);
        assert_eq!(
            json["typed_config"]["suppress_envoy_headers"], true,
            "{p} {json}"
        );
    }
}

#[test]
fn port_number_and_filter_chain_matches() {
    let inbound_8081 = format!("        portNumber: 8081\n{ROUTER}");
    let snap = snapshot(&filter(
        SERVER_ONLY,
        "HTTP_FILTER",
        "SIDECAR_INBOUND",
        &inbound_8081,
        "INSERT_BEFORE",
        LUA,
    ));
    let lua = "envoy.filters.http.lua".to_string();
    assert!(http_filters(&snap, "server", INBOUND, IN_8081).contains(&lua));
    assert!(!http_filters(&snap, "server", INBOUND, IN_8080).contains(&lua));
    // Outbound: the listener's port.
    let snap = snapshot(&filter(
        "",
        "HTTP_FILTER",
        "SIDECAR_OUTBOUND",
        &inbound_8081,
        "INSERT_BEFORE",
        LUA,
    ));
    assert!(http_filters(&snap, "other", "0.0.0.0_8081", "0.0.0.0_8081-http").contains(&lua));
    assert!(!http_filters(&snap, "other", "0.0.0.0_8080", "0.0.0.0_8080-http").contains(&lua));
    // filterChain.transportProtocol: only the plaintext chain.
    let raw = "        filterChain: {transportProtocol: raw_buffer, filter: {subFilter: {name: envoy.filters.http.router}}}";
    let permissive = r#"---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: p, namespace: app}
spec: {mtls: {mode: PERMISSIVE}}
"#;
    let snap = snapshot(&format!(
        "{}{permissive}",
        filter(
            SERVER_ONLY,
            "HTTP_FILTER",
            "SIDECAR_INBOUND",
            raw,
            "INSERT_BEFORE",
            LUA
        )
    ));
    assert!(http_filters(&snap, "server", INBOUND, "inbound|8080||-plaintext").contains(&lua));
    assert!(!http_filters(&snap, "server", INBOUND, IN_8080).contains(&lua));
    // GATEWAY: the gateway's HCM, not the sidecars'.
    let snap = snapshot(
        &filter("", "HTTP_FILTER", "GATEWAY", ROUTER, "INSERT_BEFORE", LUA)
            .replace("namespace: app}", "namespace: istio-system}"),
    );
    assert!(http_filters(&snap, "ingress", "0.0.0.0_8080", "gateway-8080-http").contains(&lua));
    assert!(!http_filters(&snap, "other", INBOUND, IN_8080).contains(&lua));
}

#[test]
fn network_filters_and_hcm_merge() {
    let hcm_match =
        "        filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}";
    let merge = r#"
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          server_name: meshd-patched
"#;
    let snap = snapshot(&filter(
        SERVER_ONLY,
        "NETWORK_FILTER",
        "SIDECAR_INBOUND",
        hcm_match,
        "MERGE",
        merge,
    ));
    let l = listener(&snap, "server", INBOUND);
    let h = hcm(chain(&l, IN_8080));
    assert_eq!(h.server_name, "meshd-patched");
    // The rest of the HCM is as generated.
    assert_eq!(
        h.http_filters.last().unwrap().name,
        "envoy.filters.http.router"
    );
    assert_eq!(h.stat_prefix, "inbound_0.0.0.0_8080");
    let l = listener(&snap, "other", INBOUND);
    assert_eq!(hcm(chain(&l, IN_8080)).server_name, "");

    // INSERT_BEFORE the TCP proxy of the inbound TCP chain; REMOVE takes it out again.
    let tcp = "        filterChain: {filter: {name: envoy.filters.network.tcp_proxy}}";
    let conn_limit = r#"
        name: envoy.filters.network.connection_limit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit
          stat_prefix: limit
          max_connections: 10
"#;
    let snap = snapshot(&filter(
        SERVER_ONLY,
        "NETWORK_FILTER",
        "SIDECAR_INBOUND",
        tcp,
        "INSERT_BEFORE",
        conn_limit,
    ));
    let l = listener(&snap, "server", INBOUND);
    let names: Vec<_> = chain(&l, "inbound|9000||-mtls")
        .filters
        .iter()
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(
        names[names.len() - 2..],
        [
            "envoy.filters.network.connection_limit",
            "envoy.filters.network.tcp_proxy"
        ],
        "{names:?}"
    );
    let http: Vec<_> = chain(&l, IN_8080)
        .filters
        .iter()
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(http, ["envoy.filters.network.http_connection_manager"]);
    // ADD keeps the terminal filter last.
    let snap = snapshot(&filter(
        SERVER_ONLY,
        "NETWORK_FILTER",
        "SIDECAR_INBOUND",
        hcm_match,
        "ADD",
        conn_limit,
    ));
    let l = listener(&snap, "server", INBOUND);
    let names: Vec<_> = chain(&l, IN_8080)
        .filters
        .iter()
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.network.connection_limit",
            "envoy.filters.network.http_connection_manager"
        ]
    );
}

#[test]
fn unknown_types_and_missing_config_are_rejected_naming_the_field() {
    let bogus = r#"
        name: x
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope
"#;
    let untyped = "\n        name: envoy.filters.http.lua\n";
    for (value, want) in [
        (
            bogus,
            "spec.configPatches[0].patch.value.typed_config.@type: unknown type `type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope`",
        ),
        (
            untyped,
            "spec.configPatches[0].patch.value.typed_config (or, served over ECDS, .config_discovery) is required",
        ),
    ] {
        let snap = snapshot_with_problems(&filter(
            "",
            "HTTP_FILTER",
            "ANY",
            ROUTER,
            "INSERT_BEFORE",
            value,
        ));
        assert_eq!(snap.patches.problems.len(), 1);
        let p = &snap.patches.problems[0];
        assert!(p.reason.contains(want), "{want} in {p}");
        assert!(!snap.patches.has_patches());
    }
}

/// An EnvoyFilter added or removed by a config edit reaches proxies on the rebuild, although
/// their inbound side stands as built (EnvoyFilters do not shape it; they patch it).
#[test]
fn an_envoyfilter_edit_reaches_proxies_on_rebuild() {
    let plain = snapshot("");
    let lua = "envoy.filters.http.lua".to_string();
    assert!(!http_filters(&plain, "server", INBOUND, IN_8080).contains(&lua));
    let with = snapshot(&filter(
        SERVER_ONLY,
        "HTTP_FILTER",
        "SIDECAR_INBOUND",
        ROUTER,
        "INSERT_BEFORE",
        LUA,
    ));
    let added = plain.rebuild(2, Arc::new(with.config().clone()), plain.opts.clone());
    assert!(http_filters(&added, "server", INBOUND, IN_8080).contains(&lua));
    let removed = added.rebuild(3, Arc::new(plain.config().clone()), plain.opts.clone());
    assert!(!http_filters(&removed, "server", INBOUND, IN_8080).contains(&lua));
}

#[test]
fn filter_class_places_an_added_filter_among_the_generated_ones() {
    use super::filters::class_position;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
    use meshd_model::envoyfilter::FilterClass::*;
    let list = |names: &[&str]| -> Vec<HttpFilter> {
        names
            .iter()
            .map(|n| HttpFilter {
                name: n.to_string(),
                ..Default::default()
            })
            .collect()
    };
    let full = list(&[
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.rbac",
        "envoy.filters.http.rbac",
        "envoy.filters.http.fault",
        "envoy.filters.http.cors",
        "envoy.filters.http.router",
    ]);
    assert_eq!(class_position(&full, Authn), 1);
    assert_eq!(class_position(&full, Authz), 3);
    assert_eq!(class_position(&full, Stats), 5);
    let plain = list(&[
        "envoy.filters.http.fault",
        "envoy.filters.http.cors",
        "envoy.filters.http.router",
    ]);
    assert_eq!(class_position(&plain, Authn), 0);
    assert_eq!(class_position(&plain, Authz), 0);
    assert_eq!(class_position(&plain, Stats), 2);
    let authn_only = list(&["envoy.filters.http.jwt_authn", "envoy.filters.http.router"]);
    assert_eq!(class_position(&authn_only, Authz), 1);
}

#[test]
fn an_add_with_a_filter_class_lands_where_the_class_says() {
    let lua = r#"
        name: envoy.filters.http.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          default_source_code: {inline_string: "function envoy_on_request(h) end"}
      filterClass: STATS"#;
    let text = filter(
        SERVER_ONLY,
        "HTTP_FILTER",
        "SIDECAR_INBOUND",
        ROUTER,
        "ADD",
        lua,
    );
    let snap = snapshot(&text);
    let names = http_filters(&snap, "server", INBOUND, IN_8080);
    let at = names
        .iter()
        .position(|n| n == "envoy.filters.http.lua")
        .expect("added");
    assert_eq!(names[at + 1], "envoy.filters.http.router", "{names:?}");
}
