//! Sidecar injection as a pure function: an AdmissionReview (v1) for a Pod in, an
//! AdmissionResponse out — allowed with a base64 JSON Patch, allowed untouched, or refused with
//! a clear message. No I/O; the namespace's labels come in through a lookup the caller supplies.
//! Nothing here panics on any input (see the fuzz target and the hostile-input tests).
//!
//! What an injected pod gets:
//! * init container `meshd-bootstrap` (uid 1337, no capabilities): `meshd bootstrap --registry
//!   kubernetes` writes the Envoy bootstrap into the `meshd-envoy` emptyDir. The bootstrap points
//!   Envoy's ADS client (Google gRPC, TLS verified with the mesh root) at meshd's 15012 and sends
//!   the projected service-account token with the `envoy.grpc_credentials.file_based_metadata`
//!   call credential, which re-reads the token file on every new stream: the kubelet refreshes
//!   the file, so a reconnect after the first token expired authenticates with the current one.
//!   `proxy.istio.io/config`'s `proxyMetadata.ISTIO_DELTA_XDS`, when set, is passed to it: the
//!   sidecar's xDS protocol (Delta unless `false`).
//! * init container `meshd-init` (uid 0, NET_ADMIN + NET_RAW): `meshd init-iptables` with the
//!   pod's `traffic.sidecar.istio.io/*` settings.
//! * container `istio-proxy`: stock Envoy (uid 1337), resources per the seed or the
//!   `sidecar.istio.io/proxy*` annotations, readiness on 15021 `/healthz/ready`, stats on 15090.
//! * volumes: the emptyDir, the projected token (audience `istio-ca`), the root-cert ConfigMap.
//! * app `httpGet` probes rewritten through 15021 (see [`probes`]).
//! * annotations `sidecar.istio.io/status`, Prometheus scrape (unless the pod has its own),
//!   `kubectl.kubernetes.io/default-container`; label `security.istio.io/tlsMode: istio`.

pub mod annotations;
pub mod config;
pub mod probes;

pub use config::{DEFAULT_MAX_REVIEW_BYTES, InjectConfig, ProxyResources};
pub use probes::{APP_PROBERS_ENV, AppProber, AppProbers};

use annotations as ann;
use base64::Engine as _;
use config::{names, paths, ports};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

/// `metav1.Status`, as far as an admission response uses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub code: u16,
    pub message: String,
}

/// `admission.k8s.io/v1` AdmissionResponse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Base64 of the JSON Patch (RFC 6902).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// `injection`: `injected` or `skipped: <why>` (the API server prefixes the webhook name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<String, String>,
}

impl AdmissionResponse {
    /// The decoded JSON Patch operations, if any.
    pub fn patch_ops(&self) -> Option<Vec<Value>> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.patch.as_ref()?)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Why the pod was or was not injected (the `injection` audit annotation).
    pub fn outcome(&self) -> &str {
        self.audit_annotations
            .get("injection")
            .map(String::as_str)
            .unwrap_or("")
    }

    fn refused(uid: String, code: u16, message: String) -> AdmissionResponse {
        AdmissionResponse {
            uid,
            allowed: false,
            patch_type: None,
            patch: None,
            status: Some(Status { code, message }),
            warnings: vec![],
            audit_annotations: BTreeMap::new(),
        }
    }
}

/// The AdmissionReview (v1) envelope around a response.
pub fn review_json(response: &AdmissionResponse) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    })
}

/// What the HTTP layer sends back.
#[derive(Clone, Debug)]
pub struct Reply {
    /// 200 for every decoded AdmissionReview (allowed or refused); 400 for a body that is not
    /// one, 413 for one over the size limit.
    pub http_status: u16,
    pub response: AdmissionResponse,
}

impl Reply {
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&review_json(&self.response)).unwrap_or_default()
    }
}

