//! The webhook's request path: any bytes in, an AdmissionReview out, never a panic; a patch,
//! when there is one, applies to the pod it was made for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_injector::{InjectConfig, Labels, ResponseExt, handle};

fuzz_target!(|data: &[u8]| {
    let cfg = InjectConfig::default();
    let lookup = |ns: &str| {
        (ns.len() % 2 == 0).then(|| {
            Labels::from([("istio-injection".to_string(), "enabled".to_string())])
        })
    };
    let reply = handle(data, &cfg, &lookup);
    let body: serde_json::Value = serde_json::from_slice(&reply.body()).expect("reply is JSON");
    assert_eq!(body["kind"], "AdmissionReview");
    if let Some(ops) = reply.response.patch_ops() {
        let review: serde_json::Value = serde_json::from_slice(data).expect("patched => parsed");
        let mut pod = review["request"]["object"].clone();
        let patch: json_patch::Patch =
            serde_json::from_value(serde_json::Value::Array(ops)).expect("patch decodes");
        json_patch::patch(&mut pod, &patch).expect("patch applies");
    }
});
