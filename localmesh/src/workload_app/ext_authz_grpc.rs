//! The workload app's `--ext-authz-grpc` mode: Envoy's gRPC Authorization service
//! (`envoy.service.auth.v3.Authorization/Check`) for the tests of AuthorizationPolicy CUSTOM with
//! an `envoyExtAuthzGrpc` provider, on TCP ports as well as HTTP. A check is allowed when the
//! caller's principal (`attributes.source.principal`: the SPIFFE ID of the client certificate
//! Envoy saw) is one of `--ext-authz-allow`, else denied. Each check is counted under
//! `check:grpc` and `check:grpc:<principal>`, which the app's `GET /__count?key=...` answers over
//! HTTP/1.1 on the same port (gRPC itself is HTTP/2).

use super::{AppState, router_on};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::sync::Arc;

/// google.rpc.Code: what Envoy reads from `CheckResponse.status`.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;

struct Authorizer {
    allow: Vec<String>,
    state: Arc<AppState>,
}

impl Authorizer {
    fn decide(&self, principal: &str) -> CheckResponse {
        {
            let mut counts = self.state.counts.lock().unwrap();
            for key in ["check:grpc".to_string(), format!("check:grpc:{principal}")] {
                *counts.entry(key).or_insert(0) += 1;
            }
        }
        let allowed = !principal.is_empty() && self.allow.iter().any(|a| a == principal);
        eprintln!(
            "ext-authz-grpc: check from `{principal}`: {}",
            if allowed { "allow" } else { "deny" }
        );
        CheckResponse {
            status: Some(RpcStatus {
                code: if allowed { OK } else { PERMISSION_DENIED },
                message: String::new(),
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl Authorization for Authorizer {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let principal = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.source.as_ref())
            .map(|s| s.principal.as_str())
            .unwrap_or_default();
        Ok(tonic::Response::new(self.decide(principal)))
    }
}

/// Serve the authorizer (and the app's HTTP paths, for `/__count`) until `shutdown`.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    name: &str,
    allow: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = Arc::new(AppState {
        name: name.to_string(),
        ..Default::default()
    });
    let authorizer = Authorizer {
        allow,
        state: state.clone(),
    };
    let routes = tonic::service::Routes::from(router_on(state))
        .add_service(AuthorizationServer::new(authorizer));
    tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_listed_principals_only_and_counts_each_check() {
        let state = Arc::new(AppState::default());
        let a = Authorizer {
            allow: vec!["spiffe://cluster.local/ns/a/sa/yes".into()],
            state: state.clone(),
        };
        let code = |p: &str| a.decide(p).status.unwrap().code;
        assert_eq!(code("spiffe://cluster.local/ns/a/sa/yes"), OK);
        assert_eq!(code("spiffe://cluster.local/ns/a/sa/no"), PERMISSION_DENIED);
        assert_eq!(code(""), PERMISSION_DENIED);
        let counts = state.counts.lock().unwrap();
        assert_eq!(counts["check:grpc"], 3);
        assert_eq!(counts["check:grpc:spiffe://cluster.local/ns/a/sa/no"], 1);
    }
}
