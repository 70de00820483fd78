//! YAML read as Kubernetes reads it (sigs.k8s.io/yaml turns YAML into JSON, then decodes the
//! JSON): each document becomes a JSON value under YAML 1.2's plain-scalar rules, so an unquoted
//! IPv6 address in a flow sequence (`[2001:db8::1, ::1]`) is a string. What the value says is
//! then read exactly as an object from the API server is; only a file's errors need the line of
//! a field, found again in the text (errors are rare, so the common path keeps no positions).

use super::path::{FieldPath, Step};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{MessageFormatter as _, NonFiniteFloatPolicy, Options, Spanned};
use std::fmt;

/// A document that is not YAML: where (1-based, in the document) and why.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub message: String,
}

fn options() -> Options {
    // Alias expansion, nesting and size stay under serde-saphyr's default budget (a YAML bomb
    // is a syntax error, not an out-of-memory). `.nan` stays text, so the field that cannot
    // hold it is the one reported (JSON has no NaN). Booleans are YAML 1.2's `true`/`false`
    // only: `name: y` or `version: on` is a string, as meshd has always read it.
    serde_saphyr::options! {
        non_finite_float_policy: NonFiniteFloatPolicy::AsString,
        strict_booleans: true,
    }
}

fn message_of(e: &serde_saphyr::Error) -> String {
    let text = serde_saphyr::UserMessageFormatter.format_message(e.without_snippet());
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// One document's text as the JSON value Kubernetes would decode.
pub(crate) fn to_json(text: &str) -> Result<serde_json::Value, SyntaxError> {
    serde_saphyr::from_str_with_options(text, options()).map_err(|e| SyntaxError {
        line: e.location().map_or(1, |l| l.line().max(1) as usize),
        message: message_of(&e),
    })
}

/// The 1-based line (in `text`) of the deepest field of `path` the document has: the line of
/// its key for a mapping entry, of the item for a list entry.
pub(crate) fn line_of(text: &str, path: &FieldPath) -> Option<usize> {
    let root: Spanned<Node> = serde_saphyr::from_str_with_options(text, options()).ok()?;
    let mut line = line_number(&root);
    let mut node = &root.value;
    for step in path.steps() {
        let (next, at) = match (step, node) {
            (Step::Key(k), Node::Map(entries)) => match entries.iter().find(|e| e.key == *k) {
                Some(e) => (&e.value, e.key_line),
                None => break,
            },
            (Step::Index(i), Node::Seq(items)) => match items.get(*i) {
                Some(item) => (item, line_number(item)),
                None => break,
            },
            _ => break,
        };
        node = &next.value;
        if at > 0 {
            line = at;
        }
    }
    (line > 0).then_some(line)
}

fn line_number<T>(s: &Spanned<T>) -> usize {
    usize::try_from(s.referenced.line()).unwrap_or(0)
}

/// A document's shape with the position of every node: only what [`line_of`] walks.
enum Node {
    Scalar,
    Seq(Vec<Spanned<Node>>),
    Map(Vec<Entry>),
}

struct Entry {
    key: String,
    key_line: usize,
    value: Spanned<Node>,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i128<E>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u128<E>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
            entries.push(Entry {
                key_line: line_number(&key),
                key: key.value.0,
                value: map.next_value()?,
            });
        }
        Ok(Node::Map(entries))
    }
}

/// A mapping key as JSON spells it: `8080:` is the key `"8080"`.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyText, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<KeyText, E> {
                Ok(KeyText(s.to_string()))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<KeyText, E> {
                Ok(KeyText(b.to_string()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<KeyText, E> {
                Ok(KeyText(n.to_string()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<KeyText, E> {
                Ok(KeyText(n.to_string()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<KeyText, E> {
                Ok(KeyText(n.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_in_flow_sequences_are_strings() {
        let v = to_json("addresses: [1.2.3.4, 2001:db8::1, ::1, \"fe80::1\"]\n").unwrap();
        assert_eq!(
            v["addresses"],
            serde_json::json!(["1.2.3.4", "2001:db8::1", "::1", "fe80::1"])
        );
    }

    #[test]
    fn integer_keys_become_json_keys() {
        let v = to_json("portLevelMtls:\n  8080: {mode: DISABLE}\n  \"9090\": {}\n").unwrap();
        assert_eq!(v["portLevelMtls"]["8080"]["mode"], "DISABLE");
        assert!(v["portLevelMtls"]["9090"].is_object());
    }

    #[test]
    fn only_true_and_false_are_booleans() {
        let v = to_json("a: [y, yes, on, n, off, true, false]\n").unwrap();
        assert_eq!(
            v["a"],
            serde_json::json!(["y", "yes", "on", "n", "off", true, false])
        );
    }

    #[test]
    fn a_syntax_error_has_its_line() {
        let e = to_json("a: 1\nb: [unclosed\nc: 2\n").unwrap_err();
        assert!(e.line >= 2, "{e:?}");
        assert!(!e.message.contains('\n'), "{e:?}");
        assert!(!e.message.contains("line "), "{e:?}");
    }

    #[test]
    fn fields_are_found_by_path() {
        let text = "spec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n    - destination:\n        host: b\n  portLevelMtls:\n    8080: {mode: X}\n";
        let at = |p: &str| line_of(text, &FieldPath::leading(p));
        assert_eq!(at("spec"), Some(1));
        assert_eq!(at("spec.hosts"), Some(2));
        assert_eq!(at("spec.http[0].route[1].destination.host"), Some(7));
        assert_eq!(at("spec.http[0].route[0].destination.host"), Some(5));
        assert_eq!(
            at("spec.http[0].route[9]"),
            Some(4),
            "the deepest field there is"
        );
        assert_eq!(at("spec.portLevelMtls.8080.mode"), Some(9));
    }
}
