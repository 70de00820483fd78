//! Request telemetry end to end with stock Envoy: known traffic between two sidecars, over
//! mTLS, shows up in meshd's `/metrics` as Istio's standard metrics, with Istio's labels and
//! the exact counts, from both reporters; TCP traffic in the TCP metrics.
//!
//! Every wait polls `/metrics` until the expected count or a deadline; nothing is timed.

use crate::telemetry_support;
use crate::traffic_support;

use std::time::Duration;

use meshd_e2e::*;
use telemetry_support::*;
use traffic_support::*;

const PORT: u16 = 8080;
const TCP_PORT: u16 = 9000;

fn tcp_service(name: &str, vip: std::net::Ipv4Addr, port: u16) -> String {
    service(name, vip, port).replace(
        &format!("{{number: {port}, name: http, protocol: HTTP}}"),
        &format!("{{number: {port}, name: tcp, protocol: TCP}}"),
    )
}

#[test]
fn known_traffic_between_two_sidecars_appears_in_istio_metrics_with_istio_labels() {
    let api = fqdn("api");
    let db = fqdn("db");
    // Requests under /fault are aborted by the client's sidecar (fault injection): only the
    // source reporter sees them.
    let vs = format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: {NS}}}
spec:
  hosts: [{api}]
  http:
  - match: [{{uri: {{prefix: /fault}}}}]
    fault: {{abort: {{httpStatus: 503, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: {api}}}}}]
  - route: [{{destination: {{host: {api}}}}}]
