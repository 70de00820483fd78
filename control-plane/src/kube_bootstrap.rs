//! `meshd bootstrap --registry kubernetes`: the bootstrap the injected `meshd-bootstrap` init
//! container writes for a Pod.
//!
//! # The credential, and why it keeps working past the token's lifetime
//!
//! Stock Envoy's `envoy_grpc` client only sends *static* `initial_metadata`, so a token baked
//! into the bootstrap would stop working when it expires (12 h) and every reconnect after that
//! would fail. Instead ADS goes through Envoy's Google gRPC client with the
//! `envoy.grpc_credentials.file_based_metadata` call credential: it reads the projected token
//! file (`/var/run/secrets/tokens/istio-token`, audience `istio-ca`) each time a stream opens
//! and sends `authorization: Bearer <file content>`. The kubelet rewrites that file at 80% of
//! the token's lifetime, so a proxy reconnecting after its first token expired presents the
//! current one, with no agent and no pod restart. Checked against Envoy 1.40: replacing the
//! file changes the header on the next stream; a trailing newline in the file makes every
//! stream fail with status 13 (projected tokens have none).
//!
//! gRPC only attaches call credentials on secure channels, so this path is TLS to meshd's
//! 15012, verified with the mesh root from the `istio-ca-root-cert` ConfigMap; the server
//! certificate must carry the host of `--xds-address` (`meshd.<ns>.svc`) or
//! `--xds-server-name`.
//!
//! # Request telemetry
//!
//! The listeners meshd sends stream their access logs to the cluster `xds-grpc` (Envoy gRPC,
//! which only sends static metadata), so this bootstrap defines it: TLS to the same address as
//! ADS, meshd's certificate checked against the root certificate file and the server name, and
//! an upstream `envoy.filters.http.credential_injector` that sets `authorization: Bearer
//! <token>`. Both the token and the root come through SDS files written next to the bootstrap
//! ([`SdsFiles`]) that name the mounted files and watch their directories, so the kubelet's
//! swap of `..data` (a new token, a rotated root in the ConfigMap) reaches the next stream.
//! Checked against Envoy 1.40: after such a swap the next stream carries the new token; a
//! static secret keeps the first one forever; and a static cluster whose secret comes over ADS
//! crashes Envoy at startup (the ADS mux does not exist yet), hence files.
//!
//! # Probes
//!
//! The injector records each rewritten app probe in `MESHD_APP_PROBERS`;
//! `meshd_injector::envoy_probes` turns each into config on the health listener (15021): a
//! route to the app for `httpGet`, an answer from an actively health-checked cluster for
//! `tcpSocket` and `grpc`, so the kubelet's probes work under STRICT mTLS. It also serves
//! Istio's status port (loopback 15020) with `/quitquitquit`.

use crate::bootstrap::{self, BootstrapSpec};
use anyhow::{Context, anyhow};
use meshd_injector::AppProbers;
use meshd_xds::NodeType;
use meshd_xds::generate::telemetry::TELEMETRY_CLUSTER;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
pub struct KubeBootstrapSpec {
    pub pod: String,
    pub namespace: String,
    pub ip: String,
    pub service_account: String,
    pub node_type: NodeType,
    /// `HOST:PORT` of meshd's TLS xDS port.
    pub xds_address: String,
    /// Name to verify the server certificate against, when not the host of `xds_address`.
    pub xds_server_name: Option<String>,
    pub token_file: String,
    /// Where the SDS files naming `token_file` and `root_cert_file` are ([`SdsFiles`]).
    pub sds: SdsFiles,
    pub root_cert_file: String,
    pub admin_port: u16,
    pub delta: bool,
    pub app_probers: AppProbers,
    /// Node metadata `ISTIO_VERSION` (EnvoyFilter `match.proxy.proxyVersion`).
    pub istio_version: Option<String>,
    pub stats_matcher: Option<meshd_injector::stats_matcher::StatsInclusion>,
}

