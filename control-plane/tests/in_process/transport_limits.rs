//! Transport limits on every listener, against the whole control plane in-process: an h2 reset
//! flood gets GOAWAY, silent and half-sent connections are closed, idle and old connections are
//! closed, the connection cap refuses
//! the connection over it, an oversized ADS message is refused, unknown type URLs leave no
//! state, and failed authentications are rate-limited per address.
//!
//! Closing is asserted, never how fast: each wait has a generous guard only so that a broken
//! server fails the test instead of hanging it.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshd::app::{self, Config};
use meshd::testing::TestServer;
use meshd::transport::TransportLimits;
use meshd_ca::{CaConfig, CertificateAuthority};
use meshd_xds::resource::CLUSTER;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::StreamExt;
use tonic::codegen::http;

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const BILLING: &str =
    "sidecar~10.44.0.17~billing-service-v1.voicecore-ai~voicecore-ai.svc.cluster.local";
/// Far longer than any limit these tests set; only keeps a broken server from hanging them.
const GUARD: Duration = Duration::from_secs(60);

async fn start(limits: impl FnOnce(&mut TransportLimits), webhook: bool) -> TestServer {
    let state_dir = tempfile::tempdir().unwrap();
    let mut config: Config = meshd::testing::config(state_dir.path(), None);
    limits(&mut config.limits);
    if webhook {
        config.webhook = Some(meshd::webhook::WebhookConfig::new(
            0,
            "meshd",
            "meshd-system",
            meshd_injector::InjectConfig::for_namespace("meshd-system"),
        ));
    }
    let app = app::build(config).await.expect("meshd starts");
    TestServer {
        app,
        state_dir,
        config_dir: None,
    }
}

fn short_timeouts(l: &mut TransportLimits) {
    l.handshake_timeout = Duration::from_millis(300);
    l.header_read_timeout = Duration::from_millis(300);
}

/// Reads until the server closes the connection (EOF or reset); panics if it never does.
async fn closed_by_server(mut io: impl AsyncRead + Unpin, what: &str) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(GUARD, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{what}: the server left the connection open"
    );
}

fn grpc_request(addr: SocketAddr, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    client
}

/// Whether the server answers a request on a new HTTP/2 connection (an unknown method: an
/// answer that costs no authentication).
async fn answered(addr: SocketAddr) -> Option<h2::client::SendRequest<bytes::Bytes>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (client, conn) = h2::client::handshake(tcp).await.ok()?;
    tokio::spawn(conn);
    let mut client = client.ready().await.ok()?;
    let (resp, _) = client
        .send_request(grpc_request(addr, "/meshd.test/Nothing"), true)
        .ok()?;
    tokio::time::timeout(GUARD, resp).await.ok()?.ok()?;
    Some(client)
}

#[tokio::test]
async fn an_h2_reset_flood_on_one_unauthenticated_connection_gets_goaway() {
    // Default limits: the cap tonic's defaults turned off is back (1024).
    let server = TestServer::start(None).await.unwrap();
    let addr = server.app.xds_addr.expect("file mode serves plaintext xDS");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    // Each request is malformed (END_STREAM on headers announcing a body): the server must
    // reset the stream itself ("MadeYouReset"). Bounded at 4× the default cap.
    for _ in 0..4 * TransportLimits::default().max_local_error_reset_streams {
        let Ok(mut ready) = client.clone().ready().await else {
            break;
        };
        let mut req = grpc_request(addr, SOTW_PATH);
        req.headers_mut()
            .insert("content-length", http::HeaderValue::from_static("1"));
        let Ok((resp, _)) = ready.send_request(req, true) else {
            break;
        };
        let _ = resp.await;
        client = ready;
    }
    drop(client);
    let ended = tokio::time::timeout(GUARD, conn)
        .await
        .expect("the connection ended")
        .unwrap();
    let err = ended.expect_err("the server ended the connection with GOAWAY, not quietly");
    assert!(err.is_go_away(), "{err}");
    assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err}");
}

#[tokio::test]
async fn silent_connections_to_the_xds_ports_are_closed() {
    let server = start(short_timeouts, false).await;
    let silent = TcpStream::connect(server.app.xds_addr.expect("file mode serves plaintext xDS"))
        .await
        .unwrap();
    closed_by_server(silent, "xDS port, no preface").await;
    let mut preface_only =
        TcpStream::connect(server.app.xds_addr.expect("file mode serves plaintext xDS"))
            .await
            .unwrap();
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    closed_by_server(preface_only, "xDS port, preface but no request").await;
    let silent = TcpStream::connect(server.app.xds_tls_addr).await.unwrap();
    closed_by_server(silent, "xDS TLS port, no handshake").await;
    assert!(
        answered(server.app.xds_addr.expect("file mode serves plaintext xDS"))
            .await
            .is_some(),
        "still serving"
    );
}

