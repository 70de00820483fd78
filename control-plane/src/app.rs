//! Process wiring: `build(config)` binds every listener, starts every task and returns the bound
//! addresses, so tests bind port 0 and run the whole control plane in-process.

use crate::admin::{self, AdminState};
use crate::identity::{CaSecrets, CredentialAuth};
use crate::kube::ProxyAuth;
use crate::source::FileSource;
use anyhow::Context;
use meshd_ca::{CaConfig, CertificateAuthority, RootKeyAlgorithm};
use meshd_model::MeshConfig;
use meshd_xds::server::{AdsServer, Metrics, Registry, ServerOptions};
use meshd_xds::{GenOptions, MeshSnapshot};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Clone, Debug)]
pub struct Config {
    pub config_dir: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub trust_domain: String,
    pub workload_cert_ttl: Duration,
    pub cert_rotation_window: Duration,
    pub root_cert_ttl: Duration,
    /// Key algorithm of a newly generated root (first start, root rotation).
    pub root_key_algorithm: RootKeyAlgorithm,
    pub bind: IpAddr,
    pub xds_port: u16,
    /// Serve plaintext xDS on `xds_port`. In Kubernetes mode its streams never get secrets.
    pub xds_plaintext: bool,
    /// xDS and Istio's CA API over TLS (15012).
    pub xds_tls_port: u16,
    /// SANs of the TLS port's serving certificate (DNS names, IP addresses).
    pub xds_tls_names: Vec<String>,
    pub admin_port: u16,
    pub debounce: Duration,
    /// How long open xDS streams get to finish on shutdown before they are cut.
    pub drain_deadline: Duration,
    /// After a start, how long a root rotation waits for proxies to reconnect before it
    /// judges a phase synced (an empty registry would otherwise look "all ACKed").
    pub root_rotation_grace: Duration,
    pub generator: GenOptions,
    /// The injection webhook (HTTPS, `POST /inject`); `None` leaves it off.
    pub webhook: Option<crate::webhook::WebhookConfig>,
    /// `--registry kubernetes`: the registry, identities and CA state come from the cluster.
    pub kubernetes: Option<crate::kube::KubeConfig>,
    /// What every listener bounds (connections, streams, timeouts, message sizes).
    pub limits: crate::transport::TransportLimits,
}

impl Config {
    pub fn ca_config(&self) -> CaConfig {
        CaConfig {
            state_dir: self.state_dir.clone(),
            trust_domain: self.trust_domain.clone(),
            workload_cert_ttl: self.workload_cert_ttl,
            root_cert_ttl: self.root_cert_ttl,
            root_key_algorithm: self.root_key_algorithm,
            rotation_window: self.cert_rotation_window,
        }
    }
}

pub struct App {
    /// The plaintext xDS port, when served (`Config::xds_plaintext`).
    pub xds_addr: Option<SocketAddr>,
    /// The TLS port: ADS and `istio.v1.auth.IstioCertificateService`.
    pub xds_tls_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The injection webhook's address, when it runs.
    pub webhook_addr: Option<SocketAddr>,
    pub started: Instant,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<anyhow::Result<()>>,
    drain_deadline: Duration,
}

/// Builds each snapshot from the accepted config; versions only move when the config does.
async fn snapshots(
    mut configs: watch::Receiver<Arc<MeshConfig>>,
    out: watch::Sender<Arc<MeshSnapshot>>,
    generator: Arc<GenOptions>,
) {
    let mut version = out.borrow().version;
    while configs.changed().await.is_ok() {
        let config = configs.borrow_and_update().clone();
        version += 1;
        let started = Instant::now();
        let previous = out.borrow().clone();
        let snapshot = previous.rebuild(version, config, generator.clone());
        drop(previous);
        tracing::info!(
            version,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "mesh snapshot built"
        );
        out.send_replace(Arc::new(snapshot));
    }
}

