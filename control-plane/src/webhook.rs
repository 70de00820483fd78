//! The sidecar-injection webhook: HTTPS `POST /inject` (AdmissionReview v1) on
//! `--webhook-port` (15017). The decision and the patch are `meshd_injector`'s pure function;
//! this is the TLS listener around it.
//!
//! The serving certificate comes from the mesh CA (`server_cert` for `meshd.<ns>.svc` and its
//! longer forms) and is re-issued on a handshake once due or once the CA signs with another key.
//! The API server trusts it through the MutatingWebhookConfiguration's `caBundle`, the mesh's
//! trust bundle, which Kubernetes mode keeps current (`kube::webhook_config`).

pub use crate::mode::NamespaceLookup;
use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use meshd_ca::CertificateAuthority;
use meshd_injector::{InjectConfig, ResponseExt};
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
pub struct WebhookConfig {
    pub port: u16,
    pub inject: InjectConfig,
    /// Names in the serving certificate.
    pub dns_names: Vec<String>,
    pub namespaces: NamespaceLookup,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("port", &self.port)
            .field("inject", &self.inject)
            .field("dns_names", &self.dns_names)
            .finish_non_exhaustive()
    }
}

impl WebhookConfig {
    /// meshd's Service `service` in `namespace`; namespaces unknown (the webhook
    /// configuration's selector decides).
    pub fn new(port: u16, service: &str, namespace: &str, inject: InjectConfig) -> WebhookConfig {
        WebhookConfig {
            port,
            inject,
            dns_names: dns_names(service, namespace),
            namespaces: Arc::new(|_| None),
        }
    }
}

/// The names the API server may use for meshd's Service, and loopback (an API server on the
/// same host calling `https://localhost:<port>/inject`).
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ]
}

/// TLS settings for the webhook: a certificate from the mesh CA for `dns_names`, re-issued when
/// due or when the CA's signer changes (root rotation); HTTP/2 and 1.1.
pub fn tls_config(
    ca: Arc<CertificateAuthority>,
    dns_names: &[String],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let serving = crate::ca_service::ServingCert::new(ca, dns_names.to_vec())
        .context("issuing the webhook's serving certificate")?;
    serving.server_config_with_alpn(vec![b"h2".to_vec(), b"http/1.1".to_vec()])
}

struct WebhookState {
    inject: InjectConfig,
    namespaces: NamespaceLookup,
    metrics: Arc<InjectionMetrics>,
}

/// Istio's injector metrics (`sidecar_injection_*_total`), for `/metrics`.
#[derive(Debug, Default)]
pub struct InjectionMetrics {
    pub requests: Counter,
    pub success: Counter,
    pub skip: Counter,
    pub failure: Counter,
}

impl InjectionMetrics {
    fn record(&self, response: &meshd_injector::AdmissionResponse) {
        self.requests.inc();
        if !response.allowed {
            self.failure.inc();
        } else if response.outcome().starts_with("injected") {
            self.success.inc();
        } else {
            self.skip.inc();
        }
    }

    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        for (name, help, counter) in [
            (
                "sidecar_injection_requests",
                "Total number of sidecar injection requests",
                &self.requests,
            ),
            (
                "sidecar_injection_success",
                "Total number of successful sidecar injection requests",
                &self.success,
            ),
            (
                "sidecar_injection_skip",
                "Total number of skipped sidecar injection requests",
                &self.skip,
            ),
            (
                "sidecar_injection_failure",
                "Total number of failed sidecar injection requests",
                &self.failure,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
    }
}

async fn inject(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    let reply = meshd_injector::handle(&body, &state.inject, &*state.namespaces);
    let r = &reply.response;
    state.metrics.record(r);
    if r.allowed {
        tracing::info!(uid = %r.uid, outcome = r.outcome(), "admission review");
    } else {
        let message = r.result.message.as_str();
        tracing::warn!(uid = %r.uid, http = reply.http_status, message, "admission review refused");
    }
    let status = StatusCode::from_u16(reply.http_status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        reply.body(),
    )
        .into_response()
}

/// Istio config validation: the same reading as the watches (`validate_webhook`).
async fn validate(body: Bytes) -> Response {
    let (code, answer) = crate::validate_webhook::review(&body);
    if !answer.allowed {
        let message = answer.result.message.as_str();
        tracing::info!(message, "config validation refused an object");
    }
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        meshd_injector::review::review_body(&answer),
    )
        .into_response()
}

