//! The Telemetry API (`telemetry.istio.io`) in the generated listeners: the tracer, its sampling
//! and custom tags, span reporting, and whether (and which requests) the JSON access log on
//! stdout and the OTLP access log to the OpenTelemetry collector record. The policy in force for
//! a workload's side comes from `meshd_model::telemetry_scope`; with no Telemetry object it is
//! the mesh default (100 % sampling or `--trace-sampling`, every request logged on stdout).
//! A Telemetry naming a provider whose collector meshd was not given is refused here, where the
//! server's options are known.

use super::GenOptions;
use super::common::boolv;
use crate::resource::any;
use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog, AccessLogFilter, ExtensionFilter, access_log, access_log_filter, extension_filter,
};
use envoy_types::pb::envoy::config::core::v3::{GrpcService, TypedExtensionConfig, grpc_service};
use envoy_types::pb::envoy::config::trace::v3::{ZipkinConfig, tracing, zipkin_config};
use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use meshd_model::telemetry::{CustomTag as IstioTag, PROVIDER_OPENTELEMETRY, PROVIDER_ZIPKIN};
use meshd_model::telemetry_scope::{SAMPLING_SCALE, SideTelemetry};
use meshd_model::{ConfigObject, MeshConfig, Rejected, Spec};
use std::sync::{Arc, OnceLock};

/// Istio's default text access-log format (its documented `accessLogFormat` default).
pub const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Envoy's CEL access-log filter (stock Envoy's `envoy.access_loggers.extension_filters.cel`).
pub const CEL_FILTER: &str = "envoy.access_loggers.extension_filters.cel";
/// Envoy's OTLP access logger (provider `opentelemetry`).
pub const OTEL_LOGGER: &str = "envoy.access_loggers.open_telemetry";
/// The OTLP access log's name, Istio's (`otel_envoy_accesslog`).
pub const OTEL_LOG_NAME: &str = "otel_envoy_accesslog";

/// The telemetry in force for one side (`client`: outbound) of the listeners built with `opts`.
pub fn side(opts: &GenOptions, client: bool) -> &SideTelemetry {
    opts.telemetry.side(client)
}

fn zipkin_provider() -> tracing::Http {
    let zipkin = ZipkinConfig {
        collector_cluster: super::cluster::ZIPKIN.into(),
        collector_endpoint: "/api/v2/spans".into(),
        collector_endpoint_version: zipkin_config::CollectorEndpointVersion::HttpJson as i32,
        shared_span_context: boolv(false),
        ..Default::default()
    };
    tracing::Http {
        name: "envoy.tracers.zipkin".into(),
        config_type: Some(tracing::http::ConfigType::TypedConfig(any(&zipkin))),
    }
}

/// Istio's own span tags, so traces can be queried by canonical service: read, as Istio's
/// are, from the environment the injector gives the proxy (the values differ per workload while
/// the listeners carrying them are shared); the mesh id is the trust domain, Istio's default.
fn istio_tags(opts: &GenOptions, on: bool) -> Vec<CustomTag> {
    if !on {
        return Vec::new();
    }
    let env = |tag: &str, name: &str, default: &str| CustomTag {
        tag: tag.into(),
        r#type: Some(custom_tag::Type::Environment(custom_tag::Environment {
            name: name.into(),
            default_value: default.into(),
        })),
    };
    vec![
        env("istio.canonical_revision", "CANONICAL_REVISION", "latest"),
        env("istio.canonical_service", "CANONICAL_SERVICE", "unknown"),
        CustomTag {
            tag: "istio.mesh_id".into(),
            r#type: Some(custom_tag::Type::Literal(custom_tag::Literal {
                value: opts.trust_domain.clone(),
            })),
        },
        env("istio.namespace", "POD_NAMESPACE", "unknown"),
    ]
}

fn custom_tag(name: &str, tag: &IstioTag) -> Option<CustomTag> {
    let kind = if let Some(l) = &tag.literal {
        custom_tag::Type::Literal(custom_tag::Literal {
            value: l.value.clone(),
        })
    } else if let Some(e) = &tag.environment {
        custom_tag::Type::Environment(custom_tag::Environment {
            name: e.name.clone(),
            default_value: e.default_value.clone(),
        })
    } else {
        let h = tag.header.as_ref()?;
        custom_tag::Type::RequestHeader(custom_tag::Header {
            name: h.name.clone(),
            default_value: h.default_value.clone(),
        })
    };
    Some(CustomTag {
        tag: name.into(),
        r#type: Some(kind),
    })
}

