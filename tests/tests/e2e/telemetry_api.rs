//! The Telemetry API end to end with stock Envoy: a namespace's Telemetry sets the tracing
//! sampling of its sidecars (0 %: no request sampled, no span; changed to 100 % live: sampled
//! and reported), and a workload's access-log filter `response.code >= 400` leaves only the
//! failed request in that sidecar's stdout log while its neighbour logs everything.
//!
//! With `--otel-address`, the OpenTelemetry collector (a fake one speaking OTLP/gRPC) receives
//! the sidecars' spans, and the access-log records a Telemetry asks provider `opentelemetry` for.
//!
//! Every wait is on an event (a log line, an Envoy counter); nothing is timed.

use crate::traffic_support;

use std::time::Duration;

use meshd_e2e::*;
use traffic_support::*;

const PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(30);

fn sampling(percent: u32) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: sampling, namespace: {NS}}}\nspec:\n  tracing:\n  - randomSamplingPercentage: {percent}\n"
    )
}

fn api_logs() -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: api-logs, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{app: api}}}}\n  accessLogging:\n  - filter: {{expression: 'response.code >= 400'}}\n"
    )
}

/// The JSON access-log lines of `pod` for `path`, by response code.
fn logged(mesh: &Mesh, pod: &str, path: &str) -> Vec<u64> {
    mesh.envoy_log(pod)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["path"] == path)
        .filter_map(|v| v["response_code"].as_u64())
        .collect()
}

#[test]
fn telemetry_sets_sampling_and_filters_access_logs() {
    let api = fqdn("api");
    let yaml = client_and_api(PORT);
    // A collector address nobody listens on: span reports are counted by Envoy either way.
    let collector = format!("{}:9411", ip(1));
    let mesh = mesh_with(
        MeshOptions::named("telemetry-api")
            .config("mesh.yaml", &yaml)
            .config("sampling.yaml", &sampling(0))
            .config("api-logs.yaml", &api_logs())
            .serve_arg("--zipkin-address")
            .serve_arg(&collector),
        &[(api.clone(), vip(20))],
    );
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    let api_pod = mesh
        .add_sidecar_pod(&format!("api.{NS}"), ip(20), PORT)
        .unwrap();
    assert!(
        wait_until(WAIT, || get(
            &client,
            &format!("http://{api}:{PORT}/warmup")
        )
        .status
            == 200),
        "the client reaches api through its sidecar"
    );

    // Three good requests, then one failing: only the failure is in api's log.
    for _ in 0..3 {
        let a = get(&client, &format!("http://{api}:{PORT}/t?status=200"));
        assert_eq!(a.status, 200, "{a:?}");
    }
    let a = get(&client, &format!("http://{api}:{PORT}/t?status=503"));
    assert_eq!(a.status, 503, "{a:?}");
    assert!(
        wait_until(WAIT, || logged(&mesh, "api", "/t?status=503") == [503]),
        "api's log:\n{}",
        mesh.envoy_log("api")
    );
    assert_eq!(
        logged(&mesh, "api", "/t?status=200"),
        Vec::<u64>::new(),
        "the filter drops the successes: {}",
        mesh.envoy_log("api")
    );
    // The client is not selected: it logs every request (the failure last).
    assert!(
        wait_until(WAIT, || logged(&mesh, "client", "/t?status=503") == [503]),
        "client's log:\n{}",
        mesh.envoy_log("client")
    );
    assert_eq!(logged(&mesh, "client", "/t?status=200"), [200, 200, 200]);

    // 0 % sampling: no request of either sidecar was sampled, no span reported.
    let out = "http.outbound_0.0.0.0_8080.tracing";
    let inbound = "http.inbound_0.0.0.0_8080.tracing";
    for (pod, prefix) in [(&client, out), (&api_pod, inbound)] {
        assert_eq!(
            envoy_stat(pod, &format!("{prefix}.random_sampling")).unwrap(),
            0
        );
        assert!(envoy_stat(pod, &format!("{prefix}.not_traceable")).unwrap() >= 4);
    }

    // The namespace's Telemetry changed to 100 %: requests are sampled and spans reported.
    mesh.write_config("sampling.yaml", &sampling(100)).unwrap();
    assert!(
        wait_until(WAIT, || {
            get(&client, &format!("http://{api}:{PORT}/sampled"));
            envoy_stat(&client, &format!("{out}.random_sampling")).unwrap_or(0) > 0
        }),
        "the client's sidecar samples after the change"
    );
    wait_envoy_stat(&client, "tracing.zipkin.spans_sent", WAIT, |n| n > 0).unwrap();
}

