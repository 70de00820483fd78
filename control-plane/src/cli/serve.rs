//! `meshd serve`'s flags (each with its `MESHD_*` environment variable) and their turning into
//! the process configuration, `app::Config`.

use super::{parse_duration, root_key_algorithm_parser};
use crate::app::Config;
use crate::debounce::Debounce;
use clap::Args;
use meshd_ca::RootKeyAlgorithm;
use meshd_xds::GenOptions;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Istio-API YAML files, watched for changes. Without it, the embedded VoiceCore mesh.
    #[arg(long, env = "MESHD_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    #[arg(long, env = "MESHD_REGISTRY", default_value = "file", value_parser = ["file", "kubernetes"])]
    pub registry: String,
    #[arg(long, env = "MESHD_STATE_DIR", default_value = "./.meshd")]
    pub state_dir: PathBuf,
    #[arg(long, env = "MESHD_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    #[arg(long, env = "MESHD_WORKLOAD_CERT_TTL", default_value = "2160h", value_parser = parse_duration)]
    pub workload_cert_ttl: Duration,
    #[arg(long, env = "MESHD_CERT_ROTATION_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub cert_rotation_window: Duration,
    #[arg(long, env = "MESHD_ROOT_CERT_TTL", default_value = "87600h", value_parser = parse_duration)]
    pub root_cert_ttl: Duration,
    /// Key algorithm of a newly generated root CA (first start, `meshd ca rotate-root`). An
    /// existing root keeps its key: to change it, set this and rotate the root. Certificates
    /// an RSA root signs use sha256WithRSAEncryption; the keys meshd generates for workloads
    /// stay ECDSA P-256.
    #[arg(long, env = "MESHD_ROOT_KEY_ALGORITHM", default_value = "ecdsa-p256", value_parser = root_key_algorithm_parser())]
    pub root_key_algorithm: RootKeyAlgorithm,
    /// Address every listener binds (default 127.0.0.1 in file mode, 0.0.0.0 in Kubernetes mode).
    #[arg(long, env = "MESHD_BIND")]
    pub bind: Option<IpAddr>,
    #[arg(long, env = "MESHD_XDS_PORT", default_value_t = 15010)]
    pub xds_port: u16,
    /// Serve plaintext xDS on `--xds-port` (default: true in file mode, for the local demo;
    /// false in Kubernetes mode). In Kubernetes mode its streams never get SDS secrets (no
    /// certificates, no keys): those are served over TLS (`--xds-tls-port`) only.
    #[arg(long, env = "MESHD_XDS_PLAINTEXT", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub xds_plaintext: Option<bool>,
    #[arg(long, env = "MESHD_XDS_TLS_PORT", default_value_t = 15012)]
    pub xds_tls_port: u16,
    /// Extra names (DNS or IP) for the TLS port's certificate, e.g. a load balancer's.
    #[arg(long, env = "MESHD_XDS_TLS_SANS", value_delimiter = ',')]
    pub xds_tls_san: Vec<String>,
    #[arg(long, env = "MESHD_ADMIN_PORT", default_value_t = 15014)]
    pub admin_port: u16,
    /// Injection webhook port (15017): always served in Kubernetes mode; in file mode only
    /// when this is given.
    #[arg(long, env = "MESHD_WEBHOOK_PORT")]
    pub webhook_port: Option<u16>,
    /// meshd's own namespace (never injected; the webhook serves `<service>.<namespace>.svc`).
    #[arg(long, env = "MESHD_NAMESPACE", default_value = "meshd-system")]
    pub namespace: String,
    /// Kubernetes mode: the MutatingWebhookConfiguration whose caBundle meshd keeps equal to
    /// the mesh trust bundle (default `meshd-sidecar-injector-<namespace>`, the chart's name for
    /// release `meshd`); `-` for none.
    #[arg(long, env = "MESHD_WEBHOOK_CONFIG_NAME")]
    pub webhook_config_name: Option<String>,
    /// Kubernetes mode: the ValidatingWebhookConfiguration (Istio config validation, served at
    /// `/validate` on the webhook port) whose caBundle meshd keeps current (default
    /// `meshd-validator-<namespace>`); `-` for none.
    #[arg(long, env = "MESHD_VALIDATING_WEBHOOK_CONFIG_NAME")]
    pub validating_webhook_config_name: Option<String>,
    /// Kubernetes mode: serve Gateway and DestinationRule `credentialName` from Secrets, which
    /// needs read access to Secrets cluster-wide; `false` leaves Secrets alone (certificate
    /// files only).
    #[arg(long, env = "MESHD_GATEWAY_CREDENTIALS", default_value_t = true, action = clap::ArgAction::Set)]
    pub gateway_credentials: bool,
    /// The Service in front of meshd.
    #[arg(long, env = "MESHD_SERVICE_NAME", default_value = "meshd")]
    pub service_name: String,
    /// Sidecar injection settings, YAML or JSON with camelCase keys, each optional
    /// (proxyImage, initImage, xdsAddress, proxyResources, tokenAudience, ...).
    #[arg(long, env = "MESHD_INJECTOR_CONFIG")]
    pub injector_config: Option<PathBuf>,
    /// Istio's MeshConfig YAML (the `istio` ConfigMap's `mesh` key): meshd reads its
    /// `extensionProviders` of kinds `envoyExtAuthzHttp` and `envoyExtAuthzGrpc`, which
    /// AuthorizationPolicies with `action: CUSTOM` name, and its `defaultConfig` (the mesh's
    /// default ProxyConfig, with the fields the `proxy.istio.io/config` annotation takes) for the
    /// injector; other fields are named in a warning. Read once at start; an unreadable file or
    /// a bad value stops the start.
    #[arg(long, env = "MESHD_MESH_CONFIG")]
    pub mesh_config: Option<PathBuf>,
    /// Quiet period after a config change before it is pushed.
    #[arg(long, env = "MESHD_DEBOUNCE_MS", default_value_t = 100)]
    pub debounce_ms: u64,
    /// Longest a change waits for that quiet period: under a steady stream of changes (a
    /// rolling restart) a push still goes out this long after the first change.
    #[arg(long, env = "MESHD_DEBOUNCE_MAX_MS", default_value_t = 200)]
    pub debounce_max_ms: u64,
    /// After a start, how long a root rotation in progress waits for proxies to reconnect
    /// before it moves to its next phase.
    #[arg(long, env = "MESHD_ROOT_ROTATION_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub root_rotation_grace: Duration,
    /// Zipkin-compatible collector (HOST:PORT, e.g. a Jaeger or Zipkin `:9411`): every proxy
    /// traces each HTTP request (100 % sampling) and reports spans there (`/api/v2/spans`).
    #[arg(long, env = "MESHD_ZIPKIN_ADDRESS")]
    pub zipkin_address: Option<String>,
    /// OpenTelemetry collector (HOST:PORT, OTLP gRPC, e.g. `otel-collector.observability:4317`):
    /// every proxy gets an `opentelemetry` cluster; Telemetry provider `opentelemetry` for
    /// tracing (the default tracer when there is no `--zipkin-address`) and access logging.
    /// Spans and log records name their service from the proxy's `OTEL_RESOURCE_ATTRIBUTES`,
    /// which injected pods carry.
    #[arg(long, env = "MESHD_OTEL_ADDRESS")]
    pub otel_address: Option<String>,
    /// JSON access logs on each proxy's stdout.
    #[arg(long, env = "MESHD_ACCESS_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
    /// The stdout access log's encoding, as Istio's MeshConfig `accessLogEncoding`: `json`, or
    /// `text` in Istio's default text format.
    #[arg(long, env = "MESHD_ACCESS_LOG_ENCODING", default_value = "json", value_parser = ["json", "text"])]
    pub access_log_encoding: String,
    /// Locality-prioritized load balancing for every DestinationRule with outlier detection
    /// and no `localityLbSetting` (Istio's MeshConfig `localityLbSetting.enabled`, on by
    /// default); `--locality-lb false` turns it off mesh-wide.
    #[arg(long, env = "MESHD_LOCALITY_LB", default_value_t = true, action = clap::ArgAction::Set)]
    pub locality_lb: bool,
    /// Istio's request metrics on `/metrics`: each proxy streams its access log to meshd over
    /// the bootstrap's `xds-grpc` cluster. Default: on in file mode; off in Kubernetes mode,
    /// where pods injected before this version have no such cluster and would reject every
    /// listener naming it: turn it on once every injected pod runs a current bootstrap.
    #[arg(long, env = "MESHD_REQUEST_TELEMETRY", action = clap::ArgAction::Set)]
    pub request_telemetry: Option<bool>,
    /// Request-metric series (label sets) `/metrics` keeps in all; an entry that would add one
    /// more is dropped and counted in `meshd_telemetry_series_dropped_total{limit="total"}`.
    #[arg(long, env = "MESHD_TELEMETRY_MAX_SERIES", default_value_t = crate::telemetry::metrics::DEFAULT_MAX_SERIES)]
    pub telemetry_max_series: usize,
    /// Request-metric series one workload's proxies may add (`limit="reporter"` when over), so
    /// one proxy cannot take the others' budget.
    #[arg(long, env = "MESHD_TELEMETRY_MAX_SERIES_PER_PROXY", default_value_t = crate::telemetry::metrics::DEFAULT_MAX_SERIES_PER_REPORTER)]
    pub telemetry_max_series_per_proxy: usize,
    /// Kubernetes mode: the audience proxies' projected service-account tokens must carry.
    #[arg(long, env = "MESHD_TOKEN_AUDIENCE", default_value = crate::kube::token::DEFAULT_AUDIENCE)]
    pub token_audience: String,
    /// Kubernetes mode: the Secret (in meshd's namespace) holding the CA.
    #[arg(long, env = "MESHD_CA_SECRET", default_value = crate::kube::ca_secret::DEFAULT_CA_SECRET)]
    pub ca_secret: String,
    /// Kubernetes mode: the ConfigMap carrying the root certificate into injected namespaces.
    #[arg(long, env = "MESHD_ROOT_CERT_CONFIGMAP", default_value = crate::kube::ca_secret::DEFAULT_ROOT_CONFIGMAP)]
    pub root_cert_configmap: String,
    /// Boxed: the limits are most of `serve`'s arguments, and `Command` holds them inline.
    #[command(flatten)]
    pub limits: Box<crate::transport::TransportLimits>,
}

