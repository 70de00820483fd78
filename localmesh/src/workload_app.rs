//! `meshd workload`: the small HTTP workload behind each sidecar in the demo and the tests.
//!
//! Every path answers JSON:
//! `{"service", "path", "method", "query", "caller", "headers"}` where `caller` is the SPIFFE ID
//! in the URI= field of the last element of `x-forwarded-client-cert` (or null).
//!
//! Test knobs (query parameters): `status=NNN`, `delay_ms=N`, `fail_first=N&key=K` (the first N
//! requests with that key answer 503). `GET /__count?key=K` answers how many requests with that key
//! were seen (`{"key", "count"}`).
//!
//! With `--ext-authz` it is instead an Envoy ext_authz HTTP authorizer for the tests: each check
//! answers 200 when it carries `x-ext-authz: allow`, else 403, and is counted under the key
//! `check:<path>` (`/__count?key=check:/open`). With `--ext-authz-grpc` it is Envoy's gRPC
//! Authorization service, allowing the principals of `--ext-authz-allow` (ext_authz_grpc.rs).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

#[derive(clap::Args, Debug, Clone)]
pub struct WorkloadArgs {
    /// Service name reported in every answer.
    #[arg(long)]
    pub name: String,
    /// Port to listen on.
    #[arg(long, default_value = "8080")]
    pub port: u16,
    /// Address to listen on: an IP (with `--port`), or a unix socket, `unix:///path` or
    /// `unix://@name` (abstract).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// On SIGTERM, keep serving this long (`5s`, `500ms`) before the graceful shutdown. The
    /// kubelet signals a pod as its endpoint is being removed, not after: callers whose
    /// endpoint list is a moment old still send here, as to any well-behaved Kubernetes app.
    #[arg(long, default_value = "0s", value_parser = parse_delay)]
    pub shutdown_delay: std::time::Duration,
    /// Answer as an ext_authz HTTP authorizer (see the module comment).
    #[arg(long, conflicts_with = "ext_authz_grpc")]
    pub ext_authz: bool,
    /// Serve Envoy's gRPC Authorization service (see `ext_authz_grpc.rs`).
    #[arg(long)]
    pub ext_authz_grpc: bool,
    /// With `--ext-authz-grpc`: a source principal (`spiffe://...`) to allow; repeatable.
    #[arg(long, requires = "ext_authz_grpc")]
    pub ext_authz_allow: Vec<String>,
}

fn parse_delay(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("`{s}` is not a delay such as `5s` or `500ms`");
    let (digits, millis) = match s.strip_suffix("ms") {
        Some(d) => (d, 1),
        None => (s.strip_suffix('s').ok_or_else(bad)?, 1000),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(millis)
        .filter(|ms| *ms <= 600_000)
        .map(std::time::Duration::from_millis)
        .ok_or_else(bad)
}

#[derive(Default)]
struct AppState {
    name: String,
    ext_authz: bool,
    counts: Mutex<HashMap<String, u64>>,
}

/// The SPIFFE ID (URI= field) of the last element of an `x-forwarded-client-cert` header.
///
/// Elements are separated by `,`, fields by `;`, values may be double-quoted (and then contain
/// `,`, `;` and `\"`).
pub fn parse_xfcc_uri(header: &str) -> Option<String> {
    // Split into elements, respecting quotes.
    let mut elements: Vec<Vec<(String, String)>> = vec![Vec::new()];
    let mut key = String::new();
    let mut value = String::new();
    let mut in_value = false;
    let mut in_quotes = false;
    let mut chars = header.chars();
    let flush = |elements: &mut Vec<Vec<(String, String)>>,
                 key: &mut String,
                 value: &mut String,
                 in_value: &mut bool| {
        let k = key.trim().to_string();
        if !k.is_empty() {
            elements
                .last_mut()
                .unwrap()
                .push((k, value.trim().to_string()));
        }
        key.clear();
        value.clear();
        *in_value = false;
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => in_quotes = false,
                _ => value.push(c),
            }
            continue;
        }
        match c {
            '"' if in_value => in_quotes = true,
            '=' if !in_value => in_value = true,
            ';' => flush(&mut elements, &mut key, &mut value, &mut in_value),
            ',' => {
                flush(&mut elements, &mut key, &mut value, &mut in_value);
                elements.push(Vec::new());
            }
            _ if in_value => value.push(c),
            _ => key.push(c),
        }
    }
    flush(&mut elements, &mut key, &mut value, &mut in_value);
    let last = elements.into_iter().rev().find(|e| !e.is_empty())?;
    last.into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("URI"))
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

