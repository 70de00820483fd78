//! One simulated Envoy sidecar: ADS with wildcard CDS and LDS, then EDS and RDS for the names
//! those carry, and SDS for its certificate; every response ACKed (or a fraction NACKed).
//!
//! Each proxy opens its own HTTP/2 connection and reads responses with [`scan::Scanner`], field
//! by field: it keeps what it tracks (names, versions, nonces), not the configuration.

use crate::scan::{self, Fields, Scanner, Take};
use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use foldhash::{HashMap, HashSet};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshd_xds::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use prost::Message;
use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[path = "client_delta.rs"]
mod delta;
pub use delta::run_delta;

pub const TYPES: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET];

pub fn type_index(url: &str) -> usize {
    TYPES.iter().position(|t| *t == url).unwrap_or(0)
}

#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub proxy: u32,
    pub type_index: usize,
    pub at: Instant,
    /// EDS with churn tracking: the newest churned endpoint id in this response (0: none).
    pub churn: u32,
}

#[derive(Clone)]
pub struct ProxySpec {
    pub index: u32,
    pub node_id: String,
    pub credential: String,
}

/// What CDS/LDS payloads refer to, decoded once per distinct payload across all clients so the
/// load tool does not compete with the server for CPU.
#[derive(Default)]
pub struct DecodeCache {
    /// SotW: the EDS/RDS names a whole CDS/LDS response refers to, by (type, version_info).
    sotw: Mutex<HashMap<(&'static str, String), Names>>,
    /// Delta: the EDS/RDS names one CDS (0) or LDS (1) resource refers to, by content version.
    deps: [Mutex<HashMap<String, Deps>>; 2],
    names: Mutex<HashSet<Arc<str>>>,
    pub bytes_received: AtomicU64,
    /// Look into EDS resources for churned endpoints (`churn.rs`).
    pub track_churn: bool,
    /// Delta: the newest churned endpoint id of one ClusterLoadAssignment, by name and version.
    churn: Mutex<HashMap<(Arc<str>, String), u32>>,
    /// Streams that ended (each one reconnects).
    pub stream_errors: AtomicU64,
}

/// The names of the dependent type (EDS or RDS) a whole SotW response refers to.
type Names = Arc<Vec<String>>;

/// The names of the dependent type (EDS or RDS) one resource refers to.
type Deps = Arc<[Arc<str>]>;

/// The EDS cluster a Cluster resource names, if it is one.
fn eds_name(value: &[u8]) -> Option<String> {
    let c = Cluster::decode(value).ok()?;
    (c.cluster_discovery_type
        == Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )))
    .then_some(c.name)
}

/// The route configurations a Listener resource's HTTP connection managers name.
fn rds_names(value: &[u8], names: &mut BTreeSet<String>) {
    let Ok(l) = Listener::decode(value) else {
        return;
    };
    for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
        for f in &chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if !any.type_url.ends_with("HttpConnectionManager") {
                continue;
            }
            if let Ok(h) = HttpConnectionManager::decode(any.value.as_slice())
                && let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = h.route_specifier
            {
                names.insert(rds.route_config_name);
            }
        }
    }
}

/// The value of a google.protobuf.Any (field 2).
fn any_value(any: &[u8]) -> &[u8] {
    scan::fields(any)
        .find(|(n, _)| *n == 2)
        .map_or(&[][..], |(_, v)| v)
}

/// The dependent names of one CDS or LDS resource, whose `Any` is `any`.
fn dependents(type_url: &str, any: &[u8]) -> Vec<String> {
    let value = any_value(any);
    if type_url == CLUSTER {
        eds_name(value).into_iter().collect()
    } else {
        let mut names = BTreeSet::new();
        rds_names(value, &mut names);
        names.into_iter().collect()
    }
}

impl DecodeCache {
    pub fn new(track_churn: bool) -> DecodeCache {
        DecodeCache {
            track_churn,
            ..Default::default()
        }
    }

    fn intern(&self, name: &str) -> Arc<str> {
        let mut names = self.names.lock().unwrap();
        if let Some(n) = names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        names.insert(n.clone());
        n
    }

