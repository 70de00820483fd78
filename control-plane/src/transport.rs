//! Transport limits of every listener — xDS (15010), xDS and CA over TLS (15012), admin (15014),
//! webhook (15017) — and the one connection loop that enforces them.
//!
//! tonic's and axum's own servers leave the dangerous defaults in place: tonic turns off h2's
//! cap on locally generated resets and advertises no MAX_CONCURRENT_STREAMS, neither bounds how
//! long a connection may sit without sending its preface or its request headers, neither caps
//! open connections. So every port is served here, on hyper-util's server, with the limits of
//! [`TransportLimits`]. Requests carry the peer's address (`axum::extract::ConnectInfo` and
//! tonic's `TcpConnectInfo`), which the gRPC ports use to rate-limit failed authentications per
//! remote IP ([`AuthFailures`]).

use crate::accept::Admitted;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;
use tonic::codegen::{BoxFuture, Service, http};

pub use crate::transport_limits::{AuthFailures, TransportLimits};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a listener serves: a cloneable HTTP service that answers every request (errors are
/// responses), its futures movable to the connection's task.
pub trait ConnService<B>:
    Service<
        http::Request<Incoming>,
        Response = http::Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> ConnService<B> for S where
    S: Service<
            http::Request<Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A response body a connection can stream.
pub trait ResponseBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

impl<B> ResponseBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

/// How one listener serves its connections.
#[derive(Clone, Debug)]
pub struct ConnOptions {
    /// Which listener, for logs.
    pub name: &'static str,
    /// gRPC only (the xDS ports); otherwise HTTP/1.1 and HTTP/2.
    pub http2_only: bool,
    /// Close (GOAWAY, then `grace`) after about this long; each connection draws its own age
    /// within ±10% so a fleet connected at once does not reconnect at once.
    pub max_age: Option<Duration>,
    pub max_age_grace: Duration,
    /// Before the first request (TLS handshake, HTTP/2 preface, first headers).
    pub handshake_timeout: Duration,
    /// With no request in flight.
    pub idle_timeout: Duration,
    pub builder: auto::Builder<TokioExecutor>,
}

impl ConnOptions {
    /// An xDS port: HTTP/2 only, with keepalive pings and a jittered maximum age.
    pub fn xds(name: &'static str, limits: &TransportLimits) -> ConnOptions {
        let mut builder = builder(limits);
        builder
            .http2()
            .keep_alive_interval(limits.keepalive_interval)
            .keep_alive_timeout(limits.keepalive_timeout);
        ConnOptions {
            name,
            http2_only: true,
            max_age: Some(limits.xds_max_connection_age),
            max_age_grace: limits.xds_max_connection_age_grace,
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.xds_idle_timeout,
            builder: builder.http2_only(),
        }
    }

    /// The admin or webhook port: HTTP/1.1 and HTTP/2, no maximum age.
    pub fn http(name: &'static str, limits: &TransportLimits) -> ConnOptions {
        ConnOptions {
            name,
            http2_only: false,
            max_age: None,
            max_age_grace: Duration::ZERO,
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.http_idle_timeout,
            builder: builder(limits),
        }
    }
}

fn builder(limits: &TransportLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_local_error_reset_streams(limits.max_local_error_reset_streams)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_header_list_size(limits.max_header_list_size);
    b
}

/// What a connection is doing: requests ever started, requests still open.
#[derive(Clone, Copy, Default)]
struct Activity {
    started: u64,
    open: u64,
}

/// Held by a request until its response body is done (or dropped).
struct Open(Arc<watch::Sender<Activity>>);

impl Open {
    fn start(activity: &Arc<watch::Sender<Activity>>) -> Open {
        activity.send_modify(|a| {
            a.started += 1;
            a.open += 1;
        });
        Open(activity.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|a| a.open = a.open.saturating_sub(1));
    }
}

/// A response body that keeps its request counted as open while it streams.
struct Tracked<B> {
    body: B,
    _open: Open,
}

impl<B> http_body::Body for Tracked<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// `base` ±10%, drawn per connection (gRPC's MAX_CONNECTION_AGE jitter).
fn jittered(base: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // In [0.9, 1.1).
    let factor = 0.9 + (r % 10_000) as f64 / 50_000.0;
    base.mul_f64(factor)
}

/// Serves the admitted connections until `stop` turns true, then lets open connections finish
/// (GOAWAY / `Connection: close`) and returns when they have. `tls`: handshake each connection
/// first, within the handshake timeout.
pub async fn serve<S, B>(
    incoming: impl Stream<Item = Admitted> + Send + 'static,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    opts: ConnOptions,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()>
where
    S: ConnService<B>,
    B: ResponseBody,
{
    let mut incoming = std::pin::pin!(incoming);
    let mut conns = tokio::task::JoinSet::new();
    // One copy of the options for every connection of the listener (not one each).
    let opts = Arc::new(opts);
    loop {
        let admitted = tokio::select! {
            next = incoming.next() => match next {
                Some(a) => a,
                None => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        while conns.try_join_next().is_some() {}
        // A plaintext connection's task is spawned without the TLS one's states: a task is as
        // large as its largest state, and it lives as long as the proxy stays connected.
        let (service, opts, stop) = (service.clone(), opts.clone(), stop.clone());
        match &tls {
            None => conns.spawn(plain_connection(admitted, service, opts, stop)),
            Some(acceptor) => conns.spawn(tls_connection(
                admitted,
                acceptor.clone(),
                service,
                opts,
                stop,
            )),
        };
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// What a connection's loop starts with, handed to it in one box: a future keeps room for its
/// arguments in every state, and the I/O (a TLS stream is ≈ 1.2 KB) also lives inside the
/// HTTP connection; the task lives as long as the proxy stays connected.
struct Accepted<I, S> {
    io: I,
    peer: SocketAddr,
    service: S,
    opts: Arc<ConnOptions>,
    stop: watch::Receiver<bool>,
    /// The connection's place under the listener's cap, free once it is closed.
    slot: OwnedSemaphorePermit,
}

fn plain_connection<S, B>(
    admitted: Admitted,
    service: S,
    opts: Arc<ConnOptions>,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send
where
    S: ConnService<B>,
    B: ResponseBody,
{
    let Admitted { tcp, peer, slot } = admitted;
    drive(Box::new(Accepted {
        io: TokioIo::new(tcp),
        peer,
        service,
        opts,
        stop,
        slot,
    }))
}

async fn tls_connection<S, B>(
    admitted: Admitted,
    acceptor: tokio_rustls::TlsAcceptor,
    service: S,
    opts: Arc<ConnOptions>,
    stop: watch::Receiver<bool>,
) where
    S: ConnService<B>,
    B: ResponseBody,
{
    let Admitted { tcp, peer, slot } = admitted;
    let name = opts.name;
    // The handshake's outcome is let go before the connection is served (a `match` on it would
    // keep it, ≈ 1.2 KB, in the task for the connection's life).
    let tls = match tokio::time::timeout(opts.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(listener = name, %peer, "TLS handshake timed out");
            return;
        }
    };
    drive(Box::new(Accepted {
        io: TokioIo::new(tls),
        peer,
        service,
        opts,
        stop,
        slot,
    }))
    .await
}

/// Serves one connection until it ends, closing it (GOAWAY / `Connection: close`, then a grace
/// period) when it reaches its maximum age, when it has had no request open for the idle
/// timeout, or when the server stops; dropping it when no request came within the handshake
/// timeout.
async fn drive<I, S, B>(accepted: Box<Accepted<I, S>>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: ConnService<B>,
    B: ResponseBody,
{
    let Accepted {
        io,
        peer,
        service,
        opts,
        mut stop,
        slot: _slot,
    } = *accepted;
    let activity = Arc::new(watch::Sender::new(Activity::default()));
    let mut activity_changes = activity.subscribe();
    let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        let open = Open::start(&activity);
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(peer),
            });
        let mut inner = service.clone();
        async move {
            futures::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            let resp = inner.call(req).await?;
            Ok::<_, Infallible>(resp.map(|body| Tracked { body, _open: open }))
        }
    });
    let conn = opts.builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let age = opts.max_age.map(|a| Instant::now() + jittered(a));
    // One timer, set to the nearest deadline, for all of them: each timer is 112 bytes of a
    // task every connected proxy has.
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    // Since when the connection's requests have been as they are now.
    let mut quiet_since = Instant::now();
    let mut draining = false;
    let mut cut_at: Option<Instant> = None;
    loop {
        let now = *activity_changes.borrow_and_update();
        let idle_at = (!draining && now.open == 0).then(|| {
            quiet_since
                + if now.started == 0 {
                    opts.handshake_timeout
                } else {
                    opts.idle_timeout
                }
        });
        let age_at = age.filter(|_| !draining);
        let next = [cut_at, age_at, idle_at].into_iter().flatten().min();
        if let Some(at) = next {
            timer.as_mut().reset(at);
        }
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(listener = opts.name, %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = timer.as_mut(), if next.is_some() => {
                let at = Instant::now();
                if cut_at.is_some_and(|c| at >= c) {
                    tracing::debug!(listener = opts.name, %peer, "connection closed: past its grace period");
                    return;
                }
                if age_at.is_some_and(|a| at >= a) {
                    tracing::debug!(listener = opts.name, %peer, "connection reached its maximum age: GOAWAY");
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                    cut_at = Some(at + opts.max_age_grace);
                } else if idle_at.is_some_and(|i| at >= i) {
                    if now.started == 0 {
                        tracing::debug!(listener = opts.name, %peer, "connection closed: no request within the handshake timeout");
                        return;
                    }
                    tracing::debug!(listener = opts.name, %peer, "connection closed: idle");
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                    cut_at = Some(at + opts.max_age_grace.max(Duration::from_secs(1)));
                }
            }
            changed = activity_changes.changed(), if !draining => {
                quiet_since = Instant::now();
                if changed.is_err() {
                    // The connection's service is gone (it holds the sender): nothing more
                    // can be asked of it.
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                    cut_at = Some(quiet_since + opts.max_age_grace);
                }
            }
            _ = stop.wait_for(|s| *s), if !draining => {
                // Streams end on the server's drain signal; the app's drain deadline cuts
                // what does not.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// Wraps a gRPC service: a remote IP that failed authentication too often lately is refused
/// with RESOURCE_EXHAUSTED before the service (and its TokenReview) sees the request; each
/// UNAUTHENTICATED answer counts against the caller's IP.
#[derive(Clone)]
pub struct GrpcAuthLimit<S> {
    inner: S,
    failures: Arc<AuthFailures>,
}

impl<S> GrpcAuthLimit<S> {
    pub fn new(inner: S, failures: Arc<AuthFailures>) -> Self {
        GrpcAuthLimit { inner, failures }
    }
}

fn peer_ip<B>(req: &http::Request<B>) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

impl<S, B> Service<http::Request<B>> for GrpcAuthLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let ip = peer_ip(&req);
        if let Some(ip) = ip
            && !self.failures.allow(ip)
        {
            let status = tonic::Status::resource_exhausted(format!(
                "too many failed authentications from {ip}; retry later"
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let failures = self.failures.clone();
        let call = self.inner.call(req);
        Box::pin(async move {
            let resp = call.await?;
            let unauthenticated = resp
                .headers()
                .get(tonic::Status::GRPC_STATUS)
                .is_some_and(|s| s.as_bytes() == b"16");
            if unauthenticated && let Some(ip) = ip {
                failures.failed(ip);
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct NoCertificate;

    impl rustls::server::ResolvesServerCert for NoCertificate {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }

    /// A connection's task lives as long as its proxy stays connected, so its size is paid
    /// per proxy: a plaintext connection must not carry the TLS stream's room (it did when one
    /// future served both: 7.4 KB each), and neither keeps its arguments or the handshake's
    /// outcome beside the connection, nor a timer per deadline (2736 and 6400 bytes before;
    /// 2224 and 3608 when written).
    #[tokio::test]
    async fn a_connection_task_keeps_only_the_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cap = Arc::new(tokio::sync::Semaphore::new(2));
        let mut admitted = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (tcp, peer) = listener.accept().await.unwrap();
            let slot = cap.clone().try_acquire_owned().unwrap();
            admitted.push(Admitted { tcp, peer, slot });
        }
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let opts = Arc::new(ConnOptions::xds("xds", &TransportLimits::default()));
        let (_stop_tx, stop) = watch::channel(false);
        let tls = tls_connection(
            admitted.pop().unwrap(),
            acceptor,
            axum::Router::new(),
            opts.clone(),
            stop.clone(),
        );
        let plain = plain_connection(admitted.pop().unwrap(), axum::Router::new(), opts, stop);
        let tls_stream =
            std::mem::size_of::<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>();
        let (plain, tls) = (std::mem::size_of_val(&plain), std::mem::size_of_val(&tls));
        assert!(
            plain + tls_stream <= tls,
            "plaintext task {plain} bytes, TLS task {tls} bytes, a TLS stream {tls_stream} bytes"
        );
        assert!(
            plain <= 2304,
            "a plaintext connection's task is {plain} bytes"
        );
        assert!(tls <= 2304 + 1536, "a TLS connection's task is {tls} bytes");
    }
}

#[cfg(all(test, not(any(fuzzing, meshd_system_alloc))))]
#[path = "transport_idle_tests.rs"]
mod idle_tests;
