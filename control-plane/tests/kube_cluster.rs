//! End to end on a real single-node cluster (`scripts/kube-node.sh`: kube-apiserver,
//! controller-manager, scheduler, kubelet on containerd and runc, kube-proxy, cluster DNS):
//! meshd's images built by `scripts/images.sh` and loaded into the node's containerd, the Helm
//! chart installed with the VoiceCore values, the Deployments injected and meshed with mTLS,
//! `helm upgrade` and a killed leader with no failed request between two services, and
//! `helm uninstall` leaving no webhook behind.
//!
//! Needs root and `scripts/kube-node.sh install` (scripts/install-tools.sh runs it). One node
//! runs per machine: the script's lock serializes concurrent runs.

#[path = "kube/kube_support/mod.rs"]
mod kube_support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, LogParams};
use kube_support::{create, eventually, helm};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

const MESHD_NS: &str = "meshd-system";

/// One node per machine (`scripts/kube-node.sh` locks): the tests of this file take turns
/// rather than one waiting inside the script's start while the other runs.
static ONE_NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const VOICECORE_NS: &str = "voicecore-ai";
/// What `scripts/images.sh` names the sidecar image (and the chart's default proxyImage).
const ENVOY_IMAGE: &str = "ghcr.io/meshd/envoy:v1.40.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The node, stopped (and everything it started removed) on drop.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn start() -> Node {
        let script = repo().join("scripts/kube-node.sh");
        let installed = Command::new(&script).arg("path").status().unwrap();
        assert!(
            installed.success(),
            "the node's binaries are not built: run `scripts/kube-node.sh install` \
             (scripts/install-tools.sh does it; ~15 min once, cached under ~/.cache/meshd/)"
        );
        let dir = tempfile::tempdir().unwrap();
        let node = Node { dir };
        run(Command::new(&script).arg("start").arg(node.dir.path()));
        node
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn containerd_socket(&self) -> PathBuf {
        self.dir.path().join("containerd/containerd.sock")
    }

    async fn client(&self) -> Client {
        meshd::kube::client(Some(&self.kubeconfig())).await.unwrap()
    }

    fn helm(&self, args: &[&str]) -> String {
        run(Command::new(helm())
            .args(args)
            .args(["--namespace", MESHD_NS, "--kubeconfig"])
            .arg(self.kubeconfig()))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The components' logs outlive the temporary directory for a look after a failure.
            let keep = repo().join("target/kube-cluster-logs");
            let _ = std::fs::create_dir_all(&keep);
            if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
                for e in entries.flatten() {
                    if e.path().extension().is_some_and(|x| x == "log") {
                        let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
                    }
                }
            }
            eprintln!("node logs copied to {}", keep.display());
        }
        let _ = Command::new(repo().join("scripts/kube-node.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// The meshd binary this test run built (as the other end-to-end tests find it).
fn meshd_bin() -> PathBuf {
    std::env::var_os("MESHD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_meshd")))
}

/// `scripts/images.sh build` from this run's meshd binary, loaded into the node.
fn build_and_load_images(node: &Node) {
    let out = repo().join("target/images");
    run(Command::new(repo().join("scripts/images.sh"))
        .arg("build")
        .arg(&out)
        .env("MESHD_BIN", meshd_bin()));
    run(Command::new(repo().join("scripts/images.sh"))
        .arg("load")
        .arg(node.containerd_socket())
        .arg(out.join("meshd.tar"))
        .arg(out.join("envoy.tar")));
}

fn pod_summary(p: &Pod) -> String {
    let status = p.status.as_ref();
    let containers: Vec<String> = status
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let state = c
                        .state
                        .as_ref()
                        .map(|s| serde_json::to_string(s).unwrap_or_default())
                        .unwrap_or_default();
                    format!("{} ready={} {state}", c.name, c.ready)
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} phase={:?} {:?} [{}]",
        p.metadata.name.clone().unwrap_or_default(),
        status.and_then(|s| s.phase.clone()),
        status.and_then(|s| s.message.clone()),
        containers.join("; ")
    )
}

