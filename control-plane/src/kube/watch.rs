//! The Kubernetes config source: one watcher per kind feeding one index, which publishes the
//! derived `MeshConfig` with `send_if_modified` (only real changes reach the xDS server).
//!
//! Each watcher buffers a (re)list (`Init` … `InitDone`) and hands the index the complete set, so
//! a relist after a dropped watch removes what vanished meanwhile. A kind the server does not
//! serve (404: Istio CRDs not installed yet) counts as listed and empty; the watcher keeps
//! retrying with backoff and picks the kind up once its CRD appears.
//!
//! Retries use [`watch_backoff`], not kube-runtime's `default_backoff`: that one only resets
//! after 120 s without errors and grows to 30 s, so after an API-server outage (every watch
//! answered 410 Expired, then relisted) changes waited out up to a minute of backoff.

use super::index::{IndexOptions, Indexed, IstioObject, KubeObjects};
use crate::debounce::Debounce;
use crate::reg_events::{RegEvent, RegEvents};
use ::kube::api::{Api, ApiResource, DynamicObject};
use ::kube::runtime::WatchStreamExt;
use ::kube::runtime::watcher::{self, Event};
use ::kube::{Client, Resource};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use meshd_model::{Kind, MeshConfig};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// The API version of the Istio custom resources meshd watches (the contract's v1; EnvoyFilter
/// only exists as v1alpha3).
pub fn istio_version(kind: Kind) -> &'static str {
    match kind {
        Kind::EnvoyFilter => "v1alpha3",
        _ => "v1",
    }
}

/// Where endpoints come from: EndpointSlice v1 where served, else core Endpoints (1.20).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointsApi {
    Slices,
    Endpoints,
}

pub fn is_not_found(e: &::kube::Error) -> bool {
    matches!(e, ::kube::Error::Api(s) if s.code == 404)
}

/// Asks the server whether it serves `discovery.k8s.io/v1` EndpointSlices.
pub async fn endpoints_api(client: &Client) -> Result<EndpointsApi, ::kube::Error> {
    match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => {
            Ok(EndpointsApi::Slices)
        }
        Ok(_) => Ok(EndpointsApi::Endpoints),
        Err(e) if is_not_found(&e) => Ok(EndpointsApi::Endpoints),
        Err(e) => Err(e),
    }
}

pub fn istio_resource(kind: Kind) -> ApiResource {
    let plural = match kind {
        Kind::ServiceEntry => "serviceentries",
        Kind::WorkloadEntry => "workloadentries",
        Kind::DestinationRule => "destinationrules",
        Kind::VirtualService => "virtualservices",
        Kind::Gateway => "gateways",
        Kind::Sidecar => "sidecars",
        Kind::PeerAuthentication => "peerauthentications",
        Kind::AuthorizationPolicy => "authorizationpolicies",
        Kind::EnvoyFilter => "envoyfilters",
        Kind::RequestAuthentication => "requestauthentications",
        Kind::Telemetry => "telemetries",
    };
    ApiResource {
        group: kind.group().into(),
        version: istio_version(kind).into(),
        api_version: format!("{}/{}", kind.group(), istio_version(kind)),
        kind: kind.name().into(),
        plural: plural.into(),
    }
}

/// Applies one change to the index and says what it was (an event and how many objects).
type Mutation = Box<dyn FnOnce(&mut KubeObjects) -> (RegEvent, u64) + Send>;

/// One change from one watcher.
struct Change {
    /// The watched kind, e.g. `Pod` or `VirtualService`.
    kind: &'static str,
    /// A complete list (or "not served"): after it the kind counts as synced.
    listed: bool,
    mutate: Mutation,
}

/// How a watcher waits between failed attempts: quick (200 ms, doubling, at most 2 s, jittered)
/// and reset by the first success, so a relist after an outage or a 410 Expired happens within
/// seconds of the API server answering again. Still gentle on a struggling server: each watch
/// retries at most every 2 s.
pub fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

fn kind_name<K: Resource<DynamicType = ()>>() -> &'static str {
    // `Resource::kind` of a static type is a `'static` string in k8s-openapi.
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(s) => s,
        std::borrow::Cow::Owned(s) => Box::leak(s.into_boxed_str()),
    }
}

