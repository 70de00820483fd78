//! Shared by the `traffic_*` end-to-end tests: small mesh-config builders (ServiceEntry +
//! WorkloadEntry per service, as file mode serves them) and request helpers that fire many
//! requests from inside a pod over one client.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use meshd_e2e::*;

pub const NS: &str = "shop";

pub fn fqdn(name: &str) -> String {
    format!("{name}.{NS}.svc.cluster.local")
}

/// `10.96.0.<host>`: a service VIP.
pub fn vip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, host)
}

/// A mesh-internal HTTP service `name` on `port` (VIP `vip`), selecting workloads `app: name`.
pub fn service(name: &str, vip: Ipv4Addr, port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {NS}}}
spec:
  hosts: [{host}]
  addresses: [{vip}]
  ports:
  - {{number: {port}, name: http, protocol: HTTP}}
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector:
    labels: {{app: {name}}}
---
"#,
        host = fqdn(name)
    )
}

/// A WorkloadEntry `name` at `ip` for app `app` with extra labels (e.g. `version`).
pub fn workload(name: &str, app: &str, ip: Ipv4Addr, labels: &[(&str, &str)]) -> String {
    let mut l = format!("app: {app}");
    for (k, v) in labels {
        l.push_str(&format!(", {k}: {v}"));
    }
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}, namespace: {NS}}}
spec:
  address: {ip}
  labels: {{{l}}}
  serviceAccount: {app}
---
"#
    )
}

/// Start a mesh with `yaml` as its one config file, and host entries for `hosts`.
/// The config most tests start from: a `client` and an `api` service on `port`, each with one
/// workload (hosts 10 and 20).
pub fn client_and_api(port: u16) -> String {
    [
        service("client", vip(10), port),
        workload("client", "client", ip(10), &[]),
        service("api", vip(20), port),
        workload("api", "api", ip(20), &[]),
    ]
    .concat()
}

/// Starts the `client` (host 10) and `api` (host 20) sidecar pods of [`client_and_api`]'s mesh
/// and waits until the client reaches api through its sidecar, with a status (202) that the
/// telemetry tests do not count.
pub fn client_reaching_api(mesh: &Mesh, port: u16) -> SidecarPod {
    let client = mesh
        .add_sidecar_pod(&format!("client.{NS}"), ip(10), port)
        .unwrap();
    mesh.add_sidecar_pod(&format!("api.{NS}"), ip(20), port)
        .unwrap();
    let warmup = format!("http://{}:{port}/warmup?status=202", fqdn("api"));
    assert!(
        wait_until(Duration::from_secs(30), || get(&client, &warmup).status
            == 202),
        "the client reaches api through its sidecar"
    );
    client
}

pub fn mesh(name: &str, yaml: &str, hosts: &[(String, Ipv4Addr)]) -> Mesh {
    mesh_with(MeshOptions::named(name).config("mesh.yaml", yaml), hosts)
}

pub fn mesh_with(opts: MeshOptions, hosts: &[(String, Ipv4Addr)]) -> Mesh {
    let mesh = Mesh::start(opts).expect("mesh starts");
    mesh.set_hosts(hosts).unwrap();
    mesh
}

/// One answer: status, headers and body (the workload app's JSON when it parses).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    pub elapsed: Duration,
    /// Why there was no HTTP answer (status 0), from the client's error.
    pub no_answer: Option<NoAnswer>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// The workload app's `service` field (which app answered).
    pub fn service(&self) -> String {
        self.json()["service"].as_str().unwrap_or("").to_string()
    }
}

fn client_for(pod: &Pod, url: &str, timeout: Duration) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Ok(u) = reqwest::Url::parse(url)
        && let Some(host) = u.host_str()
        && let Some((_, ip)) = pod.hosts().iter().rev().find(|(n, _)| n == host)
    {
        b = b.resolve(host, SocketAddr::new((*ip).into(), 0));
    }
    b.build().unwrap()
}

async fn one(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let started = Instant::now();
    let mut rb = client.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    match rb.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = resp.text().await.unwrap_or_default();
            Answer {
                status,
                headers,
                body,
                elapsed: started.elapsed(),
                no_answer: None,
            }
        }
        Err(e) => Answer {
            status: 0,
            headers: BTreeMap::new(),
            body: format!("{e:#}"),
            elapsed: started.elapsed(),
            no_answer: Some(no_answer(&e)),
        },
    }
}

