//! The injection webhook in-process: a real AdmissionReview over HTTPS (verified against the
//! mesh root, with the `meshd.<ns>.svc` name) comes back with a patch; a hostile body gets a
//! clear error.

use meshd::app;
use meshd::webhook::WebhookConfig;
use meshd_ca::{CaConfig, CertificateAuthority};
use meshd_injector::InjectConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn gateway_review() -> Value {
    let pod: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../injector-webhook/tests/fixtures/pods/voicecore-gateway.json"
        ))
        .unwrap(),
    )
    .unwrap();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "e911857d-c318-11e8-bbad-025000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "voicecore-ai",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false
        }
    })
}

/// POST over TLS (HTTP/1.1), verifying the server as `server_name` against `root_pem`.
async fn post(addr: SocketAddr, root_pem: &str, server_name: &str, body: &[u8]) -> (u16, Value) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from(server_name.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake with the webhook (certificate from the mesh CA)");
    let head = format!(
        "POST /inject HTTP/1.1\r\nhost: {server_name}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (status, body)
}

#[tokio::test]
async fn webhook_injects_over_https_and_refuses_hostile_bodies() {
    let state = tempfile::tempdir().unwrap();
    let mut config = meshd::testing::config(state.path(), None);
    config.webhook = Some(WebhookConfig::new(
        0,
        "meshd",
        "meshd-system",
        InjectConfig {
            max_review_bytes: 64 * 1024,
            ..InjectConfig::for_namespace("meshd-system")
        },
    ));
    let app = app::build(config).await.unwrap();
    let addr = app.webhook_addr.expect("webhook listening");
    let root = CertificateAuthority::load_or_create(&CaConfig {
        state_dir: state.path().to_path_buf(),
        ..CaConfig::default()
    })
    .unwrap()
    .root_cert_pem();

    let body = serde_json::to_vec(&gateway_review()).unwrap();
    let (status, review) = post(addr, &root, "meshd.meshd-system.svc", &body).await;
    assert_eq!(status, 200, "{review}");
    let resp = &review["response"];
    assert_eq!(resp["uid"], "e911857d-c318-11e8-bbad-025000000001");
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    // base64 on the wire, as admission/v1 documents it (kube-core alone writes an array).
    use base64::Engine as _;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(
            resp["patch"]
                .as_str()
                .expect("the patch is a base64 string"),
        )
        .unwrap();
    let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    assert!(
        ops.iter().any(|op| op["op"] == "add"
            && op["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/spec/containers/"))
            && op["value"]["name"] == "istio-proxy"
            && op["value"]["image"] == "envoyproxy/envoy:v1.40.0"),
        "{ops:?}"
    );
    // The pod has no init containers yet: they come as one list, capture first (as Istio).
    let inits = ops
        .iter()
        .find(|op| op["path"] == "/spec/initContainers")
        .expect("init containers added");
    assert_eq!(inits["value"][0]["name"], "meshd-init");
    assert_eq!(inits["value"][1]["name"], "meshd-bootstrap");
    assert!(
        inits["value"][1]["args"]
            .as_array()
            .unwrap()
            .contains(&json!("meshd.meshd-system.svc:15012"))
    );

    // The longer Service names are in the certificate too.
    let (status, _) = post(addr, &root, "meshd.meshd-system.svc.cluster.local", &body).await;
    assert_eq!(status, 200);

    // Hostile bodies: clear errors, and the server keeps serving.
    let (status, review) = post(
        addr,
        &root,
        "meshd.meshd-system.svc",
        b"{\"apiVersion\": [[[[",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(review["response"]["allowed"], false);
    let msg = review["response"]["status"]["message"].as_str().unwrap();
    assert!(msg.contains("not JSON"), "{msg}");
    let (status, review) = post(
        addr,
        &root,
        "meshd.meshd-system.svc",
        &vec![b'x'; 64 * 1024 + 1],
    )
    .await;
    assert_eq!(status, 413);
    assert!(
        review["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the injector's limit"),
        "{review}"
    );
    let (status, review) = post(
        addr,
        &root,
        "meshd.meshd-system.svc",
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"kind":"Pod"},"operation":"CREATE","namespace":"x","object":{"spec":{"containers":"nope"}}}}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(review["response"]["uid"], "u1");
    assert_eq!(review["response"]["allowed"], false);
    assert!(
        review["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.containers is not a list")
    );
    let (status, _) = post(addr, &root, "meshd.meshd-system.svc", &body).await;
    assert_eq!(status, 200);
    // A pod that opts out is skipped.
    let mut opted_out = gateway_review();
    opted_out["request"]["object"]["metadata"]["annotations"] =
        json!({"sidecar.istio.io/inject": "false"});
    let (status, review) = post(
        addr,
        &root,
        "meshd.meshd-system.svc",
        &serde_json::to_vec(&opted_out).unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(review["response"]["patch"].is_null(), "{review}");

    // Istio's injector metrics count each outcome.
    let metrics = reqwest::get(format!("http://{}/metrics", app.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "sidecar_injection_requests_total 7",
        "sidecar_injection_success_total 3",
        "sidecar_injection_skip_total 1",
        "sidecar_injection_failure_total 3",
    ] {
        assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
    }
    app.shutdown().await.unwrap();
}

#[test]
fn injector_config_file_overlays_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("injector.yaml");
    std::fs::write(
        &path,
        "proxyImage: registry.local/envoy:v1.40.0\nproxyResources:\n  cpuRequest: 50m\n",
    )
    .unwrap();
    let cfg = meshd::webhook::load_inject_config(Some(&path), "mesh", "meshd", 15012).unwrap();
    assert_eq!(cfg.proxy_image, "registry.local/envoy:v1.40.0");
    assert_eq!(cfg.proxy_resources.cpu_request, "50m");
    assert_eq!(cfg.proxy_resources.memory_limit, "1024Mi");
    assert_eq!(cfg.xds_address, "meshd.mesh.svc:15012");
    assert_eq!(cfg.meshd_namespace, "mesh");
    std::fs::write(&path, "proxyImag: typo\n").unwrap();
    let err = meshd::webhook::load_inject_config(Some(&path), "mesh", "meshd", 15012).unwrap_err();
    assert!(format!("{err:#}").contains("proxyImag"), "{err:#}");
    // The mesh default of proxyStatsMatcher is read, and a regexp Envoy would refuse is an error
    // at start, not a sidecar that never starts.
    std::fs::write(
        &path,
        "proxyStatsMatcher: {inclusionPrefixes: [cluster.outbound]}\n",
    )
    .unwrap();
    let cfg = meshd::webhook::load_inject_config(Some(&path), "mesh", "meshd", 15012).unwrap();
    assert_eq!(
        cfg.proxy_stats_matcher.unwrap().inclusion_prefixes,
        ["cluster.outbound"]
    );
    std::fs::write(&path, "proxyStatsMatcher: {inclusionRegexps: ['(?=x)']}\n").unwrap();
    let err = meshd::webhook::load_inject_config(Some(&path), "mesh", "meshd", 15012).unwrap_err();
    assert!(
        format!("{err:#}").contains("proxyStatsMatcher: inclusionRegexps[0]"),
        "{err:#}"
    );
}
