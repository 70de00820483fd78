//! Telemetry API metrics overrides in meshd's own recording of Istio's metrics: a metric
//! disabled for a workload's side is not recorded from its entries, a removed tag keeps its
//! label with an empty value (one label set per family, so the series of both agree), and an
//! upserted tag takes the value its expression gives for the entry — in place of Istio's label
//! of that name, or as a label of its own after Istio's.

use super::attributes::EntryAttributes;
use super::labels::Labels;
use meshd_model::telemetry::IstioMetric;
use meshd_model::telemetry_scope::{MetricsPolicy, TagAction};
use std::borrow::Cow;

/// The labels `metric` is recorded with under `policy` for the entry `attrs`; `None` when it
/// is disabled.
pub fn labels_for<'a>(
    policy: &MetricsPolicy,
    metric: IstioMetric,
    labels: &'a Labels,
    attrs: &EntryAttributes<'_>,
) -> Option<Cow<'a, Labels>> {
    if !policy.enabled(metric) {
        return None;
    }
    let Some(tags) = policy.tags.get(&metric) else {
        return Some(Cow::Borrowed(labels));
    };
    let mut out = labels.clone();
    // `tags` is a sorted map, so the added labels come out sorted by name.
    for (name, action) in tags {
        match (action, out.istio_mut(name)) {
            (TagAction::Remove, Some(value)) => value.clear(),
            (TagAction::Remove, None) => out.custom.retain(|(n, _)| n != name),
            (TagAction::Upsert(v), Some(value)) => *value = attrs.value(v),
            (TagAction::Upsert(v), None) => out.custom.push((name.clone(), attrs.value(v))),
        }
    }
    Some(Cow::Owned(out))
}