fn parse_query(uri: &Uri) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(q) = uri.query() {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.insert(percent_decode(k), percent_decode(v));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn handle(State(state): State<Arc<AppState>>, req: Request<Body>) -> Response {
    let method: Method = req.method().clone();
    let uri = req.uri().clone();
    let headers: HeaderMap = req.headers().clone();
    let query = parse_query(&uri);
    let key = query.get("key").cloned();

    if uri.path() == "/__count" {
        let count = key
            .as_ref()
            .map(|k| state.counts.lock().unwrap().get(k).copied().unwrap_or(0))
            .unwrap_or(0);
        return json(
            StatusCode::OK,
            serde_json::json!({"service": state.name, "key": key, "count": count}),
        );
    }

    if state.ext_authz {
        *state
            .counts
            .lock()
            .unwrap()
            .entry(format!("check:{}", uri.path()))
            .or_insert(0) += 1;
        let allow = headers
            .get("x-ext-authz")
            .is_some_and(|v| v.as_bytes() == b"allow");
        return if allow {
            (StatusCode::OK, "allowed by ext-authz\n").into_response()
        } else {
            (StatusCode::FORBIDDEN, "denied by ext-authz\n").into_response()
        };
    }

    // Count first, so that /__count sees requests still sleeping in delay_ms.
    let seen = key.as_ref().map(|k| {
        let mut counts = state.counts.lock().unwrap();
        let c = counts.entry(k.clone()).or_insert(0);
        *c += 1;
        *c
    });

    if let Some(ms) = query.get("delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    let mut status = query
        .get("status")
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    if let (Some(n), Some(seen)) = (
        query.get("fail_first").and_then(|v| v.parse::<u64>().ok()),
        seen,
    ) && seen <= n
    {
        status = StatusCode::SERVICE_UNAVAILABLE;
    }

    let mut hmap = serde_json::Map::new();
    for (name, value) in headers.iter() {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match hmap.get_mut(name.as_str()) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                hmap.insert(name.as_str().to_string(), serde_json::Value::String(v));
            }
        }
    }
    let caller = headers
        .get("x-forwarded-client-cert")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_xfcc_uri);

    json(
        status,
        serde_json::json!({
            "service": state.name,
            "path": uri.path(),
            "method": method.as_str(),
            "query": query,
            "caller": caller,
            "headers": hmap,
            "count": seen,
        }),
    )
}

/// The router, for embedding (the demo) and tests.
pub fn router(name: &str) -> Router {
    router_with(name, false)
}

fn router_with(name: &str, ext_authz: bool) -> Router {
    router_on(Arc::new(AppState {
        name: name.to_string(),
        ext_authz,
        counts: Mutex::new(HashMap::new()),
    }))
}

fn router_on(state: Arc<AppState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// Serve the workload app named `name` on `listener` until `shutdown` completes.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    name: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_app(listener, router(name), shutdown).await
}

async fn serve_app(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving")
}

/// `meshd workload`: serve until SIGTERM or Ctrl-C.
pub async fn run(args: WorkloadArgs) -> anyhow::Result<()> {
    let delay = args.shutdown_delay;
    let shutdown = async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
        if !delay.is_zero() {
            eprintln!("meshd workload: stopping in {delay:?}, serving until then");
            tokio::time::sleep(delay).await;
        }
    };
    if let Some(path) = args.bind.strip_prefix("unix://") {
        anyhow::ensure!(!args.ext_authz_grpc, "--ext-authz-grpc listens on TCP only");
        let listener = unix_listener(path)?;
        eprintln!("meshd workload {}: listening on {}", args.name, args.bind);
        return axum::serve(listener, router_with(&args.name, args.ext_authz))
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving");
    }
    let ip: std::net::IpAddr = args
        .bind
        .parse()
        .with_context(|| format!("--bind {:?} is not an IP address", args.bind))?;
    let addr = SocketAddr::new(ip, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    eprintln!("meshd workload {}: listening on {addr}", args.name);
    if args.ext_authz_grpc {
        return ext_authz_grpc::serve(listener, &args.name, args.ext_authz_allow, shutdown).await;
    }
    serve_app(listener, router_with(&args.name, args.ext_authz), shutdown).await
}

/// A unix socket at `path` (`@name`: in the abstract namespace), open to every user: the
/// sidecar connecting to it runs as its own uid.
fn unix_listener(path: &str) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::fs::PermissionsExt;
    let std_listener = match path.strip_prefix('@') {
        Some(name) => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            std::os::unix::net::UnixListener::bind_addr(&addr)
        }
        None => {
            // A socket left by an earlier run would make the bind fail.
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {path}"));
                }
                _ => {}
            }
            let l = std::os::unix::net::UnixListener::bind(path);
            if l.is_ok() {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
            }
            l
        }
    }
    .with_context(|| format!("binding unix://{path}"))?;
    std_listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(std_listener)?)
}

