//! The containers and volumes injection adds, as typed `k8s-openapi` objects: the bootstrap and
//! capture init containers, the `istio-proxy` container (classic, holding, native, gateway) and
//! the volumes they share.

use crate::annotations::{self as ann, Capture};
use crate::config::{InjectConfig, ProxyResources, names, paths, ports};
use crate::decision::Plan;
use crate::probes::{APP_PROBERS_ENV, AppProbers};
use crate::settings::Template;
use crate::stats_matcher::STATS_MATCHER_ENV;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    Probe, ProjectedVolumeSource, ResourceRequirements, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

fn quantities(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_string(), Quantity(cpu.to_string())),
        ("memory".to_string(), Quantity(memory.to_string())),
    ])
}

fn resources(r: &ProxyResources) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(quantities(&r.cpu_request, &r.memory_request)),
        limits: Some(quantities(&r.cpu_limit, &r.memory_limit)),
        ..Default::default()
    }
}

fn small_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(quantities("10m", "16Mi")),
        limits: Some(quantities("100m", "64Mi")),
        ..Default::default()
    }
}

/// uid 1337, nothing else.
fn proxy_user() -> SecurityContext {
    let uid = i64::from(ports::PROXY_UID);
    SecurityContext {
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: path.into(),
            }),
            ..Default::default()
        }),
    }
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `meshd bootstrap` writing the Envoy bootstrap into the shared emptyDir.
pub fn bootstrap_container(cfg: &InjectConfig, plan: &Plan, probers: &AppProbers) -> Container {
    let mut envs = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ];
    if let Some(delta) = plan.settings.delta_xds {
        // `meshd bootstrap` reads Istio's variable (its `--delta` flag's environment).
        envs.push(env(ann::DELTA_XDS_ENV, delta.to_string()));
    }
    if let Some(m) = &plan.settings.stats_matcher {
        // JSON: a regexp may hold the commas a flag's list would split on.
        envs.push(env(
            STATS_MATCHER_ENV,
            serde_json::to_string(m).unwrap_or_default(),
        ));
    }
    if !probers.is_empty() {
        envs.push(env(
            APP_PROBERS_ENV,
            serde_json::to_string(probers).unwrap_or_default(),
        ));
    }
    let mut args = strings(&[
        "bootstrap",
        "--registry",
        "kubernetes",
        "--workload",
        "$(POD_NAME).$(POD_NAMESPACE)",
        "--pod-ip",
        "$(POD_IP)",
        "--service-account",
        "$(SERVICE_ACCOUNT)",
        "--xds-address",
        &cfg.xds_address,
        "--token-file",
        paths::TOKEN_FILE,
        "--root-cert",
        paths::ROOT_CERT_FILE,
        "--out",
        paths::BOOTSTRAP_FILE,
    ]);
    if plan.settings.template == Template::Gateway {
        args.extend(strings(&["--node-type", "router"]));
    }
    // Every sidecar's preStop hook runs it (drain); a held one's postStart too.
    args.extend(strings(&["--install-proxy-wait", paths::PROXY_WAIT_FILE]));
    if let Some(v) = &cfg.istio_version {
        args.extend(strings(&["--istio-version", v]));
    }
    Container {
        name: names::BOOTSTRAP_INIT.into(),
        image: Some(cfg.init_image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        command: Some(strings(&["meshd"])),
        args: Some(args),
        env: Some(envs),
        resources: Some(small_resources()),
        security_context: Some(proxy_user()),
        // The token and the root: it asks meshd for the proxy's EnvoyFilter BOOTSTRAP patches
        // as the proxy will authenticate.
        volume_mounts: Some(vec![
            mount(names::VOLUME_PROXY_CONFIG, paths::PROXY_CONFIG_DIR, false),
            mount(names::VOLUME_TOKEN, paths::TOKEN_DIR, true),
            mount(names::VOLUME_ROOT_CERT, paths::ROOT_CERT_DIR, true),
        ]),
        ..Default::default()
    }
}

