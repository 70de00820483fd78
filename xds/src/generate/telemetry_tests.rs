//! Unit tests of the access-log (telemetry) config generated for each proxy.

use super::*;
use crate::generate::MeshSnapshot;
use crate::json::any_to_json;
use crate::proxy::Proxy;
use crate::resource::LISTENER;
use meshd_model::{MeshConfig, parse_file};
use serde_json::Value;
use std::sync::Arc;

/// `api` serves HTTP on 8080 and TCP on 9000; `web` calls both.
pub(crate) const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.shop.svc.cluster.local]
  addresses: [10.96.0.20]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.shop.svc.cluster.local]
  addresses: [10.96.0.30]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api, namespace: shop}
spec: {address: 10.44.0.20, labels: {app: api}, serviceAccount: api}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 10.44.0.10, labels: {app: web}, serviceAccount: web}
"#;

fn listeners(opts: GenOptions, workload: &str) -> Vec<Value> {
    listeners_of(MESH, opts, workload)
}

pub(crate) fn listeners_of(yaml: &str, opts: GenOptions, workload: &str) -> Vec<Value> {
    let file = parse_file("mesh.yaml", yaml).unwrap();
    assert!(file.rejected.is_empty(), "{:?}", file.rejected);
    let config = MeshConfig::assemble([&file]);
    let w = config
        .workloads
        .iter()
        .find(|w| w.name == workload)
        .unwrap()
        .clone();
    let snap = MeshSnapshot::build(1, Arc::new(config), Arc::new(opts));
    let out = snap.generate(&Proxy::for_workload(&w, "cluster.local"));
    out[LISTENER]
        .iter()
        .map(|r| any_to_json(&r.any()))
        .collect()
}

pub(crate) fn listener<'a>(all: &'a [Value], name: &str) -> &'a Value {
    all.iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no listener {name} in {all:#?}"))
}

/// Every filter of `kind` in a listener (its chains and its default chain), by chain name.
fn filters<'a>(l: &'a Value, kind: &str) -> Vec<(String, &'a Value)> {
    let chains = l["filter_chains"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(l.get("default_filter_chain"));
    chains
        .flat_map(|c| {
            c["filters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| f["name"] == kind)
                .map(|f| {
                    (
                        c["name"].as_str().unwrap_or("").to_string(),
                        &f["typed_config"],
                    )
                })
        })
        .collect()
}

pub(crate) fn hcms(l: &Value) -> Vec<(String, &Value)> {
    filters(l, "envoy.filters.network.http_connection_manager")
}

pub(crate) fn tcp_proxies(l: &Value) -> Vec<(String, &Value)> {
    filters(l, "envoy.filters.network.tcp_proxy")
}

pub(crate) fn logger<'a>(config: &'a Value, name: &str) -> Option<&'a Value> {
    config["access_log"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)
        .map(|a| &a["typed_config"])
}

fn assert_streams_to_meshd(common: &Value, log_name: &str) {
    assert_eq!(common["log_name"], log_name, "{common:#}");
    assert_eq!(
        common["grpc_service"]["envoy_grpc"]["cluster_name"],
        "xds-grpc"
    );
    assert_eq!(common["transport_api_version"], "V3");
    assert_eq!(common["buffer_flush_interval"], "1s");
    assert_eq!(common["buffer_size_bytes"], 16384);
    let retry = &common["grpc_stream_retry_policy"];
    assert_eq!(retry["num_retries"], 3);
    assert_eq!(
        retry["retry_on"],
        "connect-failure,refused-stream,unavailable"
    );
    assert_eq!(retry["retry_back_off"]["base_interval"], "0.500s");
}

#[test]
fn http_connection_managers_stream_their_access_log_to_meshd_beside_the_stdout_log() {
    let all = listeners(GenOptions::default(), "api");
    let inbound = hcms(listener(&all, "virtualInbound"));
    assert!(!inbound.is_empty(), "the inbound HTTP port");
    for (chain, hcm) in inbound {
        let names: Vec<&Value> = hcm["access_log"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| &a["name"])
            .collect();
        assert_eq!(
            names,
            [
                "envoy.access_loggers.stdout",
                "envoy.access_loggers.http_grpc"
            ],
            "{chain}"
        );
        let grpc = logger(hcm, "envoy.access_loggers.http_grpc").unwrap();
        assert_streams_to_meshd(&grpc["common_config"], INBOUND_LOG);
        assert_eq!(
            grpc["additional_response_trailers_to_log"],
            serde_json::json!(["grpc-status"])
        );
    }
    let all = listeners(GenOptions::default(), "web");
    let outbound = hcms(listener(&all, "0.0.0.0_8080"));
    assert_eq!(outbound.len(), 1);
    let grpc = logger(outbound[0].1, "envoy.access_loggers.http_grpc").unwrap();
    assert_streams_to_meshd(&grpc["common_config"], OUTBOUND_LOG);
}

