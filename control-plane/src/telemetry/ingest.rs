//! The gRPC access-log service: authenticates each stream like ADS, then records every entry
//! against the stream's identity. A bad or unlabelled message is skipped, never fatal.

use super::directory::Directory;
use super::labels::{Direction, Reporter};
use super::metrics::MeshMetrics;
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
    access_log_service_server::{AccessLogService, AccessLogServiceServer},
    stream_access_logs_message::LogEntries,
};
use meshd_ads::Authenticator;
use meshd_model::MeshConfig;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

pub struct AccessLogIngest<A> {
    auth: A,
    metrics: Arc<MeshMetrics>,
    mesh: watch::Receiver<Arc<MeshConfig>>,
    trust_domain: String,
    /// The directory of the mesh config it was built from, shared by every stream.
    directory: Mutex<(Arc<MeshConfig>, Arc<Directory>)>,
}

impl<A: Authenticator> AccessLogIngest<A> {
    pub fn new(
        auth: A,
        metrics: Arc<MeshMetrics>,
        mesh: watch::Receiver<Arc<MeshConfig>>,
        trust_domain: &str,
    ) -> AccessLogIngest<A> {
        let current = mesh.borrow().clone();
        let directory = Arc::new(Directory::build(&current, trust_domain));
        AccessLogIngest {
            auth,
            metrics,
            mesh,
            trust_domain: trust_domain.to_string(),
            directory: Mutex::new((current, directory)),
        }
    }

    /// Served with the same message-size cap as ADS.
    pub fn into_service(self, max_message_bytes: usize) -> AccessLogServiceServer<Self> {
        AccessLogServiceServer::new(self).max_decoding_message_size(max_message_bytes)
    }

    /// The directory of the current mesh config, rebuilt once per config change.
    pub fn directory(&self) -> Arc<Directory> {
        let mesh = self.mesh.borrow().clone();
        let mut cached = self.directory.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&cached.0, &mesh) {
            let directory = Arc::new(Directory::build(&mesh, &self.trust_domain));
            *cached = (mesh, directory);
        }
        cached.1.clone()
    }

    /// Records one message's entries for the stream's reporter.
    pub fn record(
        &self,
        reporter: &Reporter,
        dir: Direction,
        msg: &StreamAccessLogsMessage,
        directory: &Directory,
    ) {
        match &msg.log_entries {
            Some(LogEntries::HttpLogs(h)) => {
                for e in &h.log_entry {
                    self.metrics.record_http(reporter, dir, e, directory);
                }
            }
            Some(LogEntries::TcpLogs(t)) => {
                for e in &t.log_entry {
                    self.metrics.record_tcp(reporter, dir, e, directory);
                }
            }
            None => {}
        }
    }
}

#[tonic::async_trait]
impl<A: Authenticator> AccessLogService for AccessLogIngest<A> {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let identity = self
            .auth
            .authenticate(request.metadata())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "access-log stream rejected");
                Status::unauthenticated(e)
            })?;
        let proxy = format!("{}.{}", identity.workload, identity.namespace);
        let span = tracing::info_span!("access_log_stream", proxy = %proxy);
        let mut directory = self.directory();
        let mut reporter = Reporter::new(identity, &directory);
        let mut stream = request.into_inner();
        let mut dir = None;
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    // An oversized or undecodable message ends the stream with its status.
                    span.in_scope(|| tracing::debug!(error = %e, "access-log stream ended"));
                    return Err(e);
                }
            };
            if let Some(id) = &msg.identifier {
                dir = Direction::from_log_name(&id.log_name);
                if dir.is_none() {
                    span.in_scope(|| {
                        tracing::warn!(log_name = %id.log_name, "access-log stream with a log name meshd did not generate; its entries are ignored")
                    });
                }
            }
            let current = self.directory();
            if !Arc::ptr_eq(&current, &directory) {
                // The registry changed: the reporter's own labels may have too.
                reporter = Reporter::new(reporter.identity, &current);
                directory = current;
            }
            // A workload gone from the registry would bring back the series pruned with it.
            let registered = directory
                .workload(&reporter.identity.workload, &reporter.identity.namespace)
                .is_some();
            if let (Some(d), true) = (dir, registered) {
                self.record(&reporter, d, &msg, &directory);
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}