async fn pods(client: &Client, ns: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Waits for pod `ns/name` to reach `phase`; on time-out the panic shows every pod's state.
async fn pod_phase(client: &Client, ns: &str, name: &str, phase: &str, secs: u64) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Ok(Some(p)) = api.get_opt(name).await {
            let now = p.status.as_ref().and_then(|s| s.phase.as_deref());
            if now == Some(phase) {
                return p;
            }
            // A finished pod will not change its mind (e.g. refused by the kubelet).
            if matches!(now, Some("Succeeded" | "Failed")) {
                panic!("pod {ns}/{name} ended {}", pod_summary(&p));
            }
        }
        if tokio::time::Instant::now() > deadline {
            let all: Vec<String> = pods(client, ns).await.iter().map(pod_summary).collect();
            panic!(
                "pod {ns}/{name} not {phase} after {secs} s:\n{}",
                all.join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn log_of(client: &Client, ns: &str, pod: &str, container: &str) -> String {
    Api::<Pod>::namespaced(client.clone(), ns)
        .logs(
            pod,
            &LogParams {
                container: Some(container.into()),
                ..LogParams::default()
            },
        )
        .await
        .unwrap_or_default()
}

/// Every Deployment in `ns` has all its replicas ready; on time-out the panic shows the pods.
async fn deployments_ready(client: &Client, ns: &str, names: &[&str], secs: u64) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let mut waiting = Vec::new();
        for name in names {
            let ready = match api.get_opt(name).await {
                Ok(Some(d)) => {
                    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    let have = d
                        .status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0);
                    want > 0 && have >= want
                }
                _ => false,
            };
            if !ready {
                waiting.push(*name);
            }
        }
        if waiting.is_empty() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let all: Vec<String> = pods(client, ns).await.iter().map(pod_summary).collect();
            panic!(
                "Deployments {waiting:?} in {ns} not ready after {secs} s; pods:\n{}",
                all.join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// A pod running Debian's busybox (the image the node script builds). Its `wget -T` crashes
/// (busybox 1.35, static glibc): scripts bound their requests with `timeout` instead.
fn busybox_pod(ns: &str, name: &str, sa: Option<&str>, script: &str) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "app",
                "image": "localhost/meshd/busybox:1.35.0",
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
            }],
        }
    });
    if let Some(sa) = sa {
        pod["spec"]["serviceAccountName"] = json!(sa);
    }
    pod
}

const VOICECORE: [&str; 8] = [
    "gateway",
    "tenant-service",
    "call-service",
    "ai-service",
    "crm-service",
    "analytics-service",
    "integration-service",
    "billing-service",
];

