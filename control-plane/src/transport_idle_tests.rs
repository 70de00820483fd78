//! What an idle TLS connection of the xDS/CA port keeps on the heap. Thousands of sidecars hold
//! one connection each, idle between pushes, so whatever a connection keeps while it waits for
//! bytes is paid per proxy (BENCHMARKS.md, issue 19).

use crate::ca_service::ServingCert;
use meshd_ca::{CaConfig, CertificateAuthority};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes allocated and not yet freed by this thread (jemalloc's per-thread counters; the
/// test's runtime runs every task on the test's one thread).
fn held() -> i64 {
    let allocated = tikv_jemalloc_ctl::thread::allocatedp::read().unwrap().get();
    let freed = tikv_jemalloc_ctl::thread::deallocatedp::read()
        .unwrap()
        .get();
    allocated as i64 - freed as i64
}

/// Leaves `stream` waiting for bytes, as an idle connection's reader does.
async fn wait_for_bytes(stream: &mut (impl AsyncRead + Unpin)) {
    let mut byte = [0u8; 1];
    let mut read = std::pin::pin!(stream.read(&mut byte));
    assert!(
        futures::poll!(read.as_mut()).is_pending(),
        "nothing was sent"
    );
}

/// rustls keeps a 4 KB receive buffer between records, on both sides of a connection, for as
/// long as the connection lives; the vendored rustls (vendor/README.md) drops it while the
/// connection waits for bytes. Without that patch the two buffers alone reach the bound below.
#[tokio::test]
async fn an_idle_tls_connection_keeps_no_record_buffer() {
    const PAIRS: usize = 8;
    const MESSAGE: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&CaConfig {
        state_dir: dir.path().to_path_buf(),
        ..CaConfig::default()
    })
    .unwrap();
    let root = CertificateDer::from_pem_slice(ca.root_cert_pem().as_bytes()).unwrap();
    let serving = ServingCert::new(Arc::new(ca), vec!["localhost".to_string()]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(serving.server_config().unwrap());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    // The client's session cache is not the server's cost.
    client.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let message = vec![7u8; MESSAGE];
    let mut received = vec![0u8; MESSAGE];

    let mut servers = Vec::with_capacity(PAIRS);
    let mut clients = Vec::with_capacity(PAIRS);
    let before = held();
    for _ in 0..PAIRS {
        let (tcp, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let name = ServerName::try_from("localhost").unwrap();
        let (client, server) = tokio::join!(
            connector.connect(name, tcp.unwrap()),
            acceptor.accept(accepted.unwrap().0)
        );
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        // Records of full size both ways: each side's buffer grew to hold one.
        let (sent, read) = tokio::join!(
            async {
                client.write_all(&message).await?;
                client.flush().await
            },
            server.read_exact(&mut received)
        );
        sent.unwrap();
        read.unwrap();
        let (sent, read) = tokio::join!(
            async {
                server.write_all(&message).await?;
                server.flush().await
            },
            client.read_exact(&mut received)
        );
        sent.unwrap();
        read.unwrap();
        wait_for_bytes(&mut server).await;
        wait_for_bytes(&mut client).await;
        servers.push(server);
        clients.push(client);
    }
    let per_pair = (held() - before) / PAIRS as i64;
    // Both ends' keys, handshake state and the server's session cache entries: 6.3 KB when
    // written (6464 bytes). The two receive buffers alone would be 8 KB more.
    assert!(
        per_pair < 8 * 1024,
        "an idle TLS connection (both ends) holds {per_pair} bytes"
    );
}

/// h2 queues received frames in one slab per connection, sized for the largest burst it ever
/// queued and kept for the connection's life: a proxy whose requests once piled up while its
/// stream was busy kept every slot. The vendored h2 (vendor/README.md) releases the slots when
/// the queue empties; without that, the burst below leaves 145 KB behind (both ends).
#[tokio::test]
async fn a_drained_http2_connection_keeps_no_frame_slots() {
    // Frames of h2's small-frame threshold, within one stream's initial window.
    const FRAMES: usize = 200;
    const FRAME: usize = 256;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tcp, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (client, server) = tokio::join!(
        h2::client::handshake(tcp.unwrap()),
        h2::server::handshake(accepted.unwrap().0)
    );
    let (mut client, client_conn) = client.unwrap();
    let mut server = server.unwrap();
    tokio::spawn(async move { client_conn.await.unwrap() });
    let request = hyper::http::Request::post("http://localhost/s")
        .body(())
        .unwrap();
    let (_response, mut body) = client.send_request(request, false).unwrap();
    let (request, _respond) = server.accept().await.unwrap().unwrap();
    let mut received = request.into_body();
    // The server's connection keeps reading frames into its queue while nothing reads the
    // stream; its task runs until the client is done.
    let (idle_tx, mut idle_rx) = tokio::sync::mpsc::channel::<()>(1);
    let conn = tokio::spawn(async move {
        let mut idle_tx = Some(idle_tx);
        std::future::poll_fn(|cx| {
            let _ = server.poll_closed(cx);
            if let Some(tx) = idle_tx.take() {
                let _ = tx.try_send(());
            }
            std::task::Poll::<()>::Pending
        })
        .await
    });
    idle_rx.recv().await.unwrap();
    let before = held();
    for _ in 0..FRAMES {
        body.send_data(bytes::Bytes::from(vec![7u8; FRAME]), false)
            .unwrap();
    }
    // Every frame written by the client and queued by the server before any is read.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut got = 0;
    while got < FRAMES * FRAME {
        let chunk = received.data().await.unwrap().unwrap();
        received
            .flow_control()
            .release_capacity(chunk.len())
            .unwrap();
        got += chunk.len();
    }
    // Both ends idle again: nothing queued on either side.
    tokio::task::yield_now().await;
    let kept = held() - before;
    conn.abort();
    assert!(
        kept < 2048,
        "after a burst of {FRAMES} frames, drained, the connection pair kept {kept} bytes"
    );
}
