//! The generated CRD schemas: structural (checked by our own validator, itself tested on what an
//! API server refuses), typed as Istio serves the fields, and open to fields the model lacks.

use super::*;
use crate::{Kind, envoyfilter, networking, security};
use serde_json::{Map, json};

fn crd(kind: &str) -> Value {
    CRD_KINDS
        .iter()
        .find(|k| k.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"))
        .definition()
}

/// The spec schema of `kind` at `path` (property names; `[]` steps into items).
fn at(kind: &str, path: &str) -> Value {
    let crd = crd(kind);
    let mut node = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    for step in path.split('.').filter(|s| !s.is_empty()) {
        let (name, items) = match step.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (step, false),
        };
        node = if name == "{}" {
            &node["additionalProperties"]
        } else {
            &node["properties"][name]
        };
        assert!(!node.is_null(), "{kind}: no {path} (at {step})");
        if items {
            node = &node["items"];
        }
    }
    node.clone()
}

fn required(schema: &Value) -> Vec<&str> {
    schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn every_crd_schema_is_structural() {
    for kind in CRD_KINDS {
        let crd = kind.definition();
        let versions = crd["spec"]["versions"].as_array().unwrap();
        assert_eq!(versions.len(), kind.versions.0.len());
        for version in versions {
            let schema = &version["schema"]["openAPIV3Schema"];
            let problems = structural_problems(schema);
            assert!(problems.is_empty(), "{}: {problems:#?}", kind.kind);
            assert_eq!(schema["properties"]["spec"]["type"], "object");
        }
    }
}

#[test]
fn the_validator_finds_what_an_api_server_refuses() {
    let good = json!({"type": "object", "properties": {
        "a": {"type": "string", "enum": ["X"]},
        "b": {"type": "array", "items": {"type": "integer", "format": "uint32"}},
        "c": {"type": "object", "additionalProperties": {"type": "string"}},
        "d": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    }, "required": ["a"]});
    assert_eq!(structural_problems(&good), Vec::<String>::new());
    let bad = [
        (
            json!({"type": "object", "properties": {"a": {}}}),
            "properties.a: no type",
        ),
        (
            json!({"$ref": "#/components/schemas/A"}),
            "`$ref` is not allowed",
        ),
        (
            json!({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}}),
            "`anyOf`",
        ),
        (
            json!({"type": "string", "oneOf": [{"enum": ["A"]}]}),
            "`oneOf`",
        ),
        (json!({"type": ["string", "null"]}), "is not one of"),
        (
            json!({"type": "object", "properties": {"a": {"type": "string"}},
                "additionalProperties": {"type": "string"}}),
            "properties and additionalProperties",
        ),
        (
            json!({"type": "object", "additionalProperties": false}),
            "must be a schema",
        ),
        (json!({"type": "array"}), "an array without items"),
        (
            json!({"type": "string", "enum": ["A", null]}),
            "enum value null",
        ),
        (json!({"type": "string", "default": "A"}), "`default`"),
        (json!({"type": "string", "const": "A"}), "`const`"),
        (
            json!({"type": "object", "required": ["a"]}),
            "required \"a\" is not a property",
        ),
        (
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": false}),
            "must be true",
        ),
        (
            json!({"type": "string", "properties": {}}),
            "properties on a node",
        ),
    ];
    for (schema, want) in bad {
        let problems = structural_problems(&schema);
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{schema}: {problems:?} lacks {want}"
        );
    }
}

#[test]
fn schemars_output_alone_is_not_structural() {
    // What the rewrite is for: the raw derive output has $ref, anyOf, type arrays and
    // additionalProperties: false, each of which an API server refuses.
    let raw = SchemaSettings::openapi3()
        .into_generator()
        .into_root_schema_for::<networking::DestinationRule>()
        .to_value();
    let problems = structural_problems(&raw).join("\n");
    for want in ["`$ref`", "`anyOf`", "`components`"] {
        assert!(problems.contains(want), "{want} not found in:\n{problems}");
    }
}

