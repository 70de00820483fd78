//! Request telemetry from stock Envoy: each sidecar streams its inbound and outbound access
//! logs over gRPC (`envoy.service.accesslog.v3.AccessLogService`) to the xDS port, with the same
//! bearer credential as its ADS stream; meshd turns them into Istio's standard metrics.
//!
//! Why the access-log service and not the metrics-service stat sink: a log entry carries the
//! response code, flags, duration, bytes, upstream cluster and the verified peer certificate of
//! one request, which is everything Istio's labels need; stock Envoy's stats carry none of the
//! peer attribution without Istio's own stats plugin. Envoy buffers entries
//! (`buffer_flush_interval`, `buffer_size_bytes`) so one gRPC message carries many requests.

pub mod ingest;
pub mod metrics;

pub use ingest::AccessLogIngest;
pub use metrics::{DEFAULT_MAX_SERIES, MeshMetrics};

/// Log names meshd's generated listeners use; they tell the reporter's side of a request.
pub const INBOUND_LOG: &str = "meshd-inbound";
pub const OUTBOUND_LOG: &str = "meshd-outbound";
