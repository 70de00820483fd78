//! What the injector needs to know that is not in the AdmissionReview.

/// Where things live inside an injected pod. Istio's paths and names, so tooling keeps working.
pub mod paths {
    /// The emptyDir the bootstrap init container writes and the sidecar reads.
    pub const PROXY_CONFIG_DIR: &str = "/etc/meshd/proxy";
    pub const BOOTSTRAP_FILE: &str = "/etc/meshd/proxy/envoy.json";
    /// `meshd-proxy-wait`, copied there by the bootstrap init container when the app is held
    /// until the proxy starts: the proxy's image is stock Envoy, with nothing of meshd in it.
    pub const PROXY_WAIT_FILE: &str = "/etc/meshd/proxy/meshd-proxy-wait";
    /// The projected service-account token (audience `istio-ca`), refreshed by the kubelet.
    pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
    pub const TOKEN_FILE: &str = "/var/run/secrets/tokens/istio-token";
    /// The mesh root certificate, from the `istio-ca-root-cert` ConfigMap (key `root-cert.pem`).
    pub const ROOT_CERT_DIR: &str = "/var/run/secrets/istio";
    pub const ROOT_CERT_FILE: &str = "/var/run/secrets/istio/root-cert.pem";
    pub const ROOT_CERT_KEY: &str = "root-cert.pem";
}

/// Names the injector adds to a pod.
pub mod names {
    pub const SIDECAR: &str = "istio-proxy";
    pub const BOOTSTRAP_INIT: &str = "meshd-bootstrap";
    pub const IPTABLES_INIT: &str = "meshd-init";
    pub const VOLUME_PROXY_CONFIG: &str = "meshd-envoy";
    pub const VOLUME_TOKEN: &str = "istio-token";
    pub const VOLUME_ROOT_CERT: &str = "istiod-ca-cert";
}

/// Sidecar ports (Istio's numbers).
pub mod ports {
    pub const OUTBOUND_CAPTURE: u16 = 15001;
    pub const INBOUND_CAPTURE: u16 = 15006;
    pub const HEALTH: u16 = 15021;
    /// Istio's agent status port; here an Envoy listener on loopback serving `/quitquitquit`.
    pub const STATUS: u16 = 15020;
    /// Envoy's admin (loopback only).
    pub const ADMIN: u16 = 15000;
    pub const PROMETHEUS: u16 = 15090;
    pub const PROXY_UID: u32 = 1337;
}

/// Kubernetes resource quantities for the sidecar.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProxyResources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

impl Default for ProxyResources {
    /// The seed's sidecar sizing: requests 100m / 128Mi, limits 2000m / 1024Mi.
    fn default() -> Self {
        ProxyResources {
            cpu_request: "100m".into(),
            memory_request: "128Mi".into(),
            cpu_limit: "2000m".into(),
            memory_limit: "1024Mi".into(),
        }
    }
}

/// Read from `--injector-config` (YAML or JSON, camelCase keys, every key optional).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct InjectConfig {
    /// meshd's own namespace: never injected.
    pub meshd_namespace: String,
    /// Other namespaces never injected (kube-system and friends).
    pub never_inject_namespaces: Vec<String>,
    /// The stock Envoy image of the sidecar.
    pub proxy_image: String,
    /// The meshd image, for the init containers (`meshd bootstrap`, `meshd init-iptables`).
    pub init_image: String,
    pub image_pull_policy: String,
    /// `HOST:PORT` of meshd's TLS xDS port (15012), as the pod resolves it.
    pub xds_address: String,
    /// Audience of the projected service-account token the proxy authenticates with.
    pub token_audience: String,
    pub token_expiration_seconds: i64,
    /// ConfigMap (in the pod's namespace) holding the mesh root certificate.
    pub root_cert_configmap: String,
    pub proxy_resources: ProxyResources,
    /// Envoy worker threads.
    pub proxy_concurrency: u32,
    /// When the namespace's labels are not known (no lookup answer), inject as if the
    /// namespace were enabled: the webhook configuration's namespaceSelector already chose.
    pub inject_unknown_namespaces: bool,
    /// Requests larger than this are refused before parsing.
    pub max_review_bytes: usize,
    /// The control-plane revision this webhook serves (`istio.io/rev`); `default` also serves
    /// `istio-injection=enabled`. Recorded in the `sidecar.istio.io/status` annotation.
    pub revision: String,
    /// Whether the API server runs native sidecars (init containers with `restartPolicy:
    /// Always`, Kubernetes >= 1.29): `meshd serve` detects it from the server's version;
    /// `None` (unknown) injects the classic way. `sidecar.istio.io/nativeSidecar` overrides.
    pub native_sidecars: Option<bool>,
    /// The mesh default of ProxyConfig `holdApplicationUntilProxyStarts` (classic path only:
    /// a native sidecar always starts first).
    pub hold_application_until_proxy_starts: bool,
    /// The mesh default of ProxyConfig `terminationDrainDuration` (Istio's is 5 s): how long the
    /// sidecar's preStop hook drains before the kubelet sends Envoy SIGTERM.
    #[serde(with = "drain_duration")]
    pub termination_drain_duration: std::time::Duration,
    /// Reported by every injected proxy as its node's `ISTIO_VERSION`, which EnvoyFilter
    /// `match.proxy.proxyVersion` matches; none by default.
    pub istio_version: Option<String>,
    /// The mesh default of ProxyConfig `proxyStatsMatcher`: the stats every sidecar records
    /// besides Istio's default set (none: every stat). A pod's own patterns add to it.
    pub proxy_stats_matcher: Option<crate::stats_matcher::StatsInclusion>,
    /// The mesh default of ProxyConfig `proxyMetadata.ISTIO_DELTA_XDS`: the sidecars' xDS
    /// protocol (none: Delta, Istio's default).
    pub delta_xds: Option<bool>,
}

