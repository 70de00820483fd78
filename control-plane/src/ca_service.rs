//! The TLS port (15012): Istio's CA API (`istio.v1.auth.IstioCertificateService`) and ADS, over
//! TLS with a serving certificate from the mesh CA that follows rotation of itself and of the
//! root.
//!
//! The gRPC service is written by hand on `tonic::server::Grpc` with tonic-prost's codec; the
//! messages and the request checks live in `meshd_ca::istio_api`.

use meshd_ads::{Authenticator, wait_registered};
use meshd_ca::istio_api::{
    CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse, MAX_REQUEST_BYTES,
    RejectCode, SERVICE_NAME,
};
use meshd_ca::{CertFacts, CertificateAuthority, IssuedCert, SpiffeId};
use meshd_xds::MeshSnapshot;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

/// Counters for `/metrics`.
#[derive(Debug)]
pub struct CaMetrics {
    /// CreateCertificate requests answered with a certificate.
    pub csr_signed: AtomicU64,
    /// Refused requests by reason (`unauthenticated`, `malformed`, `bad_signature`, ...).
    pub csr_rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// How long checking and signing one CSR took (seconds), for the CSRs signed.
    pub sign_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// 100 µs to 1 s: an ECDSA CSR is signed in well under a millisecond, an RSA-4096 one's
/// verification takes milliseconds, and a starved CA shows in the upper buckets.
const SIGN_BUCKETS: [f64; 9] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];

impl Default for CaMetrics {
    fn default() -> Self {
        CaMetrics {
            csr_signed: AtomicU64::default(),
            csr_rejected: Mutex::default(),
            sign_seconds: prometheus_client::metrics::histogram::Histogram::new(SIGN_BUCKETS),
        }
    }
}

impl CaMetrics {
    fn rejected(&self, reason: &'static str) {
        *self
            .csr_rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    pub fn rejected_by_reason(&self) -> BTreeMap<&'static str, u64> {
        self.csr_rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

struct Inner<A> {
    ca: Arc<CertificateAuthority>,
    auth: A,
    metrics: Arc<CaMetrics>,
    mesh: watch::Receiver<Arc<MeshSnapshot>>,
    bind_wait: Duration,
}

/// `istio.v1.auth.IstioCertificateService` as a tonic service. The caller proves who it is the
/// way an xDS stream does (`authorization: Bearer <credential>`); the certificate is for that
/// identity only.
pub struct CaService<A> {
    inner: Arc<Inner<A>>,
}

impl<A> Clone for CaService<A> {
    fn clone(&self) -> Self {
        CaService {
            inner: self.inner.clone(),
        }
    }
}

impl<A: Authenticator> CaService<A> {
    /// `mesh` is the registry the caller's identity is checked against, waiting up to
    /// `bind_wait` for it to catch up with a workload just started (as an xDS stream does).
    pub fn new(
        ca: Arc<CertificateAuthority>,
        auth: A,
        metrics: Arc<CaMetrics>,
        mesh: watch::Receiver<Arc<MeshSnapshot>>,
        bind_wait: Duration,
    ) -> Self {
        CaService {
            inner: Arc::new(Inner {
                ca,
                auth,
                metrics,
                mesh,
                bind_wait,
            }),
        }
    }
}

impl<A: Authenticator> Inner<A> {
    async fn create_certificate(
        &self,
        metadata: &MetadataMap,
        req: &IstioCertificateRequest,
    ) -> Result<IstioCertificateResponse, Status> {
        let identity = self.auth.authenticate(metadata).await.map_err(|e| {
            self.metrics.rejected("unauthenticated");
            tracing::warn!(error = %e, "CreateCertificate: caller not authenticated");
            Status::unauthenticated(e)
        })?;
        let caller = SpiffeId::new(
            identity.trust_domain.clone(),
            identity.namespace.clone(),
            identity.service_account.clone(),
        );
        let holder = format!("{}.{}", identity.workload, identity.namespace);
        // A credential outlives its workload: it buys a certificate only while the workload
        // runs under the service account it proves.
        wait_registered(self.mesh.clone(), &identity, self.bind_wait)
            .await
            .map_err(|e| {
                self.metrics.rejected("unregistered");
                tracing::warn!(caller = %caller, error = %e, "CreateCertificate: refused");
                Status::permission_denied(e.to_string())
            })?;
        let started = std::time::Instant::now();
        match self.ca.create_certificate_for(&caller, &holder, req) {
            Ok(resp) => {
                self.metrics
                    .sign_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.csr_signed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(caller = %caller, ttl_s = req.validity_duration, "CreateCertificate: signed");
                Ok(resp)
            }
            Err(r) => {
                self.metrics.rejected(r.reason);
                tracing::warn!(caller = %caller, reason = r.reason, error = %r.message, "CreateCertificate: refused");
                Err(match r.code {
                    RejectCode::InvalidArgument => Status::invalid_argument(r.message),
                    RejectCode::PermissionDenied => Status::permission_denied(r.message),
                    RejectCode::Internal => Status::internal(r.message),
                })
            }
        }
    }
}

struct CreateCertificateSvc<A>(Arc<Inner<A>>);

impl<A: Authenticator> tonic::server::UnaryService<IstioCertificateRequest>
    for CreateCertificateSvc<A>
{
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<Response<IstioCertificateResponse>, Status>;

    fn call(&mut self, request: Request<IstioCertificateRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            // Signing is tens of microseconds (an RSA CSR's verification a little more): no
            // need to leave the async runtime.
            inner
                .create_certificate(request.metadata(), request.get_ref())
                .await
                .map(Response::new)
        })
    }
}

