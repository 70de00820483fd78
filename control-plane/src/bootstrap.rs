//! `meshd bootstrap`: the Envoy bootstrap for one workload, carrying the credential that proves
//! its identity to the control plane. Everything else Envoy gets over ADS.

use anyhow::{Context, anyhow};
use meshd_ca::WorkloadClaims;
use meshd_injector::stats_matcher::{ISTIO_DEFAULT_PREFIXES, StatsInclusion};
use meshd_model::MeshConfig;
use meshd_xds::generate::telemetry::TELEMETRY_CLUSTER;
use meshd_xds::{NodeId, NodeType};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct BootstrapSpec {
    pub workload: String,
    pub namespace: String,
    pub ip: String,
    pub node_type: NodeType,
    pub xds_address: String,
    pub admin_port: u16,
    pub credential: String,
    pub delta: bool,
    /// Node metadata `ISTIO_VERSION`, which EnvoyFilter `match.proxy.proxyVersion` matches.
    pub istio_version: Option<String>,
    /// Which of Envoy's stats the proxy records; `None`: all of them.
    pub stats_matcher: Option<StatsInclusion>,
}

/// `--stats-matcher`: a [`StatsInclusion`] as JSON, checked as the injector checks it.
pub fn parse_stats_matcher(text: &str) -> Result<StatsInclusion, String> {
    let m: StatsInclusion =
        serde_json::from_str(text).map_err(|e| format!("not a stats inclusion (JSON): {e}"))?;
    m.check("--stats-matcher")?;
    Ok(m)
}

/// Envoy's `stats_matcher` for a chosen set: Istio's default prefixes and the pod's patterns.
fn stats_matcher(m: &StatsInclusion) -> Value {
    let patterns: Vec<Value> = ISTIO_DEFAULT_PREFIXES
        .iter()
        .map(|p| json!({"prefix": p}))
        .chain(m.inclusion_prefixes.iter().map(|p| json!({"prefix": p})))
        .chain(m.inclusion_suffixes.iter().map(|p| json!({"suffix": p})))
        .chain(
            m.inclusion_regexps
                .iter()
                .map(|p| json!({"safe_regex": {"regex": p}})),
        )
        .collect();
    json!({"inclusion_list": {"patterns": patterns}})
}

/// Resolves a `NAME.NAMESPACE` workload against the mesh config: its address, service account
/// and whether it is a gateway.
pub fn resolve(
    mesh: &MeshConfig,
    workload: &str,
    credential_ttl: Duration,
) -> anyhow::Result<(WorkloadClaims, String, NodeType)> {
    let (name, namespace) = workload
        .rsplit_once('.')
        .ok_or_else(|| anyhow!("--workload `{workload}` is not NAME.NAMESPACE"))?;
    let w = mesh.workload(name, namespace).ok_or_else(|| {
        anyhow!(
            "no WorkloadEntry {namespace}/{name} in the mesh config (known: {})",
            mesh.workloads
                .iter()
                .map(|w| w.id())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    if credential_ttl.is_zero() {
        return Err(anyhow!("--credential-ttl must be positive"));
    }
    let claims = WorkloadClaims::new(name, namespace, &w.service_account, credential_ttl);
    let node_type = NodeType::of_workload(w);
    Ok((claims, w.address.clone(), node_type))
}

/// Writes `bytes` to `path` readable by its owner only (0600), as every file carrying a
/// credential must be: created with that mode (no window at a wider one), an existing file
/// narrowed first.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to its owner", path.display()))?;
    f.set_len(0)
        .and_then(|()| f.write_all(bytes))
        .with_context(|| format!("writing {}", path.display()))
}

fn static_cluster(name: &str, host: &str, port: u16, http2: bool) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": host, "port_value": port}
            }}}]}]
        }
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {
                    "connection_keepalive": {"interval": "30s", "timeout": "5s"}
                }}
            }
        });
    }
    c
}

