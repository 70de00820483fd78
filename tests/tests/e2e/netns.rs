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
            let _ = meshd_localmesh::workload_app::serve_on(l, name, async {
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

// ---------------------------------------------------------------------------------------------
// The harness itself, against a stand-in `meshd`: this test binary re-executed (through a small
// wrapper script) as `fake_meshd_entry`. Its `serve` answers the admin health check, `bootstrap`
// writes a static Envoy config shaped like Istio's sidecar (outbound 15001 with original-dst
// passthrough and per-service routes, inbound 15006 to the app on localhost), `init-iptables`
// and `workload` are the real ones from the meshd library. It proves the capture rules and a
// stock Envoy carry traffic app → Envoy → Envoy → app, including a Class-E service VIP and an
// app calling its own VIP.

const FAKE_ENV: &str = "FAKE_MESHD_ARGV";
const FAKE_SERVICES: &str = "fake-services.json";

/// Not a test: the entry point of the fake meshd, run only by the wrapper script (which passes
/// `--ignored`); ignored in a normal run rather than passing without checking anything.
#[test]
#[ignore = "the fake meshd's entry point, run by the wrapper script of the harness test"]
fn fake_meshd_entry() {
    let argv = std::env::var(FAKE_ENV)
        .unwrap_or_else(|_| panic!("{FAKE_ENV} unset: run only as the fake meshd"));
    let argv: Vec<String> = argv
        .split('\x1f')
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    let code = match fake_meshd(&argv) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fake meshd {argv:?}: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn flag<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .map(String::as_str)
}

fn fake_meshd(argv: &[String]) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    match argv.first().map(String::as_str) {
        Some("serve") => {
            let bind = flag(argv, "--bind").unwrap_or("127.0.0.1");
            rt.block_on(meshd_localmesh::workload_app::run(
                meshd_localmesh::workload_app::WorkloadArgs {
                    name: "fake-meshd".into(),
                    port: ADMIN_PORT,
                    bind: bind.into(),
                    shutdown_delay: std::time::Duration::ZERO,
                    ext_authz: false,
                    ext_authz_grpc: false,
                    ext_authz_allow: Vec::new(),
                },
            ))
        }
        Some("workload") => rt.block_on(meshd_localmesh::workload_app::run(
            meshd_localmesh::workload_app::WorkloadArgs {
                name: flag(argv, "--name").unwrap_or("app").into(),
                port: flag(argv, "--port").unwrap_or("8080").parse()?,
                bind: "127.0.0.1".into(),
                shutdown_delay: std::time::Duration::ZERO,
                ext_authz: false,
                ext_authz_grpc: false,
                ext_authz_allow: Vec::new(),
            },
        )),
        Some("init-iptables") => {
            anyhow::ensure!(
                argv[1..].join(" ")
                    == "-p 15001 -z 15006 -u 1337 -m REDIRECT -i * -b * -d 15090,15021,15020",
                "unexpected flags {argv:?}"
            );
            meshd::iptables::run(&meshd::iptables::InitIptablesArgs::default())
        }
        Some("bootstrap") => {
            let workload = flag(argv, "--workload").unwrap();
            let out = flag(argv, "--out").unwrap();
            let config_dir = std::path::Path::new(flag(argv, "--config-dir").unwrap());
            let services: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(config_dir.join(FAKE_SERVICES))?)?;
            std::fs::write(out, fake_bootstrap(workload, &services))?;
            Ok(())
        }
        other => anyhow::bail!("unknown command {other:?}"),
    }
}

/// `services`: `[{"name": "a", "host": "...", "ip": "10.44.0.2", "port": 8080}]`.
fn fake_bootstrap(workload: &str, services: &serde_json::Value) -> String {
    let name = workload.split('.').next().unwrap();
    let me = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap();
    let mut vhosts = String::new();
    let mut clusters = String::new();
    for s in services.as_array().unwrap() {
        let (n, host, ip, port) = (
            s["name"].as_str().unwrap(),
            s["host"].as_str().unwrap(),
            s["ip"].as_str().unwrap(),
            s["port"].as_u64().unwrap(),
        );
        vhosts += &format!(
            r#"
            - name: {n}
              domains: ["{host}", "{host}:{port}"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: "svc-{n}"}}}}]"#
        );
        clusters += &format!(
            r#"
  - name: svc-{n}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: svc-{n}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}}}]}}]"#
        );
    }
    let app_port = me["port"].as_u64().unwrap();
    format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {ENVOY_ADMIN_PORT}}}}}
