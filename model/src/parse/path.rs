//! A field's path inside an object (`spec.http[0].route[1].destination`): where a typed read
//! failed, or which field a validation message names; files turn it into a line.

use std::fmt;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(Vec<Step>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

impl FieldPath {
    pub(crate) fn steps(&self) -> &[Step] {
        &self.0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A top-level field (`kind`); empty for the document itself.
    pub(crate) fn field(name: &str) -> FieldPath {
        FieldPath(if name.is_empty() {
            Vec::new()
        } else {
            vec![Step::Key(name.to_string())]
        })
    }

    /// `path`, read inside the top-level field `name`.
    pub(crate) fn under(name: &str, path: FieldPath) -> FieldPath {
        let mut steps = vec![Step::Key(name.to_string())];
        steps.extend(path.0);
        FieldPath(steps)
    }

    /// The path serde_path_to_error recorded; it stops at a step it could not name (an untagged
    /// or flattened value).
    pub(crate) fn from_serde(path: &serde_path_to_error::Path) -> FieldPath {
        use serde_path_to_error::Segment;
        let mut steps = Vec::new();
        for segment in path {
            match segment {
                Segment::Seq { index } => steps.push(Step::Index(*index)),
                Segment::Map { key } => steps.push(Step::Key(key.clone())),
                Segment::Enum { .. } => {}
                Segment::Unknown => break,
            }
        }
        FieldPath(steps)
    }

    /// The field a validation message opens with (`spec.ports[1].targetPort: ...`), as far as it
    /// names fields and list indexes; empty when the message does not start with `spec`.
    pub(crate) fn leading(message: &str) -> FieldPath {
        let end = message
            .find(|c: char| c == ':' || c.is_whitespace())
            .unwrap_or(message.len());
        let text = &message[..end];
        if text != "spec" && !text.starts_with("spec.") && !text.starts_with("spec[") {
            return FieldPath::default();
        }
        let mut steps = Vec::new();
        for part in text.split('.') {
            let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
            if !name.is_empty() {
                steps.push(Step::Key(name.to_string()));
            }
            while !rest.is_empty() {
                let Some((index, after)) = rest.split_once(']') else {
                    return FieldPath(steps);
                };
                // `ports[http]` names a list entry by its name, not its place: stop there.
                let Ok(index) = index.parse() else {
                    return FieldPath(steps);
                };
                steps.push(Step::Index(index));
                rest = after.strip_prefix('[').unwrap_or(after);
            }
        }
        FieldPath(steps)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(k) if i == 0 => f.write_str(k)?,
                Step::Key(k) => write!(f, ".{k}")?,
                Step::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validation_message_names_its_field() {
        let p = FieldPath::leading("spec.http[0].route[12].destination.port.number: port 0");
        assert_eq!(
            p.to_string(),
            "spec.http[0].route[12].destination.port.number"
        );
        assert_eq!(
            FieldPath::leading("spec.ports[http].targetPort: x").to_string(),
            "spec.ports"
        );
        assert_eq!(
            FieldPath::leading("spec.hosts must name at least one host").to_string(),
            "spec.hosts"
        );
        assert!(FieldPath::leading("duplicate VirtualService a/b").is_empty());
        assert!(FieldPath::leading("specification: x").is_empty());
    }
}
