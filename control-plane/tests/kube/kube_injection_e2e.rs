//! Kubernetes mode end to end, against a real kube-apiserver v1.20.2: meshd sets its webhook's
//! caBundle; pods created through the API come back injected; each injected pod is then run the
//! way a kubelet would run it — its init containers' commands (iptables capture, bootstrap) and
//! the Envoy sidecar with the bootstrap they wrote, in a network-namespace pod, with the
//! projected token and the root-cert ConfigMap as files — and mTLS traffic flows between two
//! such pods under STRICT, with the caller's SPIFFE ID reaching the callee.
//!
//! Everything (etcd, the API server, meshd, the pods' network) lives in one network namespace
//! (the pod network's node), so the API server reaches the webhook on loopback and the pods
//! reach meshd on the bridge address.

use crate::kube_support;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube_support::*;
use meshd_localmesh::mesh::envoy_admin_get;
use meshd_localmesh::podnet::{self, Child, Pod, PodNetwork};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WEBHOOK_CONFIG: &str = "meshd-sidecar-injector-meshd-system";
const MESHD_BIN: &str = env!("CARGO_BIN_EXE_meshd");

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The chart's webhook configuration, pointing at `url` instead of meshd's Service (no
/// Service routing without kube-proxy) and without a caBundle (meshd sets it).
fn webhook_configuration(url: &str) -> Value {
    let webhook = |name: &str, ns_selector: Value, obj_selector: Value| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 10,
            "reinvocationPolicy": "Never",
            "clientConfig": {"url": url},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": ns_selector,
            "objectSelector": obj_selector,
        })
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG},
        "webhooks": [
            webhook("namespace.sidecar-injector.meshd.io",
                json!({"matchExpressions": [{"key": "istio-injection", "operator": "In", "values": ["enabled"]}]}),
                json!({"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]})),
            webhook("object.sidecar-injector.meshd.io",
                json!({"matchExpressions": [{"key": "istio-injection", "operator": "DoesNotExist"}]}),
                json!({"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "In", "values": ["true"]}]})),
        ]
    })
}

async fn ca_bundles(client: &Client) -> Vec<Option<String>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.get(WEBHOOK_CONFIG)
        .await
        .unwrap()
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|w| {
            w.client_config
                .ca_bundle
                .map(|b| String::from_utf8(b.0).unwrap())
        })
        .collect()
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {pod}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} {name} in {pod}"))
}

fn injected(pod: &Value) -> bool {
    pod["metadata"]["annotations"]["sidecar.istio.io/status"].is_string()
}

/// A pod as the kubelet would run it, from the Pod the API server returned: volumes are
/// directories under `dir`, mounted by rewriting the mount paths in arguments.
struct PodRun {
    pod: Pod,
    spec: Value,
    dir: PathBuf,
    mounts: Vec<(String, PathBuf)>,
    field_values: BTreeMap<&'static str, String>,
    procs: Vec<Child>,
}

