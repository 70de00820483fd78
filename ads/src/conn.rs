//! What SotW and Delta streams share: binding the node to the proven identity, recomputing the
//! proxy's resources, and waiting for the next reason to push.

use super::status::{
    ProxyHandle, ProxyStatus, SentResources, SyncStatus, TypeStatus, TypeStatuses,
};
use super::{Authenticator, Metrics, SecretSource, Shared};
use envoy_types::pb::envoy::config::core::v3::Node;
use meshd_xds::generate::ProxyResources;
use meshd_xds::proxy::{BindError, Identity, Proxy, RegistrationError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;
use tokio::sync::watch;
use tonic::Status;

static NONCE: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_nonce() -> String {
    format!("{:x}", NONCE.fetch_add(1, Ordering::Relaxed))
}

/// Whether `proxy` may still speak for its identity, by the registry of `snapshot`.
fn check_binding(
    snapshot: &meshd_xds::MeshSnapshot,
    identity: &Identity,
    node_id: &str,
) -> Result<Proxy, BindError> {
    let registered = snapshot
        .index
        .workload(&identity.workload, &identity.namespace);
    meshd_xds::proxy::bind(identity, node_id, registered)
}

/// Waits up to `wait` for the registry to show `identity`'s workload running under the service
/// account it proves: what a caller without an xDS node (CreateCertificate) must pass. A Pod
/// just started may not be in the snapshot yet.
pub async fn wait_registered(
    mut mesh: watch::Receiver<Arc<meshd_xds::MeshSnapshot>>,
    identity: &Identity,
    wait: std::time::Duration,
) -> Result<(), RegistrationError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let checked = {
            let snapshot = mesh.borrow_and_update();
            meshd_xds::proxy::registered_as(
                identity,
                snapshot
                    .index
                    .workload(&identity.workload, &identity.namespace),
            )
            .map(|_| ())
        };
        match checked {
            Err(e) if e.registry_may_catch_up() => {
                match tokio::time::timeout_at(deadline, mesh.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return Err(e),
                }
            }
            other => return other,
        }
    }
}

fn refusal(e: &BindError) -> Status {
    match e {
        BindError::Malformed(m) => Status::invalid_argument(m.clone()),
        other => Status::permission_denied(other.to_string()),
    }
}

/// A node may only speak for the identity its credential proved, as the registry knows that
/// identity now. A workload the registry has not caught up with yet (a Pod just started, a
/// WorkloadEntry just written) gets until `bind_wait` for the next snapshots to show it.
pub(crate) async fn bind_proxy<A, S>(
    shared: &Shared<A, S>,
    node: Option<&Node>,
    identity: Identity,
) -> Result<Proxy, Status> {
    let node = node.ok_or_else(|| Status::invalid_argument("first request carries no node"))?;
    let deadline = tokio::time::Instant::now() + shared.bind_wait;
    let mut mesh = shared.mesh.clone();
    loop {
        let checked = check_binding(&mesh.borrow_and_update(), &identity, &node.id);
        match checked {
            Ok(mut p) => {
                p.metadata = node_metadata(node);
                return Ok(p);
            }
            Err(e) if e.registry_may_catch_up() => {
                match tokio::time::timeout_at(deadline, mesh.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return Err(refusal(&e)),
                }
            }
            Err(e) => return Err(refusal(&e)),
        }
    }
}

/// The node's string metadata, bounded (`NodeMetadata::from_fields`); other kinds are left out.
fn node_metadata(node: &Node) -> meshd_xds::proxy::NodeMetadata {
    use envoy_types::pb::google::protobuf::value::Kind;
    use meshd_xds::proxy::{NodeMetadata, NodeMetadataExt};
    let Some(meta) = &node.metadata else {
        return NodeMetadata::new();
    };
    // Sorted, so which fields a bound keeps does not depend on hash order.
    let mut strings: Vec<(&str, &str)> = meta
        .fields
        .iter()
        .filter_map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(s)) => Some((k.as_str(), s.as_str())),
            _ => None,
        })
        .collect();
    strings.sort_unstable();
    NodeMetadata::from_fields(strings)
}

