//! Request telemetry in the generated listeners: every HTTP connection manager and every mesh
//! TCP proxy streams its access log over gRPC (`envoy.access_loggers.http_grpc` /
//! `tcp_grpc`) to meshd, which turns the entries into Istio's standard metrics; beside it, the
//! access logs the Telemetry API asks for (`telemetry_api`).
//!
//! The stream goes to the bootstrap's `xds-grpc` cluster (meshd's xDS port). The listeners carry
//! no credential: they are shared by every proxy of a scope, so nothing per proxy can be in them.
//! `meshd bootstrap` instead gives that cluster an upstream filter setting the `authorization`
//! header to the bootstrap's own credential on every request it carries, so the access-log
//! streams prove the same identity as ADS, and the credential stays where it already was.
//!
//! Envoy buffers entries ([`FLUSH_INTERVAL`], [`BUFFER_BYTES`]) so one gRPC message carries
//! many requests; the log name tells meshd the reporter's side.

use super::GenOptions;
use crate::resource::any;
use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog, AccessLogFilter, AndFilter, LogTypeFilter, access_log, access_log_filter,
};
use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, BackoffStrategy, GrpcService, RetryPolicy, grpc_service,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::data::accesslog::v3::AccessLogType;
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
    CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::TcpAccessLogOptions;
use meshd_model::telemetry_scope::MetricsPolicy;
use prost::{Message, Name};
use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

/// Log names meshd's generated listeners use; they tell the reporter's side of a request.
pub const INBOUND_LOG: &str = "meshd-inbound";
pub const OUTBOUND_LOG: &str = "meshd-outbound";

/// The bootstrap's static cluster to meshd's xDS port; it carries the access-log streams too.
pub const TELEMETRY_CLUSTER: &str = "xds-grpc";

/// How long Envoy gathers entries before it sends them: one message per second per worker
/// carries a busy proxy's requests of that second.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// A buffer this full is sent before the interval ends (Envoy's default, 16 KiB).
pub const BUFFER_BYTES: u32 = 16 << 10;

/// Attempts to open a stream again after a connection failure.
pub const STREAM_RETRIES: u32 = 3;

/// Request headers logged with each entry: the gRPC protocol label needs the content type.
const REQUEST_HEADERS: [&str; 1] = ["content-type"];
/// A trailers-only gRPC answer carries `grpc-status` as a header, any other as a trailer.
const GRPC_STATUS: &str = "grpc-status";

/// Which side of a connection a listener serves, for its log name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Inbound,
    Outbound,
}

impl Side {
    pub fn log_name(self) -> &'static str {
        match self {
            Side::Inbound => INBOUND_LOG,
            Side::Outbound => OUTBOUND_LOG,
        }
    }
}

