//! Process wiring: `build(config)` binds every listener, starts every task and returns the bound
//! addresses, so tests bind port 0 and run the whole control plane in-process.

use crate::admin::{self, AdminState};
use crate::debounce::Debounce;
use crate::identity::CaSecrets;
use crate::snapshots::{SNAPSHOT_TASK, first_snapshot, snapshots};
use crate::source::FileSource;
use crate::startup::{ConfigSource, Mode, ModeConfig};
use crate::supervise::{Backoff, Supervisor, TaskHealth};
use anyhow::Context;
use meshd_ads::{AdsServer, Metrics, Registry, ServerOptions};
use meshd_ca::{CaConfig, RootKeyAlgorithm};
use meshd_model::MeshConfig;
use meshd_xds::GenOptions;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

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
    pub debounce: Debounce,
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
    /// How many request-metric series `/metrics` keeps (`--telemetry-max-series*`).
    pub telemetry_limits: crate::telemetry::SeriesLimits,
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
    tasks: Supervisor,
    /// Which supervised tasks run (readiness, `/metrics`).
    pub health: Arc<TaskHealth>,
    drain_deadline: Duration,
}

pub async fn build(config: Config) -> anyhow::Result<App> {
    let started = Instant::now();
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state dir {}", config.state_dir.display()))?;
    // Bound first: probes get an answer while Kubernetes mode waits for its API server.
    let admin_listener = TcpListener::bind((config.bind, config.admin_port))
        .await
        .with_context(|| format!("binding admin on {}:{}", config.bind, config.admin_port))?;
    let readiness = crate::readiness::Readiness::new();
    let (ca_pending, config_pending) = (readiness.register("ca"), readiness.register("config"));
    let config_tx = watch::Sender::new(Arc::new(MeshConfig::default()));
    let detect_native_sidecars =
        (config.webhook.as_ref()).is_some_and(|w| w.inject.native_sidecars.is_none());
    let mode = Mode::start(
        ModeConfig {
            kubernetes: config.kubernetes.as_ref(),
            config_dir: config.config_dir.clone(),
            ca: config.ca_config(),
            trust_domain: &config.trust_domain,
            debounce: config.debounce,
            detect_native_sidecars,
        },
        &admin_listener,
        &config_tx,
    )
    .await?;
    let Mode {
        ca,
        source,
        proxy_auth,
        caller_check,
        namespaces,
        cluster_rotation,
        secrets_over_plaintext,
        native_sidecars,
        reg_events,
    } = mode;
    ca_pending.ready();
    config_pending.ready();
    let initial = config_tx.borrow().clone();
    for r in &initial.rejected {
        tracing::warn!("{r}");
    }
    let generator = Arc::new(config.generator.clone());
    let config_rx = config_tx.subscribe();
    let telemetry_mesh = config_tx.subscribe();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Supervisor::new(Backoff::default(), shutdown_rx.clone());
    let health = tasks.health();
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(first_snapshot(
        initial,
        generator.clone(),
        &health,
    )));
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::default());
    let secrets = Arc::new(CaSecrets::new(ca.clone()));
    let root_rotation = crate::root_rotation::RootRotator::new(
        secrets.clone(),
        registry.clone(),
        shutdown_rx.clone(),
        config.root_rotation_grace,
        cluster_rotation,
    );
    let auth = proxy_auth;
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
    let ads_plain_service = match secrets_over_plaintext {
        true => ads_service,
        false => AdsServer::new(
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
    let mesh_metrics = Arc::new(crate::telemetry::MeshMetrics::new(config.telemetry_limits));
    // Both xDS ports: a proxy's access logs go where its ADS stream goes, with its credential.
    let access_logs = crate::telemetry::AccessLogIngest::new(
        auth.clone(),
        mesh_metrics.clone(),
        telemetry_mesh.clone(),
        &config.trust_domain,
    )
    .into_service(config.limits.xds_max_request_bytes);
    let access_logs_tls = access_logs.clone();
    let ca_metrics = Arc::new(crate::ca_service::CaMetrics::default());
    let ca_service = crate::ca_service::CaService::new(
        ca.clone(),
        auth,
        ca_metrics.clone(),
        snapshot_rx.clone(),
        ServerOptions::default().bind_wait,
    );
    let serving_cert =
        crate::ca_service::ServingCert::new(ca.clone(), config.xds_tls_names.clone())
            .context("issuing the TLS port's serving certificate")?;
    let cert_monitor = Arc::new(crate::ca_service::CertMonitor {
        ca: ca.clone(),
        secrets: secrets.clone(),
        serving: serving_cert.clone(),
    });

    let xds_listener = match config.xds_plaintext {
        true => Some(
            crate::accept::listen_for_proxies(SocketAddr::new(config.bind, config.xds_port))
                .with_context(|| format!("binding xDS on {}:{}", config.bind, config.xds_port))?,
        ),
        false => None,
    };
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
    let injection_metrics = Arc::new(crate::webhook::InjectionMetrics::default());
    let webhook = match &config.webhook {
        Some(w) => {
            let listener = TcpListener::bind((config.bind, w.port))
                .await
                .with_context(|| format!("binding the webhook on {}:{}", config.bind, w.port))?;
            let tls = crate::webhook::tls_config(ca.clone(), &w.dns_names)?;
            let namespaces = namespaces.unwrap_or_else(|| w.namespaces.clone());
            let mut inject = w.inject.clone();
            if inject.native_sidecars.is_none() {
                inject.native_sidecars = native_sidecars;
            }
            let router = crate::webhook::router(inject, namespaces, injection_metrics.clone());
            Some((listener, tls, router))
        }
        None => None,
    };
    let webhook_addr = match &webhook {
        Some((l, _, _)) => Some(l.local_addr()?),
        None => None,
    };

    let debounce = config.debounce;
    let kube_ca = ca.clone();
    let kube_secrets = secrets.clone();
    let config_dir = config.config_dir.clone();
    // The first start uses what `build` set up (the loaded files, the connected cluster); a
    // restart reads the directory again. The cluster connection cannot be made again here:
    // losing it ends the process, as before.
    let cluster_mode = matches!(source, ConfigSource::Cluster(_));
    let mut first_source = Some(source);
    let mut watch_pending = Some(readiness.register("config-watch"));
    let stop_rx = shutdown_rx.clone();
    tasks.spawn("config-source", move || {
        let mut stop = stop_rx.clone();
        let config_tx = config_tx.clone();
        let kube_ca = kube_ca.clone();
        let kube_secrets = kube_secrets.clone();
        let watching = watch_pending.take();
        let (source, restarted) = match first_source.take() {
            Some(source) => (source, false),
            None if !cluster_mode => (ConfigSource::Files(FileSource::new(config_dir.clone())), true),
            None => return None,
        };
        Some(async move {
            drop(watching);
            let mut source = match source {
                ConfigSource::Files(source) => source,
                ConfigSource::Cluster(k) => {
                    let on_change: Arc<dyn Fn() + Send + Sync> =
                        Arc::new(move || kube_secrets.bundle_changed());
                    k.run(kube_ca, on_change, stop.clone()).await?;
                    if *stop.borrow() {
                        return Ok(());
                    }
                    anyhow::bail!("the Kubernetes source ended");
                }
            };
            if restarted {
                let mesh = source.reload();
                config_tx.send_if_modified(|current| {
                    let changed = **current != mesh;
                    if changed {
                        *current = Arc::new(mesh);
                    }
                    changed
                });
            }
            tokio::select! {
                _ = source.watch(debounce, config_tx) => anyhow::bail!("the config dir watch ended"),
                _ = stop.wait_for(|s| *s) => Ok(()),
            }
        })
    });
    // Between the sources and the snapshot builder: the config with its fetched JWK sets.
    let jwks_metrics = Arc::new(crate::jwks::JwksMetrics::default());
    let keyed_tx = watch::Sender::new(config_rx.borrow().clone());
    let keyed_rx = keyed_tx.subscribe();
    let (stop_rx, fetch_metrics) = (shutdown_rx.clone(), jwks_metrics.clone());
    tasks.spawn(crate::jwks::JWKS_TASK, move || {
        let mut stop = stop_rx.clone();
        let run = crate::jwks::run(
            config_rx.clone(),
            keyed_tx.clone(),
            fetch_metrics.clone(),
            crate::jwks::FetchOptions::default(),
        );
        Some(async move {
            tokio::select! {
                _ = run => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            Ok(())
        })
    });
    let stop_rx = shutdown_rx.clone();
    let snapshot_health = health.clone();
    tasks.spawn(SNAPSHOT_TASK, move || {
        let mut stop = stop_rx.clone();
        let run = snapshots(
            keyed_rx.clone(),
            snapshot_tx.clone(),
            generator.clone(),
            snapshot_health.clone(),
        );
        Some(async move {
            tokio::select! {
                _ = run => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            Ok(())
        })
    });
    let limits = config.limits.clone();
    let auth_failures = Arc::new(crate::transport::AuthFailures::new(
        limits.auth_failure_burst,
        limits.auth_failures_per_minute,
    ));
    let refused = Arc::new(crate::accept::RefusedByListener::default());
    // A server's connections, accepted on a thread of their own under its connection cap. A
    // restarted server binds its address again (the panicked one's listener is gone).
    let incoming = {
        let stop = shutdown_rx.clone();
        let refused = refused.clone();
        move |listener: Option<TcpListener>, addr: SocketAddr, name: &'static str, cap: usize| {
            let listener = match listener {
                Some(l) => l,
                None => crate::accept::listen_for_proxies(addr)?,
            };
            crate::accept::accept_on_own_thread(
                listener,
                name,
                cap,
                refused.listener(name),
                stop.clone(),
            )
        }
    };
    if let (Some(listener), Some(addr)) = (xds_listener, xds_addr) {
        let mut first = Some((listener, readiness.register("xds")));
        let (incoming, auth_failures, limits) =
            (incoming.clone(), auth_failures.clone(), limits.clone());
        let stop_rx = shutdown_rx.clone();
        tasks.spawn("xds-server", move || {
            let (listener, pending) = first.take().unzip();
            let grpc = crate::transport::GrpcAuthLimit::new(
                tonic::service::Routes::new(ads_plain_service.clone())
                    .add_service(access_logs.clone())
                    .prepare(),
                auth_failures.clone(),
            );
            let opts = crate::transport::ConnOptions::xds("xds", &limits);
            let cap = limits.xds_max_connections;
            let (incoming, stop) = (incoming.clone(), stop_rx.clone());
            Some(async move {
                let incoming = incoming(listener, addr, "xds-accept", cap)?;
                drop(pending);
                crate::transport::serve(incoming, None, grpc, opts, stop)
                    .await
                    .context("xDS server")
            })
        });
    }
    let tls = tokio_rustls::TlsAcceptor::from(serving_cert.server_config()?);
    let mut first_tls = Some((xds_tls_listener, tls, readiness.register("xds-tls")));
    let stop_rx = shutdown_rx.clone();
    let (tls_incoming, tls_limits, tls_auth_failures) =
        (incoming.clone(), limits.clone(), auth_failures.clone());
    tasks.spawn("xds-tls-server", move || {
        let first = first_tls.take();
        let grpc = crate::transport::GrpcAuthLimit::new(
            tonic::service::Routes::new(ads_tls_service.clone())
                .add_service(access_logs_tls.clone())
                .add_service(ca_service.clone())
                .prepare(),
            tls_auth_failures.clone(),
        );
        let opts = crate::transport::ConnOptions::xds("xds-tls", &tls_limits);
        let cap = tls_limits.xds_max_connections;
        let (incoming, stop, serving_cert) =
            (tls_incoming.clone(), stop_rx.clone(), serving_cert.clone());
        Some(async move {
            let (listener, tls, pending) = match first {
                Some((l, tls, pending)) => (Some(l), tls, Some(pending)),
                None => (
                    None,
                    tokio_rustls::TlsAcceptor::from(serving_cert.server_config()?),
                    None,
                ),
            };
            let incoming = incoming(listener, xds_tls_addr, "xds-tls-accept", cap)?;
            drop(pending);
            crate::transport::serve(incoming, Some(tls), grpc, opts, stop)
                .await
                .context("xDS/CA TLS server")
        })
    });
    let stop_rx = shutdown_rx.clone();
    let trim_metrics = metrics.clone();
    let trim_snapshots = snapshot_rx.clone();
    tasks.spawn("memory-trim", move || {
        let stop = stop_rx.clone();
        let trim_metrics = trim_metrics.clone();
        let trim_snapshots = trim_snapshots.clone();
        Some(async move {
            crate::memory::trim_after_bursts(
                move || {
                    trim_metrics.push_bytes.load(Ordering::Relaxed)
                        + trim_snapshots.borrow().version
                },
                Duration::from_secs(1),
                stop,
                crate::memory::trim,
            )
            .await;
            Ok(())
        })
    });
    let stop_rx = shutdown_rx.clone();
    let monitor = cert_monitor.clone();
    tasks.spawn("cert-monitor", move || {
        let run = monitor
            .clone()
            .run(Duration::from_secs(60), stop_rx.clone());
        Some(async move {
            run.await;
            Ok(())
        })
    });
    let stop_rx = shutdown_rx.clone();
    let pruned = mesh_metrics.clone();
    tasks.spawn("telemetry-prune", move || {
        let run = crate::telemetry::drop_gone_workloads(
            pruned.clone(),
            telemetry_mesh.clone(),
            stop_rx.clone(),
        );
        Some(async move {
            run.await;
            Ok(())
        })
    });
    let state = AdminState {
        readiness: readiness.clone(),
        tasks: health.clone(),
        registry,
        metrics,
        ca,
        snapshots: snapshot_rx,
        started,
        root_rotation: root_rotation.clone(),
        ca_metrics,
        cert_monitor,
        mesh_metrics,
        caller_check,
        refused_connections: refused,
        injection_metrics,
        auth_failures,
        jwks: jwks_metrics,
        reg_events,
    };
    let mut first_admin = Some((admin_listener, readiness.register("admin")));
    let stop_rx = shutdown_rx.clone();
    let (admin_incoming, admin_limits) = (incoming.clone(), limits.clone());
    tasks.spawn("admin-server", move || {
        let (listener, pending) = first_admin.take().unzip();
        let router = admin::router(state.clone());
        let opts = crate::transport::ConnOptions::http("admin", &admin_limits);
        let cap = admin_limits.http_max_connections;
        let (incoming, stop) = (admin_incoming.clone(), stop_rx.clone());
        Some(async move {
            let incoming = incoming(listener, admin_addr, "admin-accept", cap)?;
            drop(pending);
            crate::transport::serve(incoming, None, router, opts, stop)
                .await
                .context("admin server")
        })
    });
    // A root rotation cut short by the last shutdown carries on (in Kubernetes mode, on the
    // leader, or on whichever replica leads next).
    root_rotation
        .resume()
        .context("resuming the interrupted root rotation")?;
    tasks.spawn("root-rotation", move || {
        let run = root_rotation.clone().take_over_when_leading();
        Some(async move {
            run.await;
            Ok(())
        })
    });
    if let Some((listener, tls, router)) = webhook {
        let mut first_listener = Some((listener, readiness.register("webhook")));
        let webhook_bound = webhook_addr.unwrap_or(admin_addr);
        let stop_rx = shutdown_rx.clone();
        tasks.spawn("webhook-server", move || {
            let (listener, pending) = first_listener.take().unzip();
            let (tls, router, stop) = (tls.clone(), router.clone(), stop_rx.clone());
            let (incoming, limits) = (incoming.clone(), limits.clone());
            let cap = limits.http_max_connections;
            Some(async move {
                let incoming = incoming(listener, webhook_bound, "webhook-accept", cap)?;
                drop(pending);
                crate::webhook::serve(incoming, tls, router, &limits, stop)
                    .await
                    .context("webhook server")
            })
        });
    }
    // Parsing and the first build leave most of their peak freed: give it back before idling.
    crate::memory::trim();
    // Ready once each listener accepts and the config watch runs: `/healthz/ready` waits on
    // their guards, not on this function returning.
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
        health,
        drain_deadline: config.drain_deadline,
    })
}

impl App {
    /// Closes streams and listeners; tasks get until the drain deadline to finish.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.tasks.join(self.drain_deadline).await;
        Ok(())
    }

    /// Runs until SIGINT/SIGTERM (or a task that cannot be restarted ends), then shuts down
    /// gracefully. A task that panics or fails is restarted by the supervisor, not fatal.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            gave_up = self.tasks.gave_up() => {
                tracing::error!(task = gave_up.task, "a task cannot be restarted; shutting down");
            }
        }
        self.shutdown().await
    }
}
