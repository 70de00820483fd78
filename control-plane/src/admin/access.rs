//! Who may call what on the admin API (15014): the policy as a pure function, and the axum
//! middleware that applies it to every request.
//!
//! - Open to anyone who can reach the port: `GET`/`HEAD` of `/metrics`, `/version` and
//!   `/healthz/*` (probes and Prometheus scrapers come from other hosts).
//! - Everything else — every `/debug/*` view and every state-changing action such as
//!   `POST /debug/ca/rotate-root`, and any path not named above — needs a trusted caller:
//!   - a connection from loopback (an operator on the machine or inside the pod, including
//!     `kubectl port-forward`, which connects to the pod's own loopback), or
//!   - in Kubernetes mode, `Authorization: Bearer <token>` that the API server's TokenReview
//!     authenticates and whose user a SubjectAccessReview allows
//!     ([`crate::kube::admin_auth`]): verb `get` for reads (`GET`/`HEAD`), `create` for `POST`
//!     (`update`/`delete` for `PUT`/`PATCH`/`DELETE`), on resource `debug` of API group
//!     `meshd.io` in meshd's namespace, with the endpoint under `/debug/` as the resource
//!     name (`syncz`, `ca/rotate-root`, …). The chart's `<release>-admin` ClusterRole grants
//!     both verbs, `<release>-debug-viewer` only `get`.
//! - Refusals: 401 (no or unusable credential, `WWW-Authenticate: Bearer`), 403 (the
//!   SubjectAccessReview said no), 503 (the API server could not be asked), each with a one-line
//!   reason.
//!
//! A connection whose peer address is unknown (no `ConnectInfo`) is never treated as loopback.

pub use crate::mode::{AuthOutcome, CallerCheck, SAR_GROUP, SAR_RESOURCE};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What a request to the admin API needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Anyone who can reach the port.
    Open,
    /// A trusted caller, allowed `verb` on the `debug` resource named `name`.
    Admin { verb: &'static str, name: String },
}

/// What `method path` needs. Everything not explicitly open needs an admin.
pub fn need(method: &Method, path: &str) -> Need {
    let read = method == Method::GET || method == Method::HEAD;
    let dot_segment = path.split('/').any(|s| s == "." || s == "..");
    let open_path = path == "/metrics"
        || path == "/version"
        || (path.starts_with("/healthz/") && path.len() > "/healthz/".len());
    if read && open_path && !dot_segment {
        return Need::Open;
    }
    let verb = match *method {
        Method::GET | Method::HEAD => "get",
        Method::PUT | Method::PATCH => "update",
        Method::DELETE => "delete",
        _ => "create",
    };
    let name = path
        .strip_prefix("/debug/")
        .unwrap_or_else(|| path.trim_start_matches('/'));
    Need::Admin {
        verb,
        name: name.to_string(),
    }
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny { status: StatusCode, reason: String },
}

impl Decision {
    fn deny(status: StatusCode, reason: impl Into<String>) -> Decision {
        Decision::Deny {
            status,
            reason: reason.into(),
        }
    }
}

/// Whether a connection from `peer` comes from this machine's (or pod's) own loopback.
pub fn is_loopback(peer: Option<IpAddr>) -> bool {
    peer.is_some_and(|ip| ip.to_canonical().is_loopback())
}

/// The policy: may a request `method path` from `peer`, whose credential check found `auth`,
/// go through?
pub fn decide(peer: Option<IpAddr>, method: &Method, path: &str, auth: &AuthOutcome) -> Decision {
    let (verb, name) = match need(method, path) {
        Need::Open => return Decision::Allow,
        Need::Admin { verb, name } => (verb, name),
    };
    if is_loopback(peer) {
        return Decision::Allow;
    }
    let what = format!("{method} {path} is for administrators");
    match auth {
        AuthOutcome::Allowed { .. } => Decision::Allow,
        AuthOutcome::NoCredential => Decision::deny(
            StatusCode::UNAUTHORIZED,
            format!(
                "{what}: connect from loopback or send `Authorization: Bearer <Kubernetes token>`"
            ),
        ),
        AuthOutcome::Unusable(why) => {
            Decision::deny(StatusCode::UNAUTHORIZED, format!("{what}: {why}"))
        }
        AuthOutcome::Unauthenticated(why) => Decision::deny(
            StatusCode::UNAUTHORIZED,
            format!("{what}: the token is not valid: {why}"),
        ),
        AuthOutcome::Forbidden { user, reason } => Decision::deny(
            StatusCode::FORBIDDEN,
            format!(
                "{what}: `{user}` may not {verb} {SAR_RESOURCE}.{SAR_GROUP} `{name}`{}",
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({reason})")
                }
            ),
        ),
        AuthOutcome::Unavailable(why) => Decision::deny(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what}: cannot check the credential now: {why}"),
        ),
    }
}

