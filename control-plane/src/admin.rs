//! The admin API on 15014: readiness, Prometheus metrics and the `/debug/*` views ops rely on.
//! Who may call which endpoint is [`access`]'s: off-host callers get only `/metrics`,
//! `/healthz/*` and `/version` unless a Kubernetes token proves them administrators.

pub mod access;
pub mod dashboard;
mod istio_names;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use meshd_ads::{Metrics, Registry, SyncStatus};
use meshd_ca::CertificateAuthority;
use meshd_ca::RotationPhase;
use meshd_xds::MeshSnapshot;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::watch;

#[derive(Clone)]
pub struct AdminState {
    /// Subsystems not yet serving (guards held), named by `/healthz/ready`.
    pub readiness: Arc<crate::readiness::Readiness>,
    /// The supervised tasks: not ready while one is down.
    pub tasks: Arc<crate::supervise::TaskHealth>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub ca: Arc<CertificateAuthority>,
    pub snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    pub started: Instant,
    pub root_rotation: Arc<crate::root_rotation::RootRotator>,
    pub ca_metrics: Arc<crate::ca_service::CaMetrics>,
    pub cert_monitor: Arc<crate::ca_service::CertMonitor>,
    /// Istio's request metrics from the proxies' access-log streams.
    pub mesh_metrics: Arc<crate::telemetry::MeshMetrics>,
    /// Checks bearer tokens of off-host callers (Kubernetes mode); `None`: loopback only.
    pub caller_check: Option<Arc<dyn access::CallerCheck>>,
    /// The injection webhook's outcomes (zero when it is not served).
    pub injection_metrics: Arc<crate::webhook::InjectionMetrics>,
    /// Connections each listener closed for being over its cap.
    pub refused_connections: Arc<crate::accept::RefusedByListener>,
    /// Failed authentications per address, and requests refused for them.
    pub auth_failures: Arc<crate::transport::AuthFailures>,
    /// RequestAuthentication key fetches.
    pub jwks: Arc<crate::jwks::JwksMetrics>,
    /// Kubernetes watch events (`pilot_k8s_reg_events`; none in file mode).
    pub reg_events: Arc<crate::reg_events::RegEvents>,
}

/// The admin routes behind [`access::guard`]; serve it with `ConnectInfo<SocketAddr>`
/// (`into_make_service_with_connect_info`), without which no caller counts as loopback.
pub fn router(state: AdminState) -> Router {
    let caller_check = state.caller_check.clone();
    Router::new()
        .route("/healthz/ready", get(ready))
        .route("/healthz/live", get(|| async { "alive\n" }))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route("/debug/syncz", get(syncz))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/certs", get(certs))
        .route(
            "/debug/ca/rotate-root",
            get(rotation_status).post(rotate_root),
        )
        .route("/debug/registryz", get(registryz))
        .route("/debug/configz", get(configz))
        .route("/debug/heap", get(heap))
        .merge(dashboard::routes())
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            caller_check,
            access::guard,
        ))
}

async fn ready(State(s): State<AdminState>) -> Response {
    match crate::readiness::verdict(&s.readiness, &s.tasks.down()) {
        (true, text) => (StatusCode::OK, text).into_response(),
        (false, text) => (StatusCode::SERVICE_UNAVAILABLE, text).into_response(),
    }
}

pub fn version_info() -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "git_revision": option_env!("MESHD_GIT_REVISION").unwrap_or("unknown"),
        "envoy_api": "v3",
        "envoy_tested": "1.40.0",
    })
}

async fn version() -> Json<Value> {
    Json(version_info())
}

async fn syncz(State(s): State<AdminState>) -> Json<Value> {
    Json(serde_json::to_value(s.registry.snapshot()).unwrap_or_default())
}

#[derive(Deserialize)]
struct ProxyQuery {
    proxy: Option<String>,
}

