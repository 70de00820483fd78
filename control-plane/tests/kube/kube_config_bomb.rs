//! The duration bomb as a Kubernetes custom resource, against a real kube-apiserver v1.20.2:
//! the CRDs accept any value, so the object reaches meshd's watch. On main it panicked the
//! watch, the process exited and every replica crash-looped; now it is rejected with its
//! namespace, name and field (in `/debug/configz` and as a Warning Event on the object), and
//! meshd stays up, ready, and watching.

use crate::kube_support;

use k8s_openapi::api::core::v1::Event;
use kube::api::Api;
use kube_support::*;
use serde_json::{Value, json};

fn virtual_service(name: &str, timeout: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": name, "namespace": "shop"},
           "spec": {"hosts": ["web"], "http": [{"timeout": timeout,
                    "route": [{"destination": {"host": "web"}}]}]}})
}

async fn get(url: String) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|o| o["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duration_bomb_resource_is_reported_and_meshd_stays_ready() {
    let server = ApiServer::start();
    let client = server.client().await;
    create(&client, namespace(MESHD_NS, json!({}))).await;
    create(&client, namespace("shop", json!({}))).await;
    for crd in istio_crds() {
        create(&client, crd).await;
    }
    create(&client, virtual_service("before", "5s")).await;

    let state = tempfile::tempdir().unwrap();
    let mut cfg = meshd::testing::config(state.path(), None);
    cfg.kubernetes = Some(kube_config(&server));
    let app = meshd::app::build(cfg).await.expect("meshd starts");
    let admin = format!("http://{}", app.admin_addr);

    // Through the watch, as an `Apply` event: the path that crash-looped.
    create(&client, virtual_service("bomb", "99999999999999999999s")).await;
    let configz = format!("{admin}/debug/configz");
    let cfg = eventually(30, "the bomb reported", || {
        let url = configz.clone();
        async move {
            let cfg: Value = serde_json::from_str(&get(url).await.1).ok()?;
            named(&cfg["rejected"], "bomb")?;
            Some(cfg)
        }
    })
    .await;
    let bomb = named(&cfg["rejected"], "bomb").unwrap();
    assert_eq!(bomb["namespace"], "shop", "{bomb}");
    assert_eq!(bomb["kind"], "VirtualService", "{bomb}");
    let reason = bomb["reason"].as_str().unwrap();
    assert!(reason.contains("spec.http[0].timeout"), "{reason}");
    assert!(reason.contains("out of range"), "{reason}");
    assert!(named(&cfg["accepted"], "before").is_some(), "{cfg:#}");
    // And where `kubectl get events` looks: a Warning Event on the object, naming the field.
    let event = eventually(30, "a Rejected Event on the bomb", || {
        let client = client.clone();
        async move {
            let events: Api<Event> = Api::namespaced(client, "shop");
            events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| e.involved_object.name.as_deref() == Some("bomb"))
        }
    })
    .await;
    assert_eq!(event.reason.as_deref(), Some("Rejected"));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.involved_object.kind.as_deref(),
        Some("VirtualService")
    );
    let message = event.message.unwrap_or_default();
    assert!(message.contains("spec.http[0].timeout"), "{message}");
    assert_eq!(
        get(format!("{admin}/healthz/ready")).await,
        (200, "ready\n".to_string())
    );

    // Still watching: the next object is read.
    create(&client, virtual_service("after", "7s")).await;
    eventually(30, "the next object accepted", || {
        let url = configz.clone();
        async move {
            let cfg: Value = serde_json::from_str(&get(url).await.1).ok()?;
            named(&cfg["accepted"], "after").map(|_| ())
        }
    })
    .await;
    let (_, metrics) = get(format!("{admin}/metrics")).await;
    assert!(
        metrics.contains("meshd_task_up{task=\"config-source\"} 1"),
        "{metrics}"
    );
    app.shutdown().await.unwrap();
}
