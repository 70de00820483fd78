//! A Telemetry naming a provider the server has no collector for is refused where operators
//! look: `/debug/configz` lists it as rejected, by its field, and no longer as accepted.

use meshd::testing::TestServer;
use serde_json::Value;

const OTEL_LOGS: &str = "\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: otel-logs, namespace: shop}
spec:
  accessLogging:
  - providers: [{name: opentelemetry}]
";

async fn configz(server: &TestServer) -> Value {
    let url = format!("{}/debug/configz", server.admin_url());
    let body = reqwest::get(url).await.unwrap().text().await.unwrap();
    serde_json::from_str(&body).unwrap()
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|o| o["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opentelemetry_access_log_without_otel_address_is_rejected_by_its_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("telemetry.yaml"), OTEL_LOGS).unwrap();
    let server = TestServer::start(Some(dir.path().to_path_buf()))
        .await
        .unwrap();
    // The first snapshot is built from the files read at start: no change to wait for.
    let cfg = configz(&server).await;
    let rejected = named(&cfg["rejected"], "otel-logs").unwrap_or_else(|| panic!("{cfg:#}"));
    assert_eq!(rejected["kind"], "Telemetry");
    let message = rejected["message"].as_str().unwrap();
    assert!(
        message.contains("spec.accessLogging[0].providers[0].name")
            && message.contains("--otel-address"),
        "{message}"
    );
    assert!(named(&cfg["accepted"], "otel-logs").is_none(), "{cfg:#}");
}
