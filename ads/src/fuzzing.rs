//! The ADS request path without a network (feature `fuzzing`): bytes as they would arrive in
//! a stream's request body — gRPC-framed DiscoveryRequests or DeltaDiscoveryRequests — go
//! through the server's decoder and its SotW or Delta state machine, exactly as on the wire,
//! for one authenticated identity. The fuzz targets call [`drive_sotw`] and [`drive_delta`].

use super::stream::Opening;
use super::{AdsServer, Registry, SecretSource, ServerOptions, delta, sotw, wire};
use bytes::Bytes;
use meshd_model::MeshConfig;
use meshd_xds::proxy::{Identity, Proxy};
use meshd_xds::resource::SharedResource;
use meshd_xds::{GenOptions, MeshSnapshot};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// No secrets: the state machine, not the CA, is under test.
struct NoSecrets(watch::Sender<u64>);

impl SecretSource for NoSecrets {
    fn secrets(&self, _proxy: &Proxy) -> Result<BTreeMap<String, SharedResource>, String> {
        Ok(BTreeMap::new())
    }
    fn next_refresh(&self, _proxy: &Proxy) -> Option<Instant> {
        None
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// Never called: the driver hands the identity to the stream directly.
struct Nobody;

impl super::Authenticator for Nobody {
    async fn authenticate(
        &self,
        _metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Identity, String> {
        Err("not used".into())
    }
}

/// A request body delivering `chunks`, then its end.
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|b| Ok(http_body::Frame::data(b))),
        )
    }
}

/// A server over `config`, for `identity`; build once, drive many inputs.
pub struct Driver {
    server: AdsServer<Nobody, NoSecrets>,
    identity: Identity,
    runtime: tokio::runtime::Runtime,
    _mesh: watch::Sender<Arc<MeshSnapshot>>,
    _drain: watch::Sender<bool>,
}

impl Driver {
    pub fn new(config: MeshConfig, identity: Identity, opts: ServerOptions) -> Driver {
        let snapshot = MeshSnapshot::build(1, Arc::new(config), Arc::new(GenOptions::default()));
        let (mesh, mesh_rx) = watch::channel(Arc::new(snapshot));
        let (drain, drain_rx) = watch::channel(false);
        let server = AdsServer::new(
            Nobody,
            NoSecrets(watch::Sender::new(0)),
            mesh_rx,
            Arc::new(Registry::default()),
            drain_rx,
            Default::default(),
            opts,
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        Driver {
            server,
            identity,
            runtime,
            _mesh: mesh,
            _drain: drain,
        }
    }

    /// Runs one SotW stream whose request body is `body` (split into DATA chunks at
    /// `split`), to its end; returns how many messages the server sent.
    pub fn drive_sotw(&self, body: &[u8], split: usize) -> usize {
        let requests = wire::Requests::new(tonic::body::Body::new(chunks(body, split)), self.max());
        let shared = self.server.shared.clone();
        let identity = self.identity.clone();
        self.run(move |tx| {
            sotw::serve(Box::new(Opening {
                shared,
                identity,
                requests,
                tx,
            }))
        })
    }

    /// As [`Driver::drive_sotw`], for a Delta stream.
    pub fn drive_delta(&self, body: &[u8], split: usize) -> usize {
        let requests = wire::Requests::new(tonic::body::Body::new(chunks(body, split)), self.max());
        let shared = self.server.shared.clone();
        let identity = self.identity.clone();
        self.run(move |tx| {
            delta::serve(Box::new(Opening {
                shared,
                identity,
                requests,
                tx,
            }))
        })
    }

    fn max(&self) -> usize {
        self.server.shared.max_request_bytes
    }

    fn run<F: Future<Output = ()> + Send + 'static>(
        &self,
        stream: impl FnOnce(wire::Sender) -> F,
    ) -> usize {
        let (tx, mut rx) = wire::channel();
        self.runtime.block_on(async move {
            let task = tokio::spawn(stream(tx));
            let mut sent = 0;
            while futures::StreamExt::next(&mut rx).await.is_some() {
                sent += 1;
            }
            task.await.expect("the stream task does not panic");
            // Whatever the stream did, its proxy is gone from the registry once it ended.
            assert!(
                self.server.shared.registry.is_empty(),
                "a finished stream left state behind"
            );
            sent
        })
    }
}

fn chunks(body: &[u8], split: usize) -> Chunks {
    let split = split.max(1);
    Chunks(body.chunks(split).map(Bytes::copy_from_slice).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
    use prost::Message;

    fn framed(m: &impl Message) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut out = vec![0u8];
        out.extend((body.len() as u32).to_be_bytes());
        out.extend(body);
        out
    }

    fn driver() -> Driver {
        Driver::new(
            MeshConfig::default(),
            Identity {
                workload: "web".into(),
                namespace: "shop".into(),
                service_account: "web".into(),
                trust_domain: "cluster.local".into(),
            },
            ServerOptions::default(),
        )
    }

    #[test]
    fn a_stream_runs_to_its_end_without_a_network() {
        let d = driver();
        let node = Some(Node {
            id: "sidecar~10.0.0.1~web.shop~shop.svc.cluster.local".into(),
            ..Default::default()
        });
        let mut body = framed(&DiscoveryRequest {
            node: node.clone(),
            type_url: meshd_xds::resource::CLUSTER.into(),
            ..Default::default()
        });
        body.extend(framed(&DiscoveryRequest {
            type_url: "type.googleapis.com/made.up".into(),
            ..Default::default()
        }));
        assert_eq!(
            d.drive_sotw(&body, 7),
            1,
            "one CDS response, none for made-up types"
        );
        let body = framed(&DeltaDiscoveryRequest {
            node,
            type_url: meshd_xds::resource::CLUSTER.into(),
            ..Default::default()
        });
        assert_eq!(d.drive_delta(&body, 3), 1);
        // Garbage ends the stream with a status, never a panic.
        assert_eq!(d.drive_sotw(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff], 2), 1);
    }

    /// A stream's task lives as long as its proxy is connected, and a task is as large as its
    /// future's largest state: the stream's life is one async fn whose requests are boxed
    /// (3864 bytes for a Delta stream when nested async fns each kept their arguments and
    /// every state kept room for a 624-byte request).
    #[test]
    fn a_stream_task_keeps_little_between_messages() {
        let d = driver();
        let (tx, _rx) = wire::channel();
        let requests = wire::Requests::new(tonic::body::Body::empty(), d.max());
        let delta = delta::serve(Box::new(Opening {
            shared: d.server.shared.clone(),
            identity: d.identity.clone(),
            requests,
            tx,
        }));
        let (tx, _rx) = wire::channel();
        let requests = wire::Requests::new(tonic::body::Body::empty(), d.max());
        let sotw = sotw::serve(Box::new(Opening {
            shared: d.server.shared.clone(),
            identity: d.identity.clone(),
            requests,
            tx,
        }));
        for (protocol, size) in [
            ("Delta", std::mem::size_of_val(&delta)),
            ("SotW", std::mem::size_of_val(&sotw)),
        ] {
            assert!(size <= 1536, "a {protocol} stream's future is {size} bytes");
        }
    }
}
