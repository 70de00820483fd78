//! What changed between two sends of layered resource sets, computed once per step of a shared
//! layer and shared by every proxy taking that step.

use super::status::SentResources;
use meshd_xds::resource::{Layer, SharedResource};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What changed from one shared layer to its successor: resources added or at a new version,
/// and names gone. Computed once per pair of layers and shared by every proxy making that step.
struct LayerDiff {
    /// Held so the pointers keying this entry stay unique while it is cached.
    layers: (Layer, Layer),
    changed: Vec<SharedResource>,
    gone: Vec<String>,
}

/// Recently computed layer diffs, by the pair of layer pointers.
pub(crate) struct LayerDiffs {
    map: Mutex<HashMap<(usize, usize), Arc<LayerDiff>>>,
    /// Entries kept at most. When full, steps no proxy can take any more (only this cache still
    /// holds their old layer) go first, so old layers are not kept alive by the cache; if that
    /// frees nothing, all go (a step is cheap to recompute).
    capacity: usize,
}

impl Default for LayerDiffs {
    fn default() -> Self {
        LayerDiffs::with_capacity(256)
    }
}

impl LayerDiffs {
    fn with_capacity(capacity: usize) -> Self {
        LayerDiffs {
            map: Mutex::default(),
            capacity,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().expect("layer diffs").len()
    }

    fn get(&self, old: &Layer, new: &Layer) -> Arc<LayerDiff> {
        let key = (Arc::as_ptr(old) as usize, Arc::as_ptr(new) as usize);
        if let Some(d) = self.map.lock().expect("layer diffs").get(&key) {
            return d.clone();
        }
        let diff = Arc::new(merge_diff(old, new));
        let mut map = self.map.lock().expect("layer diffs");
        if map.len() >= self.capacity {
            map.retain(|_, d| Arc::strong_count(&d.layers.0) > 1);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.entry(key).or_insert(diff).clone()
    }
}

/// Both maps are sorted by name: one pass over them, pointers compared before versions.
fn merge_diff(old: &Layer, new: &Layer) -> LayerDiff {
    use std::cmp::Ordering;
    let mut changed = Vec::new();
    let mut gone = Vec::new();
    let mut o = old.iter().peekable();
    let mut n = new.iter().peekable();
    loop {
        let order = match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        match order {
            Ordering::Less => gone.push(o.next().expect("peeked").0.clone()),
            Ordering::Greater => changed.push(n.next().expect("peeked").1.clone()),
            Ordering::Equal => {
                let (_, a) = o.next().expect("peeked");
                let (_, b) = n.next().expect("peeked");
                if !Arc::ptr_eq(a, b) && a.version != b.version {
                    changed.push(b.clone());
                }
            }
        }
    }
    LayerDiff {
        layers: (old.clone(), new.clone()),
        changed,
        gone,
    }
}

/// The difference between two selections of layered sets under the same subscription, layer by
/// layer: a layer unchanged by pointer costs nothing, a changed one its (shared) layer diff.
/// Cost per proxy follows what changed, not the size of the mesh.
/// `None` when the two are not comparable layer by layer (another subscription or layering).
pub(crate) fn changes(
    before: &SentResources,
    now: &SentResources,
    diffs: &LayerDiffs,
) -> Option<(Vec<SharedResource>, Vec<String>)> {
    if before.subscription != now.subscription
        || before.set.layers().len() != now.set.layers().len()
    {
        return None;
    }
    let sub = &now.subscription;
    // With several layers a name may move between them: only one gone from all is removed, and
    // only one whose version the proxy lacks is sent. With one (endpoints, routes), the layer
    // diff already says exactly that, and the lookups per changed name are spared: under
    // endpoint churn they were most of a push's own cost.
    let one_layer = now.set.layers().len() == 1;
    let mut updates = Vec::new();
    let mut removed = Vec::new();
    for (old, new) in before.set.layers().iter().zip(now.set.layers()) {
        if Arc::ptr_eq(old, new) {
            continue;
        }
        let diff = diffs.get(old, new);
        updates.extend(
            diff.changed
                .iter()
                .filter(|r| sub.selects(&r.name))
                .filter(|r| one_layer || before.get(&r.name).is_none_or(|b| b.version != r.version))
                .cloned(),
        );
        removed.extend(
            diff.gone
                .iter()
                .filter(|n| sub.selects(n) && (one_layer || now.get(n).is_none()))
                .cloned(),
        );
    }
    Some((updates, removed))
}

/// Adds to `updates` what `now` holds of `due` (clusters Envoy recreated, warming until their
/// endpoints arrive again) that `updates` does not carry yet.
pub(crate) fn add_due(
    updates: &mut Vec<SharedResource>,
    due: &[SharedResource],
    now: &SentResources,
) {
    if due.is_empty() {
        return;
    }
    let named: std::collections::BTreeSet<&str> = updates.iter().map(|r| r.name.as_str()).collect();
    let missing: Vec<SharedResource> = due
        .iter()
        .filter(|c| !named.contains(c.name.as_str()))
        .filter_map(|c| now.get(&c.name).cloned())
        .collect();
    updates.extend(missing);
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use meshd_xds::resource::{LayerMap, Resource, ResourceSet, Subscription};

    fn layer(version: u32) -> Layer {
        let c = Cluster {
            name: "c".into(),
            per_connection_buffer_limit_bytes: Some(
                envoy_types::pb::google::protobuf::UInt32Value { value: version },
            ),
            ..Default::default()
        };
        LayerMap::new([("c".to_string(), Resource::encode("c", &c))].into())
    }

    fn layer_of(entries: &[(&str, u32)]) -> Layer {
        LayerMap::new(
            entries
                .iter()
                .map(|(name, version)| {
                    let c = Cluster {
                        name: name.to_string(),
                        per_connection_buffer_limit_bytes: Some(
                            envoy_types::pb::google::protobuf::UInt32Value { value: *version },
                        ),
                        ..Default::default()
                    };
                    (name.to_string(), Resource::encode(*name, &c))
                })
                .collect(),
        )
    }

    fn sent(layers: Vec<Layer>, sub: &Subscription) -> SentResources {
        SentResources {
            set: ResourceSet::from_layers(layers),
            subscription: sub.clone(),
        }
    }

    fn names(updates: &[SharedResource]) -> Vec<&str> {
        let mut v: Vec<&str> = updates.iter().map(|r| r.name.as_str()).collect();
        v.sort();
        v
    }

    /// One layer (endpoints, routes): the layer diff is the answer, under any subscription.
    #[test]
    fn one_layer_sends_what_changed_and_removes_what_went() {
        let diffs = LayerDiffs::default();
        let old = layer_of(&[("a", 1), ("b", 1), ("c", 1), ("x", 1)]);
        let new = layer_of(&[("a", 1), ("b", 2), ("d", 1), ("x", 2)]);
        let some = Subscription::Names(Arc::new(
            ["a", "b", "c", "d"].map(String::from).into_iter().collect(),
        ));
        for (sub, sent_names, gone) in [
            (Subscription::All, vec!["b", "d", "x"], vec!["c"]),
            (some, vec!["b", "d"], vec!["c"]),
        ] {
            let (updates, removed) = changes(
                &sent(vec![old.clone()], &sub),
                &sent(vec![new.clone()], &sub),
                &diffs,
            )
            .unwrap();
            assert_eq!(names(&updates), sent_names);
            assert_eq!(removed, gone);
        }
    }

    /// Several layers: a name that moved from one layer to another at the same version is
    /// neither sent nor removed; one that went from all is removed.
    #[test]
    fn a_name_moving_between_layers_is_neither_sent_nor_removed() {
        let diffs = LayerDiffs::default();
        let before = sent(
            vec![layer_of(&[("a", 1), ("gone", 1)]), layer_of(&[("b", 1)])],
            &Subscription::All,
        );
        let now = sent(
            vec![layer_of(&[]), layer_of(&[("a", 1), ("b", 2)])],
            &Subscription::All,
        );
        let (updates, removed) = changes(&before, &now, &diffs).unwrap();
        assert_eq!(names(&updates), ["b"]);
        assert_eq!(removed, ["gone"]);
    }

    #[test]
    fn a_step_is_diffed_once_and_steps_nobody_can_take_are_dropped_first() {
        let diffs = LayerDiffs::with_capacity(2);
        let (a, b, c, d) = (layer(1), layer(2), layer(3), layer(4));
        let first = diffs.get(&a, &b);
        assert_eq!(first.changed.len(), 1);
        assert!(Arc::ptr_eq(&first, &diffs.get(&a, &b)), "computed once");
        diffs.get(&b, &c);
        assert_eq!(diffs.len(), 2);
        // Every proxy has moved past `a`: only the cache holds it now.
        drop(first);
        let a_weak = Arc::downgrade(&a);
        drop(a);
        diffs.get(&c, &d);
        assert_eq!(
            diffs.len(),
            2,
            "the step from `a` went, the step from `b` stayed"
        );
        assert!(
            a_weak.upgrade().is_none(),
            "the cache no longer keeps `a` alive"
        );
        assert!(
            diffs
                .map
                .lock()
                .unwrap()
                .values()
                .any(|e| Arc::ptr_eq(&e.layers.0, &b))
        );
    }
}