pub fn router(
    inject_cfg: InjectConfig,
    namespaces: NamespaceLookup,
    metrics: Arc<InjectionMetrics>,
) -> Router {
    // Bodies up to one byte over the limit reach the injector, which answers 413 as an
    // AdmissionReview; larger ones get axum's own 413.
    let limit = inject_cfg.max_review_bytes.saturating_add(1);
    let state = Arc::new(WebhookState {
        inject: inject_cfg,
        namespaces,
        metrics,
    });
    Router::new()
        .route("/inject", post(inject))
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves the admitted connections over TLS until `stop` turns true, within the listener
/// limits (handshake and header timeouts, streams per connection: `transport`).
pub async fn serve(
    incoming: impl futures::Stream<Item = crate::accept::Admitted> + Send + 'static,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: &crate::transport::TransportLimits,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let opts = crate::transport::ConnOptions::http("webhook", limits);
    crate::transport::serve(incoming, Some(acceptor), router, opts, stop).await
}

/// Whether the API server runs native sidecars (Kubernetes >= 1.29), from its version; `None`
/// (the injector then injects the classic way) when the version cannot be read.
pub async fn detect_native_sidecars(client: &kube::Client) -> Option<bool> {
    match client.apiserver_version().await {
        Ok(info) => {
            let native =
                meshd_injector::config::native_sidecars_supported(&info.major, &info.minor);
            tracing::info!(
                version = %info.git_version,
                native_sidecars = native,
                "API server version read for injection"
            );
            Some(native)
        }
        Err(e) => {
            tracing::warn!(error = %e, "API server version unknown; injecting classic sidecars");
            None
        }
    }
}

/// The injector settings: defaults for meshd's Service, overlaid with the `--injector-config`
/// file (YAML or JSON; unknown keys are an error).
pub fn load_inject_config(
    path: Option<&std::path::Path>,
    namespace: &str,
    service: &str,
    xds_tls_port: u16,
) -> anyhow::Result<InjectConfig> {
    let defaults = InjectConfig {
        xds_address: format!("{service}.{namespace}.svc:{xds_tls_port}"),
        ..InjectConfig::for_namespace(namespace)
    };
    let Some(path) = path else {
        return Ok(defaults);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --injector-config {}", path.display()))?;
    let overlay: serde_json::Value = serde_yaml::from_str(&text)
        .with_context(|| format!("--injector-config {} is not YAML or JSON", path.display()))?;
    let mut merged = serde_json::to_value(&defaults)?;
    match (overlay, &mut merged) {
        (serde_json::Value::Null, _) => {}
        (serde_json::Value::Object(o), serde_json::Value::Object(m)) => {
            for (k, v) in o {
                m.insert(k, v);
            }
        }
        _ => anyhow::bail!("--injector-config {} is not a map", path.display()),
    }
    let cfg: InjectConfig = serde_json::from_value(merged)
        .with_context(|| format!("--injector-config {}", path.display()))?;
    if let Some(m) = &cfg.proxy_stats_matcher {
        m.check(&format!(
            "--injector-config {}: proxyStatsMatcher",
            path.display()
        ))
        .map_err(anyhow::Error::msg)?;
    }
    Ok(cfg)
}

/// The `--mesh-config` file `path` read and parsed; its warnings are the caller's to report.
pub fn read_mesh_file(
    path: &std::path::Path,
) -> anyhow::Result<meshd_model::extension_provider::MeshFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--mesh-config {}: cannot read", path.display()))?;
    meshd_model::extension_provider::parse_mesh_file(&text)
        .map_err(|e| anyhow::anyhow!("--mesh-config {}: {e}", path.display()))
}

/// MeshConfig's `defaultConfig` (from the `--mesh-config` file `path`) made the injector's mesh
/// default, read with the rules of the `proxy.istio.io/config` annotation: what meshd does not
/// use is logged, a bad value stops the start naming the file and the field.
pub fn apply_mesh_default_config(
    cfg: &mut InjectConfig,
    path: &std::path::Path,
    default_config: &serde_json::Value,
) -> anyhow::Result<()> {
    let at = format!("--mesh-config {}: defaultConfig", path.display());
    let value = serde_yaml::to_value(default_config).with_context(|| at.clone())?;
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let defaults =
        meshd_injector::annotations::read_proxy_config(value, &at, &mut errors, &mut warnings);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("; "));
    }
    cfg.apply_proxy_defaults(defaults);
    Ok(())
}

/// The webhook of `meshd serve`: on in Kubernetes mode (port 15017 unless given), in file mode
/// only with an explicit `--webhook-port`. `mesh_default`: the `--mesh-config` file and its
/// `defaultConfig`.
pub fn from_flags(
    port: Option<u16>,
    kubernetes: bool,
    namespace: &str,
    service: &str,
    xds_tls_port: u16,
    injector_config: Option<&std::path::Path>,
    mesh_default: Option<(&std::path::Path, &serde_json::Value)>,
) -> anyhow::Result<Option<WebhookConfig>> {
    let port = match (port, kubernetes) {
        (Some(p), _) => p,
        (None, true) => 15017,
        (None, false) => return Ok(None),
    };
    let mut inject = load_inject_config(injector_config, namespace, service, xds_tls_port)?;
    if let Some((path, value)) = mesh_default {
        apply_mesh_default_config(&mut inject, path, value)?;
    }
    Ok(Some(WebhookConfig::new(port, service, namespace, inject)))
}
