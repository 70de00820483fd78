//! Sidecar injection as a pure function: an AdmissionReview (v1) for a Pod in, an
//! AdmissionResponse out — allowed with a base64 JSON Patch, allowed untouched, or refused with
//! a clear message. No I/O; the namespace's labels come in through a lookup the caller supplies.
//! Nothing here panics on any input (see the fuzz target and the hostile-input tests).
//!
//! The path: [`review::decode`] (kube-core's `AdmissionRequest`) → [`review::read`] (the typed Pod) → [`merge::strip_previous`] (a pod
//! injected before is re-injected from its original) → [`decision::decide`] (a
//! [`Decision`]: skip, or a [`decision::Plan`] with its admission warnings) →
//! [`render::render`] (the injected Pod, typed) → [`patch::diff`] (the JSON Patch). `meshd
//! kube-inject` runs the same steps on a workload's pod template ([`inject_pod`]).
//!
//! What an injected pod gets (Istio's names, ports and order):
//! * init container `meshd-init` (uid 0, NET_ADMIN + NET_RAW), first: `meshd init-iptables`
//!   with the pod's `traffic.sidecar.istio.io/*` settings (none with `interceptionMode: NONE`
//!   or the gateway template).
//! * init container `meshd-bootstrap` (uid 1337, no capabilities): `meshd bootstrap --registry
//!   kubernetes` writes the Envoy bootstrap into the `meshd-envoy` emptyDir. Envoy's ADS client
//!   authenticates with the projected service-account token, re-read on every stream.
//! * `istio-proxy`: stock Envoy (uid 1337) — a native sidecar (init container with
//!   `restartPolicy: Always` and a startup probe) where the API server runs them, else a
//!   container (first, with a postStart `meshd wait-proxy` hook, under
//!   `holdApplicationUntilProxyStarts`). Readiness on 15021 `/healthz/ready`, stats on 15090.
//! * volumes: the emptyDir, the projected token (audience `istio-ca`), the root-cert ConfigMap,
//!   and `sidecar.istio.io/userVolume`s.
//! * app probes rewritten through 15021 (see [`probes`]).
//! * annotations `sidecar.istio.io/status`, Prometheus scrape (unless the pod has its own or
//!   opts out), `kubectl.kubernetes.io/default-container`; labels `security.istio.io/tlsMode`,
//!   `service.istio.io/canonical-name`/`-revision`.
//!
//! # Stopping the sidecar from a Job (classic path)
//!
//! A native sidecar stops by itself when the Job's containers exit. On the classic path the
//! app stops it as with Istio: `curl -fsS -X POST http://127.0.0.1:15020/quitquitquit` (the
//! bootstrap serves Istio's status port on loopback and forwards that path to Envoy's admin),
//! or Envoy's admin directly, `POST http://127.0.0.1:15000/quitquitquit`. Envoy exits 0.

pub mod annotations;
pub mod config;
pub mod decision;
pub mod envoy_probes;
pub mod merge;
pub mod patch;
pub mod pod;
pub mod probes;
pub mod proxy;
pub mod refusal;
pub mod render;
pub mod review;
pub mod settings;
pub mod stats_matcher;

pub use config::{DEFAULT_MAX_REVIEW_BYTES, InjectConfig, ProxyResources};
pub use decision::{Decision, decide};
pub use kube_core::admission::AdmissionResponse;
pub use probes::{APP_PROBERS_ENV, AppProber, AppProbers, ProbeKind};
pub use refusal::Refusal;
pub use review::ResponseExt;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

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
        review::review_body(&self.response)
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
            response: review::refused(
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
                response: review::refused(
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

/// The result of injecting one pod.
pub enum Injected {
    /// Left as it is, and why.
    Skipped(String),
    /// The injected pod, with its admission warnings.
    Pod {
        pod: Box<Pod>,
        warnings: Vec<String>,
    },
}

/// Decides and renders for one pod: the webhook's and `meshd kube-inject`'s common path.
/// `ns_labels` is `None` when the namespace's labels are not known.
pub fn inject_pod(
    pod: &Pod,
    namespace: &str,
    ns_labels: Option<&Labels>,
    cfg: &InjectConfig,
) -> Result<Injected, Refusal> {
    let mut clean = pod.clone();
    merge::strip_previous(&mut clean);
    match decide(&clean, namespace, ns_labels, cfg)? {
        Decision::Skip(why) => Ok(Injected::Skipped(why)),
        Decision::Inject(plan) => {
            let out = render::render(&clean, &plan, cfg);
            Ok(Injected::Pod {
                pod: Box::new(out.pod),
                warnings: out.warnings,
            })
        }
    }
}

/// Decides and builds the patch for one AdmissionReview (already parsed as JSON).
pub fn inject(
    review: &Value,
    cfg: &InjectConfig,
    namespace_labels: &dyn Fn(&str) -> Option<Labels>,
) -> AdmissionResponse {
    let request = match review::decode(review) {
        Ok(request) => request,
        Err(e) => return review::refused(review::uid(review), e.code(), message(&e)),
    };
    let refused = |e: Refusal| {
        let mut response = AdmissionResponse::from(&request).deny(message(&e));
        response.result.code = e.code();
        response
    };
    let allowed = |outcome: String, warnings: Vec<String>| {
        let mut response = AdmissionResponse::from(&request);
        response
            .audit_annotations
            .insert("injection".to_string(), outcome);
        response.warnings = (!warnings.is_empty()).then_some(warnings);
        response
    };
    let pod_request = match review::read(&request) {
        Ok(review::Request::Pod(r)) => r,
        Ok(review::Request::Skip(why)) => return allowed(format!("skipped: {why}"), vec![]),
        Err(e) => return refused(e),
    };
    let ns_labels = namespace_labels(&pod_request.namespace);
    match inject_pod(
        &pod_request.pod,
        &pod_request.namespace,
        ns_labels.as_ref(),
        cfg,
    ) {
        Err(e) => refused(e),
        Ok(Injected::Skipped(why)) => allowed(format!("skipped: {why}"), vec![]),
        Ok(Injected::Pod { pod, warnings }) => {
            let before = serde_json::to_value(&pod_request.pod).unwrap_or(Value::Null);
            let after = serde_json::to_value(&*pod).unwrap_or(Value::Null);
            let mut patch = patch::diff(&before, &after);
            if !patch.0.is_empty()
                && !pod_request
                    .raw
                    .get("metadata")
                    .is_some_and(Value::is_object)
            {
                // The typed pod always has metadata; the pod as sent may not.
                patch.0.insert(0, patch::add_empty_metadata());
            }
            if patch.0.is_empty() {
                // An injected pod injected again: nothing changes.
                return allowed("injected (unchanged)".into(), warnings);
            }
            match allowed("injected".into(), warnings).with_patch(patch) {
                Ok(response) => response,
                Err(e) => refused(Refusal::Invalid(e.to_string())),
            }
        }
    }
}

fn message(e: &Refusal) -> String {
    format!("meshd sidecar injection: {e}")
}
