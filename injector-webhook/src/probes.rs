//! Probe rewriting: under STRICT mTLS the kubelet's plaintext probe to the app port is captured
//! by the sidecar and refused, so each `httpGet`, `tcpSocket` and `grpc` probe (of the app
//! containers and of native-sidecar init containers, the only init containers Kubernetes lets
//! have probes) becomes an `httpGet` on the sidecar's health listener (15021) at
//! `/app-health/<container>/livez|readyz|startupz`. The original target is recorded in
//! [`APP_PROBERS_ENV`] on the bootstrap init container; `meshd bootstrap` turns it into Envoy
//! config on 15021 (see [`crate::envoy_probes`]): an HTTP route for `httpGet`, and for
//! `tcpSocket`/`grpc` a health-check answer from an actively checked cluster (TCP connect or
//! gRPC `Health/Check` to `127.0.0.1:<port>`). Stock Envoy only, as Istio's agent would do it.

use crate::config::ports;
use k8s_openapi::api::core::v1::{Container, GRPCAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Environment variable (on the `meshd-bootstrap` init container) carrying the JSON map
/// `{"/app-health/<container>/<kind>": AppProber}`.
pub const APP_PROBERS_ENV: &str = "MESHD_APP_PROBERS";

/// How the original probe checked the app.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    #[default]
    Http,
    Tcp,
    Grpc,
}

impl ProbeKind {
    fn is_http(&self) -> bool {
        *self == ProbeKind::Http
    }
}

/// Where one rewritten probe really goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppProber {
    /// The app's port (named ports resolved at injection).
    pub port: u16,
    /// `httpGet` only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// `HTTP` or `HTTPS` (`httpGet` only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scheme: String,
    #[serde(default, skip_serializing_if = "ProbeKind::is_http")]
    pub kind: ProbeKind,
    /// The gRPC health service name (`grpc` only; empty: the server's overall health).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

pub type AppProbers = BTreeMap<String, AppProber>;

/// The probes a container may have, with the path suffix each gets.
const PROBE_KINDS: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

pub fn health_path(container: &str, kind: &str) -> String {
    format!("/app-health/{container}/{kind}")
}

fn probe_mut<'a>(c: &'a mut Container, field: &str) -> Option<&'a mut Probe> {
    match field {
        "livenessProbe" => c.liveness_probe.as_mut(),
        "readinessProbe" => c.readiness_probe.as_mut(),
        _ => c.startup_probe.as_mut(),
    }
}

fn valid_port(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p > 0)
}

fn resolve_port(port: &IntOrString, ports: &[(Option<String>, i32)]) -> Option<u16> {
    match port {
        IntOrString::Int(p) => valid_port(*p),
        IntOrString::String(name) => ports
            .iter()
            .find(|(n, _)| n.as_deref() == Some(name.as_str()))
            .and_then(|(_, p)| valid_port(*p)),
    }
}

/// A DNS-1123 label: what a container name is, so it is safe in a URL path.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn health_get(
    key: &str,
    headers: Option<Vec<k8s_openapi::api::core::v1::HTTPHeader>>,
) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(key.to_string()),
        port: IntOrString::Int(i32::from(ports::HEALTH)),
        scheme: Some("HTTP".into()),
        http_headers: headers,
        host: None,
    }
}

