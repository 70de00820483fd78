//! Kubernetes mode (`meshd serve --registry kubernetes`): the registry from the API server's
//! objects, proxies' identity from their service-account tokens, and the CA kept in a Secret.
//!
//! - [`index`] (pure): cluster objects → `MeshConfig`; tested on YAML fixtures, no server.
//! - [`watch`]: kube-rs watchers feeding the index, publishing with `send_if_modified`.
//! - [`token`]: TokenReview authentication of the pod's projected token
//!   ([`token::TOKEN_PATH`], audience `--token-audience`).
//! - [`admin_auth`]: TokenReview + SubjectAccessReview of off-host admin API callers.
//! - [`leader`]: Lease-based leader election.
//! - [`ca_secret`]: the CA's state in a Secret (created once, by the leader) and the
//!   `istio-ca-root-cert` ConfigMaps.
//!
//! The API server is found through `KUBECONFIG` (or `~/.kube/config`), else the in-cluster
//! service account. RBAC meshd needs (cluster-wide unless said): list/watch `services`, `pods`,
//! `namespaces`, `endpoints` (servers without EndpointSlice v1), `endpointslices`
//! (discovery.k8s.io), and the Istio kinds (networking.istio.io, security.istio.io); create
//! `tokenreviews` and `subjectaccessreviews` ([`admin_auth`]); get/create/update `configmaps`; in its own namespace get/create/update
//! `secrets` and `leases` (coordination.k8s.io).

pub mod admin_auth;
pub mod ca_secret;
pub mod events;
pub mod index;
pub mod leader;
pub mod token;
pub mod watch;
pub mod webhook_config;

use crate::debounce::Debounce;
use ::kube::Client;
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use meshd_ads::Authenticator;
use meshd_xds::Identity;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::MetadataMap;

/// Kubernetes-mode settings (`meshd serve --registry kubernetes`).
#[derive(Clone, Debug)]
pub struct KubeConfig {
    /// meshd's own namespace: its CA Secret and leader Lease live there.
    pub namespace: String,
    /// Audience the proxies' projected tokens must carry.
    pub token_audience: String,
    pub ca_secret: String,
    pub root_cert_configmap: String,
    pub leader_lease: String,
    pub lease_duration: Duration,
    pub lease_renew: Duration,
    /// DNS suffix of Service hostnames.
    pub domain_suffix: String,
    /// How long the watches get to list everything once before startup fails.
    pub sync_timeout: Duration,
    /// How long a replica waits for the CA Secret (or leadership) before startup fails.
    pub ca_timeout: Duration,
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, else in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// The MutatingWebhookConfiguration whose caBundle meshd keeps current (the chart's
    /// `<release>-sidecar-injector-<namespace>`); `None`: none.
    pub webhook_config: Option<String>,
    /// The ValidatingWebhookConfiguration (Istio config validation) whose caBundle meshd keeps
    /// current (the chart's `<release>-validator-<namespace>`); `None`: none.
    pub validating_webhook_config: Option<String>,
    /// How often the leader re-checks the root ConfigMaps and the webhook's caBundle.
    pub resync: Duration,
    /// Serve Gateway `credentialName` from Secrets (watches Secrets cluster-wide).
    pub gateway_credentials: bool,
    /// What reviewing unknown tokens may cost (`--token-review-*`).
    pub token_review: token::ReviewLimits,
}

impl KubeConfig {
    /// How often the leader checks the webhook's caBundle and followers re-read the CA Secret:
    /// the resync, but at least every 5 s (both gate a root rotation's progress).
    fn poll(&self) -> Duration {
        self.resync.min(Duration::from_secs(5))
    }
}

impl Default for KubeConfig {
    fn default() -> Self {
        KubeConfig {
            namespace: "meshd-system".into(),
            token_audience: token::DEFAULT_AUDIENCE.into(),
            ca_secret: ca_secret::DEFAULT_CA_SECRET.into(),
            root_cert_configmap: ca_secret::DEFAULT_ROOT_CONFIGMAP.into(),
            leader_lease: "meshd-leader".into(),
            lease_duration: Duration::from_secs(15),
            lease_renew: Duration::from_secs(5),
            domain_suffix: "cluster.local".into(),
            sync_timeout: Duration::from_secs(60),
            ca_timeout: Duration::from_secs(120),
            kubeconfig: None,
            webhook_config: Some("meshd-sidecar-injector-meshd-system".into()),
            validating_webhook_config: Some("meshd-validator-meshd-system".into()),
            resync: Duration::from_secs(30),
            gateway_credentials: true,
            token_review: token::ReviewLimits::default(),
        }
    }
}