async fn watch_typed<K>(api: Api<K>, tx: mpsc::Sender<Change>)
where
    K: Indexed + Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let kind = kind_name::<K>();
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .backoff(watch_backoff())
        // The index never reads managedFields; they are often most of an object's bytes.
        .modify(|o: &mut K| {
            o.meta_mut().managed_fields = None;
            o.slim();
        })
        .boxed();
    let mut buffer: Vec<K> = Vec::new();
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(Event::Init) => {
                buffer.clear();
                continue;
            }
            Ok(Event::InitApply(o)) => {
                buffer.push(o);
                continue;
            }
            Ok(Event::InitDone) => {
                let all = std::mem::take(&mut buffer);
                tracing::debug!(kind, objects = all.len(), "listed");
                Change {
                    kind,
                    listed: true,
                    mutate: Box::new(move |objs| (RegEvent::Add, objs.replace(all) as u64)),
                }
            }
            Ok(Event::Apply(o)) => Change {
                kind,
                listed: false,
                mutate: Box::new(move |objs| (objs.apply(o), 1)),
            },
            Ok(Event::Delete(o)) => Change {
                kind,
                listed: false,
                mutate: Box::new(move |objs| (objs.delete(&o), 1)),
            },
            Err(e) => {
                tracing::warn!(kind, error = %e, "watch failed; retrying");
                continue;
            }
        };
        if tx.send(change).await.is_err() {
            return;
        }
    }
}

fn istio_object(kind: Kind, obj: DynamicObject) -> IstioObject {
    let mut value = serde_json::to_value(&obj).unwrap_or_default();
    // List items may omit their type; the watch says what it is.
    if value.get("apiVersion").is_none_or(|v| v.is_null()) {
        value["apiVersion"] = format!("{}/{}", kind.group(), istio_version(kind)).into();
    }
    if value.get("kind").is_none_or(|v| v.is_null()) {
        value["kind"] = kind.name().into();
    }
    IstioObject::parse(kind, &value)
}

async fn watch_istio(client: Client, kind: Kind, tx: mpsc::Sender<Change>) {
    let resource = istio_resource(kind);
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let name = kind.name();
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .backoff(watch_backoff())
        .boxed();
    let mut buffer: Vec<IstioObject> = Vec::new();
    let mut absent = false;
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(Event::Init) => {
                buffer.clear();
                continue;
            }
            Ok(Event::InitApply(o)) => {
                buffer.push(istio_object(kind, o));
                continue;
            }
            Ok(Event::InitDone) => {
                absent = false;
                let all = std::mem::take(&mut buffer);
                Change {
                    kind: name,
                    listed: true,
                    mutate: Box::new(move |objs| {
                        (RegEvent::Add, objs.replace_istio(kind, all) as u64)
                    }),
                }
            }
            Ok(Event::Apply(o)) => {
                let o = istio_object(kind, o);
                if let Err(r) = &o.parsed {
                    tracing::warn!("{r}");
                }
                Change {
                    kind: name,
                    listed: false,
                    mutate: Box::new(move |objs| (objs.apply_istio(o), 1)),
                }
            }
            Ok(Event::Delete(o)) => {
                let ns = o.metadata.namespace.clone().unwrap_or_default();
                let n = o.metadata.name.clone().unwrap_or_default();
                Change {
                    kind: name,
                    listed: false,
                    mutate: Box::new(move |objs| (objs.delete_istio(kind, &ns, &n), 1)),
                }
            }
            Err(watcher::Error::InitialListFailed(e)) if is_not_found(&e) => {
                if absent {
                    continue;
                }
                absent = true;
                tracing::info!(
                    kind = name,
                    api = %resource.api_version,
                    "not served (CRD not installed?); none in force until it is"
                );
                Change {
                    kind: name,
                    listed: true,
                    mutate: Box::new(move |objs| {
                        (RegEvent::Add, objs.replace_istio(kind, Vec::new()) as u64)
                    }),
                }
            }
            Err(e) => {
                tracing::warn!(kind = name, error = %e, "watch failed; retrying");
                continue;
            }
        };
        if tx.send(change).await.is_err() {
            return;
        }
    }
}

/// What the index publishes.
#[derive(Clone)]
pub struct KubeOutputs {
    pub mesh: watch::Sender<Arc<MeshConfig>>,
    /// Namespaces labelled `istio-injection=enabled`.
    pub injection_namespaces: watch::Sender<BTreeSet<String>>,
    /// Every namespace's labels (the injector's namespace decision).
    pub namespace_labels: watch::Sender<BTreeMap<String, BTreeMap<String, String>>>,
    /// `pilot_k8s_reg_events`.
    pub reg_events: Arc<RegEvents>,
}

/// The running watchers and index of one API server.
pub struct KubeSource {
    pub endpoints_api: EndpointsApi,
    pub tasks: JoinSet<()>,
}

