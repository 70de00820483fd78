//! The AdmissionReview (v1) envelope, read and written as kube-core's `admission` types: the
//! request decoded with every hostile byte refused by name, the object under review kept as
//! sent (a patch applies to it byte for byte), and the response's wire form.

use crate::Labels;
use crate::refusal::{Refusal, invalid};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::admission::{
    AdmissionRequest, AdmissionResponse, META_API_VERSION_V1, META_KIND, Operation,
};
use kube_core::{ApiResource, DynamicResourceScope, Resource, TypeMeta};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// The object under review exactly as the API server sent it, with its metadata as far as it
/// reads. Each webhook parses `raw` strictly itself (`pod::parse`, the Istio kinds' reader), so
/// a bad field is refused with its path rather than as an envelope that does not decode; and a
/// patch is computed against `raw`, which a typed round trip would reorder or prune.
#[derive(Clone, Debug, Default)]
pub struct RawObject {
    pub raw: Value,
    metadata: ObjectMeta,
}

impl RawObject {
    pub fn new(raw: Value) -> RawObject {
        let metadata = raw
            .get("metadata")
            .and_then(|m| ObjectMeta::deserialize(m).ok())
            .unwrap_or_default();
        RawObject { raw, metadata }
    }
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(RawObject::new)
    }
}

impl Serialize for RawObject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

impl Resource for RawObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The longest request uid echoed back or accepted (the API server sends a UUID).
const MAX_UID_BYTES: usize = 256;

/// The request's uid when it has a usable one, for echoing back on a review that does not
/// decode (the API server matches answers by uid).
pub fn uid(review: &Value) -> String {
    review
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .filter(|u| u.len() <= MAX_UID_BYTES)
        .unwrap_or("")
        .to_string()
}

/// Decodes an `admission.k8s.io/v1` AdmissionReview's request. The envelope's type and its
/// request are read apart because `AdmissionReview<T>` flattens its type fields, and serde
/// buffers a flattened struct's siblings, which loses the path of the field that failed.
pub fn decode(review: &Value) -> Result<AdmissionRequest<RawObject>, Refusal> {
    if !review.is_object() {
        return invalid("the body is not an AdmissionReview object");
    }
    let types = TypeMeta::deserialize(review).map_err(|e| {
        Refusal::Invalid(format!(
            "the body has no apiVersion or kind; expected an AdmissionReview ({e})"
        ))
    })?;
    if types.api_version != META_API_VERSION_V1 {
        return invalid(format!(
            "AdmissionReview apiVersion `{}` is not supported ({META_API_VERSION_V1} only)",
            types.api_version
        ));
    }
    if types.kind != META_KIND {
        return invalid("the body's kind is not AdmissionReview");
    }
    let Some(request) = review.get("request").and_then(Value::as_object) else {
        return invalid("the AdmissionReview has no request");
    };
    let mut request = request.clone();
    zero_fill(&mut request);
    let mut request: AdmissionRequest<RawObject> =
        serde_path_to_error::deserialize(Value::Object(request)).map_err(decode_error)?;
    if request.uid.is_empty() || request.uid.len() > MAX_UID_BYTES {
        return invalid("the AdmissionReview request has no valid uid");
    }
    request.types = types;
    Ok(request)
}

/// Go's decoder (the API server's and Istio's webhook) reads an absent or null field as its zero
/// value, where serde requires kube-core's `kind.group`/`kind.version`, `resource` and
/// `userInfo`. Neither webhook reads them beyond `kind`, so they read as Go reads them; `uid`
/// and `operation` stay required.
fn zero_fill(request: &mut Map<String, Value>) {
    let fields: [(&str, &[&str]); 3] = [
        ("kind", &["group", "version", "kind"]),
        ("resource", &["group", "version", "resource"]),
        ("userInfo", &[]),
    ];
    for (name, strings) in fields {
        let slot = request.entry(name).or_insert(Value::Null);
        if slot.is_null() {
            *slot = Value::Object(Map::new());
        }
        if let Some(object) = slot.as_object_mut() {
            for field in strings {
                let value = object.entry(*field).or_insert(Value::Null);
                if value.is_null() {
                    *value = Value::String(String::new());
                }
            }
        }
    }
}

fn decode_error(e: serde_path_to_error::Error<serde_json::Error>) -> Refusal {
    let path = e.path().to_string();
    let inner = e.into_inner().to_string();
    let field = match inner.strip_prefix("missing field `") {
        Some(rest) if path == "." => rest.split('`').next().unwrap_or(&path).to_string(),
        Some(rest) => format!("{path}.{}", rest.split('`').next().unwrap_or("")),
        None => path,
    };
    Refusal::Invalid(format!(
        "the AdmissionReview request has no valid {field} ({inner})"
    ))
}

/// What a pod-CREATE review asks about.
pub struct PodRequest {
    pub namespace: String,
    /// The pod as sent (patches apply to this).
    pub raw: Value,
    pub pod: Pod,
}

/// What the request holds: a pod to consider, or a reason to let it through.
pub enum Request {
    Pod(Box<PodRequest>),
    Skip(String),
}

/// Reads the Pod out of a decoded request, or says why there is nothing to inject.
pub fn read(request: &AdmissionRequest<RawObject>) -> Result<Request, Refusal> {
    if request.kind.kind != "Pod" || !request.kind.group.is_empty() {
        return Ok(Request::Skip("not a Pod".into()));
    }
    if request
        .sub_resource
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        return Ok(Request::Skip("a subresource request".into()));
    }
    if request.operation != Operation::Create {
        let op = serde_json::to_value(&request.operation).unwrap_or_default();
        let op = op.as_str().unwrap_or("?");
        return Ok(Request::Skip(format!("operation {op}, not CREATE")));
    }
    let Some(raw) = request
        .object
        .as_ref()
        .map(|o| &o.raw)
        .filter(|o| o.is_object())
    else {
        return invalid("the AdmissionReview request carries no Pod object");
    };
    let pod = crate::pod::parse(raw)?;
    let namespace = request
        .namespace
        .as_deref()
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

/// A refusal of a review, with its HTTP-style code in the status (the API server shows the
/// message to the client).
pub fn refused(uid: String, code: u16, message: String) -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid(message);
    response.uid = uid;
    response.result.code = code;
    response
}

/// The AdmissionReview answering with `response`, as bytes. kube-core serializes the patch as a
/// JSON array of numbers (kube-rs#1781); the admission/v1 API documents it, and Istio sends it,
/// as base64 (a third of the size), so it goes out that way.
pub fn review_body(response: &AdmissionResponse) -> Vec<u8> {
    let mut review = serde_json::to_value(response.clone().into_review()).unwrap_or_default();
    if let (Some(patch), Some(slot)) = (&response.patch, review.pointer_mut("/response/patch")) {
        *slot = Value::String(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    serde_json::to_vec(&review).unwrap_or_default()
}

/// Reading an injector response back (tests, metrics, logs).
pub trait ResponseExt {
    /// The JSON Patch operations, if any.
    fn patch_ops(&self) -> Option<Vec<Value>>;
    /// Why the pod was or was not injected (the `injection` audit annotation).
    fn outcome(&self) -> &str;
}

impl ResponseExt for AdmissionResponse {
    fn patch_ops(&self) -> Option<Vec<Value>> {
        serde_json::from_slice(self.patch.as_ref()?).ok()
    }

    fn outcome(&self) -> &str {
        self.audit_annotations
            .get("injection")
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// A namespace's labels as the caller knows them.
pub type NamespaceLookup<'a> = &'a dyn Fn(&str) -> Option<Labels>;