async fn config_dump(State(s): State<AdminState>, Query(q): Query<ProxyQuery>) -> Response {
    let Some(id) = q.proxy else {
        return (StatusCode::BAD_REQUEST, "missing ?proxy=ID\n").into_response();
    };
    let Some(status) = s.registry.get(&id) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no connected proxy `{id}`\n"),
        )
            .into_response();
    };
    let mut out = serde_json::Map::new();
    out.insert("proxy_id".into(), json!(status.proxy_id));
    let mut types = serde_json::Map::new();
    for (type_url, t) in status.types.iter() {
        let resources: Vec<Value> = t
            .sent
            .iter()
            .map(|r| meshd_xds::json::any_to_json(&r.any()))
            .collect();
        types.insert(
            type_url.to_string(),
            json!({"version": t.sent_version, "resources": resources}),
        );
    }
    out.insert("types".into(), Value::Object(types));
    Json(Value::Object(out)).into_response()
}

async fn certs(State(s): State<AdminState>) -> Json<Value> {
    Json(serde_json::to_value(s.ca.issued()).unwrap_or_default())
}

#[derive(Deserialize)]
struct RotateQuery {
    /// Stop after this phase is synced (`add-root`, `switch-signer`, `drop-old`); the next
    /// server start resumes. For tests of a restart mid-rotation.
    pause_after: Option<String>,
}