#[test]
fn fields_are_typed_with_istio_enums_formats_and_required_fields() {
    let dr = at("DestinationRule", "");
    assert_eq!(required(&dr), ["host"]);
    assert_eq!(required(&at("DestinationRule", "subsets[]")), ["name"]);
    let tls_mode = at("DestinationRule", "trafficPolicy.tls.mode");
    assert_eq!(tls_mode["type"], "string");
    assert_eq!(
        tls_mode["enum"],
        json!(["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"])
    );
    let max_connections = at(
        "DestinationRule",
        "trafficPolicy.connectionPool.tcp.maxConnections",
    );
    assert_eq!(
        max_connections,
        json!({"type": "integer", "format": "uint32", "minimum": 0, "maximum": u32::MAX,
               "nullable": true})
    );
    assert_eq!(
        at(
            "DestinationRule",
            "trafficPolicy.connectionPool.tcp.connectTimeout"
        )["type"],
        "string"
    );
    assert_eq!(at("DestinationRule", "trafficPolicy")["nullable"], true);
    assert_eq!(
        at(
            "DestinationRule",
            "trafficPolicy.loadBalancer.warmup.minimumPercent"
        )["format"],
        "double"
    );
    assert_eq!(at("VirtualService", "http")["type"], "array");
    assert_eq!(
        required(&at("VirtualService", "http[].route[]")),
        ["destination"]
    );
    assert_eq!(
        required(&at("VirtualService", "http[].route[].destination")),
        ["host"]
    );
    assert_eq!(required(&at("ServiceEntry", "")), ["hosts"]);
    assert_eq!(
        at("ServiceEntry", "resolution")["enum"],
        json!(["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"])
    );
    assert_eq!(at("WorkloadEntry", "ports.{}")["format"], "uint32");
    assert_eq!(at("EnvoyFilter", "priority")["format"], "int32");
    // Port-keyed maps: the API server's JSON keys are strings ("8080").
    let port_level = at("PeerAuthentication", "portLevelMtls");
    assert_eq!(port_level["type"], "object");
    assert!(port_level.get("properties").is_none());
    let mut modes = at("PeerAuthentication", "portLevelMtls.{}.mode")["enum"].clone();
    modes.as_array_mut().unwrap().sort_by_key(|m| m.to_string());
    assert_eq!(modes, json!(["DISABLE", "PERMISSIVE", "STRICT", "UNSET"]));
    assert_eq!(
        required(&at("AuthorizationPolicy", "rules[].when[]")),
        ["key"]
    );
}

#[test]
fn what_istio_leaves_optional_is_not_required() {
    for (kind, path, field) in [
        ("VirtualService", "http[].retries", "attempts"),
        (
            "VirtualService",
            "http[].route[].destination.port",
            "number",
        ),
        ("VirtualService", "http[].mirrorPercentage", "value"),
        ("VirtualService", "http[].directResponse", "status"),
        ("AuthorizationPolicy", "rules[].from[]", "source"),
        ("AuthorizationPolicy", "rules[].to[]", "operation"),
        ("EnvoyFilter", "configPatches[]", "patch"),
        ("EnvoyFilter", "configPatches[]", "applyTo"),
        ("EnvoyFilter", "configPatches[].patch", "operation"),
    ] {
        let node = at(kind, path);
        assert!(
            node["properties"].get(field).is_some(),
            "{kind} {path}.{field}"
        );
        assert!(
            !required(&node).contains(&field),
            "{kind} {path}.{field} is required"
        );
    }
}

