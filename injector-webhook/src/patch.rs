//! The JSON Patch from the original pod to the injected one, by `json-patch`'s diff — with one
//! refinement: the named lists injection inserts into (`containers`, `initContainers`,
//! `volumes`) are aligned by name, so inserting the capture container first becomes one `add`
//! rather than a rewrite of every user init container at a shifted index (which would also
//! move fields the typed model does not know onto the wrong container).
//!
//! Both sides are the typed model serialized, so a field of the pod the model does not know is
//! on neither side and the patch leaves it alone.

use json_patch::jsonptr::{self, PointerBuf};
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
use serde_json::{Map, Value};

const NAMED_LISTS: [&str; 3] = ["containers", "initContainers", "volumes"];

fn name(v: &Value) -> Option<&str> {
    v.get("name").and_then(Value::as_str)
}

/// Ops turning `old` into `new` under `base`, pointers prefixed.
fn diff_at(base: &PointerBuf, old: &Value, new: &Value, out: &mut Vec<PatchOperation>) {
    for op in json_patch::diff(old, new).0 {
        out.push(prefixed(base, op));
    }
}

fn prefixed(base: &PointerBuf, op: PatchOperation) -> PatchOperation {
    let join = |p: &jsonptr::Pointer| {
        let mut full = base.clone();
        full.append(p);
        full
    };
    match op {
        PatchOperation::Add(o) => PatchOperation::Add(AddOperation {
            path: join(&o.path),
            value: o.value,
        }),
        PatchOperation::Remove(o) => PatchOperation::Remove(RemoveOperation {
            path: join(&o.path),
        }),
        PatchOperation::Replace(o) => PatchOperation::Replace(json_patch::ReplaceOperation {
            path: join(&o.path),
            value: o.value,
        }),
        other => other,
    }
}

/// A list of named objects: originals kept in their order (those not in `new`, or out of
/// order, removed), new entries added where they belong, kept ones diffed in place.
fn diff_named(path: &PointerBuf, old: &[Value], new: &[Value], out: &mut Vec<PatchOperation>) {
    // Which originals survive: the longest run matching `new` greedily, in order.
    let mut keep = vec![false; old.len()];
    let mut next = 0;
    for (i, o) in old.iter().enumerate() {
        if let Some(pos) = new[next..].iter().position(|n| name(n) == name(o)) {
            keep[i] = true;
            next += pos + 1;
        }
    }
    let mut working: Vec<&Value> = Vec::with_capacity(old.len());
    for i in (0..old.len()).rev() {
        if !keep[i] {
            let mut p = path.clone();
            p.push_back(i);
            out.push(PatchOperation::Remove(RemoveOperation { path: p }));
        }
    }
    for (i, o) in old.iter().enumerate() {
        if keep[i] {
            working.push(o);
        }
    }
    for (cursor, n) in new.iter().enumerate() {
        let mut p = path.clone();
        p.push_back(cursor);
        match working.get(cursor) {
            Some(o) if name(o) == name(n) => diff_at(&p, o, n, out),
            _ => {
                out.push(PatchOperation::Add(AddOperation {
                    path: p,
                    value: n.clone(),
                }));
                working.insert(cursor, n);
            }
        }
    }
}

fn take_list(spec: &mut Map<String, Value>, key: &str) -> Option<Vec<Value>> {
    match spec.remove(key) {
        Some(Value::Array(a)) => Some(a),
        _ => None,
    }
}

/// The patch from `old` to `new` (both serialized Pods).
pub fn diff(old: &Value, new: &Value) -> Patch {
    let mut old = old.clone();
    let mut new = new.clone();
    let mut lists = Vec::new();
    if let (Some(Value::Object(os)), Some(Value::Object(ns))) =
        (old.get_mut("spec"), new.get_mut("spec"))
    {
        for key in NAMED_LISTS {
            let (o, n) = (take_list(os, key), take_list(ns, key));
            lists.push((key, o, n));
        }
    }
    let mut ops = json_patch::diff(&old, &new).0;
    for (key, o, n) in lists {
        let path = PointerBuf::from_tokens(["spec", key]);
        match (o, n) {
            (Some(o), Some(n)) => diff_named(&path, &o, &n, &mut ops),
            (None, Some(n)) => ops.push(PatchOperation::Add(AddOperation {
                path,
                value: Value::Array(n),
            })),
            (Some(_), None) => ops.push(PatchOperation::Remove(RemoveOperation { path })),
            (None, None) => {}
        }
    }
    Patch(ops)
}

/// `add /metadata {}`, for a pod sent without metadata.
pub fn add_empty_metadata() -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(["metadata"]),
        value: Value::Object(Map::new()),
    })
}