    /// What one CDS or LDS resource (at this content version) makes the proxy subscribe to.
    fn deps(&self, type_url: &'static str, version: &str, any: &[u8]) -> Deps {
        let by_version = &self.deps[usize::from(type_url != CLUSTER)];
        if let Some(d) = by_version.lock().unwrap().get(version) {
            return d.clone();
        }
        let d: Deps = dependents(type_url, any)
            .iter()
            .map(|n| self.intern(n))
            .collect();
        by_version
            .lock()
            .unwrap()
            .insert(version.to_string(), d.clone());
        d
    }

    /// The newest churned endpoint id in one ClusterLoadAssignment (its `Any` is `any`).
    fn churn_id(&self, name: Arc<str>, version: &str, any: &[u8]) -> u32 {
        let key = (name, version.to_string());
        if let Some(id) = self.churn.lock().unwrap().get(&key) {
            return *id;
        }
        let id = crate::churn_id::newest_id(any_value(any));
        self.churn.lock().unwrap().insert(key, id);
        id
    }

    fn sotw_names(&self, type_url: &'static str, version: &str) -> Option<Arc<Vec<String>>> {
        self.sotw
            .lock()
            .unwrap()
            .get(&(type_url, version.to_string()))
            .cloned()
    }
}

fn nack(proxy: u32, seq: u64, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    // Deterministic spread: a fixed subset of responses is rejected.
    let h = (proxy as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ seq.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (h % 10_000) as f64 / 10_000.0 < fraction
}

/// The wildcard type whose resources name what the proxy asks for next, and that next type.
fn dependent_type(type_url: &str) -> Option<(&'static str, &'static str)> {
    match type_url {
        CLUSTER => Some((CLUSTER, ENDPOINT)),
        LISTENER => Some((LISTENER, ROUTE)),
        _ => None,
    }
}

fn utf8(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A gRPC message: the uncompressed flag, the length, the protobuf.
pub(crate) fn grpc_frame(msg: &impl Message) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + msg.encoded_len());
    out.put_u8(0);
    out.put_u32(msg.encoded_len() as u32);
    msg.encode(&mut out).expect("sized");
    out.freeze()
}

const ADS: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService";

/// An HTTP/2 connection of one sidecar to the xDS port.
pub type Connection = hyper::client::conn::http2::SendRequest<RequestBody>;
type RequestBody = StreamBody<
    futures::stream::Map<ReceiverStream<Bytes>, fn(Bytes) -> Result<Frame<Bytes>, Infallible>>,
>;

/// How a simulated sidecar reaches meshd: plaintext (15010's) or TLS verifying meshd's serving
/// certificate against the mesh root (15012's, as sidecars in Kubernetes do).
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<tokio_rustls::TlsConnector>,
}

/// Connects as a sidecar does: its own TCP connection (TLS on it if asked) and HTTP/2 session.
pub async fn connect(target: &Target) -> anyhow::Result<Connection> {
    let tcp = tokio::net::TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    // Windows bound what the server can have in flight to a client that is slow to read.
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(1 << 20);
    let sender = match &target.tls {
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("a DNS name");
            let stream = tls.connect(name, tcp).await?;
            let (sender, conn) = builder.handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            sender
        }
        None => {
            let (sender, conn) = builder.handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            sender
        }
    };
    Ok(sender)
}

/// Opens the ADS stream: the requests go as they are sent on the returned channel, the
/// response body is read by the caller.
async fn open_stream(
    conn: Connection,
    method: &str,
    credential: &str,
) -> anyhow::Result<(mpsc::Sender<Bytes>, Incoming)> {
    open_call(conn, &format!("{ADS}/{method}"), credential).await
}

/// Opens a gRPC call on `path` (`/package.Service/Method`): messages go as they are sent on
/// the returned channel (framed by [`grpc_frame`]), the response body comes back as it is.
pub(crate) async fn open_call(
    conn: Connection,
    path: &str,
    credential: &str,
) -> anyhow::Result<(mpsc::Sender<Bytes>, Incoming)> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    Ok((tx, call(conn, path, credential, rx).await?))
}

/// A unary gRPC call: `message` (one [`grpc_frame`]) is the whole request, sent before the
/// answer is awaited (a unary server answers only once it has read the request).
pub(crate) async fn unary(
    conn: Connection,
    path: &str,
    credential: &str,
    message: Bytes,
) -> anyhow::Result<Incoming> {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    tx.send(message).await?;
    drop(tx);
    call(conn, path, credential, rx).await
}