/// `--access-log-encoding text` (Istio's MeshConfig `accessLogEncoding: TEXT`): each sidecar's
/// stdout log carries Istio's default text line for a request, not JSON.
#[test]
fn access_log_encoding_text_writes_istios_text_line() {
    let api = fqdn("api");
    let yaml = client_and_api(PORT);
    let mesh = mesh_with(
        MeshOptions::named("textlog")
            .config("mesh.yaml", &yaml)
            .serve_arg("--access-log-encoding")
            .serve_arg("text"),
        &[(api.clone(), vip(20))],
    );
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("api.{NS}"), ip(20), PORT)
        .unwrap();
    let a = get(&client, &format!("http://{api}:{PORT}/text-log?status=202"));
    assert_eq!(a.status, 202, "{a:?}");
    // Envoy writes the line once the request is done; wait for it on the server side.
    let line = || {
        mesh.envoy_log("api")
            .lines()
            .find(|l| l.contains("/text-log"))
            .map(str::to_string)
    };
    assert!(
        wait_until(WAIT, || line().is_some()),
        "{}",
        mesh.envoy_log("api")
    );
    let line = line().unwrap();
    assert!(line.starts_with('['), "{line}");
    assert!(
        line.contains("] \"GET /text-log?status=202 HTTP/1.1\" 202 "),
        "{line}"
    );
    assert!(
        serde_json::from_str::<serde_json::Value>(&line).is_err(),
        "{line}"
    );
    assert!(line.contains(&format!("\"{api}:{PORT}\"")), "{line}");
}

/// The requests a fake OTLP/gRPC collector received: (path, body).
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A fake OpenTelemetry collector on `addr` in the mesh node's namespace (where pods reach
/// meshd): it keeps every request and answers each Export with an empty OK, as a collector does.
fn otlp_collector(mesh: &Mesh, addr: std::net::SocketAddr) -> Received {
    let listener = mesh
        .node()
        .in_netns(|| std::net::TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let got = Received::default();
    let kept = got.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((socket, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        let path = request.uri().path().to_string();
                        let mut body = request.into_body();
                        let mut bytes = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            bytes.extend_from_slice(&chunk);
                        }
                        kept.lock().unwrap().push((path, bytes));
                        let answer = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let Ok(mut send) = respond.send_response(answer, false) else {
                            continue;
                        };
                        // One empty message (ExportTraceServiceResponse), then grpc-status 0.
                        let _ = send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = send.send_trailers(trailers);
                    }
                });
            }
        });
    });
    got
}

/// `--otel-address` with no Zipkin collector: OpenTelemetry is the tracer, and stock Envoy
/// exports both sidecars' spans over OTLP gRPC, each naming its service (`client.shop`,
/// `api.shop`: the pod's OTEL_RESOURCE_ATTRIBUTES, as injected pods carry).
#[test]
fn opentelemetry_spans_reach_the_collector_over_otlp_grpc() {
    let api = fqdn("api");
    let collector = std::net::SocketAddr::from((ip(1), 4317));
    let mesh = mesh_with(
        MeshOptions::named("otel")
            .config("mesh.yaml", &client_and_api(PORT))
            .serve_arg("--otel-address")
            .serve_arg(&collector.to_string()),
        &[(api.clone(), vip(20))],
    );
    let got = otlp_collector(&mesh, collector);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    let api_pod = mesh
        .add_sidecar_pod(&format!("api.{NS}"), ip(20), PORT)
        .unwrap();
    // Enough spans on each side for Envoy's batch (5) to go out at once.
    for _ in 0..6 {
        let a = get(&client, &format!("http://{api}:{PORT}/otel"));
        assert_eq!(a.status, 200, "{a:?}");
    }
    let exported = |service: &str| {
        got.lock().unwrap().iter().any(|(path, body)| {
            path == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
                && body.windows(service.len()).any(|w| w == service.as_bytes())
        })
    };
    let both = wait_until(WAIT, || {
        exported(&format!("client.{NS}")) && exported(&format!("api.{NS}"))
    });
    let paths: Vec<String> = got.lock().unwrap().iter().map(|(p, _)| p.clone()).collect();
    assert!(
        both,
        "spans from both sidecars, named by service; the collector got {paths:?}"
    );
    // Envoy's own config: the OpenTelemetry tracer, not Zipkin.
    let dump = api_pod.envoy_config_dump().unwrap().to_string();
    assert!(dump.contains("envoy.tracers.opentelemetry"), "{dump}");
}