impl PodRun {
    fn new(pod: Pod, spec: Value, dir: PathBuf) -> PodRun {
        let field_values = BTreeMap::from([
            (
                "metadata.name",
                spec["metadata"]["name"].as_str().unwrap().to_string(),
            ),
            (
                "metadata.namespace",
                spec["metadata"]["namespace"].as_str().unwrap().to_string(),
            ),
            ("status.podIP", pod.ip.to_string()),
            (
                "spec.serviceAccountName",
                spec["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ),
        ]);
        PodRun {
            pod,
            spec,
            dir,
            mounts: Vec::new(),
            field_values,
            procs: Vec::new(),
        }
    }

    /// The directory backing volume `name`, owned by `uid`.
    fn volume(&self, name: &str, uid: u32) -> PathBuf {
        let d = self.dir.join("volumes").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&d, Some(uid), Some(uid)).unwrap();
        d
    }

    /// The container's environment, with fieldRefs resolved as the kubelet does.
    fn env(&self, c: &Value) -> Vec<(String, String)> {
        c["env"]
            .as_array()
            .map(|env| {
                env.iter()
                    .map(|e| {
                        let name = e["name"].as_str().unwrap().to_string();
                        let value = match e["value"].as_str() {
                            Some(v) => v.to_string(),
                            None => {
                                let path = e["valueFrom"]["fieldRef"]["fieldPath"]
                                    .as_str()
                                    .unwrap_or_else(|| panic!("unsupported env source {e}"));
                                self.field_values
                                    .get(path)
                                    .unwrap_or_else(|| panic!("no value for fieldRef {path}"))
                                    .clone()
                            }
                        };
                        (name, value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `command` + `args` with `$(VAR)` expanded from `env`, and the image's binaries
    /// (`meshd`, `envoy`) resolved to local ones.
    fn argv(&self, c: &Value, env: &[(String, String)]) -> Vec<String> {
        let words = c["command"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(c["args"].as_array().into_iter().flatten())
            .map(|w| w.as_str().unwrap().to_string());
        words
            .enumerate()
            .map(|(i, mut w)| {
                for (k, v) in env {
                    w = w.replace(&format!("$({k})"), v);
                }
                if i == 0 {
                    w = match w.as_str() {
                        "meshd" => MESHD_BIN.to_string(),
                        "envoy" => podnet::ensure_envoy()
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                        other => panic!("unexpected image command {other}"),
                    };
                }
                w
            })
            .collect()
    }

    /// The container's process: in the pod's network namespace and in a mount namespace of its
    /// own (`ip netns exec` makes one) where each volume is bind-mounted at its `mountPath`, as
    /// the container sees it; then as the container's user.
    fn command(&self, c: &Value) -> std::process::Command {
        let env = self.env(c);
        let argv = self.argv(c, &env);
        let uid = Self::uid(c);
        let mut script = String::from("set -e\n");
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap();
            let (_, dir) = self
                .mounts
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("volume {name} not prepared"));
            let path = m["mountPath"].as_str().unwrap();
            script.push_str(&format!(
                "mkdir -p '{path}'\nmount --bind '{}' '{path}'\n",
                dir.display()
            ));
        }
        script.push_str(&format!(
            "exec setpriv --reuid={uid} --regid={uid} --clear-groups \"$@\"\n"
        ));
        let mut cmd = self.pod.exec(["sh", "-c", &script, "sh"]);
        cmd.args(&argv);
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    fn uid(c: &Value) -> u32 {
        c["securityContext"]["runAsUser"].as_u64().unwrap_or(0) as u32
    }

    /// Runs each init container to completion, in order.
    fn run_init_containers(&self) {
        for c in self.spec["spec"]["initContainers"].as_array().unwrap() {
            let out = self.command(c).output().unwrap();
            assert!(
                out.status.success(),
                "init container {} failed: {}{}\n{c}",
                c["name"],
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Starts the sidecar container.
    fn start_sidecar(&mut self) {
        let c = container(&self.spec, "containers", "istio-proxy").clone();
        let log = self.dir.join("istio-proxy.log");
        let child = Child::spawn(
            &format!("{}:istio-proxy", self.pod.name),
            self.command(&c),
            Some(log),
        )
        .unwrap();
        self.procs.push(child);
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {}\n{}", p.name(), p.log_tail()))
            .collect()
    }
}

impl Drop for PodRun {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.kill();
        }
    }
}

fn workload_app(pod: &Pod, name: &str) -> Child {
    pod.spawn([MESHD_BIN, "workload", "--name", name, "--port", "8080"])
        .unwrap()
}

#[test]
fn injected_pods_run_from_their_spec_and_talk_mtls() {
    let net = PodNetwork::create("kinj", (Ipv4Addr::new(10, 79, 0, 0), 24)).unwrap();
    let node = net.node();
    node.in_netns(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario(&net))
    })
    .unwrap();
}

async fn scenario(net: &PodNetwork) {
    let gateway = net.gateway();
    let server = ApiServer::start();
    let client = server.client().await;
    create(&client, namespace(MESHD_NS, json!({}))).await;
    create(
        &client,
        namespace("shop", json!({"istio-injection": "enabled"})),
    )
    .await;
    create(&client, namespace("plain", json!({}))).await;
    for sa in ["frontend", "backend"] {
        create(&client, service_account("shop", sa)).await;
    }
    create(&client, service_account("plain", "default")).await;
    for crd in istio_crds() {
        create(&client, crd).await;
    }
    create(
        &client,
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
               "metadata": {"name": "default", "namespace": "shop"},
               "spec": {"mtls": {"mode": "STRICT"}}}),
    )
    .await;
    // A BOOTSTRAP patch for backend only: its init container asks meshd for it with the pod's
    // token before Envoy starts.
    create(
        &client,
        json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
               "metadata": {"name": "backend-runtime", "namespace": "shop"},
               "spec": {"workloadSelector": {"labels": {"app": "backend"}},
                        "configPatches": [{"applyTo": "BOOTSTRAP", "patch": {
                            "operation": "MERGE",
                            "value": {"layered_runtime": {"layers": [
                                {"name": "patched", "static_layer": {"meshd.kube.patched": "yes"}},
                                {"name": "admin", "admin_layer": {}}]}}}}]}}),
    )
    .await;
    let mut cluster_ips = Vec::new();
    for name in ["frontend", "backend"] {
        let svc = create(
            &client,
            service("shop", name, Some(json!({"app": name})), 80, json!(8080)),
        )
        .await;
        let ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        cluster_ips.push((format!("{name}.shop.svc.cluster.local"), ip));
    }
    net.set_hosts(&cluster_ips).unwrap();

    // meshd in Kubernetes mode, its TLS xDS port reachable from the pods at the bridge address.
    let state = tempfile::tempdir().unwrap();
    let tls_port = free_port();
    let mut cfg = meshd::testing::config(state.path(), None);
    cfg.bind = [0, 0, 0, 0].into();
    cfg.xds_tls_port = tls_port;
    cfg.xds_tls_names.push(gateway.to_string());
    cfg.kubernetes = Some(meshd::kube::KubeConfig {
        webhook_config: Some(WEBHOOK_CONFIG.into()),
        resync: Duration::from_secs(1),
        ..kube_config(&server)
    });
    let mut inject = meshd::webhook::load_inject_config(None, MESHD_NS, "meshd", tls_port).unwrap();
    inject.xds_address = format!("{gateway}:{tls_port}");
    cfg.webhook = Some(meshd::webhook::WebhookConfig::new(
        0, "meshd", MESHD_NS, inject,
    ));
    let app = meshd::app::build(cfg).await.expect("meshd starts");
    let webhook_port = app.webhook_addr.unwrap().port();

    // The webhook configuration as an install leaves it: no caBundle. meshd fills it in with
    // the mesh root from its CA Secret.
    create(
        &client,
        webhook_configuration(&format!("https://localhost:{webhook_port}/inject")),
    )
    .await;
    let secret: Secret = Api::namespaced(client.clone(), MESHD_NS)
        .get("meshd-ca")
        .await
        .unwrap();
    let root_pem = String::from_utf8(secret.data.unwrap()["root-cert.pem"].0.clone()).unwrap();
    let all_set = |bundles: &[Option<String>]| {
        bundles.len() == 2
            && bundles
                .iter()
                .all(|b| b.as_deref() == Some(root_pem.as_str()))
    };
    eventually(20, "meshd to set the caBundle", || {
        let client = client.clone();
        async move { all_set(&ca_bundles(&client).await).then_some(()) }
    })
    .await;
    // An upgrade that empties it: restored.
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let clear: json_patch::Patch = serde_json::from_value(json!([
        {"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}
    ]))
    .unwrap();
    api.patch(
        WEBHOOK_CONFIG,
        &PatchParams::default(),
        &Patch::<()>::Json(clear),
    )
    .await
    .unwrap();
    eventually(20, "meshd to restore the caBundle", || {
        let client = client.clone();
        async move { all_set(&ca_bundles(&client).await).then_some(()) }
    })
    .await;

    // Pods through the API: injected in `shop`, not when opted out, not in `plain`.
    let frontend = create(
        &client,
        pod(
            "shop",
            "frontend-1",
            "frontend",
            json!({"app": "frontend"}),
            8080,
        ),
    )
    .await;
    let backend = create(
        &client,
        pod(
            "shop",
            "backend-1",
            "backend",
            json!({"app": "backend"}),
            8080,
        ),
    )
    .await;
    for p in [&frontend, &backend] {
        assert!(injected(p), "not injected: {p}");
        let inits: Vec<&str> = p["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        // Capture first, as Istio orders them.
        assert_eq!(inits, ["meshd-init", "meshd-bootstrap"], "{p}");
        let proxy = container(p, "containers", "istio-proxy");
        assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
        assert_eq!(
            p["metadata"]["annotations"]["prometheus.io/port"], "15090",
            "{p}"
        );
    }
    let opted_out = create(
        &client,
        pod(
            "shop",
            "batch-1",
            "backend",
            json!({"app": "batch", "sidecar.istio.io/inject": "false"}),
            8080,
        ),
    )
    .await;
    assert!(!injected(&opted_out), "{opted_out}");
    assert_eq!(opted_out["spec"]["containers"].as_array().unwrap().len(), 1);
    let elsewhere = create(
        &client,
        pod("plain", "tool-1", "default", json!({"app": "tool"}), 8080),
    )
    .await;
    assert!(!injected(&elsewhere), "{elsewhere}");
    let labelled = create(
        &client,
        pod(
            "plain",
            "tool-2",
            "default",
            json!({"app": "tool", "sidecar.istio.io/inject": "true"}),
            8080,
        ),
    )
    .await;
    assert!(injected(&labelled), "the pod label opts in: {labelled}");

    // What the kubelet would do next: an address, the status, then the containers.
    let ips = [
        ("frontend-1", Ipv4Addr::new(10, 79, 0, 21)),
        ("backend-1", Ipv4Addr::new(10, 79, 0, 22)),
    ];
    for (name, ip) in ips {
        pod_running(&client, "shop", name, &ip.to_string(), true).await;
    }
    let root_cert = root_configmap(&client, "shop", 20).await;
    assert_eq!(root_cert, root_pem);

    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut runs = Vec::new();
    let mut apps = Vec::new();
    for ((name, ip), spec) in ips.iter().zip([frontend, backend]) {
        let pod = net.add_pod(name, *ip).unwrap();
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut run = PodRun::new(pod.clone(), spec.clone(), dir);
        // The volumes: an emptyDir the bootstrap writes, the projected token (a real
        // TokenRequest bound to this pod, as the kubelet mounts it), the root ConfigMap.
        let proxy = run.volume("meshd-envoy", 1337);
        let tokens = run.volume("istio-token", 0);
        let sa = spec["spec"]["serviceAccountName"].as_str().unwrap();
        let uid = spec["metadata"]["uid"].as_str().unwrap();
        let token = token_request(&client, "shop", sa, "istio-ca", Some((name, uid))).await;
        write_file(&tokens.join("istio-token"), &token);
        let roots = run.volume("istiod-ca-cert", 0);
        write_file(&roots.join("root-cert.pem"), &root_cert);
        run.mounts = vec![
            ("meshd-envoy".into(), proxy),
            ("istio-token".into(), tokens),
            ("istiod-ca-cert".into(), roots),
        ];
        tokio::task::block_in_place(|| run.run_init_containers());
        apps.push(workload_app(
            &pod,
            spec["metadata"]["labels"]["app"].as_str().unwrap(),
        ));
        run.start_sidecar();
        runs.push(run);
    }
    for run in &runs {
        let ready = tokio::task::block_in_place(|| {
            podnet::wait_until(Duration::from_secs(30), || {
                matches!(envoy_admin_get(&run.pod, "/ready"), Ok((200, _)))
            })
        });
        assert!(
            ready,
            "Envoy of {} not ready:\n{}",
            run.pod.name,
            run.logs()
        );
    }

    // frontend → backend by Service name: through both sidecars, mTLS, STRICT.
    let (frontend_run, backend_run) = (&runs[0], &runs[1]);
    let url = "http://backend.shop.svc.cluster.local/hello";
    let (status, body) = tokio::task::block_in_place(|| {
        get_until_ok(&frontend_run.pod, url, Duration::from_secs(20))
    });
    assert_eq!(
        status,
        200,
        "{body}\n{}{}",
        frontend_run.logs(),
        backend_run.logs()
    );
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["service"], "backend");
    assert_eq!(
        answer["caller"], "spiffe://cluster.local/ns/shop/sa/frontend",
        "the callee saw the caller's certificate: {answer}"
    );
    // The BOOTSTRAP patch reached backend's Envoy (its runtime), not frontend's.
    let runtime = |run: &PodRun| {
        let (code, body) =
            tokio::task::block_in_place(|| envoy_admin_get(&run.pod, "/runtime")).unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let backend_runtime = runtime(backend_run);
    assert_eq!(
        backend_runtime["entries"]["meshd.kube.patched"]["final_value"], "yes",
        "{backend_runtime}"
    );
    let frontend_runtime = runtime(frontend_run);
    assert!(
        frontend_runtime["entries"]
            .get("meshd.kube.patched")
            .is_none(),
        "{frontend_runtime}"
    );
    // The backend's Envoy holds its own SVID from meshd, and terminated TLS inbound.
    let (_, certs) =
        tokio::task::block_in_place(|| envoy_admin_get(&backend_run.pod, "/certs")).unwrap();
    assert!(
        certs.contains("spiffe://cluster.local/ns/shop/sa/backend"),
        "{certs}"
    );
    // A client without a sidecar, straight at the backend pod: refused under STRICT.
    let outsider = net
        .add_pod("outsider", Ipv4Addr::new(10, 79, 0, 40))
        .unwrap();
    let direct = tokio::task::block_in_place(|| outsider.get("http://10.79.0.22:8080/hello"));
    assert!(
        !matches!(direct, Ok((200, _))),
        "plaintext reached the app under STRICT: {direct:?}"
    );
    // The chart's ingress gateway, run from its rendered pod template, serving HTTPS with a
    // certificate from a Secret (credentialName) and following the Secret when it changes.
    let gateway_run = start_chart_gateway(
        net,
        &client,
        &format!("{gateway}:{tls_port}"),
        &root_pem,
        Ipv4Addr::new(10, 79, 0, 30),
    )
    .await;
    let test_ca_dir = tempfile::tempdir().unwrap();
    let test_ca = meshd_ca::CertificateAuthority::load_or_create(&meshd_ca::CaConfig {
        state_dir: test_ca_dir.path().to_path_buf(),
        trust_domain: "example.com".into(),
        ..Default::default()
    })
    .unwrap();
    let ca_file = work.path().join("shop-ca.pem");
    write_file(&ca_file, &test_ca.root_cert_pem());
    let first = test_ca.server_cert(&["shop.example.com".into()]).unwrap();
    create(
        &client,
        tls_secret(MESHD_NS, "shop-cert", &first.cert_chain_pem, &first.key_pem),
    )
    .await;
    create(
        &client,
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
               "metadata": {"name": "web-gateway", "namespace": "shop"},
               "spec": {"selector": {"istio": "ingressgateway"},
                        "servers": [{"port": {"number": 8443, "name": "https", "protocol": "HTTPS"},
                                     "hosts": ["shop.example.com"],
                                     "tls": {"mode": "SIMPLE", "credentialName": "shop-cert"}}]}}),
    )
    .await;
    create(
        &client,
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"hosts": ["shop.example.com"], "gateways": ["web-gateway"],
                        "http": [{"route": [{"destination": {"host": "backend.shop.svc.cluster.local",
                                                             "port": {"number": 80}}}]}]}}),
    )
    .await;
    let https = |pod: &Pod| {
        pod.run([
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            ca_file.to_str().unwrap(),
            "--resolve",
            "shop.example.com:8443:10.79.0.30",
            "https://shop.example.com:8443/through-gateway",
        ])
        .map_err(|e| format!("{e:#}"))
    };
    let served_cert = |pod: &Pod| -> String {
        pod.run([
            "sh", "-c",
            "openssl s_client -connect 10.79.0.30:8443 -servername shop.example.com </dev/null 2>/dev/null | openssl x509",
        ])
        .unwrap_or_default()
    };
    let body = tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match https(&outsider) {
                Ok(b) => break b,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("HTTPS through the gateway: {e}\n{}", gateway_run.logs())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    });
    let answer: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
    assert_eq!(answer["service"], "backend", "{answer}");
    assert_eq!(
        answer["caller"], "spiffe://cluster.local/ns/meshd-system/sa/istio-ingressgateway",
        "gateway → backend over mesh mTLS: {answer}"
    );
    let pem_body = |pem: &str| -> String {
        pem.lines()
            .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
            .take_while(|l| !l.starts_with("-----END"))
            .collect()
    };
    let served = tokio::task::block_in_place(|| served_cert(&outsider));
    assert_eq!(
        pem_body(&served),
        pem_body(&first.cert_chain_pem),
        "the Secret's certificate"
    );
    // The Secret is replaced (cert-manager renewing it): the gateway serves the new one, no
    // restart.
    let second = test_ca.server_cert(&["shop.example.com".into()]).unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), MESHD_NS);
    secrets
        .replace(
            "shop-cert",
            &Default::default(),
            &serde_json::from_value(tls_secret(
                MESHD_NS,
                "shop-cert",
                &second.cert_chain_pem,
                &second.key_pem,
            ))
            .unwrap(),
        )
        .await
        .unwrap();
    let rotated = tokio::task::block_in_place(|| {
        podnet::wait_until(Duration::from_secs(20), || {
            pem_body(&served_cert(&outsider)) == pem_body(&second.cert_chain_pem)
        })
    });
    assert!(
        rotated,
        "the gateway still serves the old certificate:\n{}",
        gateway_run.logs()
    );
    assert!(https(&outsider).is_ok(), "HTTPS after the rotation");

    // meshd reports both proxies connected with their pods' identities.
    let syncz: Value = reqwest::get(format!("http://{}/debug/syncz", app.admin_addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for sa in ["frontend", "backend"] {
        let id = format!("spiffe://cluster.local/ns/shop/sa/{sa}");
        assert!(
            syncz
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["identity"] == id),
            "{id} not in {syncz}"
        );
    }

    // A Job's way to stop its sidecar on the classic path, as Istio documents it: `POST
    // 127.0.0.1:15020/quitquitquit` answers 200 (so `curl -fsS` succeeds) and Envoy exits 0.
    let mut runs = runs;
    let quitter = &mut runs[0];
    let answer = quitter
        .pod
        .request("POST", "http://127.0.0.1:15020/quitquitquit", &[], Some(""))
        .map(|r| (r.status, r.body));
    assert!(
        matches!(&answer, Ok((200, body)) if body == "OK\n"),
        "{answer:?}\n{}",
        quitter.logs()
    );
    let sidecar = (quitter.procs.iter_mut())
        .find(|p| p.name().ends_with(":istio-proxy"))
        .expect("the sidecar process");
    let mut exit = None;
    tokio::task::block_in_place(|| {
        podnet::wait_until(Duration::from_secs(20), || {
            exit = sidecar.try_wait();
            exit.is_some()
        })
    });
    assert_eq!(
        exit.map(|e| e.code()),
        Some(Some(0)),
        "Envoy after /quitquitquit:\n{}",
        quitter.logs()
    );
    drop(gateway_run);
    drop(runs);
    drop(apps);
    app.shutdown().await.unwrap();
}

