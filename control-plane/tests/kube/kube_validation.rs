//! Istio config validation through a real kube-apiserver v1.20.2: meshd's `/validate` webhook
//! registered as a ValidatingWebhookConfiguration (its caBundle set by meshd), so `kubectl apply` of an object meshd would
//! reject fails at the API server with meshd's message naming the field, and valid objects
//! (also those with fields meshd accepts but does not apply yet) are stored.

use crate::kube_support;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube_support::*;
use meshd_injector::InjectConfig;
use serde_json::{Value, json};

const VALIDATOR: &str = "meshd-validator-meshd-system";

/// Creates an Istio object through the API server (the webhook sees it first).
async fn try_create(client: &Client, obj: Value) -> Result<(), kube::Error> {
    let kind = obj["kind"].as_str().unwrap().to_string();
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", &kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, &format!("{}s", kind.to_ascii_lowercase()));
    let ns = obj["metadata"]["namespace"].as_str().unwrap().to_string();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let dynamic: DynamicObject = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &dynamic)
        .await
        .map(|_| ())
}

fn virtual_service(name: &str, timeout: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"hosts": ["web"], "http": [{
            "route": [{"destination": {"host": "web"}}],
            "timeout": timeout,
        }]},
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_refuses_what_meshd_would_reject_with_meshds_message() {
    let server = ApiServer::start();
    let client = server.client().await;
    create(&client, namespace(MESHD_NS, json!({}))).await;
    create(&client, namespace("shop", json!({}))).await;
    for crd in istio_crds() {
        create(&client, crd).await;
    }

    let state = tempfile::tempdir().unwrap();
    let mut cfg = meshd::testing::config(state.path(), None);
    cfg.kubernetes = Some(meshd::kube::KubeConfig {
        webhook_config: None,
        validating_webhook_config: Some(VALIDATOR.into()),
        resync: std::time::Duration::from_secs(1),
        ..kube_config(&server)
    });
    cfg.xds_plaintext = false;
    cfg.webhook = Some(meshd::webhook::WebhookConfig::new(
        0,
        "meshd",
        MESHD_NS,
        InjectConfig::for_namespace(MESHD_NS),
    ));
    let app = meshd::app::build(cfg).await.expect("meshd starts");
    let port = app.webhook_addr.expect("webhook listening").port();
    // As the chart installs it: no caBundle; meshd (the leader) sets the mesh root.
    create(
        &client,
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": VALIDATOR},
            "webhooks": [{
                "name": "validation.meshd.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
                "clientConfig": {"url": format!("https://localhost:{port}/validate")},
                "rules": [{
                    "operations": ["CREATE", "UPDATE"],
                    "apiGroups": ["networking.istio.io", "security.istio.io"],
                    "apiVersions": ["*"],
                    "resources": ["*"],
                }],
            }],
        }),
    )
    .await;

    let secret: Secret = Api::namespaced(client.clone(), MESHD_NS)
        .get("meshd-ca")
        .await
        .unwrap();
    let root = String::from_utf8(secret.data.unwrap()["root-cert.pem"].0.clone()).unwrap();
    eventually(30, "meshd to set the validator's caBundle", || {
        let client = client.clone();
        let root = root.clone();
        async move {
            let config = Api::<ValidatingWebhookConfiguration>::all(client)
                .get(VALIDATOR)
                .await
                .ok()?;
            let bundle = config.webhooks?.first()?.client_config.ca_bundle.clone()?;
            (bundle.0 == root.as_bytes()).then_some(())
        }
    })
    .await;

    // The API server starts calling a new webhook configuration after a moment: wait for the
    // first refusal of an invalid object, then check what it says.
    let refusal = eventually(30, "the API server calling meshd's webhook", || {
        let client = client.clone();
        async move {
            match try_create(&client, virtual_service("bomb", "99999999999999999999s")).await {
                // The API server may still verify the webhook with the bundle it had before
                // meshd set its CA: that call fails (x509), and a later one reaches meshd.
                Err(kube::Error::Api(status))
                    if status.message.contains("failed calling webhook") =>
                {
                    None
                }
                Err(kube::Error::Api(status)) => Some(status),
                Err(e) => panic!("unexpected error: {e}"),
                Ok(()) => {
                    // Stored before the webhook was in force: remove it and try again.
                    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService");
                    let ar = ApiResource::from_gvk_with_plural(&gvk, "virtualservices");
                    let api: Api<DynamicObject> = Api::namespaced_with(client, "shop", &ar);
                    api.delete("bomb", &Default::default()).await.unwrap();
                    None
                }
            }
        }
    })
    .await;
    assert!(
        refusal.message.contains("denied the request")
            && refusal.message.contains("shop/bomb")
            && refusal.message.contains("spec.http[0].timeout"),
        "{}",
        refusal.message
    );

    // Valid objects are stored, also a field meshd accepts but does not apply yet.
    try_create(&client, virtual_service("web", "5s"))
        .await
        .expect("a valid VirtualService is stored");
    try_create(
        &client,
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"host": "web", "trafficPolicy": {"loadBalancer": {
                "localityLbSetting": {"enabled": true}
            }}},
        }),
    )
    .await
    .expect("a DestinationRule with localityLbSetting is stored (with a warning)");
    app.shutdown().await.unwrap();
}
