//! The Sidecar resource in stock Envoy: outboundTrafficPolicy REGISTRY_ONLY against ALLOW_ANY,
//! and ingress listeners (the ports a workload serves, where its app listens, a TCP port or a
//! unix socket, TLS the sidecar terminates for clients outside the mesh, a port it binds
//! itself under captureMode NONE).

use crate::traffic_support;

use std::time::Duration;

use meshd_e2e::*;
use traffic_support::*;

const PORT: u16 = 8080;

/// A plain (non-mesh) pod at `addr` serving the workload app on each of `ports`.
fn outside_server(mesh: &Mesh, name: &str, addr: std::net::Ipv4Addr, ports: &[u16]) -> Vec<Child> {
    let pod = mesh.add_plain_pod(name, addr).unwrap();
    let meshd = mesh.meshd_bin().to_string_lossy().into_owned();
    let apps: Vec<Child> = ports
        .iter()
        .map(|p| {
            let port = p.to_string();
            pod.spawn([
                &meshd, "workload", "--name", name, "--bind", "0.0.0.0", "--port", &port,
            ])
            .unwrap()
        })
        .collect();
    for p in ports {
        assert!(wait_until(Duration::from_secs(10), || {
            get(&pod, &format!("http://{addr}:{p}/")).status == 200
        }));
    }
    apps
}

#[test]
fn registry_only_blocks_what_the_registry_does_not_know() {
    let yaml = [
        client_and_api(PORT),
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: {NS}}}
spec:
  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: free, namespace: other}}
spec:
  address: {free}
  labels: {{app: free}}
  serviceAccount: free
"#,
            free = ip(11)
        ),
    ]
    .concat();
    let mesh = mesh("registry", &yaml, &[(fqdn("api"), vip(20))]);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    let free = mesh.add_sidecar_pod("free.other", ip(11), PORT).unwrap();
    mesh.add_sidecar_pod(&format!("api.{NS}"), ip(20), PORT)
        .unwrap();
    let ext = ip(50);
    let _apps = outside_server(&mesh, "external", ext, &[PORT, 9999]);

    // Both reach what the registry knows.
    for pod in [&client, &free] {
        let a = get(pod, &format!("http://{}:{PORT}/", fqdn("api")));
        assert_eq!(a.status, 200, "{}: {a:?}", pod.name);
        assert_eq!(a.service(), "api");
    }
    // ALLOW_ANY (no Sidecar in namespace `other`): unknown destinations pass through.
    let a = get(&free, &format!("http://{ext}:{PORT}/"));
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.service(), "external");
    let a = get(&free, &format!("http://{ext}:9999/"));
    assert_eq!(a.status, 200, "{a:?}");
    assert!(stat(&free, "cluster.PassthroughCluster.upstream_cx_total") >= 2);

    // REGISTRY_ONLY: an unknown host on an HTTP port gets 502 from the sidecar; an unknown
    // port is dropped (black hole).
    let a = get(&client, &format!("http://{ext}:{PORT}/"));
    assert_eq!(a.status, 502, "{a:?}");
    // The black hole is a TCP proxy with no upstream: the client's sidecar accepts and closes.
    let a = get(&client, &format!("http://{ext}:9999/"));
    assert!(
        a.no_answer
            .as_ref()
            .is_some_and(NoAnswer::is_reset_or_closed),
        "{a:?}"
    );
    assert_eq!(
        stat(&client, "cluster.PassthroughCluster.upstream_cx_total"),
        0
    );
    assert!(stat(&client, "cluster.BlackHoleCluster.upstream_cx_none_healthy") >= 1);
}

#[test]
fn ingress_listener_forwards_a_service_port_to_the_app_port() {
    // api's service port is 8080; its app listens on 9090. Only the Sidecar's ingress listener
    // tells the proxy so.
    let sidecar = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: api-ingress, namespace: {NS}}}
