//! Whether a pod gets a sidecar and in what shape: a pure function of the pod, its namespace's
//! labels and the injector's config, returning a [`Decision`]. Nothing here builds containers
//! (that is [`crate::render`]).
//!
//! Who is injected, with revisions as Istio selects them: the namespace's
//! `istio-injection=enabled` means the `default` revision (and wins over `istio.io/rev`),
//! `istio-injection=disabled` means never; otherwise the namespace's `istio.io/rev`, else the
//! pod's `istio.io/rev` label, else the pod's `sidecar.istio.io/inject=true` (the `default`
//! revision). A pod whose revision is not this meshd's is left to the control plane serving it,
//! so istiod and meshd run side by side.

use crate::Labels;
use crate::annotations as ann;
use crate::config::{InjectConfig, names};
use crate::pod::{annotations, labels};
use crate::refusal::Refusal;
use crate::settings::{self, Settings, Template};
use k8s_openapi::api::core::v1::Pod;

/// What the injector does with a pod.
#[derive(Clone, Debug)]
pub enum Decision {
    /// Let the pod through untouched, and why.
    Skip(String),
    Inject(Box<Plan>),
}

/// How the pod is injected.
#[derive(Clone, Debug)]
pub struct Plan {
    pub settings: Settings,
    /// The proxy is an init container with `restartPolicy: Always`.
    pub native_sidecar: bool,
    /// Classic path: the proxy is the first container and holds the app until Envoy is ready.
    pub hold_application: bool,
    /// The sidecar's preStop drain: the pod's `terminationDrainDuration`, else the mesh's.
    pub termination_drain: std::time::Duration,
    pub canonical_name: Option<String>,
    pub canonical_revision: String,
    /// Admission warnings: what was not honoured, and why.
    pub warnings: Vec<String>,
}

const DEFAULT_REVISION: &str = "default";

/// The revision the namespace asks for: `None` when it asks for none, `Err` when it refuses.
fn namespace_revision(
    namespace: &str,
    ns_labels: Option<&Labels>,
    cfg: &InjectConfig,
) -> Result<Option<String>, String> {
    let Some(l) = ns_labels else {
        // Not known yet: the webhook configuration's selector already chose this meshd.
        return Ok(cfg.inject_unknown_namespaces.then(|| cfg.revision.clone()));
    };
    match l.get(ann::NAMESPACE_LABEL).map(String::as_str) {
        Some("disabled") => Err(format!(
            "namespace {namespace} has {}=disabled",
            ann::NAMESPACE_LABEL
        )),
        Some("enabled") => Ok(Some(DEFAULT_REVISION.to_string())),
        _ => Ok(l.get(ann::REVISION_LABEL).cloned()),
    }
}

/// The workload's name when it has no `app` label: the Deployment behind a ReplicaSet's pod,
/// else the owner, else the pod's generated-name prefix or name (Istio's derivation).
fn workload_name(pod: &Pod, labels: &Labels) -> Option<String> {
    let meta = &pod.metadata;
    if let Some(owner) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        if owner.kind == "ReplicaSet"
            && let Some(hash) = labels.get("pod-template-hash")
            && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
        {
            return Some(deployment.to_string());
        }
        return Some(owner.name.clone());
    }
    if let Some(prefix) = meta.generate_name.as_deref() {
        let prefix = prefix.trim_end_matches('-');
        let prefix = match labels.get("pod-template-hash") {
            Some(hash) => prefix.strip_suffix(&format!("-{hash}")).unwrap_or(prefix),
            None => prefix,
        };
        if !prefix.is_empty() {
            return Some(prefix.to_string());
        }
    }
    meta.name.clone().filter(|n| !n.is_empty())
}