/// A connection whose requests have all ended is closed after the idle timeout; one that is
/// not idle is told to reconnect (GOAWAY) at its maximum age. The client keeps its handle to
/// the connection throughout, so only the server can end it.
#[tokio::test]
async fn idle_and_old_xds_connections_are_closed_by_the_server() {
    async fn ended_by_server(server: &TestServer, what: &str) {
        let addr = server.app.xds_addr.expect("file mode serves plaintext xDS");
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let (resp, _) = client
            .send_request(grpc_request(addr, "/meshd.test/Nothing"), true)
            .unwrap();
        resp.await.expect("answered");
        let ended = tokio::time::timeout(GUARD, conn).await;
        assert!(ended.is_ok(), "{what}: the server left the connection open");
        drop(client);
    }
    let idle = start(
        |l| {
            l.xds_idle_timeout = Duration::from_millis(300);
            l.xds_max_connection_age_grace = Duration::from_millis(300);
        },
        false,
    )
    .await;
    ended_by_server(&idle, "idle past the idle timeout").await;
    let old = start(
        |l| {
            l.xds_max_connection_age = Duration::from_millis(300);
            l.xds_max_connection_age_grace = Duration::from_millis(300);
        },
        false,
    )
    .await;
    ended_by_server(&old, "past its maximum age").await;
    assert!(
        answered(old.app.xds_addr.expect("file mode serves plaintext xDS"))
            .await
            .is_some(),
        "still serving"
    );
}

