//! What merging DestinationRule fragments drops, reported on the fragment that loses: a subset
//! an earlier fragment already defines, a top-level `trafficPolicy` after an earlier one. The
//! grouping and order are those of `networking::merge`, which the generator applies.

use super::{MeshConfig, Rejected, qualify_host};
use crate::networking::DestinationRule;
use crate::networking::merge::{MergeKey, merge};
use crate::{ConfigObject, Kind, Spec};
use std::collections::BTreeMap;

pub(super) fn warnings(mesh: &MeshConfig) -> Vec<Rejected> {
    // Objects come in (namespace, name) order: each group is in merge order.
    let mut groups: BTreeMap<MergeKey, Vec<(&ConfigObject, &DestinationRule)>> = BTreeMap::new();
    for o in mesh.objects_of(Kind::DestinationRule) {
        let Spec::DestinationRule(dr) = &o.spec else {
            continue;
        };
        let ns = o.meta.namespace();
        if let Some(key) = MergeKey::of(dr, ns, qualify_host(&dr.host, ns, "cluster.local")) {
            groups.entry(key).or_default().push((o, dr));
        }
    }
    let mut out = Vec::new();
    for (key, group) in groups.iter().filter(|(_, g)| g.len() > 1) {
        let rules: Vec<&DestinationRule> = group.iter().map(|(_, dr)| *dr).collect();
        let (_, dropped) = merge(&rules);
        let named = |i: usize| group[i].0.key().to_string();
        for d in &dropped.subsets {
            let name = &rules[d.fragment].subsets[d.index].name;
            out.push(on(
                group[d.fragment].0,
                format!(
                    "spec.subsets[{}]: subset `{name}` of {} is already defined by {}, which this rule merges with (same host, namespace and exportTo); as in Istio the first definition applies and this one is ignored",
                    d.index,
                    key.host,
                    named(d.kept)
                ),
            ));
        }
        for (f, kept) in &dropped.policies {
            out.push(on(
                group[*f].0,
                format!(
                    "spec.trafficPolicy: ignored: {}, which this rule merges with for {}, sets the top-level trafficPolicy first (Istio takes one whole, never field by field)",
                    named(*kept),
                    key.host
                ),
            ));
        }
    }
    out
}

fn on(o: &ConfigObject, reason: String) -> Rejected {
    Rejected {
        file: o.source.file.clone(),
        line: o.source.line,
        kind: Some(o.kind()),
        namespace: Some(o.meta.namespace().to_string()),
        name: Some(o.meta.name.clone()),
        reason,
    }
}
