//! The ADS server: authenticates each stream, serves SotW and Delta, records per-proxy sync state.
//! Generic over how identities are proven and where secrets come from, so it tests without a CA.

mod conn;
mod delta;
mod diff;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod istio_metrics;
mod service;
mod sotw;
pub mod status;
mod stream;
mod wire;

pub use conn::wait_registered;
pub use service::AdsService;
pub use status::{ProxyStatus, Registry, SyncStatus, TypeStatus, TypeStatuses};

use meshd_xds::generate::{MeshSnapshot, ProxyResources};
use meshd_xds::proxy::{Identity, Proxy};
use meshd_xds::resource::{ResourceSet, SharedResource};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::{Semaphore, watch};
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Proves who is on the other end of a stream, from its request metadata. Async, since a
/// check may ask another server (Kubernetes TokenReview); implement it with `async fn`.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(
        &self,
        metadata: &MetadataMap,
    ) -> impl Future<Output = Result<Identity, String>> + Send;
}

/// Where a proxy's SDS secrets come from (the CA, in production).
pub trait SecretSource: Send + Sync + 'static {
    /// The proxy's certificate (`default`) and trust bundle (`ROOTCA`), by name.
    fn secrets(&self, proxy: &Proxy) -> Result<BTreeMap<String, SharedResource>, String>;
    /// When this proxy's secrets must next be regenerated (rotation).
    fn next_refresh(&self, proxy: &Proxy) -> Option<Instant>;
    /// Changes whenever every proxy's secrets change (e.g. a new trust bundle).
    fn changes(&self) -> watch::Receiver<u64>;
    /// A stream for `proxy` opened (before its first `secrets`); paired with `release`.
    fn acquire(&self, _proxy: &Proxy) {}
    /// A stream for `proxy` ended.
    fn release(&self, _proxy: &Proxy) {}
}

impl<T: SecretSource> SecretSource for Arc<T> {
    fn secrets(&self, proxy: &Proxy) -> Result<BTreeMap<String, SharedResource>, String> {
        (**self).secrets(proxy)
    }
    fn next_refresh(&self, proxy: &Proxy) -> Option<Instant> {
        (**self).next_refresh(proxy)
    }
    fn changes(&self) -> watch::Receiver<u64> {
        (**self).changes()
    }
    fn acquire(&self, proxy: &Proxy) {
        (**self).acquire(proxy)
    }
    fn release(&self, proxy: &Proxy) {
        (**self).release(proxy)
    }
}

#[derive(Default, Debug)]
pub struct Metrics {
    pub connected: AtomicI64,
    pub streams_total: AtomicU64,
    pub streams_rejected: AtomicU64,
    pub pushes: AtomicU64,
    pub push_bytes: AtomicU64,
    pub nacks: AtomicU64,
    pub acks: AtomicU64,
    /// The same events under Istio's names (`pilot_*`), for `/metrics`.
    pub pilot: istio_metrics::PilotMetrics,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

pub struct ServerOptions {
    /// Proxies generating config at once; bounds CPU and memory during a full push.
    pub max_concurrent_generations: usize,
    /// Whether streams get SDS secrets (certificates, keys, gateway credentials). `false` for
    /// a plaintext port a network observer could read: those streams get no `Secret` at all.
    pub serve_secrets: bool,
    /// The largest request message a stream accepts (its gRPC length prefix); a bigger one
    /// ends the stream with RESOURCE_EXHAUSTED before any of it is buffered.
    pub max_request_bytes: usize,
    /// Resource names one Delta stream may hold subscribed per type: names accumulate over
    /// requests, so without a cap a stream could grow its state without end.
    pub max_subscribed_names: usize,
    /// How long a stream whose workload the registry does not show yet (or at another address)
    /// waits for the registry to catch up before it is refused.
    pub bind_wait: std::time::Duration,
}

/// Istio's `ISTIO_GPRC_MAXRECVMSGSIZE` (4 MiB). The largest legitimate ADS request is an EDS
/// request or ACK naming every cluster: 10 000 clusters of ~70-byte names
/// (`outbound|8080||name.namespace.svc.cluster.local`) plus framing are ~0.8 MB, so 4 MiB
/// leaves room for ~50 000 clusters.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 << 20;

/// Well above any mesh's cluster count (an EDS subscription names each cluster once), well
/// below what would let one stream hold megabytes of names it made up.
pub const DEFAULT_MAX_SUBSCRIBED_NAMES: usize = 100_000;

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_concurrent_generations: 16,
            serve_secrets: true,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_subscribed_names: DEFAULT_MAX_SUBSCRIBED_NAMES,
            bind_wait: std::time::Duration::from_secs(5),
        }
    }
}

