//! EnvoyFilter BOOTSTRAP patches in the bootstrap `meshd bootstrap` writes. Envoy reads its
//! bootstrap once, at start, so the patches selecting a proxy are merged in before it starts:
//! in file mode from the mesh config on disk; in Kubernetes mode asked of meshd over ADS (type
//! `envoy.config.bootstrap.v3.Bootstrap`, one resource), authenticated by the pod's token as
//! its Envoy's stream will be, as Istio's agent asks istiod for its bootstrap. Either way the
//! selection is the generator's (`MeshSnapshot::generate`), so a proxy gets exactly the patches
//! its xDS config gets.

use anyhow::{Context, anyhow};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshd_model::MeshConfig;
use meshd_xds::proxy::Proxy;
use meshd_xds::resource::{BOOTSTRAP, BOOTSTRAP_PATCH};
use prost::Message as _;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BOOTSTRAP_MESSAGE: &str = "envoy.config.bootstrap.v3.Bootstrap";
/// A patch is config, not bulk data: an answer larger than this is refused.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// `base` (a bootstrap as proto JSON) with `patch` (an encoded `Bootstrap`) merged in with
/// protobuf merge semantics: what the patch sets replaces scalars, merges into messages and
/// appends to lists.
pub fn merge(base: &Value, patch: &[u8]) -> anyhow::Result<Value> {
    if patch.is_empty() {
        return Ok(base.clone());
    }
    let mut bytes = meshd_xds::json::json_to_proto(BOOTSTRAP_MESSAGE, base)
        .map_err(|e| anyhow!("the bootstrap meshd rendered is not a Bootstrap: {e}"))?;
    // Concatenated encodings parse as their merge.
    bytes.extend_from_slice(patch);
    meshd_xds::json::proto_to_json(BOOTSTRAP_MESSAGE, &bytes)
        .map_err(|e| anyhow!("the patched bootstrap does not render: {e}"))
}

/// The string fields of a bootstrap node's metadata, as meshd reads them off the node Envoy
/// presents (EnvoyFilter `match.proxy.metadata` matches them).
pub fn node_metadata(node: &Value) -> meshd_xds::proxy::NodeMetadata {
    use meshd_xds::proxy::NodeMetadataExt as _;
    let fields = node["metadata"].as_object().into_iter().flatten();
    meshd_xds::proxy::NodeMetadata::from_fields(
        fields.filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))),
    )
}

/// File mode: the BOOTSTRAP patches of `mesh` that select `proxy`, merged (empty: none).
pub fn from_mesh(mesh: MeshConfig, proxy: &Proxy) -> Vec<u8> {
    let snapshot = meshd_xds::MeshSnapshot::build(
        0,
        Arc::new(mesh),
        Arc::new(meshd_xds::GenOptions::default()),
    );
    for r in &snapshot.patches.problems {
        tracing::warn!("{r}");
    }
    snapshot
        .generate(proxy)
        .get(BOOTSTRAP)
        .and_then(|set| set.get(BOOTSTRAP_PATCH))
        .map(|r| r.value().to_vec())
        .unwrap_or_default()
}

/// Where and how Kubernetes mode asks meshd.
pub struct Fetch<'a> {
    /// `HOST:PORT` of meshd's TLS xDS port.
    pub xds_address: &'a str,
    pub server_name: &'a str,
    pub root_cert_pem: Vec<u8>,
    pub token: String,
    /// The node exactly as the bootstrap presents it (proto JSON).
    pub node: &'a Value,
    /// How long to keep trying (meshd restarting, a Service without ready endpoints yet).
    pub deadline: Duration,
}

/// Kubernetes mode: the merged BOOTSTRAP patches meshd has for this node (empty: none). Retries
/// until the deadline, then fails naming the last reason: a proxy must not start without the
/// patches that select it.
pub async fn fetch(f: &Fetch<'_>) -> anyhow::Result<Vec<u8>> {
    let node_bytes = meshd_xds::json::json_to_proto("envoy.config.core.v3.Node", f.node)
        .map_err(|e| anyhow!("the bootstrap's node is not a Node: {e}"))?;
    let node = Node::decode(node_bytes.as_slice()).context("decoding the node")?;
    let until = Instant::now() + f.deadline;
    let mut pause = Duration::from_millis(250);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let attempt = tokio::time::timeout(left.min(Duration::from_secs(10)), ask(f, &node)).await;
        let error = match attempt {
            Ok(Ok(patch)) => return Ok(patch),
            Ok(Err(e)) => e,
            Err(_) => anyhow!("no answer within 10 s"),
        };
        if Instant::now() + pause >= until {
            return Err(error.context(format!(
                "asking meshd at {} for this proxy's bootstrap patches (EnvoyFilter BOOTSTRAP) for {:?}",
                f.xds_address, f.deadline
            )));
        }
        tracing::warn!(error = %format!("{error:#}"), "asking meshd for bootstrap patches; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(4));
    }
}

