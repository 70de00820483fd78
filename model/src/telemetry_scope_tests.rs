//! Scope resolution: mesh-wide, namespace and workload Telemetry, the most specific setting
//! each field.

use super::*;
use crate::telemetry::IstioMetric;
use crate::{MeshConfig, parse_file};

fn config(yaml: &str) -> MeshConfig {
    let file = parse_file("t.yaml", yaml).expect("valid YAML");
    assert!(file.rejected.is_empty(), "{:?}", file.rejected);
    let mut config = MeshConfig::default();
    for o in file.objects {
        config.objects.insert(o.key(), o);
    }
    config
}

fn policy(config: &MeshConfig, namespace: &str, app: &str) -> TelemetryPolicy {
    let labels = [("app".to_string(), app.to_string())].into();
    resolve(&telemetries(config), "istio-system", namespace, &labels)
}

const LAYERS: &str = "\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: 10
    customTags: {cluster: {literal: {value: one}}}
  accessLogging:
  - filter: {expression: 'response.code >= 500'}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ns, namespace: shop}
spec:
  tracing:
  - randomSamplingPercentage: 0
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: cart, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  accessLogging:
  - match: {mode: SERVER}
    disabled: true
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      disabled: true
    - tagOverrides: {request_protocol: {operation: REMOVE}}
";

#[test]
fn no_telemetry_is_the_mesh_default() {
    let p = policy(&MeshConfig::default(), "shop", "cart");
    assert_eq!(p, TelemetryPolicy::default());
    assert!(p.client.access_log && p.client.span_reporting);
    assert_eq!(p.client.sampling, None);
}

#[test]
fn mesh_wide_applies_everywhere() {
    let c = config(LAYERS);
    let p = policy(&c, "other", "x");
    assert_eq!(p.client.sampling, Some(SAMPLING_SCALE / 10));
    assert_eq!(
        p.server.access_log_filter.as_deref(),
        Some("response.code >= 500")
    );
    assert!(p.client.custom_tags.contains_key("cluster"));
}

#[test]
fn namespace_overrides_the_fields_it_sets_and_inherits_the_rest() {
    let c = config(LAYERS);
    let p = policy(&c, "shop", "web");
    assert_eq!(p.client.sampling, Some(0));
    assert_eq!(p.server.sampling, Some(0));
    assert!(p.client.custom_tags.contains_key("cluster"), "inherited");
    assert_eq!(
        p.client.access_log_filter.as_deref(),
        Some("response.code >= 500")
    );
    assert!(p.client.access_log && p.server.access_log);
}

#[test]
fn workload_overrides_by_side() {
    let c = config(LAYERS);
    let p = policy(&c, "shop", "cart");
    assert!(
        p.client.access_log,
        "SERVER mode leaves the client's log on"
    );
    assert!(!p.server.access_log);
    assert_eq!(p.server.sampling, Some(0), "inherited from the namespace");
    assert!(!p.client.metrics.enabled(IstioMetric::RequestCount));
    assert!(p.server.metrics.enabled(IstioMetric::RequestCount));
    assert!(!p.client.metrics.all_disabled());
    for side in [&p.client, &p.server] {
        assert!(side.metrics.tags[&IstioMetric::RequestDuration].contains_key("request_protocol"));
    }
}

#[test]
fn a_selector_in_another_namespace_or_the_root_namespace_is_not_mesh_wide() {
    let c = config(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: s, namespace: istio-system}\nspec:\n  selector: {matchLabels: {app: cart}}\n  tracing: [{randomSamplingPercentage: 1}]\n",
    );
    assert_eq!(policy(&c, "shop", "cart"), TelemetryPolicy::default());
    assert_eq!(
        policy(&c, "istio-system", "cart").client.sampling,
        Some(SAMPLING_SCALE / 100)
    );
}

#[test]
fn all_metrics_disabled_stops_the_stream_and_providers_pick_the_access_log() {
    let c = config(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: m, namespace: shop}\nspec:\n  metrics:\n  - overrides: [{disabled: true}]\n  accessLogging:\n  - providers: [{name: envoy}]\n    disabled: false\n",
    );
    let p = policy(&c, "shop", "cart");
    assert!(p.client.metrics.all_disabled() && p.server.metrics.all_disabled());
    assert!(p.client.access_log);
}

