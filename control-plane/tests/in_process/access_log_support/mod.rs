//! Envoy access-log entries and streams as the proxies send them to meshd's AccessLogService,
//! for the tests that feed meshd's telemetry (`access_log_service`, `dashboard_api`).

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, HttpResponseProperties,
};
pub use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
pub use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries,
};
use meshd::testing::TestServer;
use tonic::Request;

pub const NS: &str = "voicecore-ai";
pub const CALL: &str = "call-service.voicecore-ai.svc.cluster.local";

pub fn entry(code: u32) -> HttpAccessLogEntry {
    HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            upstream_cluster: format!("outbound|8002||{CALL}"),
            upstream_remote_address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "10.44.0.12".into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(8002)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(envoy_types::pb::google::protobuf::UInt32Value { value: code }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn message(log_name: &str, codes: &[u32]) -> StreamAccessLogsMessage {
    StreamAccessLogsMessage {
        identifier: Some(Identifier {
            node: None,
            log_name: log_name.into(),
        }),
        log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
            log_entry: codes.iter().map(|c| entry(*c)).collect(),
        })),
    }
}

/// Sends `messages` on one stream, with `credential`, and waits for the server's answer.
pub async fn stream(
    server: &TestServer,
    credential: Option<&str>,
    messages: Vec<StreamAccessLogsMessage>,
) -> Result<(), tonic::Status> {
    let mut client = AccessLogServiceClient::connect(server.xds_url())
        .await
        .unwrap();
    let mut req = Request::new(tokio_stream::iter(messages));
    if let Some(c) = credential {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {c}").parse().unwrap());
    }
    client.stream_access_logs(req).await.map(|_| ())
}