fn ads_grpc_service(spec: &KubeBootstrapSpec) -> Value {
    let mut args = serde_json::Map::new();
    args.insert(
        "grpc.keepalive_time_ms".into(),
        json!({"int_value": "30000"}),
    );
    args.insert(
        "grpc.keepalive_timeout_ms".into(),
        json!({"int_value": "10000"}),
    );
    // gRPC core uses the reconnect backoff as the connect deadline, at least the minimum
    // (20 s by default): after its meshd replica dies, a sidecar whose first reconnect went to
    // the dead pod's address (the Service not yet updated) would wait 20 s, with stale
    // endpoints, before trying a live one. 2 s bounds that wait; Envoy's own jittered stream
    // backoff still spreads a fleet's reconnects.
    args.insert(
        "grpc.min_reconnect_backoff_ms".into(),
        json!({"int_value": "2000"}),
    );
    args.insert(
        "grpc.initial_reconnect_backoff_ms".into(),
        json!({"int_value": "500"}),
    );
    args.insert(
        "grpc.max_reconnect_backoff_ms".into(),
        json!({"int_value": "10000"}),
    );
    if let Some(name) = &spec.xds_server_name {
        args.insert(
            "grpc.ssl_target_name_override".into(),
            json!({"string_value": name}),
        );
    }
    json!({
        "google_grpc": {
            "target_uri": spec.xds_address,
            "stat_prefix": "xds_grpc",
            "channel_credentials": {"ssl_credentials": {
                "root_certs": {"filename": spec.root_cert_file}
            }},
            "credentials_factory_name": "envoy.grpc_credentials.file_based_metadata",
            "call_credentials": [{"from_plugin": {
                "name": "envoy.grpc_credentials.file_based_metadata",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.grpc_credential.v3.FileBasedMetadataConfig",
                    "secret_data": {"filename": spec.token_file},
                    "header_prefix": "Bearer "
                }
            }}],
            "channel_args": {"args": args}
        }
    })
}

pub fn render(spec: &KubeBootstrapSpec) -> anyhow::Result<Value> {
    if spec.pod.is_empty() || spec.namespace.is_empty() {
        return Err(anyhow!("--workload must be POD.NAMESPACE"));
    }
    if spec.ip.is_empty() {
        return Err(anyhow!(
            "--pod-ip is empty (the injected init container sets it from status.podIP)"
        ));
    }
    let mut b = bootstrap::render(&BootstrapSpec {
        workload: spec.pod.clone(),
        namespace: spec.namespace.clone(),
        ip: spec.ip.clone(),
        node_type: spec.node_type,
        xds_address: spec.xds_address.clone(),
        admin_port: spec.admin_port,
        credential: String::new(),
        delta: spec.delta,
        istio_version: spec.istio_version.clone(),
        stats_matcher: spec.stats_matcher.clone(),
    })?;
    b["dynamic_resources"]["ads_config"]["grpc_services"] = json!([ads_grpc_service(spec)]);
    b["node"]["metadata"]["SERVICE_ACCOUNT"] = json!(spec.service_account);
    let clusters = b["static_resources"]["clusters"]
        .as_array_mut()
        .context("bootstrap has no static clusters")?;
    // ADS goes through Google gRPC; the Envoy-gRPC cluster carries the access-log streams.
    clusters.retain(|c| c["name"] != TELEMETRY_CLUSTER);
    clusters.push(telemetry_cluster(spec)?);
    meshd_injector::envoy_probes::apply(&mut b, &spec.app_probers).map_err(|e| anyhow!(e))?;
    Ok(b)
}

const TOKEN_SECRET: &str = "meshd-token";
const ROOT_SECRET: &str = "meshd-root";

/// The SDS files `meshd bootstrap` writes beside the bootstrap. They hold no secret, only the
/// paths of the mounted token and root certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdsFiles {
    pub token: String,
    pub root: String,
}

impl SdsFiles {
    /// Beside `out` (absolute: Envoy's working directory is not the init container's).
    pub fn beside(out: &std::path::Path) -> anyhow::Result<SdsFiles> {
        let at = |name: &str| -> anyhow::Result<String> {
            Ok(std::path::absolute(out.with_file_name(name))
                .with_context(|| format!("the path of {name}"))?
                .to_string_lossy()
                .into_owned())
        };
        Ok(SdsFiles {
            token: at("meshd-token-sds.json")?,
            root: at("meshd-root-sds.json")?,
        })
    }

