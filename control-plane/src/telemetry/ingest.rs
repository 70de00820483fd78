//! The gRPC access-log service: authenticates each stream like ADS, then records every entry
//! against the stream's identity. A bad or unlabelled message is skipped, never fatal.

use super::metrics::{Direction, MeshMetrics, Reporter};
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
    access_log_service_server::{AccessLogService, AccessLogServiceServer},
    stream_access_logs_message::LogEntries,
};
use meshd_model::MeshConfig;
use meshd_xds::proxy::Identity;
use meshd_xds::server::Authenticator;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

pub struct AccessLogIngest<A> {
    auth: A,
    metrics: Arc<MeshMetrics>,
    mesh: watch::Receiver<Arc<MeshConfig>>,
}

impl<A: Authenticator> AccessLogIngest<A> {
    pub fn new(
        auth: A,
        metrics: Arc<MeshMetrics>,
        mesh: watch::Receiver<Arc<MeshConfig>>,
    ) -> AccessLogIngest<A> {
        AccessLogIngest {
            auth,
            metrics,
            mesh,
        }
    }

    pub fn into_service(self) -> AccessLogServiceServer<Self> {
        AccessLogServiceServer::new(self)
    }

    /// The reporter's app/version labels come from the registry, never from the stream.
    fn reporter(&self, identity: Identity) -> Reporter {
        let mesh = self.mesh.borrow().clone();
        let w = mesh.workload(&identity.workload, &identity.namespace);
        let label = |key: &str| {
            w.and_then(|w| w.labels.get(key).cloned())
                .unwrap_or_else(|| "unknown".into())
        };
        Reporter {
            app: label("app"),
            version: label("version"),
            identity,
        }
    }

    /// Records one message; the direction is per stream (first message's identifier) but
    /// Envoy may repeat it, so a later identifier wins.
    pub fn record(&self, reporter: &Reporter, dir: Direction, msg: &StreamAccessLogsMessage) {
        match &msg.log_entries {
            Some(LogEntries::HttpLogs(h)) => {
                for e in &h.log_entry {
                    self.metrics.record_http(reporter, dir, e);
                }
            }
            Some(LogEntries::TcpLogs(t)) => {
                for e in &t.log_entry {
                    self.metrics.record_tcp(reporter, dir, e);
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
        let reporter = self.reporter(identity);
        let mut stream = request.into_inner();
        let mut dir = None;
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    span.in_scope(|| tracing::debug!(error = %e, "access-log stream ended"));
                    break;
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
            if let Some(d) = dir {
                self.record(&reporter, d, &msg);
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}