spec:
  workloadSelector:
    labels: {{app: api}}
  ingress:
  - port: {{number: {PORT}, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:9090
"#
    );
    let yaml = client_and_api(PORT);
    let mesh = mesh("ingress", &yaml, &[(fqdn("api"), vip(20))]);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    let api = mesh
        .add_sidecar_pod(&format!("api.{NS}"), ip(20), 9090)
        .unwrap();
    let url = format!("http://{}:{PORT}/hello", fqdn("api"));
    // Without the Sidecar the inbound side forwards to 127.0.0.1:8080, where nothing listens.
    let a = get(&client, &url);
    assert_eq!(a.status, 503, "{a:?}");

    mesh.write_config("sidecar.yaml", &sidecar).unwrap();
    let inbound_cluster = format!("inbound|{PORT}||");
    assert!(wait_until(Duration::from_secs(10), || {
        dump_clusters(&api.envoy_config_dump().unwrap())
            .get(&inbound_cluster)
            .is_some_and(|c| c["load_assignment"].to_string().contains("9090"))
    }));
    let a = get(&client, &url);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.service(), "api");
    assert_eq!(
        a.json()["caller"],
        format!("spiffe://cluster.local/ns/{NS}/sa/client"),
        "still mTLS through the ingress listener"
    );

    // The app on a unix socket: the sidecar reaches it there, the caller still over mTLS.
    let dir = open_tempdir();
    let socket = format!("unix://{}", dir.path().join("api.sock").display());
    let meshd = mesh.meshd_bin().to_string_lossy().into_owned();
    let _unix_app = api
        .spawn([&meshd, "workload", "--name", "api-unix", "--bind", &socket])
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || dir
        .path()
        .join("api.sock")
        .exists()));
    mesh.write_config("sidecar.yaml", &sidecar.replace("127.0.0.1:9090", &socket))
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        dump_clusters(&api.envoy_config_dump().unwrap())
            .get(&inbound_cluster)
            .is_some_and(|c| c["load_assignment"].to_string().contains("api.sock"))
    }));
    let a = get(&client, &url);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.service(), "api-unix", "answered over the socket");
    assert_eq!(
        a.json()["caller"],
        format!("spiffe://cluster.local/ns/{NS}/sa/client"),
    );
}

/// A temporary directory the proxy's uid can enter.
fn open_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn ingress_tls_serves_a_client_outside_the_mesh() {
    // api's sidecar terminates TLS on 8080 with its own certificate files (no mesh identity
    // asked of the client) and hands the request to the app on 9090; on 9443 it requires a
    // client certificate its CA signed (MUTUAL).
    let certs = open_tempdir();
    let host = "api.example.com";
    tls_certificates(certs.path(), &[host]);
    let file = |f: &str| certs.path().join(f).to_string_lossy().into_owned();
    let sidecar = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: api-ingress, namespace: {NS}}}
spec:
  workloadSelector:
    labels: {{app: api}}
  ingress:
  - port: {{number: {PORT}, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:9090
    tls:
      mode: SIMPLE
      serverCertificate: {cert}
      privateKey: {key}
  - port: {{number: 9443, protocol: HTTP, name: https-mutual}}
    defaultEndpoint: 127.0.0.1:9090
    tls:
      mode: MUTUAL
      serverCertificate: {cert}
      privateKey: {key}
      caCertificates: {ca}
---
"#,
        cert = file("cert.pem"),
        key = file("key.pem"),
        ca = file("ca.pem"),
    );
    let yaml = [client_and_api(PORT), sidecar].concat();
    let mesh = mesh("ingresstls", &yaml, &[(fqdn("api"), vip(20))]);
    mesh.add_sidecar_pod(&format!("api.{NS}"), ip(20), 9090)
        .unwrap();
    let outside = mesh.add_plain_pod("outside", ip(50)).unwrap();
    let ca = file("ca.pem");
    let curl = |port: u16, extra: &[&str]| {
        let resolve = format!("{host}:{port}:{}", ip(20));
        let url = format!("https://{host}:{port}/hello");
        let mut args = vec![
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
        ];
        args.extend(extra);
        args.push(&url);
        outside.run(args)
    };
    assert!(
        wait_until(Duration::from_secs(20), || curl(PORT, &[]).is_ok()),
        "{:?}",
        curl(PORT, &[])
    );
    let body: serde_json::Value = serde_json::from_str(&curl(PORT, &[]).unwrap()).unwrap();
    assert_eq!(body["service"], "api", "{body}");
    assert!(body["caller"].is_null(), "no mesh identity: {body}");

    // MUTUAL: refused without a client certificate, served with one from the CA.
    let (cert, key) = (file("cert.pem"), file("key.pem"));
    let with_cert = ["--cert", cert.as_str(), "--key", key.as_str()];
    assert!(
        wait_until(Duration::from_secs(20), || curl(9443, &with_cert).is_ok()),
        "{:?}",
        curl(9443, &with_cert)
    );
    let body: serde_json::Value = serde_json::from_str(&curl(9443, &with_cert).unwrap()).unwrap();
    assert_eq!(body["service"], "api", "{body}");
    assert!(curl(9443, &[]).is_err(), "no client certificate, no answer");
}

#[test]
fn capture_mode_none_serves_the_port_from_a_bound_listener() {
    // api's port 8080 is not captured (excluded from iptables, as an app deployed so would be):
    // only a listener bound to the pod's address, from captureMode NONE, serves it — with the
    // same mesh mTLS as the capture listener — and hands it to the app on 9090.
    let sidecar = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: api-ingress, namespace: {NS}}}
