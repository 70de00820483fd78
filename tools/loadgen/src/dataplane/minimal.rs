//! The floor of the data-plane bench: a hand-written static Envoy pair (one listener and one
//! cluster per side, mTLS from a throwaway CA, no access log, no stats sinks) in two plain pods
//! with the same capture rules, app and Envoy flags as the local mesh's sidecars.

use super::{Kind, NS, PORT, TRUST_DOMAIN, pod_ip};
use anyhow::{Context, bail};
use meshd_localmesh::mesh::{LocalMesh, PROXY_UID, envoy_admin_get};
use meshd_localmesh::podnet::{Child, Pod, wait_until};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

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
fn minimal_envoy_config(dir: &Path, client: bool, server_ip: Ipv4Addr) -> String {
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
              routes: [{{match: {{prefix: /}}, route: {{cluster: upstream}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
      {downstream_tls}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {cluster_addr}, port_value: {cluster_port}}}}}}}
    {upstream_tls}
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
) -> anyhow::Result<(Pod, Vec<Child>)> {
    let (prefix, host) = Kind::Minimal.pods();
    let server_ip = pod_ip(host + 10);
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
            procs.push(pod.spawn([&meshd, "workload", "--name", "min-server", "--port", &port])?);
        }
        let config = dir.join(format!("envoy-{role}.yaml"));
        write_readable(
            &config,
            &minimal_envoy_config(dir, role == "client", server_ip),
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
