//! A pod's injection settings from its annotations, each validated: a bad value is an error
//! naming the annotation; one meshd does not implement is an admission warning naming it.

use crate::annotations::{self as ann, Capture};
use crate::config::{InjectConfig, ProxyResources};
use k8s_openapi::api::core::v1::{Volume, VolumeMount};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// Which injection template applies (`inject.istio.io/templates`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// Envoy as the pod's sidecar, with traffic capture.
    Sidecar,
    /// Envoy as the pod itself (router mode, no capture): ingress and egress gateways.
    Gateway,
}

/// The sidecar's readiness probe timings (`readiness.status.sidecar.istio.io/*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// `status.sidecar.istio.io/port: "0"` turns the probe off, as in Istio.
    pub enabled: bool,
    pub initial_delay_seconds: i32,
    pub period_seconds: i32,
    pub failure_threshold: i32,
}

/// Everything the annotations decide.
#[derive(Clone, Debug)]
pub struct Settings {
    pub template: Template,
    /// `None`: no traffic capture (`interceptionMode: NONE`, or a gateway).
    pub capture: Option<Capture>,
    pub delta_xds: Option<bool>,
    pub hold_application: Option<bool>,
    pub termination_drain: Option<std::time::Duration>,
    /// Which of Envoy's stats the sidecar records (`None`: all of them).
    pub stats_matcher: Option<crate::stats_matcher::StatsInclusion>,
    pub native_sidecar: Option<bool>,
    pub resources: ProxyResources,
    pub proxy_image: String,
    pub rewrite_probes: bool,
    pub readiness: Readiness,
    pub user_volumes: Vec<Volume>,
    pub user_volume_mounts: Vec<VolumeMount>,
}

type Annotations = BTreeMap<String, String>;

fn boolean(a: &Annotations, key: &str, errors: &mut Vec<String>) -> Option<bool> {
    let v = a.get(key)?;
    let parsed = ann::parse_bool(v);
    if parsed.is_none() {
        errors.push(format!("annotation {key}: `{v}` is not a boolean"));
    }
    parsed
}

fn integer(a: &Annotations, key: &str, min: i32, default: i32, errors: &mut Vec<String>) -> i32 {
    let Some(v) = a.get(key) else {
        return default;
    };
    match v.trim().parse::<i32>() {
        Ok(n) if n >= min => n,
        _ => {
            errors.push(format!(
                "annotation {key}: `{v}` is not an integer of at least {min}"
            ));
            default
        }
    }
}

/// A JSON list of `T`, or a map of name → `T` (Istio reads both for user volumes).
fn json_items<T: DeserializeOwned>(
    a: &Annotations,
    key: &str,
    set_name: fn(&mut T, &str),
    errors: &mut Vec<String>,
) -> Vec<T> {
    let Some(text) = a.get(key) else {
        return vec![];
    };
    let parsed: Result<serde_json::Value, _> = serde_json::from_str(text);
    let result = match parsed {
        Ok(serde_json::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                serde_path_to_error::deserialize::<_, T>(item).map_err(|e| format!("[{i}]: {e}"))
            })
            .collect::<Result<Vec<T>, String>>(),
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(name, mut item)| {
                if let Some(o) = item.as_object_mut() {
                    o.entry("name")
                        .or_insert_with(|| serde_json::Value::String(name.clone()));
                }
                let mut t = serde_path_to_error::deserialize::<_, T>(item)
                    .map_err(|e| format!("{name}: {e}"))?;
                set_name(&mut t, &name);
                Ok(t)
            })
            .collect(),
        Ok(_) => Err("not a JSON list or map".to_string()),
        Err(e) => Err(format!("not JSON: {e}")),
    };
    result.unwrap_or_else(|e| {
        errors.push(format!("annotation {key}: {e}"));
        vec![]
    })
}

fn template(a: &Annotations, warnings: &mut Vec<String>) -> Template {
    let Some(list) = a.get(ann::TEMPLATES) else {
        return Template::Sidecar;
    };
    let mut chosen = Template::Sidecar;
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match name {
            "sidecar" => {}
            "gateway" => chosen = Template::Gateway,
            other => warnings.push(format!(
                "annotation {}: template `{other}` is not supported by meshd (sidecar and gateway are); ignored",
                ann::TEMPLATES
            )),
        }
    }
    chosen
}

fn quantity(a: &Annotations, key: &str, default: &str, errors: &mut Vec<String>) -> String {
    match a.get(key) {
        None => default.to_string(),
        Some(v) if ann::is_quantity(v) => v.clone(),
        Some(v) => {
            errors.push(format!(
                "annotation {key}: `{v}` is not a Kubernetes quantity"
            ));
            default.to_string()
        }
    }
}

/// Raises a limit below its request to the request: the API server rejects such a pod.
fn limit_at_least_request(
    what: &str,
    request: &str,
    limit: &mut String,
    warnings: &mut Vec<String>,
) {
    if let (Some(r), Some(l)) = (ann::quantity_value(request), ann::quantity_value(limit))
        && l < r
    {
        warnings.push(format!(
            "sidecar {what} limit {limit} is below its request {request}; the limit is raised to {request}"
        ));
        *limit = request.to_string();
    }
}

