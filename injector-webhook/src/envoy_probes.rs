//! The Envoy side of injection with no agent beside Envoy: what `meshd bootstrap` adds to a
//! pod's bootstrap so the rewritten probes ([`crate::probes`]) and Istio's status port work
//! with stock Envoy.
//!
//! * `httpGet`: an exact-path route on the health listener (15021) to `127.0.0.1:<port>` with
//!   the original path (HTTPS upstream unverified, as the kubelet does).
//! * `tcpSocket` and `grpc`: a cluster to `127.0.0.1:<port>` that Envoy health-checks actively
//!   (TCP connect; gRPC `grpc.health.v1.Health/Check` with the probe's service), and an
//!   `envoy.filters.http.health_check` filter on the probe's path answering 200 while that
//!   cluster's one host is healthy and 503 otherwise. The probe thus reflects the app as of
//!   the last check (at most a second old), and needs no plaintext path into the app under
//!   STRICT mTLS: the check runs inside the pod, on loopback.
//! * Istio's status port 15020 on loopback, forwarding `/quitquitquit` to Envoy's admin, so a
//!   Job's app stops the classic-path sidecar as it would under Istio.

use crate::config::ports;
use crate::probes::{AppProber, AppProbers, ProbeKind};
use serde_json::{Value, json};

fn cluster_name(p: &AppProber) -> String {
    match p.kind {
        ProbeKind::Http if p.scheme == "HTTPS" => format!("app-health-tls-{}", p.port),
        ProbeKind::Http => format!("app-health-{}", p.port),
        ProbeKind::Tcp => format!("app-health-tcp-{}", p.port),
        ProbeKind::Grpc => match &p.service {
            // Service names are free text: the cluster name only needs to be unique per pod.
            Some(s) => format!("app-health-grpc-{}-{}", p.port, hex_id(s)),
            None => format!("app-health-grpc-{}", p.port),
        },
    }
}

fn hex_id(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).take(32).collect()
}

fn loopback_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}
            }}}]}]
        }
    })
}

fn cluster(p: &AppProber) -> Value {
    let name = cluster_name(p);
    let mut c = loopback_cluster(&name, p.port);
    let check = |kind: Value| {
        let mut hc = json!({
            "timeout": "1s",
            "interval": "1s",
            // No request ever uses this cluster: without this Envoy checks once a minute.
            "no_traffic_interval": "1s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
        });
        if let (Some(hc), Some(kind)) = (hc.as_object_mut(), kind.as_object()) {
            hc.extend(kind.clone());
        }
        json!([hc])
    };
    match p.kind {
        ProbeKind::Http if p.scheme == "HTTPS" => {
            c["transport_socket"] = json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
                }
            });
        }
        ProbeKind::Http => {}
        ProbeKind::Tcp => c["health_checks"] = check(json!({"tcp_health_check": {}})),
        ProbeKind::Grpc => {
            let mut grpc = json!({});
            if let Some(s) = &p.service {
                grpc["service_name"] = json!(s);
            }
            c["health_checks"] = check(json!({"grpc_health_check": grpc}));
            c["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            });
        }
    }
    c
}

fn health_check_filter(path: &str, cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.http.health_check",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
            "pass_through_mode": false,
            "headers": [{"name": ":path", "string_match": {"exact": path}}],
            "cluster_min_healthy_percentages": {cluster: {"value": 100.0}}
        }
    })
}

fn router_filter() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    })
}

/// Answers `POST /quitquitquit` on the status port itself, then asks Envoy's admin to quit
/// without waiting: forwarded to the admin, the request got no answer (Envoy exits before the
/// admin's reply crosses back), so a Job running `curl -fsS -X POST .../quitquitquit` under
/// `set -e`, as Istio's docs show, failed with "Empty reply from server".
const QUIT_NOW: &str = r#"function envoy_on_request(handle)
  local h = handle:headers()
  if h:get(":path") == "/quitquitquit" and h:get(":method") == "POST" then
    handle:httpCall("envoy_admin", {[":method"] = "POST", [":path"] = "/quitquitquit",
      [":authority"] = "envoy_admin"}, "", 5000, true)
    handle:respond({[":status"] = "200"}, "OK\n")
  end
end
"#;

fn quit_filter() -> Value {
    json!({
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": QUIT_NOW}
        }
    })
}

/// Istio's status port on loopback: `POST /quitquitquit` answered, then Envoy quits; other
/// methods reach Envoy's admin (which answers them 405).
fn status_listener() -> Value {
    json!({
        "name": "status",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports::STATUS}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "status",
                "route_config": {"virtual_hosts": [{
                    "name": "status",
                    "domains": ["*"],
                    "routes": [{
                        "match": {"path": "/quitquitquit"},
                        "route": {"cluster": "envoy_admin"}
                    }]
                }]},
                "http_filters": [quit_filter(), router_filter()]
            }
        }]}]
    })
}

