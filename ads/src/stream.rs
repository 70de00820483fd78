//! The life of an ADS stream, the same for SotW and Delta: binding the first request's node,
//! the request/wake loop, the ACK and NACK bookkeeping of a reply, and sending and recording a
//! push. Kept in one place so that what the two protocols must agree on (what the sync status
//! and the pilot_* metrics say, when a stream ends and what it tells the proxy) cannot drift;
//! each protocol file holds only how it answers a request and what a push carries.

use super::conn::{Conn, Wake, open_stream};
use super::status::{ByType, SentResources};
use super::wire;
use super::{Authenticator, SecretSource, Shared};
use envoy_types::pb::envoy::config::core::v3::Node;
use futures::StreamExt;
use meshd_xds::proxy::Identity;
use meshd_xds::resource::{PUSH_ORDER, SharedResource};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// One stream's state; `T`, what its protocol keeps of each type.
pub(crate) struct Stream<A, S: SecretSource, T> {
    pub conn: Conn<A, S>,
    /// By type URL: only the types the proxy asked for.
    pub types: ByType<T>,
    pub tx: wire::Sender,
    /// Clusters (re)created since their endpoints last were sent. Envoy warms each until its
    /// endpoints arrive, changed or not; so their EDS follows CDS, as in Istio.
    pub eds_due: Vec<SharedResource>,
}

/// What differs between SotW and Delta, implemented by the protocol's per-type state: the
/// request message, how a request is answered, and what a push of one type sends.
pub(crate) trait Protocol<A: Authenticator, S: SecretSource>: Sized + Send {
    type Request: prost::Message + Default + Send + 'static;
    /// In the stream's span, its log lines and the proxy's sync status.
    const NAME: &'static str;

    fn node(request: &Self::Request) -> Option<&Node>;
    /// `Err`: the stream ends (the proxy has been told why, or is gone).
    fn on_request(
        s: &mut Stream<A, S, Self>,
        req: Box<Self::Request>,
    ) -> impl Future<Output = Result<(), ()>> + Send;
    /// Pushes what changed of one type.
    fn push_type(
        s: &mut Stream<A, S, Self>,
        type_url: &'static str,
    ) -> impl Future<Output = Result<(), ()>> + Send;
}

/// What a stream starts with, handed to its task in one box.
pub(crate) struct Opening<A, S, Req> {
    pub shared: Arc<Shared<A, S>>,
    pub identity: Identity,
    pub requests: wire::Requests<Req>,
    pub tx: wire::Sender,
}

/// Serves one ADS stream of protocol `P` until the proxy leaves, the stream fails or meshd
/// drains.
///
/// One async fn with its inputs in one box: a task is as large as its future, and a future
/// keeps room for its arguments in every state (and for each nested async fn's own), so the
/// stream's life is not split over nested functions. The first sync and each push run boxed,
/// so between messages the task holds only what a waiting stream needs (every proxy has one).
pub(crate) async fn serve<A: Authenticator, S: SecretSource, P: Protocol<A, S>>(
    opening: Box<Opening<A, S, P::Request>>,
) {
    let Opening {
        shared,
        identity,
        mut requests,
        mut tx,
    } = *opening;
    let Some((proxy, first)) = Box::pin(open_stream(
        &shared,
        &mut requests,
        identity,
        P::node,
        &mut tx,
    ))
    .await
    else {
        return;
    };
    let span = tracing::info_span!("ads", proxy = %proxy.id, protocol = P::NAME);
    let conn = Box::pin(Conn::open(shared, proxy, P::NAME).instrument(span.clone())).await;
    let mut s = Stream::<A, S, P> {
        conn,
        types: ByType::default(),
        tx,
        eds_due: Vec::new(),
    };
    if Box::pin(P::on_request(&mut s, first).instrument(span.clone()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            req = requests.next() => match req {
                Some(Ok(req)) => {
                    let answered = Box::pin(P::on_request(&mut s, req).instrument(span.clone()));
                    if answered.await.is_err() { return }
                }
                Some(Err(e)) => {
                    tracing::debug!(proxy = %s.conn.proxy.id, error = %e, "stream error");
                    // The proxy learns why (an oversized or malformed request, say).
                    let _ = s.tx.send(wire::Outgoing::End(Box::new(e))).await;
                    return;
                }
                None => return,
            },
            wake = s.conn.wake() => match wake {
                Wake::Drain => return,
                wake @ (Wake::Mesh | Wake::Secrets) => {
                    let refreshed = Box::pin(s.conn.refresh().instrument(span.clone()));
                    if let Err(status) = refreshed.await {
                        let _ = s.tx.send(wire::Outgoing::End(status)).await;
                        return;
                    }
                    let pushed = Box::pin(push_all(&mut s).instrument(span.clone()));
                    if pushed.await.is_err() { return }
                    if matches!(wake, Wake::Mesh) { s.conn.converged() }
                }
            },
        }
    }
}

