//! The Telemetry API in the generated listeners, per scope: mesh-wide, namespace, workload and
//! side (CLIENT = outbound listeners, SERVER = inbound).

use super::*;
use crate::generate::telemetry::tests::{MESH, hcms, listener, listeners_of, logger, tcp_proxies};
use serde_json::Value;

const STDOUT: &str = "envoy.access_loggers.stdout";
const HTTP_GRPC: &str = "envoy.access_loggers.http_grpc";

fn traced() -> GenOptions {
    GenOptions {
        zipkin_cluster: Some("127.0.0.1:9411".into()),
        ..GenOptions::default()
    }
}

/// The HCMs of `workload`'s inbound (when it serves HTTP) and outbound (port 8080) listeners
/// under `telemetry`.
fn sides(telemetry: &str, workload: &str) -> (Option<Value>, Value) {
    let all = listeners_of(&format!("{MESH}---\n{telemetry}"), traced(), workload);
    let inbound = hcms(listener(&all, "virtualInbound"))
        .first()
        .map(|(_, h)| (*h).clone());
    let outbound = hcms(listener(&all, "0.0.0.0_8080"))[0].1.clone();
    (inbound, outbound)
}

/// A whole access-log entry of an HCM (its filter beside its typed config).
fn access_log<'a>(hcm: &'a Value, name: &str) -> Option<&'a Value> {
    hcm["access_log"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)
}

fn sampling(hcm: &Value) -> f64 {
    let percent = &hcm["tracing"]["random_sampling"];
    assert!(percent.is_object(), "no sampling in {hcm:#}");
    // JSON leaves a zero out.
    percent["value"].as_f64().unwrap_or(0.0)
}

fn telemetry(namespace: &str, spec: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t-{namespace}, namespace: {namespace}}}\nspec:\n{spec}"
    )
}

#[test]
fn without_telemetry_the_mesh_default_traces_everything_and_logs_every_request() {
    let (inbound, outbound) = sides("", "api");
    for hcm in [&inbound.unwrap(), &outbound] {
        assert_eq!(sampling(hcm), 100.0);
        assert_eq!(hcm["tracing"]["provider"]["name"], "envoy.tracers.zipkin");
        let log = logger(hcm, STDOUT).expect("the JSON access log");
        assert!(log.get("filter").is_none());
        assert!(logger(hcm, HTTP_GRPC).is_some());
    }
}

#[test]
fn mesh_wide_sampling_and_custom_tags_reach_every_listener() {
    let t = telemetry(
        "istio-system",
        "  tracing:\n  - randomSamplingPercentage: 2.5\n    customTags:\n      team: {literal: {value: voice}}\n      node: {environment: {name: NODE, defaultValue: none}}\n      user: {header: {name: x-user}}\n",
    );
    for workload in ["api", "web"] {
        let (inbound, outbound) = sides(&t, workload);
        for hcm in inbound.iter().chain([&outbound]) {
            assert_eq!(sampling(hcm), 2.5);
            let tags = hcm["tracing"]["custom_tags"].as_array().expect("tags");
            let tag = |name: &str| tags.iter().find(|t| t["tag"] == name).cloned();
            assert_eq!(tag("team").unwrap()["literal"]["value"], "voice");
            assert_eq!(tag("node").unwrap()["environment"]["name"], "NODE");
            assert_eq!(tag("node").unwrap()["environment"]["default_value"], "none");
            assert_eq!(tag("user").unwrap()["request_header"]["name"], "x-user");
        }
    }
}