/// The chart as a user installs it, with requests scaled to a 2-core test node (the seed's
/// 2 × 500m control plane alone would not fit beside 16 VoiceCore containers) and no gateways
/// (their Envoys are covered elsewhere; here they would only take CPU). Control plane first,
/// then the application, as with Istio: in one `helm install -f values-voicecore.yaml`, Helm
/// creates the MutatingWebhookConfiguration after every built-in kind, so the VoiceCore
/// Deployments' first pods are created before the webhook exists (and before meshd answers)
/// and run without a sidecar. Returns the two meshd pods.
async fn install_meshd_then_voicecore(node: &Node, client: &Client) -> Vec<String> {
    let client = client.clone();
    let chart = repo().join("deploy/helm/meshd");
    let chart = chart.to_str().unwrap();
    let values = repo().join("deploy/helm/meshd/values-voicecore.yaml");
    let small_node = [
        "--set",
        "controlPlane.resources.requests.cpu=50m,controlPlane.resources.requests.memory=128Mi",
        "--set",
        "injection.proxyResources.cpuRequest=10m,injection.proxyResources.memoryRequest=32Mi",
        "--set",
        "voicecore.replicas=1,voicecore.resources.requests.cpu=10m,voicecore.resources.requests.memory=32Mi",
        "--set",
        "ingressGateway.enabled=false,egressGateway.enabled=false",
    ];
    node.helm(
        &[
            &["install", "meshd", chart, "--create-namespace"][..],
            &small_node,
        ]
        .concat(),
    );

    // meshd: both replicas Running and Ready, one of them holding the leader Lease.
    deployments_ready(&client, MESHD_NS, &["meshd"], 300).await;
    // (The HPA raises the Deployment to its minimum of 2 after the first replica is up.)
    let meshd_pods = eventually(180, "two meshd replicas Ready", || {
        let client = client.clone();
        async move {
            let ready: Vec<String> = pods(&client, MESHD_NS)
                .await
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .filter_map(|p| p.metadata.name.clone())
                .filter(|n| n.starts_with("meshd-"))
                .collect();
            (ready.len() == 2).then_some(ready)
        }
    })
    .await;
    node.helm(
        &[
            &["upgrade", "meshd", chart, "-f", values.to_str().unwrap()][..],
            &small_node,
        ]
        .concat(),
    );
    // The eight VoiceCore Deployments: injected by the webhook (classic path on 1.20: the
    // sidecar is a second container), both containers ready under STRICT mTLS (the kubelet's
    // probes go through the sidecar's health port).
    deployments_ready(&client, VOICECORE_NS, &VOICECORE, 600).await;
    meshd_pods
}