/// Whether `policy` changes nothing: the entry is recorded under one label set, as before.
pub fn is_default(policy: &MetricsPolicy) -> bool {
    policy.disabled.is_empty() && policy.tags.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels {
        Labels {
            reporter: "destination".into(),
            source_workload: "web".into(),
            source_workload_namespace: "shop".into(),
            source_principal: "p".into(),
            source_app: "web".into(),
            source_version: "v1".into(),
            source_canonical_service: "web".into(),
            source_canonical_revision: "v1".into(),
            source_cluster: "c".into(),
            destination_service: "api.shop.svc.cluster.local".into(),
            destination_service_name: "api".into(),
            destination_service_namespace: "shop".into(),
            destination_workload: "api".into(),
            destination_workload_namespace: "shop".into(),
            destination_principal: "q".into(),
            destination_app: "api".into(),
            destination_version: "v1".into(),
            destination_canonical_service: "api".into(),
            destination_canonical_revision: "v1".into(),
            destination_cluster: "c".into(),
            request_protocol: "http".into(),
            response_code: "200".into(),
            grpc_response_status: String::new(),
            response_flags: "-".into(),
            connection_security_policy: "mutual_tls".into(),
            custom: Vec::new(),
        }
    }

    #[test]
    fn disabled_metrics_and_removed_tags() {
        let mut policy = MetricsPolicy::default();
        let l = labels();
        let common = Default::default();
        let attrs = EntryAttributes::tcp(&common);
        assert!(is_default(&policy));
        assert!(matches!(
            labels_for(&policy, IstioMetric::RequestCount, &l, &attrs),
            Some(Cow::Borrowed(_))
        ));
        policy.disabled.insert(IstioMetric::RequestCount);
        policy
            .tags
            .entry(IstioMetric::RequestDuration)
            .or_default()
            .insert("request_protocol".into(), TagAction::Remove);
        policy
            .tags
            .entry(IstioMetric::RequestDuration)
            .or_default()
            .insert("no_such_tag".into(), TagAction::Remove);
        assert!(!is_default(&policy));
        assert!(labels_for(&policy, IstioMetric::RequestCount, &l, &attrs).is_none());
        let d = labels_for(&policy, IstioMetric::RequestDuration, &l, &attrs).unwrap();
        assert_eq!(d.request_protocol, "");
        assert_eq!(d.response_code, "200");
        assert_eq!(
            *labels_for(&policy, IstioMetric::RequestSize, &l, &attrs).unwrap(),
            l
        );
    }

    /// `web` and `api` in `shop`, with the Telemetry `telemetry` (a YAML document).
    const MESH: &str = "\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 10.44.0.10, labels: {app: web}, serviceAccount: web}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api, namespace: shop}
spec: {address: 10.44.0.20, labels: {app: api}, serviceAccount: api}
";

    /// The metrics text after `web` and `api` each report `entry` as the client, and `web` as
    /// the server, under `telemetry`.
    fn recorded(
        telemetry: &str,
        entry: &envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry,
    ) -> String {
        use crate::telemetry::directory::Directory;
        use crate::telemetry::labels::{Direction, Reporter};
        use crate::telemetry::{MeshMetrics, SeriesLimits};
        let text = format!("{MESH}---\n{telemetry}");
        let file = meshd_model::parse_file("mesh.yaml", &text).unwrap();
        assert!(file.rejected.is_empty(), "{:?}", file.rejected);
        let directory =
            Directory::build(&meshd_model::MeshConfig::assemble([&file]), "cluster.local");
        let reporter = |workload: &str| {
            Reporter::new(
                meshd_xds::proxy::Identity {
                    workload: workload.into(),
                    namespace: "shop".into(),
                    service_account: workload.into(),
                    trust_domain: "cluster.local".into(),
                },
                &directory,
            )
        };
        let metrics = MeshMetrics::new(SeriesLimits::default());
        metrics.record_http(&reporter("web"), Direction::Outbound, entry, &directory);
        metrics.record_http(&reporter("api"), Direction::Outbound, entry, &directory);
        metrics.record_http(&reporter("web"), Direction::Inbound, entry, &directory);
        let mut text = String::new();
        metrics.encode_into(&mut text);
        text
    }

    /// [`recorded`] under a Telemetry selecting `web` with the metrics overrides `overrides`
    /// (YAML list items, indented as under `overrides:`).
    fn recorded_for_web(
        overrides: &str,
        entry: &envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry,
    ) -> String {
        recorded(
            &format!(
                "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: web, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  metrics:\n  - overrides:\n{overrides}"
            ),
            entry,
        )
    }

    fn entry_200() -> envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry {
        use envoy_types::pb::envoy::data::accesslog::v3::{
            AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties,
        };
        HttpAccessLogEntry {
            common_properties: Some(AccessLogCommon::default()),
            request: Some(HttpRequestProperties {
                authority: "api.shop".into(),
                request_headers: [("x-user".to_string(), "ada".to_string())].into(),
                ..Default::default()
            }),
            response: Some(HttpResponseProperties {
                response_code: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 200 }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `web` calls `api`; a Telemetry selecting web disables REQUEST_COUNT on its client side
    /// and removes `response_code` from its duration histogram.
    #[test]
    fn a_workload_telemetry_shapes_what_meshd_records_for_it() {
        let text = recorded_for_web(
            "    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      disabled: true
    - match: {metric: REQUEST_DURATION}
      tagOverrides: {response_code: {operation: REMOVE}}
",
            &entry_200(),
        );
        let lines = |name: &str, needle: &str| {
            text.lines()
                .filter(|l| l.starts_with(name) && l.contains(needle))
                .count()
        };
        let web_source = "reporter=\"source\",source_workload=\"web\"";
        assert_eq!(lines("istio_requests_total{", web_source), 0, "{text}");
        assert_eq!(
            lines("istio_requests_total{", "source_workload=\"api\""),
            1,
            "{text}"
        );
        assert_eq!(
            lines(
                "istio_requests_total{",
                "reporter=\"destination\",source_workload=\"unknown\""
            ),
            1,
            "web's server side still counts: {text}"
        );
        assert_eq!(
            lines("istio_request_duration_milliseconds_count{", web_source),
            1,
            "{text}"
        );
        assert!(
            text.lines().any(
                |l| l.starts_with("istio_request_duration_milliseconds_count{")
                    && l.contains(web_source)
                    && l.contains("response_code=\"\"")
            ),
            "{text}"
        );
        assert_eq!(lines("istio_request_bytes_count{", web_source), 1, "{text}");
    }

    /// Istio's "customize metrics" example: tags upserted from the request replace Istio's label
    /// of that name or come after Istio's labels; other metrics and workloads keep theirs.
    #[test]
    fn upserted_tags_take_their_value_from_the_entry() {
        let text = recorded_for_web(
            "    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      tagOverrides:
        request_host: {value: request.host}
        user: {value: \"request.headers['x-user']\"}
        tier: {value: \"'gold'\"}
        destination_service_name: {value: \"'renamed'\"}
        referer: {value: request.referer}
",
            &entry_200(),
        );
        let web = text
            .lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{") && l.contains("source_workload=\"web\"")
            })
            .collect::<Vec<_>>();
        assert_eq!(web.len(), 1, "{text}");
        assert!(
            web[0].contains("destination_service_name=\"renamed\""),
            "{text}"
        );
        assert!(
            web[0].contains(
                "connection_security_policy=\"unknown\",referer=\"unknown\",request_host=\"api.shop\",tier=\"gold\",user=\"ada\"}"
            ),
            "added labels after Istio's, sorted: {text}"
        );
        let others = text
            .lines()
            .filter(|l| l.starts_with("istio_request") && !l.starts_with("istio_requests_total{"))
            .chain(text.lines().filter(|l| {
                l.starts_with("istio_requests_total{") && !l.contains("source_workload=\"web\"")
            }));
        for l in others {
            assert!(!l.contains("request_host="), "{l}");
        }
    }
}
