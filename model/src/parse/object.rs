//! One object, as a JSON value, into the model: the single reading shared by a document of a
//! YAML file and an object from the API server. Only where an error is said to be differs:
//! `file:line` for a file, the object's name and the field's path for the cluster.

use super::path::FieldPath;
use super::yaml;
use crate::networking as net;
use crate::security as sec;
use crate::{ConfigError, ConfigObject, Kind, ObjectKey, ObjectMeta, SourcePos, Spec, validate};
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;

/// Where an object was read from, and so how its errors are located.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Origin<'a> {
    /// One document of a YAML file: errors say `file:line`.
    File {
        file: &'a str,
        /// The document's text, searched for an error's line.
        text: &'a str,
        /// 1-based line of the document's first line in the file.
        first_line: usize,
    },
    /// An object from the API server: errors name it and the field's path (no line: the
    /// server's JSON has none a user wrote).
    Cluster { source: &'a str },
}

impl Origin<'_> {
    fn source(&self) -> SourcePos {
        match *self {
            Origin::File {
                file, first_line, ..
            } => SourcePos {
                file: file.to_string(),
                line: first_line,
            },
            Origin::Cluster { source } => SourcePos {
                file: source.to_string(),
                line: 0,
            },
        }
    }

    /// An error about the field at `path`.
    pub(crate) fn error_at(&self, path: &FieldPath, message: String) -> ConfigError {
        let SourcePos { file, line } = self.source();
        let line = match *self {
            Origin::File {
                text, first_line, ..
            } if !path.is_empty() => yaml::line_of(text, path).map_or(line, |l| first_line + l - 1),
            _ => line,
        };
        ConfigError {
            file,
            line,
            message,
            object: None,
            host: None,
        }
    }

    /// A typed read that failed: the message is prefixed with the field's path.
    fn read_error(&self, e: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
        let path = FieldPath::from_serde(e.path());
        let inner = json_message(&e.into_inner());
        let message = if path.is_empty() {
            inner
        } else {
            format!("{path}: {inner}")
        };
        self.error_at(&path, message)
    }
}

/// serde_json's message without the position it adds when a map key is read as a number (a
/// position in the key's text, which means nothing to the user).
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if e.line() == 0 {
        return text;
    }
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix)
        .map_or(text.clone(), str::to_string)
}

fn read<T: DeserializeOwned>(
    value: &Value,
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    serde_path_to_error::deserialize(value)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope<T> {
    #[allow(dead_code)]
    api_version: IgnoredAny,
    #[allow(dead_code)]
    kind: IgnoredAny,
    #[allow(dead_code)]
    metadata: IgnoredAny,
    spec: T,
    #[allow(dead_code)]
    #[serde(default)]
    status: Option<IgnoredAny>,
}

struct Header {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: ObjectMeta,
}

fn header(origin: &Origin<'_>, value: &Value) -> Result<Header, ConfigError> {
    if !value.is_object() {
        return Err(origin.error_at(
            &FieldPath::default(),
            "a document must be a mapping with apiVersion, kind, metadata and spec".into(),
        ));
    }
    let text = |key: &str| match value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(origin.error_at(&FieldPath::field(key), format!("{key}: must be a string"))),
    };
    let metadata = match value.get("metadata") {
        None | Some(Value::Null) => ObjectMeta::default(),
        Some(m) => read::<ObjectMeta>(m).map_err(|e| {
            let path = FieldPath::under("metadata", FieldPath::from_serde(e.path()));
            let message = format!("{path}: {}", json_message(&e.into_inner()));
            origin.error_at(&path, message)
        })?,
    };
    Ok(Header {
        api_version: text("apiVersion")?,
        kind: text("kind")?,
        metadata,
    })
}

fn typed_spec<T: DeserializeOwned>(
    origin: &Origin<'_>,
    value: &Value,
    wrap: fn(Box<T>) -> Spec,
) -> Result<Spec, ConfigError> {
    read::<Envelope<T>>(value)
        .map(|env| wrap(Box::new(env.spec)))
        .map_err(|e| origin.read_error(e))
}

/// An AuthorizationPolicy whose spec does not read in full (a field meshd does not know, a value
/// of the wrong type) is not dropped, which would lift the restriction it was written to impose:
/// it is kept with only its selector and the error, and fails closed (`MeshConfig` reports it).
/// When even the selector does not read, the policy covers its whole namespace.
fn unreadable_policy(value: &Value, mut error: ConfigError) -> sec::AuthorizationPolicy {
    let selector = value
        .get("spec")
        .and_then(|s| s.get("selector"))
        .map(read::<sec::WorkloadSelector>);
    let selector = match selector {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => {
            error.message.push_str(" (the selector does not read either: the policy covers every workload in its namespace)");
            None
        }
    };
    sec::AuthorizationPolicy {
        selector,
        unreadable: Some(error),
        ..Default::default()
    }
}