/// `meshd dashboard` in Kubernetes mode: a port-forward through the API server to a meshd
/// pod's admin port, where the dashboard answers as to the pod's own loopback (no token).
async fn dashboard_through_a_port_forward(node: &Node) {
    use std::io::BufRead;
    let mut dashboard = Command::new(meshd_bin())
        .args([
            "dashboard",
            "--namespace",
            MESHD_NS,
            "--no-browser",
            "--kubeconfig",
        ])
        .arg(node.kubeconfig())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = dashboard.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no URL in `meshd dashboard`'s output: {line:?}"))
        .to_string();
    let page = reqwest::get(&url).await.unwrap();
    assert_eq!(page.status(), 200, "{url}");
    assert!(page.text().await.unwrap().contains("meshd dashboard"));
    let graph: Value = reqwest::get(format!("{url}api/graph"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let services: Vec<&str> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert!(
        services.contains(&"service:tenant-service.voicecore-ai.svc.cluster.local"),
        "{services:?}"
    );
    let _ = dashboard.kill();
    let _ = dashboard.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_node_runs_the_chart_and_meshes_voicecore_with_mtls() {
    let _turn = ONE_NODE.lock().await;
    let node = Node::start();
    let client = node.client().await;

    // The node itself: a pod from an image built here runs to completion; the cluster DNS
    // resolves a Service name through the pod's search path and kube-proxy routes its
    // ClusterIP (the API server's /healthz answers "ok").
    create(
        &client,
        busybox_pod(
            "default",
            "hello",
            None,
            "wget -q -O - --no-check-certificate https://kubernetes.default/healthz; \
             echo; echo hello from $(hostname)",
        ),
    )
    .await;
    pod_phase(&client, "default", "hello", "Succeeded", 180).await;
    assert_eq!(
        log_of(&client, "default", "hello", "app").await.trim(),
        "ok\nhello from hello"
    );

    build_and_load_images(&node);

    let meshd_pods = install_meshd_then_voicecore(&node, &client).await;
    let holder = eventually(60, "a leader", || {
        let client = client.clone();
        async move {
            use k8s_openapi::api::coordination::v1::Lease;
            let lease = Api::<Lease>::namespaced(client, MESHD_NS)
                .get_opt("meshd-leader")
                .await
                .ok()??;
            lease.spec?.holder_identity
        }
    })
    .await;
    assert!(
        meshd_pods
            .iter()
            .any(|p| holder.starts_with(&format!("{p}_"))),
        "leader {holder} is not one of {meshd_pods:?}"
    );
    dashboard_through_a_port_forward(&node).await;

    for p in pods(&client, VOICECORE_NS).await {
        let spec = p.spec.as_ref().unwrap();
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names.len(), 2, "{}: {names:?}", pod_summary(&p));
        let proxy = spec
            .containers
            .iter()
            .find(|c| c.name == "istio-proxy")
            .unwrap_or_else(|| panic!("no istio-proxy in {}", pod_summary(&p)));
        assert_eq!(proxy.image.as_deref(), Some(ENVOY_IMAGE));
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().filter(|c| c.ready).count())
            .unwrap_or(0);
        assert_eq!(ready, 2, "{}", pod_summary(&p));
    }

    // A request between two services: from a meshed client running as the `gateway` service
    // account to tenant-service by its Service name. The server's workload reports the caller
    // from the x-forwarded-client-cert header its sidecar sets from the client certificate:
    // the SPIFFE ID there is the proof the hop was mutual TLS.
    create(
        &client,
        busybox_pod(
            VOICECORE_NS,
            "caller",
            Some("gateway"),
            "until timeout 10 wget -q -O /tmp/body http://tenant-service:8001/hello; do sleep 1; done; \
             cat /tmp/body; echo; sleep 3600",
        ),
    )
    .await;
    let body = eventually(180, "the caller's answer from tenant-service", || {
        let client = client.clone();
        async move {
            let log = log_of(&client, VOICECORE_NS, "caller", "app").await;
            log.lines()
                .find_map(|l| serde_json::from_str::<Value>(l).ok())
        }
    })
    .await;
    assert_eq!(body["service"], "tenant-service", "{body}");
    assert_eq!(body["path"], "/hello", "{body}");
    assert_eq!(
        body["caller"], "spiffe://cluster.local/ns/voicecore-ai/sa/gateway",
        "{body}"
    );

    // STRICT: a pod outside the mesh is refused by the same service.
    create(
        &client,
        busybox_pod(
            "default",
            "outsider",
            None,
            "timeout 10 wget -q -O - http://tenant-service.voicecore-ai:8001/hello 2>&1; echo exit=$?",
        ),
    )
    .await;
    pod_phase(&client, "default", "outsider", "Succeeded", 120).await;
    let outsider = log_of(&client, "default", "outsider", "app").await;
    // The name resolved and the connection was made (no "bad address", no "can't connect"):
    // the server's sidecar reset it when no TLS came.
    assert!(outsider.contains("exit=1"), "{outsider}");
    assert!(
        outsider.contains("error getting response: Connection reset by peer"),
        "{outsider}"
    );

    // A Job in the injected namespace completes: its app calls a service through the mesh,
    // then stops its sidecar the Istio way (POST /quitquitquit on the loopback status port
    // 15020, classic path on 1.20) so the pod can finish. It holds its app until the proxy
    // starts (classic path: the proxy first, with a postStart hook that returns once Envoy is
    // ready), so the app's one and only request, sent the moment it starts, goes through a
    // ready sidecar. (The hook runs meshd-proxy-wait, which the bootstrap init container
    // copied in; the proxy's image is stock Envoy.)
    create(
        &client,
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "report", "namespace": VOICECORE_NS},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {
                        "labels": {"app": "report"},
                        "annotations": {
                            "proxy.istio.io/config": "holdApplicationUntilProxyStarts: true",
                        },
                    },
                    "spec": busybox_pod(
                        VOICECORE_NS,
                        "report",
                        Some("analytics-service"),
                        "timeout 20 wget -q -O /tmp/body http://billing-service:8007/report; \
                         echo first=$?; cat /tmp/body; echo; \
                         timeout 10 wget -q -O - --post-data= http://127.0.0.1:15020/quitquitquit; \
                         echo quit=$?; exit 0",
                    )["spec"],
                },
            },
        }),
    )
    .await;
    let job = eventually(300, "the Job to complete", || {
        let client = client.clone();
        async move {
            use k8s_openapi::api::batch::v1::Job;
            let job = Api::<Job>::namespaced(client, VOICECORE_NS)
                .get_opt("report")
                .await
                .ok()??;
            let status = job.status.clone()?;
            (status.succeeded.unwrap_or(0) + status.failed.unwrap_or(0) > 0).then_some(status)
        }
    })
    .await;
    let job_pods = pods(&client, VOICECORE_NS).await;
    let job_pod = job_pods
        .iter()
        .find(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("report-"))
        })
        .expect("the Job's pod");
    let report = log_of(
        &client,
        VOICECORE_NS,
        job_pod.metadata.name.as_deref().unwrap(),
        "app",
    )
    .await;
    eprintln!("the Job's log:\n{report}");
    assert_eq!(job.succeeded, Some(1), "{}\n{report}", pod_summary(job_pod));
    assert!(report.contains("first=0"), "{report}");
    let containers: Vec<&str> = job_pod
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(containers, ["istio-proxy", "app"]);
    assert!(
        report
            .contains("\"caller\":\"spiffe://cluster.local/ns/voicecore-ai/sa/analytics-service\""),
        "{report}"
    );
    // The sidecar exited by itself (0) once asked: nothing killed it.
    let proxy_exit = job_pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "istio-proxy"))
        .and_then(|c| c.state.as_ref()?.terminated.as_ref())
        .map(|t| t.exit_code);
    assert_eq!(proxy_exit, Some(0), "{}", pod_summary(job_pod));

    // helm uninstall takes the webhook with it (meshd keeps it current while it runs).
    node.helm(&["uninstall", "meshd", "--wait", "--timeout", "5m"]);
    let webhooks = eventually(60, "no meshd webhook", || {
        let client = client.clone();
        async move {
            use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
            let list = Api::<MutatingWebhookConfiguration>::all(client)
                .list(&ListParams::default())
                .await
                .ok()?;
            let names: Vec<String> = list
                .items
                .iter()
                .filter_map(|w| w.metadata.name.clone())
                .collect();
            (!names.iter().any(|n| n.contains("meshd"))).then_some(names)
        }
    })
    .await;
    assert!(webhooks.is_empty(), "{webhooks:?}");
    drop(node);
}

