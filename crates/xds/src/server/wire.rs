//! The ADS service on the wire. Requests are decoded by tonic as usual; responses are written as
//! gRPC frames assembled from resources encoded once and shared by reference, so a push to
//! thousands of proxies copies no resource bytes and no stream keeps a buffer the size of its
//! largest response.

use super::{Authenticator, SecretSource, Shared, delta, sotw};
use crate::resource::{SharedResource, length_delimited};
use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codec::Streaming;
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Code, Status};

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const MAX_REQUEST: usize = 16 << 20;

/// What a stream task hands to the wire.
pub(crate) enum Outgoing {
    /// One gRPC message as a chain of shared chunks.
    Message(Vec<Bytes>),
    /// End the stream with this status.
    End(Status),
}

pub(crate) type Sender = mpsc::Sender<Outgoing>;

fn string_field(tag: u32, value: &str, out: &mut Vec<u8>) {
    if !value.is_empty() {
        out.extend(length_delimited(tag, value.as_bytes()));
    }
}

fn frame(head: Vec<u8>, fields: impl Iterator<Item = Bytes>) -> Vec<Bytes> {
    let fields: Vec<Bytes> = fields.collect();
    let len = head.len() + fields.iter().map(Bytes::len).sum::<usize>();
    let mut first = Vec::with_capacity(5 + head.len());
    first.push(0u8);
    first.extend((len as u32).to_be_bytes());
    first.extend(head);
    let mut chunks = Vec::with_capacity(fields.len() + 1);
    chunks.push(Bytes::from(first));
    chunks.extend(fields);
    chunks
}

/// A DiscoveryResponse: version_info = 1, resources = 2, type_url = 4, nonce = 5.
pub(crate) fn sotw_response<'a>(
    version: &str,
    type_url: &str,
    nonce: &str,
    resources: impl Iterator<Item = &'a SharedResource>,
) -> Outgoing {
    let mut head = Vec::new();
    string_field(1, version, &mut head);
    string_field(4, type_url, &mut head);
    string_field(5, nonce, &mut head);
    Outgoing::Message(frame(head, resources.map(|r| r.sotw_field())))
}

/// A DeltaDiscoveryResponse: system_version_info = 1, resources = 2, type_url = 4, nonce = 5,
/// removed_resources = 6.
pub(crate) fn delta_response<'a>(
    version: &str,
    type_url: &str,
    nonce: &str,
    resources: impl Iterator<Item = &'a SharedResource>,
    removed: &[String],
) -> Outgoing {
    let mut head = Vec::new();
    string_field(1, version, &mut head);
    string_field(4, type_url, &mut head);
    string_field(5, nonce, &mut head);
    for name in removed {
        head.extend(length_delimited(6, name.as_bytes()));
    }
    Outgoing::Message(frame(head, resources.map(|r| r.delta_field())))
}

/// The response body: gRPC messages as they come, then the status as trailers.
struct FrameBody {
    rx: mpsc::Receiver<Outgoing>,
    pending: VecDeque<Bytes>,
    done: bool,
}

impl http_body::Body for FrameBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let status = match this.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Outgoing::Message(chunks))) => {
                this.pending.extend(chunks);
                let first = this.pending.pop_front().unwrap_or_default();
                return Poll::Ready(Some(Ok(http_body::Frame::data(first))));
            }
            Poll::Ready(Some(Outgoing::End(status))) => status,
            // The stream task ended (drain, proxy gone): a clean end; Envoy reconnects.
            Poll::Ready(None) => Status::new(Code::Ok, ""),
        };
        this.done = true;
        let mut trailers = http::HeaderMap::new();
        let _ = status.add_header(&mut trailers);
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }
}

pub struct AdsService<A, S> {
    shared: Arc<Shared<A, S>>,
}

impl<A, S> AdsService<A, S> {
    pub(crate) fn new(shared: Arc<Shared<A, S>>) -> Self {
        AdsService { shared }
    }
}

impl<A, S> Clone for AdsService<A, S> {
    fn clone(&self) -> Self {
        AdsService {
            shared: self.shared.clone(),
        }
    }
}

impl<A, S> NamedService for AdsService<A, S> {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

fn grpc_response(body: Body) -> http::Response<Body> {
    let mut resp = http::Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    resp
}

impl<A: Authenticator, S: SecretSource> tonic::codegen::Service<http::Request<Body>>
    for AdsService<A, S>
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let delta = match req.uri().path() {
                SOTW_PATH => false,
                DELTA_PATH => true,
                other => {
                    return Ok(Status::unimplemented(format!("no method {other}")).into_http());
                }
            };
            let metadata = MetadataMap::from_headers(req.headers().clone());
            let identity = match shared.authenticate(&metadata).await {
                Ok(i) => i,
                Err(status) => return Ok(status.into_http()),
            };
            let (tx, rx) = mpsc::channel(4);
            let body = req.into_body();
            if delta {
                let requests = Streaming::new_request(
                    tonic_prost::ProstDecoder::<DeltaDiscoveryRequest>::default(),
                    body,
                    None,
                    Some(MAX_REQUEST),
                );
                tokio::spawn(delta::serve(shared, identity, requests, tx));
            } else {
                let requests = Streaming::new_request(
                    tonic_prost::ProstDecoder::<DiscoveryRequest>::default(),
                    body,
                    None,
                    Some(MAX_REQUEST),
                );
                tokio::spawn(sotw::serve(shared, identity, requests, tx));
            }
            Ok(grpc_response(Body::new(FrameBody {
                rx,
                pending: VecDeque::new(),
                done: false,
            })))
        })
    }
}