#[test]
fn namespace_and_workload_scopes_override_the_mesh_per_field() {
    let t = [
        telemetry("istio-system", "  tracing: [{randomSamplingPercentage: 50}]\n"),
        telemetry("shop", "  tracing: [{randomSamplingPercentage: 0}]\n"),
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: api, namespace: shop}\nspec:\n  selector: {matchLabels: {app: api}}\n  tracing: [{disableSpanReporting: true}]\n".to_string(),
    ]
    .join("---\n");
    let (_, outbound) = sides(&t, "web");
    assert_eq!(sampling(&outbound), 0.0, "the namespace's");
    assert!(outbound["tracing"].get("provider").is_some());
    let (inbound, outbound) = sides(&t, "api");
    for hcm in [&inbound.unwrap(), &outbound] {
        assert_eq!(sampling(hcm), 0.0, "inherited from the namespace");
        assert!(
            hcm["tracing"].get("provider").is_none(),
            "span reporting off: no tracer: {hcm:#}"
        );
    }
}

#[test]
fn access_log_filter_and_disabling_by_side() {
    let t = telemetry(
        "shop",
        "  selector: {matchLabels: {app: api}}\n  accessLogging:\n  - match: {mode: SERVER}\n    filter: {expression: 'response.code >= 400'}\n  - match: {mode: CLIENT}\n    disabled: true\n",
    );
    let (inbound, outbound) = sides(&t, "api");
    let inbound = inbound.expect("api serves 8080");
    let log = access_log(&inbound, STDOUT).expect("the server side still logs");
    let filter = &log["filter"]["extension_filter"];
    assert_eq!(filter["name"], CEL_FILTER);
    assert_eq!(filter["typed_config"]["expression"], "response.code >= 400");
    assert!(logger(&outbound, STDOUT).is_none(), "client side off");
    assert!(
        logger(&outbound, HTTP_GRPC).is_some(),
        "metrics keep their stream"
    );
    let (_, outbound) = sides(&t, "web");
    assert!(
        access_log(&outbound, STDOUT)
            .unwrap()
            .get("filter")
            .is_none(),
        "not selected"
    );
}

#[test]
fn all_metrics_disabled_stops_the_grpc_stream_of_that_side_only() {
    let t = telemetry(
        "shop",
        "  metrics:\n  - overrides:\n    - match: {metric: ALL_METRICS, mode: SERVER}\n      disabled: true\n",
    );
    let all = listeners_of(&format!("{MESH}---\n{t}"), traced(), "api");
    let inbound = listener(&all, "virtualInbound");
    for (_, hcm) in hcms(inbound) {
        assert!(logger(hcm, HTTP_GRPC).is_none(), "{hcm:#}");
        assert!(logger(hcm, STDOUT).is_some());
    }
    for (_, tcp) in tcp_proxies(inbound) {
        assert!(logger(tcp, "envoy.access_loggers.tcp_grpc").is_none());
    }
    let outbound = hcms(listener(&all, "0.0.0.0_8080"))[0].1;
    assert!(logger(outbound, HTTP_GRPC).is_some());
}

/// Envoy logs only the headers it is told to: a tag upserted from a header makes that side's
/// gRPC access log carry it, and leaves the other side's shared config alone.
#[test]
fn headers_read_by_upserted_tags_are_logged_on_that_side() {
    let t = telemetry(
        "shop",
        "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT, mode: SERVER}\n      tagOverrides:\n        user: {value: \"request.headers['X-User']\"}\n        cache: {value: \"response.headers['x-cache']\"}\n        request_host: {value: request.host}\n",
    );
    let (inbound, outbound) = sides(&t, "api");
    let inbound = inbound.expect("api serves HTTP");
    let grpc = logger(&inbound, HTTP_GRPC).unwrap();
    assert_eq!(
        grpc["additional_request_headers_to_log"],
        serde_json::json!(["content-type", "x-user"])
    );
    assert_eq!(
        grpc["additional_response_headers_to_log"],
        serde_json::json!(["grpc-status", "x-cache"])
    );
    let grpc = logger(&outbound, HTTP_GRPC).unwrap();
    assert_eq!(
        grpc["additional_request_headers_to_log"],
        serde_json::json!(["content-type"]),
        "CLIENT side untouched"
    );
}