    pub fn write(&self, spec: &KubeBootstrapSpec) -> anyhow::Result<()> {
        for (path, content) in [
            (&self.token, token_sds(&spec.token_file)),
            (&self.root, root_sds(&spec.root_cert_file)),
        ] {
            std::fs::write(path, serde_json::to_string_pretty(&content)?)
                .with_context(|| format!("writing {path}"))?;
        }
        Ok(())
    }
}

fn sds_file(secret: Value) -> Value {
    let mut secret = secret;
    secret["@type"] = json!("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret");
    json!({"resources": [secret]})
}

/// The token file as a generic secret.
pub fn token_sds(token_file: &str) -> Value {
    sds_file(json!({"name": TOKEN_SECRET, "generic_secret": {"secret": {"filename": token_file}}}))
}

/// The root certificate file as a validation context.
pub fn root_sds(root_cert_file: &str) -> Value {
    sds_file(json!({
        "name": ROOT_SECRET,
        "validation_context": {"trusted_ca": {"filename": root_cert_file}}
    }))
}

/// SDS from `file`, read again whenever something moves into the watched file's directory.
fn watched(file: &str, watched_file: &str) -> anyhow::Result<Value> {
    let dir = std::path::Path::new(watched_file)
        .parent()
        .map(|d| d.to_string_lossy().into_owned())
        .filter(|d| !d.is_empty())
        .ok_or_else(|| anyhow!("`{watched_file}` has no directory"))?;
    Ok(json!({"path_config_source": {"path": file, "watched_directory": {"path": dir}}}))
}

/// `xds-grpc` for the access-log streams: see the module's "Request telemetry".
fn telemetry_cluster(spec: &KubeBootstrapSpec) -> anyhow::Result<Value> {
    let (host, port) = spec
        .xds_address
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--xds-address `{}` is not HOST:PORT", spec.xds_address))?;
    let port: u16 = port.parse().context("--xds-address port")?;
    let server_name = spec.xds_server_name.as_deref().unwrap_or(host);
    let is_ip = server_name.parse::<std::net::IpAddr>().is_ok();
    let san_type = if is_ip { "IP_ADDRESS" } else { "DNS" };
    let token_sds = watched(&spec.sds.token, &spec.token_file)?;
    let root_sds = watched(&spec.sds.root, &spec.root_cert_file)?;
    let mut cluster = json!({
        "name": TELEMETRY_CLUSTER,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": TELEMETRY_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": host, "port_value": port}
            }}}]}]
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "combined_validation_context": {
                        "default_validation_context": {"match_typed_subject_alt_names": [{
                            "san_type": san_type,
                            "matcher": {"exact": server_name}
                        }]},
                        "validation_context_sds_secret_config": {
                            "name": ROOT_SECRET,
                            "sds_config": root_sds
                        }
                    }
                }
            }
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {
                    "connection_keepalive": {"interval": "30s", "timeout": "5s"}
                }},
                "http_filters": [
                    {
                        "name": "envoy.filters.http.credential_injector",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
                            "overwrite": true,
                            "credential": {
                                "name": "envoy.http.injected_credentials.generic",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic",
                                    "credential": {
                                        "name": TOKEN_SECRET,
                                        "sds_config": token_sds
                                    },
                                    "header_value_prefix": "Bearer "
                                }
                            }
                        }
                    },
                    {
                        "name": "envoy.filters.http.upstream_codec",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}
                    }
                ]
            }
        }
    });
    // SNI names a host, never an address (meshd's TLS stack refuses an IP there).
    if !is_ip {
        cluster["transport_socket"]["typed_config"]["sni"] = json!(server_name);
    }
    Ok(cluster)
}

