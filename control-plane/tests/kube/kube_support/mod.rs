//! A real kube-apiserver v1.20.2 (with etcd) per test, started and stopped through
//! `scripts/kube-apiserver.sh`; helpers to create objects and to mint projected tokens.
#![allow(dead_code)]

use base64::Engine as _;
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// meshd's own namespace in these tests.
pub const MESHD_NS: &str = "meshd-system";

/// meshd's Kubernetes mode against `server`: its namespace, short leases (a leadership change in
/// seconds, not the production 15 s) and generous sync and CA deadlines for a busy CI machine.
pub fn kube_config(server: &ApiServer) -> meshd::kube::KubeConfig {
    meshd::kube::KubeConfig {
        namespace: MESHD_NS.into(),
        kubeconfig: Some(server.kubeconfig.clone()),
        lease_duration: std::time::Duration::from_secs(3),
        lease_renew: std::time::Duration::from_millis(500),
        sync_timeout: std::time::Duration::from_secs(30),
        ca_timeout: std::time::Duration::from_secs(30),
        ..meshd::kube::KubeConfig::default()
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kube-apiserver.sh")
}

/// etcd + kube-apiserver on loopback, stopped on drop.
pub struct ApiServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub kubeconfig: PathBuf,
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn random_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    20000 + (h.finish() % 30000) as u16
}

impl ApiServer {
    pub fn start() -> ApiServer {
        let found = Command::new(script())
            .arg("path")
            .output()
            .expect("running scripts/kube-apiserver.sh");
        assert!(
            found.status.success(),
            "kube-apiserver v1.20.2 is not built: run `scripts/kube-apiserver.sh install` \
             (scripts/install-tools.sh does it; ~4 min, cached under ~/.cache/meshd/)"
        );
        let mut last = String::new();
        for _ in 0..5 {
            let port = random_port();
            if !(free(port) && free(port + 1) && free(port + 2)) {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let out = Command::new(script())
                .arg("start")
                .arg(dir.path())
                .arg(port.to_string())
                .output()
                .expect("running scripts/kube-apiserver.sh start");
            if out.status.success() {
                return ApiServer {
                    kubeconfig: dir.path().join("kubeconfig"),
                    dir,
                    port,
                };
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            let _ = Command::new(script()).arg("stop").arg(dir.path()).status();
        }
        panic!("kube-apiserver did not start: {last}");
    }

    pub async fn client(&self) -> Client {
        meshd::kube::client(Some(&self.kubeconfig)).await.unwrap()
    }

    /// The service-account signing key the server was started with.
    pub fn signing_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sa.key")).unwrap()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// Creates any object from its JSON (`apiVersion`, `kind`, `metadata`…).
pub async fn create(client: &Client, obj: Value) -> Value {
    let api_version = obj["apiVersion"].as_str().unwrap().to_string();
    let kind = obj["kind"].as_str().unwrap().to_string();
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.clone()),
    };
    let gvk = kube::api::GroupVersionKind::gvk(&group, &version, &kind);
    let plural = match kind.as_str() {
        "Endpoints" => "endpoints".to_string(),
        "ServiceEntry" => "serviceentries".to_string(),
        "AuthorizationPolicy" => "authorizationpolicies".to_string(),
        k => format!("{}s", k.to_ascii_lowercase()),
    };
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let dynamic: DynamicObject = serde_json::from_value(obj).unwrap();
    // A custom resource right after its CRD: 404 until the CRD is established.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match api.create(&PostParams::default(), &dynamic).await {
            Ok(created) => return serde_json::to_value(created).unwrap(),
            // (and a connection the server closes while it installs the CRD's handlers).
            Err(e)
                if std::time::Instant::now() < deadline
                    && match &e {
                        kube::Error::Api(s) => s.code == 404,
                        kube::Error::Service(_) | kube::Error::HyperError(_) => true,
                        _ => false,
                    } =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("creating {kind}: {e}"),
        }
    }
}

pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

pub fn service_account(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}})
}