static_resources:
  listeners:
  - name: virtualOutbound
    address: {{socket_address: {{address: 0.0.0.0, port_value: 15001}}}}
    use_original_dst: true
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          route_config:
            request_headers_to_add: [{{header: {{key: x-via-outbound, value: {name}}}}}]
            virtual_hosts:{vhosts}
            - name: passthrough
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: PassthroughCluster}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: virtualInbound
    address: {{socket_address: {{address: 0.0.0.0, port_value: 15006}}}}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          route_config:
            request_headers_to_add: [{{header: {{key: x-via-inbound, value: {name}}}}}]
            virtual_hosts:
            - name: inbound
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: inbound-app}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: PassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
  - name: inbound-app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: inbound-app
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app_port}}}}}}}}}]}}]{clusters}
"#
    )
}

#[test]
fn harness_with_fake_meshd_carries_traffic_through_sidecars() {
    // The wrapper script that re-executes this test binary as the fake meshd.
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("meshd");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n{FAKE_ENV}=\"$(printf '%s\\037' \"$@\")\" exec '{}' netns::fake_meshd_entry --exact --ignored --nocapture --test-threads=1 -q\n",
            exe.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

    let services = serde_json::json!([
        {"name": "a", "host": "a.demo.svc.cluster.local", "ip": "10.44.0.2", "port": 8080, "vip": "240.240.0.2"},
        {"name": "b", "host": "b.demo.svc.cluster.local", "ip": "10.44.0.3", "port": 9090, "vip": "240.240.0.3"},
    ]);
    let mut opts = MeshOptions::named("fake").config(FAKE_SERVICES, &services.to_string());
    opts.meshd_bin = Some(wrapper.clone());
    let mesh = Mesh::start(opts).unwrap();
    mesh.set_hosts(&[
        ("a.demo.svc.cluster.local", "240.240.0.2".parse().unwrap()),
        ("b.demo.svc.cluster.local", "240.240.0.3".parse().unwrap()),
    ])
    .unwrap();
    let a = mesh.add_sidecar_pod("a.demo", ip(2), 8080).unwrap();
    let b = mesh.add_sidecar_pod("b.demo", ip(3), 9090).unwrap();
    let client = mesh.add_plain_pod("client", ip(9)).unwrap();

    let json = |r: (u16, String)| -> serde_json::Value {
        assert_eq!(r.0, 200, "{}", r.1);
        serde_json::from_str(&r.1).unwrap()
    };

    // a → b's Class-E service VIP: captured, routed by a's Envoy, captured inbound at b.
    let v = json(a.get("http://b.demo.svc.cluster.local:9090/hello").unwrap());
    assert_eq!(v["service"], "b");
    assert_eq!(v["path"], "/hello");
    assert_eq!(v["headers"]["x-via-outbound"], "a");
    assert_eq!(v["headers"]["x-via-inbound"], "b");

    // a → b's pod address: original-destination passthrough.
    let v = json(a.get("http://10.44.0.3:9090/direct").unwrap());
    assert_eq!(v["service"], "b");
    assert_eq!(v["headers"]["x-via-outbound"], "a");
    assert_eq!(v["headers"]["x-via-inbound"], "b");

    // a → its own VIP: a's Envoy → a's pod address over lo → inbound capture → a's app.
    let v = json(a.get("http://a.demo.svc.cluster.local:8080/self").unwrap());
    assert_eq!(v["service"], "a");
    assert_eq!(v["headers"]["x-via-outbound"], "a");
    assert_eq!(v["headers"]["x-via-inbound"], "a");

    // a plain (uncaptured) client → b: only b's inbound capture.
    let v = json(client.get("http://10.44.0.3:9090/plain").unwrap());
    assert_eq!(v["service"], "b");
    assert!(v["headers"]["x-via-outbound"].is_null());
    assert_eq!(v["headers"]["x-via-inbound"], "b");

    // Excluded inbound port 15021 is not captured: nothing listens there, so the kernel refuses
    // the connection (captured, Envoy's 15006 would have accepted it).
    assert_eq!(
        expect_no_answer(&client.get("http://10.44.0.3:15021/")),
        NoAnswer::Refused
    );

    // Envoy admin helpers.
    let dump = a.envoy_config_dump().unwrap();
    assert!(dump["configs"].is_array());
    assert!(
        b.envoy_stat("http.inbound.downstream_rq_completed")
            .unwrap()
            .unwrap()
            >= 3
    );
    assert!(
        a.envoy_stats()
            .unwrap()
            .contains("cluster.svc-b.upstream_rq_200")
    );

    // Control plane admin, kill and restart.
    let v = mesh.admin_json("/debug/syncz").unwrap();
    assert_eq!(v["service"], "fake-meshd");
    mesh.kill_control_plane();
    assert!(!mesh.control_plane_ready());
    mesh.restart_control_plane().unwrap();
    assert!(mesh.control_plane_ready());

    // Envoy restart.
    mesh.restart_envoy("b").unwrap();
    let v = json(a.get("http://b.demo.svc.cluster.local:9090/again").unwrap());
    assert_eq!(v["service"], "b");
    assert!(mesh.envoy_log("a").is_empty() || !mesh.envoy_log("a").contains("critical"));
}