async fn ask(f: &Fetch<'_>, node: &Node) -> anyhow::Result<Vec<u8>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&f.root_cert_pem))
        .domain_name(f.server_name);
    let channel = Endpoint::from_shared(format!("https://{}", f.xds_address))
        .context("meshd's address")?
        .tls_config(tls)
        .context("TLS to meshd")?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {}", f.xds_address))?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES);
    // The request stream stays open until the answer is in: a half-closed stream may end the
    // session before its first push.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(DiscoveryRequest {
        node: Some(node.clone()),
        type_url: BOOTSTRAP.into(),
        resource_names: vec![BOOTSTRAP_PATCH.into()],
        ..Default::default()
    })
    .await
    .map_err(|_| anyhow!("request stream closed"))?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", f.token.trim_end())
            .parse()
            .context("the token is not a header value")?,
    );
    let mut answers = client
        .stream_aggregated_resources(request)
        .await
        .context("opening the ADS stream")?
        .into_inner();
    let answer = answers
        .message()
        .await
        .context("reading meshd's answer")?
        .ok_or_else(|| anyhow!("meshd closed the stream without an answer"))?;
    drop(tx);
    if answer.type_url != BOOTSTRAP {
        return Err(anyhow!("meshd answered with type {}", answer.type_url));
    }
    let mut merged = Vec::new();
    for any in answer.resources {
        if any.type_url != BOOTSTRAP {
            return Err(anyhow!(
                "meshd answered a resource of type {}",
                any.type_url
            ));
        }
        merged.extend_from_slice(&any.value);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_patch_merges_as_protobuf_does() {
        let base = json!({
            "node": {"id": "sidecar~10.0.0.1~a.shop~shop.svc.cluster.local"},
            "stats_flush_interval": "5s",
            "static_resources": {"clusters": [{"name": "one"}]},
        });
        let patch = meshd_xds::json::json_to_proto(
            BOOTSTRAP_MESSAGE,
            &json!({
                "stats_flush_interval": "10s",
                "static_resources": {"clusters": [{"name": "two"}]},
                "layered_runtime": {"layers": [{"name": "x", "static_layer": {"k": 1}}]},
            }),
        )
        .unwrap();
        let merged = merge(&base, &patch).unwrap();
        assert_eq!(merged["stats_flush_interval"], "10s");
        assert_eq!(
            merged["node"]["id"],
            "sidecar~10.0.0.1~a.shop~shop.svc.cluster.local"
        );
        let clusters: Vec<&str> = merged["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(clusters, ["one", "two"]);
        assert_eq!(
            merged["layered_runtime"]["layers"][0]["static_layer"]["k"],
            1.0
        );
        assert_eq!(merge(&base, &[]).unwrap(), base);
    }

    #[test]
    fn a_patch_that_is_not_a_bootstrap_is_an_error_not_a_panic() {
        let base = json!({"node": {"id": "x"}});
        let err = merge(&base, &[0xff, 0xff, 0xff]).unwrap_err();
        assert!(format!("{err:#}").contains("does not render"), "{err:#}");
    }

    #[test]
    fn file_mode_takes_the_patches_that_select_the_workload_in_order() {
        let text = r#"
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {name: api, namespace: shop}
spec: {address: 10.0.0.7, labels: {app: api}, serviceAccount: api}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 10.0.0.8, labels: {app: web}, serviceAccount: web}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: mesh-wide, namespace: istio-system}
spec:
  configPatches:
  - applyTo: BOOTSTRAP
    patch: {operation: MERGE, value: {stats_flush_interval: 7s, layered_runtime: {layers: [{name: a, static_layer: {}}]}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: api-only, namespace: shop}
spec:
  workloadSelector: {labels: {app: api}}
  configPatches:
  - applyTo: BOOTSTRAP
    patch: {operation: MERGE, value: {stats_flush_interval: 9s, layered_runtime: {layers: [{name: b, static_layer: {}}]}}}
"#;
        let file = meshd_model::parse_file("mesh.yaml", text).unwrap();
        let mesh = MeshConfig::assemble([&file]);
        assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
        let proxy = |name: &str| Proxy::for_workload(mesh.workload(name, "shop").unwrap(), "td");
        let base = json!({"node": {"id": "n"}});
        let api = merge(&base, &from_mesh(mesh.clone(), &proxy("api"))).unwrap();
        // Root namespace first, then the workload's namespace: the later scalar wins, lists
        // keep both in order.
        assert_eq!(api["stats_flush_interval"], "9s");
        assert_eq!(api["layered_runtime"]["layers"][0]["name"], "a");
        assert_eq!(api["layered_runtime"]["layers"][1]["name"], "b");
        let web = merge(&base, &from_mesh(mesh.clone(), &proxy("web"))).unwrap();
        assert_eq!(web["stats_flush_interval"], "7s");
        assert_eq!(
            web["layered_runtime"]["layers"].as_array().unwrap().len(),
            1
        );
    }
}