/// `terminationDrainDuration` in the injector config: a protobuf duration string (`5s`).
mod drain_duration {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", d.as_secs_f64()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::annotations::proto_duration(&text).ok_or_else(|| {
            D::Error::custom(format!(
                "terminationDrainDuration `{text}` is not a duration such as `5s`"
            ))
        })
    }
}

/// Kubernetes runs native sidecars by default from 1.29 (beta, feature gate on).
pub fn native_sidecars_supported(major: &str, minor: &str) -> bool {
    // GKE/EKS report minors like `29+`.
    let digits = |s: &str| -> Option<u32> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    match (digits(major), digits(minor)) {
        (Some(1), Some(m)) => m >= 29,
        (Some(newer), _) => newer > 1,
        _ => false,
    }
}

impl InjectConfig {
    /// MeshConfig's `defaultConfig` (a ProxyConfig, read with the pod annotation's rules) made
    /// the mesh default: each field it sets replaces this config's, except `proxyStatsMatcher`,
    /// whose patterns add to this config's as a pod's do.
    pub fn apply_proxy_defaults(&mut self, d: crate::annotations::ProxyConfigOverrides) {
        if let Some(b) = d.hold_application {
            self.hold_application_until_proxy_starts = b;
        }
        if let Some(t) = d.termination_drain {
            self.termination_drain_duration = t;
        }
        if let Some(m) = d.stats_matcher {
            let mut merged = self.proxy_stats_matcher.take().unwrap_or_default();
            merged.merge(m);
            self.proxy_stats_matcher = Some(merged);
        }
        if d.delta_xds.is_some() {
            self.delta_xds = d.delta_xds;
        }
    }

    /// Defaults for meshd running in `namespace`.
    pub fn for_namespace(namespace: &str) -> InjectConfig {
        InjectConfig {
            meshd_namespace: namespace.to_string(),
            xds_address: format!("meshd.{namespace}.svc:15012"),
            ..InjectConfig::default()
        }
    }
}

/// 4 MiB: a Pod is at most ~1.5 MiB in etcd; an AdmissionReview carries it (and oldObject).
pub const DEFAULT_MAX_REVIEW_BYTES: usize = 4 << 20;

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            meshd_namespace: "meshd-system".into(),
            never_inject_namespaces: vec![
                "kube-system".into(),
                "kube-public".into(),
                "kube-node-lease".into(),
            ],
            proxy_image: "envoyproxy/envoy:v1.40.0".into(),
            init_image: "ghcr.io/meshd/meshd:0.1.0".into(),
            image_pull_policy: "IfNotPresent".into(),
            xds_address: "meshd.meshd-system.svc:15012".into(),
            token_audience: "istio-ca".into(),
            token_expiration_seconds: 43200,
            root_cert_configmap: "istio-ca-root-cert".into(),
            proxy_resources: ProxyResources::default(),
            proxy_concurrency: 2,
            inject_unknown_namespaces: true,
            max_review_bytes: DEFAULT_MAX_REVIEW_BYTES,
            revision: "default".into(),
            native_sidecars: None,
            hold_application_until_proxy_starts: false,
            termination_drain_duration: std::time::Duration::from_secs(5),
            istio_version: None,
            proxy_stats_matcher: None,
            delta_xds: None,
        }
    }
}