fn resources(
    a: &Annotations,
    cfg: &InjectConfig,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> ProxyResources {
    let d = &cfg.proxy_resources;
    let mut r = ProxyResources {
        cpu_request: quantity(a, ann::PROXY_CPU, &d.cpu_request, errors),
        memory_request: quantity(a, ann::PROXY_MEMORY, &d.memory_request, errors),
        cpu_limit: quantity(a, ann::PROXY_CPU_LIMIT, &d.cpu_limit, errors),
        memory_limit: quantity(a, ann::PROXY_MEMORY_LIMIT, &d.memory_limit, errors),
    };
    limit_at_least_request("cpu", &r.cpu_request, &mut r.cpu_limit, warnings);
    limit_at_least_request("memory", &r.memory_request, &mut r.memory_limit, warnings);
    r
}

fn capture(
    a: &Annotations,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<Capture> {
    let settings = ann::capture(a, errors);
    for key in [ann::KUBEVIRT_INTERFACES, ann::REROUTE_VIRTUAL_INTERFACES] {
        if a.get(key).is_some_and(|v| !v.trim().is_empty()) {
            warnings.push(format!(
                "annotation {key}: meshd's capture does not reroute virtual interfaces; ignored"
            ));
        }
    }
    match a.get(ann::INTERCEPTION_MODE).map(|v| v.trim()) {
        None | Some("REDIRECT") => Some(settings),
        Some("NONE") => None,
        Some("TPROXY") => {
            warnings.push(format!(
                "annotation {}: TPROXY is not supported by meshd; REDIRECT is used (the app sees 127.0.0.6 as the peer address)",
                ann::INTERCEPTION_MODE
            ));
            Some(settings)
        }
        Some(other) => {
            errors.push(format!(
                "annotation {}: `{other}` is not REDIRECT, TPROXY or NONE",
                ann::INTERCEPTION_MODE
            ));
            Some(settings)
        }
    }
}

fn readiness(a: &Annotations, errors: &mut Vec<String>, warnings: &mut Vec<String>) -> Readiness {
    let enabled = match a.get(ann::STATUS_PORT).map(|v| v.trim()) {
        None => true,
        Some("0") => false,
        Some(v) => {
            if v.parse::<u16>().is_err() {
                errors.push(format!(
                    "annotation {}: `{v}` is not a port",
                    ann::STATUS_PORT
                ));
            } else {
                warnings.push(format!(
                    "annotation {}: meshd has no agent status server; Envoy's readiness stays on 15021 (only `0`, no readiness probe, is honoured)",
                    ann::STATUS_PORT
                ));
            }
            true
        }
    };
    if a.contains_key(ann::READINESS_APPLICATION_PORTS) {
        warnings.push(format!(
            "annotation {}: the sidecar's readiness is Envoy's own, not the application ports'; ignored",
            ann::READINESS_APPLICATION_PORTS
        ));
    }
    Readiness {
        enabled,
        initial_delay_seconds: integer(a, ann::READINESS_INITIAL_DELAY, 0, 1, errors),
        period_seconds: integer(a, ann::READINESS_PERIOD, 1, 2, errors),
        failure_threshold: integer(a, ann::READINESS_FAILURE_THRESHOLD, 1, 30, errors),
    }
}

/// Reads every setting; problems go to `errors` (the pod is refused) or `warnings`.
pub fn read(
    a: &Annotations,
    cfg: &InjectConfig,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Settings {
    let template = template(a, warnings);
    let mut capture = capture(a, errors, warnings);
    if template == Template::Gateway {
        capture = None;
    }
    let proxy = ann::proxy_config(a, errors, warnings);
    let proxy_image = match a.get(ann::PROXY_IMAGE) {
        None => cfg.proxy_image.clone(),
        Some(v) if ann::is_image(v) => v.clone(),
        Some(v) => {
            errors.push(format!(
                "annotation {}: `{v}` is not an image reference",
                ann::PROXY_IMAGE
            ));
            cfg.proxy_image.clone()
        }
    };
    Settings {
        template,
        capture,
        delta_xds: proxy.delta_xds.or(cfg.delta_xds),
        hold_application: proxy.hold_application,
        termination_drain: proxy.termination_drain,
        stats_matcher: crate::stats_matcher::read(
            a,
            cfg.proxy_stats_matcher.clone(),
            proxy.stats_matcher,
            errors,
        ),
        native_sidecar: boolean(a, ann::NATIVE_SIDECAR, errors),
        resources: resources(a, cfg, errors, warnings),
        proxy_image,
        rewrite_probes: boolean(a, ann::REWRITE_PROBES, errors).unwrap_or(true),
        readiness: readiness(a, errors, warnings),
        user_volumes: json_items(
            a,
            ann::USER_VOLUME,
            |v: &mut Volume, n| v.name = n.into(),
            errors,
        ),
        user_volume_mounts: json_items(
            a,
            ann::USER_VOLUME_MOUNT,
            |m: &mut VolumeMount, n| m.name = n.into(),
            errors,
        ),
    }
}