/// `reportingInterval` sets how often an open TCP connection is reported, on the side the
/// Telemetry selects.
#[test]
fn reporting_interval_sets_the_tcp_flush_interval() {
    let t = telemetry("shop", "  metrics: [{reportingInterval: 2s}]\n");
    let all = listeners_of(&format!("{MESH}---\n{t}"), traced(), "api");
    let inbound = tcp_proxies(listener(&all, "virtualInbound"));
    assert!(!inbound.is_empty());
    for (chain, tcp) in inbound {
        assert_eq!(
            tcp["access_log_options"]["access_log_flush_interval"], "2s",
            "{chain}"
        );
    }
}

#[test]
fn without_a_collector_there_is_no_tracing_whatever_telemetry_says() {
    let t = telemetry("shop", "  tracing: [{randomSamplingPercentage: 5}]\n");
    let all = listeners_of(&format!("{MESH}---\n{t}"), GenOptions::default(), "api");
    let hcm = hcms(listener(&all, "virtualInbound"))[0].1;
    assert!(hcm.get("tracing").is_none());
}

/// `--otel-address`: every proxy has an `opentelemetry` cluster (OTLP gRPC over HTTP/2); with
/// no Zipkin collector it is the default tracer, and beside one a Telemetry picks it by name.
#[test]
fn opentelemetry_is_the_tracer_a_telemetry_or_the_mesh_default_picks() {
    let hcm_provider = |opts: GenOptions, telemetry: &str| {
        let all = listeners_of(&format!("{MESH}---\n{telemetry}"), opts, "api");
        let outbound = hcms(listener(&all, "0.0.0.0_8080"))[0].1.clone();
        outbound["tracing"]["provider"].clone()
    };
    let otel_only = GenOptions {
        otel_collector: Some("10.0.0.9:4317".into()),
        ..GenOptions::default()
    };
    let p = hcm_provider(otel_only.clone(), "");
    assert_eq!(p["name"], "envoy.tracers.opentelemetry", "{p}");
    let config = &p["typed_config"];
    assert_eq!(
        config["grpc_service"]["envoy_grpc"]["cluster_name"], "opentelemetry",
        "{config}"
    );
    assert_eq!(
        config["resource_detectors"][0]["name"],
        "envoy.tracers.opentelemetry.resource_detectors.environment"
    );
    let both = GenOptions {
        zipkin_cluster: Some("127.0.0.1:9411".into()),
        ..otel_only
    };
    assert_eq!(
        hcm_provider(both.clone(), "")["name"],
        "envoy.tracers.zipkin"
    );
    let picks_otel = telemetry(
        "istio-system",
        "  tracing:\n  - providers: [{name: opentelemetry}]\n",
    );
    assert_eq!(
        hcm_provider(both, &picks_otel)["name"],
        "envoy.tracers.opentelemetry"
    );
    // A provider whose collector is not configured reports nothing (the request is still
    // sampled, its context propagated).
    assert!(hcm_provider(traced(), &picks_otel).is_null());
    // The cluster: HTTP/2 to the collector, in every proxy's CDS.
    let c = crate::generate::cluster::opentelemetry("otel-collector.observability:4317");
    assert_eq!(c.name, "opentelemetry");
    assert!(
        c.typed_extension_protocol_options
            .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    );
}

fn otel() -> GenOptions {
    GenOptions {
        otel_collector: Some("10.0.0.9:4317".into()),
        ..GenOptions::default()
    }
}