spec:
  workloadSelector:
    labels: {{app: api}}
  ingress:
  - port: {{number: {PORT}, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:9090
    captureMode: NONE
---
"#
    );
    let yaml = [client_and_api(PORT), sidecar].concat();
    let mesh = mesh("capturenone", &yaml, &[(fqdn("api"), vip(20))]);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    let mut opts = SidecarOptions::default();
    let exclude = opts.iptables_args.iter().position(|a| a == "-d").unwrap() + 1;
    opts.iptables_args[exclude].push_str(&format!(",{PORT}"));
    let api = mesh
        .add_sidecar_pod_with(&format!("api.{NS}"), ip(20), 9090, opts)
        .unwrap();
    let bound = format!("inbound_{}_{PORT}", ip(20));
    assert!(
        wait_until(Duration::from_secs(10), || dump_active_listeners(
            &api.envoy_config_dump().unwrap()
        )
        .contains(&bound)),
        "{:?}",
        dump_active_listeners(&api.envoy_config_dump().unwrap())
    );
    let a = get(&client, &format!("http://{}:{PORT}/hello", fqdn("api")));
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.service(), "api");
    assert_eq!(
        a.json()["caller"],
        format!("spiffe://cluster.local/ns/{NS}/sa/client"),
        "mesh mTLS on the bound listener"
    );
}

#[test]
fn egress_listener_with_capture_mode_none_serves_an_app_that_dials_it() {
    // The client's app dials 127.0.0.2:PORT itself (iptables leaves loopback alone); its
    // sidecar binds that address and routes to api over mesh mTLS. Captured traffic keeps the
    // port-less listener's view.
    let sidecar = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client-egress, namespace: {NS}}}
spec:
  workloadSelector:
    labels: {{app: client}}
  egress:
  - port: {{number: {PORT}, protocol: HTTP, name: http}}
    bind: 127.0.0.2
    captureMode: NONE
    hosts: ["./{api}"]
  - hosts: ["./*"]
"#,
        api = fqdn("api")
    );
    let yaml = client_and_api(PORT);
    let mesh = mesh("egressbind", &yaml, &[(fqdn("api"), vip(20))]);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("api.{NS}"), ip(20), PORT)
        .unwrap();
    let bound = format!("http://127.0.0.2:{PORT}/hello");
    let host = [("host", "api")];
    // Before the Sidecar nothing listens there.
    let a = request(&client, "GET", &bound, &host);
    assert_eq!(a.status, 0, "{a:?}");

    mesh.write_config("sidecar.yaml", &sidecar).unwrap();
    let listener = format!("127.0.0.2_{PORT}");
    assert!(wait_until(Duration::from_secs(10), || {
        dump_active_listeners(&client.envoy_config_dump().unwrap()).contains(&listener)
    }));
    assert!(wait_until(Duration::from_secs(10), || {
        request(&client, "GET", &bound, &host).status == 200
    }));
    let a = request(&client, "GET", &bound, &host);
    assert_eq!(a.service(), "api", "{a:?}");
    assert_eq!(
        a.json()["caller"],
        format!("spiffe://cluster.local/ns/{NS}/sa/client"),
        "mesh mTLS through the bound listener"
    );
    // A host the listener does not serve: its catch-all (passthrough) has nowhere to go.
    let a = request(&client, "GET", &bound, &[("host", "elsewhere.example")]);
    assert_ne!(a.status, 200, "{a:?}");
    // Captured traffic to api still flows through the port-less listener.
    let a = get(&client, &format!("http://{}:{PORT}/", fqdn("api")));
    assert_eq!(a.status, 200, "{a:?}");

    // A unix socket listener (port 0, as Istio spells it), in a directory Envoy may write.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let socket = dir.path().join("api.sock").to_string_lossy().into_owned();
    let with_socket = sidecar.replace(
        "  - hosts: [\"./*\"]\n",
        &format!(
            "  - port: {{number: 0, protocol: HTTP, name: http-uds}}\n    bind: unix://{socket}\n    hosts: [\"./{}\"]\n  - hosts: [\"./*\"]\n",
            fqdn("api")
        ),
    );
    mesh.write_config("sidecar.yaml", &with_socket).unwrap();
    let over_socket = || {
        client
            .run([
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--unix-socket",
                &socket,
                "http://api/over-socket",
            ])
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(10), || over_socket()
            .contains(r#""service":"api""#)),
        "{}",
        over_socket()
    );
    assert!(over_socket().contains("/over-socket"));
}