/// The request path: raw body in, reply out. Size-limited before parsing; serde_json's
/// recursion limit bounds nesting.
pub fn handle(
    body: &[u8],
    cfg: &InjectConfig,
    namespace_labels: &dyn Fn(&str) -> Option<Labels>,
) -> Reply {
    if body.len() > cfg.max_review_bytes {
        return Reply {
            http_status: 413,
            response: AdmissionResponse::refused(
                String::new(),
                413,
                format!(
                    "AdmissionReview of {} bytes exceeds the injector's limit of {} bytes",
                    body.len(),
                    cfg.max_review_bytes
                ),
            ),
        };
    }
    let review: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Reply {
                http_status: 400,
                response: AdmissionResponse::refused(
                    String::new(),
                    400,
                    format!("request body is not JSON: {e}"),
                ),
            };
        }
    };
    let response = inject(&review, cfg, namespace_labels);
    let envelope_ok = review.get("request").is_some_and(Value::is_object);
    Reply {
        http_status: if envelope_ok { 200 } else { 400 },
        response,
    }
}

struct Fail {
    code: u16,
    message: String,
}

fn fail<T>(code: u16, message: impl Into<String>) -> Result<T, Fail> {
    Err(Fail {
        code,
        message: message.into(),
    })
}

enum Outcome {
    Skip(String),
    Patch {
        ops: Vec<Value>,
        warnings: Vec<String>,
    },
}

/// Decides and builds the patch for one AdmissionReview (already parsed as JSON).
pub fn inject(
    review: &Value,
    cfg: &InjectConfig,
    namespace_labels: &dyn Fn(&str) -> Option<Labels>,
) -> AdmissionResponse {
    let uid = review
        .get("request")
        .and_then(|r| r.get("uid"))
        .and_then(Value::as_str)
        .filter(|u| u.len() <= 256)
        .unwrap_or("")
        .to_string();
    let mut audit = BTreeMap::new();
    match decide(review, cfg, namespace_labels) {
        Ok(Outcome::Skip(reason)) => {
            audit.insert("injection".to_string(), format!("skipped: {reason}"));
            AdmissionResponse {
                uid,
                allowed: true,
                patch_type: None,
                patch: None,
                status: None,
                warnings: vec![],
                audit_annotations: audit,
            }
        }
        Ok(Outcome::Patch { ops, warnings }) => {
            audit.insert("injection".to_string(), "injected".to_string());
            let bytes = serde_json::to_vec(&ops).unwrap_or_default();
            AdmissionResponse {
                uid,
                allowed: true,
                patch_type: Some("JSONPatch".into()),
                patch: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                status: None,
                warnings,
                audit_annotations: audit,
            }
        }
        Err(Fail { code, message }) => {
            AdmissionResponse::refused(uid, code, format!("meshd sidecar injection: {message}"))
        }
    }
}

/// A map of strings at `v` (absent or null → empty), or an error naming `what`.
fn string_map(v: Option<&Value>, what: &str) -> Result<Labels, Fail> {
    match v {
        None | Some(Value::Null) => Ok(Labels::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => fail(400, format!("{what}[{k}] is not a string")),
            })
            .collect(),
        Some(_) => fail(400, format!("{what} is not a map of strings")),
    }
}

/// A DNS-1123 label: what a container name is, so it is safe in a URL path.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 6901 escaping of one reference token.
pub fn pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn named_list<'a>(v: Option<&'a Value>, what: &str) -> Result<Vec<&'a Value>, Fail> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => Ok(a.iter().collect()),
        Some(_) => fail(400, format!("{what} is not a list")),
    }
}

fn name_of<'a>(v: &'a Value, what: &str) -> Result<&'a str, Fail> {
    match v.get("name").and_then(Value::as_str) {
        Some(n) => Ok(n),
        None => fail(400, format!("an entry of {what} has no name")),
    }
}

