//! The AdmissionReview (v1) envelope: reading the request's Pod out of it, hostile bytes and
//! all, and the response the API server gets back.

use crate::Labels;
use crate::refusal::{Refusal, invalid};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

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

    pub(crate) fn refused(uid: String, code: u16, message: String) -> AdmissionResponse {
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

    pub(crate) fn allowed(
        uid: String,
        outcome: String,
        patch: Option<&json_patch::Patch>,
        warnings: Vec<String>,
    ) -> AdmissionResponse {
        let patch = patch.map(|p| {
            base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(p).unwrap_or_default())
        });
        AdmissionResponse {
            uid,
            allowed: true,
            patch_type: patch.as_ref().map(|_| "JSONPatch".to_string()),
            patch,
            status: None,
            warnings,
            audit_annotations: BTreeMap::from([("injection".to_string(), outcome)]),
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

/// What a pod-CREATE review asks about.
pub struct PodRequest {
    pub namespace: String,
    /// The pod as sent (patches apply to this).
    pub raw: Value,
    pub pod: Pod,
}

/// What the envelope holds: a pod to consider, or a reason to let the request through.
pub enum Request {
    Pod(Box<PodRequest>),
    Skip(String),
}

/// The request's uid, when it has a usable one (for echoing back even on refusal).
pub fn uid(review: &Value) -> String {
    review
        .get("request")
        .and_then(|r| r.get("uid"))
        .and_then(Value::as_str)
        .filter(|u| u.len() <= 256)
        .unwrap_or("")
        .to_string()
}

/// Validates the envelope and reads the Pod.
pub fn read(review: &Value) -> Result<Request, Refusal> {
    let Some(top) = review.as_object() else {
        return invalid("the body is not an AdmissionReview object");
    };
    match top.get("apiVersion").and_then(Value::as_str) {
        Some("admission.k8s.io/v1") => {}
        Some(other) => {
            return invalid(format!(
                "AdmissionReview apiVersion `{other}` is not supported (admission.k8s.io/v1 only)"
            ));
        }
        None => return invalid("the body has no apiVersion; expected an AdmissionReview"),
    }
    if top.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return invalid("the body's kind is not AdmissionReview");
    }
    let Some(req) = top.get("request").and_then(Value::as_object) else {
        return invalid("the AdmissionReview has no request");
    };
    match req.get("uid").and_then(Value::as_str) {
        Some(u) if !u.is_empty() && u.len() <= 256 => {}
        _ => return invalid("the AdmissionReview request has no valid uid"),
    }
    let kind = req.get("kind");
    let group = kind.and_then(|k| k.get("group")).and_then(Value::as_str);
    let kind_name = kind.and_then(|k| k.get("kind")).and_then(Value::as_str);
    if kind_name != Some("Pod") || group.is_some_and(|g| !g.is_empty()) {
        return Ok(Request::Skip("not a Pod".into()));
    }
    if req
        .get("subResource")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Ok(Request::Skip("a subresource request".into()));
    }
    match req.get("operation").and_then(Value::as_str) {
        Some("CREATE") => {}
        Some(op) => return Ok(Request::Skip(format!("operation {op}, not CREATE"))),
        None => return invalid("the AdmissionReview request has no operation"),
    }
    let Some(raw) = req.get("object").filter(|o| o.is_object()) else {
        return invalid("the AdmissionReview request carries no Pod object");
    };
    let pod = crate::pod::parse(raw)?;
    let namespace = req
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or(pod.metadata.namespace.as_deref().filter(|s| !s.is_empty()));
    let Some(namespace) = namespace else {
        return invalid("the request names no namespace");
    };
    Ok(Request::Pod(Box::new(PodRequest {
        namespace: namespace.to_string(),
        raw: raw.clone(),
        pod,
    })))
}

/// A namespace's labels as the caller knows them.
pub type NamespaceLookup<'a> = &'a dyn Fn(&str) -> Option<Labels>;