/// `meshd bootstrap` flags for Kubernetes mode (flattened into the bootstrap command).
#[derive(clap::Args, Clone, Debug)]
pub struct KubeBootstrapArgs {
    /// `file`: a WorkloadEntry of the mesh config, with a meshd credential. `kubernetes`: a
    /// Pod, authenticating with its projected service-account token file.
    #[arg(long, env = "MESHD_REGISTRY", default_value = "file", value_parser = ["file", "kubernetes"])]
    pub registry: String,
    /// Kubernetes mode: the pod's IP (status.podIP).
    #[arg(long, env = "POD_IP", default_value = "")]
    pub pod_ip: String,
    /// Kubernetes mode: the pod's service account (recorded in the node metadata).
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    pub service_account: String,
    /// Kubernetes mode: the projected token Envoy sends (re-read on every new xDS stream).
    #[arg(long, default_value = meshd_injector::config::paths::TOKEN_FILE)]
    pub token_file: String,
    /// Kubernetes mode: the mesh root certificate that verifies meshd's TLS xDS port.
    #[arg(long, default_value = meshd_injector::config::paths::ROOT_CERT_FILE)]
    pub root_cert: String,
    /// Kubernetes mode: the name meshd's certificate is checked against (default: the host
    /// of --xds-address).
    #[arg(long)]
    pub xds_server_name: Option<String>,
    /// Kubernetes mode: `sidecar` or `router` (gateways).
    #[arg(long, default_value = "sidecar", value_parser = ["sidecar", "router"])]
    pub node_type: String,
    /// Kubernetes mode: rewritten app probes, as the injector records them (JSON).
    #[arg(long, env = meshd_injector::APP_PROBERS_ENV, default_value = "")]
    pub app_probers: String,
    /// Kubernetes mode: how long to keep asking meshd for the proxy's EnvoyFilter BOOTSTRAP
    /// patches before failing (the kubelet then restarts this init container).
    #[arg(long, default_value = "60s", value_parser = meshd_model::duration::parse)]
    pub patch_timeout: std::time::Duration,
    /// Either registry: which of Envoy's stats the proxy records, as the injector reads the
    /// pod's `proxyStatsMatcher` and `statsInclusion*` annotations (JSON); none: every stat.
    #[arg(long, env = meshd_injector::stats_matcher::STATS_MATCHER_ENV, value_parser = crate::bootstrap::parse_stats_matcher)]
    pub stats_matcher: Option<meshd_injector::stats_matcher::StatsInclusion>,
}

/// Writes the Kubernetes-mode bootstrap for `POD.NAMESPACE`.
pub fn write(
    workload: &str,
    out: &std::path::Path,
    xds_address: &str,
    admin_port: u16,
    delta: bool,
    istio_version: Option<String>,
    args: &KubeBootstrapArgs,
) -> anyhow::Result<()> {
    let (pod, namespace) = workload
        .rsplit_once('.')
        .ok_or_else(|| anyhow!("--workload `{workload}` is not POD.NAMESPACE"))?;
    let app_probers: AppProbers = if args.app_probers.trim().is_empty() {
        AppProbers::new()
    } else {
        serde_json::from_str(&args.app_probers)
            .with_context(|| format!("{} is not valid JSON", meshd_injector::APP_PROBERS_ENV))?
    };
    let spec = KubeBootstrapSpec {
        pod: pod.to_string(),
        namespace: namespace.to_string(),
        ip: args.pod_ip.clone(),
        service_account: args.service_account.clone(),
        node_type: if args.node_type == "router" {
            NodeType::Router
        } else {
            NodeType::Sidecar
        },
        xds_address: xds_address.to_string(),
        xds_server_name: args.xds_server_name.clone(),
        token_file: args.token_file.clone(),
        sds: SdsFiles::beside(out)?,
        root_cert_file: args.root_cert.clone(),
        admin_port,
        delta,
        app_probers,
        istio_version,
        stats_matcher: args.stats_matcher.clone(),
    };
    let rendered = render(&spec)?;
    let patch = fetch_patches(&spec, &rendered["node"], args.patch_timeout)?;
    let rendered = crate::bootstrap_patch::merge(&rendered, &patch)?;
    let text = serde_json::to_string_pretty(&rendered)?;
    // Written first: Envoy reads them when the bootstrap names them.
    spec.sds.write(&spec)?;
    bootstrap::write_private(out, text.as_bytes())
}