/// `meshd init-iptables`: the capture rules (root, NET_ADMIN + NET_RAW).
pub fn iptables_container(cfg: &InjectConfig, capture: &Capture) -> Container {
    Container {
        name: names::IPTABLES_INIT.into(),
        image: Some(cfg.init_image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        command: Some(strings(&["meshd"])),
        args: Some(capture.args()),
        resources: Some(small_resources()),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            // iptables-restore takes /run/xtables.lock.
            read_only_root_filesystem: Some(false),
            capabilities: Some(Capabilities {
                add: Some(strings(&["NET_ADMIN", "NET_RAW"])),
                drop: Some(strings(&["ALL"])),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn envoy_ready_get() -> HTTPGetAction {
    HTTPGetAction {
        path: Some("/healthz/ready".into()),
        port: IntOrString::Int(i32::from(ports::HEALTH)),
        scheme: Some("HTTP".into()),
        ..Default::default()
    }
}

/// The command of the preStop hook, what pilot-agent does on SIGTERM in Istio: drain the
/// inbound listeners (they keep answering, with `Connection: close`), wait `drain`, return; the
/// kubelet then sends SIGTERM, on which stock Envoy exits at once. Without it Envoy dies with
/// the pod's first signal while other sidecars still send to this pod's address (their EDS
/// drops it a moment later): those requests fail.
pub fn drain_command(drain: std::time::Duration) -> Vec<String> {
    strings(&[
        paths::PROXY_WAIT_FILE,
        "drain",
        "--admin-url",
        &format!("http://127.0.0.1:{}", ports::ADMIN),
        "--duration",
        &format!("{}ms", drain.as_millis()),
    ])
}

/// The command of the hold-application postStart hook: polls Envoy's readiness and returns
/// once it is ready (the kubelet starts the next container only then).
pub fn wait_command() -> Vec<String> {
    strings(&[
        paths::PROXY_WAIT_FILE,
        "--url",
        "http://127.0.0.1:15021/healthz/ready",
        "--timeout",
        "120s",
    ])
}

/// The `istio-proxy` container for `plan`.
pub fn proxy_container(cfg: &InjectConfig, plan: &Plan) -> Container {
    let s = &plan.settings;
    let mut mounts = vec![
        mount(names::VOLUME_PROXY_CONFIG, paths::PROXY_CONFIG_DIR, true),
        mount(names::VOLUME_TOKEN, paths::TOKEN_DIR, true),
        mount(names::VOLUME_ROOT_CERT, paths::ROOT_CERT_DIR, true),
    ];
    mounts.extend(s.user_volume_mounts.iter().cloned());
    let readiness = s.readiness.enabled.then(|| Probe {
        http_get: Some(envoy_ready_get()),
        initial_delay_seconds: Some(s.readiness.initial_delay_seconds),
        period_seconds: Some(s.readiness.period_seconds),
        timeout_seconds: Some(3),
        failure_threshold: Some(s.readiness.failure_threshold),
        ..Default::default()
    });
    let mut c = Container {
        name: names::SIDECAR.into(),
        image: Some(s.proxy_image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        command: Some(strings(&["envoy"])),
        args: Some(strings(&[
            "-c",
            paths::BOOTSTRAP_FILE,
            "--disable-hot-restart",
            "--concurrency",
            &cfg.proxy_concurrency.to_string(),
            "--drain-time-s",
            "45",
            // Connections on a changed filter chain (new AuthorizationPolicy, mTLS mode) close
            // at once rather than keep the old policy through a gradual drain; as Istio does.
            "--drain-strategy",
            "immediate",
            "--log-level",
            "warning",
        ])),
        ports: Some(vec![ContainerPort {
            name: Some("http-envoy-prom".into()),
            container_port: i32::from(ports::PROMETHEUS),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: readiness,
        // Envoy's OpenTelemetry tracer names the service from these (its environment resource
        // detector): `canonical-name.namespace`, as Istio names a proxy's spans.
        // Istio's span tags read CANONICAL_SERVICE, CANONICAL_REVISION and POD_NAMESPACE.
        env: Some(vec![
            field_env("POD_NAMESPACE", "metadata.namespace"),
            env(
                "CANONICAL_SERVICE",
                plan.canonical_name
                    .as_deref()
                    .unwrap_or("unknown")
                    .to_string(),
            ),
            env("CANONICAL_REVISION", plan.canonical_revision.clone()),
            env(
                "OTEL_RESOURCE_ATTRIBUTES",
                format!(
                    "service.name={}.$(POD_NAMESPACE)",
                    plan.canonical_name.as_deref().unwrap_or("unknown")
                ),
            ),
        ]),
        resources: Some(resources(&s.resources)),
        security_context: Some(proxy_user()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    if plan.native_sidecar {
        // The kubelet starts the next init container, and the app, once this passes.
        c.restart_policy = Some("Always".into());
        c.startup_probe = Some(Probe {
            http_get: Some(envoy_ready_get()),
            period_seconds: Some(1),
            timeout_seconds: Some(3),
            failure_threshold: Some(600),
            ..Default::default()
        });
    }
    c.lifecycle = Some(Lifecycle {
        post_start: plan.hold_application.then(|| LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(wait_command()),
            }),
            ..Default::default()
        }),
        pre_stop: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(drain_command(plan.termination_drain)),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// The shared emptyDir, the projected token and the root certificate.
pub fn volumes(cfg: &InjectConfig) -> Vec<Volume> {
    vec![
        Volume {
            name: names::VOLUME_PROXY_CONFIG.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: None,
            }),
            ..Default::default()
        },
        Volume {
            name: names::VOLUME_TOKEN.into(),
            projected: Some(ProjectedVolumeSource {
                // Readable by the proxy's uid 1337 whatever the pod's own users are.
                default_mode: Some(0o644),
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(cfg.token_audience.clone()),
                        expiration_seconds: Some(cfg.token_expiration_seconds),
                        path: "istio-token".into(),
                    }),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        },
        Volume {
            name: names::VOLUME_ROOT_CERT.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cfg.root_cert_configmap.clone(),
                default_mode: Some(0o644),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}
