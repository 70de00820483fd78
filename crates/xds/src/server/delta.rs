//! Incremental (Delta) ADS: only resources whose version the proxy lacks are sent, and removals
//! are named. A reconnecting proxy's `initial_resource_versions` spares it what it already has.

use super::conn::{Conn, Wake, next_nonce, open_stream, set_version};
use super::status::SentResources;
use super::wire;
use super::{Authenticator, SecretSource, Shared};
use crate::proxy::{Identity, Proxy};
use crate::resource::{
    CLUSTER, ENDPOINT, PUSH_ORDER, ResourceSet, SharedResource, Subscription, is_wildcard_type,
    select,
};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tracing::Instrument;

/// What a proxy holds of one type.
enum Known {
    /// Exactly what the last push left it with (shared pointers, no per-proxy copy).
    Sent(SentResources),
    /// What it told us on reconnect (`initial_resource_versions`), until the first push.
    Claimed(BTreeMap<String, String>),
}

impl Default for Known {
    fn default() -> Self {
        Known::Claimed(BTreeMap::new())
    }
}

impl Known {
    fn version(&self, name: &str) -> Option<&str> {
        match self {
            Known::Sent(s) if s.subscription.selects(name) => {
                s.set.get(name).map(|r| r.version.as_str())
            }
            Known::Sent(_) => None,
            Known::Claimed(m) => m.get(name).map(String::as_str),
        }
    }

    fn names(&self) -> Vec<String> {
        match self {
            Known::Sent(s) => s.iter().map(|r| r.name.clone()).collect(),
            Known::Claimed(m) => m.keys().cloned().collect(),
        }
    }

    fn forget(&mut self, name: &str) {
        if let Known::Sent(_) = self {
            let names = self.names();
            let claimed = names
                .into_iter()
                .filter_map(|n| self.version(&n).map(|v| (n.clone(), v.to_string())))
                .collect();
            *self = Known::Claimed(claimed);
        }
        if let Known::Claimed(m) = self {
            m.remove(name);
        }
    }
}

struct TypeState {
    wildcard: bool,
    subscription: Subscription,
    known: Known,
    nonce: String,
    sent_version: String,
    answered: bool,
}

impl Default for TypeState {
    fn default() -> Self {
        TypeState {
            wildcard: false,
            subscription: Subscription::Names(Default::default()),
            known: Known::default(),
            nonce: String::new(),
            sent_version: String::new(),
            answered: false,
        }
    }
}

struct Delta<A, S: SecretSource> {
    conn: Conn<A, S>,
    types: HashMap<String, TypeState>,
    tx: wire::Sender,
    /// Clusters sent since their endpoints last were. Envoy warms every cluster it (re)creates
    /// until that cluster's endpoints arrive, unchanged or not; so their EDS follows, as in Istio.
    eds_due: BTreeSet<String>,
}

impl<A: Authenticator, S: SecretSource> Delta<A, S> {
    async fn push(&mut self, type_url: &str) -> Result<(), ()> {
        let Some(st) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let all = self
            .conn
            .resources
            .get(type_url)
            .cloned()
            .unwrap_or_default();
        let effective = if st.wildcard {
            Subscription::All
        } else {
            st.subscription.clone()
        };
        let forced = if type_url == ENDPOINT {
            std::mem::take(&mut self.eds_due)
        } else {
            BTreeSet::new()
        };
        if st.answered
            && forced.is_empty()
            && matches!(&st.known, Known::Sent(s) if s.set.same_as(&all) && s.subscription == effective)
        {
            return Ok(());
        }
        let updates: Vec<SharedResource> = select(&all, &effective)
            .filter(|r| forced.contains(&r.name) || st.known.version(&r.name) != Some(&r.version))
            .cloned()
            .collect();
        let removed: Vec<String> = st
            .known
            .names()
            .into_iter()
            .filter(|n| !(effective.selects(n) && all.contains(n)))
            .collect();
        let sent = SentResources {
            set: all,
            subscription: effective,
        };
        if updates.is_empty() && removed.is_empty() && st.answered {
            st.known = Known::Sent(sent);
            return Ok(());
        }
        let version = set_version(sent.iter());
        let nonce = next_nonce();
        st.known = Known::Sent(sent.clone());
        st.nonce = nonce.clone();
        st.sent_version = version.clone();
        st.answered = true;
        if type_url == CLUSTER {
            self.eds_due.extend(updates.iter().map(|r| r.name.clone()));
        }
        let bytes = updates.iter().map(|r| r.size()).sum();
        let count = updates.len();
        let response = wire::delta_response(&version, type_url, &nonce, updates.iter(), &removed);
        tracing::debug!(type_url, version, updated = count, "delta push");
        self.conn
            .record_sent(type_url, &version, &nonce, sent, bytes);
        self.tx.send(response).await.map_err(|_| ())
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), ()> {
        let type_url = req.type_url.clone();
        let first = !self.types.contains_key(&type_url);
        let st = self.types.entry(type_url.clone()).or_default();
        if first {
            st.known = Known::Claimed(req.initial_resource_versions.clone().into_iter().collect());
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
        let named_changes = req
            .resource_names_subscribe
            .iter()
            .chain(&req.resource_names_unsubscribe)
            .any(|n| n != "*");
        if named_changes {
            let empty = ResourceSet::default();
            let available = self.conn.resources.get(type_url.as_str()).unwrap_or(&empty);
            let mut names = st.subscription.names(available);
            for name in req.resource_names_subscribe.iter().filter(|n| *n != "*") {
                changed |= names.insert(name.clone());
            }
            for name in req.resource_names_unsubscribe.iter().filter(|n| *n != "*") {
                changed |= names.remove(name);
                st.known.forget(name);
            }
            st.subscription = Subscription::from_names(names, available);
        }
        if req.resource_names_subscribe.iter().any(|n| n == "*") {
            changed |= !st.wildcard;
            st.wildcard = true;
        }
        if req.resource_names_unsubscribe.iter().any(|n| n == "*") {
            changed |= st.wildcard;
            st.wildcard = false;
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
    mut requests: wire::Requests<DeltaDiscoveryRequest>,
    tx: wire::Sender,
) {
    let Some((proxy, first)) = open_stream(
        &mut requests,
        identity,
        |r: &DeltaDiscoveryRequest| r.node.as_ref(),
        &tx,
    )
    .await
    else {
        return;
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
    mut requests: wire::Requests<DeltaDiscoveryRequest>,
    tx: wire::Sender,
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
