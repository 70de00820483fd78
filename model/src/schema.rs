//! OpenAPI v3 schemas of the Istio specs, derived from the model's own types (`schemars`) and
//! rewritten into the structural form a Kubernetes API server (1.20 and later) takes for a
//! CustomResourceDefinition: every node typed, no `$ref`, no `anyOf`, `nullable` where serde reads
//! `null` as absent, no defaults (the API server would write them into stored objects).
//!
//! Two choices about what the API server lets through, both so that meshd — not a schema that
//! cannot explain itself — has the last word with a message naming the field:
//! - Every object of the model keeps fields it does not know (`x-kubernetes-preserve-unknown-fields`).
//!   A field Istio has and meshd's model does not is then stored as written and reported by meshd
//!   (`meshd analyze`, the validating webhook, `/debug/configz`), where a closed schema would make
//!   the API server prune it silently: the object would then mean something else than its author
//!   wrote, with nobody told.
//! - `required` is what the model requires, less the fields Istio itself leaves optional
//!   ([`ISTIO_OPTIONAL`]): the API server refuses nothing Istio accepts on that account.
//!
//! Types, enums, number ranges and formats are checked by the API server; so `http: "x"` or a
//! `tls.mode` outside Istio's enum fails at `kubectl apply` with the API server's own message.

mod crd;
mod structural;

pub use crd::{CRD_KINDS, CrdKind, custom_resource_definitions};
pub use structural::structural_problems;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;
use std::borrow::Cow;

/// Fields the model requires (it cannot act without them, and says so naming the field) that
/// Istio's API leaves optional: (type, field as spelled in YAML).
pub const ISTIO_OPTIONAL: &[(&str, &str)] = &[
    ("PortSelector", "number"),
    ("HttpRetry", "attempts"),
    ("Percent", "value"),
    ("RuleFrom", "source"),
    ("RuleTo", "operation"),
    ("ConfigPatch", "applyTo"),
    ("ConfigPatch", "patch"),
    ("Patch", "operation"),
    ("HttpDirectResponse", "status"),
    ("GatewayPort", "name"),
    ("GatewayPort", "protocol"),
];

/// The structural schema of a spec type `T`.
pub fn spec_schema<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|s| s.meta_schema = None)
        .into_generator();
    let mut root = generator.into_root_schema_for::<T>().to_value();
    let mut definitions = root
        .as_object_mut()
        .and_then(|o| o.remove("components"))
        .and_then(|mut c| c.as_object_mut().and_then(|c| c.remove("schemas")))
        .and_then(|d| match d {
            Value::Object(d) => Some(d),
            _ => None,
        })
        .unwrap_or_default();
    for (name, schema) in definitions.iter_mut() {
        relax_required(name, schema);
    }
    relax_required(&T::schema_name(), &mut root);
    structural::rewrite(root, &definitions)
}

fn relax_required(type_name: &str, schema: &mut Value) {
    let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut) else {
        return;
    };
    required.retain(|field| {
        !ISTIO_OPTIONAL
            .iter()
            .any(|(ty, f)| *ty == type_name && field == f)
    });
    if required.is_empty() {
        schema.as_object_mut().map(|o| o.remove("required"));
    }
}

/// A schema for a map keyed by port number: JSON (and so the API server) spells the keys as
/// strings, `"8080"`; their range is checked by meshd's validation, which names the port.
impl<T: JsonSchema> JsonSchema for crate::security::PortMap<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("PortMap_{}", T::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let values = generator.subschema_for::<T>();
        schemars::json_schema!({
            "type": "object",
            "additionalProperties": values,
        })
    }
}

#[cfg(test)]
mod tests;
