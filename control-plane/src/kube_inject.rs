//! `meshd kube-inject`: offline injection of Kubernetes manifests, as `istioctl kube-inject`.
//! Each workload's pod template (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
//! CronJob; `List` items too) goes through the webhook's own steps — the same
//! `meshd_injector::inject_pod` decision and rendering, and the same JSON Patch applied to the
//! template as written — so the output is what the webhook would make of the pod. Other
//! documents pass through unchanged. Namespace labels are not consulted (the manifest's author
//! asked for injection); the pod's own opt-out and revision labels still count.

use anyhow::{Context, anyhow, bail};
use meshd_injector::{InjectConfig, Injected, inject_pod};
use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;

#[derive(clap::Args, Clone, Debug)]
pub struct KubeInjectArgs {
    /// The manifest (multi-document YAML or JSON); `-` reads stdin.
    #[arg(short = 'f', long = "filename")]
    pub filename: String,
    /// Where to write the injected manifest (default: stdout).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// The webhook's `--injector-config` file, to inject exactly as a server using it would.
    #[arg(long)]
    pub injector_config: Option<PathBuf>,
    /// The server's `--mesh-config` file (istioctl's `--meshConfigFile`): its `defaultConfig`
    /// is the mesh default of what `proxy.istio.io/config` sets.
    #[arg(long, alias = "meshConfigFile")]
    pub mesh_config: Option<PathBuf>,
    /// meshd's namespace (the xDS address is `<service>.<namespace>.svc`).
    #[arg(long, default_value = "meshd-system")]
    pub meshd_namespace: String,
    /// meshd's Service name.
    #[arg(long, default_value = "meshd")]
    pub service: String,
    /// The revision to inject as (overrides the config's).
    #[arg(long)]
    pub revision: Option<String>,
    /// Inject native sidecars (for Kubernetes >= 1.29, as the webhook detects).
    #[arg(long)]
    pub native_sidecars: bool,
}

/// The injector settings `args` describe.
pub fn config(args: &KubeInjectArgs) -> anyhow::Result<InjectConfig> {
    let mut cfg = crate::webhook::load_inject_config(
        args.injector_config.as_deref(),
        &args.meshd_namespace,
        &args.service,
        15012,
    )?;
    if let Some(path) = &args.mesh_config {
        let file = crate::webhook::read_mesh_file(path)?;
        if let Some(default_config) = &file.default_config {
            crate::webhook::apply_mesh_default_config(&mut cfg, path, default_config)?;
        }
    }
    if let Some(rev) = &args.revision {
        cfg.revision = rev.clone();
    }
    if args.native_sidecars {
        cfg.native_sidecars = Some(true);
    }
    // The manifest's author asked: namespace labels are not known here, and not needed.
    cfg.inject_unknown_namespaces = true;
    Ok(cfg)
}

pub fn run(args: &KubeInjectArgs) -> anyhow::Result<()> {
    let text = if args.filename == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the manifest from stdin")?;
        s
    } else {
        std::fs::read_to_string(&args.filename)
            .with_context(|| format!("reading {}", args.filename))?
    };
    let out = inject_manifests(&text, &config(args)?)?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
        }
        None => {
            print!("{out}");
            Ok(())
        }
    }
}

/// Injects every workload of a multi-document manifest; the result is multi-document YAML.
pub fn inject_manifests(text: &str, cfg: &InjectConfig) -> anyhow::Result<String> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(doc)
            .with_context(|| format!("document {} is not YAML", i + 1))?;
        if value.is_null() {
            continue;
        }
        let mut value = value;
        inject_document(&mut value, cfg).with_context(|| format!("document {}", i + 1))?;
        docs.push(serde_yaml::to_string(&value)?);
    }
    Ok(docs.join("---\n"))
}

/// Injects one document in place (a workload, a Pod or a List of them).
pub fn inject_document(doc: &mut Value, cfg: &InjectConfig) -> anyhow::Result<()> {
    let kind = doc["kind"].as_str().unwrap_or("").to_string();
    let namespace = doc["metadata"]["namespace"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let name = doc["metadata"]["name"].as_str().unwrap_or("").to_string();
    let describe = |what: &str| format!("{kind} {namespace}/{name}: {what}");
    match kind.as_str() {
        "List" => {
            for item in doc["items"].as_array_mut().into_iter().flatten() {
                inject_document(item, cfg)?;
            }
            Ok(())
        }
        "Pod" => {
            let injected = inject_template(doc, &namespace, &name, cfg)
                .with_context(|| describe("injection"))?;
            *doc = injected;
            Ok(())
        }
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "CronJob" => {
            let template = if kind == "CronJob" {
                doc.pointer_mut("/spec/jobTemplate/spec/template")
            } else {
                doc.pointer_mut("/spec/template")
            }
            .filter(|t| t.is_object())
            .ok_or_else(|| anyhow!(describe("has no pod template")))?;
            let mut pod = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": template.get("metadata").cloned().unwrap_or(Value::Null),
                "spec": template.get("spec").cloned().unwrap_or(Value::Null),
            });
            pod = inject_template(&pod, &namespace, &name, cfg)
                .with_context(|| describe("injection"))?;
            template["metadata"] = pod["metadata"].take();
            template["spec"] = pod["spec"].take();
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The webhook's path for one pod: typed decision and rendering, then the patch applied to the
/// pod as written (so fields the typed model does not know survive).
fn inject_template(
    raw: &Value,
    namespace: &str,
    workload: &str,
    cfg: &InjectConfig,
) -> anyhow::Result<Value> {
    if !raw
        .get("metadata")
        .is_none_or(|m| m.is_object() || m.is_null())
    {
        bail!("the pod template's metadata is not a map");
    }
    let mut named = raw.clone();
    // The workload's name stands in for the pod's (canonical-name derivation), then goes.
    let unnamed = named["metadata"]["name"].as_str().is_none_or(str::is_empty);
    if unnamed && !workload.is_empty() {
        named["metadata"]["name"] = Value::String(workload.to_string());
    }
    let pod = meshd_injector::pod::parse(&named).map_err(|e| anyhow!("{e}"))?;
    let (injected, warnings) =
        match inject_pod(&pod, namespace, None, cfg).map_err(|e| anyhow!("{e}"))? {
            Injected::Skipped(why) => {
                tracing::info!(namespace, workload, why, "not injected");
                return Ok(raw.clone());
            }
            Injected::Pod { pod, warnings } => (pod, warnings),
        };
    for w in &warnings {
        eprintln!("meshd kube-inject: {namespace}/{workload}: warning: {w}");
    }
    let before = serde_json::to_value(&pod)?;
    let after = serde_json::to_value(&*injected)?;
    let patch = meshd_injector::patch::diff(&before, &after);
    let mut out = named;
    if !out.get("metadata").is_some_and(Value::is_object) {
        // The typed pod always has metadata; the template as written may not.
        out["metadata"] = Value::Object(Default::default());
    }
    json_patch::patch(&mut out, &patch).map_err(|e| anyhow!("applying the injection: {e}"))?;
    if unnamed && let Some(m) = out["metadata"].as_object_mut() {
        m.remove("name");
    }
    Ok(out)
}
