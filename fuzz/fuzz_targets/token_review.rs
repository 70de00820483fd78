//! An API server's TokenReview answer (JSON) to the identity meshd derives from it, and a
//! bearer token's unverified `exp`: any input gives an identity or an error, never a panic;
//! an identity always names a namespace, a service account and a pod.

#![no_main]

use k8s_openapi::api::authentication::v1::TokenReview;
use libfuzzer_sys::fuzz_target;
use meshd::kube::token::{identity_from_review, token_expiry};

fuzz_target!(|data: &[u8]| {
    if let Ok(review) = serde_json::from_slice::<TokenReview>(data)
        && let Ok(id) = identity_from_review(&review, "istio-ca", "cluster.local")
    {
        assert!(!id.namespace.is_empty() && !id.service_account.is_empty());
        assert!(!id.workload.is_empty());
    }
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = token_expiry(token);
    }
});
