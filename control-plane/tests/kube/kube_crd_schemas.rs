//! The chart's CRDs (`meshd crds`, schemas from meshd's model) on a real kube-apiserver v1.20.2:
//! they install; every Istio object in the repository's samples — the VoiceCore mesh, the docs'
//! YAML, the YAML the tests feed meshd (the kube round trip's integer-keyed `portLevelMtls` and
//! IPv6 addresses among them) and `fixtures/istio-accepted.yaml` (Istio-valid objects with
//! fields meshd does not know or refuses) — is accepted unchanged and read back equal; and a
//! badly typed object is refused by the API server with a message naming the field.

use crate::kube_support;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube_support::*;
use meshd_model::document_json;
use meshd_model::schema::CRD_KINDS;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const NS: &str = "samples";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Files under `dir` (recursively) whose name ends with one of `suffixes`.
fn files(dir: &Path, suffixes: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files(&path, suffixes, out);
        } else if suffixes.iter().any(|s| path.to_string_lossy().ends_with(s)) {
            out.push(path);
        }
    }
}

/// The YAML texts in a Rust file: its `r#"…"#` literals that are not templates — format strings
/// (a `{name}` placeholder or `{{`) or texts the file fills in with `.replace("TOKEN", …)` —
/// which are not the YAML a user writes.
fn rust_literals(text: &str) -> Vec<String> {
    let tokens: Vec<&str> = text
        .split(".replace(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|token| !token.is_empty())
        .collect();
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("r#\"") {
        let body = &rest[start + 3..];
        let Some(end) = body.find("\"#") else { break };
        let literal = &body[..end];
        if !is_format_string(literal) && !tokens.iter().any(|t| literal.contains(t)) {
            out.push(literal.to_string());
        }
        rest = &body[end + 2..];
    }
    out
}

fn is_format_string(text: &str) -> bool {
    if text.contains("{{") {
        return true;
    }
    text.match_indices('{').any(|(i, _)| {
        let after = &text[i + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        name_len > 0 && after[name_len..].starts_with('}')
    })
}

/// The fenced ```yaml blocks of a Markdown file.
fn markdown_blocks(text: &str) -> Vec<String> {
    text.split("```yaml")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .map(str::to_string)
        .collect()
}

/// Every Istio object of the samples, as `(where it came from, the JSON kubectl would send)`.
fn samples() -> Vec<(String, Value)> {
    let root = repo();
    let mut texts: Vec<(String, String)> = Vec::new();
    let mut yaml = Vec::new();
    files(&root.join("deploy"), &[".yaml", ".yml"], &mut yaml);
    files(
        &root.join("control-plane/tests/fixtures"),
        &[".yaml"],
        &mut yaml,
    );
    for path in yaml {
        let text = std::fs::read_to_string(&path).unwrap();
        if !text.contains("{{") {
            texts.push((path.display().to_string(), text));
        }
    }
    let mut markdown = Vec::new();
    files(&root.join("docs"), &[".md"], &mut markdown);
    for path in markdown {
        let text = std::fs::read_to_string(&path).unwrap();
        for block in markdown_blocks(&text) {
            texts.push((path.display().to_string(), block));
        }
    }
    let mut rust = Vec::new();
    files(&root.join("tests/tests"), &[".rs"], &mut rust);
    files(&root.join("control-plane/tests"), &[".rs"], &mut rust);
    // Hostile on purpose: config_bombs.rs is about what meshd survives, not about Istio YAML.
    rust.retain(|p| !p.ends_with("config_bombs.rs"));
    for path in rust {
        let text = std::fs::read_to_string(&path).unwrap();
        for literal in rust_literals(&text) {
            texts.push((path.display().to_string(), literal));
        }
    }

    let mut objects = Vec::new();
    for (source, text) in texts {
        for doc in text.split("\n---") {
            let Ok(obj) = document_json(doc) else {
                continue;
            };
            let kind = obj["kind"].as_str().unwrap_or_default();
            let api_version = obj["apiVersion"].as_str().unwrap_or_default();
            let istio = CRD_KINDS
                .iter()
                .any(|k| k.kind == kind && api_version.starts_with(&format!("{}/", k.group)));
            if istio && obj["spec"].is_object() {
                objects.push((format!("{source}: {kind} {}", obj["metadata"]["name"]), obj));
            }
        }
    }
    objects
}

fn resource(kind: &str, api_version: &str) -> ApiResource {
    let crd = CRD_KINDS.iter().find(|k| k.kind == kind).unwrap();
    let (group, version) = api_version.split_once('/').unwrap();
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), crd.plural)
}