/// Starts a root rotation (or continues the one in progress): 202 and the status.
async fn rotate_root(State(s): State<AdminState>, Query(q): Query<RotateQuery>) -> Response {
    let pause_after = match q.pause_after.as_deref() {
        None => None,
        Some("add-root") => Some(RotationPhase::AddRoot),
        Some("switch-signer") => Some(RotationPhase::SwitchSigner),
        Some("drop-old") => Some(RotationPhase::DropOld),
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("pause_after: unknown phase {other:?} (add-root, switch-signer, drop-old)")})),
            )
                .into_response();
        }
    };
    // Blocking: generating the new root (RSA 4096: seconds) and writing the CA state.
    let rotator = s.root_rotation.clone();
    let started = match tokio::task::spawn_blocking(move || rotator.start(pause_after)).await {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": format!("root rotation task failed: {e}")})),
            )
                .into_response();
        }
    };
    match started {
        Ok(status) => (StatusCode::ACCEPTED, Json(json!(status))).into_response(),
        Err(e @ meshd_ca::CaError::RotationUnsupported { .. }) => {
            (StatusCode::CONFLICT, Json(json!({"error": e.to_string()}))).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn rotation_status(State(s): State<AdminState>) -> Json<Value> {
    Json(json!(s.root_rotation.status()))
}

/// The CA's counters and expiry gauges.
fn ca_metrics(s: &AdminState, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP meshd_certs_issued_total Certificates the mesh CA signed (workload: for proxies over SDS and CreateCertificate; server: meshd's own TLS).\n# TYPE meshd_certs_issued_total counter"
    );
    for (kind, n) in s.ca.issued_totals() {
        let _ = writeln!(out, "meshd_certs_issued_total{{kind=\"{kind}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP meshd_csr_signed_total CreateCertificate requests answered with a certificate.\n# TYPE meshd_csr_signed_total counter\nmeshd_csr_signed_total {}",
        s.ca_metrics.csr_signed.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP meshd_csr_rejected_total CreateCertificate requests refused, by reason.\n# TYPE meshd_csr_rejected_total counter"
    );
    let mut rejected = s.ca_metrics.rejected_by_reason();
    // Known reasons appear at zero; a reason missing from this list still appears once counted.
    for reason in [
        "unauthenticated",
        "unregistered",
        "malformed",
        "bad_signature",
        "weak_key",
        "unsupported_key",
        "ttl_too_long",
        "ttl_invalid",
        "impersonation",
        "identity",
        "signer_unavailable",
    ] {
        let n = rejected.remove(reason).unwrap_or(0);
        let _ = writeln!(out, "meshd_csr_rejected_total{{reason=\"{reason}\"}} {n}");
    }
    for (reason, n) in rejected {
        let _ = writeln!(out, "meshd_csr_rejected_total{{reason=\"{reason}\"}} {n}");
    }
    let expiring = s.cert_monitor.expiring(std::time::SystemTime::now());
    let _ = writeln!(
        out,
        "# HELP meshd_certs_expiring_soon Served certificates with under 7 days left that nothing will replace in time (CA certificates; leaves past their rotation point).\n# TYPE meshd_certs_expiring_soon gauge"
    );
    for kind in ["root", "intermediate", "workload", "server"] {
        let n = expiring.iter().filter(|e| e.kind == kind).count();
        let _ = writeln!(out, "meshd_certs_expiring_soon{{kind=\"{kind}\"}} {n}");
    }
    let min_left = expiring.iter().map(|e| e.seconds_left).min();
    if let Some(min_left) = min_left {
        let _ = writeln!(
            out,
            "# HELP meshd_cert_expiring_min_seconds_left Least life left among the certificates counted by meshd_certs_expiring_soon.\n# TYPE meshd_cert_expiring_min_seconds_left gauge\nmeshd_cert_expiring_min_seconds_left {min_left}"
        );
    }
}

/// The allocator's own report: memory by size class, arena and state, for finding what holds
/// the heap (the counterpart of istiod's /debug/pprof/heap).
async fn heap() -> Response {
    match crate::memory::heap_report() {
        Ok(report) => (StatusCode::OK, report).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn registryz(State(s): State<AdminState>) -> Json<Value> {
    let snap = s.snapshots.borrow().clone();
    let config = snap.config();
    Json(json!({
        "services": config.services,
        "workloads": config.workloads,
    }))
}

pub(crate) async fn configz(State(s): State<AdminState>) -> Json<Value> {
    let snap = s.snapshots.borrow().clone();
    let config = snap.config();
    // Objects the generator could not apply (EnvoyFilter values that do not decode, Telemetry
    // naming a provider with no collector) are rejected.
    let not_applied = |o: &&std::sync::Arc<meshd_model::ConfigObject>| {
        snap.problems().any(|r| {
            r.kind == Some(o.kind())
                && r.namespace.as_deref() == Some(o.meta.namespace())
                && r.name.as_deref() == Some(o.meta.name.as_str())
        })
    };
    let accepted: Vec<Value> = config
        .objects
        .values()
        .filter(|o| !not_applied(o))
        .map(|o| {
            json!({
                "kind": o.kind(),
                "api_version": o.api_version,
                "namespace": o.meta.namespace(),
                "name": o.meta.name,
                "file": o.source.file,
                "line": o.source.line,
            })
        })
        .collect();
    let rejected: Vec<Value> = config
        .rejected
        .iter()
        .chain(snap.problems())
        .map(|r| {
            json!({
                "kind": r.kind,
                "namespace": r.namespace,
                "name": r.name,
                "file": r.file,
                "line": r.line,
                "reason": r.reason,
                "message": r.to_string(),
            })
        })
        .collect();
    // Accepted objects with a valid field meshd does not act on yet.
    let warnings: Vec<Value> = config
        .warnings
        .iter()
        .map(|w| json!({"kind": w.kind, "namespace": w.namespace, "name": w.name, "file": w.file, "line": w.line, "reason": w.reason, "message": w.to_string()}))
        .collect();
    Json(json!({
        "version": snap.version,
        "accepted": accepted,
        "rejected": rejected,
        "warnings": warnings,
        // A config the server could not build (the last good one serves), by task.
        "errors": s.tasks.errors(),
        // JWK sets fetched for RequestAuthentications: keys in force, last fetch error.
        "jwks": crate::jwks::status(config),
    }))
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let m = &s.metrics;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "meshd_xds_connected_proxies",
        "gauge",
        "Proxies with an open ADS stream.",
        m.connected.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "meshd_xds_streams_total",
        "counter",
        "ADS streams opened.",
        m.streams_total.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "meshd_xds_streams_rejected_total",
        "counter",
        "ADS streams refused for a missing or bad credential.",
        m.streams_rejected.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "meshd_xds_pushes_total",
        "counter",
        "xDS responses sent.",
        m.pushes.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "meshd_xds_push_bytes_total",
        "counter",
        "Bytes of resources sent.",
        m.push_bytes.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "meshd_xds_acks_total",
        "counter",
        "ACKs received.",
        m.acks.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "meshd_xds_nacks_total",
        "counter",
        "NACKs received.",
        m.nacks.load(Ordering::Relaxed).to_string(),
    );
    let snap = s.snapshots.borrow().clone();
    metric(
        "meshd_config_version",
        "gauge",
        "Version of the mesh config in force.",
        snap.version.to_string(),
    );
    metric(
        "meshd_config_objects",
        "gauge",
        "Accepted mesh config objects.",
        snap.config().objects.len().to_string(),
    );
    metric(
        "meshd_config_rejected",
        "gauge",
        "Rejected mesh config documents.",
        snap.config().rejected.len().to_string(),
    );
    metric(
        "meshd_uptime_seconds",
        "gauge",
        "Seconds since start.",
        s.started.elapsed().as_secs_f64().to_string(),
    );
    if let Some((allocated, resident)) = crate::memory::heap_stats() {
        metric(
            "meshd_heap_allocated_bytes",
            "gauge",
            "Heap bytes in use.",
            allocated.to_string(),
        );
        metric(
            "meshd_heap_resident_bytes",
            "gauge",
            "Bytes the allocator holds in memory (in use, its metadata, free pages not yet returned).",
            resident.to_string(),
        );
    }
    let mut by_status: BTreeMap<&str, u64> = BTreeMap::new();
    for p in s.registry.snapshot() {
        for t in p.types.values() {
            *by_status
                .entry(match t.status {
                    SyncStatus::Synced => "SYNCED",
                    SyncStatus::Stale => "STALE",
                    SyncStatus::Nacked => "NACKED",
                })
                .or_default() += 1;
        }
    }
    let _ = writeln!(
        out,
        "# HELP meshd_xds_proxy_types Proxy xDS types by sync status.\n# TYPE meshd_xds_proxy_types gauge"
    );
    for (status, n) in by_status {
        let _ = writeln!(out, "meshd_xds_proxy_types{{status=\"{status}\"}} {n}");
    }
    // Bounded by kind, never one series per certificate: a mesh issues one per proxy.
    let summary = s.ca.issued_summary();
    let _ = writeln!(
        out,
        "# HELP meshd_certs_valid Certificates still valid that the CA knows of, by kind (root, intermediate, workload, server).\n# TYPE meshd_certs_valid gauge"
    );
    for k in &summary.kinds {
        let _ = writeln!(out, "meshd_certs_valid{{kind=\"{}\"}} {}", k.kind, k.count);
    }
    let _ = writeln!(
        out,
        "# HELP meshd_cert_earliest_expiry_timestamp_seconds The earliest expiry among the valid certificates of each kind.\n# TYPE meshd_cert_earliest_expiry_timestamp_seconds gauge"
    );
    for k in &summary.kinds {
        if let Some(t) = k.earliest_expiry {
            let secs = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let _ = writeln!(
                out,
                "meshd_cert_earliest_expiry_timestamp_seconds{{kind=\"{}\"}} {secs}",
                k.kind
            );
        }
    }
    let (holders, forgotten) = s.ca.csr_holders();
    let _ = writeln!(
        out,
        "# HELP meshd_certs_untracked_total Valid certificates whose record the CA dropped at its cap (leaves for /debug/certs; CreateCertificate callers for root rotation).\n# TYPE meshd_certs_untracked_total counter\nmeshd_certs_untracked_total{{record=\"leaf\"}} {}\nmeshd_certs_untracked_total{{record=\"csr_caller\"}} {forgotten}\n# HELP meshd_csr_callers Callers of CreateCertificate holding a valid certificate, tracked for root rotation.\n# TYPE meshd_csr_callers gauge\nmeshd_csr_callers {holders}",
        summary.untracked
    );
    ca_metrics(&s, &mut out);
    s.tasks.write_metrics(&mut out);
    limit_metrics(&s, &mut out);
    istio_names::encode_into(&s, &mut out);
    out.push('\n');
    s.mesh_metrics.encode_into(&mut out);
    out.push('\n');
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

/// What the listeners' limits turned away.
fn limit_metrics(s: &AdminState, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP meshd_connections_refused_total Connections a listener closed at once for being over its connection cap.\n# TYPE meshd_connections_refused_total counter"
    );
    for (listener, n) in s.refused_connections.counts() {
        let listener = listener.trim_end_matches("-accept");
        let _ = writeln!(
            out,
            "meshd_connections_refused_total{{listener=\"{listener}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP meshd_auth_throttled_total gRPC requests refused (RESOURCE_EXHAUSTED) for coming from an address with too many failed authentications.\n# TYPE meshd_auth_throttled_total counter\nmeshd_auth_throttled_total {}\n# HELP meshd_auth_failing_peers Addresses with recent failed authentications being tracked.\n# TYPE meshd_auth_failing_peers gauge\nmeshd_auth_failing_peers {}",
        s.auth_failures.throttled(),
        s.auth_failures.tracked()
    );
}