#[test]
fn every_istio_optional_entry_names_a_field_the_model_requires() {
    // A stale entry (a renamed type or field) would silently stop relaxing anything.
    let mut definitions = Map::new();
    fn collect<T: JsonSchema>(definitions: &mut Map<String, Value>) {
        let mut root = SchemaSettings::openapi3()
            .into_generator()
            .into_root_schema_for::<T>()
            .to_value();
        if let Some(Value::Object(d)) = root.pointer_mut("/components/schemas").map(Value::take) {
            definitions.extend(d);
        }
        definitions.insert(T::schema_name().into(), root);
    }
    collect::<networking::VirtualService>(&mut definitions);
    collect::<networking::DestinationRule>(&mut definitions);
    collect::<networking::Gateway>(&mut definitions);
    collect::<networking::Sidecar>(&mut definitions);
    collect::<security::AuthorizationPolicy>(&mut definitions);
    collect::<envoyfilter::EnvoyFilter>(&mut definitions);
    for (ty, field) in ISTIO_OPTIONAL {
        let def = definitions
            .get(*ty)
            .unwrap_or_else(|| panic!("no model type {ty}"));
        assert!(
            required(def).contains(field),
            "{ty}.{field} is not required by the model"
        );
    }
}

#[test]
fn unknown_fields_are_kept_at_every_level_of_the_model_and_nothing_is_defaulted() {
    fn walk(node: &Value, path: &str, problems: &mut Vec<String>) {
        if node.get("properties").is_some()
            && node["x-kubernetes-preserve-unknown-fields"] != json!(true)
        {
            problems.push(format!("{path}: unknown fields would be pruned"));
        }
        if node.get("default").is_some() {
            problems.push(format!("{path}: a default"));
        }
        for (name, sub) in node["properties"].as_object().into_iter().flatten() {
            walk(sub, &format!("{path}.{name}"), problems);
        }
        for key in ["items", "additionalProperties"] {
            if let Some(sub) = node.get(key) {
                walk(sub, &format!("{path}.{key}"), problems);
            }
        }
    }
    let mut problems = Vec::new();
    for kind in CRD_KINDS {
        walk(&kind.spec_schema(), kind.kind, &mut problems);
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // Free-form values (an EnvoyFilter patch's Envoy JSON) are objects kept whole.
    assert_eq!(
        at("EnvoyFilter", "configPatches[].patch.value"),
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true, "nullable": true})
    );
}

#[test]
fn every_kind_meshd_reads_has_its_crd_at_versions_meshd_accepts() {
    for kind in Kind::ALL {
        let crd_kind = CRD_KINDS
            .iter()
            .find(|k| k.kind == kind.name())
            .unwrap_or_else(|| panic!("no CRD for {kind}"));
        assert_eq!(crd_kind.group, kind.group(), "{kind}");
        assert!(
            crd_kind.spec.is_some(),
            "{kind}: the model reads it, so its schema is the model's"
        );
        let (served, storage) = crd_kind.versions;
        assert!(
            served.contains(&storage),
            "{kind}: stores a version it does not serve"
        );
        for version in served {
            let api_version = format!("{}/{version}", kind.group());
            assert!(
                kind.accepts_api_version(&api_version),
                "{kind}: serves {api_version}"
            );
        }
    }
    let crd = crd("EnvoyFilter");
    let versions: Vec<_> = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["storage"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [("v1alpha3".to_string(), true)],
        "Istio serves EnvoyFilter only as v1alpha3"
    );
}

#[test]
fn a_kind_the_model_does_not_read_yet_takes_any_spec_and_says_why() {
    // Every Istio kind meshd reads has its model now; a future one starts out like this.
    let future = super::CrdKind {
        kind: "Future",
        group: "future.istio.io",
        plural: "futures",
        short_names: &[],
        versions: (&["v1"], "v1"),
        spec: None,
    };
    for kind in CRD_KINDS
        .iter()
        .filter(|k| k.spec.is_none())
        .chain([&future])
    {
        let spec = kind.spec_schema();
        assert_eq!(
            spec["x-kubernetes-preserve-unknown-fields"], true,
            "{}",
            kind.kind
        );
        assert!(
            spec["description"]
                .as_str()
                .unwrap()
                .contains("does not read"),
            "{}",
            kind.kind
        );
        assert_eq!(
            kind.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"],
            spec
        );
    }
}