/// A client for the configured API server.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", path.display()))?;
            ::kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", path.display()))?
        }
        None => ::kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!(
                "no Kubernetes API server (KUBECONFIG, ~/.kube/config, in-cluster): {e}"
            )
        })?,
    };
    Client::try_from(config).map_err(|e| anyhow::anyhow!("Kubernetes client: {e}"))
}

/// How xDS and CA callers prove who they are: meshd's bearer credentials (file mode), or in
/// Kubernetes mode the pod's projected token (TokenReview), credentials still accepted.
#[derive(Clone)]
pub enum ProxyAuth {
    Credential(Arc<crate::identity::CredentialAuth>),
    Kubernetes(Arc<token::TokenReviewAuth>),
}

impl Authenticator for ProxyAuth {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Identity, String> {
        match self {
            ProxyAuth::Credential(c) => c.authenticate(metadata).await,
            ProxyAuth::Kubernetes(k) => k.authenticate(metadata).await,
        }
    }
}

/// Kubernetes mode's moving parts, wired by `app::build`: connect, load the CA, start the
/// registry, then [`Kube::run`] until shutdown.
pub struct Kube {
    cfg: KubeConfig,
    client: Client,
    leader: tokio::sync::watch::Receiver<bool>,
    elector_stop: tokio::sync::watch::Sender<bool>,
    elector: Option<tokio::task::JoinHandle<()>>,
    ca_state: Option<(ca_secret::MemoryStorage, Option<String>)>,
    source: Option<watch::KubeSource>,
    namespaces: tokio::sync::watch::Receiver<std::collections::BTreeSet<String>>,
    namespaces_tx: tokio::sync::watch::Sender<std::collections::BTreeSet<String>>,
    namespace_labels: tokio::sync::watch::Sender<NamespaceLabels>,
    /// The config the watches build, once they run: its rejections become Events.
    config: Option<tokio::sync::watch::Receiver<Arc<meshd_model::MeshConfig>>>,
    reg_events: Arc<crate::reg_events::RegEvents>,
}

type NamespaceLabels =
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>;

impl Kube {
    /// Connects to the API server and joins the leader election.
    pub async fn connect(cfg: &KubeConfig) -> anyhow::Result<Kube> {
        let client = client(cfg.kubeconfig.as_deref()).await?;
        let mut lease = leader::LeaseConfig::new(&cfg.namespace, &cfg.leader_lease);
        lease.lease_duration = cfg.lease_duration;
        lease.renew_every = cfg.lease_renew;
        let (leader_tx, leader) = tokio::sync::watch::channel(false);
        let (elector_stop, stop_rx) = tokio::sync::watch::channel(false);
        let elector =
            tokio::spawn(leader::Elector::new(client.clone(), lease).run(leader_tx, stop_rx));
        let (namespaces_tx, namespaces) = tokio::sync::watch::channel(Default::default());
        Ok(Kube {
            cfg: cfg.clone(),
            client,
            leader,
            elector_stop,
            elector: Some(elector),
            ca_state: None,
            source: None,
            namespaces,
            namespaces_tx,
            namespace_labels: tokio::sync::watch::Sender::new(Default::default()),
            config: None,
            reg_events: Default::default(),
        })
    }