/// The prober's loop: five requests a second from a meshed busybox to tenant-service, each line
/// `ok|FAIL <exit> dns=<ms>/<exit> http=<ms> <error>`. Each round looks the name up (timed, for
/// the record) and then sends the request to the Service's ClusterIP with the name as `Host`,
/// which is what the mesh routes on. The lookup is kept out of the request because cluster DNS
/// here is the node's dnsmasq, not meshd, and it drops an answer now and then while pods come
/// and go (a 2.5 s lookup measured during a rollout here; on CI a request by name once hit
/// `timeout 5` in glibc's 5 s resolver retry): a failed request must be the mesh's.
/// `timeout 5` ends a request the mesh never answers.
fn prober_loop(cluster_ip: &str) -> String {
    format!(
        "now() {{ tr -d . </proc/uptime | cut -d' ' -f1; }}; \
         while true; do \
           a=$(now); nslookup tenant-service >/dev/null 2>&1; d=$?; b=$(now); \
           if timeout 5 wget -q -O /dev/null --header 'Host: tenant-service:8001' \
                http://{cluster_ip}:8001/probe 2>/tmp/err; \
           then r=ok; else r=\"FAIL $?\"; fi; c=$(now); \
           echo \"$r dns=$(((b-a)*10))/$d http=$(((c-b)*10)) $(cat /tmp/err)\"; sleep 0.2; \
         done"
    )
}

/// The prober lines' slowest request and slowest lookup, in ms, for the measurement line.
fn slowest(lines: &[&str]) -> (u64, u64) {
    let field = |line: &str, key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let http = lines.iter().map(|l| field(l, "http=")).max().unwrap_or(0);
    let dns = lines.iter().map(|l| field(l, "dns=")).max().unwrap_or(0);
    (http, dns)
}