fn tls_secret(ns: &str, name: &str, chain: &str, key: &str) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": name, "namespace": ns},
           "data": {"tls.crt": b64(chain), "tls.key": b64(key)}})
}

/// The chart's ingress gateway Deployment (`helm template`), as the Pod its ReplicaSet would
/// create, created through the API and run like the kubelet would.
async fn start_chart_gateway(
    net: &PodNetwork,
    client: &Client,
    xds_address: &str,
    root_pem: &str,
    ip: Ipv4Addr,
) -> PodRun {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/meshd");
    let out = std::process::Command::new(helm())
        .args(["template", "meshd"])
        .arg(&chart)
        .args([
            "--namespace",
            MESHD_NS,
            "--show-only",
            "templates/gateways.yaml",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let deployment: Value = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .find(|v: &Value| {
            v["kind"] == "Deployment" && v["metadata"]["name"] == "istio-ingressgateway"
        })
        .expect("the ingress gateway Deployment");
    let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap()
        .to_string();
    create(client, service_account(MESHD_NS, &sa)).await;
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ingressgateway-1", "namespace": MESHD_NS,
                     "labels": deployment["spec"]["template"]["metadata"]["labels"].clone()},
        "spec": deployment["spec"]["template"]["spec"].clone()});
    // Without kube-proxy the Service name does not route here: meshd's bridge address.
    for c in pod["spec"]["initContainers"].as_array_mut().unwrap() {
        let args = c["args"].as_array_mut().unwrap();
        if let Some(i) = args.iter().position(|a| a == "--xds-address") {
            args[i + 1] = json!(xds_address);
        }
    }
    let pod = create(client, pod).await;
    assert!(!injected(&pod), "gateways are not injected");
    pod_running(client, MESHD_NS, "ingressgateway-1", &ip.to_string(), true).await;
    let cm = root_configmap(client, MESHD_NS, 20).await;
    assert_eq!(cm, root_pem);
    let netns_pod = net.add_pod("ingressgateway-1", ip).unwrap();
    let dir = std::env::temp_dir().join(format!("kinj-gw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut run = PodRun::new(netns_pod, pod.clone(), dir);
    let proxy = run.volume("meshd-envoy", 1337);
    let tokens = run.volume("istio-token", 0);
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let token = token_request(
        client,
        MESHD_NS,
        &sa,
        "istio-ca",
        Some(("ingressgateway-1", uid)),
    )
    .await;
    write_file(&tokens.join("istio-token"), &token);
    let roots = run.volume("istiod-ca-cert", 0);
    write_file(&roots.join("root-cert.pem"), root_pem);
    run.mounts = vec![
        ("meshd-envoy".into(), proxy),
        ("istio-token".into(), tokens),
        ("istiod-ca-cert".into(), roots),
    ];
    tokio::task::block_in_place(|| run.run_init_containers());
    run.start_sidecar();
    let ready = tokio::task::block_in_place(|| {
        podnet::wait_until(Duration::from_secs(30), || {
            matches!(envoy_admin_get(&run.pod, "/ready"), Ok((200, _)))
        })
    });
    assert!(ready, "the ingress gateway is not ready:\n{}", run.logs());
    run
}

/// GET `url` from `pod` until it answers 200 or `timeout` passes; the last answer.
fn get_until_ok(pod: &Pod, url: &str, timeout: Duration) -> (u16, String) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let answer = match pod.get(url) {
            Ok(a) => a,
            Err(e) => (0, format!("{e:#}")),
        };
        if answer.0 == 200 || std::time::Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn write_file(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}
