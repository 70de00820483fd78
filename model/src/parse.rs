//! Multi-document Istio YAML → typed objects, each error located as `file:line`.
//!
//! A YAML syntax error anywhere makes the whole file unparseable (the caller keeps the file's last
//! good content); a document that parses but is not a valid object (unknown kind, unsupported
//! field, bad value) is rejected on its own and the file's other documents are kept.

use crate::networking as net;
use crate::security as sec;
use crate::{ConfigError, ConfigObject, Kind, ObjectMeta, SourcePos, Spec, validate};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;

/// What one file contributed: the objects accepted and the documents rejected.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileConfig {
    /// Shared: the document cache, the assembled config and the generator hold one copy.
    pub objects: Vec<Arc<ConfigObject>>,
    pub rejected: Vec<ConfigError>,
    /// `kind: Secret` documents holding TLS credentials (Gateway `credentialName`).
    pub credentials: Vec<crate::credential::Credential>,
}

struct Document<'a> {
    text: &'a str,
    /// 1-based line of the document's first line in the file.
    first_line: usize,
}

fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            docs.push(Document {
                text: &text[start_byte..offset],
                first_line: start_line,
            });
            start_byte = offset + line.len();
            start_line = idx + 2;
        }
        offset += line.len();
    }
    docs.push(Document {
        text: &text[start_byte..],
        first_line: start_line,
    });
    for d in &mut docs {
        while let Some(nl) = d.text.find('\n') {
            if !d.text[..nl].trim().is_empty() {
                break;
            }
            d.text = &d.text[nl + 1..];
            d.first_line += 1;
        }
    }
    docs.retain(|d| {
        d.text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

/// serde_yaml puts " at line L column C" (document-relative) after the problem and after its
/// context; we report our own file-relative position instead, so every such mark goes.
fn strip_location(message: &str) -> String {
    const MARK: &str = " at line ";
    let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let mut out = String::new();
    let mut rest = message;
    while let Some(i) = rest.find(MARK) {
        let after = &rest[i + MARK.len()..];
        let n = digits(after);
        if n == 0 {
            out.push_str(&rest[..i + MARK.len()]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..i]);
        rest = &after[n..];
        if let Some(col) = rest.strip_prefix(" column ") {
            rest = &col[digits(col)..];
        }
    }
    out.push_str(rest);
    out
}

fn yaml_error(file: &str, doc: &Document<'_>, err: &serde_yaml::Error) -> ConfigError {
    let line = err
        .location()
        .map(|l| doc.first_line + l.line().saturating_sub(1))
        .unwrap_or(doc.first_line);
    ConfigError {
        file: file.to_string(),
        line,
        message: strip_location(&err.to_string()),
        object: None,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<ObjectMeta>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope<T> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[allow(dead_code)]
    metadata: serde_yaml::Value,
    spec: T,
    #[allow(dead_code)]
    #[serde(default)]
    status: Option<serde_yaml::Value>,
}

fn line_of_key(doc: &Document<'_>, key: &str) -> usize {
    doc.text
        .lines()
        .position(|l| l.starts_with(key))
        .map(|i| doc.first_line + i)
        .unwrap_or(doc.first_line)
}

/// The document read into its spec type from the tree parsed once; on failure the text is read
/// again, for the error's line.
fn typed_spec<T: DeserializeOwned>(
    file: &str,
    doc: &Document<'_>,
    value: serde_yaml::Value,
    wrap: fn(T) -> Spec,
) -> Result<Spec, ConfigError> {
    serde_yaml::from_value::<Envelope<T>>(value)
        .or_else(|_| serde_yaml::from_str::<Envelope<T>>(doc.text))
        .map(|env| wrap(env.spec))
        .map_err(|e| yaml_error(file, doc, &e))
}

/// The header of a parsed document, read from the tree; from the text (for the error's line)
/// when a field has the wrong type.
fn header_of(
    file: &str,
    doc: &Document<'_>,
    value: &serde_yaml::Value,
) -> Result<Header, ConfigError> {
    let text_field = |key: &str| match value.get(key) {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(serde_yaml::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    };
    let fast = (|| {
        Ok::<_, ()>(Header {
            api_version: text_field("apiVersion")?,
            kind: text_field("kind")?,
            metadata: match value.get("metadata") {
                None | Some(serde_yaml::Value::Null) => None,
                Some(m) => Some(serde_yaml::from_value(m.clone()).map_err(|_| ())?),
            },
        })
    })();
    fast.or_else(|()| serde_yaml::from_str(doc.text).map_err(|e| yaml_error(file, doc, &e)))
}

/// An AuthorizationPolicy whose spec does not read in full (a field meshd does not know, a value
/// of the wrong type) is not dropped, which would lift the restriction it was written to impose:
/// it is kept with only its selector and the error, and fails closed (`MeshConfig` reports it).
/// When even the selector does not read, the policy covers its whole namespace.
fn unreadable_policy(doc: &Document<'_>, mut error: ConfigError) -> sec::AuthorizationPolicy {
    let value: serde_yaml::Value = serde_yaml::from_str(doc.text).unwrap_or_default();
    let selector = value
        .get("spec")
        .and_then(|s| s.get("selector"))
        .map(|s| serde_yaml::from_value::<sec::WorkloadSelector>(s.clone()));
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

fn parse_document(
    file: &str,
    doc: &Document<'_>,
    value: serde_yaml::Value,
) -> Result<ConfigObject, ConfigError> {
    let header = header_of(file, doc, &value)?;
    let err_at = |key: &str, message: String| ConfigError {
        file: file.to_string(),
        line: line_of_key(doc, key),
        message,
        object: None,
    };
    let kind_name = header
        .kind
        .ok_or_else(|| err_at("", "document has no `kind`".into()))?;
    let kind = Kind::from_name(&kind_name).ok_or_else(|| {
        err_at(
            "kind:",
            format!(
                "unsupported kind `{kind_name}` (meshd reads {})",
                Kind::ALL.map(|k| k.name()).join(", ")
            ),
        )
    })?;
    let api_version = header
        .api_version
        .ok_or_else(|| err_at("kind:", format!("{kind} has no `apiVersion`")))?;
    if !kind.accepts_api_version(&api_version) {
        return Err(err_at(
            "apiVersion:",
            format!(
                "unsupported apiVersion `{api_version}` for {kind} (expected {}/v1)",
                kind.group()
            ),
        ));
    }
    let meta = header.metadata.unwrap_or_default();
    if meta.name.is_empty() {
        return Err(err_at("metadata:", format!("{kind} has no metadata.name")));
    }
    let key = crate::ObjectKey {
        kind,
        namespace: meta.namespace().to_string(),
        name: meta.name.clone(),
    };
    let name_object = |mut e: ConfigError| {
        e.object = Some(key.clone());
        e
    };
    let spec = match kind {
        Kind::ServiceEntry => typed_spec::<net::ServiceEntry>(file, doc, value, Spec::ServiceEntry),
        Kind::WorkloadEntry => {
            typed_spec::<net::WorkloadEntry>(file, doc, value, Spec::WorkloadEntry)
        }
        Kind::DestinationRule => {
            typed_spec::<net::DestinationRule>(file, doc, value, Spec::DestinationRule)
        }
        Kind::VirtualService => {
            typed_spec::<net::VirtualService>(file, doc, value, Spec::VirtualService)
        }
        Kind::Gateway => typed_spec::<net::Gateway>(file, doc, value, Spec::Gateway),
        Kind::Sidecar => typed_spec::<net::Sidecar>(file, doc, value, Spec::Sidecar),
        Kind::PeerAuthentication => {
            typed_spec::<sec::PeerAuthentication>(file, doc, value, Spec::PeerAuthentication)
        }
        Kind::EnvoyFilter => {
            typed_spec::<crate::envoyfilter::EnvoyFilter>(file, doc, value, Spec::EnvoyFilter)
        }
        Kind::AuthorizationPolicy => {
            typed_spec::<sec::AuthorizationPolicy>(file, doc, value, Spec::AuthorizationPolicy)
                .or_else(|e| Ok(Spec::AuthorizationPolicy(unreadable_policy(doc, e))))
        }
    }
    .map_err(name_object)?;
    let object = ConfigObject {
        api_version,
        meta,
        source: SourcePos {
            file: file.to_string(),
            line: doc.first_line,
        },
        spec,
    };
    validate::object(&object).map_err(|message| name_object(err_at("spec:", message)))?;
    Ok(object)
}

/// A `kind: Secret` document (`apiVersion: v1`): its TLS credential, `Ok(None)` when it holds
/// none; `None` when the document is not a Secret.
fn parse_secret(
    file: &str,
    doc: &Document<'_>,
    value: &serde_yaml::Value,
) -> Option<Result<Option<crate::credential::Credential>, ConfigError>> {
    let header = header_of(file, doc, value).ok()?;
    if header.kind.as_deref() != Some("Secret") {
        return None;
    }
    let err_at = |key: &str, message: String| ConfigError {
        file: file.to_string(),
        line: line_of_key(doc, key),
        message,
        object: None,
    };
    Some((|| {
        if header.api_version.as_deref() != Some("v1") {
            return Err(err_at(
                "apiVersion:",
                "a Secret is apiVersion v1".to_string(),
            ));
        }
        let meta = header.metadata.unwrap_or_default();
        if meta.name.is_empty() {
            return Err(err_at("metadata:", "Secret has no metadata.name".into()));
        }
        let tls = crate::credential::from_secret_document(value)
            .map_err(|m| err_at("data:", format!("Secret {}: {m}", meta.name)))?;
        Ok(tls.map(|tls| crate::credential::Credential {
            namespace: meta.namespace().to_string(),
            name: meta.name.clone(),
            source: SourcePos {
                file: file.to_string(),
                line: doc.first_line,
            },
            tls,
        }))
    })())
}

/// Parse one file. `Err` when the file is not YAML at all (keep its last good content);
/// otherwise the accepted objects and the per-document rejections.
pub fn parse_file(file: &str, text: &str) -> Result<FileConfig, Vec<ConfigError>> {
    parse_file_cached(file, text, &mut DocumentCache::default())
}

/// What one file's documents read as last time, by their text: an edit re-parses only the
/// documents it touched (one DestinationRule in a file of thousands costs one document).
#[derive(Default)]
pub struct DocumentCache {
    docs: HashMap<String, (usize, Parsed)>,
}

#[derive(Clone)]
enum Parsed {
    Object(Arc<ConfigObject>),
    Credential(Option<crate::credential::Credential>),
    Rejected(ConfigError),
}

impl Parsed {
    /// The same document, found `from` lines further down than when it was read.
    fn moved(mut self, from: usize, to: usize) -> Parsed {
        if from == to {
            return self;
        }
        let shift = |line: &mut usize| *line = (*line + to).saturating_sub(from);
        match &mut self {
            Parsed::Object(o) => {
                let o = Arc::make_mut(o);
                shift(&mut o.source.line);
                if let Spec::AuthorizationPolicy(p) = &mut o.spec
                    && let Some(e) = &mut p.unreadable
                {
                    shift(&mut e.line);
                }
            }
            Parsed::Credential(Some(c)) => shift(&mut c.source.line),
            Parsed::Credential(None) => {}
            Parsed::Rejected(e) => shift(&mut e.line),
        }
        self
    }
}

fn parse_one(file: &str, doc: &Document<'_>, value: serde_yaml::Value) -> Parsed {
    if let Some(secret) = parse_secret(file, doc, &value) {
        return match secret {
            Ok(c) => Parsed::Credential(c),
            Err(e) => Parsed::Rejected(e),
        };
    }
    match parse_document(file, doc, value) {
        Ok(obj) => Parsed::Object(Arc::new(obj)),
        Err(e) => Parsed::Rejected(e),
    }
}

/// [`parse_file`], reading again only documents whose text `cache` has not seen.
pub fn parse_file_cached(
    file: &str,
    text: &str,
    cache: &mut DocumentCache,
) -> Result<FileConfig, Vec<ConfigError>> {
    let docs = split_documents(text);
    // Each new document's YAML is parsed once; the header and the spec are read from that tree.
    let mut values = Vec::with_capacity(docs.len());
    let mut syntax_errors = Vec::new();
    for doc in &docs {
        if cache.docs.contains_key(doc.text) {
            values.push(None);
            continue;
        }
        match serde_yaml::from_str::<serde_yaml::Value>(doc.text) {
            Ok(v) => values.push(Some(v)),
            Err(e) => syntax_errors.push(yaml_error(file, doc, &e)),
        }
    }
    if !syntax_errors.is_empty() {
        return Err(syntax_errors);
    }
    let mut seen: HashMap<String, (usize, Parsed)> = HashMap::with_capacity(docs.len());
    let mut out = FileConfig::default();
    for (doc, value) in docs.iter().zip(values) {
        let (text, parsed) = match value {
            Some(v) => (doc.text.to_string(), parse_one(file, doc, v)),
            None => match cache.docs.remove_entry(doc.text) {
                Some((text, (line, p))) => (text, p.moved(line, doc.first_line)),
                // The same text earlier in this file took the cache's entry.
                None => {
                    let (line, p) = seen[doc.text].clone();
                    (doc.text.to_string(), p.moved(line, doc.first_line))
                }
            },
        };
        match parsed.clone() {
            Parsed::Object(o) => out.objects.push(o),
            Parsed::Credential(Some(c)) => out.credentials.push(c),
            Parsed::Credential(None) => {}
            Parsed::Rejected(e) => out.rejected.push(e),
        }
        seen.entry(text).or_insert((doc.first_line, parsed));
    }
    cache.docs = seen;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached re-parse reads exactly like a fresh parse: objects, credentials, rejections
    /// and every line number, after edits that change, add, move and drop documents.
    #[test]
    fn a_cached_reparse_equals_a_fresh_parse() {
        let se = |name: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: a}}\nspec:\n  hosts: [{name}.a.svc.cluster.local]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 10.0.0.1}}]\n"
            )
        };
        let unknown = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bad, namespace: a}\nspec:\n  hosts: [bad.a]\n  bogus: 1\n";
        let unreadable = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  selector: {matchLabels: {app: x}}\n  rules: 7\n";
        let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: a}\nstringData: {password: x}\n";
        let versions = [
            [
                se("one"),
                unknown.into(),
                unreadable.into(),
                se("two"),
                secret.into(),
            ]
            .join("---\n"),
            // One edited, one added above the rest: every later line moves.
            [
                se("zero"),
                se("one").replace("10.0.0.1", "10.0.0.9"),
                unknown.into(),
                unreadable.into(),
                se("two"),
                secret.into(),
            ]
            .join("---\n"),
            // One dropped, order changed.
            [se("two"), unreadable.into(), unknown.into(), se("zero")].join("---\n"),
        ];
        let mut cache = DocumentCache::default();
        for text in &versions {
            let cached = parse_file_cached("f.yaml", text, &mut cache).unwrap();
            let fresh = parse_file("f.yaml", text).unwrap();
            assert_eq!(cached.objects, fresh.objects);
            assert_eq!(cached.rejected, fresh.rejected);
            assert_eq!(cached.credentials, fresh.credentials);
            assert!(!fresh.rejected.is_empty());
        }
        // A syntax error leaves the cache as it was, and the next good parse still agrees.
        assert!(parse_file_cached("f.yaml", "kind: [unclosed\n", &mut cache).is_err());
        let again = parse_file_cached("f.yaml", &versions[0], &mut cache).unwrap();
        assert_eq!(
            again.objects,
            parse_file("f.yaml", &versions[0]).unwrap().objects
        );
    }

    /// Documents an edit left alone come back as the same shared objects, not copies (the
    /// assembled config and the generator hold them by reference), a repeated one included.
    #[test]
    fn a_cached_reparse_shares_the_objects_it_did_not_read_again() {
        let se = |name: &str, address: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: a}}\nspec:\n  hosts: [{name}.a.svc.cluster.local]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: {address}}}]\n"
            )
        };
        let mut cache = DocumentCache::default();
        let first = [se("one", "10.0.0.1"), se("two", "10.0.0.2")].join("---\n");
        let before = parse_file_cached("f.yaml", &first, &mut cache).unwrap();
        let edited = [se("one", "10.0.0.1"), se("two", "10.0.0.3")].join("---\n");
        let after = parse_file_cached("f.yaml", &edited, &mut cache).unwrap();
        assert!(Arc::ptr_eq(&before.objects[0], &after.objects[0]));
        assert!(!Arc::ptr_eq(&before.objects[1], &after.objects[1]));
        let repeated = format!("{edited}---\n{}", se("one", "10.0.0.1"));
        let again = parse_file_cached("f.yaml", &repeated, &mut cache).unwrap();
        assert_eq!(
            again.objects,
            parse_file("f.yaml", &repeated).unwrap().objects
        );
        assert!(Arc::ptr_eq(&before.objects[0], &again.objects[0]));
        assert!(Arc::ptr_eq(&after.objects[1], &again.objects[1]));
        assert_ne!(again.objects[0].source.line, again.objects[2].source.line);
    }

    #[test]
    fn secrets_become_credentials_and_gateways_may_name_them() {
        let text = "\
apiVersion: v1
kind: Secret
metadata: {name: shop-cert, namespace: istio-system}
type: kubernetes.io/tls
stringData:
  tls.crt: \"-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n\"
  tls.key: \"-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----\\n\"
---
apiVersion: v1
kind: Secret
metadata: {name: half, namespace: istio-system}
stringData:
  tls.crt: \"-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n\"
---
apiVersion: v1
kind: Secret
metadata: {name: app-password}
stringData: {password: hunter2}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: app}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE, credentialName: shop-cert}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: both, namespace: app}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [x.example.com]
    tls: {mode: SIMPLE, credentialName: c, serverCertificate: /c.pem, privateKey: /k.pem}
