//! The incoming Pod: shape checks with messages naming the field, then the typed `k8s-openapi`
//! Pod every later step works on.

use crate::Labels;
use crate::refusal::{Refusal, invalid};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

fn string_map(v: Option<&Value>, what: &str) -> Result<(), Refusal> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(m)) => {
            for (k, v) in m {
                if !v.is_string() {
                    return invalid(format!("{what}[{k}] is not a string"));
                }
            }
            Ok(())
        }
        Some(_) => invalid(format!("{what} is not a map of strings")),
    }
}

fn named_list(v: Option<&Value>, what: &str) -> Result<(), Refusal> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(items)) => {
            for item in items {
                if !item.get("name").is_some_and(Value::is_string) {
                    return invalid(format!("an entry of {what} has no name"));
                }
            }
            Ok(())
        }
        Some(_) => invalid(format!("{what} is not a list")),
    }
}

/// Checks the fields injection reads, then parses the whole Pod (a type error anywhere is named
/// by its path).
pub fn parse(raw: &Value) -> Result<Pod, Refusal> {
    let meta = raw.get("metadata");
    if meta.is_some_and(|m| !m.is_object() && !m.is_null()) {
        return invalid("the Pod's metadata is not an object");
    }
    let Some(spec) = raw.get("spec").filter(|s| s.is_object()) else {
        return invalid("the Pod has no spec");
    };
    string_map(meta.and_then(|m| m.get("labels")), "metadata.labels")?;
    string_map(
        meta.and_then(|m| m.get("annotations")),
        "metadata.annotations",
    )?;
    named_list(spec.get("containers"), "spec.containers")?;
    named_list(spec.get("initContainers"), "spec.initContainers")?;
    named_list(spec.get("volumes"), "spec.volumes")?;
    if spec
        .get("containers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return invalid("the Pod has no containers");
    }
    serde_path_to_error::deserialize::<_, Pod>(raw)
        .map_err(|e| Refusal::Invalid(format!("the Pod does not parse: {e}")))
}

pub fn labels(pod: &Pod) -> Labels {
    pod.metadata.labels.clone().unwrap_or_default()
}

pub fn annotations(pod: &Pod) -> Labels {
    pod.metadata.annotations.clone().unwrap_or_default()
}