pub(crate) enum Wake {
    Mesh,
    Secrets,
    Drain,
}

/// One connected proxy's stream state shared by both protocols.
pub(crate) struct Conn<A, S: SecretSource> {
    pub shared: Arc<Shared<A, S>>,
    pub proxy: Proxy,
    pub status: ProxyHandle,
    pub resources: ProxyResources,
    pub mesh_version: u64,
    mesh: watch::Receiver<Arc<meshd_xds::MeshSnapshot>>,
    secrets: watch::Receiver<u64>,
    drain: watch::Receiver<bool>,
}

impl<A: Authenticator, S: SecretSource> Conn<A, S> {
    pub async fn open(shared: Arc<Shared<A, S>>, proxy: Proxy, protocol: &'static str) -> Self {
        let status = shared.registry.connect(ProxyStatus {
            proxy_id: proxy.id.clone(),
            identity: proxy.identity.spiffe_id(),
            proven: proxy.identity.clone(),
            connected_at: SystemTime::now(),
            protocol,
            types: TypeStatuses::default(),
        });
        shared.metrics.connected.fetch_add(1, Ordering::Relaxed);
        shared.metrics.pilot.xds.inc();
        shared.secrets.acquire(&proxy);
        let mut mesh = shared.mesh.clone();
        mesh.mark_unchanged();
        let mut secrets = shared.secrets.changes();
        secrets.mark_unchanged();
        let drain = shared.drain.clone();
        let (mesh_version, resources) = shared.compute(&proxy).await;
        tracing::info!(proxy = %proxy.id, identity = %proxy.identity.spiffe_id(), protocol, "proxy connected");
        Conn {
            shared,
            proxy,
            status,
            resources,
            mesh_version,
            mesh,
            secrets,
            drain,
        }
    }

    /// Recomputes the proxy's resources; refuses (the stream must end) once the registry no
    /// longer backs its identity: its WorkloadEntry or Pod gone, its service account or address
    /// changed. That is how a credential is revoked while its stream is up.
    pub async fn refresh(&mut self) -> Result<(), Box<Status>> {
        let bound = check_binding(
            &self.shared.mesh.borrow(),
            &self.proxy.identity,
            &self.proxy.id,
        );
        if let Err(e) = bound {
            tracing::warn!(proxy = %self.proxy.id, error = %e, "identity no longer bound; ending the stream");
            return Err(Box::new(refusal(&e)));
        }
        let (v, r) = self.shared.compute(&self.proxy).await;
        self.mesh_version = v;
        self.resources = r;
        Ok(())
    }

    /// A push caused by a new snapshot is done: the time since that snapshot's build began.
    pub fn converged(&self) {
        let built_at = self.mesh.borrow().built_at;
        self.shared.metrics.pilot.converged(built_at.elapsed());
    }

    /// Waits for a config change, a secret change or rotation deadline, or drain.
    pub async fn wake(&mut self) -> Wake {
        if *self.drain.borrow() {
            return Wake::Drain;
        }
        let deadline = self.shared.secrets.next_refresh(&self.proxy);
        let rotation = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = self.mesh.changed() => if r.is_ok() { Wake::Mesh } else { Wake::Drain },
            r = self.secrets.changed() => if r.is_ok() { Wake::Secrets } else { Wake::Drain },
            _ = rotation => Wake::Secrets,
            _ = self.drain.changed() => Wake::Drain,
        }
    }

    /// `type_url`: a served type's static (a stream keeps no state for the others).
    pub fn update_type(&self, type_url: &'static str, f: impl FnOnce(&mut TypeStatus)) {
        let mut st = self.status.lock().expect("status");
        f(st.types.entry(type_url));
    }

    pub fn record_sent(
        &self,
        type_url: &'static str,
        version: &str,
        nonce: &str,
        sent: SentResources,
        bytes: usize,
    ) {
        Metrics::inc(&self.shared.metrics.pushes, 1);
        self.shared.metrics.pilot.pushed(type_url);
        Metrics::inc(&self.shared.metrics.push_bytes, bytes as u64);
        self.update_type(type_url, |t| {
            t.sent_version = version.to_string();
            t.nonce = nonce.to_string();
            t.status = SyncStatus::Stale;
            t.sent = sent;
        });
    }

    pub fn record_ack(&self, type_url: &'static str, version: &str) {
        Metrics::inc(&self.shared.metrics.acks, 1);
        self.update_type(type_url, |t| {
            t.acked_version = version.to_string();
            t.status = SyncStatus::Synced;
            t.error = None;
        });
    }

    pub fn record_nack(&self, type_url: &'static str, message: &str) {
        Metrics::inc(&self.shared.metrics.nacks, 1);
        self.shared.metrics.pilot.rejected(type_url);
        tracing::warn!(proxy = %self.proxy.id, type_url, error = message, "proxy rejected config (NACK); it keeps its last good config");
        self.update_type(type_url, |t| {
            t.status = SyncStatus::Nacked;
            t.error = Some(message.to_string());
        });
    }
}

