//! The ADS protocol as a Rust client sees it, against the whole control plane in-process:
//! SotW and Delta ACK/NACK bookkeeping, stale nonces, reconnects, and identity checks.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshd::testing::TestServer;
use meshd_xds::resource::{CLUSTER, ENDPOINT, SECRET};
use prost::Message;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;

const BILLING: &str =
    "sidecar~10.44.0.17~billing-service-v1.voicecore-ai~voicecore-ai.svc.cluster.local";

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

async fn client(
    server: &TestServer,
) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    AggregatedDiscoveryServiceClient::connect(server.xds_url())
        .await
        .unwrap()
}

fn authorized<T>(msg: T, credential: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(c) = credential {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {c}").parse().unwrap());
    }
    req
}

async fn sotw(server: &TestServer, credential: Option<&str>) -> Result<Sotw, tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    let resp = client(server)
        .await
        .stream_aggregated_resources(authorized(ReceiverStream::new(rx), credential))
        .await?;
    Ok(Sotw {
        tx,
        rx: resp.into_inner(),
    })
}

impl Sotw {
    async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    async fn recv(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(10), self.rx.next())
            .await
            .expect("a response within 10 s")
            .expect("stream open")
    }

    async fn nothing_within(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.rx.next()).await.is_err()
    }
}

