//! A gRPC sink that accepts any call and discards it, for the minimal pair's per-request log
//! variants (`--log-paths`): the gRPC access-log stream and the OpenTelemetry access log each
//! need a server to send to, and their cost should not depend on what that server does.
//! It counts the bytes the proxies sent, so the report can say what each path puts on the wire.

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where the sink listens and what it has received.
pub(super) struct Sink {
    pub(super) addr: SocketAddr,
    received: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl Sink {
    /// Bytes of request bodies (gRPC frames) received so far.
    pub(super) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

type Frames = futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, hyper::Error>>>;

/// Answers every call, once its body has ended, with an empty message and `grpc-status: 0` in
/// the trailers: an empty `StreamAccessLogsResponse` and an empty `ExportLogsServiceResponse`
/// both encode as zero bytes.
async fn answer(
    req: Request<Incoming>,
    received: Arc<AtomicU64>,
) -> Result<Response<StreamBody<Frames>>, hyper::Error> {
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            received.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    }
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut resp = Response::new(StreamBody::new(futures::stream::iter(frames)));
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    Ok(resp)
}

/// Serves the sink on `listener` (bound where the pods reach it: the node namespace), HTTP/2
/// without TLS as the pair's static `sink` cluster speaks.
pub(super) fn start(listener: std::net::TcpListener) -> anyhow::Result<Sink> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, counter.clone()));
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    Ok(Sink {
        addr,
        received,
        _runtime: runtime,
    })
}
