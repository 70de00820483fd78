//! The TLS port as a Rust gRPC client sees it: Istio's CreateCertificate (identity from the
//! credential only, and only while the registry runs that workload under that service account;
//! TTL limit, bad CSRs → InvalidArgument) and ADS, both over TLS with a
//! serving certificate from the mesh CA; the CA counters in /metrics.

use base64::Engine;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshd::testing::TestServer;
use meshd_ca::istio_api::{
    CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse,
};
use meshd_xds::resource::CLUSTER;
use std::process::Command;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request};

const BILLING: &str =
    "sidecar~10.44.0.17~billing-service-v1.voicecore-ai~voicecore-ai.svc.cluster.local";

fn root_pem(server: &TestServer) -> String {
    std::fs::read_to_string(server.state_dir.path().join("root-cert.pem")).unwrap()
}

async fn tls_channel(server: &TestServer, name: &str) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem(server)))
        .domain_name(name);
    Channel::from_shared(format!("https://{}", server.app.xds_tls_addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn create_certificate(
    channel: &Channel,
    credential: Option<&str>,
    req: IstioCertificateRequest,
) -> Result<IstioCertificateResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = Request::new(req);
    if let Some(c) = credential {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {c}").parse().unwrap());
    }
    grpc.unary(
        request,
        CREATE_CERTIFICATE_PATH.parse().unwrap(),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(|r| r.into_inner())
}

fn openssl(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A CSR for a fresh key (`ec` P-256 or `rsa:BITS`) that asks for `san`.
fn csr(key: &str, san: &str) -> String {
    let mut args = vec!["req", "-new", "-newkey", key];
    if key == "ec" {
        args.extend(["-pkeyopt", "ec_paramgen_curve:P-256"]);
    }
    let ext = format!("subjectAltName={san}");
    args.extend([
        "-nodes",
        "-keyout",
        "/dev/null",
        "-subj",
        "/CN=x",
        "-addext",
        &ext,
    ]);
    openssl(&args, None)
}

fn request(csr: &str, ttl: i64) -> IstioCertificateRequest {
    IstioCertificateRequest {
        csr: csr.into(),
        validity_duration: ttl,
        metadata: None,
    }
}

#[tokio::test]
async fn create_certificate_over_tls() {
    let server = TestServer::start(None).await.unwrap();
    let billing = server.credential("billing-service-v1", "voicecore-ai", "billing-service");
    let channel = tls_channel(&server, "localhost").await.unwrap();

    // A token for billing asking for another identity gets billing's certificate, nothing else.
    let ask = csr(
        "ec",
        "URI:spiffe://cluster.local/ns/kube-system/sa/admin,DNS:evil.example",
    );
    let resp = create_certificate(&channel, Some(&billing), request(&ask, 3600))
        .await
        .unwrap();
    assert_eq!(resp.cert_chain.len(), 2, "leaf, then the root bundle");
    assert_eq!(resp.cert_chain[1], root_pem(&server));
    let text = openssl(&["x509", "-noout", "-text"], Some(&resp.cert_chain[0]));
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/voicecore-ai/sa/billing-service"),
        "{text}"
    );
    assert!(
        !text.contains("kube-system") && !text.contains("evil.example"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.pem"), &resp.cert_chain[1]).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), &resp.cert_chain[0]).unwrap();
    let root = dir.path().join("root.pem").display().to_string();
    let leaf = dir.path().join("leaf.pem").display().to_string();
    openssl(&["verify", "-CAfile", &root, &leaf], None);

    // RSA-2048 is fine.
    create_certificate(
        &channel,
        Some(&billing),
        request(&csr("rsa:2048", "DNS:x"), 0),
    )
    .await
    .unwrap();

    // Refusals.
    let e = create_certificate(&channel, None, request(&ask, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let forged = format!("{}x", &billing[..billing.len() - 1]);
    let e = create_certificate(&channel, Some(&forged), request(&ask, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let invalid = |e: tonic::Status, want: &str| {
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains(want), "{want:?} not in {e}");
    };
    invalid(
        create_certificate(&channel, Some(&billing), request(&ask, 100 * 24 * 3600))
            .await
            .unwrap_err(),
        "exceeds the maximum",
    );
    invalid(
        create_certificate(
            &channel,
            Some(&billing),
            request(&csr("rsa:1024", "DNS:x"), 0),
        )
        .await
        .unwrap_err(),
        "1024 bits is too weak",
    );
    invalid(
        create_certificate(&channel, Some(&billing), request("not a csr", 0))
            .await
            .unwrap_err(),
        "CSR: cannot parse",
    );
    // A CSR whose signature does not match its key: flip the last byte.
    let b64: String = ask.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let n = der.len();
    der[n - 1] ^= 1;
    let bad = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    );
    invalid(
        create_certificate(&channel, Some(&billing), request(&bad, 0))
            .await
            .unwrap_err(),
        "signature does not verify",
    );

    // A valid credential buys a certificate only for a workload the registry runs under the
    // service account it proves: not for one gone (or never there), not after the workload
    // moved to another service account.
    let refused = |e: tonic::Status, want: &str| {
        assert_eq!(e.code(), Code::PermissionDenied, "{e}");
        assert!(e.message().contains(want), "{want:?} not in {e}");
    };
    let ghost = server.credential("ghost-v1", "voicecore-ai", "billing-service");
    refused(
        create_certificate(&channel, Some(&ghost), request(&ask, 0))
            .await
            .unwrap_err(),
        "ghost-v1.voicecore-ai is not in the registry",
    );
    let renamed = server.credential("billing-service-v1", "voicecore-ai", "old-account");
    refused(
        create_certificate(&channel, Some(&renamed), request(&ask, 0))
            .await
            .unwrap_err(),
        "now runs as service account `billing-service`; the credential proves `old-account`",
    );

    // The counters.
    let metrics = reqwest::get(format!("{}/metrics", server.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "meshd_csr_signed_total 2",
        "meshd_csr_rejected_total{reason=\"unauthenticated\"} 2",
        "meshd_csr_rejected_total{reason=\"ttl_too_long\"} 1",
        "meshd_csr_rejected_total{reason=\"weak_key\"} 1",
        "meshd_csr_rejected_total{reason=\"malformed\"} 1",
        "meshd_csr_rejected_total{reason=\"bad_signature\"} 1",
        "meshd_csr_rejected_total{reason=\"unregistered\"} 2",
        "meshd_certs_expiring_soon{kind=\"root\"} 0",
        // The same under Istio's names: 2 signed + 8 refused.
        "citadel_server_csr_count 10",
        "citadel_server_authentication_failure_count 4",
        "citadel_server_csr_parsing_err_count 3",
        "citadel_server_csr_sign_err_count 1",
        "citadel_server_id_extraction_err_count 0",
        "meshd_csr_sign_duration_seconds_count 2",
        "meshd_certs_expiring_soon{kind=\"server\"} 0",
    ] {
        assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
    }
    let issued: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meshd_certs_issued_total{kind=\"workload\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(issued >= 2, "{metrics}");
    let istio_issued: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("citadel_server_success_cert_issuance_count "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(istio_issued, issued);
    let root_expiry: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("citadel_server_root_cert_expiry_timestamp "))
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(root_expiry > now + 365 * 24 * 3600, "{root_expiry}");
    assert!(
        metrics.contains("meshd_certs_issued_total{kind=\"server\"} 1"),
        "{metrics}"
    );

    // The serving certificate names only what it should.
    assert!(tls_channel(&server, "evil.example").await.is_err());
}

#[tokio::test]
async fn ads_over_tls() {
    let server = TestServer::start(None).await.unwrap();
    let billing = server.credential("billing-service-v1", "voicecore-ai", "billing-service");
    let channel = tls_channel(&server, "localhost").await.unwrap();
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: BILLING.into(),
            ..Default::default()
        }),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {billing}").parse().unwrap(),
    );
    let mut stream = client
        .stream_aggregated_resources(req)
        .await
        .unwrap()
        .into_inner();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.type_url, CLUSTER);
    assert!(!resp.resources.is_empty());

    // Without a credential the stream is refused, as on the plaintext port.
    let channel = tls_channel(&server, "127.0.0.1").await.unwrap();
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (_tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(1);
    let e = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

/// A plug-in intermediate with 3 days left: counted as expiring soon (only an operator can
/// renew it); the leaves it signs are clamped to it and not flagged while rotating normally.
#[tokio::test]
async fn expiring_plugin_intermediate_is_flagged() {
    let state = tempfile::tempdir().unwrap();
    let d = |f: &str| state.path().join(f).display().to_string();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &d("root-key.tmp"),
            "-out",
            &d("root-cert.pem"),
            "-days",
            "365",
            "-subj",
            "/O=test/CN=root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        None,
    );
    let csr = openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &d("ca-key.pem"),
            "-subj",
            "/O=test/CN=intermediate",
        ],
        None,
    );
    std::fs::write(
        state.path().join("ext.cnf"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    let ca_cert = openssl(
        &[
            "x509",
            "-req",
            "-CA",
            &d("root-cert.pem"),
            "-CAkey",
            &d("root-key.tmp"),
            "-CAcreateserial",
            "-days",
            "3",
            "-extfile",
            &d("ext.cnf"),
        ],
        Some(&csr),
    );
    std::fs::write(state.path().join("ca-cert.pem"), &ca_cert).unwrap();
    std::fs::write(state.path().join("cert-chain.pem"), &ca_cert).unwrap();
    std::fs::remove_file(state.path().join("root-key.tmp")).unwrap();

    let app = meshd::app::build(meshd::testing::config(state.path(), None))
        .await
        .unwrap();
    let metrics = reqwest::get(format!("http://{}/metrics", app.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "meshd_certs_expiring_soon{kind=\"intermediate\"} 1",
        "meshd_certs_expiring_soon{kind=\"root\"} 0",
        "meshd_certs_expiring_soon{kind=\"server\"} 0",
    ] {
        assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
    }
    let left: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meshd_cert_expiring_min_seconds_left "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(left > 2 * 86400 && left <= 3 * 86400, "{left}");
    app.shutdown().await.unwrap();
}
