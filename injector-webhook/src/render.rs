//! The injected pod, rendered from the original and a [`Plan`] as typed `k8s-openapi` objects.
//! The webhook's JSON Patch is the difference between the two ([`crate::patch`]); `meshd
//! kube-inject` writes the rendered pod template itself: one code path.
//!
//! Order, as Istio's: the capture init container runs first (before user init containers, so
//! their traffic is already the mesh's), then the bootstrap, then — on servers with native
//! sidecars — the proxy itself (`restartPolicy: Always`, started and ready before any user init
//! container or app container, stopped after the app exits, so Jobs complete). On the classic
//! path the proxy is appended to the containers, or put first with a postStart hook when
//! `holdApplicationUntilProxyStarts` asks (the kubelet starts containers in order and waits for
//! each postStart hook).

use crate::annotations as ann;
use crate::config::{InjectConfig, names, ports};
use crate::decision::Plan;
use crate::merge;
use crate::probes::{self, AppProbers};
use crate::proxy;
use crate::settings::Template;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

/// The injected pod and the warnings rendering added to the plan's.
pub struct Rendered {
    pub pod: Pod,
    pub warnings: Vec<String>,
}

pub fn render(original: &Pod, plan: &Plan, cfg: &InjectConfig) -> Rendered {
    let mut warnings = plan.warnings.clone();
    let mut pod = original.clone();
    let user_proxy = merge::take_override(&mut pod);
    let spec = pod.spec.get_or_insert_default();
    let sidecar = plan.settings.template == Template::Sidecar;

    let mut probers = AppProbers::new();
    if sidecar && plan.settings.rewrite_probes {
        let native_inits = spec
            .init_containers
            .iter_mut()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        for c in spec.containers.iter_mut().chain(native_inits) {
            probes::rewrite(c, &mut probers, &mut warnings);
        }
    }

    let mut proxy = proxy::proxy_container(cfg, plan);
    if let Some(user) = user_proxy {
        proxy = merge::apply_override(proxy, user);
    }
    let mut injected_inits = Vec::new();
    if let Some(capture) = &plan.settings.capture {
        injected_inits.push(proxy::iptables_container(cfg, capture));
    }
    injected_inits.push(proxy::bootstrap_container(cfg, plan, &probers));
    let status_inits: Vec<String> = injected_inits
        .iter()
        .map(|c| c.name.clone())
        .chain(plan.native_sidecar.then(|| names::SIDECAR.to_string()))
        .collect();
    let status_containers: Vec<&str> = if plan.native_sidecar {
        vec![]
    } else {
        vec![names::SIDECAR]
    };
    if plan.native_sidecar {
        injected_inits.push(proxy);
    } else if plan.hold_application {
        spec.containers.insert(0, proxy);
    } else {
        spec.containers.push(proxy);
    }
    let user_inits = spec.init_containers.take().unwrap_or_default();
    injected_inits.extend(user_inits);
    spec.init_containers = Some(injected_inits);

    let mut volumes = spec.volumes.take().unwrap_or_default();
    let ours = proxy::volumes(cfg);
    let status_volumes: Vec<String> = ours
        .iter()
        .chain(&plan.settings.user_volumes)
        .map(|v| v.name.clone())
        .collect();
    volumes.extend(ours);
    volumes.extend(plan.settings.user_volumes.iter().cloned());
    spec.volumes = Some(volumes);

    let default_container = spec
        .containers
        .iter()
        .map(|c| c.name.clone())
        .find(|n| n != names::SIDECAR)
        .unwrap_or_else(|| names::SIDECAR.to_string());

    let meta = &mut pod.metadata;
    let annotations = meta.annotations.get_or_insert_default();
    let status = json!({
        "initContainers": status_inits,
        "containers": status_containers,
        "volumes": status_volumes,
        "imagePullSecrets": null,
        "revision": cfg.revision,
    });
    annotations.insert(ann::STATUS.into(), status.to_string());
    let prometheus = [
        ann::PROMETHEUS_SCRAPE,
        ann::PROMETHEUS_PORT,
        ann::PROMETHEUS_PATH,
    ];
    if annotations.get(ann::PROMETHEUS_SCRAPE).map(String::as_str) == Some("false") {
        // The pod opts out of scraping; honoured as Istio does.
    } else if prometheus.iter().any(|k| annotations.contains_key(*k)) {
        let own: Vec<&str> = prometheus
            .into_iter()
            .filter(|k| annotations.contains_key(*k))
            .collect();
        warnings.push(format!(
            "the pod has its own prometheus.io annotations ({}); Envoy's stats stay on port {} (container port http-envoy-prom) without scrape annotations",
            own.join(", "),
            ports::PROMETHEUS
        ));
    } else {
        annotations.insert(ann::PROMETHEUS_SCRAPE.into(), "true".into());
        annotations.insert(ann::PROMETHEUS_PORT.into(), ports::PROMETHEUS.to_string());
        annotations.insert(ann::PROMETHEUS_PATH.into(), "/stats/prometheus".into());
    }
    annotations
        .entry(ann::DEFAULT_CONTAINER.into())
        .or_insert(default_container);
    let labels = meta.labels.get_or_insert_default();
    labels
        .entry(ann::TLS_MODE_LABEL.into())
        .or_insert_with(|| "istio".into());
    if let Some(name) = &plan.canonical_name {
        labels
            .entry(ann::CANONICAL_NAME_LABEL.into())
            .or_insert_with(|| name.clone());
    }
    labels
        .entry(ann::CANONICAL_REVISION_LABEL.into())
        .or_insert_with(|| plan.canonical_revision.clone());
    Rendered { pod, warnings }
}