#[test]
fn mesh_tcp_proxies_stream_their_access_log_to_meshd() {
    let all = listeners(GenOptions::default(), "api");
    let inbound: Vec<_> = tcp_proxies(listener(&all, "virtualInbound"))
        .into_iter()
        .filter(|(chain, _)| chain.starts_with("inbound|9000|"))
        .collect();
    assert!(!inbound.is_empty(), "the inbound TCP port");
    for (chain, proxy) in inbound {
        let log = logger(proxy, "envoy.access_loggers.tcp_grpc")
            .unwrap_or_else(|| panic!("{chain}: {proxy:#}"));
        assert_streams_to_meshd(&log["common_config"], INBOUND_LOG);
        // Istio's periodic TCP metrics: reported every 15 s while open; on the server side
        // not at connect, before the client's certificate is known.
        assert_eq!(
            proxy["access_log_options"],
            serde_json::json!({"access_log_flush_interval": "15s"}),
            "{chain}"
        );
    }
    let all = listeners(GenOptions::default(), "web");
    let db = tcp_proxies(listener(&all, "0.0.0.0_9000"));
    let (_, proxy) = db
        .iter()
        .find(|(_, p)| p["cluster"] == "outbound|9000||db.shop.svc.cluster.local")
        .expect("db's chain");
    let log = logger(proxy, "envoy.access_loggers.tcp_grpc").unwrap();
    assert_streams_to_meshd(&log["common_config"], OUTBOUND_LOG);
    assert_eq!(
        proxy["access_log_options"],
        serde_json::json!({"access_log_flush_interval": "15s", "flush_access_log_on_connected": true}),
    );
}

#[test]
fn each_log_follows_its_own_switch() {
    let only_stdout = GenOptions {
        request_telemetry: false,
        ..GenOptions::default()
    };
    let all = listeners(only_stdout, "api");
    let l = listener(&all, "virtualInbound");
    for (_, hcm) in hcms(l) {
        assert!(logger(hcm, "envoy.access_loggers.http_grpc").is_none());
        assert!(logger(hcm, "envoy.access_loggers.stdout").is_some());
    }
    for (_, proxy) in tcp_proxies(l) {
        assert!(proxy.get("access_log").is_none(), "{proxy:#}");
    }
    let only_grpc = GenOptions {
        access_log: false,
        ..GenOptions::default()
    };
    let all = listeners(only_grpc, "api");
    for (_, hcm) in hcms(listener(&all, "virtualInbound")) {
        assert!(logger(hcm, "envoy.access_loggers.stdout").is_none());
        assert!(logger(hcm, "envoy.access_loggers.http_grpc").is_some());
    }
}

#[test]
fn filters_other_than_a_tcp_proxy_pass_through_unchanged() {
    let f = Filter {
        name: "envoy.filters.network.rbac".into(),
        config_type: Some(filter::ConfigType::TypedConfig(
            envoy_types::pb::google::protobuf::Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
                    .into(),
                value: vec![1, 2, 3],
            },
        )),
    };
    assert_eq!(
        with_tcp_log(f.clone(), Side::Inbound, &GenOptions::default()),
        f
    );
    // A TCP proxy whose bytes do not decode is left as it is, not dropped.
    let broken = Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(
            envoy_types::pb::google::protobuf::Any {
                type_url: TcpProxy::type_url(),
                value: vec![0xff, 0xff, 0xff],
            },
        )),
    };
    assert_eq!(
        with_tcp_log(broken.clone(), Side::Inbound, &GenOptions::default()),
        broken
    );
}

#[test]
fn gateway_tcp_proxies_report_as_the_source() {
    let yaml = format!(
        r#"{MESH}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ingress, namespace: istio-system}}
spec: {{address: 10.44.0.2, labels: {{istio: ingressgateway}}, serviceAccount: ingress}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: 9000, name: tcp, protocol: TCP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp: [{{route: [{{destination: {{host: db.shop.svc.cluster.local, port: {{number: 9000}}}}}}]}}]
"#
    );
    let all = listeners_of(&yaml, GenOptions::default(), "ingress");
    let proxies: Vec<_> = all.iter().flat_map(tcp_proxies).collect();
    assert!(!proxies.is_empty(), "the gateway's TCP chain: {all:#?}");
    for (chain, proxy) in proxies {
        let log = logger(proxy, "envoy.access_loggers.tcp_grpc")
            .unwrap_or_else(|| panic!("{chain}: {proxy:#}"));
        assert_streams_to_meshd(&log["common_config"], OUTBOUND_LOG);
    }
}

#[test]
fn the_stdout_log_is_json_unless_text_encoding_is_asked_for() {
    let format = |opts: GenOptions| {
        let all = listeners(opts, "api");
        let (_, hcm) = hcms(listener(&all, "virtualInbound"))
            .into_iter()
            .next()
            .unwrap();
        logger(hcm, "envoy.access_loggers.stdout").unwrap()["log_format"].clone()
    };
    let json = format(GenOptions::default());
    assert_eq!(
        json["json_format"]["response_code"], "%RESPONSE_CODE%",
        "{json}"
    );
    let text = format(GenOptions {
        access_log_encoding: crate::generate::AccessLogEncoding::Text,
        ..GenOptions::default()
    });
    assert!(text.get("json_format").is_none(), "{text}");
    let line = text["text_format_source"]["inline_string"]
        .as_str()
        .unwrap();
    assert_eq!(line, crate::generate::listener::ISTIO_TEXT_FORMAT);
    assert!(
        line.starts_with("[%START_TIME%] \"%REQ(:METHOD)% ") && line.ends_with("%ROUTE_NAME%\n")
    );
}
