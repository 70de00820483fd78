//! Istio's config validation as an admission webhook (`POST /validate` on the webhook port, as
//! istiod serves it): an Istio object under review is read by the same code the Kubernetes
//! watches use, so `kubectl apply` of an object meshd would reject fails with meshd's message
//! naming the field, and `meshd analyze`, the watches and the webhook never disagree. Valid
//! fields meshd does not act on yet come back as admission warnings.
//!
//! Only each object on its own is judged here, as Istio's webhook does: what depends on other
//! objects (a route to a subset no DestinationRule defines) is reported by the watches and
//! `meshd analyze`, because the other object may simply not be written yet.

use crate::kube::index::IstioObject;
use kube::core::admission::{AdmissionResponse, Operation};
use meshd_injector::review;
use meshd_model::{FileConfig, Kind, MeshConfig};
use serde_json::Value;

/// The AdmissionResponse answering `body`, and its HTTP status (`review::review_body` writes
/// the AdmissionReview around it).
pub fn review(body: &[u8]) -> (u16, AdmissionResponse) {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let message = format!("request body is not JSON: {e}");
            return (400, review::refused(String::new(), 400, message));
        }
    };
    // An envelope that does not decode is a failed call, not a verdict on an object.
    let request = match review::decode(&value) {
        Ok(request) => request,
        Err(e) => {
            return (
                400,
                review::refused(review::uid(&value), 400, e.to_string()),
            );
        }
    };
    let allowed = |warnings: Vec<String>| {
        let mut response = AdmissionResponse::from(&request);
        response.warnings = (!warnings.is_empty()).then_some(warnings);
        (200, response)
    };
    // A deletion removes config; nothing to judge.
    if request.operation == Operation::Delete {
        return allowed(vec![]);
    }
    let kind_name = request.kind.kind.as_str();
    let Some(kind) = Kind::from_name(kind_name) else {
        // An Istio kind meshd does not implement (Telemetry, WasmPlugin…) may serve
        // an istiod beside meshd: stored, with a warning that meshd's workloads ignore it.
        let group = request.kind.group.as_str();
        let warnings = if group.ends_with(".istio.io") {
            vec![format!(
                "{kind_name} ({group}) is not implemented by meshd: workloads meshd serves are not affected by it"
            )]
        } else {
            vec![]
        };
        return allowed(warnings);
    };
    let Some(object) = request
        .object
        .as_ref()
        .map(|o| &o.raw)
        .filter(|o| o.is_object())
    else {
        let mut response =
            AdmissionResponse::from(&request).deny("AdmissionReview request has no object");
        response.result.code = 400;
        return (400, response);
    };
    let read = IstioObject::parse(kind, object);
    match read.parsed {
        // A verdict, not a failed call: the API server reads refusals from a 200 answer.
        Err(rejected) => {
            let mut response = AdmissionResponse::from(&request).deny(rejected.to_string());
            response.result.code = 400;
            (200, response)
        }
        Ok(obj) => {
            let file = FileConfig {
                objects: vec![obj],
                ..FileConfig::default()
            };
            let warnings = MeshConfig::assemble([&file])
                .warnings
                .iter()
                .map(|w| w.reason.clone())
                .collect();
            allowed(warnings)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The answer as the API server reads it.
    fn review(body: &[u8]) -> (u16, Value) {
        let (code, response) = super::review(body);
        let answer = serde_json::from_slice(&review::review_body(&response)).unwrap();
        (code, answer)
    }

    fn review_of(kind: &str, operation: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "networking.istio.io", "version": "v1", "kind": kind},
                "operation": operation,
                "namespace": "shop",
                "object": object,
            }
        }))
        .unwrap()
    }

    fn destination_rule(lb: Value) -> Value {
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "cart", "namespace": "shop"},
            "spec": {"host": "cart", "trafficPolicy": {"loadBalancer": lb}},
        })
    }

    #[test]
    fn an_invalid_object_is_refused_with_the_field_that_is_wrong() {
        let vs = json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"hosts": ["web"], "http": [{
                "route": [{"destination": {"host": "web"}}],
                "timeout": "99999999999999999999s",
            }]},
        });
        let (code, answer) = review(&review_of("VirtualService", "CREATE", vs));
        assert_eq!(code, 200, "a verdict the API server reads");
        let r = &answer["response"];
        assert_eq!(r["uid"], "u-1");
        assert_eq!(r["allowed"], false);
        let message = r["status"]["message"].as_str().unwrap();
        assert!(message.contains("shop/web"), "{message}");
        assert!(message.contains("spec.http[0].timeout"), "{message}");
    }

    #[test]
    fn a_valid_object_is_allowed_and_unapplied_fields_are_warnings() {
        let plain = destination_rule(json!({"simple": "ROUND_ROBIN"}));
        let (code, answer) = review(&review_of("DestinationRule", "CREATE", plain));
        assert_eq!(code, 200);
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("warnings").is_none(), "{answer}");

        let locality = destination_rule(json!({"localityLbSetting": {"enabled": true}}));
        let (code, answer) = review(&review_of("DestinationRule", "UPDATE", locality));
        assert_eq!(code, 200);
        assert_eq!(answer["response"]["allowed"], true);
        let warnings = answer["response"]["warnings"].as_array().unwrap();
        assert!(
            warnings
                .iter()
                .any(|w| w.as_str().unwrap().contains("localityLbSetting")),
            "{warnings:?}"
        );
    }

    #[test]
    fn deletions_other_kinds_and_hostile_bodies() {
        let (code, answer) = review(&review_of("VirtualService", "DELETE", Value::Null));
        assert_eq!((code, &answer["response"]["allowed"]), (200, &json!(true)));
        let (code, answer) = review(&review_of("Pod", "CREATE", json!({})));
        assert_eq!((code, &answer["response"]["allowed"]), (200, &json!(true)));
        // An Istio kind meshd does not implement: stored (an istiod may use it), with a warning.
        let (code, answer) = review(&review_of("WasmPlugin", "CREATE", json!({})));
        assert_eq!((code, &answer["response"]["allowed"]), (200, &json!(true)));
        let warning = answer["response"]["warnings"][0].as_str().unwrap();
        assert!(warning.contains("WasmPlugin"), "{warning}");
        for body in [&b"{["[..], b"{}", b"[]", b"null"] {
            let (code, answer) = review(body);
            assert_eq!(code, 400, "{answer}");
            assert_eq!(answer["response"]["allowed"], false);
        }
        let (code, _) = review(&review_of("VirtualService", "CREATE", json!("text")));
        assert_eq!(code, 400);
    }

    /// The envelope decodes as kube-core's admission/v1 types, shared with the injector: a
    /// review of another apiVersion, without a uid to answer to, or with an operation the API
    /// never sends is a failed call naming what is wrong, where the hand-read envelope judged
    /// the object anyway.
    #[test]
    fn envelopes_decode_as_admission_v1() {
        let vs = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "shop"}, "spec": {"hosts": ["web"]}});
        let good: Value =
            serde_json::from_slice(&review_of("VirtualService", "CREATE", vs)).unwrap();
        let (code, answer) = review(&serde_json::to_vec(&good).unwrap());
        assert_eq!(
            (code, &answer["response"]["allowed"]),
            (200, &json!(true)),
            "{answer}"
        );
        let mut other_version = good.clone();
        other_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
        let mut no_uid = good.clone();
        no_uid["request"].as_object_mut().unwrap().remove("uid");
        let mut unknown_operation = good.clone();
        unknown_operation["request"]["operation"] = json!("PATCH");
        let cases = [
            (other_version, "admission.k8s.io/v1 only"),
            (no_uid, "no valid uid"),
            (unknown_operation, "no valid operation"),
        ];
        for (body, want) in cases {
            let (code, answer) = review(&serde_json::to_vec(&body).unwrap());
            assert_eq!(code, 400, "{answer}");
            assert_eq!(answer["response"]["allowed"], false);
            let message = answer["response"]["status"]["message"].as_str().unwrap();
            assert!(message.contains(want), "{message} (wanted {want})");
        }
    }
}