/// Provider `opentelemetry`: Envoy's OTLP access logger on the `opentelemetry` cluster, with
/// Istio's default text line as each record's body and the proxy's service as its resource.
#[test]
fn the_opentelemetry_access_log_goes_to_the_collector_cluster_filtered_as_asked() {
    let t = telemetry(
        "shop",
        "  selector: {matchLabels: {app: api}}\n  accessLogging:\n  - providers: [{name: opentelemetry}]\n    filter: {expression: 'response.code >= 500'}\n",
    );
    let all = listeners_of(&format!("{MESH}---\n{t}"), otel(), "api");
    let inbound = listener(&all, "virtualInbound");
    let outbound = listener(&all, "0.0.0.0_8080");
    for hcm in hcms(inbound).into_iter().chain(hcms(outbound)).map(|h| h.1) {
        let log = access_log(hcm, OTEL_LOGGER).expect("the OTLP access log");
        let config = &log["typed_config"];
        assert_eq!(
            config["grpc_service"]["envoy_grpc"]["cluster_name"], "opentelemetry",
            "{config:#}"
        );
        assert_eq!(config["log_name"], OTEL_LOG_NAME);
        assert_eq!(
            config["body"]["string_value"],
            crate::generate::listener::ISTIO_TEXT_FORMAT
        );
        assert_eq!(config["disable_builtin_labels"], true);
        assert_eq!(
            config["resource_detectors"][0]["name"],
            "envoy.tracers.opentelemetry.resource_detectors.environment"
        );
        let filter = &log["filter"]["extension_filter"];
        assert_eq!(filter["name"], CEL_FILTER);
        assert_eq!(filter["typed_config"]["expression"], "response.code >= 500");
        assert!(
            logger(hcm, STDOUT).is_none(),
            "naming only opentelemetry replaces the stdout log"
        );
        assert!(
            logger(hcm, HTTP_GRPC).is_some(),
            "metrics keep their stream"
        );
    }
    // TCP proxies log their connections there too.
    let tcp = tcp_proxies(inbound);
    assert!(!tcp.is_empty(), "api serves TCP on 9000");
    for (_, tcp) in tcp {
        let log = access_log(tcp, OTEL_LOGGER).expect("the OTLP access log on TCP");
        // One record per connection, though the gRPC stream also flushes periodically.
        let both = &log["filter"]["and_filter"]["filters"];
        assert_eq!(
            both[0]["log_type_filter"]["types"],
            serde_json::json!(["TcpConnectionEnd"])
        );
        assert_eq!(both[1]["extension_filter"]["name"], CEL_FILTER);
    }
    // Not selected: the stdout log only.
    let all = listeners_of(&format!("{MESH}---\n{t}"), otel(), "web");
    let hcm = hcms(listener(&all, "0.0.0.0_8080"))[0].1;
    assert!(logger(hcm, OTEL_LOGGER).is_none());
    assert!(logger(hcm, STDOUT).is_some());
}

#[test]
fn both_providers_log_twice_and_disabled_stops_both() {
    let both = telemetry(
        "shop",
        "  accessLogging:\n  - providers: [{name: envoy}, {name: opentelemetry}]\n",
    );
    let off = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: api, namespace: shop}\nspec:\n  selector: {matchLabels: {app: api}}\n  accessLogging:\n  - disabled: true\n";
    let yaml = format!("{MESH}---\n{both}---\n{off}");
    let hcm = |workload: &str| {
        let all = listeners_of(&yaml, otel(), workload);
        hcms(listener(&all, "0.0.0.0_8080"))[0].1.clone()
    };
    let web = hcm("web");
    assert!(logger(&web, STDOUT).is_some() && logger(&web, OTEL_LOGGER).is_some());
    assert!(
        access_log(&web, OTEL_LOGGER)
            .unwrap()
            .get("filter")
            .is_none()
    );
    let api = hcm("api");
    assert!(logger(&api, STDOUT).is_none() && logger(&api, OTEL_LOGGER).is_none());
}