/// Sets `authorization: Bearer <credential>` on every request the cluster carries. The
/// access-log streams meshd's listeners open to this cluster then prove the proxy's identity as
/// its ADS stream does: the listeners are shared by many proxies and cannot carry one's
/// credential, and Envoy's gRPC client sends only static metadata of its own.
fn authorize_every_request(cluster: &mut Value, credential: &str) {
    cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        ["http_filters"] = json!([
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"request_mutations": [{"append": {
                    "header": {"key": "authorization", "value": format!("Bearer {credential}")},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"
                }}]}
            }
        },
        {
            "name": "envoy.filters.http.upstream_codec",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}
        }
    ]);
}

/// A listener proxying a path to Envoy's own admin endpoint (readiness, Prometheus stats), so
/// those work with no agent beside Envoy.
fn admin_proxy_listener(name: &str, port: u16, path: &str, rewrite: &str) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{
                    "name": name,
                    "domains": ["*"],
                    "routes": [{
                        "match": {"prefix": path},
                        "route": {"cluster": "envoy_admin", "prefix_rewrite": rewrite}
                    }]
                }]},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                }]
            }
        }]}]
    })
}

pub fn render(spec: &BootstrapSpec) -> anyhow::Result<Value> {
    let (host, port) = spec
        .xds_address
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--xds-address `{}` is not HOST:PORT", spec.xds_address))?;
    let port: u16 = port.parse().context("--xds-address port")?;
    let node_id = NodeId::format(spec.node_type, &spec.ip, &spec.workload, &spec.namespace);
    let mut xds = static_cluster(TELEMETRY_CLUSTER, host, port, true);
    if !spec.credential.is_empty() {
        authorize_every_request(&mut xds, &spec.credential);
    }
    let clusters = vec![
        xds,
        static_cluster("envoy_admin", "127.0.0.1", spec.admin_port, false),
    ];
    let listeners = vec![
        admin_proxy_listener("health", 15021, "/healthz/ready", "/ready"),
        admin_proxy_listener(
            "prometheus_stats",
            15090,
            "/stats/prometheus",
            "/stats/prometheus",
        ),
    ];
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
    let mut b = json!({
        "node": {
            "id": node_id,
            "cluster": format!("{}.{}", spec.workload, spec.namespace),
            "metadata": {
                "NAMESPACE": spec.namespace,
                "WORKLOAD_NAME": spec.workload,
                "INSTANCE_IPS": spec.ip,
            }
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": spec.admin_port}}
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": if spec.delta { "DELTA_GRPC" } else { "GRPC" },
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{
                    "envoy_grpc": {"cluster_name": "xds-grpc"},
                    "initial_metadata": [{"key": "authorization", "value": format!("Bearer {}", spec.credential)}]
                }]
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {"clusters": clusters, "listeners": listeners},
        "stats_config": {"stats_tags": []}
    });
    if let Some(v) = &spec.istio_version {
        b["node"]["metadata"]["ISTIO_VERSION"] = json!(v);
    }
    if let Some(m) = &spec.stats_matcher {
        b["stats_config"]["stats_matcher"] = stats_matcher(m);
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_workloads_from_the_mesh() {
        let mesh = crate::source::FileSource::new(None).reload();
        let day = Duration::from_secs(24 * 3600);
        let (claims, ip, ty) = resolve(&mesh, "billing-service-v1.voicecore-ai", day).unwrap();
        assert_eq!(claims.service_account, "billing-service");
        assert_eq!(claims.expires_at, claims.issued_at + 24 * 3600);
        assert_eq!(ip, "10.44.0.17");
        assert_eq!(ty, NodeType::Sidecar);
        let (_, _, ty) = resolve(&mesh, "ingressgateway.istio-system", day).unwrap();
        assert_eq!(ty, NodeType::Router);
        assert!(resolve(&mesh, "ingressgateway.istio-system", Duration::ZERO).is_err());
        let err = resolve(&mesh, "nope.voicecore-ai", day)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no WorkloadEntry"), "{err}");
    }

    /// Sidecar `a.ns` at 10.0.0.1 with a credential, SotW, reporting Istio 1.24.0.
    fn spec() -> BootstrapSpec {
        BootstrapSpec {
            workload: "a".into(),
            namespace: "ns".into(),
            ip: "10.0.0.1".into(),
            node_type: NodeType::Sidecar,
            xds_address: "10.0.0.254:15010".into(),
            admin_port: 15000,
            credential: "meshd1.x.y".into(),
            delta: false,
            istio_version: Some("1.24.0".into()),
            stats_matcher: None,
        }
    }

    /// No choice keeps every stat; a chosen set is Istio's default prefixes and the pod's
    /// patterns, each as Envoy's matcher kind.
    #[test]
    fn a_chosen_stats_set_is_envoys_inclusion_list() {
        let spec = BootstrapSpec {
            credential: String::new(),
            delta: true,
            istio_version: None,
            ..spec()
        };
        assert!(render(&spec).unwrap()["stats_config"]["stats_matcher"].is_null());
        let m = parse_stats_matcher(
            r#"{"inclusionPrefixes":["cluster.outbound"],"inclusionSuffixes":["upstream_rq_timeout"],"inclusionRegexps":[".*outlier_detection.*"]}"#,
        )
        .unwrap();
        let b = render(&BootstrapSpec {
            stats_matcher: Some(m),
            ..spec
        })
        .unwrap();
        assert_eq!(
            b["stats_config"]["stats_matcher"],
            json!({"inclusion_list": {"patterns": [
                {"prefix": "cluster_manager"}, {"prefix": "listener_manager"}, {"prefix": "server"},
                {"prefix": "cluster.xds-grpc"}, {"prefix": "cluster.outbound"},
                {"suffix": "upstream_rq_timeout"}, {"safe_regex": {"regex": ".*outlier_detection.*"}},
            ]}})
        );
        // The stat tags stay as they were beside it.
        assert_eq!(b["stats_config"]["stats_tags"], json!([]));
        let bad = parse_stats_matcher(r#"{"inclusionRegexps":["(?!x)"]}"#).unwrap_err();
        assert!(
            bad.contains("--stats-matcher: inclusionRegexps[0]"),
            "{bad}"
        );
    }

    #[test]
    fn bootstrap_carries_the_credential_and_node_id() {
        let spec = spec();
        let b = render(&spec).unwrap();
        assert_eq!(b["node"]["metadata"]["ISTIO_VERSION"], "1.24.0");
        assert_eq!(
            b["node"]["id"],
            "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local"
        );
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"][0]["value"],
            "Bearer meshd1.x.y"
        );
        assert_eq!(
            b["admin"]["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
        // The access-log streams to the same cluster carry the same credential.
        let xds = &b["static_resources"]["clusters"][0];
        assert_eq!(xds["name"], "xds-grpc");
        let filters = &xds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["http_filters"];
        assert_eq!(filters[0]["name"], "envoy.filters.http.header_mutation");
        let set = &filters[0]["typed_config"]["mutations"]["request_mutations"][0]["append"];
        assert_eq!(set["header"]["key"], "authorization");
        assert_eq!(set["header"]["value"], "Bearer meshd1.x.y");
        assert_eq!(set["append_action"], "OVERWRITE_IF_EXISTS_OR_ADD");
        assert_eq!(filters[1]["name"], "envoy.filters.http.upstream_codec");
        // A bootstrap without a credential (Kubernetes mode) has no header to set.
        let none = render(&BootstrapSpec {
            credential: String::new(),
            ..spec
        })
        .unwrap();
        assert!(
            none["static_resources"]["clusters"][0]["typed_extension_protocol_options"]
                ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                .get("http_filters")
                .is_none()
        );
    }

    #[test]
    fn bootstrap_files_are_written_for_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envoy.json");
        // an earlier, world-readable file is narrowed too
        std::fs::write(&path, "old content that is longer").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"{}").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        let fresh = dir.path().join("new.json");
        write_private(&fresh, b"x").unwrap();
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