fn api(client: &Client, obj: &Value) -> Api<DynamicObject> {
    let resource = resource(
        obj["kind"].as_str().unwrap(),
        obj["apiVersion"].as_str().unwrap(),
    );
    Api::namespaced_with(client.clone(), NS, &resource)
}

/// Creates `obj` (renamed into the test namespace: only its spec is under test).
async fn try_create(client: &Client, obj: &Value) -> Result<Value, kube::Error> {
    let dynamic: DynamicObject = serde_json::from_value(obj.clone()).unwrap();
    api(client, obj)
        .create(&PostParams::default(), &dynamic)
        .await
        .map(|o| serde_json::to_value(o).unwrap())
}

/// JSON equality with numbers compared by value (the API server writes `1.0` as `1`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

async fn install(client: &Client) {
    create(client, namespace(NS, json!({}))).await;
    for crd in istio_crds() {
        create(client, crd).await;
    }
    // The CRDs take a moment to be served: wait for each kind at its stored version.
    for kind in CRD_KINDS {
        let (_, storage) = kind.versions;
        let ar = resource(kind.kind, &format!("{}/{storage}", kind.group));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
        eventually(30, &format!("{} served", kind.kind), || {
            let api = api.clone();
            async move { api.list(&Default::default()).await.ok().map(|_| ()) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_istio_sample_is_accepted_unchanged_and_badly_typed_objects_are_refused() {
    let samples = samples();
    let kinds: std::collections::BTreeSet<&str> = samples
        .iter()
        .filter_map(|(_, o)| o["kind"].as_str())
        .collect();
    // Found where they should be (a scanner finding nothing would pass vacuously).
    for kind in CRD_KINDS {
        assert!(kinds.contains(kind.kind), "no {} sample found", kind.kind);
    }
    assert!(samples.len() >= 40, "only {} samples found", samples.len());
    eprintln!("{} Istio sample objects", samples.len());

    let server = ApiServer::start();
    let client = server.client().await;
    install(&client).await;

    let mut refused = Vec::new();
    for (i, (source, obj)) in samples.iter().enumerate() {
        let mut obj = obj.clone();
        obj["metadata"] = json!({"name": format!("sample-{i}"), "namespace": NS});
        match try_create(&client, &obj).await {
            Ok(stored) => {
                assert!(
                    same(&stored["spec"], &obj["spec"]),
                    "{source}: stored spec differs\n sent: {}\n back: {}",
                    obj["spec"],
                    stored["spec"]
                );
                let read = api(&client, &obj)
                    .get(&format!("sample-{i}"))
                    .await
                    .unwrap();
                let read = serde_json::to_value(read).unwrap();
                assert!(
                    same(&read["spec"], &obj["spec"]),
                    "{source}: read back differs"
                );
            }
            Err(e) => refused.push(format!("{source}: {e}")),
        }
    }
    assert!(
        refused.is_empty(),
        "samples refused:\n{}",
        refused.join("\n")
    );

    let bad = [
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "spec": {"hosts": ["web"], "http": "x"}}),
            "spec.http",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
                   "spec": {"host": "web", "trafficPolicy": {"connectionPool": {"tcp": {
                       "maxConnections": "many"}}}}}),
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "DestinationRule",
                   "spec": {"host": "web", "trafficPolicy": {"tls": {"mode": "SOMETIMES"}}}}),
            "spec.trafficPolicy.tls.mode",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                   "spec": {"subsets": [{"name": "v1"}]}}),
            "spec.host",
        ),
        (
            json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                   "spec": {"portLevelMtls": {"8080": {"mode": "SOMETIMES"}}}}),
            "spec.portLevelMtls.8080.mode",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                   "spec": {"hosts": ["a.example.com"],
                            "ports": [{"number": -1, "name": "http"}]}}),
            // (v1.20 names a list item's field without its index.)
            "spec.ports.number",
        ),
        (
            json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                   "spec": {"configPatches": [{"patch": {"value": "not an object"}}]}}),
            "spec.configPatches.patch.value",
        ),
    ];
    for (i, (mut obj, field)) in bad.into_iter().enumerate() {
        obj["metadata"] = json!({"name": format!("bad-{i}"), "namespace": NS});
        match try_create(&client, &obj).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{obj}: {status:?}");
                assert!(status.message.contains(field), "{obj}: {}", status.message);
            }
            other => panic!("{obj} was not refused: {other:?}"),
        }
    }
}