    /// The watch events the index took in (`pilot_k8s_reg_events`).
    pub fn reg_events(&self) -> Arc<crate::reg_events::RegEvents> {
        self.reg_events.clone()
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// How long a follower may take to load a CA change from the Secret and push it.
    pub fn follower_lag(&self) -> Duration {
        self.cfg.poll() * 2
    }

    /// Whether this replica leads now.
    pub fn leader(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leader.clone()
    }

    /// The CA from its Secret (created by whichever replica leads, once).
    pub async fn load_ca(
        &mut self,
        ca: &meshd_ca::CaConfig,
    ) -> anyhow::Result<meshd_ca::CertificateAuthority> {
        let cfg = ca_secret::CaSecretConfig {
            namespace: self.cfg.namespace.clone(),
            name: self.cfg.ca_secret.clone(),
            timeout: self.cfg.ca_timeout,
        };
        let loaded =
            ca_secret::load_or_create_ca(self.client.clone(), &cfg, ca, self.leader.clone())
                .await?;
        self.ca_state = Some((loaded.storage, loaded.resource_version));
        Ok(loaded.ca)
    }

    /// Starts the watchers; returns once everything has been listed and the first config is
    /// on `out`.
    pub async fn watch(
        &mut self,
        debounce: Debounce,
        out: tokio::sync::watch::Sender<Arc<meshd_model::MeshConfig>>,
    ) -> anyhow::Result<()> {
        let opts = index::IndexOptions {
            domain_suffix: self.cfg.domain_suffix.clone(),
            gateway_credentials: self.cfg.gateway_credentials,
        };
        self.config = Some(out.subscribe());
        let source = watch::KubeSource::start(
            self.client.clone(),
            opts,
            debounce,
            self.cfg.sync_timeout,
            watch::KubeOutputs {
                mesh: out,
                injection_namespaces: self.namespaces_tx.clone(),
                namespace_labels: self.namespace_labels.clone(),
                reg_events: self.reg_events.clone(),
            },
        )
        .await?;
        self.source = Some(source);
        Ok(())
    }

    /// The injector's view of namespace labels, from the namespace watch (`None` for a
    /// namespace the watch has not seen yet: the webhook's selectors decide).
    pub fn namespace_lookup(&self) -> crate::mode::NamespaceLookup {
        let labels = self.namespace_labels.subscribe();
        Arc::new(move |ns: &str| labels.borrow().get(ns).cloned())
    }

    /// TokenReview authentication (meshd's own credentials accepted too).
    pub fn auth(&self, ca: Arc<meshd_ca::CertificateAuthority>, trust_domain: &str) -> ProxyAuth {
        ProxyAuth::Kubernetes(Arc::new(
            token::TokenReviewAuth::new(
                self.client.clone(),
                &self.cfg.token_audience,
                trust_domain,
            )
            .with_credentials(ca)
            .with_limits(&self.cfg.token_review),
        ))
    }

    /// TokenReview + SubjectAccessReview of the admin API's off-host callers.
    pub fn admin_auth(&self) -> admin_auth::AdminAuth {
        admin_auth::AdminAuth::new(self.client.clone(), &self.cfg.namespace)
    }

    /// Publishes the root certificate and saves CA writes while the server runs; on `stop`,
    /// stops the watchers and gives the Lease up.
    /// `on_ca_change`: the CA was reloaded from its Secret (another replica moved a root
    /// rotation on); push the new bundle and certificates.
    pub async fn run(
        mut self,
        ca: Arc<meshd_ca::CertificateAuthority>,
        on_ca_change: Arc<dyn Fn() + Send + Sync>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(ca_secret::publish_root_cert(
            self.client.clone(),
            self.cfg.root_cert_configmap.clone(),
            ca.clone(),
            self.namespaces.clone(),
            self.cfg.namespace.clone(),
            self.leader.clone(),
            self.cfg.resync,
        ));
        if let Some(config) = self.config.take() {
            tasks.spawn(events::publish_rejections(
                self.client.clone(),
                config,
                self.leader.clone(),
            ));
        }
        if let Some(name) = self.cfg.webhook_config.clone() {
            tasks.spawn(webhook_config::keep_ca_bundle::<
                k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
            >(
                self.client.clone(),
                name,
                ca.clone(),
                self.leader.clone(),
                self.cfg.poll(),
            ));
        }
        if let Some(name) = self.cfg.validating_webhook_config.clone() {
            tasks.spawn(webhook_config::keep_ca_bundle::<
                k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration,
            >(
                self.client.clone(),
                name,
                ca.clone(),
                self.leader.clone(),
                self.cfg.poll(),
            ));
        }
        if let Some((storage, rv)) = self.ca_state.take() {
            let cfg = ca_secret::CaSecretConfig {
                namespace: self.cfg.namespace.clone(),
                name: self.cfg.ca_secret.clone(),
                timeout: self.cfg.ca_timeout,
            };
            tasks.spawn(ca_secret::follow_ca_secret(
                self.client.clone(),
                cfg.clone(),
                storage.clone(),
                ca.clone(),
                self.leader.clone(),
                on_ca_change,
                self.cfg.poll(),
            ));
            tasks.spawn(ca_secret::persist_ca_writes(
                self.client.clone(),
                cfg,
                storage,
                rv,
                stop.clone(),
            ));
        }
        let mut source = self.source.take();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            Some(_) = async {
                match source.as_mut() {
                    Some(s) => s.tasks.join_next().await,
                    None => std::future::pending().await,
                }
            } => tracing::error!("a Kubernetes watch ended"),
        }
        drop(source);
        tasks.abort_all();
        let _ = self.elector_stop.send(true);
        if let Some(elector) = self.elector.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), elector).await;
        }
        Ok(())
    }
}

impl Drop for Kube {
    fn drop(&mut self) {
        // Not run (build failed after connect): stop electing.
        let _ = self.elector_stop.send(true);
    }
}