/// OTLP gRPC to the `opentelemetry` cluster: spans and access-log records both go there.
fn otel_grpc_service() -> GrpcService {
    GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
            grpc_service::EnvoyGrpc {
                cluster_name: super::cluster::OPENTELEMETRY.into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// The OTLP resource's attributes (`service.name=…`) from the proxy's `OTEL_RESOURCE_ATTRIBUTES`,
/// which the injector and the local mesh set per pod, through Envoy's environment resource
/// detector: the listeners are shared by many workloads, so they cannot name one.
fn environment_detector() -> TypedExtensionConfig {
    use envoy_types::pb::envoy::extensions::tracers::opentelemetry::resource_detectors::v3::EnvironmentResourceDetectorConfig;
    TypedExtensionConfig {
        name: "envoy.tracers.opentelemetry.resource_detectors.environment".into(),
        typed_config: Some(any(&EnvironmentResourceDetectorConfig {})),
    }
}

/// OpenTelemetry over OTLP gRPC, its spans named by the proxy's service.
fn opentelemetry_provider() -> tracing::Http {
    use envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig;
    let config = OpenTelemetryConfig {
        grpc_service: Some(otel_grpc_service()),
        resource_detectors: vec![environment_detector()],
        ..Default::default()
    };
    tracing::Http {
        name: "envoy.tracers.opentelemetry".into(),
        config_type: Some(tracing::http::ConfigType::TypedConfig(any(&config))),
    }
}

/// The HCM's tracing for one side: `None` when no tracer is configured (neither
/// `--zipkin-address` nor `--otel-address`). The provider is the side's Telemetry's, else
/// Zipkin, else OpenTelemetry; a provider with no collector configured reports nothing. With
/// span reporting off, requests are still sampled and their trace context propagated, but no
/// span is sent (no provider), as Istio's `disableSpanReporting`.
pub fn tracing(opts: &GenOptions, client: bool) -> Option<Tracing> {
    if opts.zipkin_cluster.is_none() && opts.otel_collector.is_none() {
        return None;
    }
    let side = side(opts, client);
    let default = if opts.zipkin_cluster.is_some() {
        PROVIDER_ZIPKIN
    } else {
        PROVIDER_OPENTELEMETRY
    };
    let provider = match side.tracing_provider.as_deref().unwrap_or(default) {
        PROVIDER_ZIPKIN if opts.zipkin_cluster.is_some() => Some(zipkin_provider as fn() -> _),
        PROVIDER_OPENTELEMETRY if opts.otel_collector.is_some() => {
            Some(opentelemetry_provider as fn() -> _)
        }
        _ => None,
    };
    let sampling = side
        .sampling
        .map(|s| f64::from(s) * 100.0 / f64::from(SAMPLING_SCALE))
        .unwrap_or(opts.trace_sampling);
    Some(Tracing {
        random_sampling: Some(Percent { value: sampling }),
        provider: provider
            .filter(|_| side.span_reporting)
            .map(|build| build()),
        custom_tags: istio_tags(opts, side.istio_tags)
            .into_iter()
            .chain(
                side.custom_tags
                    .iter()
                    .filter_map(|(name, tag)| custom_tag(name, tag)),
            )
            .collect(),
        ..Default::default()
    })
}

/// Envoy's request id (UUID) settings for one side, when a Telemetry turns sampling by the
/// request id off (`useRequestIdForTraceSampling: false`): each proxy then samples on its own.
pub fn request_id_extension(
    opts: &GenOptions,
    client: bool,
) -> Option<envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::RequestIdExtension>{
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::RequestIdExtension;
    use envoy_types::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
    let sampling = side(opts, client).request_id_sampling?;
    Some(RequestIdExtension {
        typed_config: Some(any(&UuidRequestIdConfig {
            pack_trace_reason: Some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
            use_request_id_for_trace_sampling: Some(envoy_types::pb::google::protobuf::BoolValue {
                value: sampling,
            }),
        })),
    })
}

/// Only the requests `expression` holds for are logged.
fn cel_filter(expression: &str) -> AccessLogFilter {
    AccessLogFilter {
        filter_specifier: Some(access_log_filter::FilterSpecifier::ExtensionFilter(
            ExtensionFilter {
                name: CEL_FILTER.into(),
                config_type: Some(extension_filter::ConfigType::TypedConfig(any(
                    &ExpressionFilter {
                        expression: expression.into(),
                        ..Default::default()
                    },
                ))),
            },
        )),
    }
}

/// The stdout access log for one side: `None` when the policy turns it off; with a filter
/// expression, only the requests it holds for are logged.
pub fn stdout_log(
    opts: &GenOptions,
    client: bool,
    log: impl FnOnce() -> AccessLog,
) -> Option<AccessLog> {
    let side = side(opts, client);
    if !opts.access_log || !side.access_log {
        return None;
    }
    let mut log = log();
    log.filter = side.access_log_filter.as_deref().map(cel_filter);
    Some(log)
}

/// Istio's default OpenTelemetry access log: each record's body is Istio's default text line
/// and the resource names the proxy's service. Istio's further attributes (the peers' metadata,
/// from its metadata-exchange filter state) have no source in stock Envoy.
fn build_otel_log() -> AccessLog {
    use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
    use envoy_types::pb::opentelemetry::proto::common::v1::{AnyValue, any_value};
    let config = OpenTelemetryAccessLogConfig {
        grpc_service: Some(otel_grpc_service()),
        log_name: OTEL_LOG_NAME.into(),
        // As Istio: the resource is the workload's, not Envoy's node and cluster names.
        disable_builtin_labels: true,
        resource_detectors: vec![environment_detector()],
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(ISTIO_TEXT_FORMAT.into())),
        }),
        ..Default::default()
    };
    AccessLog {
        name: OTEL_LOGGER.into(),
        config_type: Some(access_log::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    }
}

