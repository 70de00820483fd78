//! Istio's MeshConfig file (what the `istio` ConfigMap's `mesh` key holds), as far as meshd
//! reads it: the `extensionProviders` an AuthorizationPolicy with `action: CUSTOM` names
//! (`envoyExtAuthzHttp`, `envoyExtAuthzGrpc`). Other provider kinds and other MeshConfig fields
//! are accepted and named in warnings, since meshd has flags of its own for them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// One `extensionProviders` entry of an external-authorization kind.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtAuthzProvider {
    pub name: String,
    pub kind: ExtAuthzKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExtAuthzKind {
    Http(ExtAuthzHttp),
    Grpc(ExtAuthzGrpc),
}

impl ExtAuthzProvider {
    /// `(namespace, hostname, port)` of the authorizer's service.
    pub fn service(&self) -> (Option<&str>, &str, u32) {
        let (service, port) = match &self.kind {
            ExtAuthzKind::Http(h) => (&h.service, h.port),
            ExtAuthzKind::Grpc(g) => (&g.service, g.port),
        };
        match service.split_once('/') {
            Some((ns, host)) => (Some(ns), host, port),
            None => (None, service, port),
        }
    }
}

/// Istio's `EnvoyExternalAuthorizationHttpProvider`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzHttp {
    /// `[<namespace>/]<hostname>` of a service in the registry.
    pub service: String,
    pub port: u32,
    #[serde(default, with = "crate::duration::option")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub path_prefix: String,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default)]
    pub status_on_error: String,
    #[serde(default)]
    pub include_request_headers_in_check: Vec<String>,
    /// Istio's deprecated spelling of `includeRequestHeadersInCheck`.
    #[serde(default)]
    pub include_headers_in_check: Vec<String>,
    #[serde(default)]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_allow: Vec<String>,
    pub include_request_body_in_check: Option<RequestBody>,
}

/// Istio's `EnvoyExternalAuthorizationGrpcProvider`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzGrpc {
    pub service: String,
    pub port: u32,
    #[serde(default, with = "crate::duration::option")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default)]
    pub status_on_error: String,
    pub include_request_body_in_check: Option<RequestBody>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestBody {
    #[serde(default)]
    pub max_request_bytes: u32,
    #[serde(default)]
    pub allow_partial_message: bool,
    #[serde(default)]
    pub pack_as_bytes: bool,
}

/// What meshd takes from a MeshConfig file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshFile {
    pub ext_authz: Vec<ExtAuthzProvider>,
    /// `defaultConfig`, the mesh's default ProxyConfig, as written: the injector reads it with
    /// the rules of the `proxy.istio.io/config` annotation.
    pub default_config: Option<serde_json::Value>,
    /// What was read and is not applied (other fields, other provider kinds).
    pub warnings: Vec<String>,
}

const HTTP: &str = "envoyExtAuthzHttp";
const GRPC: &str = "envoyExtAuthzGrpc";

/// Read a MeshConfig YAML document. Errors name the field (`extensionProviders[0].envoyExtAuthzHttp.port: ...`).
pub fn parse_mesh_file(text: &str) -> Result<MeshFile, String> {
    let value = if text.trim().is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        crate::parse::document_json(text)?
    };
    let serde_json::Value::Object(top) = value else {
        return Err("the MeshConfig is not a mapping".into());
    };
    let mut out = MeshFile::default();
    let others: Vec<&str> = top
        .keys()
        .map(String::as_str)
        .filter(|k| !matches!(*k, "extensionProviders" | "defaultConfig"))
        .collect();
    if !others.is_empty() {
        out.warnings.push(format!(
            "MeshConfig fields not read by meshd (see its flags): {}",
            others.join(", ")
        ));
    }
    out.default_config = top.get("defaultConfig").filter(|v| !v.is_null()).cloned();
    let providers = match top.get("extensionProviders") {
        None | Some(serde_json::Value::Null) => return Ok(out),
        Some(serde_json::Value::Array(list)) => list,
        Some(_) => return Err("extensionProviders: expected a list".into()),
    };
    let mut seen = std::collections::BTreeSet::new();
    for (i, entry) in providers.iter().enumerate() {
        let at = format!("extensionProviders[{i}]");
        let serde_json::Value::Object(fields) = entry else {
            return Err(format!("{at}: expected a mapping"));
        };
        let name = match fields.get("name") {
            Some(serde_json::Value::String(n)) if !n.is_empty() => n.clone(),
            _ => return Err(format!("{at}.name: required, a non-empty string")),
        };
        if !seen.insert(name.clone()) {
            return Err(format!("{at}.name: `{name}` is defined twice"));
        }
        let kinds: Vec<&String> = fields.keys().filter(|k| *k != "name").collect();
        let [kind] = kinds.as_slice() else {
            return Err(format!(
                "{at} ({name}): exactly one provider kind is expected, found {}",
                kinds.len()
            ));
        };
        let body = fields[kind.as_str()].clone();
        let at = format!("{at}.{kind}");
        let kind = match kind.as_str() {
            HTTP => ExtAuthzKind::Http(typed(body, &at)?),
            GRPC => ExtAuthzKind::Grpc(typed(body, &at)?),
            other => {
                out.warnings.push(format!(
                    "extensionProviders[{i}] ({name}): kind {other} is ignored (meshd has flags for it)"
                ));
                continue;
            }
        };
        let provider = ExtAuthzProvider { name, kind };
        check(&provider, &at)?;
        out.ext_authz.push(provider);
    }
    Ok(out)
}

fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value, at: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("{at}: {inner}")
        } else {
            format!("{at}.{path}: {inner}")
        }
    })
}

fn check(p: &ExtAuthzProvider, at: &str) -> Result<(), String> {
    let (_, host, port) = p.service();
    if host.is_empty() {
        return Err(format!("{at}.service: required, [<namespace>/]<hostname>"));
    }
    if port == 0 || port > 65535 {
        return Err(format!("{at}.port: {port} is not a port (1-65535)"));
    }
    let (status, prefix) = match &p.kind {
        ExtAuthzKind::Http(h) => (&h.status_on_error, h.path_prefix.as_str()),
        ExtAuthzKind::Grpc(g) => (&g.status_on_error, ""),
    };
    if !prefix.is_empty() && !prefix.starts_with('/') {
        return Err(format!("{at}.pathPrefix: `{prefix}` must start with `/`"));
    }
    if !status.is_empty() && status_code(status).is_none() {
        return Err(format!(
            "{at}.statusOnError: `{status}` is not an HTTP status (100-599)"
        ));
    }
    Ok(())
}

/// `statusOnError` as a number; Istio's default is 403.
pub fn status_code(s: &str) -> Option<u32> {
    if s.is_empty() {
        return Some(403);
    }
    s.parse().ok().filter(|c| (100..600).contains(c))
}

#[cfg(test)]
#[path = "extension_provider_tests.rs"]
mod tests;
