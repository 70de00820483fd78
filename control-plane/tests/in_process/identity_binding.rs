//! A stream's identity is bound end to end (issue 14, finding 2): what it receives follows the
//! credential it proves now and the registry's record of that workload, never a node id or a
//! certificate another caller's stream caused to be issued.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use meshd::testing::TestServer;
use meshd_ca::WorkloadClaims;
use meshd_xds::resource::SECRET;
use prost::Message;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const BILLING: &str =
    "sidecar~10.44.0.17~billing-service-v1.voicecore-ai~voicecore-ai.svc.cluster.local";
const WORKLOAD: &str = "billing-service-v1";
const NS: &str = "voicecore-ai";

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

async fn channel(server: &TestServer) -> AggregatedDiscoveryServiceClient<Channel> {
    AggregatedDiscoveryServiceClient::connect(server.xds_url())
        .await
        .unwrap()
}

fn authorized<T>(msg: T, credential: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    req
}

/// The first answer of a SotW stream opened with `credential` as `node_id`, asking for its
/// certificate, and the sender keeping the stream open.
async fn sotw_secret(
    client: &mut AggregatedDiscoveryServiceClient<Channel>,
    credential: &str,
    node_id: &str,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    Result<DiscoveryResponse, tonic::Status>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: node(node_id),
        type_url: SECRET.into(),
        resource_names: vec!["default".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let first = match client
        .stream_aggregated_resources(authorized(ReceiverStream::new(rx), credential))
        .await
    {
        Err(status) => Err(status),
        Ok(resp) => {
            let mut stream = resp.into_inner();
            tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .expect("an answer within 30 s")
                .unwrap_or_else(|| Err(tonic::Status::unknown("stream ended without status")))
        }
    };
    (tx, first)
}

async fn delta_secret(
    client: &mut AggregatedDiscoveryServiceClient<Channel>,
    credential: &str,
    node_id: &str,
) -> (
    mpsc::Sender<DeltaDiscoveryRequest>,
    Result<DeltaDiscoveryResponse, tonic::Status>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        node: node(node_id),
        type_url: SECRET.into(),
        resource_names_subscribe: vec!["default".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let first = match client
        .delta_aggregated_resources(authorized(ReceiverStream::new(rx), credential))
        .await
    {
        Err(status) => Err(status),
        Ok(resp) => {
            let mut stream = resp.into_inner();
            tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .expect("an answer within 30 s")
                .unwrap_or_else(|| Err(tonic::Status::unknown("stream ended without status")))
        }
    };
    (tx, first)
}

/// The private key PEM of a `default` secret.
fn key_of(resource: &[u8]) -> String {
    let secret = Secret::decode(resource).unwrap();
    let Some(secret::Type::TlsCertificate(tls)) = secret.r#type else {
        panic!("not a TLS certificate");
    };
    match tls.private_key.unwrap().specifier.unwrap() {
        envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(b) => {
            String::from_utf8(b).unwrap()
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn billing_credential(server: &TestServer) -> String {
    server.credential(WORKLOAD, NS, "billing-service")
}

/// What the audit did: a credential for billing's workload name issued while it ran as
/// `low-priv` (still unexpired), presented with billing's node id while billing is connected.
fn stale_credential(server: &TestServer) -> String {
    server.credential(WORKLOAD, NS, "low-priv")
}

#[tokio::test]
async fn sotw_another_identity_with_a_connected_node_id_is_denied_and_gets_no_secret() {
    let server = TestServer::start(None).await.unwrap();
    let mut client = channel(&server).await;
    let (_billing, first) = sotw_secret(&mut client, &billing_credential(&server), BILLING).await;
    let billing_key = key_of(&first.expect("billing gets its certificate").resources[0].value);

    for (what, credential) in [
        (
            "a stale credential for billing's name",
            stale_credential(&server),
        ),
        (
            "another workload's credential",
            server.credential("tenant-service-v1", NS, "tenant-service"),
        ),
    ] {
        let (_tx, answer) = sotw_secret(&mut client, &credential, BILLING).await;
        match answer {
            Err(status) => assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{what}: {status}"
            ),
            Ok(resp) => {
                let leaked = resp
                    .resources
                    .iter()
                    .any(|r| key_of(&r.value) == billing_key);
                panic!("{what}: got a response (billing's private key: {leaked})");
            }
        }
    }
}

#[tokio::test]
async fn delta_another_identity_with_a_connected_node_id_is_denied_and_gets_no_secret() {
    let server = TestServer::start(None).await.unwrap();
    let mut client = channel(&server).await;
    let (_billing, first) = delta_secret(&mut client, &billing_credential(&server), BILLING).await;
    let billing_key = key_of(
        &first.expect("billing gets its certificate").resources[0]
            .resource
            .as_ref()
            .unwrap()
            .value,
    );

    let (_tx, answer) = delta_secret(&mut client, &stale_credential(&server), BILLING).await;
    match answer {
        Err(status) => assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}"),
        Ok(resp) => {
            let leaked = resp
                .resources
                .iter()
                .filter_map(|r| r.resource.as_ref())
                .any(|r| key_of(&r.value) == billing_key);
            panic!("got a response (billing's private key: {leaked})");
        }
    }
}

#[tokio::test]
async fn a_node_id_whose_ip_is_not_the_workloads_is_refused() {
    let server = TestServer::start(None).await.unwrap();
    let mut client = channel(&server).await;
    let elsewhere =
        "sidecar~10.44.0.99~billing-service-v1.voicecore-ai~voicecore-ai.svc.cluster.local";
    let (_tx, answer) = sotw_secret(&mut client, &billing_credential(&server), elsewhere).await;
    let status = answer.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(status.message().contains("10.44.0.99"), "{status}");
    // and a sidecar credential claiming router mode
    let router = "router~10.44.0.17~billing-service-v1.voicecore-ai~voicecore-ai.svc.cluster.local";
    let (_tx, answer) = sotw_secret(&mut client, &billing_credential(&server), router).await;
    let status = answer.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
}

#[tokio::test]
async fn a_credential_past_its_expiry_is_refused() {
    let server = TestServer::start(None).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = server
        .ca()
        .issue_credential(&WorkloadClaims {
            workload: WORKLOAD.into(),
            namespace: NS.into(),
            service_account: "billing-service".into(),
            issued_at: now - 7200,
            expires_at: now - 1,
        })
        .unwrap();
    let mut client = channel(&server).await;
    let (_tx, answer) = sotw_secret(&mut client, &expired, BILLING).await;
    let status = answer.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    assert!(status.message().contains("expired"), "{status}");
}

/// The shipped mesh in a watched config dir; `billing_sa` as billing's service account.
fn write_mesh(dir: &std::path::Path, billing_sa: &str) {
    let mesh = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/mesh/voicecore.yaml"
    ))
    .unwrap();
    let from = "  address: 10.44.0.17\n  labels:\n    app: billing-service\n    version: v1\n  serviceAccount: billing-service\n";
    assert!(
        mesh.contains(from),
        "billing's WorkloadEntry as the test knows it"
    );
    let to = from.replace(
        "serviceAccount: billing-service",
        &format!("serviceAccount: {billing_sa}"),
    );
    let tmp = dir.join(".mesh.yaml.tmp");
    std::fs::write(&tmp, mesh.replace(from, &to)).unwrap();
    std::fs::rename(tmp, dir.join("mesh.yaml")).unwrap();
}