";
        let f = parse_file("gw.yaml", text).unwrap();
        assert_eq!(f.credentials.len(), 1, "{:?}", f.credentials);
        assert_eq!(
            (
                f.credentials[0].namespace.as_str(),
                f.credentials[0].name.as_str()
            ),
            ("istio-system", "shop-cert")
        );
        assert_eq!(f.objects.len(), 1, "{:?}", f.objects);
        let msgs: Vec<String> = f.rejected.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(
            msgs[0].starts_with("gw.yaml:")
                && msgs[0].contains("Secret half: has a certificate but no private key"),
            "{msgs:?}"
        );
        assert!(
            msgs[1].contains("either credentialName or the certificate files"),
            "{msgs:?}"
        );
        let mesh = crate::MeshConfig::assemble([&f]);
        assert!(
            mesh.credentials
                .contains_key(&("istio-system".into(), "shop-cert".into()))
        );
    }

    const GOOD: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: billing
  namespace: voicecore-ai
spec:
  host: billing-service.voicecore-ai.svc.cluster.local
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 100
---
# a comment-only document is skipped
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: broken
spec:
  host: x
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnectionz: 1
---
apiVersion: networking.istio.io/v1
kind: Frobnicator
metadata:
  name: f
spec: {}
";

    #[test]
    fn rejects_documents_on_their_own_with_file_and_line() {
        let cfg = parse_file("mesh.yaml", GOOD).unwrap();
        assert_eq!(cfg.objects.len(), 1);
        assert_eq!(cfg.objects[0].meta.name, "billing");
        assert_eq!(cfg.objects[0].source.line, 1);
        assert_eq!(cfg.rejected.len(), 2, "{:?}", cfg.rejected);
        let field = &cfg.rejected[0];
        assert_eq!(field.line, 24, "{field}");
        assert!(field.message.contains("maxConnectionz"), "{field}");
        let kind = &cfg.rejected[1];
        assert_eq!(kind.line, 27, "{kind}");
        assert!(kind.message.contains("Frobnicator"), "{kind}");
        assert_eq!(kind.to_string().split(':').next(), Some("mesh.yaml"));
    }

    /// A value past what its field can hold (here a duration of 3 * 10^12 years, which once
    /// panicked) rejects its document with the field and the line; the file's other documents
    /// stay.
    #[test]
    fn an_out_of_range_duration_rejects_its_document_only() {
        let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bomb, namespace: a}