/// The OTLP access log for one side: `None` unless the policy names provider `opentelemetry`
/// and meshd has a collector (`--otel-address`); filtered as the stdout log is.
pub fn otel_log(opts: &GenOptions, client: bool) -> Option<AccessLog> {
    static LOG: OnceLock<AccessLog> = OnceLock::new();
    let side = side(opts, client);
    if opts.otel_collector.is_none() || !side.otel_access_log {
        return None;
    }
    let mut log = LOG.get_or_init(build_otel_log).clone();
    log.filter = side.otel_access_log_filter.as_deref().map(cel_filter);
    Some(log)
}

/// Why `t` cannot be applied with `opts`, by the field naming a provider whose collector meshd
/// was not given (the model cannot know: it is the server's option).
fn unservable(t: &meshd_model::telemetry::Telemetry, opts: &GenOptions) -> Option<String> {
    if opts.otel_collector.is_some() {
        return None;
    }
    t.access_logging.iter().enumerate().find_map(|(i, log)| {
        let j = log
            .providers
            .iter()
            .position(|p| p.name == PROVIDER_OPENTELEMETRY)?;
        Some(format!(
            "spec.accessLogging[{i}].providers[{j}].name: provider `{PROVIDER_OPENTELEMETRY}` needs an OpenTelemetry collector, and meshd serve runs without --otel-address"
        ))
    })
}

/// The Telemetry objects of `config` in force under `opts` (see
/// `meshd_model::telemetry_scope::telemetries`), and those refused with why.
pub fn in_force(config: &MeshConfig, opts: &GenOptions) -> (Vec<Arc<ConfigObject>>, Vec<Rejected>) {
    let mut refused = Vec::new();
    let objects = meshd_model::telemetry_scope::telemetries(config)
        .into_iter()
        .filter(|o| {
            let Spec::Telemetry(t) = &o.spec else {
                return true;
            };
            let Some(reason) = unservable(t, opts) else {
                return true;
            };
            refused.push(Rejected {
                file: o.source.file.clone(),
                line: o.source.line,
                kind: Some(o.kind()),
                namespace: Some(o.meta.namespace().to_string()),
                name: Some(o.meta.name.clone()),
                reason,
            });
            false
        })
        .collect();
    (objects, refused)
}

/// Whether the gRPC access-log stream feeding meshd's Istio metrics runs on this side: not when
/// every metric is disabled there.
pub fn metrics_stream(opts: &GenOptions, client: bool) -> bool {
    opts.request_telemetry && !side(opts, client).metrics.all_disabled()
}

#[cfg(test)]
#[path = "telemetry_api_tests.rs"]
mod tests;
