//! Faults a real cluster throws, against a real kube-apiserver v1.20.2 (+ etcd): the API server
//! is killed (its process, not paused) and started again on the same etcd data. meshd must keep
//! authenticating proxies it knows and pick changes up again promptly once the server returns.
//! Durations are printed as measurements; the only bounds asserted are generous liveness ones.

use crate::kube_support;

use kube_support::*;
use meshd::app;
use meshd::kube::KubeConfig;
use meshd::kube::token::TokenReviewAuth;
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

/// Kills the API server process (etcd keeps running) and waits until it has exited.
fn kill_apiserver(server: &ApiServer) {
    let pid = std::fs::read_to_string(server.dir.path().join("apiserver.pid")).unwrap();
    let pid = pid.trim().to_string();
    assert!(
        Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success()
    );
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    while proc.exists()
        && !std::fs::read_to_string(proc.join("stat")).is_ok_and(|s| s.contains(") Z"))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts etcd + the API server again on the same data directory, port and keys.
fn restart_apiserver(server: &ApiServer) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kube-apiserver.sh");
    let _ = Command::new(&script)
        .arg("stop")
        .arg(server.dir.path())
        .status();
    let out = Command::new(&script)
        .arg("start")
        .arg(server.dir.path())
        .arg(server.port.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restarting kube-apiserver: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn uid(obj: &Value) -> String {
    obj["metadata"]["uid"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reviewed_before_an_outage_keep_authenticating_until_their_expiry() {
    let server = ApiServer::start();
    let client = server.client().await;
    create(&client, namespace("voicecore-ai", json!({}))).await;
    create(&client, service_account("voicecore-ai", "billing")).await;
    let pod = create(
        &client,
        pod(
            "voicecore-ai",
            "billing-v1",
            "billing",
            json!({"app": "billing"}),
            8080,
        ),
    )
    .await;
    let pod_uid = uid(&pod);
    let bound = Some(("billing-v1", pod_uid.as_str()));
    let reviewed = token_request(&client, "voicecore-ai", "billing", "istio-ca", bound).await;
    let refused = token_request(&client, "voicecore-ai", "billing", "other", bound).await;
    let key = server.signing_key();
    // Valid, but never shown to meshd (another `iat`: TokenRequests of the same second are
    // byte-identical).
    let unreviewed = retimed(&reviewed, &key, now_secs() - 7, now_secs() + 600);
    // A token the server accepts once and which expires during the outage.
    let short = retimed(&reviewed, &key, now_secs() - 5, now_secs() + 3);

    let mut auth = TokenReviewAuth::new(client.clone(), "istio-ca", "cluster.local");
    // Every call below asks the API server (no fresh-cache answers hide the outage).
    auth.cache_ttl = Duration::ZERO;
    let id = auth.review(&reviewed).await.expect("reviewed before");
    assert_eq!(id.workload, "billing-v1");
    auth.review(&short)
        .await
        .expect("short-lived token accepted");
    assert!(auth.review(&refused).await.is_err(), "wrong audience");

    kill_apiserver(&server);
    // Past the short token's own expiry (it is what bounds the fallback).
    while now_secs() <= token_exp(&short) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let id = auth
        .review(&reviewed)
        .await
        .expect("a token TokenReview accepted before keeps authenticating during the outage");
    assert_eq!(
        id.spiffe_id(),
        "spiffe://cluster.local/ns/voicecore-ai/sa/billing"
    );
    let e = auth.review(&unreviewed).await.unwrap_err();
    assert!(e.contains("TokenReview failed"), "never reviewed: {e}");
    let e = auth.review(&refused).await.unwrap_err();
    assert!(!e.is_empty(), "a refused token stays refused");
    let e = auth.review(&short).await.unwrap_err();
    assert!(e.contains("TokenReview failed"), "expired meanwhile: {e}");

    restart_apiserver(&server);
    let id = eventually(30, "TokenReview answering again", || {
        let auth = &auth;
        let unreviewed = unreviewed.clone();
        async move { auth.review(&unreviewed).await.ok() }
    })
    .await;
    assert_eq!(id.workload, "billing-v1");
}

fn token_exp(token: &str) -> u64 {
    meshd::kube::token::token_expiry(token)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn has_service(registry: &Value, host: &str) -> bool {
    registry["services"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| s["hostname"] == host))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_flow_again_soon_after_the_api_server_returns() {
    let server = ApiServer::start();
    let client = server.client().await;
    create(&client, namespace(MESHD_NS, json!({}))).await;
    create(&client, namespace("shop", json!({}))).await;
    for crd in istio_crds() {
        create(&client, crd).await;
    }
    create(
        &client,
        service("shop", "web", Some(json!({"app": "web"})), 80, json!(8080)),
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let mut cfg = meshd::testing::config(state.path(), None);
    cfg.kubernetes = Some(kube_config(&server));
    cfg.xds_plaintext = false;
    let app = app::build(cfg).await.expect("meshd starts");
    let registryz = format!("http://{}/debug/registryz", app.admin_addr);
    let ready = format!("http://{}/healthz/ready", app.admin_addr);
    let get = |url: String| async move {
        reqwest::get(&url)
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    assert!(has_service(
        &get(registryz.clone()).await,
        "web.shop.svc.cluster.local"
    ));

    kill_apiserver(&server);
    // A long outage: kube-runtime's default backoff would have grown to its 30 s maximum.
    tokio::time::sleep(Duration::from_secs(45)).await;
    let status = reqwest::get(&ready).await.unwrap().status();
    assert!(
        status.is_success(),
        "still ready during the outage: {status}"
    );
    restart_apiserver(&server);

    let back = Instant::now();
    create(
        &client,
        service(
            "shop",
            "cart",
            Some(json!({"app": "cart"})),
            80,
            json!(8080),
        ),
    )
    .await;
    eventually(
        30,
        "a Service created after the outage in the registry",
        || {
            let url = registryz.clone();
            async move { has_service(&get(url).await, "cart.shop.svc.cluster.local").then_some(()) }
        },
    )
    .await;
    println!(
        "measurement: a new Service reached meshd {:.1} s after the API server returned",
        back.elapsed().as_secs_f64()
    );
}

/// meshd started while the API server is down does not exit: it answers its probes (alive, not
/// ready, and why) and keeps trying, and it becomes ready once the API server returns.
#[tokio::test(flavor = "multi_thread")]
async fn meshd_started_during_an_outage_waits_for_the_api_server_then_serves() {
    let server = ApiServer::start();
    let client = server.client().await;
    create(&client, namespace(MESHD_NS, json!({}))).await;
    for crd in istio_crds() {
        create(&client, crd).await;
    }
    kill_apiserver(&server);

    let state = tempfile::tempdir().unwrap();
    let mut cfg = meshd::testing::config(state.path(), None);
    // The admin port must be known before `build` returns: it answers while starting.
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    cfg.admin_port = admin_port;
    cfg.kubernetes = Some(KubeConfig {
        ca_timeout: Duration::from_secs(10),
        ..kube_config(&server)
    });
    cfg.xds_plaintext = false;
    let starting = tokio::spawn(app::build(cfg));
    let probe = |path: &'static str| async move {
        let resp = reqwest::get(format!("http://127.0.0.1:{admin_port}{path}"))
            .await
            .ok()?;
        Some((
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        ))
    };
    eventually(30, "meshd answering its liveness probe", || async {
        probe("/healthz/live")
            .await
            .filter(|(code, _)| *code == 200)
    })
    .await;
    // Not ready, and the probe says why; seen after at least one failed attempt.
    let (code, why) = eventually(
        30,
        "a readiness answer naming the failed attempt",
        || async {
            probe("/healthz/ready")
                .await
                .filter(|(_, body)| body.contains("failed (attempt"))
        },
    )
    .await;
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("Kubernetes API server"), "{why}");
    assert!(
        !starting.is_finished(),
        "meshd gave up while the API server was down"
    );

    restart_apiserver(&server);
    let back = Instant::now();
    let app = tokio::time::timeout(Duration::from_secs(120), starting)
        .await
        .expect("meshd ready within two minutes of the API server's return")
        .unwrap()
        .expect("meshd starts once the API server is back");
    println!(
        "measurement: meshd started {:.1} s after the API server returned",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(app.admin_addr.port(), admin_port);
    let (code, body) = probe("/healthz/ready")
        .await
        .expect("the admin API answers");
    assert_eq!(code, 200, "{body}");
    assert_eq!(probe("/healthz/live").await.map(|(c, _)| c), Some(200));
}
