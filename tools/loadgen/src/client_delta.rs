//! One simulated proxy on an incremental (Delta) ADS stream: subscribes, applies added and removed
//! resources, ACKs or NACKs each response, and reports every ACK.

use super::{
    Ack, Connection, DecodeCache, Deps, ProxySpec, Responses, dependent_type, grpc_frame, nack,
    open_stream, type_index, utf8,
};
use crate::scan::{self, Fields, Take};
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use foldhash::HashMap;
use meshd_xds::resource::{CLUSTER, ENDPOINT, LISTENER, SECRET};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::mpsc;

/// A Delta response as the client keeps it.
#[derive(Default)]
pub(super) struct DeltaResponse {
    pub(super) type_url: String,
    pub(super) nonce: String,
    /// CDS/LDS: each resource's name and what it refers to.
    pub(super) updated: Vec<(Arc<str>, Deps)>,
    pub(super) removed: Vec<String>,
    /// EDS with churn tracking: the newest churned endpoint id among the updated resources.
    pub(super) churn: u32,
}

/// Reads DeltaDiscoveryResponses: resources = 2, type_url = 4, nonce = 5, removed = 6.
pub(super) struct DeltaFields {
    pub(super) cache: Arc<DecodeCache>,
    pub(super) current: DeltaResponse,
    pub(super) bytes: u64,
}

impl Fields for DeltaFields {
    type Message = DeltaResponse;

    fn start(&mut self, _len: usize) {
        self.current = DeltaResponse::default();
    }

    fn field(&mut self, number: u32, len: usize) -> Take {
        match number {
            4..=6 => Take::Capture,
            2 => {
                self.bytes += len as u64;
                // Routes and secrets are not looked into, endpoints only to follow churn.
                if self.current.type_url.is_empty()
                    || dependent_type(&self.current.type_url).is_some()
                    || (self.cache.track_churn && self.current.type_url == ENDPOINT)
                {
                    Take::Capture
                } else {
                    Take::Skip
                }
            }
            _ => Take::Skip,
        }
    }

    fn captured(&mut self, number: u32, bytes: Bytes) {
        match number {
            4 => self.current.type_url = utf8(&bytes),
            5 => self.current.nonce = utf8(&bytes),
            6 => self.current.removed.push(utf8(&bytes)),
            2 => {
                // Resource: version = 1, resource = 2 (Any), name = 3.
                let dependent = dependent_type(&self.current.type_url).map(|(t, _)| t);
                let churn = self.cache.track_churn && self.current.type_url == ENDPOINT;
                if dependent.is_none() && !churn {
                    return;
                }
                let (mut name, mut version, mut any) = (None, None, None);
                for (n, v) in scan::fields(&bytes) {
                    match n {
                        1 => version = Some(v),
                        2 => any = Some(v),
                        3 => name = Some(v),
                        _ => {}
                    }
                }
                let (Some(name), Some(any)) = (name, any) else {
                    return;
                };
                let version = std::str::from_utf8(version.unwrap_or_default()).unwrap_or("");
                let name = self.cache.intern(std::str::from_utf8(name).unwrap_or(""));
                match dependent {
                    Some(t) => {
                        let deps = self.cache.deps(t, version, any);
                        self.current.updated.push((name, deps));
                    }
                    None => {
                        let id = self.cache.churn_id(name, version, any);
                        self.current.churn = self.current.churn.max(id);
                    }
                }
            }
            _ => {}
        }
    }

    fn end(&mut self) -> anyhow::Result<DeltaResponse> {
        self.cache
            .bytes_received
            .fetch_add(std::mem::take(&mut self.bytes), Ordering::Relaxed);
        Ok(std::mem::take(&mut self.current))
    }
}

/// Runs one simulated proxy over Delta until the stream ends.
pub async fn run_delta(
    conn: Connection,
    spec: ProxySpec,
    cache: Arc<DecodeCache>,
    acks: mpsc::UnboundedSender<Ack>,
    nack_fraction: f64,
) -> anyhow::Result<()> {
    let (tx, body) = open_stream(conn, "DeltaAggregatedResources", &spec.credential).await?;
    for request in [
        DeltaDiscoveryRequest {
            node: Some(Node {
                id: spec.node_id.clone(),
                ..Default::default()
            }),
            type_url: CLUSTER.into(),
            ..Default::default()
        },
        DeltaDiscoveryRequest {
            type_url: LISTENER.into(),
            ..Default::default()
        },
        DeltaDiscoveryRequest {
            type_url: SECRET.into(),
            resource_names_subscribe: vec!["default".into(), "ROOTCA".into()],
            ..Default::default()
        },
    ] {
        tx.send(grpc_frame(&request)).await?;
    }
    // Per wildcard type, what each held resource refers to; per dependent type, how many held
    // resources refer to each name. Updated by what each response changes, as Envoy does, so a
    // one-cluster change costs the client one cluster, not the mesh.
    let mut held: HashMap<&'static str, HashMap<Arc<str>, Deps>> = HashMap::default();
    let mut refs: HashMap<&'static str, HashMap<Arc<str>, u32>> = HashMap::default();
    let mut seq = 0u64;
    let mut responses = Responses::new(
        body,
        DeltaFields {
            cache: cache.clone(),
            current: DeltaResponse::default(),
            bytes: 0,
        },
    );
    while let Some(resp) = responses.next().await? {
        seq += 1;
        let reject = nack(spec.index, seq, nack_fraction);
        let request = DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: reject.then(|| RpcStatus {
                code: 3,
                message: "load test: rejected on purpose".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        tx.send(grpc_frame(&request)).await?;
        let _ = acks.send(Ack {
            proxy: spec.index,
            type_index: type_index(&resp.type_url),
            at: Instant::now(),
            churn: resp.churn,
        });
        let Some((ty, dep)) = dependent_type(&resp.type_url) else {
            continue;
        };
        let held = held.entry(ty).or_default();
        let counts = refs.entry(dep).or_default();
        let mut touched: HashMap<Arc<str>, bool> = HashMap::with_capacity_and_hasher(
            resp.updated.len() + resp.removed.len(),
            Default::default(),
        );
        held.reserve(resp.updated.len());
        let mut adjust = |names: &Deps, up: bool| {
            for n in names.iter() {
                let c = counts.entry(n.clone()).or_insert(0);
                touched.entry(n.clone()).or_insert(*c > 0);
                if up {
                    *c += 1;
                } else {
                    *c = c.saturating_sub(1);
                }
            }
        };
        for name in &resp.removed {
            if let Some(old) = held.remove(name.as_str()) {
                adjust(&old, false);
            }
        }
        for (name, deps) in resp.updated {
            adjust(&deps, true);
            if let Some(old) = held.insert(name, deps) {
                adjust(&old, false);
            }
        }
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        for (name, before) in touched {
            let after = counts.get(&name).is_some_and(|c| *c > 0);
            if !after {
                counts.remove(&name);
            }
            match (before, after) {
                (false, true) => subscribe.push(name.to_string()),
                (true, false) => unsubscribe.push(name.to_string()),
                _ => {}
            }
        }
        if !subscribe.is_empty() || !unsubscribe.is_empty() {
            let request = DeltaDiscoveryRequest {
                type_url: dep.into(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..Default::default()
            };
            tx.send(grpc_frame(&request)).await?;
        }
    }
    Ok(())
}
