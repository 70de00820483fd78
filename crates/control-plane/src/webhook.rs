//! The sidecar-injection webhook: HTTPS `POST /inject` (AdmissionReview v1) on
//! `--webhook-port` (15017). The decision and the patch are `meshd_injector`'s pure function;
//! this is the TLS listener around it.
//!
//! The serving certificate comes from the mesh CA (`server_cert` for `meshd.<ns>.svc` and its
//! longer forms) and is re-issued on a handshake once it is inside the rotation window. The API
//! server trusts it through the MutatingWebhookConfiguration's `caBundle`: the mesh root,
//! [`ca_bundle`] (base64 PEM), which Kubernetes mode keeps current with [`ca_bundle_patch`].

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use meshd_ca::CertificateAuthority;
use meshd_injector::{InjectConfig, Labels};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Labels of a namespace, when known (Kubernetes mode's namespace watch); `None` when not.
pub type NamespaceLookup = Arc<dyn Fn(&str) -> Option<Labels> + Send + Sync>;

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

/// The names the API server may use for meshd's Service.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

/// The `caBundle` of the MutatingWebhookConfiguration: base64 of the mesh root (PEM).
pub fn ca_bundle(ca: &CertificateAuthority) -> String {
    base64::engine::general_purpose::STANDARD.encode(ca.root_cert_pem())
}

/// A JSON patch (RFC 6902) setting the caBundle of the first `webhooks` entries of a
/// MutatingWebhookConfiguration (`count` of them).
pub fn ca_bundle_patch(ca: &CertificateAuthority, count: usize) -> serde_json::Value {
    let bundle = ca_bundle(ca);
    serde_json::Value::Array(
        (0..count)
            .map(|i| {
                serde_json::json!({
                    "op": "add",
                    "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                    "value": bundle,
                })
            })
            .collect(),
    )
}

/// Serves the current certificate; re-issues it once inside the rotation window.
#[derive(Debug)]
struct RotatingCert {
    ca: Arc<CertificateAuthority>,
    dns_names: Vec<String>,
    rotation_window: Duration,
    current: RwLock<(Arc<CertifiedKey>, SystemTime)>,
}

impl RotatingCert {
    fn issue(
        ca: &CertificateAuthority,
        dns_names: &[String],
    ) -> anyhow::Result<(Arc<CertifiedKey>, SystemTime)> {
        let issued = ca
            .server_cert(dns_names)
            .context("issuing the webhook's serving certificate")?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(issued.cert_chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .context("parsing the webhook certificate")?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
            .context("parsing the webhook key")?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .context("loading the webhook key")?;
        Ok((
            Arc::new(CertifiedKey::new(chain, signing)),
            issued.not_after,
        ))
    }
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let (key, not_after) = self.current.read().ok()?.clone();
        let due = not_after
            .checked_sub(self.rotation_window)
            .is_none_or(|t| SystemTime::now() >= t);
        if !due {
            return Some(key);
        }
        match Self::issue(&self.ca, &self.dns_names) {
            Ok(fresh) => {
                tracing::info!("webhook serving certificate re-issued");
                if let Ok(mut cur) = self.current.write() {
                    *cur = fresh.clone();
                }
                Some(fresh.0)
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-issuing the webhook certificate failed; serving the old one");
                Some(key)
            }
        }
    }
}

/// TLS settings for the webhook: a CA-issued certificate for `dns_names`, HTTP/2 and 1.1.
pub fn tls_config(
    ca: Arc<CertificateAuthority>,
    dns_names: &[String],
    rotation_window: Duration,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let first = RotatingCert::issue(&ca, dns_names)?;
    let resolver = RotatingCert {
        ca,
        dns_names: dns_names.to_vec(),
        rotation_window,
        current: RwLock::new(first),
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

struct WebhookState {
    inject: InjectConfig,
    namespaces: NamespaceLookup,
}

async fn inject(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    let reply = meshd_injector::handle(&body, &state.inject, &*state.namespaces);
    let r = &reply.response;
    if r.allowed {
        tracing::info!(uid = %r.uid, outcome = r.outcome(), "admission review");
    } else {
        let message = r.status.as_ref().map(|s| s.message.as_str()).unwrap_or("");
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

pub fn router(inject_cfg: InjectConfig, namespaces: NamespaceLookup) -> Router {
    // Bodies up to one byte over the limit reach the injector, which answers 413 as an
    // AdmissionReview; larger ones get axum's own 413.
    let limit = inject_cfg.max_review_bytes.saturating_add(1);
    let state = Arc::new(WebhookState {
        inject: inject_cfg,
        namespaces,
    });
    Router::new()
        .route("/inject", post(inject))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Accepts TLS connections until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => Some(accepted),
            _ = stop.wait_for(|s| *s) => None,
        };
        let (tcp, peer) = match accepted {
            None => break,
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        conns.spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "webhook TLS handshake timed out");
                        return;
                    }
                };
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
    conns.abort_all();
    Ok(())
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
    serde_json::from_value(merged).with_context(|| format!("--injector-config {}", path.display()))
}

/// The webhook of `meshd serve`: on in Kubernetes mode (port 15017 unless given), in file mode
/// only with an explicit `--webhook-port`.
pub fn from_flags(
    port: Option<u16>,
    kubernetes: bool,
    namespace: &str,
    service: &str,
    xds_tls_port: u16,
    injector_config: Option<&std::path::Path>,
) -> anyhow::Result<Option<WebhookConfig>> {
    let port = match (port, kubernetes) {
        (Some(p), _) => p,
        (None, true) => 15017,
        (None, false) => return Ok(None),
    };
    let inject = load_inject_config(injector_config, namespace, service, xds_tls_port)?;
    Ok(Some(WebhookConfig::new(port, service, namespace, inject)))
}