fn decide(
    review: &Value,
    cfg: &InjectConfig,
    namespace_labels: &dyn Fn(&str) -> Option<Labels>,
) -> Result<Outcome, Fail> {
    let Some(top) = review.as_object() else {
        return fail(400, "the body is not an AdmissionReview object");
    };
    match top.get("apiVersion").and_then(Value::as_str) {
        Some("admission.k8s.io/v1") => {}
        Some(other) => {
            return fail(
                400,
                format!(
                    "AdmissionReview apiVersion `{other}` is not supported (admission.k8s.io/v1 only)"
                ),
            );
        }
        None => {
            return fail(
                400,
                "the body has no apiVersion; expected an AdmissionReview",
            );
        }
    }
    if top.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return fail(400, "the body's kind is not AdmissionReview");
    }
    let Some(req) = top.get("request").and_then(Value::as_object) else {
        return fail(400, "the AdmissionReview has no request");
    };
    match req.get("uid").and_then(Value::as_str) {
        Some(u) if !u.is_empty() && u.len() <= 256 => {}
        _ => return fail(400, "the AdmissionReview request has no valid uid"),
    }
    let kind = req.get("kind");
    let group = kind.and_then(|k| k.get("group")).and_then(Value::as_str);
    let kind_name = kind.and_then(|k| k.get("kind")).and_then(Value::as_str);
    if kind_name != Some("Pod") || group.is_some_and(|g| !g.is_empty()) {
        return Ok(Outcome::Skip("not a Pod".into()));
    }
    if req
        .get("subResource")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Ok(Outcome::Skip("a subresource request".into()));
    }
    match req.get("operation").and_then(Value::as_str) {
        Some("CREATE") => {}
        Some(op) => return Ok(Outcome::Skip(format!("operation {op}, not CREATE"))),
        None => return fail(400, "the AdmissionReview request has no operation"),
    }
    let Some(pod) = req.get("object").filter(|o| o.is_object()) else {
        return fail(400, "the AdmissionReview request carries no Pod object");
    };
    let meta = pod.get("metadata");
    if meta.is_some_and(|m| !m.is_object() && !m.is_null()) {
        return fail(400, "the Pod's metadata is not an object");
    }
    let Some(spec) = pod.get("spec").and_then(Value::as_object) else {
        return fail(400, "the Pod has no spec");
    };
    let namespace = req
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            meta.and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        });
    let Some(namespace) = namespace else {
        return fail(400, "the request names no namespace");
    };
    let labels = string_map(meta.and_then(|m| m.get("labels")), "metadata.labels")?;
    let annotations = string_map(
        meta.and_then(|m| m.get("annotations")),
        "metadata.annotations",
    )?;

    // Never: system namespaces and meshd's own.
    if namespace == cfg.meshd_namespace {
        return Ok(Outcome::Skip(format!("meshd's own namespace {namespace}")));
    }
    if cfg.never_inject_namespaces.iter().any(|n| n == namespace) {
        return Ok(Outcome::Skip(format!(
            "namespace {namespace} is never injected"
        )));
    }
    // The pod's word: the label wins over the annotation (as in Istio).
    let mut warnings = Vec::new();
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
        return Ok(Outcome::Skip(format!("the pod sets {}=false", ann::INJECT)));
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skip(
            "hostNetwork pod (capture rules would apply to the node)".into(),
        ));
    }
    let containers = named_list(spec.get("containers"), "spec.containers")?;
    let init_containers = named_list(spec.get("initContainers"), "spec.initContainers")?;
    let volumes = named_list(spec.get("volumes"), "spec.volumes")?;
    if containers.is_empty() {
        return fail(400, "the Pod has no containers");
    }
    let mut container_names = Vec::with_capacity(containers.len());
    for c in &containers {
        container_names.push(name_of(c, "spec.containers")?);
    }
    let mut init_names = Vec::with_capacity(init_containers.len());
    for c in &init_containers {
        init_names.push(name_of(c, "spec.initContainers")?);
    }
    let mut volume_names = Vec::with_capacity(volumes.len());
    for v in &volumes {
        volume_names.push(name_of(v, "spec.volumes")?);
    }
    // Re-invocation (or a pod copied from an injected one): never twice.
    if annotations.contains_key(ann::STATUS)
        || container_names.contains(&names::SIDECAR)
        || init_names.contains(&names::IPTABLES_INIT)
        || init_names.contains(&names::BOOTSTRAP_INIT)
    {
        return Ok(Outcome::Skip("already injected".into()));
    }
    let ns_enabled = match namespace_labels(namespace) {
        Some(l) => match l.get(ann::NAMESPACE_LABEL).map(String::as_str) {
            Some("enabled") => Some(true),
            Some("disabled") => Some(false),
            _ => None,
        },
        None => cfg.inject_unknown_namespaces.then_some(true),
    };
    if ns_enabled == Some(false) {
        return Ok(Outcome::Skip(format!(
            "namespace {namespace} has {}=disabled",
            ann::NAMESPACE_LABEL
        )));
    }
    if pod_says != Some(true) && ns_enabled != Some(true) {
        return Ok(Outcome::Skip(format!(
            "namespace {namespace} is not labelled {}=enabled and the pod does not ask",
            ann::NAMESPACE_LABEL
        )));
    }
    for ours in [
        names::VOLUME_PROXY_CONFIG,
        names::VOLUME_TOKEN,
        names::VOLUME_ROOT_CERT,
    ] {
        if volume_names.contains(&ours) {
            return fail(
                409,
                format!("the Pod already has a volume named `{ours}`, which the sidecar needs"),
            );
        }
    }

    // Settings from annotations: all validated, all problems reported together.
    let mut errors = Vec::new();
    let capture = ann::capture(&annotations, &mut errors);
    let delta_xds = ann::delta_xds(&annotations, &mut errors, &mut warnings);
    let mut quantity = |key: &str, default: &str| match annotations.get(key) {
        None => default.to_string(),
        Some(v) if ann::is_quantity(v) => v.clone(),
        Some(v) => {
            errors.push(format!(
                "annotation {key}: `{v}` is not a Kubernetes quantity"
            ));
            default.to_string()
        }
    };
    let r = &cfg.proxy_resources;
    let resources = ProxyResources {
        cpu_request: quantity(ann::PROXY_CPU, &r.cpu_request),
        memory_request: quantity(ann::PROXY_MEMORY, &r.memory_request),
        cpu_limit: quantity(ann::PROXY_CPU_LIMIT, &r.cpu_limit),
        memory_limit: quantity(ann::PROXY_MEMORY_LIMIT, &r.memory_limit),
    };
    let proxy_image = match annotations.get(ann::PROXY_IMAGE) {
        None => cfg.proxy_image.clone(),
        Some(v) if ann::is_image(v) => v.clone(),
        Some(v) => {
            errors.push(format!(
                "annotation {}: `{v}` is not an image reference",
                ann::PROXY_IMAGE
            ));
            cfg.proxy_image.clone()
        }
    };
    let rewrite_probes = match annotations.get(ann::REWRITE_PROBES) {
        None => true,
        Some(v) => ann::parse_bool(v).unwrap_or_else(|| {
            errors.push(format!(
                "annotation {}: `{v}` is not a boolean",
                ann::REWRITE_PROBES
            ));
            true
        }),
    };
    if !errors.is_empty() {
        return fail(400, errors.join("; "));
    }

    let mut ops = Vec::new();
    // Probes first: they address the original containers by index.
    let mut probers = AppProbers::new();
    if rewrite_probes {
        for (i, (c, name)) in containers.iter().zip(&container_names).enumerate() {
            if !is_dns_label(name) {
                warnings.push(format!(
                    "container `{name}` is not a DNS label; its probes are not rewritten"
                ));
                continue;
            }
            for rw in probes::rewrites(i, name, c, &mut warnings) {
                ops.push(json!({"op": "replace", "path": rw.pointer, "value": rw.http_get}));
                probers.insert(rw.key, rw.prober);
            }
        }
    }

    let inits = vec![
        bootstrap_container(cfg, &probers, delta_xds),
        iptables_container(cfg, &capture),
    ];
    push_all(
        &mut ops,
        spec.get("initContainers"),
        "/spec/initContainers",
        inits,
    );
    ops.push(json!({
        "op": "add",
        "path": "/spec/containers/-",
        "value": sidecar_container(cfg, &proxy_image, &resources),
    }));
    push_all(
        &mut ops,
        spec.get("volumes"),
        "/spec/volumes",
        volumes_json(cfg),
    );

    // Annotations and labels.
    let status = json!({
        "initContainers": [names::BOOTSTRAP_INIT, names::IPTABLES_INIT],
        "containers": [names::SIDECAR],
        "volumes": [names::VOLUME_PROXY_CONFIG, names::VOLUME_TOKEN, names::VOLUME_ROOT_CERT],
        "imagePullSecrets": null,
        "revision": cfg.revision,
    });
    let mut new_annotations: Vec<(&str, String)> = vec![(ann::STATUS, status.to_string())];
    let has_prometheus = [
        ann::PROMETHEUS_SCRAPE,
        ann::PROMETHEUS_PORT,
        ann::PROMETHEUS_PATH,
    ]
    .iter()
    .any(|k| annotations.contains_key(*k));
    if has_prometheus {
        warnings.push(format!(
            "the pod has its own prometheus.io annotations; Envoy's stats stay on port {} (container port http-envoy-prom) without scrape annotations",
            ports::PROMETHEUS
        ));
    } else {
        new_annotations.push((ann::PROMETHEUS_SCRAPE, "true".into()));
        new_annotations.push((ann::PROMETHEUS_PORT, ports::PROMETHEUS.to_string()));
        new_annotations.push((ann::PROMETHEUS_PATH, "/stats/prometheus".into()));
    }
    if !annotations.contains_key(ann::DEFAULT_CONTAINER) {
        new_annotations.push((ann::DEFAULT_CONTAINER, container_names[0].to_string()));
    }
    if !meta.is_some_and(Value::is_object) {
        ops.push(json!({"op": "add", "path": "/metadata", "value": {}}));
    }
    push_map(
        &mut ops,
        meta.and_then(|m| m.get("annotations")),
        "annotations",
        new_annotations,
    );
    let mut new_labels: Vec<(&str, String)> = Vec::new();
    if !labels.contains_key(ann::TLS_MODE_LABEL) {
        new_labels.push((ann::TLS_MODE_LABEL, "istio".into()));
    }
    if !labels.contains_key(ann::CANONICAL_NAME_LABEL)
        && let Some(n) = labels
            .get("app.kubernetes.io/name")
            .or_else(|| labels.get("app"))
    {
        new_labels.push((ann::CANONICAL_NAME_LABEL, n.clone()));
    }
    if !labels.contains_key(ann::CANONICAL_REVISION_LABEL) {
        let rev = labels
            .get("app.kubernetes.io/version")
            .or_else(|| labels.get("version"))
            .cloned()
            .unwrap_or_else(|| "latest".into());
        new_labels.push((ann::CANONICAL_REVISION_LABEL, rev));
    }
    push_map(
        &mut ops,
        meta.and_then(|m| m.get("labels")),
        "labels",
        new_labels,
    );
    Ok(Outcome::Patch { ops, warnings })
}

