//! What changed between two sends of layered resource sets, computed once per step of a shared
//! layer and shared by every proxy taking that step.

use super::status::SentResources;
use crate::resource::{Layer, SharedResource};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What changed from one shared layer to its successor: resources added or at a new version,
/// and names gone. Computed once per pair of layers and shared by every proxy making that step.
struct LayerDiff {
    /// Held so the pointers keying this entry stay unique while it is cached.
    _layers: (Layer, Layer),
    changed: Vec<SharedResource>,
    gone: Vec<String>,
}

/// Recently computed layer diffs, by the pair of layer pointers.
#[derive(Default)]
pub(crate) struct LayerDiffs {
    map: Mutex<HashMap<(usize, usize), Arc<LayerDiff>>>,
}

impl LayerDiffs {
    /// Enough for every scope's layers of a few mesh versions; older steps are recomputed.
    const CAPACITY: usize = 1024;

    fn get(&self, old: &Layer, new: &Layer) -> Arc<LayerDiff> {
        let key = (Arc::as_ptr(old) as usize, Arc::as_ptr(new) as usize);
        if let Some(d) = self.map.lock().expect("layer diffs").get(&key) {
            return d.clone();
        }
        let diff = Arc::new(merge_diff(old, new));
        let mut map = self.map.lock().expect("layer diffs");
        if map.len() >= Self::CAPACITY {
            map.clear();
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
        _layers: (old.clone(), new.clone()),
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
    let mut updates = Vec::new();
    let mut removed = Vec::new();
    for (old, new) in before.set.layers().iter().zip(now.set.layers()) {
        if Arc::ptr_eq(old, new) {
            continue;
        }
        let diff = diffs.get(old, new);
        // A name may move between layers: only one gone from all is removed, and only one
        // whose version the proxy lacks is sent.
        updates.extend(
            diff.changed
                .iter()
                .filter(|r| sub.selects(&r.name))
                .filter(|r| before.get(&r.name).is_none_or(|b| b.version != r.version))
                .cloned(),
        );
        removed.extend(
            diff.gone
                .iter()
                .filter(|n| sub.selects(n) && now.get(n).is_none())
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