impl ServeArgs {
    /// SANs of the TLS port: `<service>.<namespace>.svc[.cluster.local]` (`MESHD_SERVICE_NAME`,
    /// default `meshd`; `MESHD_NAMESPACE`, default `meshd-system`), localhost, the bind
    /// address, and `--xds-tls-san`.
    fn xds_tls_names(&self, bind: IpAddr) -> Vec<String> {
        let env = |k: &str, d: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| d.to_string())
        };
        let mut names = crate::ca_service::serving_names(
            bind,
            &env("MESHD_SERVICE_NAME", "meshd"),
            &env("MESHD_NAMESPACE", "meshd-system"),
        );
        for n in &self.xds_tls_san {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        names
    }

    /// Kubernetes-mode settings.
    fn kube_config(&self) -> crate::kube::KubeConfig {
        crate::kube::KubeConfig {
            namespace: self.namespace.clone(),
            token_audience: self.token_audience.clone(),
            ca_secret: self.ca_secret.clone(),
            root_cert_configmap: self.root_cert_configmap.clone(),
            webhook_config: match self.webhook_config_name.as_deref() {
                Some("-") => None,
                Some(name) => Some(name.to_string()),
                None => Some(format!("meshd-sidecar-injector-{}", self.namespace)),
            },
            validating_webhook_config: match self.validating_webhook_config_name.as_deref() {
                Some("-") => None,
                Some(name) => Some(name.to_string()),
                None => Some(format!("meshd-validator-{}", self.namespace)),
            },
            gateway_credentials: self.gateway_credentials,
            token_review: crate::kube::token::ReviewLimits {
                concurrency: self.limits.token_review_concurrency,
                negative_ttl: self.limits.token_review_negative_ttl,
            },
            ..Default::default()
        }
    }

    /// What meshd reads of `--mesh-config` (its external authorizers and `defaultConfig`); its
    /// warnings are logged.
    fn mesh_file(&self) -> anyhow::Result<meshd_model::extension_provider::MeshFile> {
        let Some(path) = &self.mesh_config else {
            return Ok(Default::default());
        };
        let file = crate::webhook::read_mesh_file(path)?;
        for w in &file.warnings {
            tracing::warn!(file = %path.display(), "{w}");
        }
        Ok(file)
    }

    pub fn to_config(&self) -> anyhow::Result<Config> {
        let mesh_file = self.mesh_file()?;
        let kubernetes = (self.registry == "kubernetes").then(|| self.kube_config());
        let bind = self.bind.unwrap_or(if kubernetes.is_some() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([127, 0, 0, 1])
        });
        Ok(Config {
            config_dir: self.config_dir.clone(),
            state_dir: self.state_dir.clone(),
            trust_domain: self.trust_domain.clone(),
            workload_cert_ttl: self.workload_cert_ttl,
            cert_rotation_window: self.cert_rotation_window,
            root_cert_ttl: self.root_cert_ttl,
            root_key_algorithm: self.root_key_algorithm,
            bind,
            xds_port: self.xds_port,
            xds_plaintext: self.xds_plaintext.unwrap_or(kubernetes.is_none()),
            xds_tls_port: self.xds_tls_port,
            xds_tls_names: self.xds_tls_names(bind),
            admin_port: self.admin_port,
            debounce: Debounce {
                quiet: Duration::from_millis(self.debounce_ms),
                max: Duration::from_millis(self.debounce_max_ms.max(self.debounce_ms)),
            },
            drain_deadline: Duration::from_secs(5),
            root_rotation_grace: self.root_rotation_grace,
            generator: GenOptions {
                trust_domain: self.trust_domain.clone(),
                access_log: self.access_log,
                locality_lb_default: self.locality_lb,
                access_log_encoding: if self.access_log_encoding == "text" {
                    meshd_xds::generate::AccessLogEncoding::Text
                } else {
                    meshd_xds::generate::AccessLogEncoding::Json
                },
                request_telemetry: self.request_telemetry.unwrap_or(kubernetes.is_none()),
                zipkin_cluster: self.zipkin_address.clone(),
                otel_collector: self.otel_address.clone(),
                ext_authz_providers: mesh_file.ext_authz,
                ..GenOptions::default()
            },
            webhook: crate::webhook::from_flags(
                self.webhook_port,
                self.registry == "kubernetes",
                &self.namespace,
                &self.service_name,
                self.xds_tls_port,
                self.injector_config.as_deref(),
                self.mesh_config
                    .as_deref()
                    .zip(mesh_file.default_config.as_ref()),
            )?,
            kubernetes,
            limits: (*self.limits).clone(),
            telemetry_limits: crate::telemetry::SeriesLimits {
                total: self.telemetry_max_series,
                per_reporter: self.telemetry_max_series_per_proxy,
            },
        })
    }
}
