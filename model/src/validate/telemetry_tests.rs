//! Telemetry validation, one row per rule: accepted objects parse from both served versions,
//! each refused one names its field.

use crate::parse_file;

fn parse(version: &str, spec: &str) -> crate::FileConfig {
    let text = format!(
        "apiVersion: telemetry.istio.io/{version}\nkind: Telemetry\nmetadata: {{name: t, namespace: a}}\nspec:\n{spec}"
    );
    parse_file("t.yaml", &text).expect("valid YAML")
}

#[test]
fn accepted_telemetries_read_from_v1_and_v1alpha1() {
    let specs = [
        "  tracing:\n  - randomSamplingPercentage: 0\n",
        "  tracing:\n  - providers: [{name: zipkin}]\n    randomSamplingPercentage: 12.5\n    disableSpanReporting: true\n    customTags:\n      team: {literal: {value: voice}}\n      pod: {environment: {name: POD_NAME, defaultValue: unknown}}\n      user: {header: {name: x-user}}\n",
        "  selector: {matchLabels: {app: b}}\n  accessLogging:\n  - providers: [{name: envoy}]\n    filter: {expression: 'response.code >= 400'}\n",
        "  accessLogging:\n  - match: {mode: CLIENT}\n    disabled: true\n",
        "  accessLogging:\n  - providers: [{name: opentelemetry}]\n    filter: {expression: 'response.code >= 500'}\n",
        "  accessLogging:\n  - providers: [{name: envoy}, {name: opentelemetry}]\n",
        "  metrics:\n  - providers: [{name: prometheus}]\n    overrides:\n    - match: {metric: REQUEST_COUNT, mode: SERVER}\n      disabled: true\n    - match: {metric: ALL_METRICS}\n      tagOverrides:\n        request_protocol: {operation: REMOVE}\n",
        "  metrics:\n  - reportingInterval: 5s\n",
        "  metrics:\n  - reportingInterval: 5s\n",
        "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT}\n      tagOverrides:\n        request_host: {value: request.host}\n        destination_port: {operation: UPSERT, value: string(destination.port)}\n        user: {value: \"request.headers['x-user']\"}\n        tier: {value: \"'gold'\"}\n        destination_service: {value: request.host}\n",
    ];
    for spec in specs {
        for version in ["v1", "v1alpha1"] {
            let file = parse(version, spec);
            assert!(
                file.rejected.is_empty(),
                "{version}:\n{spec}\n{:?}",
                file.rejected
            );
            assert_eq!(file.objects.len(), 1);
        }
    }
}

