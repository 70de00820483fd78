//! The rewrite of a `schemars` OpenAPI schema into Kubernetes' structural form, and the check of
//! that form (`structural_problems`), which the tests run over every generated schema: an API
//! server refuses a CRD whose schema is not structural, and silently drops keywords it does not
//! know, so a schema that passes here is installed exactly as written.

use serde_json::{Map, Value, json};

const DEFINITIONS: &str = "#/components/schemas/";

/// Keywords `apiextensions.k8s.io/v1` JSONSchemaProps holds that a structural schema may use
/// (the logical junctors and `$ref` are refused by [`structural_problems`] on their own).
const KEYWORDS: &[&str] = &[
    "type",
    "format",
    "description",
    "title",
    "maximum",
    "minimum",
    "exclusiveMaximum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "enum",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "properties",
    "additionalProperties",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
];

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

/// Keywords dropped on the way: `default` (the API server would write it into every stored
/// object, which then no longer reads back as written), and what only JSON Schema tools use.
const DROPPED: &[&str] = &[
    "default", "title", "$schema", "examples", "example", "const",
];

/// `schema` with every `$ref` replaced by its definition, `Option`'s `anyOf [T, null]` by `T` with
/// `nullable`, free-form values (`serde_json::Value`) as objects keeping whatever they hold,
/// and every object of the model keeping fields it does not know (see the module above).
pub fn rewrite(schema: Value, definitions: &Map<String, Value>) -> Value {
    rewrite_node(schema, definitions, 0)
}

fn rewrite_node(schema: Value, definitions: &Map<String, Value>, depth: usize) -> Value {
    // The model has no recursive type; a cycle would be a bug in a new type, caught by the tests.
    assert!(depth < 64, "the model's types nest more than 64 deep");
    let mut node = match schema {
        Value::Object(node) => node,
        // `true`: any value.
        _ => Map::new(),
    };
    node = resolve(node, definitions);
    for key in DROPPED {
        node.remove(*key);
    }
    if node.get("additionalProperties") == Some(&Value::Bool(false)) {
        node.remove("additionalProperties");
    }
    if let Some(Value::Array(types)) = node.get("type") {
        // `Option<T>` of a plain type: `type: [T, null]`.
        let mut types = types.clone();
        if types.iter().any(Value::is_null) || types.contains(&json!("null")) {
            node.insert("nullable".into(), json!(true));
        }
        types.retain(|t| !t.is_null() && t != "null");
        if let [one] = types.as_slice() {
            node.insert("type".into(), one.clone());
        }
    }
    if let Some(values) = node.get_mut("enum").and_then(Value::as_array_mut) {
        values.retain(|v| !v.is_null());
    }
    if node.get("format").and_then(Value::as_str) == Some("uint32") {
        node.entry("maximum").or_insert(json!(u32::MAX));
    }
    if !node.contains_key("type") && !node.contains_key("enum") {
        // A free-form value (`serde_json::Value`): in Istio's API each is an object (a protobuf
        // Struct such as an EnvoyFilter patch value, or a message meshd does not model). Serde
        // reads `null` into it too.
        node.insert("type".into(), json!("object"));
        node.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
        node.insert("nullable".into(), json!(true));
    }
    if let Some(Value::Object(properties)) = node.remove("properties") {
        let properties: Map<String, Value> = properties
            .into_iter()
            .map(|(k, v)| (k, rewrite_node(v, definitions, depth + 1)))
            .collect();
        node.insert("properties".into(), Value::Object(properties));
        node.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = node.remove(key) {
            node.insert(key.into(), rewrite_node(sub, definitions, depth + 1));
        }
    }
    Value::Object(node)
}

/// Inlines `$ref` (and the `allOf: [{$ref}]` schemars writes for a reference with a
/// description) and folds `anyOf: [T, null]` into `T` with `nullable: true`.
fn resolve(mut node: Map<String, Value>, definitions: &Map<String, Value>) -> Map<String, Value> {
    loop {
        if let Some(Value::String(reference)) = node.remove("$ref") {
            let name = reference.strip_prefix(DEFINITIONS).unwrap_or(&reference);
            let target = definitions
                .get(name)
                .and_then(Value::as_object)
                .unwrap_or_else(|| {
                    panic!("schemars wrote a reference to `{reference}` it did not define")
                });
            merge_under(&mut node, target);
            continue;
        }
        if let Some(Value::Array(all)) = node.get("allOf")
            && all.len() == 1
            && let Some(Value::Object(only)) = node
                .remove("allOf")
                .and_then(|mut a| a.as_array_mut().map(|a| a.remove(0)))
        {
            merge_under(&mut node, &only);
            continue;
        }
        if let Some(Value::Array(any)) = node.get("anyOf")
            && any.len() == 2
            && any.iter().filter(|s| is_null(s)).count() == 1
        {
            let any = node.remove("anyOf");
            let other = any
                .as_ref()
                .and_then(Value::as_array)
                .and_then(|a| a.iter().find(|s| !is_null(s)))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            merge_under(&mut node, &other);
            node.insert("nullable".into(), json!(true));
            continue;
        }
        if let Some(Value::Array(one_of)) = node.get("oneOf")
            && let Some(values) = string_enum_values(one_of)
        {
            node.remove("oneOf");
            node.insert("type".into(), json!("string"));
            node.insert("enum".into(), Value::Array(values));
            continue;
        }
        return node;
    }
}