/// The OTLP log messages the collector decodes (`opentelemetry/proto/logs/v1/logs.proto`,
/// `collector/logs/v1/logs_service.proto` and `resource/v1/resource.proto`; the fields asserted
/// on, by their proto numbers): `envoy-types` carries OTLP's `common.v1` only.
mod otlp_logs {
    use envoy_types::pb::opentelemetry::proto::common::v1::{KeyValue, any_value};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportLogsServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_logs: Vec<ResourceLogs>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceLogs {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_logs: Vec<ScopeLogs>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeLogs {
        #[prost(message, repeated, tag = "2")]
        pub log_records: Vec<LogRecord>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LogRecord {
        #[prost(message, optional, tag = "5")]
        pub body: Option<envoy_types::pb::opentelemetry::proto::common::v1::AnyValue>,
    }

    fn string(v: &Option<envoy_types::pb::opentelemetry::proto::common::v1::AnyValue>) -> String {
        match v.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            _ => String::new(),
        }
    }

    /// (the resource's `service.name`, the record's body) of every record in one gRPC request
    /// body (length-prefixed messages, uncompressed as Envoy sends them).
    pub fn records(mut body: &[u8]) -> Vec<(String, String)> {
        use prost::Message as _;
        let mut out = Vec::new();
        while body.len() >= 5 {
            assert_eq!(body[0], 0, "a compressed gRPC message");
            let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
            let message = body.get(5..5 + len).expect("a whole gRPC message");
            body = &body[5 + len..];
            let request = ExportLogsServiceRequest::decode(message).expect("an OTLP logs export");
            for r in request.resource_logs {
                let service = r
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .map(|a| string(&a.value))
                    .unwrap_or_default();
                for record in r.scope_logs.iter().flat_map(|s| &s.log_records) {
                    out.push((service.clone(), string(&record.body)));
                }
            }
        }
        out
    }
}

/// Provider `opentelemetry` for access logs: the namespace's Telemetry names both providers,
/// so each sidecar logs every request on stdout and to the collector, each record Istio's text
/// line naming the request, its resource the proxy's service; api's own Telemetry names only
/// `opentelemetry` with a filter, so api sends only its failed request there (a 404: a 503
/// would be retried), and logs nothing on stdout. The records are decoded from the OTLP/gRPC
/// `LogsService/Export` calls (prost, the subset above).
#[test]
fn opentelemetry_access_logs_reach_the_collector_over_otlp_grpc() {
    let api = fqdn("api");
    let collector = std::net::SocketAddr::from((ip(1), 4317));
    let logs = format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: logs, namespace: {NS}}}\nspec:\n  accessLogging:\n  - providers: [{{name: envoy}}, {{name: opentelemetry}}]\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: api-logs, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{app: api}}}}\n  accessLogging:\n  - providers: [{{name: opentelemetry}}]\n    filter: {{expression: 'response.code >= 400'}}\n"
    );
    let mesh = mesh_with(
        MeshOptions::named("otel-logs")
            .config("mesh.yaml", &client_and_api(PORT))
            .config("logs.yaml", &logs)
            .serve_arg("--otel-address")
            .serve_arg(&collector.to_string()),
        &[(api.clone(), vip(20))],
    );
    let got = otlp_collector(&mesh, collector);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    // One worker: one buffer, flushed in order, so a success api logged would reach the
    // collector no later than the failure logged after it.
    let api_sidecar = SidecarOptions {
        envoy_args: vec!["--concurrency".into(), "1".into()],
        ..SidecarOptions::default()
    };
    mesh.add_sidecar_pod_with(&format!("api.{NS}"), ip(20), PORT, api_sidecar)
        .unwrap();
    assert!(
        wait_until(WAIT, || get(
            &client,
            &format!("http://{api}:{PORT}/warmup")
        )
        .status
            == 200),
        "the client reaches api through its sidecar"
    );
    let ok = get(&client, &format!("http://{api}:{PORT}/otel-log?status=200"));
    assert_eq!(ok.status, 200, "{ok:?}");
    let failed = get(&client, &format!("http://{api}:{PORT}/otel-log?status=404"));
    assert_eq!(failed.status, 404, "{failed:?}");

    let records = || -> Vec<(String, String)> {
        got.lock()
            .unwrap()
            .iter()
            .filter(|(path, _)| path == "/opentelemetry.proto.collector.logs.v1.LogsService/Export")
            .flat_map(|(_, body)| otlp_logs::records(body))
            .collect()
    };
    let line = |status: u16| format!("\"GET /otel-log?status={status} HTTP/1.1\" {status} ");
    let from = |records: &[(String, String)], service: &str, status: u16| {
        records
            .iter()
            .filter(|(s, body)| s == service && body.contains(&line(status)))
            .count()
    };
    let (client_svc, api_svc) = (format!("client.{NS}"), format!("api.{NS}"));
    let arrived = wait_until(WAIT, || {
        let r = records();
        from(&r, &client_svc, 200) == 1
            && from(&r, &client_svc, 404) == 1
            && from(&r, &api_svc, 404) == 1
    });
    let r = records();
    assert!(
        arrived,
        "both requests from client, the failure from api: {r:#?}"
    );
    // Istio's text line: the authority is in it too.
    let client_line = r
        .iter()
        .find(|(s, b)| *s == client_svc && b.contains(&line(200)))
        .unwrap();
    assert!(client_line.1.starts_with('['), "{client_line:?}");
    assert!(
        client_line.1.contains(&format!("\"{api}:{PORT}\"")),
        "{client_line:?}"
    );
    // api's filter held the success back: its one record of these is the failure.
    let api_records = r
        .iter()
        .filter(|(s, body)| *s == api_svc && body.contains("/otel-log"))
        .count();
    assert_eq!(api_records, 1, "{r:#?}");
    // The client logs on stdout as well (both providers); api only to the collector.
    assert!(
        wait_until(WAIT, || logged(&mesh, "client", "/otel-log?status=404")
            == [404]),
        "client's log:\n{}",
        mesh.envoy_log("client")
    );
    assert_eq!(logged(&mesh, "client", "/otel-log?status=200"), [200]);
    assert_eq!(
        logged(&mesh, "api", "/otel-log?status=404"),
        Vec::<u64>::new()
    );
}