---
"#
    );
    let yaml = [
        service("client", vip(10), PORT),
        workload("client", "client", ip(10), &[("version", "v1")]),
        service("api", vip(20), PORT),
        workload("api", "api", ip(20), &[("version", "v2")]),
        tcp_service("db", vip(30), TCP_PORT),
        workload("db", "db", ip(30), &[]),
        vs,
    ]
    .concat();
    let mesh = mesh(
        "telemetry",
        &yaml,
        &[(api.clone(), vip(20)), (db.clone(), vip(30))],
    );
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("api.{NS}"), ip(20), PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("db.{NS}"), ip(30), TCP_PORT)
        .unwrap();

    // Until the client's sidecar has its routes, answers may come from elsewhere: warm up with a
    // status nothing below counts.
    assert!(
        wait_until(Duration::from_secs(30), || get(
            &client,
            &format!("http://{api}:{PORT}/warmup?status=202")
        )
        .status
            == 202),
        "the client reaches api through its sidecar"
    );

    const OK: usize = 20;
    const ERRORS: usize = 5;
    const SLOW: usize = 3;
    const SLOW_MS: u64 = 300;
    const FAULTS: usize = 4;
    let url = |path: &str| format!("http://{api}:{PORT}{path}");
    for a in burst(&client, &url("/ok"), &[], OK, 4) {
        assert_eq!(a.status, 200, "{a:?}");
    }
    for a in burst(&client, &url("/err?status=500"), &[], ERRORS, 4) {
        assert_eq!(a.status, 500, "{a:?}");
    }
    for a in burst(
        &client,
        &url(&format!("/slow?status=201&delay_ms={SLOW_MS}")),
        &[],
        SLOW,
        SLOW,
    ) {
        assert_eq!(a.status, 201, "{a:?}");
    }
    for a in burst(&client, &url("/fault"), &[], FAULTS, 2) {
        assert_eq!(a.status, 503, "{a:?}");
    }

    let from_client = |reporter: &'static str, code: &'static str| {
        vec![
            ("reporter", reporter),
            ("source_workload", "client"),
            ("destination_service", api.as_str()),
            ("response_code", code),
        ]
    };
    let requests = "istio_requests_total";
    wait_for_counts(
        &mesh,
        "HTTP requests",
        &[
            (requests, from_client("source", "200"), OK as f64),
            (requests, from_client("destination", "200"), OK as f64),
            (requests, from_client("source", "500"), ERRORS as f64),
            (requests, from_client("destination", "500"), ERRORS as f64),
            (requests, from_client("source", "201"), SLOW as f64),
            (requests, from_client("destination", "201"), SLOW as f64),
            (requests, from_client("source", "503"), FAULTS as f64),
        ],
    );
    let m = metrics(&mesh);
    // Exact counts, once everything has arrived.
    for (reporter, code, n) in [
        ("source", "200", OK),
        ("destination", "200", OK),
        ("source", "500", ERRORS),
        ("destination", "500", ERRORS),
        ("source", "201", SLOW),
        ("destination", "201", SLOW),
        ("source", "503", FAULTS),
        // The aborted requests never left the client's pod.
        ("destination", "503", 0),
    ] {
        assert_eq!(
            sum(&m, requests, &from_client(reporter, code)),
            n as f64,
            "{reporter} {code}"
        );
    }

    // Istio's labels, from both reporters.
    let client_principal = format!("spiffe://cluster.local/ns/{NS}/sa/client");
    let api_principal = format!("spiffe://cluster.local/ns/{NS}/sa/api");
    for reporter in ["source", "destination"] {
        let series: Vec<&Sample> = matching(&m, requests, &from_client(reporter, "500"));
        assert_eq!(
            series.len(),
            1,
            "one {reporter} series for 500: {series:#?}"
        );
        let l = &series[0].labels;
        let expect = [
            ("source_workload_namespace", NS),
            ("source_principal", client_principal.as_str()),
            ("source_app", "client"),
            ("source_version", "v1"),
            ("source_canonical_service", "client"),
            ("destination_service", api.as_str()),
            ("destination_service_name", "api"),
            ("destination_service_namespace", NS),
            ("destination_workload", "api"),
            ("destination_workload_namespace", NS),
            ("destination_principal", api_principal.as_str()),
            ("destination_app", "api"),
            ("destination_version", "v2"),
            ("request_protocol", "http"),
            ("response_flags", "-"),
        ];
        for (k, v) in expect {
            assert_eq!(
                l.get(k).map(String::as_str),
                Some(v),
                "{reporter} {k}: {l:#?}"
            );
        }
        let policy = if reporter == "destination" {
            "mutual_tls"
        } else {
            "unknown"
        };
        assert_eq!(l["connection_security_policy"], policy, "{l:#?}");
    }
    let fault = matching(&m, requests, &from_client("source", "503"))[0];
    // Aborted before any cluster: the service is the one the request named.
    assert_eq!(fault.labels["response_flags"], "FI", "{fault:#?}");
    assert_eq!(
        fault.labels["destination_service_name"], "api",
        "{fault:#?}"
    );

    // The duration histogram: every delayed request lies above the 250 ms bucket, for both
    // reporters; their count and sum add up.
    let duration = "istio_request_duration_milliseconds";
    for reporter in ["source", "destination"] {
        let slow = from_client(reporter, "201");
        assert_eq!(
            sum(&m, &format!("{duration}_count"), &slow),
            SLOW as f64,
            "{reporter}"
        );
        assert!(
            sum(&m, &format!("{duration}_sum"), &slow) >= (SLOW as u64 * SLOW_MS) as f64,
            "{reporter}: sum of the delayed requests"
        );
        let mut under_250 = slow.clone();
        under_250.push(("le", "250.0"));
        assert_eq!(
            sum(&m, &format!("{duration}_bucket"), &under_250),
            0.0,
            "{reporter}: no delayed request under 250 ms"
        );
        let mut all = slow.clone();
        all.push(("le", "+Inf"));
        assert_eq!(
            sum(&m, &format!("{duration}_bucket"), &all),
            SLOW as f64,
            "{reporter}"
        );
        assert_eq!(
            sum(
                &m,
                &format!("{duration}_count"),
                &from_client(reporter, "200")
            ),
            OK as f64
        );
    }
    for size in ["istio_request_bytes_count", "istio_response_bytes_count"] {
        assert_eq!(
            sum(&m, size, &from_client("destination", "200")),
            OK as f64,
            "{size}"
        );
    }

    // TCP: each request on a connection of its own, through both sidecars' TCP proxies.
    const CONNECTIONS: usize = 6;
    let mut body_bytes = 0usize;
    for _ in 0..CONNECTIONS {
        let a = get(&client, &format!("http://{db}:{TCP_PORT}/tcp"));
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.service(), "db");
        body_bytes += a.body.len();
    }
    let tcp = |reporter: &'static str| {
        vec![
            ("reporter", reporter),
            ("source_workload", "client"),
            ("destination_service", db.as_str()),
            ("destination_workload", "db"),
        ]
    };
    let opened = "istio_tcp_connections_opened_total";
    let closed = "istio_tcp_connections_closed_total";
    wait_for_counts(
        &mesh,
        "TCP connections",
        &[
            (opened, tcp("source"), CONNECTIONS as f64),
            (opened, tcp("destination"), CONNECTIONS as f64),
            // Opened is reported when the upstream connects, closed when the connection
            // ends, possibly in a later batch.
            (closed, tcp("source"), CONNECTIONS as f64),
            (closed, tcp("destination"), CONNECTIONS as f64),
        ],
    );
    let m = metrics(&mesh);
    for reporter in ["source", "destination"] {
        assert_eq!(
            sum(&m, opened, &tcp(reporter)),
            CONNECTIONS as f64,
            "{reporter}"
        );
        assert_eq!(
            sum(&m, closed, &tcp(reporter)),
            CONNECTIONS as f64,
            "{reporter}"
        );
        // Each side sent the answers (headers and bodies) toward the client and received the
        // requests.
        assert!(
            sum(&m, "istio_tcp_sent_bytes_total", &tcp(reporter)) >= body_bytes as f64,
            "{reporter}: sent bytes cover the {body_bytes} body bytes"
        );
        let received = sum(&m, "istio_tcp_received_bytes_total", &tcp(reporter));
        assert!(
            received >= (CONNECTIONS * "GET /tcp HTTP/1.1\r\n".len()) as f64,
            "{reporter}: {received}"
        );
        let series = matching(&m, opened, &tcp(reporter))[0];
        assert_eq!(series.labels["request_protocol"], "tcp");
        assert_eq!(series.labels["source_principal"], client_principal);
    }
    let inbound = matching(&m, opened, &tcp("destination"))[0];
    assert_eq!(inbound.labels["connection_security_policy"], "mutual_tls");
    assert_eq!(
        inbound.labels["destination_principal"],
        format!("spiffe://cluster.local/ns/{NS}/sa/db")
    );
}