fn common(side: Side) -> CommonGrpcAccessLogConfig {
    CommonGrpcAccessLogConfig {
        log_name: side.log_name().into(),
        grpc_service: Some(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: TELEMETRY_CLUSTER.into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        transport_api_version: ApiVersion::V3 as i32,
        buffer_flush_interval: Some(super::common::duration(FLUSH_INTERVAL)),
        buffer_size_bytes: super::common::u32v(BUFFER_BYTES),
        grpc_stream_retry_policy: Some(stream_retry()),
        ..Default::default()
    }
}

/// A stream whose connection to meshd failed (meshd restarting, a lost SYN against the 1 s
/// connect timeout of the bootstrap's cluster) is opened again instead of losing the entries
/// it carried; a refusal (UNAUTHENTICATED) is final, never retried into the auth-failure budget.
fn stream_retry() -> RetryPolicy {
    RetryPolicy {
        retry_back_off: Some(BackoffStrategy {
            base_interval: Some(super::common::duration(Duration::from_millis(500))),
            max_interval: Some(super::common::duration(Duration::from_secs(5))),
        }),
        num_retries: super::common::u32v(STREAM_RETRIES),
        retry_on: "connect-failure,refused-stream,unavailable".into(),
        ..Default::default()
    }
}

fn typed<M: Message + Name>(name: &str, config: &M) -> AccessLog {
    AccessLog {
        name: name.into(),
        config_type: Some(access_log::ConfigType::TypedConfig(any(config))),
        ..Default::default()
    }
}

/// `extra_request`/`extra_response`: headers the side's upserted metric tags read.
fn build_http(
    side: Side,
    extra_request: &BTreeSet<String>,
    extra_response: &BTreeSet<String>,
) -> AccessLog {
    let request = REQUEST_HEADERS.iter().map(|h| h.to_string()).chain(
        extra_request
            .iter()
            .filter(|h| !REQUEST_HEADERS.contains(&h.as_str()))
            .cloned(),
    );
    let response = std::iter::once(GRPC_STATUS.to_string())
        .chain(extra_response.iter().filter(|h| *h != GRPC_STATUS).cloned());
    typed(
        "envoy.access_loggers.http_grpc",
        &HttpGrpcAccessLogConfig {
            common_config: Some(common(side)),
            additional_request_headers_to_log: request.collect(),
            additional_response_headers_to_log: response.collect(),
            additional_response_trailers_to_log: vec![GRPC_STATUS.into()],
        },
    )
}

fn build_tcp(side: Side) -> AccessLog {
    typed(
        "envoy.access_loggers.tcp_grpc",
        &TcpGrpcAccessLogConfig {
            common_config: Some(common(side)),
        },
    )
}

/// The gRPC HTTP access log of a listener on `side`, built once.
pub fn http_log(side: Side) -> AccessLog {
    static LOGS: [OnceLock<AccessLog>; 2] = [OnceLock::new(), OnceLock::new()];
    LOGS[side as usize]
        .get_or_init(|| build_http(side, &BTreeSet::new(), &BTreeSet::new()))
        .clone()
}

/// The gRPC HTTP access log of a listener on `side` for a policy: the shared one unless the
/// policy's upserted tags read headers that must be logged too.
fn http_log_for(side: Side, metrics: &MetricsPolicy) -> AccessLog {
    let (request, response) = metrics.headers_read();
    if request.is_empty() && response.is_empty() {
        return http_log(side);
    }
    build_http(side, &request, &response)
}

/// The gRPC TCP access log of a listener on `side`, built once.
pub fn tcp_log(side: Side) -> AccessLog {
    static LOGS: [OnceLock<AccessLog>; 2] = [OnceLock::new(), OnceLock::new()];
    LOGS[side as usize].get_or_init(|| build_tcp(side)).clone()
}

/// An HTTP connection manager's access logs: the JSON log on stdout (the seed's default,
/// `--access-log`), the OTLP log to the OpenTelemetry collector, and the gRPC stream to meshd
/// (`request_telemetry`), as the side's Telemetry policy has them.
pub fn http_access_logs(
    side: Side,
    opts: &GenOptions,
    stdout: impl FnOnce() -> AccessLog,
) -> Vec<AccessLog> {
    let client = side == Side::Outbound;
    let mut logs = Vec::with_capacity(3);
    logs.extend(super::telemetry_api::stdout_log(opts, client, stdout));
    logs.extend(super::telemetry_api::otel_log(opts, client));
    if super::telemetry_api::metrics_stream(opts, client) {
        let metrics = &super::telemetry_api::side(opts, client).metrics;
        logs.push(http_log_for(side, metrics));
    }
    logs
}

/// `filter` with the gRPC TCP access log added when telemetry is on, and the OTLP access log
/// when the side's Telemetry names it, if it is a TCP proxy; any other filter (or one whose
/// config does not decode) is returned unchanged.
///
/// With the gRPC log on, the proxy also flushes it when the upstream connects (client side) and every
/// `reportingInterval` while the connection lasts (Istio's periodic TCP metrics: a long
/// connection shows up while it is open); the OTLP log keeps one record per connection.
pub fn with_tcp_log(filter: Filter, side: Side, opts: &GenOptions) -> Filter {
    let client = side == Side::Outbound;
    let stream = super::telemetry_api::metrics_stream(opts, client);
    let logs: Vec<AccessLog> = stream
        .then(|| tcp_log(side))
        .into_iter()
        .chain(super::telemetry_api::otel_log(opts, client).map(connection_end_only))
        .collect();
    if logs.is_empty() {
        return filter;
    }
    let Some(filter::ConfigType::TypedConfig(typed)) = &filter.config_type else {
        return filter;
    };
    if typed.type_url != TcpProxy::type_url() {
        return filter;
    }
    let Ok(mut proxy) = TcpProxy::decode(typed.value.as_slice()) else {
        return filter;
    };
    proxy.access_log.extend(logs);
    if stream {
        let interval = super::telemetry_api::side(opts, client)
            .metrics
            .tcp_reporting_interval();
        proxy.access_log_options = Some(TcpAccessLogOptions {
            access_log_flush_interval: Some(super::common::duration(interval)),
            // On the server side the upstream (the app) connects before the client's mTLS
            // handshake ends, so that entry has no peer certificate: the source would be
            // `unknown`. Its first periodic or end entry opens the connection instead.
            flush_access_log_on_connected: side == Side::Outbound,
            ..Default::default()
        });
    }
    Filter {
        name: filter.name,
        config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
    }
}

/// `log` with only its end-of-connection entries kept (ANDed with any filter it has).
fn connection_end_only(mut log: AccessLog) -> AccessLog {
    let end = AccessLogFilter {
        filter_specifier: Some(access_log_filter::FilterSpecifier::LogTypeFilter(
            LogTypeFilter {
                types: vec![AccessLogType::TcpConnectionEnd as i32],
                exclude: false,
            },
        )),
    };
    log.filter = Some(match log.filter.take() {
        None => end,
        Some(f) => AccessLogFilter {
            filter_specifier: Some(access_log_filter::FilterSpecifier::AndFilter(AndFilter {
                filters: vec![end, f],
            })),
        },
    });
    log
}

#[cfg(test)]
#[path = "telemetry_tests.rs"]
pub(crate) mod tests;
