//! Multi-document Istio YAML files → typed objects, each error located as `file:line`.
//!
//! Each document is read on its own (`object`, the same reading as an object from the API
//! server): one that is not YAML, or not a valid object (unknown kind, unsupported field, bad
//! value), is rejected alone and the file's other documents are kept. Only a file none of whose
//! documents is YAML (a half-written save, a file that is not YAML at all) fails whole, and the
//! caller keeps its last good content.

mod object;
pub(crate) mod path;
pub(crate) mod yaml;

pub use object::cluster_object;

use crate::{ConfigError, ConfigObject, Spec};
use object::Origin;
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

fn parse_one(file: &str, doc: &Document<'_>) -> Parsed {
    let origin = Origin::File {
        file,
        text: doc.text,
        first_line: doc.first_line,
    };
    let value = match yaml::to_json(doc.text) {
        Ok(v) => v,
        Err(e) => {
            return Parsed::Unreadable(Box::new(ConfigError {
                file: file.to_string(),
                line: doc.first_line + e.line - 1,
                message: e.message,
                object: None,
                host: None,
            }));
        }
    };
    if let Some(secret) = object::read_secret(&origin, &value) {
        return match secret {
            Ok(c) => Parsed::Credential(c.map(Box::new)),
            Err(e) => Parsed::Rejected(Box::new(e)),
        };
    }
    match object::read_object(&origin, &value) {
        Ok(obj) => Parsed::Object(Arc::new(obj)),
        Err(e) => Parsed::Rejected(Box::new(e)),
    }
}

/// One YAML document as the JSON value Kubernetes decodes from it, read exactly as file mode
/// reads a document: what `kubectl apply` sends the API server.
pub fn document_json(text: &str) -> Result<serde_json::Value, String> {
    yaml::to_json(text).map_err(|e| format!("line {}: {}", e.line, e.message))
}

/// Parse one file. `Err` when none of its documents is YAML (keep its last good content);
/// otherwise the accepted objects and the per-document rejections.
pub fn parse_file(file: &str, text: &str) -> Result<FileConfig, Vec<ConfigError>> {
    parse_file_cached(file, text, &mut DocumentCache::default())
}

/// What one file's documents read as last time, by their text: an edit re-parses only the
/// documents it touched (one DestinationRule in a file of thousands costs one document).
/// Keyed by the text's SHA-256 rather than the text itself, and with the rare outcomes boxed,
/// so the cache costs ≈ 60 bytes per document instead of a second copy of the file.
#[derive(Default)]
pub struct DocumentCache {
    docs: HashMap<DocumentDigest, (usize, Parsed)>,
}

type DocumentDigest = [u8; 32];

fn digest(text: &str) -> DocumentDigest {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).into()
}

#[derive(Clone)]
enum Parsed {
    Object(Arc<ConfigObject>),
    Credential(Option<Box<crate::credential::Credential>>),
    Rejected(Box<ConfigError>),
    /// Not YAML.
    Unreadable(Box<ConfigError>),
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
            Parsed::Rejected(e) | Parsed::Unreadable(e) => shift(&mut e.line),
        }
        self
    }
}

/// [`parse_file`], reading again only documents whose text `cache` has not seen.
pub fn parse_file_cached(
    file: &str,
    text: &str,
    cache: &mut DocumentCache,
) -> Result<FileConfig, Vec<ConfigError>> {
    let docs = split_documents(text);
    let mut seen: HashMap<DocumentDigest, (usize, Parsed)> = HashMap::with_capacity(docs.len());
    let mut out = FileConfig::default();
    let mut syntax_errors = Vec::new();
    for doc in &docs {
        let key = digest(doc.text);
        let parsed = match cache.docs.remove(&key) {
            Some((line, p)) => p.moved(line, doc.first_line),
            None => match seen.get(&key) {
                // The same text earlier in this file took the cache's entry.
                Some((line, p)) => p.clone().moved(*line, doc.first_line),
                None => parse_one(file, doc),
            },
        };
        match parsed.clone() {
            Parsed::Object(o) => out.objects.push(o),
            Parsed::Credential(Some(c)) => out.credentials.push(*c),
            Parsed::Credential(None) => {}
            Parsed::Rejected(e) => out.rejected.push(*e),
            Parsed::Unreadable(e) => {
                syntax_errors.push((*e).clone());
                out.rejected.push(*e);
            }
        }
        seen.entry(key).or_insert((doc.first_line, parsed));
    }
    if !docs.is_empty() && syntax_errors.len() == docs.len() {
        // Nothing of the file reads: keep the cache as it was for the next good save.
        cache.docs.extend(seen);
        return Err(syntax_errors);
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
    fn a_file_that_is_not_yaml_fails_whole() {
        let text = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: x\n";
        let errs = parse_file("bad.yaml", text).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].file, "bad.yaml");
        assert!(errs[0].line >= 3, "{}", errs[0]);
        // Only our file-relative position, not the parser's document-relative one.
        assert!(!errs[0].message.contains("line "), "{}", errs[0]);
    }

    /// A document that is not YAML (an unclosed flow sequence) is rejected with its own line;
    /// the file's other documents, before and after it, are kept. An IPv6 address in a flow
    /// sequence, which once stopped the parser, reads as Kubernetes reads it.
    #[test]
    fn a_syntax_error_rejects_its_document_only() {
        let text = "\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: before, namespace: a}
spec: {}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: broken, namespace: a}
spec:
  hosts: [x.example.com]
  addresses: [1.2.3.4, 2001:db8::1
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: six, namespace: a}
spec:
  hosts: [six.example.com]
  addresses: [1.2.3.4, 2001:db8::1, ::1]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
";
        let cfg = parse_file("mixed.yaml", text).unwrap();
        let names: Vec<&str> = cfg.objects.iter().map(|o| o.meta.name.as_str()).collect();
        assert_eq!(names, ["before", "six"], "{:?}", cfg.rejected);
        let [e] = &cfg.rejected[..] else {
            panic!("{:?}", cfg.rejected)
        };
        assert_eq!(e.file, "mixed.yaml");
        assert!((11..=12).contains(&e.line), "{e}");
        let Spec::ServiceEntry(se) = &cfg.objects[1].spec else {
            panic!()
        };
        assert_eq!(se.addresses, ["1.2.3.4", "2001:db8::1", "::1"]);
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