/// Decides for one pod (already stripped of a previous injection, see
/// [`crate::merge::strip_previous`]). `ns_labels` is `None` when the namespace is unknown.
pub fn decide(
    pod: &Pod,
    namespace: &str,
    ns_labels: Option<&Labels>,
    cfg: &InjectConfig,
) -> Result<Decision, Refusal> {
    let skip = |why: String| Ok(Decision::Skip(why));
    if namespace == cfg.meshd_namespace {
        return skip(format!("meshd's own namespace {namespace}"));
    }
    if cfg.never_inject_namespaces.iter().any(|n| n == namespace) {
        return skip(format!("namespace {namespace} is never injected"));
    }
    let labels = labels(pod);
    let annotations = annotations(pod);
    let mut warnings = Vec::new();
    // The pod's word: the label wins over the annotation (as in Istio).
    let pod_says = match labels
        .get(ann::INJECT)
        .or_else(|| annotations.get(ann::INJECT))
    {
        None => None,
        Some(v) => match ann::parse_bool(v) {
            Some(b) => Some(b),
            None => {
                warnings.push(format!("{}: `{v}` is not a boolean; ignored", ann::INJECT));
                None
            }
        },
    };
    if pod_says == Some(false) {
        return skip(format!("the pod sets {}=false", ann::INJECT));
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return skip("hostNetwork pod (capture rules would apply to the node)".into());
    }
    let ns_revision = match namespace_revision(namespace, ns_labels, cfg) {
        Ok(r) => r,
        Err(why) => return skip(why),
    };
    let pod_revision = labels.get(ann::REVISION_LABEL).cloned();
    let wanted = ns_revision
        .or(pod_revision)
        .or_else(|| (pod_says == Some(true)).then(|| DEFAULT_REVISION.to_string()));
    let Some(wanted) = wanted else {
        return skip(format!(
            "namespace {namespace} is not labelled {}=enabled or {} and the pod does not ask",
            ann::NAMESPACE_LABEL,
            ann::REVISION_LABEL
        ));
    };
    if wanted != cfg.revision {
        return skip(format!(
            "the pod belongs to revision {wanted}; this injector serves {}",
            cfg.revision
        ));
    }

    let mut errors = Vec::new();
    let settings = settings::read(&annotations, cfg, &mut errors, &mut warnings);
    if !errors.is_empty() {
        return Err(Refusal::Invalid(errors.join("; ")));
    }
    let volume_names: Vec<&str> = spec
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    for ours in [
        names::VOLUME_PROXY_CONFIG,
        names::VOLUME_TOKEN,
        names::VOLUME_ROOT_CERT,
    ] {
        if volume_names.contains(&ours) {
            return Err(Refusal::Conflict(format!(
                "the Pod already has a volume named `{ours}`, which the sidecar needs"
            )));
        }
    }
    for v in &settings.user_volumes {
        if volume_names.contains(&v.name.as_str()) {
            return Err(Refusal::Conflict(format!(
                "annotation {}: the Pod already has a volume named `{}`",
                ann::USER_VOLUME,
                v.name
            )));
        }
    }

    let gateway = settings.template == Template::Gateway;
    let native_sidecar = match (settings.native_sidecar, cfg.native_sidecars) {
        _ if gateway => false,
        (Some(true), Some(false)) => {
            warnings.push(format!(
                "annotation {}: the API server does not run native sidecars (Kubernetes < 1.29); the proxy is a regular container",
                ann::NATIVE_SIDECAR
            ));
            false
        }
        (Some(asked), _) => asked,
        (None, server) => server.unwrap_or(false),
    };
    let hold_application = !gateway
        && !native_sidecar
        && settings
            .hold_application
            .unwrap_or(cfg.hold_application_until_proxy_starts);
    let termination_drain = settings
        .termination_drain
        .unwrap_or(cfg.termination_drain_duration);
    let canonical_name = labels
        .get(ann::CANONICAL_NAME_LABEL)
        .or_else(|| labels.get("app.kubernetes.io/name"))
        .or_else(|| labels.get("app"))
        .cloned()
        .or_else(|| workload_name(pod, &labels));
    let canonical_revision = labels
        .get(ann::CANONICAL_REVISION_LABEL)
        .or_else(|| labels.get("app.kubernetes.io/version"))
        .or_else(|| labels.get("version"))
        .cloned()
        .unwrap_or_else(|| "latest".into());
    Ok(Decision::Inject(Box::new(Plan {
        settings,
        native_sidecar,
        hold_application,
        termination_drain,
        canonical_name,
        canonical_revision,
        warnings,
    })))
}
