//! The floor of the data-plane bench: a hand-written static Envoy pair (one listener and one
//! cluster per side, mTLS from a throwaway CA, no access log, no stats sinks) in two plain pods
//! with the same capture rules, app and Envoy flags as the local mesh's sidecars; and the same
//! pair plus one part of meshd's config at a time (`Extra`), to tell where a gap comes from.

use super::{Kind, NS, PORT, TRUST_DOMAIN, pod_ip};
use anyhow::{Context, bail};
use meshd_localmesh::mesh::{LocalMesh, PROXY_UID, envoy_admin_get};
use meshd_localmesh::podnet::{Child, Pod, wait_until};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// One part of meshd's generated sidecar config, added to the minimal pair exactly as meshd
/// writes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Extra {
    /// Istio's default route retry policy (previous-hosts predicate) and no route timeout.
    Retry,
    /// The outbound CORS and fault filters ahead of the router.
    Filters,
    /// The inbound XFCC handling (APPEND_FORWARD, subject, DNS and URI of the peer).
    Xfcc,
    /// LEAST_REQUEST balancing and circuit breakers tracking what remains.
    LeastRequest,
    /// All of the above.
    All,
    /// Envoy's stats access logger on both sides: a request counter and three histograms with
    /// Istio's dimensions from command operators (what aggregated Istio metrics would cost).
    StatsLog,
    /// A JSON access log on stdout on both sides, as meshd's default.
    JsonLog,
    /// The gRPC access-log stream on both sides exactly as meshd writes it (what feeds meshd's
    /// Istio metrics today), to the bench's discarding sink.
    GrpcLog,
    /// The OpenTelemetry access log on both sides with the attributes Istio's labels need, to
    /// the same sink: the other per-request path Envoy hardens against untrusted downstreams.
    OtelLog,
}

impl Extra {
    pub(super) const ALL: [Extra; 7] = [
        Extra::Retry,
        Extra::Filters,
        Extra::Xfcc,
        Extra::LeastRequest,
        Extra::All,
        Extra::StatsLog,
        Extra::JsonLog,
    ];

    /// The per-request telemetry paths side by side (`--log-paths`).
    pub(super) const LOG_PATHS: [Extra; 3] = [Extra::GrpcLog, Extra::OtelLog, Extra::StatsLog];

    pub(super) fn label(self) -> &'static str {
        match self {
            Extra::Retry => "minimal+retry",
            Extra::Filters => "minimal+filters",
            Extra::Xfcc => "minimal+xfcc",
            Extra::LeastRequest => "minimal+least-request",
            Extra::All => "minimal+all",
            Extra::StatsLog => "minimal+stats-log",
            Extra::JsonLog => "minimal+json-log",
            Extra::GrpcLog => "minimal+grpc-log",
            Extra::OtelLog => "minimal+otel-log",
        }
    }

    /// Workload name prefix and the last octet of the client pod's address.
    pub(super) fn pods(self) -> (&'static str, u8) {
        match self {
            Extra::Retry => ("minr", 15),
            Extra::Filters => ("minf", 16),
            Extra::Xfcc => ("minx", 17),
            Extra::LeastRequest => ("minl", 18),
            Extra::All => ("mina", 19),
            Extra::StatsLog => ("mins", 30),
            Extra::JsonLog => ("minj", 31),
            Extra::GrpcLog => ("ming", 32),
            Extra::OtelLog => ("mino", 33),
        }
    }

    fn has(extra: Option<Extra>, part: Extra) -> bool {
        extra == Some(part)
            || (extra == Some(Extra::All)
                && matches!(
                    part,
                    Extra::Retry | Extra::Filters | Extra::Xfcc | Extra::LeastRequest
                ))
    }
}