pub async fn build(config: Config) -> anyhow::Result<App> {
    let started = Instant::now();
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state dir {}", config.state_dir.display()))?;
    let mut kube = match &config.kubernetes {
        Some(k) => Some(crate::kube::Kube::connect(k).await?),
        None => None,
    };
    let ca = Arc::new(match kube.as_mut() {
        Some(k) => k.load_ca(&config.ca_config()).await?,
        None => {
            // Off the async workers: a new RSA 4096 root takes seconds to generate.
            let ca_cfg = config.ca_config();
            tokio::task::spawn_blocking(move || CertificateAuthority::load_or_create(&ca_cfg))
                .await
                .context("loading the mesh CA")?
                .context("loading the mesh CA")?
        }
    });
    let mut source = FileSource::new(config.config_dir.clone());
    let config_tx = watch::Sender::new(Arc::new(MeshConfig::default()));
    match kube.as_mut() {
        Some(k) => k.watch(config.debounce, config_tx.clone()).await?,
        None => {
            config_tx.send_replace(Arc::new(source.reload()));
        }
    }
    let initial = config_tx.borrow().clone();
    for r in &initial.rejected {
        tracing::warn!("{r}");
    }
    let generator = Arc::new(config.generator.clone());
    let config_rx = config_tx.subscribe();
    let (snapshot_tx, snapshot_rx) =
        watch::channel(Arc::new(MeshSnapshot::build(1, initial, generator.clone())));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::default());
    let secrets = Arc::new(CaSecrets::new(ca.clone()));
    let root_rotation = crate::root_rotation::RootRotator::new(
        secrets.clone(),
        registry.clone(),
        shutdown_rx.clone(),
        config.root_rotation_grace,
        kube.as_ref()
            .map(|k| crate::root_rotation::ClusterRotation {
                leader: k.leader(),
                follower_lag: k.follower_lag(),
            }),
    );
    let auth = match &kube {
        Some(k) => k.auth(ca.clone(), &config.trust_domain),
        None => ProxyAuth::Credential(Arc::new(CredentialAuth { ca: ca.clone() })),
    };
    let ads = AdsServer::new(
        auth.clone(),
        secrets.clone(),
        snapshot_rx.clone(),
        registry.clone(),
        shutdown_rx.clone(),
        metrics.clone(),
        ServerOptions {
            max_request_bytes: config.limits.xds_max_request_bytes,
            max_subscribed_names: config.limits.xds_max_subscribed_names,
            ..ServerOptions::default()
        },
    );
    let ads_service = ads.into_service();
    let ads_tls_service = ads_service.clone();
    // Keys only over TLS: in Kubernetes mode the plaintext port's streams get no secrets.
    let ads_plain_service = match &config.kubernetes {
        None => ads_service,
        Some(_) => AdsServer::new(
            auth.clone(),
            secrets.clone(),
            snapshot_rx.clone(),
            registry.clone(),
            shutdown_rx.clone(),
            metrics.clone(),
            ServerOptions {
                serve_secrets: false,
                ..ServerOptions::default()
            },
        )
        .into_service(),
    };
    let ca_metrics = Arc::new(crate::ca_service::CaMetrics::default());
    let ca_service = crate::ca_service::CaService::new(ca.clone(), auth, ca_metrics.clone());
    let serving_cert =
        crate::ca_service::ServingCert::new(ca.clone(), config.xds_tls_names.clone())
            .context("issuing the TLS port's serving certificate")?;
    let cert_monitor = Arc::new(crate::ca_service::CertMonitor {
        ca: ca.clone(),
        secrets: secrets.clone(),
        registry: registry.clone(),
        serving: serving_cert.clone(),
    });

    let xds_listener = match config.xds_plaintext {
        true => Some(
            crate::accept::listen_for_proxies(SocketAddr::new(config.bind, config.xds_port))
                .with_context(|| format!("binding xDS on {}:{}", config.bind, config.xds_port))?,
        ),
        false => None,
    };
    let admin_listener = TcpListener::bind((config.bind, config.admin_port))
        .await
        .with_context(|| format!("binding admin on {}:{}", config.bind, config.admin_port))?;
    let xds_addr = xds_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let xds_tls_listener =
        crate::accept::listen_for_proxies(SocketAddr::new(config.bind, config.xds_tls_port))
            .with_context(|| {
                format!(
                    "binding xDS/CA over TLS on {}:{}",
                    config.bind, config.xds_tls_port
                )
            })?;
    let xds_tls_addr = xds_tls_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let webhook = match &config.webhook {
        Some(w) => {
            let listener = TcpListener::bind((config.bind, w.port))
                .await
                .with_context(|| format!("binding the webhook on {}:{}", config.bind, w.port))?;
            let tls = crate::webhook::tls_config(ca.clone(), &w.dns_names)?;
            let namespaces = match &kube {
                Some(k) => k.namespace_lookup(),
                None => w.namespaces.clone(),
            };
            let mut inject = w.inject.clone();
            if let Some(k) = &kube
                && inject.native_sidecars.is_none()
            {
                inject.native_sidecars = crate::webhook::detect_native_sidecars(k.client()).await;
            }
            let router = crate::webhook::router(inject, namespaces);
            Some((listener, tls, router))
        }
        None => None,
    };
    let webhook_addr = match &webhook {
        Some((l, _, _)) => Some(l.local_addr()?),
        None => None,
    };

    let ready = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    let debounce = config.debounce;
    let caller_check: Option<Arc<dyn admin::access::CallerCheck>> = match &kube {
        Some(k) => Some(Arc::new(k.admin_auth())),
        None => None,
    };
    let mut stop = shutdown_rx.clone();
    let kube_ca = ca.clone();
    let kube_secrets = secrets.clone();
    tasks.spawn(async move {
        match kube {
            Some(k) => {
                let on_change: Arc<dyn Fn() + Send + Sync> =
                    Arc::new(move || kube_secrets.bundle_changed());
                return k.run(kube_ca, on_change, stop).await;
            }
            None => tokio::select! {
                _ = source.watch(debounce, config_tx) => {}
                _ = stop.wait_for(|s| *s) => {}
            },
        }
        Ok(())
    });
    let mut stop = shutdown_rx.clone();
    tasks.spawn(async move {
        tokio::select! {
            _ = snapshots(config_rx, snapshot_tx, generator) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        Ok(())
    });
    let limits = config.limits.clone();
    let accept = |listener, name, cap| {
        let refused = Arc::new(crate::accept::Refused::default());
        crate::accept::accept_on_own_thread(listener, name, cap, refused, shutdown_rx.clone())
    };
    let auth_failures = Arc::new(crate::transport::AuthFailures::new(
        limits.auth_failure_burst,
        limits.auth_failures_per_minute,
    ));
    if let Some(xds_listener) = xds_listener {
        let xds_incoming = accept(xds_listener, "xds-accept", limits.xds_max_connections)?;
        let xds_grpc = crate::transport::GrpcAuthLimit::new(
            tonic::service::Routes::new(ads_plain_service).prepare(),
            auth_failures.clone(),
        );
        let xds_opts = crate::transport::ConnOptions::xds("xds", &limits);
        let stop = shutdown_rx.clone();
        tasks.spawn(async move {
            crate::transport::serve(xds_incoming, None, xds_grpc, xds_opts, stop)
                .await
                .context("xDS server")
        });
    }
    let tls = tokio_rustls::TlsAcceptor::from(serving_cert.server_config()?);
    let tls_incoming = accept(
        xds_tls_listener,
        "xds-tls-accept",
        limits.xds_max_connections,
    )?;
    let tls_grpc = crate::transport::GrpcAuthLimit::new(
        tonic::service::Routes::new(ads_tls_service)
            .add_service(ca_service)
            .prepare(),
        auth_failures,
    );
    let tls_opts = crate::transport::ConnOptions::xds("xds-tls", &limits);
    let stop = shutdown_rx.clone();
    tasks.spawn(async move {
        crate::transport::serve(tls_incoming, Some(tls), tls_grpc, tls_opts, stop)
            .await
            .context("xDS/CA TLS server")
    });
    let stop = shutdown_rx.clone();
    let trim_metrics = metrics.clone();
    let trim_snapshots = snapshot_rx.clone();
    tasks.spawn(async move {
        crate::memory::trim_after_bursts(
            move || {
                trim_metrics.push_bytes.load(Ordering::Relaxed) + trim_snapshots.borrow().version
            },
            Duration::from_secs(1),
            stop,
            crate::memory::trim,
        )
        .await;
        Ok(())
    });
    let stop = shutdown_rx.clone();
    let monitor = cert_monitor.clone();
    tasks.spawn(async move {
        monitor.run(Duration::from_secs(60), stop).await;
        Ok(())
    });
    let state = AdminState {
        ready: ready.clone(),
        registry,
        metrics,
        ca,
        snapshots: snapshot_rx,
        started,
        root_rotation: root_rotation.clone(),
        ca_metrics,
        cert_monitor,
        caller_check,
    };
    let admin_incoming = accept(admin_listener, "admin-accept", limits.http_max_connections)?;
    let admin_opts = crate::transport::ConnOptions::http("admin", &limits);
    let stop = shutdown_rx.clone();
    tasks.spawn(async move {
        crate::transport::serve(admin_incoming, None, admin::router(state), admin_opts, stop)
            .await
            .context("admin server")
    });
    // A root rotation cut short by the last shutdown carries on (in Kubernetes mode, on the
    // leader, or on whichever replica leads next).
    root_rotation
        .resume()
        .context("resuming the interrupted root rotation")?;
    tokio::spawn(root_rotation.clone().take_over_when_leading());
    if let Some((listener, tls, router)) = webhook {
        let incoming = accept(listener, "webhook-accept", limits.http_max_connections)?;
        let stop = shutdown_rx.clone();
        tasks.spawn(async move {
            crate::webhook::serve(incoming, tls, router, &limits, stop)
                .await
                .context("webhook server")
        });
    }
    // Parsing and the first build leave most of their peak freed: give it back before idling.
    crate::memory::trim();
    // Config is loaded and the CA is up: from here on we are ready.
    ready.store(true, Ordering::SeqCst);
    tracing::info!(
        xds = ?xds_addr,
        xds_tls = %xds_tls_addr,
        admin = %admin_addr,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "meshd ready"
    );
    Ok(App {
        xds_addr,
        xds_tls_addr,
        admin_addr,
        webhook_addr,
        started,
        shutdown,
        tasks,
        drain_deadline: config.drain_deadline,
    })
}

impl App {
    /// Closes streams and listeners; tasks get until the drain deadline to finish.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::sleep(self.drain_deadline);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = self.tasks.join_next() => match next {
                    None => return Ok(()),
                    Some(Ok(Err(e))) => tracing::warn!(error = %e, "task ended with error"),
                    Some(_) => {}
                },
                _ = &mut deadline => {
                    tracing::warn!("drain deadline passed; cutting remaining streams");
                    self.tasks.abort_all();
                    return Ok(());
                }
            }
        }
    }

    /// Runs until SIGINT/SIGTERM (or a task fails), then shuts down gracefully.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            Some(res) = self.tasks.join_next() => {
                match res {
                    Ok(Ok(())) => tracing::warn!("a task ended early; shutting down"),
                    Ok(Err(e)) => tracing::error!(error = %e, "a task failed; shutting down"),
                    Err(e) => tracing::error!(error = %e, "a task panicked; shutting down"),
                }
            }
        }
        self.shutdown().await
    }
}