/// One request from inside `pod` (status 0 and the error in `body` when it fails).
pub fn request(pod: &Pod, method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    request_timeout(pod, method, url, headers, Duration::from_secs(10))
}

pub fn request_timeout(
    pod: &Pod,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Answer {
    let client = client_for(pod, url, timeout);
    let (url, method) = (url.to_string(), method.to_string());
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pod.in_netns(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        rt.block_on(one(&client, &method, &url, &h))
    })
    .unwrap()
}

pub fn get(pod: &Pod, url: &str) -> Answer {
    request(pod, "GET", url, &[])
}

/// `n` GETs from inside `pod`, `concurrency` at a time, over one client (connection reuse).
pub fn burst(
    pod: &Pod,
    url: &str,
    headers: &[(&str, &str)],
    n: usize,
    concurrency: usize,
) -> Vec<Answer> {
    let client = client_for(pod, url, Duration::from_secs(20));
    let url = url.to_string();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pod.in_netns(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use futures::StreamExt;
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            futures::stream::iter(0..n)
                .map(|_| one(&client, "GET", &url, &h))
                .buffer_unordered(concurrency.max(1))
                .collect::<Vec<_>>()
                .await
        })
    })
    .unwrap()
}

/// How many requests with `key` the workload app in `pod` has seen (asked on localhost).
pub fn app_count(pod: &SidecarPod, key: &str) -> u64 {
    let a = get(
        &pod.pod,
        &format!("http://127.0.0.1:{}/__count?key={key}", pod.app_port),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["count"].as_u64().unwrap()
}

/// Envoy's config_dump section of type `…<suffix>` (e.g. `ClustersConfigDump`).
pub fn dump_section<'a>(dump: &'a serde_json::Value, suffix: &str) -> &'a serde_json::Value {
    dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["@type"]
                .as_str()
                .unwrap_or("")
                .ends_with(&format!(".{suffix}"))
        })
        .unwrap_or_else(|| panic!("no {suffix} in config_dump"))
}

/// The dynamic clusters in a config_dump, by name.
pub fn dump_clusters(dump: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    dump_section(dump, "ClustersConfigDump")["dynamic_active_clusters"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|c| {
            (
                c["cluster"]["name"].as_str().unwrap().to_string(),
                c["cluster"].clone(),
            )
        })
        .collect()
}

/// The dynamic route configurations in a config_dump, by name.
pub fn dump_routes(dump: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    dump_section(dump, "RoutesConfigDump")["dynamic_route_configs"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|c| {
            (
                c["route_config"]["name"].as_str().unwrap().to_string(),
                c["route_config"].clone(),
            )
        })
        .collect()
}

/// The names of the active (not draining) dynamic listeners in a config_dump.
pub fn dump_active_listeners(dump: &serde_json::Value) -> Vec<String> {
    dump_section(dump, "ListenersConfigDump")["dynamic_listeners"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter(|l| !l["active_state"].is_null())
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect()
}

/// A counter from Envoy's stats; panics naming it when Envoy does not have it.
pub fn stat(pod: &SidecarPod, name: &str) -> u64 {
    envoy_stat(pod, name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Sidecar options for a gateway pod: Envoy in router mode, no capture, no app.
pub fn gateway_options() -> SidecarOptions {
    SidecarOptions {
        start_app: false,
        iptables_args: ["-i", "", "-b", ""].map(String::from).to_vec(),
        ..SidecarOptions::default()
    }
}

/// `openssl args` run in `dir`; a failure fails the test with openssl's error.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In `dir` (made world-readable): a CA (`ca.pem`) and a leaf (`cert.pem`, `key.pem`, EC P-256)
/// for `hosts`, readable by the proxy's uid.
pub fn tls_certificates(dir: &std::path::Path, hosts: &[&str]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509", "-days", "1", "-subj", "/CN=test-ca"];
    a.extend(ec);
    a.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &a);
    let subj = format!("/CN={}", hosts[0]);
    let mut a = vec!["req", "-subj", &subj];
    a.extend(ec);
    a.extend(["-keyout", "key.pem", "-out", "leaf.csr"]);
    openssl(dir, &a);
    let sans: Vec<String> = hosts.iter().map(|h| format!("DNS:{h}")).collect();
    std::fs::write(
        dir.join("san.ext"),
        format!("subjectAltName={}\n", sans.join(",")),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "cert.pem",
        ],
    );
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}