/// A SotW stream as billing's sidecar that opened with wildcard CDS, and the first CDS response.
async fn billing_with_clusters(server: &TestServer) -> (Sotw, DiscoveryResponse) {
    let cred = billing_credential(server);
    let mut s = sotw(server, Some(&cred)).await.unwrap();
    s.send(DiscoveryRequest {
        node: node(BILLING),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await;
    let cds = s.recv().await.unwrap();
    (s, cds)
}

fn billing_credential(server: &TestServer) -> String {
    server.credential("billing-service-v1", "voicecore-ai", "billing-service")
}

async fn syncz_type(server: &TestServer, proxy: &str, type_url: &str) -> Value {
    let all: Value = reqwest::get(format!("{}/debug/syncz", server.admin_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|p| p["proxy_id"] == proxy)
        .map(|p| p["types"][type_url].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn sotw_ack_advances_nack_keeps_and_stale_nonce_is_ignored() {
    let server = TestServer::start(None).await.unwrap();
    let (mut s, first) = billing_with_clusters(&server).await;
    assert!(!first.resources.is_empty());
    assert!(!first.version_info.is_empty());
    let st = syncz_type(&server, BILLING, CLUSTER).await;
    assert_eq!(st["status"], "STALE", "sent, not yet answered: {st}");

    // ACK
    s.send(DiscoveryRequest {
        type_url: CLUSTER.into(),
        version_info: first.version_info.clone(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await;
    assert!(
        s.nothing_within(Duration::from_millis(300)).await,
        "an ACK is not answered"
    );
    let st = syncz_type(&server, BILLING, CLUSTER).await;
    assert_eq!(st["status"], "SYNCED", "{st}");
    assert_eq!(st["acked_version"], first.version_info.as_str());

    // A stale nonce (not the latest) is ignored, even when it carries an error.
    s.send(DiscoveryRequest {
        type_url: CLUSTER.into(),
        version_info: "old".into(),
        response_nonce: "not-a-nonce-we-sent".into(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "stale complaint".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = syncz_type(&server, BILLING, CLUSTER).await;
    assert_eq!(st["status"], "SYNCED", "stale nonce ignored: {st}");

    // NACK of the current nonce: NACKED with Envoy's message, acked version kept.
    s.send(DiscoveryRequest {
        type_url: CLUSTER.into(),
        version_info: first.version_info.clone(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "Proto constraint validation failed: cluster X".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = syncz_type(&server, BILLING, CLUSTER).await;
    assert_eq!(st["status"], "NACKED", "{st}");
    assert_eq!(st["acked_version"], first.version_info.as_str());
    assert!(st["error"].as_str().unwrap().contains("cluster X"));
    // Under Istio's names too: one stream, one CDS push, one CDS rejected.
    let metrics = metrics_text(&server).await;
    for line in [
        "pilot_xds 1",
        "pilot_xds_pushes{type=\"cds\"} 1",
        "pilot_total_xds_rejects{type=\"cds\"} 1",
        "pilot_xds_cds_reject 1",
        "pilot_xds_eds_reject 0",
    ] {
        assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
    }
}

async fn metrics_text(server: &TestServer) -> String {
    reqwest::get(format!("{}/metrics", server.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `pilot_proxy_convergence_time_count`, the pushes a new snapshot caused so far.
fn convergence_count(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("pilot_proxy_convergence_time_count "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pilot_proxy_convergence_time_count in\n{metrics}"))
}

#[tokio::test]
async fn a_proxy_gets_secrets_for_its_own_identity_only() {
    let server = TestServer::start(None).await.unwrap();
    let cred = billing_credential(&server);
    let mut s = sotw(&server, Some(&cred)).await.unwrap();
    s.send(DiscoveryRequest {
        node: node(BILLING),
        type_url: SECRET.into(),
        resource_names: vec!["default".into()],
        ..Default::default()
    })
    .await;
    let resp = s.recv().await.unwrap();
    assert_eq!(resp.resources.len(), 1);
    let secret = Secret::decode(resp.resources[0].value.as_slice()).unwrap();
    let Some(secret::Type::TlsCertificate(tls)) = secret.r#type else {
        panic!("not a TLS certificate");
    };
    let chain = tls.certificate_chain.unwrap();
    let pem = match chain.specifier.unwrap() {
        envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(b) => b,
        other => panic!("unexpected {other:?}"),
    };
    let (_, der) = x509_parser_pem(&pem);
    let text = String::from_utf8_lossy(&der).to_string();
    assert!(
        text.contains("spiffe://cluster.local/ns/voicecore-ai/sa/billing-service"),
        "the SVID names billing's identity"
    );

    // Y's credential presented by a node that claims to be X: refused, no secrets.
    let tenant_cred = server.credential("tenant-service-v1", "voicecore-ai", "tenant-service");
    let mut s = sotw(&server, Some(&tenant_cred)).await.unwrap();
    s.send(DiscoveryRequest {
        node: node(BILLING),
        type_url: SECRET.into(),
        resource_names: vec!["default".into()],
        ..Default::default()
    })
    .await;
    let err = s.recv().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");

    // No credential, or a forged one: Unauthenticated before any response.
    let no_cred = sotw(&server, None).await;
    assert_eq!(
        no_cred.err().map(|e| e.code()),
        Some(tonic::Code::Unauthenticated)
    );
    let forged = format!("{}x", &cred[..cred.len() - 1]);
    let forged = sotw(&server, Some(&forged)).await;
    assert_eq!(
        forged.err().map(|e| e.code()),
        Some(tonic::Code::Unauthenticated)
    );
}

/// The PEM text with its base64 body decoded, so the URI SAN can be found in the DER bytes.
fn x509_parser_pem(pem: &[u8]) -> (String, Vec<u8>) {
    use base64::Engine;
    let text = String::from_utf8_lossy(pem).to_string();
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    (text, der)
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

async fn delta(server: &TestServer, credential: &str) -> Delta {
    let (tx, rx) = mpsc::channel(16);
    let resp = client(server)
        .await
        .delta_aggregated_resources(authorized(ReceiverStream::new(rx), Some(credential)))
        .await
        .unwrap();
    Delta {
        tx,
        rx: resp.into_inner(),
    }
}

impl Delta {
    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.next())
            .await
            .expect("a response within 10 s")
            .expect("stream open")
            .unwrap()
    }
}

const DR: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: billing-service
  namespace: voicecore-ai
spec:
  host: billing-service.voicecore-ai.svc.cluster.local
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: MAXCONN
"#;

/// The shipped mesh minus billing's DestinationRule, which the test owns in `dr.yaml`
/// (maxConnections 100 to start; rewrite it from `DR`).
async fn server_owning_billing_rule() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let mesh = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/mesh/voicecore.yaml"
    ))
    .unwrap();
    let docs: Vec<&str> = mesh
        .split("\n---\n")
        .filter(|d| !(d.contains("kind: DestinationRule") && d.contains("name: billing-service\n")))
        .collect();
    std::fs::write(dir.path().join("mesh.yaml"), docs.join("\n---\n")).unwrap();
    std::fs::write(dir.path().join("dr.yaml"), DR.replace("MAXCONN", "100")).unwrap();
    let server = TestServer::start(Some(dir.path().to_path_buf()))
        .await
        .unwrap();
    (dir, server)
}

#[tokio::test]
async fn delta_sends_only_what_changed_also_across_reconnects() {
    let (dir, server) = server_owning_billing_rule().await;
    let cred = billing_credential(&server);

    let mut d = delta(&server, &cred).await;
    d.send(DeltaDiscoveryRequest {
        node: node(BILLING),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await;
    let first = d.recv().await;
    let versions: HashMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    assert!(versions.len() > 8, "wildcard CDS sends every cluster");
    d.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await;
    drop(d);

    // Reconnect claiming what we hold, with one version out of date: only that one is sent.
    let stale = "outbound|8001||tenant-service.voicecore-ai.svc.cluster.local";
    let mut initial = versions.clone();
    initial.insert(stale.into(), "0000".into());
    let mut d = delta(&server, &cred).await;
    d.send(DeltaDiscoveryRequest {
        node: node(BILLING),
        type_url: CLUSTER.into(),
        initial_resource_versions: initial,
        ..Default::default()
    })
    .await;
    let resync = d.recv().await;
    let names: Vec<&str> = resync.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec![stale]);
    assert!(resync.removed_resources.is_empty());
    d.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        response_nonce: resync.nonce.clone(),
        ..Default::default()
    })
    .await;

    // A DestinationRule change on disk: only billing's cluster(s) are pushed.
    std::fs::write(dir.path().join("dr.yaml"), DR.replace("MAXCONN", "7")).unwrap();
    let push = d.recv().await;
    let names: Vec<&str> = push.resources.iter().map(|r| r.name.as_str()).collect();
    assert!(!names.is_empty());
    assert!(
        names
            .iter()
            .all(|n| n.ends_with("|billing-service.voicecore-ai.svc.cluster.local")),
        "{names:?}"
    );
    // The push the change caused counts in Istio's convergence histogram; the first pushes
    // of a stream (no change behind them) do not. CDS went out three times: the first
    // stream, the reconnect's resync, the change.
    let metrics = metrics_text(&server).await;
    assert!(convergence_count(&metrics) >= 1, "{metrics}");
    assert!(
        metrics.contains("pilot_xds_pushes{type=\"cds\"} 3"),
        "{metrics}"
    );
}

/// SotW sends every cluster on each CDS change (Envoy's rule for Cluster and Listener), but EDS
/// after its first response carries only the endpoints of clusters that changed: Envoy keeps
/// the rest and warms only the clusters it recreated.
#[tokio::test]
async fn sotw_eds_after_a_cluster_change_carries_only_that_cluster() {
    let (dir, server) = server_owning_billing_rule().await;
    let (mut s, cds) = billing_with_clusters(&server).await;
    let clusters: Vec<String> = cds
        .resources
        .iter()
        .map(|a| {
            envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(a.value.as_slice())
                .unwrap()
                .name
        })
        .filter(|n| n.starts_with("outbound|"))
        .collect();
    s.send(DiscoveryRequest {
        type_url: CLUSTER.into(),
        version_info: cds.version_info.clone(),
        response_nonce: cds.nonce.clone(),
        ..Default::default()
    })
    .await;
    s.send(DiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names: clusters.clone(),
        ..Default::default()
    })
    .await;
    let eds = s.recv().await.unwrap();
    assert_eq!(eds.type_url, ENDPOINT);
    assert_eq!(
        eds.resources.len(),
        clusters.len(),
        "the first EDS is whole"
    );
    s.send(DiscoveryRequest {
        type_url: ENDPOINT.into(),
        version_info: eds.version_info.clone(),
        response_nonce: eds.nonce.clone(),
        resource_names: clusters.clone(),
        ..Default::default()
    })
    .await;

    std::fs::write(dir.path().join("dr.yaml"), DR.replace("MAXCONN", "7")).unwrap();
    let cds2 = s.recv().await.unwrap();
    assert_eq!(cds2.type_url, CLUSTER);
    assert_eq!(cds2.resources.len(), cds.resources.len(), "CDS is whole");
    assert_ne!(cds2.version_info, cds.version_info);
    let eds2 = s.recv().await.unwrap();
    assert_eq!(eds2.type_url, ENDPOINT);
    let names: Vec<String> = eds2
        .resources
        .iter()
        .map(|a| {
            envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
                a.value.as_slice(),
            )
            .unwrap()
            .cluster_name
        })
        .collect();
    assert!(!names.is_empty());
    assert!(
        names
            .iter()
            .all(|n| n.ends_with("|billing-service.voicecore-ai.svc.cluster.local")),
        "{names:?}"
    );
    // Under Istio's names: CDS and EDS pushed twice each (first, after the change), and the
    // change's push counted in the convergence histogram.
    let metrics = metrics_text(&server).await;
    assert!(convergence_count(&metrics) >= 1, "{metrics}");
    for line in [
        "pilot_xds_pushes{type=\"cds\"} 2",
        "pilot_xds_pushes{type=\"eds\"} 2",
        "pilot_xds_push_time_count{type=\"cds\"} 2",
        "pilot_xds_push_time_count{type=\"eds\"} 2",
    ] {
        assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
    }
}