/// On a failed request: which sidecar answered, and with which response flags. Both access
/// logs' lines that are not a quick 200 (a 503, a reset, a request cut at `timeout 5`: DC,
/// ~5000 ms), with the upstream host they went to.
async fn print_unquick_requests(client: &Client) {
    for pod in pods(client, VOICECORE_NS).await {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if name == "prober" || name.starts_with("tenant-service") {
            let log = log_of(client, VOICECORE_NS, &name, "istio-proxy").await;
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                        v["response_code"] != 200
                            || v["response_flags"] != "-"
                            || v["duration"].as_u64().unwrap_or(0) >= 1000
                    })
                })
                .collect();
            eprintln!(
                "{name} istio-proxy, requests that were not a quick 200:\n{}",
                lines.join("\n")
            );
        }
    }
}

/// The leader Lease's holder identity (`<pod>_<random>`), once one holds it.
async fn lease_holder(client: &Client) -> Option<String> {
    use k8s_openapi::api::coordination::v1::Lease;
    let lease = Api::<Lease>::namespaced(client.clone(), MESHD_NS)
        .get_opt("meshd-leader")
        .await
        .ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_upgrade_and_a_killed_leader_fail_no_request_between_two_services() {
    let _turn = ONE_NODE.lock().await;
    let node = Node::start();
    let client = node.client().await;
    build_and_load_images(&node);
    let meshd_pods = install_meshd_then_voicecore(&node, &client).await;
    let chart = repo().join("deploy/helm/meshd");
    let chart = chart.to_str().unwrap();
    // `helm upgrade` to a new meshd image rolls the control plane while two services keep
    // talking: a meshed client calls tenant-service five times a second through the rollout
    // and not one request may fail. (The new image is the same content under a new tag, as
    // a release bump looks to the kubelet.)
    let tenant_ip =
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), VOICECORE_NS)
            .get("tenant-service")
            .await
            .unwrap()
            .spec
            .and_then(|s| s.cluster_ip)
            .expect("tenant-service has a ClusterIP");
    create(
        &client,
        busybox_pod(
            VOICECORE_NS,
            "prober",
            Some("gateway"),
            &prober_loop(&tenant_ip),
        ),
    )
    .await;
    // (Its first requests may race its own sidecar's start: count from the first success.)
    eventually(120, "the prober's first answers", || {
        let client = client.clone();
        async move {
            let log = log_of(&client, VOICECORE_NS, "prober", "app").await;
            (log.lines().filter(|l| l.starts_with("ok ")).count() >= 5).then_some(())
        }
    })
    .await;
    let before = log_of(&client, VOICECORE_NS, "prober", "app").await;
    let first_ok = before.lines().position(|l| l.starts_with("ok ")).unwrap();
    let old_pods = meshd_pods;
    run(Command::new("ctr")
        .arg("--address")
        .arg(node.containerd_socket())
        .args([
            "-n",
            "k8s.io",
            "images",
            "tag",
            "ghcr.io/meshd/meshd:0.1.0",
            "ghcr.io/meshd/meshd:0.1.0-next",
        ]));
    node.helm(&[
        "upgrade",
        "meshd",
        chart,
        "--reuse-values",
        "--set",
        "image.tag=0.1.0-next",
        "--wait",
        "--timeout",
        "5m",
    ]);
    let new_pods = eventually(
        180,
        "two new meshd replicas Ready, the old ones gone",
        || {
            let client = client.clone();
            let old_pods = old_pods.clone();
            async move {
                let all = pods(&client, MESHD_NS).await;
                let meshd: Vec<&Pod> = all
                    .iter()
                    .filter(|p| {
                        p.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| n.starts_with("meshd-"))
                    })
                    .collect();
                let new: Vec<String> = meshd
                    .iter()
                    .filter(|p| {
                        p.spec.as_ref().unwrap().containers[0].image.as_deref()
                            == Some("ghcr.io/meshd/meshd:0.1.0-next")
                            && p.status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .is_some_and(|cs| {
                                    cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                                })
                    })
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
                let old_left = meshd
                    .iter()
                    .any(|p| old_pods.contains(p.metadata.name.as_ref().unwrap()));
                (new.len() == 2 && meshd.len() == 2 && !old_left).then_some(new)
            }
        },
    )
    .await;
    // The upgrade also rolls the VoiceCore pods (their app is the meshd image): the rollout is
    // over, and counted, once their old pods are gone too; the failover below is then measured
    // on its own, not on top of endpoints still leaving.
    eventually(
        120,
        "the VoiceCore pods the upgrade replaced to be gone",
        || {
            let client = client.clone();
            async move {
                let pods = pods(&client, VOICECORE_NS).await;
                let settled = pods.iter().all(|p| p.metadata.deletion_timestamp.is_none());
                (!pods.is_empty() && settled).then_some(())
            }
        },
    )
    .await;
    // A few more seconds of traffic on the new control plane, then the count.
    let after_rollout = log_of(&client, VOICECORE_NS, "prober", "app")
        .await
        .lines()
        .count();
    let log = eventually(60, "the prober's answers after the rollout", || {
        let client = client.clone();
        async move {
            let log = log_of(&client, VOICECORE_NS, "prober", "app").await;
            (log.lines().count() >= after_rollout + 10).then_some(log)
        }
    })
    .await;
    let during: Vec<&str> = log.lines().skip(first_ok).collect();
    let failed: Vec<&&str> = during.iter().filter(|l| l.starts_with("FAIL")).collect();
    let (slowest_http, slowest_dns) = slowest(&during);
    eprintln!(
        "measurement: helm upgrade {old_pods:?} -> {new_pods:?}: {} requests to \
         tenant-service, {} failed; slowest request {slowest_http} ms, slowest lookup \
         {slowest_dns} ms",
        during.len(),
        failed.len()
    );
    if !failed.is_empty() {
        print_unquick_requests(&client).await;
    }
    assert!(
        failed.is_empty(),
        "requests failed during the meshd rollout: {failed:?}"
    );

    // Leader failover: the leader's pod is killed outright (no grace period); another replica
    // takes the Lease, and the two services keep talking through it.
    let holder = eventually(60, "a leader among the new replicas", || {
        let client = client.clone();
        async move { lease_holder(&client).await }
    })
    .await;
    let leader = new_pods
        .iter()
        .find(|p| holder.starts_with(&format!("{p}_")))
        .unwrap_or_else(|| panic!("leader {holder} is not one of {new_pods:?}"))
        .clone();
    let lines_before_kill = log.lines().count();
    Api::<Pod>::namespaced(client.clone(), MESHD_NS)
        .delete(
            &leader,
            &kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let killed = std::time::Instant::now();
    let successor = eventually(120, "another replica holding the Lease", || {
        let (client, leader) = (client.clone(), leader.clone());
        async move {
            lease_holder(&client)
                .await
                .filter(|h| !h.starts_with(&format!("{leader}_")))
        }
    })
    .await;
    eprintln!(
        "measurement: leader {leader} killed; {successor} holds the Lease {:.1} s later",
        killed.elapsed().as_secs_f64()
    );
    let log = eventually(60, "the prober's answers after the failover", || {
        let client = client.clone();
        async move {
            let log = log_of(&client, VOICECORE_NS, "prober", "app").await;
            (log.lines().count() >= lines_before_kill + 25).then_some(log)
        }
    })
    .await;
    let after_kill: Vec<&str> = log.lines().skip(lines_before_kill).collect();
    let (slowest_http, slowest_dns) = slowest(&after_kill);
    eprintln!(
        "measurement: leader failover: {} requests, slowest {slowest_http} ms, slowest lookup \
         {slowest_dns} ms",
        after_kill.len()
    );
    let failed: Vec<&&str> = after_kill
        .iter()
        .filter(|l| l.starts_with("FAIL"))
        .collect();
    if !failed.is_empty() {
        print_unquick_requests(&client).await;
    }
    assert!(
        failed.is_empty(),
        "requests failed during the leader failover: {failed:?}"
    );

    drop(node);
}