/// Istio's request dimensions, each from a command operator.
const STATS_LOG: &str = "access_log:
          - name: envoy.access_loggers.stats
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config
              stat_prefix: meshd
              counters:
              - stat: &stat {name: istio_requests_total, tags: [{name: reporter, value_format: destination}, \
                  {name: peer, value_format: '%DOWNSTREAM_PEER_URI_SAN%'}, {name: code, value_format: '%RESPONSE_CODE%'}, \
                  {name: flags, value_format: '%RESPONSE_FLAGS%'}, {name: protocol, value_format: '%PROTOCOL%'}, \
                  {name: cluster, value_format: '%UPSTREAM_CLUSTER%'}]}
                value_fixed: 1
              histograms:
              - {stat: {name: istio_request_duration_milliseconds, tags: [{name: code, value_format: '%RESPONSE_CODE%'}, \
                  {name: cluster, value_format: '%UPSTREAM_CLUSTER%'}, {name: peer, value_format: '%DOWNSTREAM_PEER_URI_SAN%'}]}, \
                  unit: Milliseconds, value_format: '%DURATION%'}
              - {stat: {name: istio_request_bytes, tags: [{name: code, value_format: '%RESPONSE_CODE%'}, \
                  {name: cluster, value_format: '%UPSTREAM_CLUSTER%'}, {name: peer, value_format: '%DOWNSTREAM_PEER_URI_SAN%'}]}, \
                  unit: Bytes, value_format: '%BYTES_RECEIVED%'}
              - {stat: {name: istio_response_bytes, tags: [{name: code, value_format: '%RESPONSE_CODE%'}, \
                  {name: cluster, value_format: '%UPSTREAM_CLUSTER%'}, {name: peer, value_format: '%DOWNSTREAM_PEER_URI_SAN%'}]}, \
                  unit: Bytes, value_format: '%BYTES_SENT%'}";

/// meshd's gRPC access-log stream (`meshd_xds::generate::telemetry`), to the sink.
const GRPC_LOG: &str = "access_log:
          - name: envoy.access_loggers.http_grpc
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig
              common_config: {log_name: meshd-bench, transport_api_version: V3, buffer_flush_interval: 1s, \
                buffer_size_bytes: 16384, grpc_service: {envoy_grpc: {cluster_name: sink}}}
              additional_request_headers_to_log: [content-type]
              additional_response_headers_to_log: [grpc-status]
              additional_response_trailers_to_log: [grpc-status]";

/// The OpenTelemetry access log with what Istio's labels are derived from, to the sink.
const OTEL_LOG: &str = "access_log:
          - name: envoy.access_loggers.open_telemetry
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig
              log_name: meshd-bench
              grpc_service: {envoy_grpc: {cluster_name: sink}}
              buffer_flush_interval: 1s
              buffer_size_bytes: 16384
              disable_builtin_labels: true
              attributes: {values: [{key: code, value: {string_value: '%RESPONSE_CODE%'}}, \
                {key: flags, value: {string_value: '%RESPONSE_FLAGS%'}}, \
                {key: grpc, value: {string_value: '%GRPC_STATUS_NUMBER%'}}, \
                {key: content_type, value: {string_value: '%REQ(CONTENT-TYPE):32%'}}, \
                {key: authority, value: {string_value: '%REQ(:AUTHORITY):128%'}}, \
                {key: duration, value: {string_value: '%DURATION%'}}, \
                {key: rx, value: {string_value: '%BYTES_RECEIVED%'}}, \
                {key: tx, value: {string_value: '%BYTES_SENT%'}}, \
                {key: cluster, value: {string_value: '%UPSTREAM_CLUSTER%'}}, \
                {key: upstream, value: {string_value: '%UPSTREAM_REMOTE_ADDRESS%'}}, \
                {key: upstream_peer, value: {string_value: '%UPSTREAM_PEER_URI_SAN%'}}, \
                {key: peer, value: {string_value: '%DOWNSTREAM_PEER_URI_SAN%'}}, \
                {key: remote, value: {string_value: '%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%'}}, \
                {key: local_port, value: {string_value: '%DOWNSTREAM_LOCAL_PORT%'}}]}";