/// Pushes every type, in the order Envoy needs them (clusters before their endpoints, ...).
async fn push_all<A: Authenticator, S: SecretSource, P: Protocol<A, S>>(
    s: &mut Stream<A, S, P>,
) -> Result<(), ()> {
    for type_url in PUSH_ORDER {
        P::push_type(s, type_url).await?;
    }
    Ok(())
}

/// `type_url` as its static, when meshd serves it. A type it does not serve gets no answer and
/// no state (Istio: no generator, no push), so made-up type URLs cannot grow a stream.
pub(crate) fn served(type_url: &str) -> Option<&'static str> {
    let served = meshd_xds::resource::served_type(type_url);
    if served.is_none() {
        tracing::debug!(type_url, "request for a type not served: ignored");
    }
    served
}

/// What a request said of the response it answers.
#[derive(PartialEq, Eq)]
pub(crate) enum Reply {
    /// A request that answers no response (a first request, a new subscription).
    None,
    /// It answers a response older than the latest: neither ACK nor NACK.
    Stale,
    /// The ACK or NACK of the latest response, recorded.
    Recorded,
}

/// Records the ACK (at `version`) or NACK a request carries for the latest response of its type,
/// whose nonce is `latest_nonce`.
pub(crate) fn record_reply<A: Authenticator, S: SecretSource>(
    conn: &Conn<A, S>,
    type_url: &'static str,
    latest_nonce: &str,
    response_nonce: &str,
    error: Option<&envoy_types::pb::google::rpc::Status>,
    version: &str,
) -> Reply {
    if response_nonce.is_empty() {
        return Reply::None;
    }
    if response_nonce != latest_nonce {
        tracing::debug!(type_url, "stale nonce ignored");
        return Reply::Stale;
    }
    match error {
        Some(err) => conn.record_nack(type_url, &err.message),
        None => conn.record_ack(type_url, version),
    }
    Reply::Recorded
}

/// One response on its way: what the sync status and the pilot_* metrics record of it.
pub(crate) struct Push<'a> {
    pub type_url: &'static str,
    pub version: &'a str,
    pub nonce: &'a str,
    pub sent: SentResources,
    /// The encoded size of the resources it carries.
    pub bytes: usize,
    /// When the push began (`pilot_xds_push_time`).
    pub started: Instant,
}

/// Records `push` as sent (the proxy's type goes stale until it ACKs) and sends `response`.
/// `Err`: the stream is gone.
pub(crate) async fn send_push<A: Authenticator, S: SecretSource>(
    conn: &mut Conn<A, S>,
    tx: &mut wire::Sender,
    response: wire::Outgoing,
    push: Push<'_>,
) -> Result<(), ()> {
    conn.record_sent(
        push.type_url,
        push.version,
        push.nonce,
        push.sent,
        push.bytes,
    );
    tx.send(response).await?;
    conn.shared
        .metrics
        .pilot
        .push_took(push.type_url, push.started.elapsed());
    Ok(())
}

/// Ends the stream with `status`: the proxy learns why.
pub(crate) async fn refuse(tx: &mut wire::Sender, status: tonic::Status) -> Result<(), ()> {
    let _ = tx.send(wire::Outgoing::End(Box::new(status))).await;
    Err(())
}