/// Without `--otel-address` there is nowhere to send the records: the Telemetry is refused by
/// its field, and none of it applies (the stdout log stays as it was).
#[test]
fn the_opentelemetry_access_log_without_a_collector_is_refused_by_its_field() {
    let t = telemetry(
        "shop",
        "  tracing: [{randomSamplingPercentage: 5}]\n  accessLogging:\n  - providers: [{name: envoy}]\n  - providers: [{name: opentelemetry}]\n",
    );
    let file = meshd_model::parse_file("t.yaml", &format!("{MESH}---\n{t}")).unwrap();
    let config = Arc::new(meshd_model::MeshConfig::assemble([&file]));
    let snap = crate::generate::MeshSnapshot::build(1, config.clone(), Arc::new(traced()));
    let problems: Vec<String> = snap.problems().map(|r| r.to_string()).collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("Telemetry shop/t-shop")
            && problems[0].contains(
                "spec.accessLogging[1].providers[0].name: provider `opentelemetry` needs an OpenTelemetry collector"
            ),
        "{problems:?}"
    );
    let labels = [("app".to_string(), "api".to_string())].into();
    assert_eq!(
        snap.telemetry_for("shop", &labels),
        Default::default(),
        "refused whole"
    );
    // With the collector, it is served.
    let snap = crate::generate::MeshSnapshot::build(1, config, Arc::new(otel()));
    assert_eq!(snap.problems().count(), 0);
    let policy = snap.telemetry_for("shop", &labels);
    assert!(policy.server.otel_access_log && policy.server.access_log);
}

/// `useRequestIdForTraceSampling: false`: Envoy's UUID request id no longer carries the
/// sampling decision, on the side the Telemetry covers; by default Envoy's own (true) holds.
#[test]
fn use_request_id_for_trace_sampling_reaches_the_uuid_extension() {
    let (inbound, outbound) = sides("", "api");
    assert!(
        outbound.get("request_id_extension").is_none(),
        "{outbound:#}"
    );
    assert!(inbound.unwrap().get("request_id_extension").is_none());
    let t = telemetry(
        "shop",
        "  tracing:\n  - match: {mode: CLIENT}\n    useRequestIdForTraceSampling: false\n",
    );
    let (inbound, outbound) = sides(&t, "api");
    let uuid = &outbound["request_id_extension"]["typed_config"];
    assert_eq!(
        uuid["use_request_id_for_trace_sampling"], false,
        "{outbound:#}"
    );
    assert_eq!(uuid["pack_trace_reason"], true);
    assert!(
        inbound.unwrap().get("request_id_extension").is_none(),
        "the server side keeps the default"
    );
}

/// Spans carry Istio's tags by default (from the environment the injector gives the proxy, the
/// mesh id from the trust domain); `enableIstioTags: false` leaves only the Telemetry's own.
#[test]
fn istio_tags_by_default_and_off_when_a_telemetry_says() {
    let tags = |hcm: &Value| -> Vec<(String, Value)> {
        hcm["tracing"]["custom_tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| {
                        let kind = t
                            .as_object()
                            .unwrap()
                            .iter()
                            .find(|(k, _)| *k != "tag")
                            .map(|(_, v)| v.clone())
                            .unwrap();
                        (t["tag"].as_str().unwrap().to_string(), kind)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (inbound, outbound) = sides("", "api");
    for hcm in [&inbound.unwrap(), &outbound] {
        let t = tags(hcm);
        let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "istio.canonical_revision",
                "istio.canonical_service",
                "istio.mesh_id",
                "istio.namespace"
            ],
            "{hcm:#}"
        );
        assert_eq!(t[1].1["name"], "CANONICAL_SERVICE");
        assert_eq!(t[2].1["value"], "cluster.local");
        assert_eq!(t[3].1["name"], "POD_NAMESPACE");
    }
    let t = telemetry(
        "shop",
        "  tracing:\n  - enableIstioTags: false\n    customTags:\n      team: {literal: {value: voice}}\n",
    );
    let (inbound, outbound) = sides(&t, "api");
    for hcm in [&inbound.unwrap(), &outbound] {
        let names: Vec<String> = tags(hcm).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["team"], "{hcm:#}");
    }
}