impl<A, B> Service<http::Request<B>> for CaService<A>
where
    A: Authenticator,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == CREATE_CERTIFICATE_PATH {
            let inner = self.inner.clone();
            return Box::pin(async move {
                let codec = tonic_prost::ProstCodec::default();
                let mut grpc = tonic::server::Grpc::new(codec)
                    .apply_max_message_size_config(Some(MAX_REQUEST_BYTES), None);
                Ok(grpc.unary(CreateCertificateSvc(inner), req).await)
            });
        }
        Box::pin(async move {
            let mut response = http::Response::new(tonic::body::Body::default());
            let headers = response.headers_mut();
            headers.insert(
                Status::GRPC_STATUS,
                (tonic::Code::Unimplemented as i32).into(),
            );
            headers.insert(
                http::header::CONTENT_TYPE,
                tonic::metadata::GRPC_CONTENT_TYPE,
            );
            Ok(response)
        })
    }
}

impl<A> NamedService for CaService<A> {
    const NAME: &'static str = SERVICE_NAME;
}

// ---------------------------------------------------------------------------------------------
// The serving certificate

/// meshd's TLS serving certificate from its own CA: re-issued on the first handshake after it
/// is due for rotation, or once a root rotation switched the signer.
pub struct ServingCert {
    ca: Arc<CertificateAuthority>,
    names: Vec<String>,
    current: RwLock<(Arc<CertifiedKey>, CertFacts)>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

fn certified_key(issued: &IssuedCert) -> anyhow::Result<Arc<CertifiedKey>> {
    use anyhow::Context;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.cert_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .context("parsing the serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .context("parsing the serving key")?;
    let signing = any_supported_type(&key).context("loading the serving key")?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

impl ServingCert {
    /// `names`: DNS names and IP addresses for the SANs.
    pub fn new(ca: Arc<CertificateAuthority>, names: Vec<String>) -> anyhow::Result<Arc<Self>> {
        let issued = ca.server_cert(&names)?;
        let key = certified_key(&issued)?;
        tracing::info!(names = ?names, serial = %issued.serial_hex, "TLS serving certificate issued");
        Ok(Arc::new(ServingCert {
            ca,
            names,
            current: RwLock::new((key, issued.facts())),
        }))
    }

    /// The certificate served now.
    pub fn current(&self) -> CertFacts {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    fn key(&self) -> Arc<CertifiedKey> {
        let (key, due) = {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            let (key, facts) = &*current;
            let due = self.ca.rotation_due(facts.validity, SystemTime::now())
                || *facts.signer_serial != self.ca.signer_serial();
            (key.clone(), due)
        };
        if !due {
            return key;
        }
        let fresh = self
            .ca
            .server_cert(&self.names)
            .map_err(anyhow::Error::from)
            .and_then(|i| Ok((certified_key(&i)?, i)));
        match fresh {
            Ok((key, issued)) => {
                tracing::info!(serial = %issued.serial_hex, "TLS serving certificate re-issued");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                    (key.clone(), issued.facts());
                key
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-issuing the TLS serving certificate failed; serving the old one");
                key
            }
        }
    }

    /// A rustls server config presenting this certificate, ALPN `h2` (gRPC).
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        self.server_config_with_alpn(vec![b"h2".to_vec()])
    }

    /// A rustls server config presenting this certificate, offering `alpn`.
    pub fn server_config_with_alpn(
        self: &Arc<Self>,
        alpn: Vec<Vec<u8>>,
    ) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        use anyhow::Context;
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = alpn;
        Ok(Arc::new(cfg))
    }
}

#[derive(Debug)]
struct Resolver(Arc<ServingCert>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.key())
    }
}