/// Rewrites the probes of `c` in place, recording each original in `probers`; probes that
/// cannot be rewritten (other host, unknown named port, unsupported scheme) become warnings and
/// stay as they are.
pub fn rewrite(c: &mut Container, probers: &mut AppProbers, warnings: &mut Vec<String>) {
    let name = c.name.clone();
    if !is_dns_label(&name) {
        if c.liveness_probe.is_some() || c.readiness_probe.is_some() || c.startup_probe.is_some() {
            warnings.push(format!(
                "container `{name}` is not a DNS label; its probes are not rewritten"
            ));
        }
        return;
    }
    let ports: Vec<(Option<String>, i32)> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone(), p.container_port))
        .collect();
    for (field, kind) in PROBE_KINDS {
        let Some(probe) = probe_mut(c, field) else {
            continue;
        };
        let key = health_path(&name, kind);
        let prober = if let Some(get) = &probe.http_get {
            if get.host.as_deref().is_some_and(|h| !h.is_empty()) {
                warnings.push(format!(
                    "container {name}: {field} probes another host; not rewritten"
                ));
                continue;
            }
            let Some(port) = resolve_port(&get.port, &ports) else {
                warnings.push(format!(
                    "container {name}: {field} port does not resolve to a container port; not rewritten"
                ));
                continue;
            };
            let scheme = match get.scheme.as_deref() {
                None | Some("HTTP") => "HTTP",
                Some("HTTPS") => "HTTPS",
                Some(other) => {
                    warnings.push(format!(
                        "container {name}: {field} scheme `{other}` is not HTTP or HTTPS; not rewritten"
                    ));
                    continue;
                }
            };
            let path = match get.path.as_deref() {
                None | Some("") => "/".to_string(),
                Some(p) if p.starts_with('/') => p.to_string(),
                Some(p) => format!("/{p}"),
            };
            let headers = get.http_headers.clone();
            probe.http_get = Some(health_get(&key, headers));
            AppProber {
                port,
                path,
                scheme: scheme.into(),
                kind: ProbeKind::Http,
                service: None,
            }
        } else if let Some(tcp) = &probe.tcp_socket {
            if tcp.host.as_deref().is_some_and(|h| !h.is_empty()) {
                warnings.push(format!(
                    "container {name}: {field} probes another host; not rewritten"
                ));
                continue;
            }
            let Some(port) = resolve_port(&tcp.port, &ports) else {
                warnings.push(format!(
                    "container {name}: {field} port does not resolve to a container port; not rewritten"
                ));
                continue;
            };
            probe.tcp_socket = None;
            probe.http_get = Some(health_get(&key, None));
            AppProber {
                port,
                path: String::new(),
                scheme: String::new(),
                kind: ProbeKind::Tcp,
                service: None,
            }
        } else if let Some(grpc) = &probe.grpc {
            let Some(port) = valid_port(grpc.port) else {
                warnings.push(format!(
                    "container {name}: {field} gRPC port {} is not a port; not rewritten",
                    grpc.port
                ));
                continue;
            };
            let service = grpc.service.clone().filter(|s| !s.is_empty());
            probe.grpc = None;
            probe.http_get = Some(health_get(&key, None));
            AppProber {
                port,
                path: String::new(),
                scheme: String::new(),
                kind: ProbeKind::Grpc,
                service,
            }
        } else {
            continue;
        };
        probers.insert(key, prober);
    }
}

/// Undoes [`rewrite`] for a pod injected before, from the probers its bootstrap container
/// recorded, so re-injection starts from the app's own probes.
pub fn restore(c: &mut Container, probers: &AppProbers) {
    for (field, _) in PROBE_KINDS {
        let Some(probe) = probe_mut(c, field) else {
            continue;
        };
        let Some(get) = &probe.http_get else {
            continue;
        };
        if get.port != IntOrString::Int(i32::from(ports::HEALTH)) {
            continue;
        }
        let Some(original) = get.path.as_deref().and_then(|p| probers.get(p)) else {
            continue;
        };
        let port = IntOrString::Int(i32::from(original.port));
        match original.kind {
            ProbeKind::Http => {
                probe.http_get = Some(HTTPGetAction {
                    path: Some(original.path.clone()),
                    port,
                    scheme: Some(original.scheme.clone()),
                    http_headers: get.http_headers.clone(),
                    host: None,
                });
            }
            ProbeKind::Tcp => {
                probe.http_get = None;
                probe.tcp_socket = Some(TCPSocketAction { port, host: None });
            }
            ProbeKind::Grpc => {
                probe.http_get = None;
                probe.grpc = Some(GRPCAction {
                    port: i32::from(original.port),
                    service: original.service.clone(),
                });
            }
        }
    }
}
