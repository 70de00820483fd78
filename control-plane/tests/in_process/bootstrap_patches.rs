//! EnvoyFilter BOOTSTRAP patches over ADS: what `meshd bootstrap` asks for before Envoy starts,
//! answered per proxy from its authenticated identity, in Istio's order.

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshd::testing::TestServer;
use meshd_xds::resource::{BOOTSTRAP, BOOTSTRAP_PATCH};
use prost::Message;
use std::time::Duration;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

const BILLING: &str =
    "sidecar~10.44.0.17~billing-service-v1.voicecore-ai~voicecore-ai.svc.cluster.local";

const PATCHES: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: flush, namespace: istio-system}
spec:
  configPatches:
  - applyTo: BOOTSTRAP
    patch: {operation: MERGE, value: {stats_flush_interval: 7s}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: billing-runtime, namespace: voicecore-ai}
spec:
  workloadSelector: {labels: {app: billing-service}}
  configPatches:
  - applyTo: BOOTSTRAP
    patch:
      operation: MERGE
      value: {stats_flush_interval: 9s, layered_runtime: {layers: [{name: billing, static_layer: {x: 1}}]}}
  - applyTo: BOOTSTRAP
    match: {context: GATEWAY}
    patch: {operation: MERGE, value: {stats_flush_interval: 1s}}
"#;

/// The one answer a proxy gets to its bootstrap request: the merged patch, if any.
async fn ask(server: &TestServer, id: &str, credential: &str) -> Option<Bootstrap> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    let mut answers = AggregatedDiscoveryServiceClient::connect(server.xds_url())
        .await
        .unwrap()
        .stream_aggregated_resources(req)
        .await
        .unwrap()
        .into_inner();
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: id.into(),
            ..Default::default()
        }),
        type_url: BOOTSTRAP.into(),
        resource_names: vec![BOOTSTRAP_PATCH.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), answers.next())
        .await
        .expect("an answer within 10 s")
        .expect("stream open")
        .expect("not an error");
    assert_eq!(answer.type_url, BOOTSTRAP);
    assert!(answer.resources.len() <= 1, "{answer:?}");
    answer
        .resources
        .first()
        .map(|any| Bootstrap::decode(any.value.as_slice()).unwrap())
}

#[tokio::test]
async fn a_proxy_gets_the_bootstrap_patches_that_select_it_merged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/mesh/voicecore.yaml"
    ))
    .unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
    std::fs::write(dir.path().join("patches.yaml"), PATCHES).unwrap();
    let server = TestServer::start(Some(dir.path().to_path_buf()))
        .await
        .unwrap();

    let billing = server.credential("billing-service-v1", "voicecore-ai", "billing-service");
    let got = ask(&server, BILLING, &billing)
        .await
        .expect("billing has patches");
    // The root namespace's first, then billing's own (the later scalar wins); not the
    // gateway-only one.
    assert_eq!(got.stats_flush_interval.map(|d| d.seconds), Some(9));
    let layers = got.layered_runtime.expect("runtime layer").layers;
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].name, "billing");

    let tenant = server.credential("tenant-service-v1", "voicecore-ai", "tenant-service");
    let tenant_id =
        "sidecar~10.44.0.11~tenant-service-v1.voicecore-ai~voicecore-ai.svc.cluster.local";
    let got = ask(&server, tenant_id, &tenant)
        .await
        .expect("the mesh-wide patch");
    assert_eq!(got.stats_flush_interval.map(|d| d.seconds), Some(7));
    assert!(got.layered_runtime.is_none());
}