/// A JSON line per request on stdout, with the fields of meshd's default log.
const JSON_LOG: &str = "access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {json_format: {start_time: '%START_TIME%', method: '%REQ(:METHOD)%', \
                path: '%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%', protocol: '%PROTOCOL%', response_code: '%RESPONSE_CODE%', \
                response_flags: '%RESPONSE_FLAGS%', bytes_received: '%BYTES_RECEIVED%', bytes_sent: '%BYTES_SENT%', \
                duration: '%DURATION%', upstream_service_time: '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%', \
                x_forwarded_for: '%REQ(X-FORWARDED-FOR)%', user_agent: '%REQ(USER-AGENT)%', request_id: '%REQ(X-REQUEST-ID)%', \
                authority: '%REQ(:AUTHORITY)%', upstream_host: '%UPSTREAM_HOST%', upstream_cluster: '%UPSTREAM_CLUSTER%', \
                downstream_remote_address: '%DOWNSTREAM_REMOTE_ADDRESS%', downstream_local_address: '%DOWNSTREAM_LOCAL_ADDRESS%', \
                requested_server_name: '%REQUESTED_SERVER_NAME%', route_name: '%ROUTE_NAME%'}}";

/// Capture rules as the local mesh's sidecars get them, for the hand-written pair too.
const CAPTURE: [&str; 14] = [
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
];

/// A throwaway CA and the two SPIFFE leaf certificates of the hand-written pair, as PEM files in
/// `dir` (readable by the proxy uid): `ca.pem`, `{client,server}.{pem,key}`.
fn write_static_certs(dir: &Path) -> anyhow::Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType,
    };
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // rcgen's default subject is the same for every certificate: a leaf would name itself as
    // its issuer and look self-signed to the verifier.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "dataplane bench CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    write_readable(&dir.join("ca.pem"), &ca.pem())?;
    for role in ["client", "server"] {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("min-{role}"));
        let id = format!("spiffe://{TRUST_DOMAIN}/ns/{NS}/sa/min-{role}");
        params.subject_alt_names = vec![SanType::URI(id.try_into()?)];
        let cert = params.signed_by(&key, &ca)?;
        write_readable(&dir.join(format!("{role}.pem")), &cert.pem())?;
        write_readable(&dir.join(format!("{role}.key")), &key.serialize_pem())?;
    }
    Ok(())
}

pub(super) fn write_readable(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

fn tls_context(dir: &Path, role: &str, peer: &str) -> String {
    let d = dir.display();
    format!(
        "common_tls_context:
            tls_certificates:
            - certificate_chain: {{filename: {d}/{role}.pem}}
              private_key: {{filename: {d}/{role}.key}}
            validation_context:
              trusted_ca: {{filename: {d}/ca.pem}}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{exact: 'spiffe://{TRUST_DOMAIN}/ns/{NS}/sa/min-{peer}'}}"
    )
}

