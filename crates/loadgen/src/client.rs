//! One simulated Envoy sidecar: ADS with wildcard CDS and LDS, then EDS and RDS for the names
//! those carry, and SDS for its certificate; every response ACKed (or a fraction NACKed).

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshd_xds::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use prost::Message;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

pub const TYPES: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET];

pub fn type_index(url: &str) -> usize {
    TYPES.iter().position(|t| *t == url).unwrap_or(0)
}

#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub proxy: u32,
    pub type_index: usize,
    pub at: Instant,
}

#[derive(Clone)]
pub struct ProxySpec {
    pub index: u32,
    pub node_id: String,
    pub credential: String,
}

/// Names a CDS/LDS payload refers to, decoded once per distinct payload across all clients
/// so the load tool does not compete with the server for CPU.
#[derive(Default)]
pub struct DecodeCache {
    eds: Mutex<HashMap<u64, Arc<Vec<String>>>>,
    rds: Mutex<HashMap<u64, Arc<Vec<String>>>>,
    /// Delta: the EDS/RDS names one CDS/LDS resource refers to, by (type, content version).
    deps: Mutex<HashMap<(&'static str, String), Deps>>,
    names: Mutex<std::collections::HashSet<Arc<str>>>,
    pub bytes_received: AtomicU64,
    /// Streams that ended (each one reconnects).
    pub stream_errors: AtomicU64,
}

/// The names of the dependent type (EDS or RDS) one resource refers to.
type Deps = Arc<[Arc<str>]>;

fn key(parts: impl Iterator<Item = impl std::hash::Hash>) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

impl DecodeCache {
    fn eds_names<'a>(&self, k: u64, resources: impl Iterator<Item = &'a Any>) -> Arc<Vec<String>> {
        if let Some(v) = self.eds.lock().unwrap().get(&k) {
            return v.clone();
        }
        let v = Arc::new(self.decode_eds(resources));
        self.eds.lock().unwrap().insert(k, v.clone());
        v
    }

    fn decode_eds<'a>(&self, resources: impl Iterator<Item = &'a Any>) -> Vec<String> {
        resources
            .filter_map(|a| Cluster::decode(a.value.as_slice()).ok())
            .filter(|c| {
                c.cluster_discovery_type
                    == Some(cluster::ClusterDiscoveryType::Type(
                        cluster::DiscoveryType::Eds as i32,
                    ))
            })
            .map(|c| c.name)
            .collect()
    }

    fn intern(&self, name: &str) -> Arc<str> {
        let mut names = self.names.lock().unwrap();
        if let Some(n) = names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        names.insert(n.clone());
        n
    }

    /// What one CDS or LDS resource (at this content version) makes the proxy subscribe to.
    fn deps(&self, type_url: &'static str, version: &str, any: &Any) -> Deps {
        let k = (type_url, version.to_string());
        if let Some(d) = self.deps.lock().unwrap().get(&k) {
            return d.clone();
        }
        let one = std::iter::once(any);
        let names = if type_url == CLUSTER {
            self.decode_eds(one)
        } else {
            self.decode_rds(one)
        };
        let d: Deps = names.iter().map(|n| self.intern(n)).collect();
        self.deps.lock().unwrap().insert(k, d.clone());
        d
    }

    fn rds_names<'a>(&self, k: u64, resources: impl Iterator<Item = &'a Any>) -> Arc<Vec<String>> {
        if let Some(v) = self.rds.lock().unwrap().get(&k) {
            return v.clone();
        }
        let v = Arc::new(self.decode_rds(resources));
        self.rds.lock().unwrap().insert(k, v.clone());
        v
    }

    fn decode_rds<'a>(&self, resources: impl Iterator<Item = &'a Any>) -> Vec<String> {
        let mut names = BTreeSet::new();
        for l in resources.filter_map(|a| Listener::decode(a.value.as_slice()).ok()) {
            for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
                for f in &chain.filters {
                    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                        continue;
                    };
                    if !any.type_url.ends_with("HttpConnectionManager") {
                        continue;
                    }
                    if let Ok(h) = HttpConnectionManager::decode(any.value.as_slice())
                        && let Some(http_connection_manager::RouteSpecifier::Rds(rds)) =
                            h.route_specifier
                    {
                        names.insert(rds.route_config_name);
                    }
                }
            }
        }
        names.into_iter().collect()
    }
}

fn authorized<T>(msg: T, credential: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().expect("ascii"),
    );
    req
}

