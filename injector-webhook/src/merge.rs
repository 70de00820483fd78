//! The two ways a pod already carries sidecar parts, handled as Istio does:
//! * a previous injection (the `sidecar.istio.io/status` annotation, or meshd's init
//!   containers): what it added is taken out again and the app's probes restored, so injecting
//!   an injected pod gives the same pod;
//! * an `istio-proxy` container written by the user: an override of the injected proxy, merged
//!   over it field by field as a strategic merge patch would (user fields win; `env`, `ports`,
//!   `volumeMounts` merge by their keys; `image: auto` keeps the injected image).

use crate::annotations as ann;
use crate::config::{names, ports};
use crate::probes::{self, APP_PROBERS_ENV, AppProbers};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;

/// What an earlier injection recorded in the status annotation.
#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Status {
    init_containers: Option<Vec<String>>,
    containers: Option<Vec<String>>,
    volumes: Option<Vec<String>>,
}

fn probers_of(c: &Container) -> Option<AppProbers> {
    let value = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == APP_PROBERS_ENV)?
        .value
        .as_deref()?;
    serde_json::from_str(value).ok()
}

/// Takes out what an earlier injection added; `true` when there was one.
pub fn strip_previous(pod: &mut Pod) -> bool {
    let annotations = pod.metadata.annotations.get_or_insert_default();
    let status_text = annotations.remove(ann::STATUS);
    let status: Status = status_text
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let ours = |list: Option<Vec<String>>, defaults: &[&str]| -> Vec<String> {
        list.unwrap_or_else(|| defaults.iter().map(|s| s.to_string()).collect())
    };
    let init_names = ours(
        status.init_containers,
        &[names::IPTABLES_INIT, names::BOOTSTRAP_INIT, names::SIDECAR],
    );
    let container_names = ours(status.containers, &[names::SIDECAR]);
    let volume_names = ours(
        status.volumes,
        &[
            names::VOLUME_PROXY_CONFIG,
            names::VOLUME_TOKEN,
            names::VOLUME_ROOT_CERT,
        ],
    );
    let Some(spec) = pod.spec.as_mut() else {
        return status_text.is_some();
    };
    let has_our_inits = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == names::BOOTSTRAP_INIT || c.name == names::IPTABLES_INIT);
    if status_text.is_none() && !has_our_inits {
        return false;
    }
    let old_probers = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == names::BOOTSTRAP_INIT)
        .and_then(probers_of)
        .unwrap_or_default();
    if let Some(inits) = spec.init_containers.as_mut() {
        inits.retain(|c| !init_names.contains(&c.name));
    }
    if status_text.is_some() {
        spec.containers
            .retain(|c| !container_names.contains(&c.name));
        if let Some(volumes) = spec.volumes.as_mut() {
            volumes.retain(|v| !volume_names.contains(&v.name));
        }
    }
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        probes::restore(c, &old_probers);
    }
    let ours_prometheus = [
        (ann::PROMETHEUS_SCRAPE, "true".to_string()),
        (ann::PROMETHEUS_PORT, ports::PROMETHEUS.to_string()),
        (ann::PROMETHEUS_PATH, "/stats/prometheus".to_string()),
    ];
    if ours_prometheus
        .iter()
        .all(|(k, v)| annotations.get(*k) == Some(v))
    {
        for (k, _) in ours_prometheus {
            annotations.remove(k);
        }
    }
    true
}

/// Removes the user's `istio-proxy` container (from either list), if any.
pub fn take_override(pod: &mut Pod) -> Option<Container> {
    let spec = pod.spec.as_mut()?;
    if let Some(i) = spec
        .containers
        .iter()
        .position(|c| c.name == names::SIDECAR)
    {
        return Some(spec.containers.remove(i));
    }
    let inits = spec.init_containers.as_mut()?;
    let i = inits.iter().position(|c| c.name == names::SIDECAR)?;
    Some(inits.remove(i))
}

/// The list fields merged by key, with their key.
const KEYED_LISTS: [(&str, &str); 3] = [
    ("env", "name"),
    ("ports", "containerPort"),
    ("volumeMounts", "mountPath"),
];

/// Fields taken whole from the user's container: a probe or hook is one handler, and merging
/// a `tcpSocket` into an `httpGet` would make an invalid one.
const REPLACED: [&str; 4] = [
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
];

fn merge_values(base: &mut Value, over: Value, field: Option<&str>) {
    if field.is_some_and(|f| REPLACED.contains(&f)) {
        *base = over;
        return;
    }
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_values(existing, v, Some(&k)),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) => {
            let key = KEYED_LISTS
                .iter()
                .find(|(f, _)| Some(*f) == field)
                .map(|(_, k)| *k);
            let Some(key) = key else {
                *b = o;
                return;
            };
            for item in o {
                match b.iter_mut().find(|x| x.get(key) == item.get(key)) {
                    Some(existing) => *existing = item,
                    None => b.push(item),
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// The injected proxy with the user's override merged over it.
pub fn apply_override(base: Container, user: Container) -> Container {
    let mut merged = serde_json::to_value(&base).unwrap_or(Value::Null);
    let mut over = serde_json::to_value(&user).unwrap_or(Value::Null);
    if over.get("image").and_then(Value::as_str) == Some("auto")
        && let Some(o) = over.as_object_mut()
    {
        o.remove("image");
    }
    merge_values(&mut merged, over, None);
    serde_json::from_value(merged).unwrap_or(base)
}