/// The EnvoyFilter BOOTSTRAP patches meshd has for this pod's proxy, asked with the pod's token
/// over the TLS port its Envoy will use.
fn fetch_patches(
    spec: &KubeBootstrapSpec,
    node: &Value,
    deadline: std::time::Duration,
) -> anyhow::Result<Vec<u8>> {
    let token = std::fs::read_to_string(&spec.token_file)
        .with_context(|| format!("reading the token {}", spec.token_file))?;
    let root_cert_pem = std::fs::read(&spec.root_cert_file)
        .with_context(|| format!("reading the root certificate {}", spec.root_cert_file))?;
    let host = spec
        .xds_address
        .rsplit_once(':')
        .map_or(spec.xds_address.as_str(), |(h, _)| h);
    let fetch = crate::bootstrap_patch::Fetch {
        xds_address: &spec.xds_address,
        server_name: spec.xds_server_name.as_deref().unwrap_or(host),
        root_cert_pem,
        token,
        node,
        deadline,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(crate::bootstrap_patch::fetch(&fetch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_injector::AppProber;

    fn spec() -> KubeBootstrapSpec {
        KubeBootstrapSpec {
            pod: "gateway-7d4b9c6f5d-x2x9q".into(),
            namespace: "voicecore-ai".into(),
            ip: "10.244.1.7".into(),
            service_account: "gateway".into(),
            node_type: NodeType::Sidecar,
            xds_address: "meshd.meshd-system.svc:15012".into(),
            xds_server_name: None,
            token_file: "/var/run/secrets/tokens/istio-token".into(),
            sds: SdsFiles {
                token: "/etc/istio/proxy/meshd-token-sds.json".into(),
                root: "/etc/istio/proxy/meshd-root-sds.json".into(),
            },
            root_cert_file: "/var/run/secrets/istio/root-cert.pem".into(),
            admin_port: 15000,
            delta: false,
            istio_version: None,
            stats_matcher: None,
            app_probers: AppProbers::from([
                (
                    "/app-health/gateway/livez".to_string(),
                    AppProber {
                        port: 8000,
                        path: "/health".into(),
                        scheme: "HTTP".into(),
                        ..AppProber::default()
                    },
                ),
                (
                    "/app-health/gateway/readyz".to_string(),
                    AppProber {
                        port: 8000,
                        path: "/ready".into(),
                        scheme: "HTTP".into(),
                        ..AppProber::default()
                    },
                ),
            ]),
        }
    }

    #[test]
    fn token_file_credential_over_tls() {
        let b = render(&spec()).unwrap();
        assert_eq!(
            b["node"]["id"],
            "sidecar~10.244.1.7~gateway-7d4b9c6f5d-x2x9q.voicecore-ai~voicecore-ai.svc.cluster.local"
        );
        let g = &b["dynamic_resources"]["ads_config"]["grpc_services"][0]["google_grpc"];
        assert_eq!(g["target_uri"], "meshd.meshd-system.svc:15012");
        assert_eq!(
            g["channel_credentials"]["ssl_credentials"]["root_certs"]["filename"],
            "/var/run/secrets/istio/root-cert.pem"
        );
        let plugin = &g["call_credentials"][0]["from_plugin"];
        assert_eq!(plugin["name"], "envoy.grpc_credentials.file_based_metadata");
        assert_eq!(
            plugin["typed_config"]["secret_data"]["filename"],
            "/var/run/secrets/tokens/istio-token"
        );
        assert_eq!(plugin["typed_config"]["header_prefix"], "Bearer ");
        // A reconnect to a dead replica's address gives up after 2 s, not gRPC's 20 s.
        let args = &g["channel_args"]["args"];
        assert_eq!(args["grpc.min_reconnect_backoff_ms"]["int_value"], "2000");
        assert_eq!(args["grpc.max_reconnect_backoff_ms"]["int_value"], "10000");
        // No token and no meshd credential anywhere in the file.
        assert!(!b.to_string().contains("initial_metadata"));
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        assert!(clusters.iter().any(|c| c["name"] == "app-health-8000"));
    }

    fn root_sds_content() -> Value {
        root_sds("/var/run/secrets/istio/root-cert.pem")
    }

    #[test]
    fn access_log_streams_go_over_tls_with_token_and_root_files_reread_on_rotation() {
        let b = render(&spec()).unwrap();
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        let xds: Vec<&Value> = clusters
            .iter()
            .filter(|c| c["name"] == "xds-grpc")
            .collect();
        assert_eq!(xds.len(), 1, "one xds-grpc cluster: {clusters:#?}");
        let xds = xds[0];
        assert_eq!(xds["type"], "STRICT_DNS");
        let addr = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(addr["address"], "meshd.meshd-system.svc");
        assert_eq!(addr["port_value"], 15012);
        let tls = &xds["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], "meshd.meshd-system.svc");
        let v = &tls["common_tls_context"]["combined_validation_context"];
        let root = &v["validation_context_sds_secret_config"];
        let root_sds = &root["sds_config"]["path_config_source"];
        assert_eq!(root_sds["path"], "/etc/istio/proxy/meshd-root-sds.json");
        assert_eq!(
            root_sds["watched_directory"]["path"],
            "/var/run/secrets/istio"
        );
        let file = root_sds_content();
        assert_eq!(file["resources"][0]["name"], root["name"]);
        assert_eq!(
            file["resources"][0]["validation_context"]["trusted_ca"]["filename"],
            "/var/run/secrets/istio/root-cert.pem"
        );
        let san = &v["default_validation_context"]["match_typed_subject_alt_names"][0];
        assert_eq!(san["san_type"], "DNS");
        assert_eq!(san["matcher"]["exact"], "meshd.meshd-system.svc");
        let filters = &xds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["http_filters"];
        let generic = &filters[0]["typed_config"]["credential"]["typed_config"];
        assert_eq!(generic["header_value_prefix"], "Bearer ");
        let sds = &generic["credential"]["sds_config"]["path_config_source"];
        assert_eq!(sds["path"], "/etc/istio/proxy/meshd-token-sds.json");
        assert_eq!(sds["watched_directory"]["path"], "/var/run/secrets/tokens");
        assert_eq!(filters[1]["name"], "envoy.filters.http.upstream_codec");
        // The SDS file names the token; it holds none.
        let file = token_sds("/var/run/secrets/tokens/istio-token");
        assert_eq!(
            file["resources"][0]["generic_secret"]["secret"]["filename"],
            "/var/run/secrets/tokens/istio-token"
        );
        assert_eq!(file["resources"][0]["name"], generic["credential"]["name"]);
        // An IP address is checked as one.
        let ip = render(&KubeBootstrapSpec {
            xds_address: "10.96.0.10:15012".into(),
            ..spec()
        })
        .unwrap();
        let xds = ip["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "xds-grpc")
            .unwrap()
            .clone();
        assert_eq!(
            xds["transport_socket"]["typed_config"]["common_tls_context"]["combined_validation_context"]
                ["default_validation_context"]["match_typed_subject_alt_names"][0]["san_type"],
            "IP_ADDRESS"
        );
        assert!(xds["transport_socket"]["typed_config"].get("sni").is_none());
    }

    #[test]
    fn probe_routes_on_the_health_listener() {
        let b = render(&spec()).unwrap();
        let health = b["static_resources"]["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "health")
            .unwrap();
        let routes = &health["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]
            [0]["routes"];
        assert_eq!(routes[0]["match"]["path"], "/app-health/gateway/livez");
        assert_eq!(routes[0]["route"]["prefix_rewrite"], "/health");
        assert_eq!(routes[1]["route"]["prefix_rewrite"], "/ready");
        // Envoy's own readiness stays last.
        assert_eq!(routes[2]["match"]["prefix"], "/healthz/ready");
    }
}