fn nack(proxy: u32, seq: u64, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    // Deterministic spread: a fixed subset of responses is rejected.
    let h = (proxy as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ seq.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (h % 10_000) as f64 / 10_000.0 < fraction
}

/// Runs one simulated proxy over SotW until the stream ends.
pub async fn run_sotw(
    channel: Channel,
    spec: ProxySpec,
    cache: Arc<DecodeCache>,
    acks: mpsc::UnboundedSender<Ack>,
    nack_fraction: f64,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 << 20);
    let node = Some(Node {
        id: spec.node_id.clone(),
        ..Default::default()
    });
    tx.send(DiscoveryRequest {
        node,
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await?;
    tx.send(DiscoveryRequest {
        type_url: LISTENER.into(),
        ..Default::default()
    })
    .await?;
    tx.send(DiscoveryRequest {
        type_url: SECRET.into(),
        resource_names: vec!["default".into(), "ROOTCA".into()],
        ..Default::default()
    })
    .await?;
    let mut stream = client
        .stream_aggregated_resources(authorized(ReceiverStream::new(rx), &spec.credential))
        .await?
        .into_inner();
    let mut subscribed: HashMap<&'static str, Arc<Vec<String>>> = HashMap::new();
    let mut last: HashMap<String, (String, String)> = HashMap::new();
    let mut seq = 0u64;
    while let Some(resp) = stream.next().await {
        let resp: DiscoveryResponse = resp?;
        seq += 1;
        let bytes: usize = resp.resources.iter().map(|r| r.value.len()).sum();
        cache
            .bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let reject = nack(spec.index, seq, nack_fraction);
        let names = match resp.type_url.as_str() {
            CLUSTER => Some((
                ENDPOINT,
                cache.eds_names(key([&resp.version_info].iter()), resp.resources.iter()),
            )),
            LISTENER => Some((
                ROUTE,
                cache.rds_names(key([&resp.version_info].iter()), resp.resources.iter()),
            )),
            _ => None,
        };
        let acked_version = if reject {
            last.get(&resp.type_url)
                .map(|l| l.0.clone())
                .unwrap_or_default()
        } else {
            resp.version_info.clone()
        };
        tx.send(DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: acked_version.clone(),
            response_nonce: resp.nonce.clone(),
            resource_names: subscribed
                .get(resp.type_url.as_str())
                .map(|n| n.as_ref().clone())
                .unwrap_or_else(|| match resp.type_url.as_str() {
                    SECRET => vec!["default".into(), "ROOTCA".into()],
                    _ => Vec::new(),
                }),
            error_detail: reject.then(|| RpcStatus {
                code: 3,
                message: "load test: rejected on purpose".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
        last.insert(resp.type_url.clone(), (acked_version, resp.nonce.clone()));
        // A NACK answers the response too: the phases time answers, so they complete with
        // `--nack-fraction` as well.
        let _ = acks.send(Ack {
            proxy: spec.index,
            type_index: type_index(&resp.type_url),
            at: Instant::now(),
        });
        if let Some((dep, names)) = names
            && subscribed.get(dep).is_none_or(|cur| cur != &names)
        {
            subscribed.insert(dep, names.clone());
            let (version, nonce) = last.get(dep).cloned().unwrap_or_default();
            tx.send(DiscoveryRequest {
                type_url: dep.into(),
                version_info: version,
                response_nonce: nonce,
                resource_names: names.as_ref().clone(),
                ..Default::default()
            })
            .await?;
        }
    }
    Ok(())
}

/// Runs one simulated proxy over Delta until the stream ends.
pub async fn run_delta(
    channel: Channel,
    spec: ProxySpec,
    cache: Arc<DecodeCache>,
    acks: mpsc::UnboundedSender<Ack>,
    nack_fraction: f64,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 << 20);
    tx.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: spec.node_id.clone(),
            ..Default::default()
        }),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await?;
    tx.send(DeltaDiscoveryRequest {
        type_url: LISTENER.into(),
        ..Default::default()
    })
    .await?;
    tx.send(DeltaDiscoveryRequest {
        type_url: SECRET.into(),
        resource_names_subscribe: vec!["default".into(), "ROOTCA".into()],
        ..Default::default()
    })
    .await?;
    let mut stream = client
        .delta_aggregated_resources(authorized(ReceiverStream::new(rx), &spec.credential))
        .await?
        .into_inner();
    // Per wildcard type, what each held resource refers to; per dependent type, how many held
    // resources refer to each name. Updated by what each response changes, as Envoy does, so a
    // one-cluster change costs the client one cluster, not the mesh.
    let mut held: HashMap<&'static str, HashMap<Arc<str>, Deps>> = HashMap::new();
    let mut refs: HashMap<&'static str, HashMap<Arc<str>, u32>> = HashMap::new();
    let mut seq = 0u64;
    while let Some(resp) = stream.next().await {
        let resp = resp?;
        seq += 1;
        let bytes: usize = resp
            .resources
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .map(|r| r.value.len())
            .sum();
        cache
            .bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let reject = nack(spec.index, seq, nack_fraction);
        tx.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: reject.then(|| RpcStatus {
                code: 3,
                message: "load test: rejected on purpose".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
        let _ = acks.send(Ack {
            proxy: spec.index,
            type_index: type_index(&resp.type_url),
            at: Instant::now(),
        });
        let (ty, dep) = match resp.type_url.as_str() {
            CLUSTER => (CLUSTER, ENDPOINT),
            LISTENER => (LISTENER, ROUTE),
            _ => continue,
        };
        let held = held.entry(ty).or_default();
        let counts = refs.entry(dep).or_default();
        let mut touched: HashMap<Arc<str>, bool> = HashMap::new();
        let mut adjust = |names: &Deps, up: bool| {
            for n in names.iter() {
                let c = counts.entry(n.clone()).or_insert(0);
                touched.entry(n.clone()).or_insert(*c > 0);
                if up {
                    *c += 1;
                } else {
                    *c = c.saturating_sub(1);
                }
            }
        };
        for name in &resp.removed_resources {
            if let Some(old) = held.remove(name.as_str()) {
                adjust(&old, false);
            }
        }
        for r in &resp.resources {
            let Some(any) = &r.resource else { continue };
            let deps = cache.deps(ty, &r.version, any);
            adjust(&deps, true);
            if let Some(old) = held.insert(cache.intern(&r.name), deps) {
                adjust(&old, false);
            }
        }
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        for (name, before) in touched {
            let after = counts.get(&name).is_some_and(|c| *c > 0);
            if !after {
                counts.remove(&name);
            }
            match (before, after) {
                (false, true) => subscribe.push(name.to_string()),
                (true, false) => unsubscribe.push(name.to_string()),
                _ => {}
            }
        }
        if !subscribe.is_empty() || !unsubscribe.is_empty() {
            tx.send(DeltaDiscoveryRequest {
                type_url: dep.into(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..Default::default()
            })
            .await?;
        }
    }
    Ok(())
}
