//! Keeps the `caBundle` of meshd's webhook configurations (the injector's
//! MutatingWebhookConfiguration, the config validator's ValidatingWebhookConfiguration) equal
//! to the mesh's trust bundle, so the API server trusts the webhook's serving certificate: set on start, restored
//! when an install or upgrade empties it, and followed through root rotations (both roots while
//! one is underway).
//!
//! Only the leader writes; every write is a JSON patch that first `test`s each webhook's name at
//! its index, so a configuration reordered meanwhile fails the patch instead of being mangled.

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use meshd_ca::CertificateAuthority;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The `caBundle` for a trust bundle (PEM): its base64.
pub fn ca_bundle(bundle_pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(bundle_pem)
}

/// The JSON patch (RFC 6902) that sets `ca_bundle` on every webhook of `config` (a
/// MutatingWebhookConfiguration as JSON) whose `clientConfig.caBundle` differs; `None` when all
/// are current.
pub fn ca_bundle_patch(config: &Value, ca_bundle: &str) -> Option<Value> {
    let webhooks = config.get("webhooks")?.as_array()?;
    let mut ops = Vec::new();
    for (i, w) in webhooks.iter().enumerate() {
        if w.pointer("/clientConfig/caBundle").and_then(Value::as_str) == Some(ca_bundle) {
            continue;
        }
        let Some(name) = w.get("name").and_then(Value::as_str) else {
            continue;
        };
        if w.get("clientConfig").is_none_or(|c| !c.is_object()) {
            continue;
        }
        ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": name}));
        ops.push(json!({
            "op": "add",
            "path": format!("/webhooks/{i}/clientConfig/caBundle"),
            "value": ca_bundle,
        }));
    }
    (!ops.is_empty()).then_some(Value::Array(ops))
}

#[derive(Debug, PartialEq, Eq)]
enum Synced {
    Current,
    Patched(usize),
    Missing,
}

/// A webhook configuration kind whose caBundle meshd keeps.
pub trait WebhookConfiguration:
    kube::Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::Serialize
    + serde::de::DeserializeOwned
{
}

impl WebhookConfiguration for MutatingWebhookConfiguration {}
impl WebhookConfiguration for ValidatingWebhookConfiguration {}

async fn sync_once<K: WebhookConfiguration>(
    api: &Api<K>,
    name: &str,
    bundle: &str,
) -> Result<Synced, kube::Error> {
    let Some(current) = api.get_opt(name).await? else {
        return Ok(Synced::Missing);
    };
    let value = serde_json::to_value(&current).map_err(kube::Error::SerdeError)?;
    let Some(ops) = ca_bundle_patch(&value, bundle) else {
        return Ok(Synced::Current);
    };
    let count = ops.as_array().map_or(0, |o| o.len() / 2);
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(kube::Error::SerdeError)?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await?;
    Ok(Synced::Patched(count))
}

/// While this replica leads: every `resync` (and at once when leadership comes), makes the
/// caBundle of the webhook configuration `name` (of kind `K`) the CA's trust bundle.
pub async fn keep_ca_bundle<K: WebhookConfiguration>(
    client: Client,
    name: String,
    ca: Arc<CertificateAuthority>,
    mut leader: watch::Receiver<bool>,
    resync: Duration,
) {
    let api: Api<K> = Api::all(client);
    let kind = K::kind(&());
    let mut last: Option<Synced> = None;
    loop {
        if *leader.borrow_and_update() {
            let bundle = ca_bundle(&ca.root_cert_pem());
            match sync_once(&api, &name, &bundle).await {
                Ok(Synced::Patched(n)) => {
                    tracing::info!(webhook_config = %name, webhooks = n, "caBundle set to the mesh trust bundle");
                    last = Some(Synced::Patched(n));
                }
                Ok(state) => {
                    if state == Synced::Missing && last != Some(Synced::Missing) {
                        tracing::info!(webhook_config = %name, %kind, "no webhook configuration of that name yet; its caBundle is set once it exists");
                    }
                    last = Some(state);
                }
                Err(e) => {
                    tracing::warn!(webhook_config = %name, error = %e, "cannot set the webhook's caBundle")
                }
            }
        }
        tokio::select! {
            r = leader.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(resync) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(bundles: &[Option<&str>]) -> Value {
        let webhooks: Vec<Value> = bundles
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut client = json!({"service": {"name": "meshd", "namespace": "meshd-system",
                                                    "path": "/inject", "port": 15017}});
                if let Some(b) = b {
                    client["caBundle"] = json!(b);
                }
                json!({"name": format!("w{i}.meshd.io"), "clientConfig": client})
            })
            .collect();
        json!({"apiVersion": "admissionregistration.k8s.io/v1",
               "kind": "MutatingWebhookConfiguration",
               "metadata": {"name": "meshd-sidecar-injector-meshd-system"},
               "webhooks": webhooks})
    }

    fn apply(doc: &Value, ops: Value) -> Value {
        let mut doc = doc.clone();
        let patch: json_patch::Patch = serde_json::from_value(ops).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        doc
    }

    #[test]
    fn sets_every_missing_or_stale_bundle_and_nothing_else() {
        let doc = config(&[None, Some("b2xk"), Some("bmV3")]);
        let ops = ca_bundle_patch(&doc, "bmV3").expect("two are stale");
        assert_eq!(ops.as_array().unwrap().len(), 4, "{ops}");
        let patched = apply(&doc, ops);
        for w in patched["webhooks"].as_array().unwrap() {
            assert_eq!(w["clientConfig"]["caBundle"], "bmV3");
            assert_eq!(w["clientConfig"]["service"]["port"], 15017);
        }
        assert_eq!(ca_bundle_patch(&patched, "bmV3"), None);
    }

    #[test]
    fn a_reordered_configuration_fails_the_patch() {
        let doc = config(&[None, None]);
        let ops = ca_bundle_patch(&doc, "eA==").unwrap();
        let mut reordered = doc.clone();
        reordered["webhooks"].as_array_mut().unwrap().swap(0, 1);
        let patch: json_patch::Patch = serde_json::from_value(ops).unwrap();
        assert!(json_patch::patch(&mut reordered, &patch).is_err());
    }

    #[test]
    fn odd_shapes_yield_no_patch() {
        assert_eq!(ca_bundle_patch(&json!({}), "eA=="), None);
        assert_eq!(ca_bundle_patch(&json!({"webhooks": "x"}), "eA=="), None);
        assert_eq!(
            ca_bundle_patch(&json!({"webhooks": [{"clientConfig": {}}]}), "eA=="),
            None,
            "a webhook without a name cannot be tested, so it is left alone"
        );
    }

    #[test]
    fn bundle_is_base64_of_the_pem() {
        let b = ca_bundle("-----BEGIN CERTIFICATE-----\n");
        assert_eq!(
            base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
            b"-----BEGIN CERTIFICATE-----\n"
        );
    }
}