pub(crate) struct Shared<A, S> {
    auth: A,
    secrets: S,
    mesh: watch::Receiver<Arc<MeshSnapshot>>,
    registry: Arc<Registry>,
    limiter: Semaphore,
    drain: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    layer_diffs: diff::LayerDiffs,
    serve_secrets: bool,
    max_request_bytes: usize,
    max_subscribed_names: usize,
    bind_wait: std::time::Duration,
}

impl<A: Authenticator, S: SecretSource> Shared<A, S> {
    /// Everything the proxy should have now: generated config plus its secrets.
    pub(crate) async fn compute(&self, proxy: &Proxy) -> (u64, ProxyResources) {
        let _permit = self.limiter.acquire().await.expect("limiter never closes");
        let snapshot = self.mesh.borrow().clone();
        let mut res = snapshot.generate(proxy);
        if !self.serve_secrets {
            if res.remove(meshd_xds::resource::SECRET).is_some() {
                tracing::debug!(proxy = %proxy.id, "secrets withheld: this port serves none");
            }
            return (snapshot.version, res);
        }
        match self.secrets.secrets(proxy) {
            Ok(s) => {
                let own: ResourceSet = s.into_iter().collect();
                match res.get_mut(meshd_xds::resource::SECRET) {
                    // Gateway credentials (generated) and the proxy's own certificate.
                    Some(generated) => {
                        for layer in own.into_layers() {
                            generated.push_layer(layer);
                        }
                    }
                    None => {
                        res.insert(meshd_xds::resource::SECRET, own);
                    }
                }
            }
            Err(e) => tracing::error!(proxy = %proxy.id, error = %e, "no secrets for proxy"),
        }
        (snapshot.version, res)
    }
}

impl<A: Authenticator, S> Shared<A, S> {
    pub(crate) async fn authenticate(&self, metadata: &MetadataMap) -> Result<Identity, Status> {
        Metrics::inc(&self.metrics.streams_total, 1);
        self.auth.authenticate(metadata).await.map_err(|e| {
            Metrics::inc(&self.metrics.streams_rejected, 1);
            tracing::warn!(error = %e, "xDS stream rejected");
            Status::unauthenticated(e)
        })
    }
}

pub struct AdsServer<A, S> {
    shared: Arc<Shared<A, S>>,
}

impl<A: Authenticator, S: SecretSource> AdsServer<A, S> {
    pub fn new(
        auth: A,
        secrets: S,
        mesh: watch::Receiver<Arc<MeshSnapshot>>,
        registry: Arc<Registry>,
        drain: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
        opts: ServerOptions,
    ) -> Self {
        AdsServer {
            shared: Arc::new(Shared {
                auth,
                secrets,
                mesh,
                registry,
                limiter: Semaphore::new(opts.max_concurrent_generations.max(1)),
                drain,
                metrics,
                layer_diffs: Default::default(),
                serve_secrets: opts.serve_secrets,
                max_request_bytes: opts.max_request_bytes,
                max_subscribed_names: opts.max_subscribed_names.max(1),
                bind_wait: opts.bind_wait,
            }),
        }
    }

    /// The gRPC service (`envoy.service.discovery.v3.AggregatedDiscoveryService`).
    pub fn into_service(self) -> service::AdsService<A, S> {
        service::AdsService::new(self.shared)
    }
}