/// Adds the probe clusters, routes and filters, and the status listener, to a bootstrap that
/// has a `health` listener and an `envoy_admin` cluster.
pub fn apply(bootstrap: &mut Value, probers: &AppProbers) -> Result<(), String> {
    let statics = &mut bootstrap["static_resources"];
    let clusters = statics["clusters"]
        .as_array_mut()
        .ok_or("bootstrap has no static clusters")?;
    let mut added: Vec<String> = Vec::new();
    for p in probers.values() {
        let name = cluster_name(p);
        if !added.contains(&name) {
            clusters.push(cluster(p));
            added.push(name);
        }
    }
    let listeners = statics["listeners"]
        .as_array_mut()
        .ok_or("bootstrap has no static listeners")?;
    listeners.push(status_listener());
    if probers.is_empty() {
        return Ok(());
    }
    let health = listeners
        .iter_mut()
        .find(|l| l["name"] == "health")
        .ok_or("bootstrap has no health listener")?;
    let hcm = &mut health["filter_chains"][0]["filters"][0]["typed_config"];
    let mut app_routes = Vec::new();
    let mut checks = Vec::new();
    for (key, p) in probers {
        match p.kind {
            ProbeKind::Http => app_routes.push(json!({
                "match": {"path": key},
                "route": {
                    "cluster": cluster_name(p),
                    "prefix_rewrite": p.path,
                    "timeout": "30s"
                }
            })),
            ProbeKind::Tcp | ProbeKind::Grpc => {
                checks.push(health_check_filter(key, &cluster_name(p)))
            }
        }
    }
    let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        .as_array_mut()
        .ok_or("health listener has no routes")?;
    app_routes.append(routes);
    *routes = app_routes;
    let filters = hcm["http_filters"]
        .as_array_mut()
        .ok_or("health listener has no HTTP filters")?;
    checks.append(filters);
    *filters = checks;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap() -> Value {
        json!({"static_resources": {
            "clusters": [{"name": "envoy_admin"}],
            "listeners": [{"name": "health", "filter_chains": [{"filters": [{"typed_config": {
                "route_config": {"virtual_hosts": [{"routes": [{"match": {"prefix": "/healthz/ready"}}]}]},
                "http_filters": [router_filter()]
            }}]}]}]
        }})
    }

    fn prober(port: u16, kind: ProbeKind, service: Option<&str>) -> AppProber {
        AppProber {
            port,
            kind,
            service: service.map(str::to_string),
            ..AppProber::default()
        }
    }

    #[test]
    fn tcp_and_grpc_probes_are_answered_from_health_checked_clusters() {
        let mut b = bootstrap();
        let probers = AppProbers::from([
            (
                "/app-health/app/livez".into(),
                prober(7000, ProbeKind::Tcp, None),
            ),
            (
                "/app-health/app/readyz".into(),
                prober(9000, ProbeKind::Grpc, Some("shop.v1")),
            ),
            (
                "/app-health/app/startupz".into(),
                AppProber {
                    port: 8080,
                    path: "/started".into(),
                    scheme: "HTTP".into(),
                    ..AppProber::default()
                },
            ),
        ]);
        apply(&mut b, &probers).unwrap();
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        let tcp = clusters
            .iter()
            .find(|c| c["name"] == "app-health-tcp-7000")
            .unwrap();
        assert_eq!(tcp["health_checks"][0]["tcp_health_check"], json!({}));
        assert_eq!(tcp["health_checks"][0]["no_traffic_interval"], "1s");
        let grpc = clusters
            .iter()
            .find(|c| {
                c["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("app-health-grpc-9000")
            })
            .unwrap();
        assert_eq!(
            grpc["health_checks"][0]["grpc_health_check"]["service_name"],
            "shop.v1"
        );
        assert!(grpc["typed_extension_protocol_options"].is_object());
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let filters = hcm["http_filters"].as_array().unwrap();
        assert_eq!(filters.len(), 3);
        assert_eq!(filters[2]["name"], "envoy.filters.http.router");
        let livez = &filters[0]["typed_config"];
        assert_eq!(
            livez["headers"][0]["string_match"]["exact"],
            "/app-health/app/livez"
        );
        assert_eq!(livez["pass_through_mode"], false);
        assert_eq!(
            livez["cluster_min_healthy_percentages"]["app-health-tcp-7000"]["value"],
            100.0
        );
        let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap();
        assert_eq!(routes[0]["match"]["path"], "/app-health/app/startupz");
        assert_eq!(routes[0]["route"]["prefix_rewrite"], "/started");
        assert_eq!(routes[1]["match"]["prefix"], "/healthz/ready");
        let status = &b["static_resources"]["listeners"][1];
        assert_eq!(status["address"]["socket_address"]["address"], "127.0.0.1");
        assert_eq!(status["address"]["socket_address"]["port_value"], 15020);
        let status_filters =
            &status["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"];
        assert_eq!(status_filters[0]["name"], "envoy.filters.http.lua");
        let lua = status_filters[0]["typed_config"]["default_source_code"]["inline_string"]
            .as_str()
            .unwrap();
        assert!(
            lua.contains("handle:respond({[\":status\"] = \"200\"}"),
            "{lua}"
        );
        assert_eq!(status_filters[1]["name"], "envoy.filters.http.router");
    }
}