/// The Kubernetes-mode bootstrap (`meshd bootstrap --registry kubernetes`, as the injected init
/// container writes it) against stock Envoy: ADS over TLS with the token file, and the
/// access-log streams over its `xds-grpc` cluster (TLS checked against the ROOTCA Envoy gets
/// over ADS, the token injected from the SDS-watched token file). The token file holds the
/// pod's meshd credential here: file-mode meshd accepts it as Kubernetes mode accepts a
/// projected token.
#[test]
fn kubernetes_bootstraps_stream_access_logs_over_tls_with_the_token_file() {
    use std::os::unix::fs::{PermissionsExt, chown};
    let api = fqdn("api");
    let yaml = client_and_api(PORT);
    let mesh = mesh("telekube", &yaml, &[(api.clone(), vip(20))]);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    let pod = mesh
        .add_sidecar_pod(&format!("api.{NS}"), ip(20), PORT)
        .unwrap();

    // The credential of the file-mode bootstrap, as a projected token directory would hold it
    // (the kubelet's layout: `..data` → a timestamped directory).
    let file_mode: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&pod.bootstrap).unwrap()).unwrap();
    let bearer = file_mode["dynamic_resources"]["ads_config"]["grpc_services"][0]
        ["initial_metadata"][0]["value"]
        .as_str()
        .unwrap()
        .to_string();
    let credential = bearer.strip_prefix("Bearer ").unwrap();
    let tokens = pod.dir.join("tokens");
    std::fs::create_dir_all(tokens.join("v1")).unwrap();
    std::fs::write(tokens.join("v1/istio-token"), credential).unwrap();
    std::os::unix::fs::symlink("v1", tokens.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/istio-token", tokens.join("istio-token")).unwrap();
    let root = pod.dir.join("root-cert.pem");
    std::fs::copy(mesh.state_dir().join("root-cert.pem"), &root).unwrap();
    // The bootstrap and its SDS files are written as the proxy user, as the init container does.
    for p in [
        tokens.clone(),
        tokens.join("v1"),
        tokens.join("v1/istio-token"),
        root.clone(),
        pod.dir.clone(),
        pod.bootstrap.clone(),
    ] {
        chown(&p, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
    }
    // In the pod's network namespace as the proxy user (whose traffic the capture rules let
    // through), as the injected init container asks meshd for the pod's BOOTSTRAP patches.
    let meshd_bin = mesh.meshd_bin();
    let out = pod
        .exec_as(PROXY_UID, PROXY_UID, [meshd_bin.as_os_str()])
        .args([
            "bootstrap",
            "--registry",
            "kubernetes",
            "--workload",
            &format!("api.{NS}"),
            "--pod-ip",
            &ip(20).to_string(),
            "--service-account",
            "api",
            "--xds-address",
            &format!("{}:15012", mesh.gateway()),
            "--token-file",
            &tokens.join("istio-token").to_string_lossy(),
            "--root-cert",
            &root.to_string_lossy(),
            "--out",
        ])
        .arg(&pod.bootstrap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    chown(&pod.bootstrap, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
    // The SDS files beside it name the token and the root; readable by the proxy, no secret.
    for name in ["meshd-token-sds.json", "meshd-root-sds.json"] {
        let mode = std::fs::metadata(pod.dir.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o004, 0o004, "{name}: {mode:o}");
    }
    let kube: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&pod.bootstrap).unwrap()).unwrap();
    assert!(
        kube["dynamic_resources"]["ads_config"]["grpc_services"][0]
            .get("google_grpc")
            .is_some(),
        "a Kubernetes-mode bootstrap: {kube:#}"
    );
    assert!(
        !kube.to_string().contains(credential),
        "no token in the bootstrap"
    );
    mesh.restart_envoy("api")
        .expect("Envoy ready on the Kubernetes-mode bootstrap");

    const N: usize = 12;
    assert!(
        wait_until(Duration::from_secs(30), || get(
            &client,
            &format!("http://{api}:{PORT}/warmup")
        )
        .status
            == 200),
        "the client reaches api"
    );
    for a in burst(&client, &format!("http://{api}:{PORT}/kube"), &[], N, 4) {
        assert_eq!(a.status, 200, "{a:?}");
    }
    // Reported by api's sidecar, over TLS to 15012 with the token file's credential.
    let from_api = vec![
        ("reporter", "destination"),
        ("destination_workload", "api"),
        ("source_workload", "client"),
        ("response_code", "200"),
    ];
    wait_for_counts(
        &mesh,
        "api's access logs over the Kubernetes-mode cluster",
        &[("istio_requests_total", from_api.clone(), (N + 1) as f64)],
    );
    let stats = pod.envoy_stats().unwrap();
    let injected = stats
        .lines()
        .find(|l| l.starts_with("cluster.xds-grpc.credential_injector.injected:"))
        .unwrap_or_else(|| panic!("no credential_injector stats:\n{stats}"));
    assert_ne!(injected.rsplit(' ').next(), Some("0"), "{injected}");
    assert!(
        stats.contains("cluster.xds-grpc.ssl.handshake:"),
        "the access-log streams went over TLS"
    );
}

/// Istio's "customize metrics" recipe on stock Envoy: a Telemetry selecting `api` upserts a
/// tag from a request header and one from the host on its SERVER side. Envoy logs the header
/// only because meshd told it to; meshd's `istio_requests_total` from api's sidecar carries
/// both labels with each request's values, and the client's side carries neither.
#[test]
fn telemetry_upserted_tags_label_requests_with_their_header_and_host() {
    let api = fqdn("api");
    let telemetry = format!(
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: api, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  metrics:
  - overrides:
    - match: {{metric: REQUEST_COUNT, mode: SERVER}}
      tagOverrides:
        user: {{value: "request.headers['x-user']"}}
        request_host: {{value: request.host}}
        destination_port: {{value: string(destination.port)}}
---
"#
    );
    let yaml = [client_and_api(PORT), telemetry].concat();
    let mesh = mesh("telemetry-upsert", &yaml, &[(api.clone(), vip(20))]);
    let client = client_reaching_api(&mesh, PORT);
    let url = format!("http://{api}:{PORT}/ok");
    for (user, n) in [("ada", 3), ("bob", 2)] {
        for a in burst(&client, &url, &[("x-user", user)], n, 2) {
            assert_eq!(a.status, 200, "{a:?}");
        }
    }
    let host = format!("{api}:{PORT}");
    let port = PORT.to_string();
    let labelled = |user: &'static str| {
        vec![
            ("reporter", "destination"),
            ("source_workload", "client"),
            ("response_code", "200"),
            ("user", user),
            ("request_host", host.as_str()),
            ("destination_port", port.as_str()),
        ]
    };
    let requests = "istio_requests_total";
    wait_for_counts(
        &mesh,
        "requests with upserted tags",
        &[
            (requests, labelled("ada"), 3.0),
            (requests, labelled("bob"), 2.0),
        ],
    );
    let m = metrics(&mesh);
    assert_eq!(sum(&m, requests, &labelled("ada")), 3.0);
    assert_eq!(sum(&m, requests, &labelled("bob")), 2.0);
    let client_side = matching(
        &m,
        requests,
        &[("reporter", "source"), ("source_workload", "client")],
    );
    assert!(!client_side.is_empty(), "the client side still reports");
    for s in client_side {
        assert!(
            !s.labels.contains_key("user") && !s.labels.contains_key("request_host"),
            "CLIENT side has no upserted tags: {:?}",
            s.labels
        );
    }
}