/// The floor's Envoy config for one side: one listener (outbound capture port on the client,
/// inbound on the server), one static cluster, mTLS between them, nothing else.
fn minimal_envoy_config(
    dir: &Path,
    client: bool,
    server_ip: Ipv4Addr,
    extra: Option<Extra>,
    sink: std::net::SocketAddr,
) -> String {
    let (listen, cluster_addr, cluster_port) = if client {
        (15001, server_ip.to_string(), PORT)
    } else {
        (15006, "127.0.0.1".to_string(), PORT)
    };
    let (downstream_tls, upstream_tls) = if client {
        (
            String::new(),
            format!(
                "transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        {}",
                tls_context(dir, "client", "server")
            ),
        )
    } else {
        (
            format!(
                "transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          {}",
                tls_context(dir, "server", "client").replace("\n", "\n  ")
            ),
            String::new(),
        )
    };
    let route_extra = if client && Extra::has(extra, Extra::Retry) {
        ", timeout: 0s, retry_policy: {retry_on: 'connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes', \
         num_retries: 2, retriable_status_codes: [503], host_selection_retry_max_attempts: 5, \
         retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: \
         {'@type': type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}]}"
    } else {
        ""
    };
    let filters_extra = if client && Extra::has(extra, Extra::Filters) {
        "- name: envoy.filters.http.cors
            typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}
          - name: envoy.filters.http.fault
            typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}
          "
    } else {
        ""
    };
    let xfcc = if !client && Extra::has(extra, Extra::Xfcc) {
        "forward_client_cert_details: APPEND_FORWARD
          set_current_client_cert_details: {subject: true, dns: true, uri: true}"
    } else {
        ""
    };
    let lb = if client && Extra::has(extra, Extra::LeastRequest) {
        "lb_policy: LEAST_REQUEST
    circuit_breakers: {thresholds: [{max_connections: 4294967295, max_pending_requests: 4294967295, \
      max_requests: 4294967295, max_retries: 4294967295, track_remaining: true}]}"
    } else {
        ""
    };
    let access_log = match extra {
        Some(Extra::StatsLog) => STATS_LOG,
        Some(Extra::JsonLog) => JSON_LOG,
        Some(Extra::GrpcLog) => GRPC_LOG,
        Some(Extra::OtelLog) => OTEL_LOG,
        _ => "",
    };
    let sink_cluster = if matches!(extra, Some(Extra::GrpcLog | Extra::OtelLog)) {
        format!(
            "- name: sink
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: sink
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}",
            sink.ip(),
            sink.port()
        )
    } else {
        String::new()
    };
    format!(
        "admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 15000}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 0.0.0.0, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          route_config:
            virtual_hosts:
            - name: all
              domains: ['*']
              routes: [{{match: {{prefix: /}}, route: {{cluster: upstream{route_extra}}}}}]
          {xfcc}
          {access_log}
          http_filters:
          {filters_extra}- name: envoy.filters.http.router
            typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
      {downstream_tls}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    {lb}
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {cluster_addr}, port_value: {cluster_port}}}}}}}
    {upstream_tls}
  {sink_cluster}
"
    )
}

/// The hand-written pair: plain pods with the same capture rules, the same app and Envoy flags
/// as the local mesh's sidecars, and the static config. Returns the client pod and the
/// processes (stopped on drop).
pub(super) fn start(
    mesh: &LocalMesh,
    meshd: &Path,
    envoy: &Path,
    dir: &Path,
    kind: Kind,
    sink: std::net::SocketAddr,
) -> anyhow::Result<(Pod, Vec<Child>)> {
    let (prefix, host) = kind.pods();
    let extra = match kind {
        Kind::MinimalWith(e) => Some(e),
        _ => None,
    };
    let server_ip = pod_ip(host + 10);
    let dir = &dir.join(prefix);
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    write_static_certs(dir)?;
    let mut procs = Vec::new();
    let mut client_pod = None;
    for (role, ip) in [("server", server_ip), ("client", pod_ip(host))] {
        let pod = mesh.add_plain_pod(&format!("{prefix}-{role}"), ip)?;
        let mut capture = vec![meshd.to_string_lossy().into_owned(), "init-iptables".into()];
        capture.extend(CAPTURE.map(String::from));
        pod.run(&capture)
            .with_context(|| format!("capture rules in {}", pod.name))?;
        if role == "server" {
            let port = PORT.to_string();
            let meshd = meshd.to_string_lossy();
            let name = format!("{prefix}-server");
            procs.push(pod.spawn([&meshd, "workload", "--name", &name, "--port", &port])?);
        }
        let config = dir.join(format!("envoy-{role}.yaml"));
        write_readable(
            &config,
            &minimal_envoy_config(dir, role == "client", server_ip, extra, sink),
        )?;
        let envoy = envoy.to_string_lossy();
        let config = config.to_string_lossy();
        let argv = [
            &*envoy,
            "--disable-hot-restart",
            "--drain-strategy",
            "immediate",
            "--drain-time-s",
            "45",
            "-c",
            &config,
            "--log-level",
            "warn",
        ];
        procs.push(pod.spawn_as(PROXY_UID, 1337, argv)?);
        let ready = wait_until(Duration::from_secs(30), || {
            matches!(envoy_admin_get(&pod, "/ready"), Ok((200, _)))
        });
        if !ready {
            let log = procs.last().map(Child::log_tail).unwrap_or_default();
            bail!("minimal Envoy in {} not ready; log:\n{log}", pod.name);
        }
        if role == "client" {
            client_pod = Some(pod);
        }
    }
    Ok((client_pod.context("client pod")?, procs))
}