async fn call(
    mut conn: Connection,
    path: &str,
    credential: &str,
    rx: mpsc::Receiver<Bytes>,
) -> anyhow::Result<Incoming> {
    let data: fn(Bytes) -> Result<Frame<Bytes>, Infallible> = |b| Ok(Frame::data(b));
    let body = StreamBody::new(futures::StreamExt::map(ReceiverStream::new(rx), data));
    let request = hyper::Request::post(format!("http://meshd{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {credential}"))
        .body(body)?;
    let response = conn.send_request(request).await?;
    anyhow::ensure!(
        response.status() == 200,
        "{path} answered HTTP {}",
        response.status()
    );
    if let Some(status) = response.headers().get("grpc-status") {
        anyhow::bail!(
            "{path} refused the call: grpc-status {status:?} {:?}",
            response.headers().get("grpc-message")
        );
    }
    Ok(response.into_body())
}

/// A response body read message by message, each kept as its sink summarises it.
struct Responses<F: Fields> {
    body: Incoming,
    scanner: Scanner,
    sink: F,
    done: VecDeque<F::Message>,
}

impl<F: Fields> Responses<F> {
    fn new(body: Incoming, sink: F) -> Self {
        Responses {
            body,
            scanner: Scanner::default(),
            sink,
            done: VecDeque::new(),
        }
    }

    /// The next message; `None` when the stream ended cleanly.
    async fn next(&mut self) -> anyhow::Result<Option<F::Message>> {
        loop {
            if let Some(message) = self.done.pop_front() {
                return Ok(Some(message));
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            match frame?.into_data() {
                Ok(data) => self.scanner.feed(data, &mut self.sink, &mut self.done)?,
                Err(frame) => {
                    let status = frame
                        .trailers_ref()
                        .and_then(|t| t.get("grpc-status"))
                        .and_then(|s| s.to_str().ok())
                        .unwrap_or("0");
                    anyhow::ensure!(status == "0", "ADS ended with grpc-status {status}");
                }
            }
        }
    }
}

/// A SotW response as the client keeps it.
#[derive(Default)]
struct SotwResponse {
    version: String,
    type_url: String,
    nonce: String,
    /// CDS/LDS: what the response refers to.
    names: Option<Arc<Vec<String>>>,
}

/// Reads DiscoveryResponses: version_info = 1, resources = 2, type_url = 4, nonce = 5.
struct SotwFields {
    cache: Arc<DecodeCache>,
    current: SotwResponse,
    /// CDS/LDS names decoded from this response when the cache did not have them.
    decoded: Option<BTreeSet<String>>,
    /// What is done with this response's resources, decided at the first.
    resources: Option<Take>,
    bytes: u64,
}

impl SotwFields {
    fn wildcard_type(&self) -> Option<&'static str> {
        dependent_type(&self.current.type_url).map(|(t, _)| t)
    }
}

impl Fields for SotwFields {
    type Message = SotwResponse;

    fn start(&mut self, _len: usize) {
        self.current = SotwResponse::default();
        self.decoded = None;
        self.resources = None;
    }

    fn field(&mut self, number: u32, len: usize) -> Take {
        match number {
            1 | 4 | 5 => Take::Capture,
            2 => {
                self.bytes += len as u64;
                if let Some(take) = self.resources {
                    return take;
                }
                // The server writes version and type before the resources; were it not to, every
                // resource would be decoded.
                let take = match self.wildcard_type() {
                    Some(t) => {
                        self.current.names = self.cache.sotw_names(t, &self.current.version);
                        if self.current.names.is_some() {
                            Take::Skip
                        } else {
                            Take::Capture
                        }
                    }
                    None if self.current.type_url.is_empty() => return Take::Capture,
                    None => Take::Skip,
                };
                self.resources = Some(take);
                take
            }
            _ => Take::Skip,
        }
    }