/// Reads one Istio object: header, typed spec, then the checks of the object on its own.
pub(crate) fn read_object(origin: &Origin<'_>, value: &Value) -> Result<ConfigObject, ConfigError> {
    let header = header(origin, value)?;
    let top = |key: &str, message: String| origin.error_at(&FieldPath::field(key), message);
    let kind_name = header
        .kind
        .ok_or_else(|| top("", "document has no `kind`".into()))?;
    let kind = Kind::from_name(&kind_name).ok_or_else(|| {
        top(
            "kind",
            format!(
                "unsupported kind `{kind_name}` (meshd reads {})",
                Kind::ALL.map(|k| k.name()).join(", ")
            ),
        )
    })?;
    let api_version = header
        .api_version
        .ok_or_else(|| top("kind", format!("{kind} has no `apiVersion`")))?;
    if !kind.accepts_api_version(&api_version) {
        return Err(top(
            "apiVersion",
            format!(
                "unsupported apiVersion `{api_version}` for {kind} (expected {}/v1)",
                kind.group()
            ),
        ));
    }
    let meta = header.metadata;
    if meta.name.is_empty() {
        return Err(top("metadata", format!("{kind} has no metadata.name")));
    }
    let key = ObjectKey {
        kind,
        namespace: meta.namespace().to_string(),
        name: meta.name.clone(),
    };
    let host = match kind {
        Kind::DestinationRule => value["spec"]["host"]
            .as_str()
            .map(|h| Box::new(h.to_string())),
        _ => None,
    };
    let name_object = |mut e: ConfigError| {
        e.object = Some(key.clone());
        e.host = host.clone();
        e
    };
    let spec = match kind {
        Kind::ServiceEntry => typed_spec::<net::ServiceEntry>(origin, value, Spec::ServiceEntry),
        Kind::WorkloadEntry => typed_spec::<net::WorkloadEntry>(origin, value, Spec::WorkloadEntry),
        Kind::DestinationRule => {
            typed_spec::<net::DestinationRule>(origin, value, Spec::DestinationRule)
        }
        Kind::VirtualService => {
            typed_spec::<net::VirtualService>(origin, value, Spec::VirtualService)
        }
        Kind::Gateway => typed_spec::<net::Gateway>(origin, value, Spec::Gateway),
        Kind::Sidecar => typed_spec::<net::Sidecar>(origin, value, Spec::Sidecar),
        Kind::PeerAuthentication => {
            typed_spec::<sec::PeerAuthentication>(origin, value, Spec::PeerAuthentication)
        }
        Kind::EnvoyFilter => {
            typed_spec::<crate::envoyfilter::EnvoyFilter>(origin, value, Spec::EnvoyFilter)
        }
        Kind::RequestAuthentication => {
            typed_spec::<sec::RequestAuthentication>(origin, value, Spec::RequestAuthentication)
        }
        Kind::Telemetry => {
            typed_spec::<crate::telemetry::Telemetry>(origin, value, Spec::Telemetry)
        }
        Kind::AuthorizationPolicy => {
            typed_spec::<sec::AuthorizationPolicy>(origin, value, Spec::AuthorizationPolicy)
                .or_else(|e| {
                    Ok(Spec::AuthorizationPolicy(Box::new(unreadable_policy(
                        value, e,
                    ))))
                })
        }
    }
    .map_err(name_object)?;
    let object = ConfigObject {
        api_version,
        meta,
        source: origin.source(),
        spec,
    };
    validate::object(&object)
        .map_err(|message| name_object(origin.error_at(&FieldPath::leading(&message), message)))?;
    Ok(object)
}

/// A `kind: Secret` document (`apiVersion: v1`): its TLS credential, `Ok(None)` when it holds
/// none; `None` when the document is not a Secret.
pub(crate) fn read_secret(
    origin: &Origin<'_>,
    value: &Value,
) -> Option<Result<Option<crate::credential::Credential>, ConfigError>> {
    let header = header(origin, value).ok()?;
    if header.kind.as_deref() != Some("Secret") {
        return None;
    }
    let top = |key: &str, message: String| origin.error_at(&FieldPath::field(key), message);
    Some((|| {
        if header.api_version.as_deref() != Some("v1") {
            return Err(top("apiVersion", "a Secret is apiVersion v1".to_string()));
        }
        let meta = header.metadata;
        if meta.name.is_empty() {
            return Err(top("metadata", "Secret has no metadata.name".into()));
        }
        let tls = crate::credential::from_secret_document(value)
            .map_err(|m| top("data", format!("Secret {}: {m}", meta.name)))?;
        Ok(tls.map(|tls| crate::credential::Credential {
            namespace: meta.namespace().to_string(),
            name: meta.name.clone(),
            source: origin.source(),
            tls,
        }))
    })())
}

/// An Istio object from the API server (its JSON, as watched), read exactly as a document of a
/// file is. Errors name the field's path (`spec.portLevelMtls.8080.mode: ...`) and carry no line;
/// `source` is what the object is said to come from.
pub fn cluster_object(source: &str, value: &Value) -> Result<ConfigObject, ConfigError> {
    read_object(&Origin::Cluster { source }, value)
}