/// The SANs of the TLS port's certificate: `<service>.<namespace>.svc` (and with
/// `.cluster.local`), `localhost`, loopback, and the bind address when it is a specific one.
pub fn serving_names(bind: std::net::IpAddr, service: &str, namespace: &str) -> Vec<String> {
    let mut names = vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    if !bind.is_unspecified() && !bind.is_loopback() {
        names.push(bind.to_string());
    }
    names
}

// ---------------------------------------------------------------------------------------------
// Expiry monitoring

/// Under this much life left, a certificate nothing will replace in time needs a human.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// A served certificate close to expiry.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Expiring {
    /// `root` | `intermediate` | `workload` | `server`.
    pub kind: String,
    pub spiffe_id: String,
    pub serial: String,
    pub not_after: String,
    pub seconds_left: u64,
}

/// Finds served certificates with under [`EXPIRY_WARNING`] left that will not be replaced
/// automatically: the CA's own (roots, plug-in intermediates: only an operator renews them),
/// and leaves still served past their rotation point (a stuck proxy, a CA that cannot sign).
/// Leaves inside their normal rotation window are not flagged: with the default 24 h window a
/// healthy 90-day certificate spends its last days under 7 days left, by design.
pub struct CertMonitor {
    pub ca: Arc<CertificateAuthority>,
    pub secrets: Arc<crate::identity::CaSecrets>,
    pub serving: Arc<ServingCert>,
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl CertMonitor {
    pub fn expiring(&self, now: SystemTime) -> Vec<Expiring> {
        let left = |not_after: SystemTime| not_after.duration_since(now).unwrap_or_default();
        let mut out = Vec::new();
        for c in self.ca.issued() {
            if c.kind != "root" && c.kind != "intermediate" {
                continue;
            }
            let Ok(t) = time::OffsetDateTime::parse(
                &c.not_after,
                &time::format_description::well_known::Rfc3339,
            ) else {
                continue;
            };
            let remaining = left(t.into());
            if remaining < EXPIRY_WARNING {
                out.push(Expiring {
                    kind: c.kind,
                    spiffe_id: c.spiffe_id,
                    serial: c.serial,
                    not_after: c.not_after,
                    seconds_left: remaining.as_secs(),
                });
            }
        }
        let leaves = self
            .secrets
            .served()
            .into_iter()
            .map(|(identity, c)| ("workload", identity.spiffe_id(), c))
            .chain(std::iter::once((
                "server",
                String::new(),
                self.serving.current(),
            )));
        for (kind, spiffe_id, c) in leaves {
            let remaining = left(c.validity.not_after);
            if remaining < EXPIRY_WARNING && self.ca.rotation_due(c.validity, now) {
                out.push(Expiring {
                    kind: kind.to_string(),
                    spiffe_id,
                    serial: c.serial_hex.into(),
                    not_after: rfc3339(c.validity.not_after),
                    seconds_left: remaining.as_secs(),
                });
            }
        }
        out
    }

    /// Logs a warning for each expiring certificate, each at most once an hour, until `stop`.
    pub async fn run(self: Arc<Self>, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut warned: BTreeMap<String, std::time::Instant> = BTreeMap::new();
        loop {
            let now = SystemTime::now();
            let expiring = self.expiring(now);
            warned.retain(|serial, _| expiring.iter().any(|e| &e.serial == serial));
            for e in expiring {
                let due = warned
                    .get(&e.serial)
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(3600));
                if due {
                    tracing::warn!(
                        kind = %e.kind,
                        spiffe_id = %e.spiffe_id,
                        serial = %e.serial,
                        not_after = %e.not_after,
                        hours_left = e.seconds_left / 3600,
                        "certificate expires in under 7 days and will not be replaced automatically"
                    );
                    warned.insert(e.serial, std::time::Instant::now());
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            }
        }
    }
}
