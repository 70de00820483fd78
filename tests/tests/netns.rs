//! Smoke test of the pod network alone (no `meshd` binary, no control plane): two pods talk,
//! host names resolve, and a stock Envoy runs as uid 1337 inside a pod and proxies to the
//! workload app of another pod.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use meshd_e2e::*;

fn network(tag: &str) -> PodNetwork {
    PodNetwork::create(&format!("smoke{tag}{}", std::process::id()), DEFAULT_SUBNET).unwrap()
}

/// Serve the workload app on a listener bound inside a pod, until the returned sender drops.
fn serve_workload(pod: &Pod, name: &'static str, port: u16) -> tokio::sync::oneshot::Sender<()> {
    let addr = (pod.ip, port);
    let l: TcpListener = pod
        .in_netns(move || TcpListener::bind(addr).unwrap())
        .unwrap();
    l.set_nonblocking(true).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            let _ = meshd::workload_app::serve_on(l, name, async {
                let _ = rx.await;
            })
            .await;
        });
    });
    tx
}

#[test]
fn pods_talk_over_the_bridge() {
    let net = network("a");
    let a = net.add_pod("a", ip(2)).unwrap();
    let b = net.add_pod("b", ip(3)).unwrap();
    net.set_hosts(&[("app-a.demo.svc.cluster.local", ip(2)), ("app-a", ip(2))])
        .unwrap();
    let _server = serve_workload(&a, "app-a", 8080);

    let r = b
        .request(
            "GET",
            "http://app-a.demo.svc.cluster.local:8080/hello?x=1",
            &[(
                "x-forwarded-client-cert",
                "URI=spiffe://cluster.local/ns/demo/sa/b",
            )],
            None,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json().unwrap();
    assert_eq!(v["service"], "app-a");
    assert_eq!(v["path"], "/hello");
    assert_eq!(v["caller"], "spiffe://cluster.local/ns/demo/sa/b");

    let (s, _) = b.get("http://app-a:8080/?status=503").unwrap();
    assert_eq!(s, 503);
    // Resolution through `ip netns exec` (the pod's /etc/hosts).
    let out = b.run(["getent", "hosts", "app-a"]).unwrap();
    assert!(out.starts_with("10.44.0.2"), "{out}");
    // The node namespace reaches pods too.
    let (s, _) = net.node().get("http://10.44.0.2:8080/").unwrap();
    assert_eq!(s, 200);
}

#[test]
fn stock_envoy_runs_as_proxy_uid_in_a_pod() {
    let envoy = envoy_binary().expect("Envoy (run scripts/install-tools.sh)");
    let net = network("e");
    let app = net.add_pod("app", ip(2)).unwrap();
    let proxy = net.add_pod("proxy", ip(4)).unwrap();
    let client = net.add_pod("client", ip(5)).unwrap();
    let _server = serve_workload(&app, "backend", 8080);

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bootstrap = dir.path().join("envoy.yaml");
    std::fs::write(
        &bootstrap,
        format!(
            r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {ENVOY_ADMIN_PORT}}}}}
static_resources:
  listeners:
  - name: in
    address: {{socket_address: {{address: 0.0.0.0, port_value: 10000}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: app}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {}, port_value: 8080}}}}}}
"#,
            app.ip
        ),
    )
    .unwrap();
    std::fs::set_permissions(&bootstrap, std::fs::Permissions::from_mode(0o644)).unwrap();

    let envoy_s = envoy.to_string_lossy().into_owned();
    let bootstrap_s = bootstrap.to_string_lossy().into_owned();
    let mut child = proxy
        .spawn_as(
            PROXY_UID,
            PROXY_UID,
            [
                envoy_s.as_str(),
                "--disable-hot-restart",
                "-c",
                bootstrap_s.as_str(),
                "--log-level",
                "warn",
            ],
        )
        .unwrap();
    let ready = wait_until(Duration::from_secs(20), || {
        matches!(envoy_admin_get(&proxy, "/ready"), Ok((200, _)))
    });
    assert!(ready, "Envoy not ready; log:\n{}", child.log_tail());

    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id().unwrap())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "1337"),
        "{uid_line}"
    );

    let (s, body) = client.get("http://10.44.0.4:10000/via-envoy").unwrap();
    assert_eq!(s, 200, "{body}\n{}", child.log_tail());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["service"], "backend");
    assert_eq!(v["path"], "/via-envoy");
    assert!(v["headers"]["x-request-id"].is_string());

    let (_, stats) = envoy_admin_get(&proxy, "/stats").unwrap();
    assert!(stats.contains("cluster.app.upstream_rq_200: 1"), "{stats}");
    assert!(child.is_running());
    child.stop();
}
