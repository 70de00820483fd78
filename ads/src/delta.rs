//! Incremental (Delta) ADS: only resources whose version the proxy lacks are sent, and removals
//! are named. A reconnecting proxy's `initial_resource_versions` spares it what it already has.

use super::conn::next_nonce;
use super::diff::{self, LayerDiffs};
use super::status::SentResources;
use super::stream::{self, Protocol, Push, Stream};
use super::wire;
use super::{Authenticator, SecretSource};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use meshd_xds::resource::{
    CLUSTER, ENDPOINT, ResourceSet, SharedResource, Subscription, is_wildcard_type,
};
use std::collections::BTreeMap;
use tonic::Status;

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
            Known::Sent(s) => s.get(name).map(|r| r.version.as_str()),
            Known::Claimed(m) => m.get(name).map(String::as_str),
        }
    }

    fn forget(&mut self, name: &str) {
        if let Known::Sent(s) = self {
            let claimed = s
                .iter()
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect();
            *self = Known::Claimed(claimed);
        }
        if let Known::Claimed(m) = self {
            m.remove(name);
        }
    }

    /// What to send so the proxy holds `now`: resources it lacks or has at another version,
    /// and names it holds that `now` lacks.
    fn diff(&self, now: &SentResources, diffs: &LayerDiffs) -> (Vec<SharedResource>, Vec<String>) {
        match self {
            Known::Sent(before) if let Some(changes) = diff::changes(before, now, diffs) => changes,
            _ => {
                let updates = now
                    .iter()
                    .filter(|r| self.version(&r.name) != Some(&r.version))
                    .cloned()
                    .collect();
                let held: Vec<&str> = match self {
                    Known::Sent(s) => s.iter().map(|r| r.name.as_str()).collect(),
                    Known::Claimed(m) => m.keys().map(String::as_str).collect(),
                };
                let removed = held
                    .into_iter()
                    .filter(|n| now.get(n).is_none())
                    .map(str::to_string)
                    .collect();
                (updates, removed)
            }
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

type Delta<A, S> = Stream<A, S, TypeState>;

impl<A: Authenticator, S: SecretSource> Delta<A, S> {
    async fn push(&mut self, type_url: &'static str) -> Result<(), ()> {
        let started = std::time::Instant::now();
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
            Vec::new()
        };
        let sent = SentResources {
            set: all,
            subscription: effective,
        };
        if st.answered
            && forced.is_empty()
            && matches!(&st.known, Known::Sent(s) if s.set.same_as(&sent.set) && s.subscription == sent.subscription)
        {
            return Ok(());
        }
        // A first sync of everything goes as the layers' shared chunks, not a copy per proxy.
        let whole = sent.subscription == Subscription::All
            && matches!(&st.known, Known::Claimed(m) if m.is_empty());
        let (mut updates, removed) = if whole {
            (sent.iter().cloned().collect(), Vec::new())
        } else {
            st.known.diff(&sent, &self.conn.shared.layer_diffs)
        };
        if !whole {
            diff::add_due(&mut updates, &forced, &sent);
        }
        if updates.is_empty() && removed.is_empty() && st.answered {
            st.known = Known::Sent(sent);
            return Ok(());
        }
        let version = sent.set.version(&sent.subscription);
        let nonce = next_nonce();
        st.known = Known::Sent(sent.clone());
        st.nonce = nonce.clone();
        st.sent_version = version.clone();
        st.answered = true;
        if type_url == CLUSTER {
            self.eds_due.extend(updates.iter().cloned());
        }
        let bytes = updates.iter().map(|r| r.size()).sum();
        let count = updates.len();
        let parts = if whole {
            wire::DeltaUpdates::Layers(sent.set.layers())
        } else {
            wire::DeltaUpdates::Resources(&updates)
        };
        let response = wire::delta_response(&version, type_url, &nonce, parts, &removed);
        tracing::debug!(type_url, version, updated = count, "delta push");
        let push = Push {
            type_url,
            version: &version,
            nonce: &nonce,
            sent,
            bytes,
            started,
        };
        stream::send_push(&mut self.conn, &mut self.tx, response, push).await
    }

    /// Ends the stream: it asked to hold more names of a type than any proxy needs.
    async fn too_many_names(&mut self, type_url: &str, count: usize) -> Result<(), ()> {
        let limit = self.conn.shared.max_subscribed_names;
        let status = Status::resource_exhausted(format!(
            "{type_url}: {count} subscribed resource names, over the limit of {limit} per type"
        ));
        stream::refuse(&mut self.tx, status).await
    }

    async fn on_request(&mut self, req: Box<DeltaDiscoveryRequest>) -> Result<(), ()> {
        let Some(type_url) = stream::served(&req.type_url) else {
            return Ok(());
        };
        let limit = self.conn.shared.max_subscribed_names;
        let claimed = req
            .resource_names_subscribe
            .len()
            .max(req.initial_resource_versions.len());
        if claimed > limit {
            return self.too_many_names(&req.type_url, claimed).await;
        }
        let first = !self.types.contains_key(type_url);
        let st = self.types.entry(type_url);
        if first {
            st.known = Known::Claimed(req.initial_resource_versions.clone().into_iter().collect());
            st.wildcard = is_wildcard_type(type_url) && req.resource_names_subscribe.is_empty();
        }
        // A stale nonce still changes the subscription: only its ACK is ignored.
        stream::record_reply(
            &self.conn,
            type_url,
            &st.nonce,
            &req.response_nonce,
            req.error_detail.as_ref(),
            &st.sent_version,
        );
        let st = self.types.get_mut(type_url).expect("inserted above");
        let mut changed = first;
        let named_changes = req
            .resource_names_subscribe
            .iter()
            .chain(&req.resource_names_unsubscribe)
            .any(|n| n != "*");
        let empty = ResourceSet::default();
        let available = self.conn.resources.get(type_url).unwrap_or(&empty);
        // Subscribing to names already held under `All` (a new cluster's endpoints, say)
        // changes nothing: no copy of every name.
        let within_all = st.subscription == Subscription::All
            && req.resource_names_unsubscribe.is_empty()
            && req
                .resource_names_subscribe
                .iter()
                .all(|n| n == "*" || available.contains(n));
        // A first subscription (a sidecar's EDS request naming every cluster) is told `All`
        // without copying its names.
        let first_names = req.resource_names_unsubscribe.is_empty()
            && !req.resource_names_subscribe.iter().any(|n| n == "*")
            && matches!(&st.subscription, Subscription::Names(n) if n.is_empty());
        if named_changes && first_names {
            st.subscription = Subscription::requested(&req.resource_names_subscribe, available);
            changed = true;
        } else if named_changes && !within_all {
            let mut names = st.subscription.names(available);
            for name in req.resource_names_subscribe.iter().filter(|n| *n != "*") {
                changed |= names.insert(name.clone());
            }
            for name in req.resource_names_unsubscribe.iter().filter(|n| *n != "*") {
                changed |= names.remove(name);
                st.known.forget(name);
            }
            if names.len() > limit {
                let count = names.len();
                return self.too_many_names(type_url, count).await;
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
            self.push(type_url).await?;
        }
        Ok(())
    }
}

impl<A: Authenticator, S: SecretSource> Protocol<A, S> for TypeState {
    type Request = DeltaDiscoveryRequest;
    const NAME: &'static str = "delta";

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    async fn on_request(s: &mut Delta<A, S>, req: Box<DeltaDiscoveryRequest>) -> Result<(), ()> {
        s.on_request(req).await
    }

    async fn push_type(s: &mut Delta<A, S>, type_url: &'static str) -> Result<(), ()> {
        s.push(type_url).await
    }
}

pub(crate) fn serve<A: Authenticator, S: SecretSource>(
    opening: Box<stream::Opening<A, S, DeltaDiscoveryRequest>>,
) -> impl Future<Output = ()> + Send {
    stream::serve::<A, S, TypeState>(opening)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use meshd_xds::resource::{LayerMap, Resource, reuse_layer};
    use std::sync::Arc;

    fn layer(items: &[(&str, u32)]) -> meshd_xds::resource::Layer {
        LayerMap::new(
            items
                .iter()
                .map(|(n, v)| {
                    let c = Cluster {
                        name: n.to_string(),
                        per_connection_buffer_limit_bytes: Some(
                            envoy_types::pb::google::protobuf::UInt32Value { value: *v },
                        ),
                        ..Default::default()
                    };
                    (n.to_string(), Resource::encode(*n, &c))
                })
                .collect(),
        )
    }

    fn sent(layers: Vec<meshd_xds::resource::Layer>, sub: Subscription) -> SentResources {
        SentResources {
            set: ResourceSet::from_layers(layers),
            subscription: sub,
        }
    }

    fn names(updates: &[SharedResource]) -> Vec<&str> {
        updates.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn layer_diff_sends_changes_additions_and_removals_only() {
        let shared = layer(&[("a", 1), ("b", 1), ("c", 1)]);
        let own = layer(&[("in", 1)]);
        let before = sent(vec![shared.clone(), own.clone()], Subscription::All);
        let next = reuse_layer(Some(&shared), layer(&[("a", 1), ("b", 2), ("d", 1)]));
        let now = sent(vec![next, own.clone()], Subscription::All);
        let (updates, removed) = Known::Sent(before.clone()).diff(&now, &LayerDiffs::default());
        assert_eq!(names(&updates), ["b", "d"]);
        assert_eq!(removed, ["c"]);
        // The general path agrees.
        let claimed = Known::Claimed(
            before
                .iter()
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect(),
        );
        let (u2, r2) = claimed.diff(&now, &LayerDiffs::default());
        assert_eq!(names(&u2), names(&updates));
        assert_eq!(r2, removed);
        // Nothing changed: nothing to send.
        let (u, r) = Known::Sent(now.clone()).diff(&now, &LayerDiffs::default());
        assert!(u.is_empty() && r.is_empty());
    }

    #[test]
    fn a_name_moving_between_layers_is_neither_removed_nor_resent() {
        let before = sent(
            vec![layer(&[("a", 1), ("m", 1)]), layer(&[])],
            Subscription::All,
        );
        let now = sent(
            vec![layer(&[("a", 1)]), layer(&[("m", 1)])],
            Subscription::All,
        );
        let (updates, removed) = Known::Sent(before).diff(&now, &LayerDiffs::default());
        assert!(updates.is_empty(), "{:?}", names(&updates));
        assert!(removed.is_empty(), "{removed:?}");
    }

    #[test]
    fn layer_diff_respects_the_subscription() {
        let sub = Subscription::Names(Arc::new(["a".to_string(), "c".to_string()].into()));
        let before = sent(vec![layer(&[("a", 1), ("b", 1), ("c", 1)])], sub.clone());
        let now = sent(vec![layer(&[("a", 2), ("b", 2)])], sub);
        let (updates, removed) = Known::Sent(before).diff(&now, &LayerDiffs::default());
        assert_eq!(names(&updates), ["a"]);
        assert_eq!(removed, ["c"]);
    }
}