    fn captured(&mut self, number: u32, bytes: Bytes) {
        match number {
            1 => self.current.version = utf8(&bytes),
            4 => self.current.type_url = utf8(&bytes),
            5 => self.current.nonce = utf8(&bytes),
            2 => {
                let type_url = match scan::fields(&bytes).find(|(n, _)| *n == 1) {
                    Some((_, t)) => utf8(t),
                    None => return,
                };
                if let Some((t, _)) = dependent_type(&type_url) {
                    self.decoded
                        .get_or_insert_default()
                        .extend(dependents(t, &bytes));
                }
            }
            _ => {}
        }
    }

    fn end(&mut self) -> anyhow::Result<SotwResponse> {
        let mut response = std::mem::take(&mut self.current);
        if let Some((t, _)) = dependent_type(&response.type_url)
            && response.names.is_none()
        {
            let names = Arc::new(
                self.decoded
                    .take()
                    .unwrap_or_default()
                    .into_iter()
                    .collect::<Vec<_>>(),
            );
            self.cache
                .sotw
                .lock()
                .unwrap()
                .insert((t, response.version.clone()), names.clone());
            response.names = Some(names);
        }
        self.cache
            .bytes_received
            .fetch_add(std::mem::take(&mut self.bytes), Ordering::Relaxed);
        Ok(response)
    }
}

/// Runs one simulated proxy over SotW until the stream ends.
pub async fn run_sotw(
    conn: Connection,
    spec: ProxySpec,
    cache: Arc<DecodeCache>,
    acks: mpsc::UnboundedSender<Ack>,
    nack_fraction: f64,
) -> anyhow::Result<()> {
    let (tx, body) = open_stream(conn, "StreamAggregatedResources", &spec.credential).await?;
    let node = Some(Node {
        id: spec.node_id.clone(),
        ..Default::default()
    });
    for request in [
        DiscoveryRequest {
            node,
            type_url: CLUSTER.into(),
            ..Default::default()
        },
        DiscoveryRequest {
            type_url: LISTENER.into(),
            ..Default::default()
        },
        DiscoveryRequest {
            type_url: SECRET.into(),
            resource_names: vec!["default".into(), "ROOTCA".into()],
            ..Default::default()
        },
    ] {
        tx.send(grpc_frame(&request)).await?;
    }
    let mut subscribed: HashMap<&'static str, Arc<Vec<String>>> = HashMap::default();
    let mut last: HashMap<String, (String, String)> = HashMap::default();
    let mut seq = 0u64;
    let mut responses = Responses::new(
        body,
        SotwFields {
            cache: cache.clone(),
            current: SotwResponse::default(),
            decoded: None,
            resources: None,
            bytes: 0,
        },
    );
    while let Some(resp) = responses.next().await? {
        seq += 1;
        let reject = nack(spec.index, seq, nack_fraction);
        let acked_version = if reject {
            last.get(&resp.type_url)
                .map(|l| l.0.clone())
                .unwrap_or_default()
        } else {
            resp.version.clone()
        };
        let request = DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: acked_version.clone(),
            response_nonce: resp.nonce.clone(),
            resource_names: subscribed
                .get(resp.type_url.as_str())
                .map(|n| n.as_ref().clone())
                .unwrap_or_else(|| match resp.type_url.as_str() {
                    SECRET => vec!["default".into(), "ROOTCA".into()],
                    _ => Vec::new(),
                }),
            error_detail: reject.then(|| RpcStatus {
                code: 3,
                message: "load test: rejected on purpose".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        tx.send(grpc_frame(&request)).await?;
        last.insert(resp.type_url.clone(), (acked_version, resp.nonce.clone()));
        // A NACK answers the response too: the phases time answers, so they complete with
        // `--nack-fraction` as well.
        let _ = acks.send(Ack {
            proxy: spec.index,
            type_index: type_index(&resp.type_url),
            at: Instant::now(),
            churn: 0,
        });
        if let Some((_, dep)) = dependent_type(&resp.type_url)
            && let Some(names) = resp.names
            && subscribed.get(dep).is_none_or(|cur| cur != &names)
        {
            subscribed.insert(dep, names.clone());
            let (version, nonce) = last.get(dep).cloned().unwrap_or_default();
            let request = DiscoveryRequest {
                type_url: dep.into(),
                version_info: version,
                response_nonce: nonce,
                resource_names: names.as_ref().clone(),
                ..Default::default()
            };
            tx.send(grpc_frame(&request)).await?;
        }
    }
    Ok(())
}