/// Adds `from`'s keywords to `node` where `node` has none of its own (a field's description
/// wins over its type's).
fn merge_under(node: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        node.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

fn is_null(schema: &Value) -> bool {
    schema.get("type") == Some(&json!("null"))
        || schema.get("const") == Some(&Value::Null)
        || schema.get("enum") == Some(&json!([null]))
}

/// The values of a `oneOf` whose every branch is a string enum or constant (schemars writes
/// a unit enum so when a variant has its own doc comment); `None` for any other `oneOf`.
fn string_enum_values(branches: &[Value]) -> Option<Vec<Value>> {
    let mut values = Vec::new();
    for branch in branches {
        if branch.get("type") != Some(&json!("string")) {
            return None;
        }
        match (branch.get("enum"), branch.get("const")) {
            (Some(Value::Array(e)), None) => values.extend(e.iter().cloned()),
            (None, Some(c)) => values.push(c.clone()),
            _ => return None,
        }
    }
    values.iter().all(Value::is_string).then_some(values)
}

/// Why `schema` is not a structural schema an API server installs exactly as written: one
/// `path: problem` per violation; empty when it is.
pub fn structural_problems(schema: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    check(schema, "openAPIV3Schema", &mut problems);
    problems
}

fn check(schema: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(node) = schema.as_object() else {
        problems.push(format!("{path}: a schema must be an object, not {schema}"));
        return;
    };
    for key in node.keys() {
        if !KEYWORDS.contains(&key.as_str()) {
            problems.push(format!(
                "{path}: `{key}` is not allowed in a structural schema"
            ));
        }
    }
    let free_form = node.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
        || node.get("x-kubernetes-int-or-string") == Some(&json!(true));
    if let Some(v) = node.get("x-kubernetes-preserve-unknown-fields")
        && v != &json!(true)
    {
        problems.push(format!(
            "{path}: x-kubernetes-preserve-unknown-fields must be true"
        ));
    }
    let ty = node.get("type").and_then(Value::as_str);
    match (ty, node.get("type")) {
        (Some(t), _) if TYPES.contains(&t) => {}
        (_, Some(other)) => problems.push(format!("{path}: type {other} is not one of {TYPES:?}")),
        (_, None) if !free_form => problems.push(format!("{path}: no type")),
        (_, None) => {}
    }
    if let Some(values) = node.get("enum") {
        match values.as_array() {
            Some(values) if !values.is_empty() => {
                for v in values {
                    let fits = match ty {
                        Some("string") => v.is_string(),
                        Some("integer") => v.is_i64() || v.is_u64(),
                        Some("number") => v.is_number(),
                        Some("boolean") => v.is_boolean(),
                        _ => false,
                    };
                    if !fits {
                        problems.push(format!("{path}: enum value {v} is not of type {ty:?}"));
                    }
                }
            }
            _ => problems.push(format!("{path}: enum must be a non-empty list")),
        }
    }
    let properties = node.get("properties").and_then(Value::as_object);
    if node.contains_key("properties") && properties.is_none() {
        problems.push(format!("{path}: properties must be a map of schemas"));
    }
    if properties.is_some() && ty != Some("object") {
        problems.push(format!("{path}: properties on a node of type {ty:?}"));
    }
    if let Some(additional) = node.get("additionalProperties") {
        if properties.is_some() {
            problems.push(format!(
                "{path}: properties and additionalProperties together"
            ));
        }
        if !additional.is_object() {
            problems.push(format!("{path}: additionalProperties must be a schema"));
        } else {
            check(
                additional,
                &format!("{path}.additionalProperties"),
                problems,
            );
        }
    }
    for (name, sub) in properties.into_iter().flatten() {
        check(sub, &format!("{path}.properties.{name}"), problems);
    }
    if let Some(required) = node.get("required") {
        for name in required.as_array().into_iter().flatten() {
            let known = name
                .as_str()
                .is_some_and(|n| properties.is_some_and(|p| p.contains_key(n)));
            if !known {
                problems.push(format!("{path}: required {name} is not a property"));
            }
        }
    }
    match (ty, node.get("items")) {
        (Some("array"), Some(items)) => check(items, &format!("{path}.items"), problems),
        (Some("array"), None) => problems.push(format!("{path}: an array without items")),
        (_, Some(_)) => problems.push(format!("{path}: items on a node of type {ty:?}")),
        _ => {}
    }
    if node.get("nullable").is_some_and(|n| !n.is_boolean()) {
        problems.push(format!("{path}: nullable must be a boolean"));
    }
}
