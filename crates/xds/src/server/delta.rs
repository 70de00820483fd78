//! Incremental (Delta) ADS: only resources whose version the proxy lacks are sent, and removals
//! are named. A reconnecting proxy's `initial_resource_versions` spares it what it already has.

use super::conn::{Conn, Wake, bind_proxy, next_nonce, set_version};
use super::{Authenticator, SecretSource, Shared};
use crate::proxy::{Identity, Proxy};
use crate::resource::{CLUSTER, ENDPOINT, PUSH_ORDER, SharedResource, is_wildcard_type};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as DeltaResource,
};
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use tracing::Instrument;

#[derive(Default)]
struct TypeState {
    wildcard: bool,
    subscribed: BTreeSet<String>,
    /// What the proxy holds, name → version.
    known: BTreeMap<String, String>,
    nonce: String,
    sent_version: String,
    answered: bool,
}

struct Delta<A, S: SecretSource> {
    conn: Conn<A, S>,
    types: HashMap<String, TypeState>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    /// Clusters sent since their endpoints last were. Envoy warms every cluster it (re)creates
    /// until that cluster's endpoints arrive, unchanged or not; so their EDS follows, as in Istio.
    eds_due: BTreeSet<String>,
}

impl<A: Authenticator, S: SecretSource> Delta<A, S> {
    async fn push(&mut self, type_url: &str) -> Result<(), ()> {
        let Some(st) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let empty = BTreeMap::new();
        let all = self.conn.resources.get(type_url).unwrap_or(&empty);
        if type_url == ENDPOINT {
            for name in std::mem::take(&mut self.eds_due) {
                if all.contains_key(&name) {
                    st.known.remove(&name);
                }
            }
        }
        let desired: BTreeMap<String, SharedResource> = if st.wildcard {
            all.clone()
        } else {
            st.subscribed
                .iter()
                .filter_map(|n| all.get(n).map(|r| (n.clone(), r.clone())))
                .collect()
        };
        let updates: BTreeMap<String, SharedResource> = desired
            .iter()
            .filter(|(n, r)| st.known.get(*n) != Some(&r.version))
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        let removed: Vec<String> = st
            .known
            .keys()
            .filter(|n| !desired.contains_key(*n))
            .cloned()
            .collect();
        if updates.is_empty() && removed.is_empty() && st.answered {
            return Ok(());
        }
        let version = set_version(&desired);
        let nonce = next_nonce();
        for n in &removed {
            st.known.remove(n);
        }
        for (n, r) in &updates {
            st.known.insert(n.clone(), r.version.clone());
        }
        st.nonce = nonce.clone();
        st.sent_version = version.clone();
        st.answered = true;
        if type_url == CLUSTER {
            self.eds_due.extend(updates.keys().cloned());
        }
        let response = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources: updates
                .values()
                .map(|r| DeltaResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.any.clone()),
                    ..Default::default()
                })
                .collect(),
            removed_resources: removed,
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        tracing::debug!(type_url, version, updated = updates.len(), "delta push");
        self.conn
            .record_sent(type_url, &version, &nonce, desired, true);
        self.tx.send(Ok(response)).await.map_err(|_| ())
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), ()> {
        let type_url = req.type_url.clone();
        let first = !self.types.contains_key(&type_url);
        let st = self.types.entry(type_url.clone()).or_default();
        if first {
            st.known = req.initial_resource_versions.clone().into_iter().collect();
            st.wildcard = is_wildcard_type(&type_url) && req.resource_names_subscribe.is_empty();
        }
        if !req.response_nonce.is_empty() {
            if req.response_nonce == st.nonce {
                let version = st.sent_version.clone();
                match &req.error_detail {
                    Some(err) => self.conn.record_nack(&type_url, &err.message),
                    None => self.conn.record_ack(&type_url, &version),
                }
            } else {
                tracing::debug!(type_url, "stale nonce: ack ignored");
            }
        }
        let st = self.types.get_mut(&type_url).expect("inserted above");
        let mut changed = first;
        for name in &req.resource_names_subscribe {
            if name == "*" {
                changed |= !st.wildcard;
                st.wildcard = true;
            } else {
                changed |= st.subscribed.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                changed |= st.wildcard;
                st.wildcard = false;
            } else {
                changed |= st.subscribed.remove(name);
                st.known.remove(name);
            }
        }
        if changed {
            self.push(&type_url).await?;
        }
        Ok(())
    }
}

pub(crate) async fn serve<A: Authenticator, S: SecretSource>(
    shared: Arc<Shared<A, S>>,
    identity: Identity,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let first = match requests.next().await {
        Some(Ok(r)) => r,
        _ => return,
    };
    let proxy = match bind_proxy(first.node.as_ref(), identity) {
        Ok(p) => p,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let span = tracing::info_span!("ads", proxy = %proxy.id, protocol = "delta");
    session(shared, proxy, first, requests, tx)
        .instrument(span)
        .await;
}

async fn session<A: Authenticator, S: SecretSource>(
    shared: Arc<Shared<A, S>>,
    proxy: Proxy,
    first: DeltaDiscoveryRequest,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let conn = Conn::open(shared, proxy, "delta").await;
    let mut d = Delta {
        conn,
        types: HashMap::new(),
        tx,
        eds_due: BTreeSet::new(),
    };
    if d.on_request(first).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            req = requests.next() => match req {
                Some(Ok(req)) => if d.on_request(req).await.is_err() { return },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "stream error");
                    return;
                }
                None => return,
            },
            wake = d.conn.wake() => match wake {
                Wake::Drain => return,
                Wake::Mesh | Wake::Secrets => {
                    d.conn.refresh().await;
                    for type_url in PUSH_ORDER {
                        if d.push(type_url).await.is_err() { return }
                    }
                }
            },
        }
    }
}