mod ext_authz_grpc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_delays_parse_strictly() {
        assert_eq!(parse_delay("5s"), Ok(std::time::Duration::from_secs(5)));
        assert_eq!(
            parse_delay("250ms"),
            Ok(std::time::Duration::from_millis(250))
        );
        for bad in ["5", "-1s", "5m", "9999999999999999999s", "601s"] {
            assert!(parse_delay(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn xfcc_uri() {
        let cases: &[(&str, Option<&str>)] = &[
            ("", None),
            ("By=spiffe://cluster.local/ns/a/sa/b;Hash=abc", None),
            (
                "By=spiffe://cluster.local/ns/a/sa/b;Hash=abc;Subject=\"\";URI=spiffe://cluster.local/ns/voicecore-ai/sa/gateway",
                Some("spiffe://cluster.local/ns/voicecore-ai/sa/gateway"),
            ),
            (
                "By=spiffe://x/ns/a/sa/a;URI=spiffe://x/ns/a/sa/first,By=spiffe://x/ns/b/sa/b;URI=spiffe://x/ns/b/sa/second",
                Some("spiffe://x/ns/b/sa/second"),
            ),
            (
                "Hash=1;Subject=\"CN=foo,O=bar;baz\";URI=spiffe://td/ns/n/sa/s",
                Some("spiffe://td/ns/n/sa/s"),
            ),
            (
                "URI=\"spiffe://td/ns/n/sa/quoted\";DNS=a.b",
                Some("spiffe://td/ns/n/sa/quoted"),
            ),
            (
                "uri=spiffe://td/ns/n/sa/lower",
                Some("spiffe://td/ns/n/sa/lower"),
            ),
            // The last element has no URI: null, even though an earlier one had.
            ("URI=spiffe://td/ns/n/sa/one,Hash=2", None),
        ];
        for (h, want) in cases {
            assert_eq!(parse_xfcc_uri(h).as_deref(), *want, "header {h:?}");
        }
    }

    #[test]
    fn query_decoding() {
        let uri: Uri = "/x?a=1&b=hello%20world&c=x+y&flag&bad=%zz".parse().unwrap();
        let q = parse_query(&uri);
        assert_eq!(q["a"], "1");
        assert_eq!(q["b"], "hello world");
        assert_eq!(q["c"], "x y");
        assert_eq!(q["flag"], "");
        assert_eq!(q["bad"], "%zz");
    }

    /// Serve on an ephemeral port and talk to it with reqwest: no extra dependencies.
    async fn call(app: &Router, uri: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = app.clone();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut rb = client.get(format!("http://{addr}{uri}"));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap();
        server.abort();
        (status, body)
    }

    #[tokio::test]
    async fn answers_and_knobs() {
        let app = router("billing");
        let (s, b) = call(
            &app,
            "/v1/pay?x=1",
            &[(
                "X-Forwarded-Client-Cert",
                "By=spiffe://cluster.local/ns/v/sa/billing;URI=spiffe://cluster.local/ns/v/sa/gw",
            )],
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(b["service"], "billing");
        assert_eq!(b["path"], "/v1/pay");
        assert_eq!(b["method"], "GET");
        assert_eq!(b["caller"], "spiffe://cluster.local/ns/v/sa/gw");
        assert!(b["headers"]["x-forwarded-client-cert"].is_string());

        let (s, b) = call(&app, "/", &[]).await;
        assert_eq!(s, 200);
        assert!(b["caller"].is_null());

        let (s, _) = call(&app, "/?status=418", &[]).await;
        assert_eq!(s, 418);

        for want in [503, 503, 200, 200] {
            let (s, _) = call(&app, "/r?fail_first=2&key=k1", &[]).await;
            assert_eq!(s, want);
        }
        let (s, b) = call(&app, "/__count?key=k1", &[]).await;
        assert_eq!(s, 200);
        assert_eq!(b["count"], 4);
        let (_, b) = call(&app, "/__count?key=other", &[]).await;
        assert_eq!(b["count"], 0);

        let start = std::time::Instant::now();
        let (s, _) = call(&app, "/?delay_ms=200", &[]).await;
        assert_eq!(s, 200);
        assert!(start.elapsed() >= Duration::from_millis(200));
    }
}