impl KubeSource {
    /// Starts the watchers and the index; resolves once every kind has been listed once (or
    /// fails after `sync_timeout`, naming the kinds that have not), with the first config
    /// already published on `out.mesh`.
    pub async fn start(
        client: Client,
        opts: IndexOptions,
        debounce: Debounce,
        sync_timeout: Duration,
        out: KubeOutputs,
    ) -> anyhow::Result<KubeSource> {
        let endpoints_api = endpoints_api(&client)
            .await
            .map_err(|e| anyhow::anyhow!("asking the Kubernetes API server what it serves: {e}"))?;
        tracing::info!(?endpoints_api, "watching Kubernetes");
        let (tx, rx) = mpsc::channel::<Change>(1024);
        let mut tasks = JoinSet::new();
        let mut expected: BTreeSet<&'static str> = BTreeSet::new();
        expected.insert(kind_name::<Service>());
        tasks.spawn(watch_typed(Api::<Service>::all(client.clone()), tx.clone()));
        expected.insert(kind_name::<Pod>());
        tasks.spawn(watch_typed(Api::<Pod>::all(client.clone()), tx.clone()));
        if opts.gateway_credentials {
            expected.insert(kind_name::<Secret>());
            tasks.spawn(watch_typed(Api::<Secret>::all(client.clone()), tx.clone()));
        }
        expected.insert(kind_name::<Namespace>());
        tasks.spawn(watch_typed(
            Api::<Namespace>::all(client.clone()),
            tx.clone(),
        ));
        match endpoints_api {
            EndpointsApi::Slices => {
                expected.insert(kind_name::<EndpointSlice>());
                tasks.spawn(watch_typed(
                    Api::<EndpointSlice>::all(client.clone()),
                    tx.clone(),
                ));
            }
            EndpointsApi::Endpoints => {
                expected.insert(kind_name::<Endpoints>());
                tasks.spawn(watch_typed(
                    Api::<Endpoints>::all(client.clone()),
                    tx.clone(),
                ));
            }
        }
        for kind in Kind::ALL {
            expected.insert(kind.name());
            tasks.spawn(watch_istio(client.clone(), kind, tx.clone()));
        }
        drop(tx);
        let (synced_tx, mut synced_rx) = watch::channel(BTreeSet::new());
        tasks.spawn(run_index(
            rx,
            opts,
            debounce,
            expected.clone(),
            synced_tx,
            out,
        ));
        let all = tokio::time::timeout(
            sync_timeout,
            synced_rx.wait_for(|s: &BTreeSet<&'static str>| *s == expected),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !all {
            let synced = synced_rx.borrow().clone();
            let missing: Vec<&str> = expected.difference(&synced).copied().collect();
            tasks.abort_all();
            anyhow::bail!(
                "Kubernetes watches did not sync within {sync_timeout:?}: {} never listed (RBAC? see the log)",
                missing.join(", ")
            );
        }
        Ok(KubeSource {
            endpoints_api,
            tasks,
        })
    }
}

async fn run_index(
    mut rx: mpsc::Receiver<Change>,
    opts: IndexOptions,
    debounce: Debounce,
    expected: BTreeSet<&'static str>,
    synced_out: watch::Sender<BTreeSet<&'static str>>,
    out: KubeOutputs,
) {
    let mut objs = KubeObjects::default();
    let mut synced: BTreeSet<&'static str> = BTreeSet::new();
    // A burst (a relist, a rollout) is one rebuild.
    while let Some(batch) = debounce.burst(&mut rx).await {
        for c in batch {
            if c.listed {
                synced.insert(c.kind);
            }
            let (event, count) = (c.mutate)(&mut objs);
            out.reg_events.record(c.kind, event, count);
        }
        if synced != expected {
            synced_out.send_replace(synced.clone());
            continue;
        }
        // A panic deriving the config (a meshd bug) must not end the index: the last good
        // config keeps serving, and the next change tries again.
        let mesh = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| objs.mesh(&opts)))
        {
            Ok(mesh) => mesh,
            Err(panic) => {
                tracing::error!(
                    panic = %crate::supervise::panic_text(&*panic),
                    "deriving the mesh config from the cluster panicked; the last good config keeps serving"
                );
                continue;
            }
        };
        let namespaces = objs.injection_namespaces();
        out.injection_namespaces.send_if_modified(|current| {
            if *current == namespaces {
                false
            } else {
                *current = namespaces;
                true
            }
        });
        let labels = objs.namespace_labels();
        out.namespace_labels.send_if_modified(|current| {
            if *current == labels {
                false
            } else {
                *current = labels;
                true
            }
        });
        out.mesh.send_if_modified(|current| {
            if **current == mesh {
                false
            } else {
                tracing::info!(
                    services = mesh.services.len(),
                    workloads = mesh.workloads.len(),
                    objects = mesh.objects.len(),
                    rejected = mesh.rejected.len(),
                    "Kubernetes registry changed"
                );
                *current = Arc::new(mesh);
                true
            }
        });
        // After the first publish, so a caller that waited for sync sees the config.
        synced_out.send_if_modified(|s| {
            if *s == synced {
                false
            } else {
                *s = synced.clone();
                true
            }
        });
    }
}