fn logging(scopes: &[(&str, Option<&str>, &str)]) -> MeshConfig {
    let docs: Vec<String> = scopes
        .iter()
        .enumerate()
        .map(|(i, (namespace, app, entries))| {
            let selector = app
                .map(|a| format!("  selector: {{matchLabels: {{app: {a}}}}}\n"))
                .unwrap_or_default();
            format!(
                "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t{i}, namespace: {namespace}}}\nspec:\n{selector}  accessLogging:\n{entries}"
            )
        })
        .collect();
    config(&docs.join("---\n"))
}

#[test]
fn the_opentelemetry_provider_replaces_or_joins_the_stdout_log() {
    let c = logging(&[("shop", None, "  - providers: [{name: opentelemetry}]\n")]);
    let p = policy(&c, "shop", "cart");
    for side in [&p.client, &p.server] {
        assert!(side.otel_access_log && !side.access_log, "{side:?}");
    }
    assert!(!policy(&c, "other", "cart").client.otel_access_log);

    let c = logging(&[(
        "shop",
        None,
        "  - providers: [{name: envoy}, {name: opentelemetry}]\n",
    )]);
    let p = policy(&c, "shop", "cart");
    assert!(p.server.otel_access_log && p.server.access_log);

    // Two entries of one scope: both logs, each with its own filter.
    let c = logging(&[(
        "shop",
        None,
        "  - providers: [{name: envoy}]\n  - providers: [{name: opentelemetry}]\n    filter: {expression: 'response.code >= 500'}\n",
    )]);
    let p = policy(&c, "shop", "cart");
    assert!(p.client.access_log && p.client.otel_access_log);
    assert_eq!(p.client.access_log_filter, None);
    assert_eq!(
        p.client.otel_access_log_filter.as_deref(),
        Some("response.code >= 500")
    );
}

#[test]
fn a_scope_naming_no_provider_keeps_the_logs_in_force_and_disabled_stops_them_all() {
    let c = logging(&[
        (
            "istio-system",
            None,
            "  - providers: [{name: envoy}, {name: opentelemetry}]\n",
        ),
        (
            "shop",
            Some("cart"),
            "  - filter: {expression: 'response.code >= 400'}\n  - match: {mode: CLIENT}\n    disabled: true\n",
        ),
    ]);
    let p = policy(&c, "shop", "web");
    assert!(p.client.access_log && p.client.otel_access_log, "mesh-wide");
    let p = policy(&c, "shop", "cart");
    assert!(!p.client.access_log && !p.client.otel_access_log, "{p:?}");
    assert!(p.server.access_log && p.server.otel_access_log, "{p:?}");
    for filter in [
        &p.server.access_log_filter,
        &p.server.otel_access_log_filter,
    ] {
        assert_eq!(filter.as_deref(), Some("response.code >= 400"));
    }

    // A workload naming only the stdout log stops the mesh's OTLP log.
    let c = logging(&[
        (
            "istio-system",
            None,
            "  - providers: [{name: opentelemetry}]\n",
        ),
        ("shop", Some("cart"), "  - providers: [{name: envoy}]\n"),
    ]);
    let p = policy(&c, "shop", "cart");
    assert!(p.server.access_log && !p.server.otel_access_log);
    // Disabling one provider leaves nothing of what that scope named.
    let c = logging(&[(
        "shop",
        None,
        "  - providers: [{name: opentelemetry}]\n    disabled: true\n",
    )]);
    let p = policy(&c, "shop", "cart");
    assert!(!p.client.access_log && !p.client.otel_access_log);
}

#[test]
fn reporting_interval_is_istios_default_until_a_scope_sets_it() {
    use super::DEFAULT_TCP_REPORTING;
    use std::time::Duration;
    let c = config(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: ns, namespace: shop}\nspec:\n  metrics: [{reportingInterval: 2s}]\n",
    );
    let p = policy(&c, "shop", "cart");
    assert_eq!(
        p.client.metrics.tcp_reporting_interval(),
        Duration::from_secs(2)
    );
    assert_eq!(
        p.server.metrics.tcp_reporting_interval(),
        Duration::from_secs(2)
    );
    let other = policy(&c, "default", "cart");
    assert_eq!(
        other.server.metrics.tcp_reporting_interval(),
        DEFAULT_TCP_REPORTING
    );
}