/// A pod as a Deployment would make it (no kubelet here: it stays Pending until
/// [`pod_running`] sets its status).
pub fn pod(ns: &str, name: &str, sa: &str, labels: Value, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "serviceAccountName": sa,
            // No token controller without kube-controller-manager: no legacy token to mount.
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "app", "image": "example.invalid/app:1",
                "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}]
            }]
        }
    })
}

/// What the kubelet would report for a started, ready pod (status subresource).
pub async fn pod_running(client: &Client, ns: &str, name: &str, ip: &str, ready: bool) {
    use k8s_openapi::api::core::v1::Pod;
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": "127.0.0.1",
        "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }},
            {"type": "ContainersReady", "status": if ready { "True" } else { "False" }},
        ]
    }});
    api.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&status),
    )
    .await
    .unwrap_or_else(|e| panic!("status of pod {ns}/{name}: {e}"));
}

/// A TokenRequest for `sa`, bound to `pod` (`(name, uid)`) when given, like the kubelet's
/// projected token.
pub async fn token_request(
    client: &Client,
    ns: &str,
    sa: &str,
    audience: &str,
    pod: Option<(&str, &str)>,
) -> String {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    use k8s_openapi::api::core::v1::ServiceAccount;
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_string()],
            expiration_seconds: Some(600),
            bound_object_ref: pod.map(|(name, uid)| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
            }),
        },
        ..Default::default()
    };
    let answer = api
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{sa}: {e}"));
    answer.status.expect("token status").token
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `token` with other `iat`/`nbf`/`exp`, signed again with the server's service-account key:
/// what the kubelet's token would be at another point of its life (the API server cannot tell
/// the difference). TokenRequest's minimum lifetime is 10 minutes; this makes expiry testable.
pub fn retimed(token: &str, key_pem: &str, iat: u64, exp: u64) -> String {
    let mut parts = token.split('.');
    let header = parts.next().unwrap();
    let payload = parts.next().unwrap();
    let mut claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["iat"] = iat.into();
    claims["nbf"] = iat.into();
    claims["exp"] = exp.into();
    let signing_input = format!("{header}.{}", b64(&serde_json::to_vec(&claims).unwrap()));
    let der = pem_body(key_pem);
    let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
        .or_else(|_| ring::signature::RsaKeyPair::from_der(&der))
        .expect("an RSA key");
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{signing_input}.{}", b64(&sig))
}

fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The Istio CRDs exactly as the chart ships them (`deploy/helm/meshd/crds/`).
pub fn istio_crds() -> Vec<Value> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/meshd/crds/istio-crds.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let crds: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect();
    assert_eq!(
        crds.len(),
        meshd_model::schema::CRD_KINDS.len(),
        "{}",
        path.display()
    );
    crds
}

/// Polls `f` every 200 ms until it returns `Some` or `secs` pass.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// helm, as `scripts/check-chart.sh` installs it (or `MESHD_HELM`).
pub fn helm() -> std::path::PathBuf {
    let path = std::env::var_os("MESHD_HELM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/meshd/helm-v32/helm/helm")
        });
    assert!(
        path.exists(),
        "no helm at {}: run scripts/check-chart.sh (it installs helm), or set MESHD_HELM",
        path.display()
    );
    path
}

/// The `istio-ca-root-cert` ConfigMap's `root-cert.pem` in `ns`, once meshd published it.
pub async fn root_configmap(client: &Client, ns: &str, secs: u64) -> String {
    use k8s_openapi::api::core::v1::ConfigMap;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = eventually(secs, &format!("istio-ca-root-cert in {ns}"), || {
        let cms = cms.clone();
        async move { cms.get_opt("istio-ca-root-cert").await.unwrap() }
    })
    .await;
    cm.data
        .and_then(|d| d.get("root-cert.pem").cloned())
        .expect("root-cert.pem in the ConfigMap")
}

/// A Service with one port named `http`; without a selector the caller makes its Endpoints.
pub fn service(ns: &str, name: &str, selector: Option<Value>, port: u16, target: Value) -> Value {
    let mut spec = json!({
        "ports": [{"name": "http", "port": port, "targetPort": target, "protocol": "TCP"}]
    });
    if let Some(s) = selector {
        spec["selector"] = s;
    }
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": spec})
}