impl<A, S: SecretSource> Drop for Conn<A, S> {
    fn drop(&mut self) {
        self.shared.registry.disconnect(&self.status);
        // A stream that was never given secrets must not evict another stream's.
        if self.shared.serve_secrets {
            self.shared.secrets.release(&self.proxy);
        }
        self.shared
            .metrics
            .connected
            .fetch_sub(1, Ordering::Relaxed);
        self.shared.metrics.pilot.xds.dec();
        tracing::info!(proxy = %self.proxy.id, "proxy disconnected");
    }
}

/// Reads a stream's first request and binds its node to the proven identity; on failure the
/// stream ends with the reason and `None` is returned.
pub(crate) async fn open_stream<A, S, Req: prost::Message + Default>(
    shared: &Shared<A, S>,
    requests: &mut super::wire::Requests<Req>,
    identity: Identity,
    node: impl Fn(&Req) -> Option<&Node>,
    tx: &mut super::wire::Sender,
) -> Option<(Proxy, Box<Req>)> {
    use futures::StreamExt;
    let first = match requests.next().await {
        Some(Ok(r)) => r,
        Some(Err(status)) => {
            let _ = tx.send(super::wire::Outgoing::End(Box::new(status))).await;
            return None;
        }
        None => return None,
    };
    match bind_proxy(shared, node(&first), identity).await {
        Ok(p) => Some((p, first)),
        Err(status) => {
            Metrics::inc(&shared.metrics.streams_rejected, 1);
            tracing::warn!(error = %status.message(), "xDS stream refused: node not bound to its credential");
            let _ = tx.send(super::wire::Outgoing::End(Box::new(status))).await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

    fn string(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.into())),
        }
    }

    #[test]
    fn node_metadata_keeps_bounded_string_fields_only() {
        let mut fields: std::collections::HashMap<String, Value> = (0..100)
            .map(|i| (format!("K{i:03}"), string("v")))
            .collect();
        fields.insert("ISTIO_VERSION".into(), string("1.24.0"));
        fields.insert(
            "LABELS".into(),
            Value {
                kind: Some(Kind::StructValue(Struct::default())),
            },
        );
        let node = Node {
            metadata: Some(Struct { fields }),
            ..Default::default()
        };
        let m = node_metadata(&node);
        use meshd_xds::proxy::{NodeMetadata, NodeMetadataExt};
        assert_eq!(m.len(), <NodeMetadata as NodeMetadataExt>::MAX_FIELDS);
        // Sorted before the bound: ISTIO_VERSION (upper case I) is among the kept ones.
        assert_eq!(m.get("ISTIO_VERSION").map(String::as_str), Some("1.24.0"));
        assert!(!m.contains_key("LABELS"));
        let huge = Node {
            metadata: Some(Struct {
                fields: [("BIG".to_string(), string(&"x".repeat(10_000)))].into(),
            }),
            ..Default::default()
        };
        assert!(node_metadata(&huge).is_empty());
    }
}