/// Istio's periodic TCP metrics: a connection that stays open is counted as opened, and its
/// bytes as they flow, while it lasts (every `reportingInterval`, set to 1 s here by a
/// mesh-wide Telemetry); closed once, when it ends, with no byte counted twice.
#[test]
fn an_open_tcp_connection_is_reported_while_it_lasts() {
    use std::io::{Read, Write};
    let db = fqdn("db");
    let telemetry = "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics: [{reportingInterval: 1s}]
---
";
    let yaml = [
        service("client", vip(10), PORT),
        workload("client", "client", ip(10), &[]),
        tcp_service("db", vip(30), TCP_PORT),
        workload("db", "db", ip(30), &[]),
        telemetry.to_string(),
    ]
    .concat();
    let mesh = mesh("telemetry-tcp-open", &yaml, &[(db.clone(), vip(30))]);
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), PORT)
        .unwrap();
    mesh.add_sidecar_pod(&format!("db.{NS}"), ip(30), TCP_PORT)
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || get(
            &client,
            &format!("http://{db}:{TCP_PORT}/warmup")
        )
        .status
            == 200),
        "the client reaches db through its sidecar"
    );
    let tcp = |reporter: &'static str| {
        vec![
            ("reporter", reporter),
            ("source_workload", "client"),
            ("destination_workload", "db"),
        ]
    };
    let opened = "istio_tcp_connections_opened_total";
    let closed = "istio_tcp_connections_closed_total";
    let sent = "istio_tcp_sent_bytes_total";
    // The warm-up's connections, once all of them have been reported closed.
    let mut before = Vec::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            before = metrics(&mesh);
            ["source", "destination"].iter().all(|r| {
                sum(&before, opened, &tcp(r)) > 0.0
                    && sum(&before, opened, &tcp(r)) == sum(&before, closed, &tcp(r))
            })
        }),
        "the warm-up's connections reported closed: {:?}",
        ["source", "destination"].map(|r| (
            r,
            sum(&before, opened, &tcp(r)),
            sum(&before, closed, &tcp(r))
        ))
    );
    let base = |name: &str, r: &'static str| sum(&before, name, &tcp(r));

    // One keep-alive connection, two requests on it, left open.
    let mut conn = client
        .in_netns(|| std::net::TcpStream::connect((vip(30), TCP_PORT)))
        .unwrap()
        .expect("connect to db");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answered = 0usize;
    for path in ["/one", "/two"] {
        write!(conn, "GET {path} HTTP/1.1\r\nHost: {db}\r\n\r\n").unwrap();
        let mut buf = [0u8; 4096];
        let n = conn
            .read(&mut buf)
            .expect("an answer on the open connection");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        answered += n;
    }
    let mut open_view = Vec::new();
    let reported_open = wait_until(Duration::from_secs(30), || {
        open_view = metrics(&mesh);
        ["source", "destination"].iter().all(|r| {
            sum(&open_view, opened, &tcp(r)) == base(opened, r) + 1.0
                && sum(&open_view, sent, &tcp(r)) >= base(sent, r) + answered as f64
        })
    });
    assert!(
        reported_open,
        "the open connection and its bytes are reported while it lasts"
    );
    for r in ["source", "destination"] {
        assert_eq!(
            sum(&open_view, closed, &tcp(r)),
            base(closed, r),
            "{r}: not closed yet"
        );
    }
    drop(conn);
    let mut after = Vec::new();
    let reported_closed = wait_until(Duration::from_secs(30), || {
        after = metrics(&mesh);
        ["source", "destination"]
            .iter()
            .all(|r| sum(&after, closed, &tcp(r)) == base(closed, r) + 1.0)
    });
    assert!(reported_closed, "closed once it ends");
    for r in ["source", "destination"] {
        assert_eq!(
            sum(&after, opened, &tcp(r)),
            base(opened, r) + 1.0,
            "{r}: opened once"
        );
        let grew = sum(&after, sent, &tcp(r)) - base(sent, r);
        assert!(
            grew >= answered as f64 && grew < 2.0 * answered as f64,
            "{r}: the answers' {answered} bytes counted once, not again at the end ({grew})"
        );
    }
}
