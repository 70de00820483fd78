//! Starting the mode, chosen once: [`Mode::start`] returns what differs between file mode and
//! Kubernetes mode (CA storage, config source, proxy authenticator, admin caller check,
//! namespace lookup, cluster-wide root rotation) so `app::build` wires one set of servers with no
//! mode switch of its own.
//!
//! Kubernetes-mode startup outlasts an API server outage: meshd keeps trying to load its CA and
//! list the cluster, with backoff, and meanwhile answers its probes on the admin port — alive,
//! not ready, and why.
//!
//! Why not exit and let the kubelet restart us: its CrashLoopBackOff grows to five minutes, so
//! every replica would come back minutes after the API server did; and a liveness probe that
//! cannot connect would count a waiting meshd as dead.

use crate::debounce::Debounce;
use crate::identity::CredentialAuth;
use crate::kube::{Kube, KubeConfig, ProxyAuth};
use crate::mode::{CallerCheck, NamespaceLookup};
use crate::root_rotation::ClusterRotation;
use crate::source::FileSource;
use crate::supervise::Backoff;
use anyhow::Context;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use meshd_ca::{CaConfig, CertificateAuthority};
use meshd_model::MeshConfig;
use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tonic::codegen::http;

/// Probe connections answered at once while starting; more are closed on accept.
const MAX_STATUS_CONNECTIONS: usize = 64;
/// How long one probe connection may take, headers and answer.
const STATUS_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Between attempts to reach the API server: soon after it returns, without hammering it.
pub const RETRY: Backoff = Backoff {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(10),
};

/// What a probe hears while meshd is starting: `/healthz/live` 200, anything else 503 with
/// `status`.
fn answer(path: &str, status: &str) -> http::Response<Body> {
    let (code, body) = match path {
        "/healthz/live" => (http::StatusCode::OK, "alive\n".to_string()),
        _ => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {status}\n"),
        ),
    };
    let mut resp = http::Response::new(Body::from(body));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn serve_status(tcp: tokio::net::TcpStream, status: watch::Receiver<String>) {
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let resp = answer(req.uri().path(), &status.borrow());
        async move { Ok::<_, Infallible>(resp) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(STATUS_CONNECTION_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(tcp), service);
    let _ = tokio::time::timeout(STATUS_CONNECTION_TIMEOUT, conn).await;
}

/// Runs `work` while answering probes on `listener` with the latest `status`; the listener is
/// the admin port's, served by the admin API once `work` is done.
pub async fn answering_probes<T>(
    listener: &TcpListener,
    status: watch::Receiver<String>,
    work: impl Future<Output = T>,
) -> T {
    let slots = Arc::new(Semaphore::new(MAX_STATUS_CONNECTIONS));
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let status = status.clone();
                tokio::spawn(async move {
                    serve_status(tcp, status).await;
                    drop(slot);
                });
            }
        }
    }
}

/// One startup step being retried with [`RETRY`] backoff; publishes why it has not succeeded
/// yet to `status` and the log.
struct Retrying<'a> {
    what: &'static str,
    status: &'a watch::Sender<String>,
    failures: u32,
}

impl<'a> Retrying<'a> {
    fn new(what: &'static str, status: &'a watch::Sender<String>) -> Self {
        status.send_replace(format!("{what}…"));
        Retrying {
            what,
            status,
            failures: 0,
        }
    }

    async fn failed(&mut self, e: anyhow::Error) {
        self.failures = self.failures.saturating_add(1);
        let (what, failures) = (self.what, self.failures);
        let wait = RETRY.delay(failures);
        tracing::warn!(error = %format!("{e:#}"), attempt = failures, retry_in = ?wait, "{what} failed; retrying");
        self.status.send_replace(format!(
            "{what} failed (attempt {failures}, retrying in {wait:?}): {e:#}"
        ));
        tokio::time::sleep(wait).await;
    }
}

/// Connects to the cluster, loads the CA from its Secret and lists everything meshd watches,
/// retrying each step until the API server answers. Only a configuration meshd cannot use at
/// all (no kubeconfig) is an error.
pub async fn kube(
    cfg: &KubeConfig,
    ca_cfg: &CaConfig,
    debounce: Debounce,
    out: watch::Sender<Arc<MeshConfig>>,
    status: &watch::Sender<String>,
) -> anyhow::Result<(Kube, CertificateAuthority)> {
    let mut kube = Kube::connect(cfg).await?;
    let mut retry = Retrying::new(
        "loading the mesh CA from its Secret (Kubernetes API server)",
        status,
    );
    let ca = loop {
        match kube.load_ca(ca_cfg).await {
            Ok(ca) => break ca,
            Err(e) => retry.failed(e).await,
        }
    };
    let mut retry = Retrying::new("listing the cluster (Kubernetes API server)", status);
    while let Err(e) = kube.watch(debounce, out.clone()).await {
        retry.failed(e).await;
    }
    Ok((kube, ca))
}