/// Appends `items` to the list at `path` (creating it when absent or null).
fn push_all(ops: &mut Vec<Value>, existing: Option<&Value>, path: &str, items: Vec<Value>) {
    if existing.is_some_and(Value::is_array) {
        for item in items {
            ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": item}));
        }
    } else {
        ops.push(json!({"op": "add", "path": path, "value": items}));
    }
}

/// Sets keys of `metadata.<field>` (creating the map when absent; metadata exists).
fn push_map(
    ops: &mut Vec<Value>,
    existing: Option<&Value>,
    field: &str,
    entries: Vec<(&str, String)>,
) {
    if entries.is_empty() {
        return;
    }
    if existing.is_some_and(Value::is_object) {
        for (k, v) in entries {
            ops.push(json!({
                "op": "add",
                "path": format!("/metadata/{field}/{}", pointer_token(k)),
                "value": v,
            }));
        }
        return;
    }
    let map: Map<String, Value> = entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .collect();
    ops.push(json!({"op": "add", "path": format!("/metadata/{field}"), "value": map}));
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

fn bootstrap_container(cfg: &InjectConfig, probers: &AppProbers, delta_xds: Option<bool>) -> Value {
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ];
    if let Some(delta) = delta_xds {
        // `meshd bootstrap` reads Istio's variable (its `--delta` flag's environment).
        env.push(json!({"name": ann::DELTA_XDS_ENV, "value": delta.to_string()}));
    }
    if !probers.is_empty() {
        env.push(json!({
            "name": APP_PROBERS_ENV,
            "value": serde_json::to_string(probers).unwrap_or_default(),
        }));
    }
    json!({
        "name": names::BOOTSTRAP_INIT,
        "image": cfg.init_image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["meshd"],
        "args": [
            "bootstrap",
            "--registry", "kubernetes",
            "--workload", "$(POD_NAME).$(POD_NAMESPACE)",
            "--pod-ip", "$(POD_IP)",
            "--service-account", "$(SERVICE_ACCOUNT)",
            "--xds-address", cfg.xds_address,
            "--token-file", paths::TOKEN_FILE,
            "--root-cert", paths::ROOT_CERT_FILE,
            "--out", paths::BOOTSTRAP_FILE,
        ],
        "env": env,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "securityContext": {
            "runAsUser": ports::PROXY_UID,
            "runAsGroup": ports::PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": names::VOLUME_PROXY_CONFIG, "mountPath": paths::PROXY_CONFIG_DIR},
        ],
    })
}

