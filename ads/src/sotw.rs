//! State-of-the-world ADS: each response carries the whole set of a type the proxy gets, except
//! EDS after the first response: that carries only the endpoints that changed or are due.

use super::conn::next_nonce;
use super::diff;
use super::status::SentResources;
use super::stream::{self, Protocol, Push, Reply, Stream};
use super::wire;
use super::{Authenticator, SecretSource};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use meshd_xds::resource::{CLUSTER, ENDPOINT, ResourceSet, Subscription, is_wildcard_type};
use tonic::Status;

#[derive(Default)]
struct TypeState {
    /// `None`: wildcard (every resource of the type).
    subscription: Option<Subscription>,
    nonce: String,
    sent_version: String,
    /// What the last response carried (pointers): an unchanged set is told by pointer.
    sent: Option<SentResources>,
    /// The fingerprint of the names the last request listed.
    requested: Option<u64>,
}

/// A keyed hash of a request's names, in order (per process keys: not forgeable by a client).
fn names_fingerprint(names: &[String]) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher, RandomState};
    static KEYS: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    let mut h = KEYS.get_or_init(RandomState::new).build_hasher();
    names.len().hash(&mut h);
    for n in names {
        n.hash(&mut h);
    }
    h.finish()
}

type Sotw<A, S> = Stream<A, S, TypeState>;

impl<A: Authenticator, S: SecretSource> Sotw<A, S> {
    /// Sends the type's current set unless the proxy already has exactly this version.
    /// `force`: a request asked for it (a new subscription gets an answer, even an unchanged
    /// one).
    async fn push(&mut self, type_url: &'static str, force: bool) -> Result<(), ()> {
        let started = std::time::Instant::now();
        let Some(st) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let set = self
            .conn
            .resources
            .get(type_url)
            .cloned()
            .unwrap_or_default();
        let subscription = st.subscription.clone().unwrap_or(Subscription::All);
        let due = if type_url == ENDPOINT {
            std::mem::take(&mut self.eds_due)
        } else {
            Vec::new()
        };
        let unchanged =
            |sent: &SentResources| sent.set.same_as(&set) && sent.subscription == subscription;
        if !force && due.is_empty() && st.sent.as_ref().is_some_and(unchanged) {
            return Ok(());
        }
        let version = set.version(&subscription);
        let sent = SentResources { set, subscription };
        if !force && due.is_empty() && version == st.sent_version {
            st.sent = Some(sent);
            return Ok(());
        }
        let changes = st
            .sent
            .as_ref()
            .and_then(|before| diff::changes(before, &sent, &self.conn.shared.layer_diffs));
        if type_url == CLUSTER {
            // A first CDS is followed by the proxy's own EDS request, answered in full.
            if let Some((updated, _)) = &changes {
                self.eds_due.extend(updated.iter().cloned());
            }
        }
        // Listener and Cluster responses carry the whole set; others may carry only what
        // changed, and Envoy keeps what a response leaves out (xDS groups them as in Delta;
        // Istio's incremental EDS). So an endpoint or cluster change costs each proxy the
        // changed endpoints, not every cluster's.
        let partial = match changes {
            Some((mut updated, _)) if type_url == ENDPOINT && !force => {
                diff::add_due(&mut updated, &due, &sent);
                Some(updated)
            }
            _ => None,
        };
        if partial.as_ref().is_some_and(|p| p.is_empty()) {
            st.sent_version = version;
            st.sent = Some(sent);
            return Ok(());
        }
        let nonce = next_nonce();
        st.nonce = nonce.clone();
        st.sent_version = version.clone();
        st.sent = Some(sent.clone());
        let (response, count, bytes) = match &partial {
            Some(rs) => (
                wire::sotw_response(&version, type_url, &nonce, wire::SotwBody::Resources(rs)),
                rs.len(),
                rs.iter().map(|r| r.size()).sum(),
            ),
            None => {
                let (count, bytes) = sent.iter().fold((0, 0), |(c, b), r| (c + 1, b + r.size()));
                let body = wire::SotwBody::Whole(&sent);
                (
                    wire::sotw_response(&version, type_url, &nonce, body),
                    count,
                    bytes,
                )
            }
        };
        tracing::debug!(
            type_url,
            version,
            count,
            partial = partial.is_some(),
            "push"
        );
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

    async fn on_request(&mut self, req: Box<DiscoveryRequest>) -> Result<(), ()> {
        let Some(type_url) = stream::served(&req.type_url) else {
            return Ok(());
        };
        let limit = self.conn.shared.max_subscribed_names;
        if req.resource_names.len() > limit {
            let status = Status::resource_exhausted(format!(
                "{} names {} resources, over the limit of {limit} per type",
                req.type_url,
                req.resource_names.len()
            ));
            return stream::refuse(&mut self.tx, status).await;
        }
        let st = self.types.entry(type_url);
        let reply = stream::record_reply(
            &self.conn,
            type_url,
            &st.nonce,
            &req.response_nonce,
            req.error_detail.as_ref(),
            &req.version_info,
        );
        if reply == Reply::Stale {
            return Ok(());
        }
        let wildcard = is_wildcard_type(type_url)
            && (req.resource_names.is_empty() || req.resource_names.iter().any(|n| n == "*"));
        let empty = ResourceSet::default();
        let available = self.conn.resources.get(type_url).unwrap_or(&empty);
        let st = self.types.get_mut(type_url).expect("inserted above");
        let first = st.nonce.is_empty();
        // Envoy repeats every name in each ACK (all clusters, for EDS): the same list as last
        // time is told by its fingerprint, not looked up name by name.
        let fingerprint = names_fingerprint(&req.resource_names);
        let unchanged = match &st.subscription {
            None => wildcard,
            Some(_) if !wildcard && st.requested == Some(fingerprint) => true,
            Some(sub) => !wildcard && sub.is_requested_by(&req.resource_names, available),
        };
        st.requested = Some(fingerprint);
        if !unchanged {
            st.subscription =
                (!wildcard).then(|| Subscription::requested(&req.resource_names, available));
        }
        if first || !unchanged {
            // A new subscription always gets an answer, even an unchanged or empty one.
            self.push(type_url, true).await?;
        }
        Ok(())
    }
}

impl<A: Authenticator, S: SecretSource> Protocol<A, S> for TypeState {
    type Request = DiscoveryRequest;
    const NAME: &'static str = "sotw";

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    async fn on_request(s: &mut Sotw<A, S>, req: Box<DiscoveryRequest>) -> Result<(), ()> {
        s.on_request(req).await
    }

    async fn push_type(s: &mut Sotw<A, S>, type_url: &'static str) -> Result<(), ()> {
        s.push(type_url, false).await
    }
}

pub(crate) fn serve<A: Authenticator, S: SecretSource>(
    opening: Box<stream::Opening<A, S, DiscoveryRequest>>,
) -> impl Future<Output = ()> + Send {
    stream::serve::<A, S, TypeState>(opening)
}