/// Where the mesh config comes from.
pub enum ConfigSource {
    /// `--config-dir` (or the embedded VoiceCore mesh), loaded; watched by the config task.
    Files(FileSource),
    /// The cluster's watches, listed; run by the config task.
    Cluster(Box<Kube>),
}

/// What the chosen mode provides to the servers.
pub struct Mode {
    pub ca: Arc<CertificateAuthority>,
    pub source: ConfigSource,
    /// Proves a proxy's identity: its file-mode credential, or its Kubernetes token.
    pub proxy_auth: ProxyAuth,
    /// Checks off-host admin API callers; `None` (file mode): loopback only.
    pub caller_check: Option<Arc<dyn CallerCheck>>,
    /// Namespace labels for injection from the cluster; `None`: the webhook's configured ones.
    pub namespaces: Option<NamespaceLookup>,
    /// Root rotation led by the Lease holder (Kubernetes mode).
    pub cluster_rotation: Option<ClusterRotation>,
    /// Whether the plaintext xDS port may carry keys: never in Kubernetes mode.
    pub secrets_over_plaintext: bool,
    /// The API server supports native sidecars (`None`: not asked, or no cluster).
    pub native_sidecars: Option<bool>,
    /// The cluster's watch events (none in file mode).
    pub reg_events: Arc<crate::reg_events::RegEvents>,
}

/// What starting a mode needs from the configuration.
pub struct ModeConfig<'a> {
    pub kubernetes: Option<&'a KubeConfig>,
    pub config_dir: Option<PathBuf>,
    pub ca: CaConfig,
    pub trust_domain: &'a str,
    pub debounce: Debounce,
    /// Ask the API server whether it runs native sidecars (the webhook is on and not told).
    pub detect_native_sidecars: bool,
}

impl Mode {
    /// Loads the CA and the first config, and publishes that config on `config_tx`. Kubernetes
    /// mode answers probes on `admin_listener` while it waits for the API server.
    pub async fn start(
        cfg: ModeConfig<'_>,
        admin_listener: &TcpListener,
        config_tx: &watch::Sender<Arc<MeshConfig>>,
    ) -> anyhow::Result<Mode> {
        let Some(kube_cfg) = cfg.kubernetes else {
            // Off the async workers: a new RSA 4096 root takes seconds to generate.
            let ca_cfg = cfg.ca;
            let ca =
                tokio::task::spawn_blocking(move || CertificateAuthority::load_or_create(&ca_cfg))
                    .await
                    .context("loading the mesh CA")?
                    .context("loading the mesh CA")?;
            let ca = Arc::new(ca);
            let mut source = FileSource::new(cfg.config_dir);
            config_tx.send_replace(Arc::new(source.reload()));
            return Ok(Mode {
                proxy_auth: ProxyAuth::Credential(Arc::new(CredentialAuth { ca: ca.clone() })),
                ca,
                source: ConfigSource::Files(source),
                caller_check: None,
                namespaces: None,
                cluster_rotation: None,
                secrets_over_plaintext: true,
                native_sidecars: None,
                reg_events: Default::default(),
            });
        };
        let (status_tx, status) = watch::channel(String::from("starting"));
        let started = kube(
            kube_cfg,
            &cfg.ca,
            cfg.debounce,
            config_tx.clone(),
            &status_tx,
        );
        let (kube, ca) = answering_probes(admin_listener, status, started).await?;
        let ca = Arc::new(ca);
        let native_sidecars = match cfg.detect_native_sidecars {
            true => crate::webhook::detect_native_sidecars(kube.client()).await,
            false => None,
        };
        Ok(Mode {
            proxy_auth: kube.auth(ca.clone(), cfg.trust_domain),
            ca,
            caller_check: Some(Arc::new(kube.admin_auth())),
            namespaces: Some(kube.namespace_lookup()),
            cluster_rotation: Some(ClusterRotation {
                leader: kube.leader(),
                follower_lag: kube.follower_lag(),
            }),
            secrets_over_plaintext: false,
            native_sidecars,
            reg_events: kube.reg_events(),
            source: ConfigSource::Cluster(Box::new(kube)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_hear_alive_and_not_ready_with_the_reason() {
        let live = answer("/healthz/live", "listing the cluster failed");
        assert_eq!(live.status(), http::StatusCode::OK);
        for path in ["/healthz/ready", "/debug/syncz", "/metrics"] {
            let r = answer(path, "listing the cluster failed");
            assert_eq!(r.status(), http::StatusCode::SERVICE_UNAVAILABLE, "{path}");
        }
    }
}