fn iptables_container(cfg: &InjectConfig, capture: &ann::Capture) -> Value {
    json!({
        "name": names::IPTABLES_INIT,
        "image": cfg.init_image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["meshd"],
        "args": capture.args(),
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            // iptables-restore takes /run/xtables.lock.
            "readOnlyRootFilesystem": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    })
}

fn sidecar_container(cfg: &InjectConfig, image: &str, r: &ProxyResources) -> Value {
    json!({
        "name": names::SIDECAR,
        "image": image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["envoy"],
        "args": [
            "-c", paths::BOOTSTRAP_FILE,
            "--disable-hot-restart",
            "--concurrency", cfg.proxy_concurrency.to_string(),
            "--drain-time-s", "45",
            // Connections on a changed filter chain (new AuthorizationPolicy, mTLS mode) close
            // at once rather than keep the old policy through a gradual drain; as Istio does.
            "--drain-strategy", "immediate",
            "--log-level", "warning",
        ],
        "ports": [
            {"name": "http-envoy-prom", "containerPort": ports::PROMETHEUS, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": ports::HEALTH, "scheme": "HTTP"},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "timeoutSeconds": 3,
            "failureThreshold": 30,
        },
        "resources": {
            "requests": {"cpu": r.cpu_request, "memory": r.memory_request},
            "limits": {"cpu": r.cpu_limit, "memory": r.memory_limit},
        },
        "securityContext": {
            "runAsUser": ports::PROXY_UID,
            "runAsGroup": ports::PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": names::VOLUME_PROXY_CONFIG, "mountPath": paths::PROXY_CONFIG_DIR, "readOnly": true},
            {"name": names::VOLUME_TOKEN, "mountPath": paths::TOKEN_DIR, "readOnly": true},
            {"name": names::VOLUME_ROOT_CERT, "mountPath": paths::ROOT_CERT_DIR, "readOnly": true},
        ],
    })
}

fn volumes_json(cfg: &InjectConfig) -> Vec<Value> {
    vec![
        json!({"name": names::VOLUME_PROXY_CONFIG, "emptyDir": {"medium": "Memory"}}),
        json!({
            "name": names::VOLUME_TOKEN,
            "projected": {
                // Readable by the proxy's uid 1337 whatever the pod's own users are.
                "defaultMode": 0o644,
                "sources": [{"serviceAccountToken": {
                    "audience": cfg.token_audience,
                    "expirationSeconds": cfg.token_expiration_seconds,
                    "path": "istio-token",
                }}],
            },
        }),
        json!({
            "name": names::VOLUME_ROOT_CERT,
            "configMap": {"name": cfg.root_cert_configmap, "defaultMode": 0o644},
        }),
    ]
}