#[test]
fn refused_telemetries_name_their_field() {
    let cases: &[(&str, &str)] = &[
        (
            "  tracing:\n  - randomSamplingPercentage: 100.5\n",
            "spec.tracing[0].randomSamplingPercentage: 100.5 must be in range [0.0, 100.0]",
        ),
        (
            "  tracing:\n  - randomSamplingPercentage: -1\n",
            "spec.tracing[0].randomSamplingPercentage",
        ),
        (
            "  tracing:\n  - providers: [{name: jaeger}]\n",
            "spec.tracing[0].providers[0].name: unknown provider `jaeger`",
        ),
        (
            "  tracing:\n  - providers: [{name: zipkin}, {name: zipkin}]\n",
            "spec.tracing[0].providers: multiple providers",
        ),
        (
            "  tracing:\n  - {}\n  - {}\n",
            "spec.tracing: multiple tracing",
        ),
        (
            "  tracing:\n  - customTags: {t: {}}\n",
            "spec.tracing[0].customTags.t: one of literal, environment or header must be set",
        ),
        (
            "  tracing:\n  - customTags: {t: {literal: {value: a}, header: {name: b}}}\n",
            "spec.tracing[0].customTags.t: only one of",
        ),
        (
            "  tracing:\n  - customTags: {t: {header: {name: ''}}}\n",
            "spec.tracing[0].customTags.t.header.name: must be set",
        ),
        (
            "  tracing:\n  - customTags: {t: {literl: {value: a}}}\n",
            "literl",
        ),
        (
            "  accessLogging:\n  - providers: [{name: otel-als}]\n",
            "spec.accessLogging[0].providers[0].name: unknown provider `otel-als`",
        ),
        (
            "  accessLogging:\n  - filter: {expression: 'response.code >= (400'}\n",
            "spec.accessLogging[0].filter.expression: `(` is never closed",
        ),
        (
            "  accessLogging:\n  - filter: {expression: 'request.headers[\"x]'}\n",
            "spec.accessLogging[0].filter.expression: unterminated string",
        ),
        (
            "  accessLogging:\n  - filter: {expression: ''}\n",
            "spec.accessLogging[0].filter.expression: must not be empty",
        ),
        (
            "  metrics:\n  - providers: [{name: stackdriver}]\n",
            "spec.metrics[0].providers[0].name: unknown provider `stackdriver`",
        ),
        (
            "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT}\n      tagOverrides: {x: {operation: REMOVE, value: a}}\n",
            "spec.metrics[0].overrides[0].tagOverrides.x.value: can only be set with operation UPSERT",
        ),
        (
            "  metrics:\n  - overrides:\n    - tagOverrides: {x: {value: \"request.headers['a'] | 'b'\"}}\n",
            "spec.metrics[0].overrides[0].tagOverrides.x.value: `request.headers['a'] | 'b'` is not an expression meshd evaluates",
        ),
        (
            "  metrics:\n  - overrides:\n    - tagOverrides: {x: {value: filter_state.peer}}\n",
            "use a quoted literal, string(…) of an attribute, request.headers['name']",
        ),
        (
            "  metrics:\n  - overrides:\n    - tagOverrides: {request-host: {value: request.host}}\n",
            "spec.metrics[0].overrides[0].tagOverrides.request-host: `request-host` is not a Prometheus label name",
        ),
        (
            "  metrics:\n  - overrides:\n    - match: {customMetric: my_metric}\n",
            "spec.metrics[0].overrides[0].match.customMetric: not supported",
        ),
        (
            "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNTS}\n",
            "REQUEST_COUNTS",
        ),
        (
            "  metrics:\n  - reportingInterval: 10 seconds\n",
            "spec.metrics[0].reportingInterval: ",
        ),
        (
            "  metrics:\n  - reportingInterval: 0s\n",
            "spec.metrics[0].reportingInterval: must be at least 1ms",
        ),
        (
            "  selector: {matchLabels: {app: b}}\n  targetRefs: [{kind: Gateway, name: g}]\n",
            "spec: only one of targetRefs or selector",
        ),
        (
            "  targetRefs: [{kind: Gateway, name: g}]\n",
            "spec.targetRefs: not supported",
        ),
        (
            "  selector: {matchLabels: {app: '*'}}\n",
            "spec.selector.matchLabels.app",
        ),
    ];
    for (spec, expected) in cases {
        let file = parse("v1", spec);
        assert!(file.objects.is_empty(), "accepted:\n{spec}");
        let [e] = &file.rejected[..] else {
            panic!("{:?}", file.rejected)
        };
        assert!(
            e.to_string().contains(expected),
            "{spec}\nexpected `{expected}` in `{e}`"
        );
    }
}

#[test]
fn other_groups_and_versions_are_refused() {
    let text =
        "apiVersion: telemetry.istio.io/v1beta1\nkind: Telemetry\nmetadata: {name: t}\nspec: {}\n";
    let file = parse_file("t.yaml", text).expect("valid YAML");
    assert!(file.objects.is_empty());
    let text =
        "apiVersion: networking.istio.io/v1\nkind: Telemetry\nmetadata: {name: t}\nspec: {}\n";
    let file = parse_file("t.yaml", text).expect("valid YAML");
    assert!(file.objects.is_empty());
}