/// The bearer token of `headers`, or what is wrong with the `Authorization` header.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, String> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| "the Authorization header is not text".to_string())?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err("the Authorization header is not `Bearer <token>`".to_string()),
    }
}

/// Decides one request: the credential is only checked when the peer is not trusted and the
/// path is not open.
pub async fn check(
    checker: Option<&dyn CallerCheck>,
    peer: Option<IpAddr>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Decision {
    let without = decide(peer, method, path, &AuthOutcome::NoCredential);
    if without == Decision::Allow {
        return without;
    }
    let Need::Admin { verb, name } = need(method, path) else {
        return Decision::Allow;
    };
    let outcome = match bearer(headers) {
        Ok(None) => return without,
        Err(why) => AuthOutcome::Unusable(why),
        Ok(Some(token)) => match checker {
            Some(c) => c.check(token, verb, &name).await,
            None => AuthOutcome::Unusable(
                "bearer tokens are checked in Kubernetes mode only; connect from loopback".into(),
            ),
        },
    };
    if let AuthOutcome::Allowed { user } = &outcome {
        tracing::info!(%user, %method, path, "admin request allowed by SubjectAccessReview");
    }
    decide(peer, method, path, &outcome)
}

/// The middleware: refuses what [`check`] denies before any handler runs.
pub async fn guard(
    State(checker): State<Option<Arc<dyn CallerCheck>>>,
    request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let decision = check(
        checker.as_deref(),
        peer,
        request.method(),
        request.uri().path(),
        request.headers(),
    )
    .await;
    match decision {
        Decision::Allow => next.run(request).await,
        Decision::Deny { status, reason } => {
            tracing::warn!(peer = ?peer, method = %request.method(), path = request.uri().path(), %status, %reason, "admin request refused");
            let mut response = (status, format!("{reason}\n")).into_response();
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"meshd-admin\""),
                );
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;

    const OFF_HOST: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 44, 0, 7)));
    const LOOPBACK: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    fn allowed() -> AuthOutcome {
        AuthOutcome::Allowed {
            user: "alice".into(),
        }
    }

    fn forbidden() -> AuthOutcome {
        AuthOutcome::Forbidden {
            user: "mallory".into(),
            reason: String::new(),
        }
    }

    fn status(d: &Decision) -> u16 {
        match d {
            Decision::Allow => 200,
            Decision::Deny { status, .. } => status.as_u16(),
        }
    }

    #[test]
    fn policy_table() {
        let mapped: Option<IpAddr> = Some("::ffff:127.0.0.1".parse().unwrap());
        let v6_lo: Option<IpAddr> = Some("::1".parse().unwrap());
        let unavailable = AuthOutcome::Unavailable("timeout".into());
        let bad = AuthOutcome::Unauthenticated("expired".into());
        let get = Method::GET;
        let post = Method::POST;
        #[rustfmt::skip]
        let table: &[(Option<IpAddr>, &Method, &str, AuthOutcome, u16)] = &[
            // Open paths: anyone, any credential.
            (OFF_HOST, &get, "/metrics", AuthOutcome::NoCredential, 200),
            (OFF_HOST, &get, "/version", AuthOutcome::NoCredential, 200),
            (OFF_HOST, &get, "/healthz/ready", AuthOutcome::NoCredential, 200),
            (OFF_HOST, &Method::HEAD, "/healthz/ready", AuthOutcome::NoCredential, 200),
            (None, &get, "/metrics", AuthOutcome::NoCredential, 200),
            (OFF_HOST, &get, "/metrics", forbidden(), 200),
            // Debug views and actions from off-host: a credential decides.
            (OFF_HOST, &get, "/debug/syncz", AuthOutcome::NoCredential, 401),
            (OFF_HOST, &post, "/debug/ca/rotate-root", AuthOutcome::NoCredential, 401),
            (OFF_HOST, &get, "/debug/certs", bad.clone(), 401),
            (OFF_HOST, &get, "/debug/syncz", AuthOutcome::Unusable("file mode".into()), 401),
            (OFF_HOST, &post, "/debug/ca/rotate-root", forbidden(), 403),
            (OFF_HOST, &get, "/debug/config_dump", unavailable.clone(), 503),
            (OFF_HOST, &post, "/debug/ca/rotate-root", allowed(), 200),
            (OFF_HOST, &get, "/debug/registryz", allowed(), 200),
            // An unknown peer is not loopback.
            (None, &get, "/debug/syncz", AuthOutcome::NoCredential, 401),
            // Loopback: trusted, whatever the credential says.
            (LOOPBACK, &get, "/debug/syncz", AuthOutcome::NoCredential, 200),
            (LOOPBACK, &post, "/debug/ca/rotate-root", forbidden(), 200),
            (mapped, &post, "/debug/ca/rotate-root", AuthOutcome::NoCredential, 200),
            (v6_lo, &get, "/debug/heap", AuthOutcome::NoCredential, 200),
            // Not an open path: state-changing methods, unknown paths, path tricks.
            (OFF_HOST, &post, "/metrics", AuthOutcome::NoCredential, 401),
            (OFF_HOST, &Method::DELETE, "/healthz/ready", AuthOutcome::NoCredential, 401),
            (OFF_HOST, &get, "/", AuthOutcome::NoCredential, 401),
            (OFF_HOST, &get, "/dashboard", AuthOutcome::NoCredential, 401),
            (OFF_HOST, &get, "/healthz/", AuthOutcome::NoCredential, 401),
            (OFF_HOST, &get, "/healthz/../debug/syncz", AuthOutcome::NoCredential, 401),
            (OFF_HOST, &get, "/metrics/", AuthOutcome::NoCredential, 401),
            (OFF_HOST, &get, "//metrics", AuthOutcome::NoCredential, 401),
            (OFF_HOST, &get, "/METRICS", AuthOutcome::NoCredential, 401),
        ];
        for (peer, method, path, auth, want) in table {
            let got = decide(*peer, method, path, auth);
            assert_eq!(
                status(&got),
                *want,
                "{peer:?} {method} {path} {auth:?} → {got:?}"
            );
        }
    }

    #[test]
    fn what_a_request_asks_for() {
        let admin = |verb, name: &str| Need::Admin {
            verb,
            name: name.into(),
        };
        assert_eq!(need(&Method::GET, "/debug/syncz"), admin("get", "syncz"));
        assert_eq!(
            need(&Method::POST, "/debug/ca/rotate-root"),
            admin("create", "ca/rotate-root")
        );
        assert_eq!(
            need(&Method::GET, "/debug/ca/rotate-root"),
            admin("get", "ca/rotate-root")
        );
        assert_eq!(need(&Method::PUT, "/metrics"), admin("update", "metrics"));
        assert_eq!(need(&Method::DELETE, "/x"), admin("delete", "x"));
        assert_eq!(need(&Method::GET, "/healthz/live"), Need::Open);
    }

    #[test]
    fn refusals_say_why_in_one_line() {
        for (auth, words) in [
            (AuthOutcome::NoCredential, "Bearer"),
            (
                forbidden(),
                "`mallory` may not create debug.meshd.io `ca/rotate-root`",
            ),
            (
                AuthOutcome::Unauthenticated("token expired".into()),
                "expired",
            ),
        ] {
            let Decision::Deny { reason, .. } =
                decide(OFF_HOST, &Method::POST, "/debug/ca/rotate-root", &auth)
            else {
                panic!("{auth:?} allowed");
            };
            assert!(reason.contains(words), "{reason}");
            assert!(!reason.contains('\n'), "{reason}");
        }
    }

    /// Records what it was asked; answers `outcome`.
    struct Fixed {
        outcome: AuthOutcome,
        asked: std::sync::Mutex<Vec<(String, &'static str, String)>>,
    }

    impl CallerCheck for Fixed {
        fn check<'a>(
            &'a self,
            token: &'a str,
            verb: &'static str,
            name: &'a str,
        ) -> Pin<Box<dyn Future<Output = AuthOutcome> + Send + 'a>> {
            self.asked
                .lock()
                .unwrap()
                .push((token.into(), verb, name.into()));
            Box::pin(async move { self.outcome.clone() })
        }
    }

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = authorization {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[tokio::test]
    async fn credentials_are_checked_only_when_needed() {
        let checker = Fixed {
            outcome: allowed(),
            asked: Default::default(),
        };
        let c: Option<&dyn CallerCheck> = Some(&checker);
        let token = headers(Some("Bearer t0k"));
        // Open path and loopback: the API server is not asked.
        assert_eq!(
            check(c, OFF_HOST, &Method::GET, "/metrics", &token).await,
            Decision::Allow
        );
        assert_eq!(
            check(c, LOOPBACK, &Method::GET, "/debug/syncz", &token).await,
            Decision::Allow
        );
        assert!(checker.asked.lock().unwrap().is_empty());
        // Off-host with a token: asked with the verb and endpoint.
        assert_eq!(
            check(c, OFF_HOST, &Method::POST, "/debug/ca/rotate-root", &token).await,
            Decision::Allow
        );
        assert_eq!(
            checker.asked.lock().unwrap().as_slice(),
            [("t0k".to_string(), "create", "ca/rotate-root".to_string())]
        );
        // Not a bearer token, or no checker (file mode): 401 without asking.
        let basic = headers(Some("Basic YTpi"));
        let d = check(c, OFF_HOST, &Method::GET, "/debug/syncz", &basic).await;
        assert_eq!(status(&d), 401, "{d:?}");
        let d = check(None, OFF_HOST, &Method::GET, "/debug/syncz", &token).await;
        assert_eq!(status(&d), 401, "{d:?}");
        assert_eq!(checker.asked.lock().unwrap().len(), 1);
        let d = check(c, OFF_HOST, &Method::GET, "/debug/syncz", &headers(None)).await;
        assert_eq!(status(&d), 401, "{d:?}");
    }
}
