//! The access-log service on the xDS port, as a gRPC client sees it, against the whole control
//! plane in-process (the embedded VoiceCore mesh): a stream proves its identity as ADS does,
//! its entries become Istio's metrics on `/metrics`, and what meshd did not generate or cannot
//! attribute is not counted.

use crate::access_log_support;

use access_log_support::*;
use meshd::testing::TestServer;
use std::time::Duration;

async fn metrics(server: &TestServer) -> String {
    reqwest::get(format!("{}/metrics", server.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `istio_requests_total` of `workload`'s outbound requests answered `code` (0 when none).
fn requests(metrics: &str, workload: &str, code: u32) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| l.contains(&format!("source_workload=\"{workload}\"")))
        .filter(|l| l.contains(&format!("response_code=\"{code}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn authenticated_streams_become_istio_metrics_attributed_to_their_credential() {
    let server = TestServer::start(None).await.unwrap();
    let billing = server.credential("billing-service-v1", NS, "billing-service");
    stream(
        &server,
        Some(&billing),
        vec![
            message("meshd-outbound", &[200, 200, 503]),
            // Later messages need not repeat the identifier.
            StreamAccessLogsMessage {
                identifier: None,
                ..message("", &[200])
            },
        ],
    )
    .await
    .unwrap();
    let out = metrics(&server).await;
    assert_eq!(requests(&out, "billing-service-v1", 200), 3, "{out}");
    assert_eq!(requests(&out, "billing-service-v1", 503), 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"503\""))
        .unwrap();
    for label in [
        "reporter=\"source\"",
        "source_principal=\"spiffe://cluster.local/ns/voicecore-ai/sa/billing-service\"",
        "source_app=\"billing-service\"",
        "source_version=\"v1\"",
        "destination_service=\"call-service.voicecore-ai.svc.cluster.local\"",
        "destination_workload=\"call-service-v1\"",
        "destination_principal=\"spiffe://cluster.local/ns/voicecore-ai/sa/call-service\"",
    ] {
        assert!(line.contains(label), "{label} in {line}");
    }
    // The rest of /metrics is still there around the request metrics.
    assert!(out.contains("meshd_xds_connected_proxies"), "{out}");
    assert!(
        out.contains("# TYPE istio_request_duration_milliseconds histogram"),
        "{out}"
    );
}

#[tokio::test]
async fn streams_without_a_valid_credential_are_refused_and_count_nothing() {
    let server = TestServer::start(None).await.unwrap();
    let refused = stream(&server, None, vec![message("meshd-outbound", &[200])])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let forged = stream(
        &server,
        Some("meshd1.forged.credential"),
        vec![message("meshd-outbound", &[200])],
    )
    .await
    .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::Unauthenticated, "{forged:?}");
    let out = metrics(&server).await;
    assert!(!out.contains("istio_requests_total{"), "{out}");
}

#[tokio::test]
async fn log_names_meshd_did_not_generate_and_unregistered_reporters_count_nothing() {
    let server = TestServer::start(None).await.unwrap();
    let billing = server.credential("billing-service-v1", NS, "billing-service");
    stream(
        &server,
        Some(&billing),
        vec![message("someone-elses-log", &[200, 200])],
    )
    .await
    .unwrap();
    // A credential the CA issued for a workload the registry does not list (gone since).
    let gone = server.credential("retired-v0", NS, "retired");
    stream(
        &server,
        Some(&gone),
        vec![message("meshd-outbound", &[200])],
    )
    .await
    .unwrap();
    // A known-good stream last: once it is counted, the ones before it were handled.
    stream(
        &server,
        Some(&billing),
        vec![message("meshd-outbound", &[204])],
    )
    .await
    .unwrap();
    let out = metrics(&server).await;
    assert_eq!(requests(&out, "billing-service-v1", 204), 1, "{out}");
    assert_eq!(requests(&out, "billing-service-v1", 200), 0, "{out}");
    assert_eq!(requests(&out, "retired-v0", 200), 0, "{out}");
}

#[tokio::test]
async fn messages_over_the_xds_size_cap_end_the_stream_without_counting() {
    let state_dir = tempfile::tempdir().unwrap();
    let mut config = meshd::testing::config(state_dir.path(), None);
    config.limits.xds_max_request_bytes = 64 << 10;
    let server = TestServer {
        app: meshd::app::build(config).await.unwrap(),
        state_dir,
        config_dir: None,
    };
    let billing = server.credential("billing-service-v1", NS, "billing-service");
    // Over the configured --xds-max-request-bytes, far under tonic's own 4 MiB default.
    let mut big = message("meshd-outbound", &[200]);
    if let Some(LogEntries::HttpLogs(h)) = &mut big.log_entries {
        h.log_entry[0]
            .common_properties
            .as_mut()
            .unwrap()
            .route_name = "r".repeat(100 << 10);
    }
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        stream(&server, Some(&billing), vec![big]),
    )
    .await
    .expect("the server answers")
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("65536"), "{err:?}");
    let out = metrics(&server).await;
    assert_eq!(requests(&out, "billing-service-v1", 200), 0, "{out}");
}
