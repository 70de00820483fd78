//! Probe rewriting: under STRICT mTLS the kubelet's plaintext HTTP probe to the app port is
//! captured by the sidecar and refused, so each `httpGet` probe is pointed at the sidecar's
//! health listener (15021) at `/app-health/<container>/livez|readyz|startupz`; the original
//! target is recorded in [`APP_PROBERS_ENV`] on the bootstrap init container, and
//! `meshd bootstrap` turns it into static routes on 15021 forwarding to `127.0.0.1:<port>`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Environment variable (on the `meshd-bootstrap` init container) carrying the JSON map
/// `{"/app-health/<container>/<kind>": AppProber}`.
pub const APP_PROBERS_ENV: &str = "MESHD_APP_PROBERS";

/// Where one rewritten probe really goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppProber {
    /// The app's port (named ports resolved at injection).
    pub port: u16,
    pub path: String,
    /// `HTTP` or `HTTPS`.
    pub scheme: String,
}

pub type AppProbers = BTreeMap<String, AppProber>;

/// Probe field → path suffix.
pub const PROBE_KINDS: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

pub fn health_path(container: &str, kind: &str) -> String {
    format!("/app-health/{container}/{kind}")
}

/// One rewrite: the JSON pointer of the probe's `httpGet`, its new value, and the prober.
pub struct Rewrite {
    pub pointer: String,
    pub http_get: Value,
    pub key: String,
    pub prober: AppProber,
}

fn resolve_port(port: &Value, container: &Value) -> Option<u16> {
    match port {
        Value::Number(n) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0),
        Value::String(name) => container
            .get("ports")?
            .as_array()?
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name.as_str()))?
            .get("containerPort")?
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0),
        _ => None,
    }
}

/// The rewrites for container `index` (named `name`); probes that cannot be rewritten (other
/// host, unknown named port, unsupported scheme) become warnings and are left as they are.
pub fn rewrites(
    index: usize,
    name: &str,
    container: &Value,
    warnings: &mut Vec<String>,
) -> Vec<Rewrite> {
    let mut out = Vec::new();
    for (field, kind) in PROBE_KINDS {
        let Some(http_get) = container.get(field).and_then(|p| p.get("httpGet")) else {
            continue;
        };
        let Some(http_get) = http_get.as_object() else {
            continue;
        };
        if http_get
            .get("host")
            .and_then(Value::as_str)
            .is_some_and(|h| !h.is_empty())
        {
            warnings.push(format!(
                "container {name}: {field} probes another host; not rewritten"
            ));
            continue;
        }
        let Some(port) = http_get
            .get("port")
            .and_then(|p| resolve_port(p, container))
        else {
            warnings.push(format!(
                "container {name}: {field} port does not resolve to a container port; not rewritten"
            ));
            continue;
        };
        let scheme = match http_get.get("scheme").and_then(Value::as_str) {
            None | Some("HTTP") => "HTTP",
            Some("HTTPS") => "HTTPS",
            Some(other) => {
                warnings.push(format!(
                    "container {name}: {field} scheme `{other}` is not HTTP or HTTPS; not rewritten"
                ));
                continue;
            }
        };
        let path = match http_get.get("path").and_then(Value::as_str) {
            None | Some("") => "/".to_string(),
            Some(p) if p.starts_with('/') => p.to_string(),
            Some(p) => format!("/{p}"),
        };
        let key = health_path(name, kind);
        let mut new = json!({
            "path": key,
            "port": crate::config::ports::HEALTH,
            "scheme": "HTTP",
        });
        if let Some(h) = http_get.get("httpHeaders") {
            new["httpHeaders"] = h.clone();
        }
        out.push(Rewrite {
            pointer: format!("/spec/containers/{index}/{field}/httpGet"),
            http_get: new,
            key,
            prober: AppProber {
                port,
                path,
                scheme: scheme.to_string(),
            },
        });
    }
    out
}
