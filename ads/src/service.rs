//! The ADS gRPC service: routes each call to the SotW or Delta stream task after authenticating
//! it, and answers with the response body the stream task fills through `wire`.

use crate::stream::Opening;
use crate::wire::{self, FrameBody, Requests};
use crate::{Authenticator, SecretSource, Shared, delta, sotw};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

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
            let (tx, rx) = wire::channel();
            let (body, max) = (req.into_body(), shared.max_request_bytes);
            if delta {
                tokio::spawn(delta::serve(Box::new(Opening {
                    shared,
                    identity,
                    requests: Requests::new(body, max),
                    tx,
                })));
            } else {
                tokio::spawn(sotw::serve(Box::new(Opening {
                    shared,
                    identity,
                    requests: Requests::new(body, max),
                    tx,
                })));
            }
            Ok(grpc_response(Body::new(FrameBody::new(rx))))
        })
    }
}