spec:
  hosts: [b]
  http:
  - route: [{destination: {host: b}}]
    timeout: 99999999999999999999s
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: s, namespace: a}
spec: {}
";
        let cfg = parse_file("bomb.yaml", text).unwrap();
        assert_eq!(cfg.objects.len(), 1);
        assert_eq!(cfg.objects[0].meta.name, "s");
        let [e] = &cfg.rejected[..] else {
            panic!("{:?}", cfg.rejected)
        };
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("spec.http[0].timeout"), "{e}");
        assert!(e.message.contains("out of range"), "{e}");
        let object = e.object.as_ref().expect("the object is named");
        assert_eq!(object.to_string(), "VirtualService a/bomb");
    }

    #[test]
    fn syntax_error_fails_the_file() {
        let text = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: x\n";
        let errs = parse_file("bad.yaml", text).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].file, "bad.yaml");
        assert!(errs[0].line >= 3, "{}", errs[0]);
        // Only our file-relative position, not serde_yaml's document-relative ones.
        assert!(!errs[0].message.contains(" at line "), "{}", errs[0]);
    }

    #[test]
    fn every_yaml_location_mark_is_stripped() {
        assert_eq!(
            strip_location(
                "did not find expected ',' or ']' at line 2 column 1, while parsing a flow sequence at line 1 column 7"
            ),
            "did not find expected ',' or ']', while parsing a flow sequence"
        );
        assert_eq!(
            strip_location("unknown field `x` at line 9"),
            "unknown field `x`"
        );
        assert_eq!(strip_location("see at line foo"), "see at line foo");
    }

    #[test]
    fn older_api_versions_are_read_unchanged() {
        let text = "apiVersion: networking.istio.io/v1alpha3\nkind: Sidecar\nmetadata:\n  name: s\nspec:\n  egress:\n  - hosts: [\"./*\"]\n";
        let cfg = parse_file("s.yaml", text).unwrap();
        assert_eq!(cfg.objects.len(), 1, "{:?}", cfg.rejected);
        let text =
            "apiVersion: networking.istio.io/v2\nkind: Sidecar\nmetadata:\n  name: s\nspec: {}\n";
        let cfg = parse_file("s.yaml", text).unwrap();
        assert_eq!(cfg.rejected[0].line, 1);
    }
}