#[tokio::test]
async fn a_half_sent_request_to_the_admin_port_is_closed() {
    let server = start(short_timeouts, false).await;
    let mut half = TcpStream::connect(server.app.admin_addr).await.unwrap();
    half.write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: meshd\r\n")
        .await
        .unwrap();
    closed_by_server(half, "admin port, half-sent headers").await;
    // A whole request, then a half-sent one on the kept-alive connection: the header-read
    // timeout, not the (2 min) idle timeout, closes it.
    let mut kept = TcpStream::connect(server.app.admin_addr).await.unwrap();
    kept.write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: meshd\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(GUARD, kept.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    kept.write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: me")
        .await
        .unwrap();
    closed_by_server(kept, "admin port, half-sent second request").await;
    let health = reqwest::get(format!("{}/healthz/ready", server.admin_url()))
        .await
        .unwrap();
    assert!(health.status().is_success(), "still serving");
}

#[tokio::test]
async fn silent_and_half_sent_connections_to_the_webhook_are_closed() {
    let server = start(short_timeouts, true).await;
    let webhook = server.app.webhook_addr.expect("webhook listening");
    let mut tls = tls_connect(&server, webhook, "meshd.meshd-system.svc").await;
    tls.write_all(b"POST /inject HTTP/1.1\r\nhost: meshd.meshd-system.svc\r\ncontent-type: appl")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    closed_by_server(tls, "webhook port, half-sent headers").await;
    let silent = TcpStream::connect(webhook).await.unwrap();
    closed_by_server(silent, "webhook port, no handshake").await;
}

async fn tls_connect(
    server: &TestServer,
    addr: SocketAddr,
    name: &str,
) -> impl AsyncRead + AsyncWrite + Unpin {
    let root = CertificateAuthority::load_or_create(&CaConfig {
        state_dir: server.state_dir.path().to_path_buf(),
        ..CaConfig::default()
    })
    .unwrap()
    .root_cert_pem();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

#[tokio::test]
async fn the_connection_cap_refuses_the_connection_over_it() {
    let server = start(|l| l.xds_max_connections = 2, false).await;
    let addr = server.app.xds_addr.expect("file mode serves plaintext xDS");
    let first = answered(addr).await.expect("first connection served");
    let second = answered(addr).await.expect("second connection served");
    let third = TcpStream::connect(addr).await.unwrap();
    closed_by_server(third, "connection over the cap").await;
    // The two admitted ones still work.
    for c in [first.clone(), second.clone()] {
        let mut c = c.ready().await.unwrap();
        let (resp, _) = c
            .send_request(grpc_request(addr, "/meshd.test/Nothing"), true)
            .unwrap();
        resp.await
            .expect("an admitted connection keeps being served");
    }
    // Closing one frees its place.
    drop(first);
    // Until the server has seen the close, attempts are still over the cap (and counted).
    let mut refused_meanwhile = 0;
    let freed = tokio::time::timeout(GUARD, async {
        loop {
            if let Some(c) = answered(addr).await {
                return c;
            }
            refused_meanwhile += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "a closed connection's place was never freed");
    drop(second);
    let metrics = reqwest::get(format!("{}/metrics", server.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = format!(
        "meshd_connections_refused_total{{listener=\"xds\"}} {}",
        1 + refused_meanwhile
    );
    assert!(metrics.contains(&refused), "{refused} in {metrics}");
}

fn billing_credential(server: &TestServer) -> String {
    server.credential("billing-service-v1", "voicecore-ai", "billing-service")
}

#[tokio::test]
async fn an_ads_message_over_the_size_limit_is_refused_without_waiting_for_it() {
    let server = start(|_| {}, false).await;
    let addr = server.app.xds_addr.expect("file mode serves plaintext xDS");
    let mut client = h2_client(addr).await.ready().await.unwrap();
    let mut req = grpc_request(addr, SOTW_PATH);
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", billing_credential(&server))
            .parse()
            .unwrap(),
    );
    let (resp, mut body) = client.send_request(req, false).unwrap();
    // Declares 8 MiB (over the 4 MiB limit, under the old 16 MiB one) and sends 5 bytes.
    body.send_data(
        bytes::Bytes::from_static(&[0, 0, 0x80, 0, 0, 1, 2, 3, 4, 5]),
        false,
    )
    .unwrap();
    let resp = tokio::time::timeout(GUARD, resp)
        .await
        .expect("an answer to the oversized message")
        .unwrap();
    let (head, mut stream) = resp.into_parts();
    let status = match head.headers.get("grpc-status") {
        Some(s) => s.clone(),
        None => {
            while let Some(chunk) = tokio::time::timeout(GUARD, stream.data())
                .await
                .expect("the stream ends")
            {
                let _ = chunk;
            }
            let trailers = tokio::time::timeout(GUARD, stream.trailers())
                .await
                .expect("trailers")
                .unwrap()
                .expect("a status in trailers");
            trailers.get("grpc-status").unwrap().clone()
        }
    };
    assert_eq!(
        status.to_str().unwrap(),
        (tonic::Code::ResourceExhausted as i32).to_string(),
        "RESOURCE_EXHAUSTED"
    );
}

#[tokio::test]
async fn unknown_type_urls_get_no_answer_and_leave_no_state() {
    let server = TestServer::start(None).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", billing_credential(&server))
            .parse()
            .unwrap(),
    );
    let node = Some(Node {
        id: BILLING.into(),
        ..Default::default()
    });
    for i in 0..50 {
        tx.send(DiscoveryRequest {
            node: if i == 0 { node.clone() } else { None },
            type_url: format!("type.googleapis.com/made.up.Type{i}"),
            resource_names: vec![format!("name-{i}")],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    tx.send(DiscoveryRequest {
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = AggregatedDiscoveryServiceClient::connect(server.xds_url())
        .await
        .unwrap()
        .stream_aggregated_resources(req)
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(GUARD, responses.next())
        .await
        .expect("a response")
        .expect("stream open")
        .expect("a response, not an error");
    assert_eq!(first.type_url, CLUSTER, "made-up types got no answer");
    let all: Value = reqwest::get(format!("{}/debug/syncz", server.admin_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let proxy = all
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["proxy_id"] == BILLING)
        .expect("billing connected");
    let types: Vec<&String> = proxy["types"].as_object().unwrap().keys().collect();
    assert_eq!(types, [CLUSTER], "no state for made-up types");
    drop(tx);
}

#[tokio::test]
async fn failed_authentications_from_one_address_are_refused_before_the_check() {
    let server = start(
        |l| {
            l.auth_failure_burst = 3;
            l.auth_failures_per_minute = 1;
        },
        false,
    )
    .await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        let (_tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(1);
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut()
            .insert("authorization", "Bearer meshd1.forged".parse().unwrap());
        let got = AggregatedDiscoveryServiceClient::connect(server.xds_url())
            .await
            .unwrap()
            .stream_aggregated_resources(req)
            .await;
        match got {
            Ok(_) => panic!("a forged credential was accepted"),
            Err(status) => codes.push(status.code()),
        }
    }
    use tonic::Code::{ResourceExhausted, Unauthenticated};
    assert_eq!(
        codes,
        [
            Unauthenticated,
            Unauthenticated,
            Unauthenticated,
            ResourceExhausted,
            ResourceExhausted
        ]
    );
    // A good credential from the same address is refused too until the budget refills: the
    // limit is per address, before any check.
    let mut ok = tonic::Request::new(tokio_stream::iter(vec![DiscoveryRequest::default()]));
    ok.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", billing_credential(&server))
            .parse()
            .unwrap(),
    );
    let got = AggregatedDiscoveryServiceClient::connect(server.xds_url())
        .await
        .unwrap()
        .stream_aggregated_resources(ok)
        .await;
    assert_eq!(got.err().map(|s| s.code()), Some(ResourceExhausted));
    let metrics = reqwest::get(format!("{}/metrics", server.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in ["meshd_auth_throttled_total 3", "meshd_auth_failing_peers 1"] {
        assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
    }
}