#[tokio::test]
async fn a_credential_whose_workload_changed_service_account_is_refused_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    write_mesh(dir.path(), "billing-service");
    let server = TestServer::start(Some(dir.path().to_path_buf()))
        .await
        .unwrap();
    let credential = billing_credential(&server);
    let mut client = channel(&server).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: node(BILLING),
        type_url: SECRET.into(),
        resource_names: vec!["default".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut open = client
        .stream_aggregated_resources(authorized(ReceiverStream::new(rx), &credential))
        .await
        .unwrap()
        .into_inner();
    open.next()
        .await
        .unwrap()
        .expect("bound while the WorkloadEntry says billing-service");

    // The WorkloadEntry now runs as another account: the open stream is cut ...
    write_mesh(dir.path(), "billing-v2");
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match open.next().await {
                Some(Ok(_)) => continue, // pushes racing the config change
                Some(Err(status)) => return Some(status),
                None => return None,
            }
        }
    })
    .await
    .expect("the stream ends once the config reloads");
    let status = end.expect("with a status");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(status.message().contains("billing-v2"), "{status}");
    drop(tx);
    // ... and the stale credential opens no new one.
    let (_tx, answer) = sotw_secret(&mut client, &credential, BILLING).await;
    let status = answer.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_node_ids_from_one_identity_hold_one_certificate() {
    let server = TestServer::start(None).await.unwrap();
    let credential = billing_credential(&server);
    let client = channel(&server).await;
    let metrics = || async {
        reqwest::get(format!("{}/metrics", server.admin_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let workload_certs = r#"meshd_certs_issued_total{kind="workload"}"#;
    let before = metric(&metrics().await, workload_certs);
    const FLOOD: usize = 10_000;
    const AT_ONCE: usize = 64;
    let mut keys = std::collections::HashSet::new();
    for batch in 0..FLOOD / AT_ONCE + 1 {
        let mut set = tokio::task::JoinSet::new();
        for i in batch * AT_ONCE..((batch + 1) * AT_ONCE).min(FLOOD) {
            let mut client = client.clone();
            let credential = credential.clone();
            set.spawn(async move {
                let id = format!(
                    "sidecar~10.44.0.17~billing-service-v1.voicecore-ai~voicecore-ai.svc.flood{i}.local"
                );
                let (_tx, answer) = sotw_secret(&mut client, &credential, &id).await;
                key_of(&answer.expect("its own identity is served").resources[0].value)
            });
        }
        while let Some(key) = set.join_next().await {
            keys.insert(key.unwrap());
        }
    }
    assert_eq!(
        keys.len(),
        1,
        "one key for the identity, whatever its node ids"
    );
    let text = metrics().await;
    assert!(
        metric(&text, workload_certs) - before <= 1,
        "at most one certificate issued:\n{text}"
    );
    let certs: serde_json::Value = reqwest::get(format!("{}/debug/certs", server.admin_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let billing = certs
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["spiffe_id"] == "spiffe://cluster.local/ns/voicecore-ai/sa/billing-service")
        .count();
    assert_eq!(billing, 1, "{certs}");
}
