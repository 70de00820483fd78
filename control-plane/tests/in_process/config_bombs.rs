//! Hostile config never takes meshd down: the duration bomb that once panicked the parser
//! (`meshd analyze` exited 101, a file dropped into the config dir killed the server) is a
//! rejection naming its file, line and field, and everything else keeps serving.

use meshd::testing::TestServer;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const SERVICE: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
";

/// The bomb is on line 8 of this document.
const BOMB: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bomb, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  http:
  - route: [{destination: {host: web.shop.svc.cluster.local}}]
    timeout: 99999999999999999999s
";

#[test]
fn analyze_reports_the_duration_bomb_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), SERVICE).unwrap();
    let bomb = dir.path().join("bomb.yaml");
    std::fs::write(&bomb, BOMB).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
        .arg("analyze")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let [line] = lines[..] else {
        panic!("one problem expected: {stdout}")
    };
    let at = format!("{}:8: ", bomb.display());
    assert!(line.starts_with(&at), "{line}");
    assert!(line.contains("spec.http[0].timeout"), "{line}");
    assert!(line.contains("out of range"), "{line}");
}

async fn get(url: String) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Polls `/debug/configz` until `done` holds (the config dir is watched with a debounce).
async fn configz_until(server: &TestServer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let url = format!("{}/debug/configz", server.admin_url());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let cfg: Value = serde_json::from_str(&get(url.clone()).await.1).unwrap();
        if done(&cfg) {
            return cfg;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {cfg:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has(list: &Value, name: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|o| o["name"] == name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duration_bomb_dropped_into_the_config_dir_is_rejected_and_the_server_stays_ready() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", SERVICE);
    let server = TestServer::start(Some(dir.path().to_path_buf()))
        .await
        .unwrap();
    configz_until(&server, "web accepted", |c| has(&c["accepted"], "web")).await;

    write(dir.path(), "bomb.yaml", BOMB);
    let cfg = configz_until(&server, "the bomb rejected", |c| {
        has(&c["rejected"], "bomb")
    })
    .await;
    let bomb = cfg["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "bomb")
        .unwrap();
    assert_eq!(
        (&bomb["kind"], &bomb["namespace"]),
        (&Value::from("VirtualService"), &Value::from("shop"))
    );
    let message = bomb["message"].as_str().unwrap();
    assert!(message.contains("bomb.yaml:8: "), "{message}");
    assert!(message.contains("spec.http[0].timeout"), "{message}");
    assert!(has(&cfg["accepted"], "web"), "{cfg:#}");

    let (status, body) = get(format!("{}/healthz/ready", server.admin_url())).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (_, metrics) = get(format!("{}/metrics", server.admin_url())).await;
    assert!(
        metrics.contains("meshd_task_restarts_total{task=\"config-source\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshd_task_up{task=\"config-source\"} 1"),
        "{metrics}"
    );

    // The source is alive: the next edit is read.
    write(
        dir.path(),
        "api.yaml",
        &SERVICE
            .replace("name: web", "name: api")
            .replace("web.shop", "api.shop"),
    );
    configz_until(&server, "api accepted", |c| has(&c["accepted"], "api")).await;
    server.app.shutdown().await.unwrap();
}

/// Written whole under another name, then renamed: the watcher never reads half a file.
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}
