//! Istio's merging of DestinationRule fragments: the rules for one host in one namespace, none
//! with a `workloadSelector` and all with the same visibility (`exportTo`), act as one rule.
//! Its subsets are the union of theirs (on a repeated name the first definition stands), its
//! top-level `trafficPolicy` is the first one set, whole (no field-by-field merge). Istio orders
//! the fragments by creation time, then name; meshd keeps no creation time and orders them by
//! name. Rules of different namespaces are never merged: a proxy applies the one namespace's
//! rule its lookup finds (its own, the service's, the root namespace). Sources: Istio's "Traffic
//! Management Best Practices" (split destination rules into multiple resources) and, for
//! `exportTo`, Istio 1.24's change keeping rules with different `exportTo` apart (istio#52519).

use super::{DestinationRule, Subset};
use std::collections::BTreeSet;

/// To whom a rule is exported, normalized so that equal visibilities compare equal: no
/// `exportTo` or `*` is everywhere, `.` is the rule's own namespace by name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Visibility {
    Everywhere,
    Namespaces(BTreeSet<String>),
}

impl Visibility {
    pub fn of(export_to: &[String], namespace: &str) -> Visibility {
        if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
            return Visibility::Everywhere;
        }
        let names = export_to
            .iter()
            .map(|e| if e == "." { namespace } else { e.as_str() })
            .map(str::to_string)
            .collect();
        Visibility::Namespaces(names)
    }
}

/// What rules share when Istio merges them: their qualified host, namespace and visibility.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MergeKey {
    pub host: String,
    pub namespace: String,
    pub visibility: Visibility,
}

impl MergeKey {
    /// `None` for a rule with a `workloadSelector`: Istio never merges such a rule with one
    /// without a selector, and meshd merges it with none (the first by name selecting a proxy
    /// applies to it).
    pub fn of(rule: &DestinationRule, namespace: &str, qualified_host: String) -> Option<MergeKey> {
        if rule.workload_selector.is_some() {
            return None;
        }
        Some(MergeKey {
            host: qualified_host,
            namespace: namespace.to_string(),
            visibility: Visibility::of(&rule.export_to, namespace),
        })
    }
}

/// A subset a later fragment defines again: ignored, the earlier definition stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateSubset {
    /// The fragment (its position in the merge order) that repeats the name, and where.
    pub fragment: usize,
    pub index: usize,
    /// The fragment whose definition stands.
    pub kept: usize,
}

/// What merging `fragments` (in merge order, at least one) drops: repeated subsets, and the
/// fragments whose top-level `trafficPolicy` loses to an earlier one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub subsets: Vec<DuplicateSubset>,
    /// (fragment dropped, fragment whose policy stands).
    pub policies: Vec<(usize, usize)>,
}

/// The rule `fragments` act as together, and what of theirs it leaves out.
pub fn merge(fragments: &[&DestinationRule]) -> (DestinationRule, Dropped) {
    let mut dropped = Dropped::default();
    let Some(first) = fragments.first() else {
        return (DestinationRule::default(), dropped);
    };
    let mut merged = DestinationRule {
        host: first.host.clone(),
        traffic_policy: None,
        subsets: Vec::new(),
        export_to: first.export_to.clone(),
        workload_selector: None,
    };
    let mut policy_from = None;
    let mut subset_from: Vec<usize> = Vec::new();
    for (f, rule) in fragments.iter().enumerate() {
        if let Some(tp) = &rule.traffic_policy {
            match policy_from {
                None => {
                    merged.traffic_policy = Some(tp.clone());
                    policy_from = Some(f);
                }
                Some(kept) => dropped.policies.push((f, kept)),
            }
        }
        for (index, s) in rule.subsets.iter().enumerate() {
            match position(&merged.subsets, &s.name) {
                Some(at) => dropped.subsets.push(DuplicateSubset {
                    fragment: f,
                    index,
                    kept: subset_from[at],
                }),
                None => {
                    merged.subsets.push(s.clone());
                    subset_from.push(f);
                }
            }
        }
    }
    (merged, dropped)
}

fn position(subsets: &[Subset], name: &str) -> Option<usize> {
    subsets.iter().position(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(json: serde_json::Value) -> DestinationRule {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn subsets_union_and_the_first_policy_stands_whole() {
        let a =
            rule(json!({"host": "cart", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}));
        let b = rule(json!({
            "host": "cart",
            "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 5}}},
            "subsets": [
                {"name": "v1", "labels": {"version": "other"}},
                {"name": "v2", "labels": {"version": "v2"}}
            ]
        }));
        let c =
            rule(json!({"host": "cart", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}));
        let (merged, dropped) = merge(&[&a, &b, &c]);
        let names: Vec<_> = merged.subsets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["v1", "v2"]);
        assert_eq!(merged.subsets[0].labels["version"], "v1");
        assert_eq!(merged.traffic_policy, b.traffic_policy);
        assert_eq!(
            dropped.subsets,
            [DuplicateSubset {
                fragment: 1,
                index: 0,
                kept: 0
            }]
        );
        assert_eq!(dropped.policies, [(2, 1)]);
    }

    #[test]
    fn visibility_compares_normalized() {
        let v = |e: &[&str]| {
            Visibility::of(&e.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "shop")
        };
        assert_eq!(v(&[]), v(&["*"]));
        assert_eq!(v(&["."]), v(&["shop"]));
        assert_eq!(v(&["a", "b"]), v(&["b", "a"]));
        assert_ne!(v(&["."]), v(&[]));
        assert_ne!(v(&["a"]), v(&["a", "b"]));
    }
}
