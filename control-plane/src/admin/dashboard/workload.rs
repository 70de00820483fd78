//! One workload as its dashboard page shows it: its proxies and their xDS sync state, its
//! certificates (serial and validity, never key material), the policies that apply to its
//! inbound and outbound traffic, and recent rejected config that concerns it.

use crate::admin::AdminState;
use meshd_model::{ConfigObject, Kind};
use serde_json::{Value, json};

/// The selector of a policy-shaped object, as its spec serializes (`selector.matchLabels` in
/// the security APIs, `workloadSelector.labels` in the networking ones); `None`: no selector.
fn selector(spec: &Value) -> Option<&serde_json::Map<String, Value>> {
    spec.get("selector")
        .and_then(|s| s.get("matchLabels"))
        .or_else(|| spec.get("workloadSelector").and_then(|s| s.get("labels")))
        .and_then(Value::as_object)
}

/// How an object with a workload selector applies to the workload: `workload` (its selector
/// matches), `namespace` (no selector, same namespace), `mesh` (no selector, root namespace).
fn scope(
    o: &ConfigObject,
    namespace: &str,
    root_namespace: &str,
    labels: &meshd_model::networking::Labels,
) -> Option<&'static str> {
    let ns = o.meta.namespace();
    if ns != namespace && ns != root_namespace {
        return None;
    }
    let spec = serde_json::to_value(&o.spec).unwrap_or_default();
    match selector(&spec) {
        Some(sel) => {
            let matches = ns == namespace
                && sel
                    .iter()
                    .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
            matches.then_some("workload")
        }
        None if ns == namespace => Some("namespace"),
        None => Some("mesh"),
    }
}

/// Whether an object exported with `exportTo` (empty: everywhere) is visible in `namespace`.
fn visible(o: &ConfigObject, namespace: &str) -> bool {
    let spec = serde_json::to_value(&o.spec).unwrap_or_default();
    let export: Vec<&str> = spec
        .get("exportTo")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let own = o.meta.namespace();
    export.is_empty()
        || export
            .iter()
            .any(|e| *e == "*" || *e == namespace || (*e == "." && own == namespace))
}

fn hosts(o: &ConfigObject) -> Value {
    let spec = serde_json::to_value(&o.spec).unwrap_or_default();
    match (spec.get("hosts"), spec.get("host")) {
        (Some(h), _) => h.clone(),
        (None, Some(h)) => json!([h]),
        _ => json!([]),
    }
}

/// The page's data; `None` when the registry has no such workload.
pub fn detail(s: &AdminState, name: &str, namespace: &str) -> Option<Value> {
    let snap = s.snapshots.borrow().clone();
    let config = snap.config();
    let w = config
        .workloads
        .iter()
        .find(|w| w.name == name && w.namespace == namespace)?;
    let principal = format!(
        "spiffe://{}/ns/{}/sa/{}",
        snap.opts.trust_domain, w.namespace, w.service_account
    );
    let services: Vec<&str> = config
        .services
        .iter()
        .filter(|svc| {
            svc.endpoints
                .iter()
                .any(|e| e.workload.as_deref() == Some(name) && e.namespace == namespace)
        })
        .map(|svc| svc.hostname.as_str())
        .collect();
    let proxies: Vec<Value> = s
        .registry
        .snapshot()
        .into_iter()
        .filter(|p| p.proven.workload == name && p.proven.namespace == namespace)
        .map(|p| {
            let types: serde_json::Map<String, Value> = p
                .types
                .iter()
                .map(|(url, t)| {
                    let short = url.rsplit('.').next().unwrap_or(url).to_string();
                    (
                        short,
                        json!({"status": t.status, "sent_version": t.sent_version,
                               "acked_version": t.acked_version, "error": t.error}),
                    )
                })
                .collect();
            json!({"proxy_id": p.proxy_id, "connected_at": serde_json::to_value(&p).ok()
                       .and_then(|v| v.get("connected_at").cloned()),
                   "protocol": p.protocol, "types": types})
        })
        .collect();
    let certificates: Vec<Value> = s
        .ca
        .issued()
        .into_iter()
        .filter(|c| c.spiffe_id == principal)
        .map(|c| json!({"serial": c.serial, "not_before": c.not_before, "not_after": c.not_after}))
        .collect();
    let root = snap.opts.root_namespace.as_str();
    let entry = |o: &ConfigObject, scope: &str| {
        json!({"kind": o.kind(), "namespace": o.meta.namespace(), "name": o.meta.name,
               "scope": scope, "hosts": hosts(o), "file": o.source.file, "line": o.source.line})
    };
    let mut inbound = Vec::new();
    let mut outbound = Vec::new();
    for o in config.objects.values() {
        match o.kind() {
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                if let Some(sc) = scope(o, namespace, root, &w.labels) {
                    inbound.push(entry(o, sc));
                }
            }
            Kind::Sidecar | Kind::EnvoyFilter => {
                if let Some(sc) = scope(o, namespace, root, &w.labels) {
                    inbound.push(entry(o, sc));
                    outbound.push(entry(o, sc));
                }
            }
            Kind::VirtualService | Kind::DestinationRule | Kind::ServiceEntry
                if visible(o, namespace) =>
            {
                let sc = if o.meta.namespace() == namespace {
                    "namespace"
                } else {
                    "exported"
                };
                outbound.push(entry(o, sc));
            }
            _ => {}
        }
    }
    let rejected: Vec<Value> = config
        .rejected
        .iter()
        .chain(snap.problems())
        .filter(|r| {
            r.namespace
                .as_deref()
                .is_none_or(|ns| ns == namespace || ns == root)
        })
        .map(|r| {
            json!({"kind": r.kind, "namespace": r.namespace, "name": r.name,
                        "file": r.file, "line": r.line, "message": r.to_string()})
        })
        .collect();
    Some(json!({
        "name": w.name,
        "namespace": w.namespace,
        "address": w.address,
        "labels": w.labels,
        "service_account": w.service_account,
        "principal": principal,
        "services": services,
        "proxies": proxies,
        "certificates": certificates,
        "inbound": inbound,
        "outbound": outbound,
        "rejected": rejected,
    }))
}
