//! Kubernetes mode against a real kube-apiserver v1.20.2 (+ etcd), started per test by
//! `scripts/kube-apiserver.sh` (which `scripts/install-tools.sh` builds once): TokenReview of
//! real projected tokens, the CA Secret under Lease election, and the registry from the API.
//! No kubelet or controllers run: pods get their status through the status subresource, as the
//! kubelet would report it.

use crate::kube_support;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams};
use kube_support::*;
use meshd::app::{self, App};
use meshd::kube::KubeConfig;
use meshd::kube::ca_secret::{self, CaOrigin, CaSecretConfig};
use meshd::kube::token::TokenReviewAuth;
use meshd_xds::resource::CLUSTER;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

async fn start_meshd(server: &ApiServer) -> (App, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let mut cfg = meshd::testing::config(state.path(), None);
    cfg.kubernetes = Some(kube_config(server));
    // As `meshd serve --registry kubernetes` without `--xds-plaintext`.
    cfg.xds_plaintext = false;
    let app = app::build(cfg)
        .await
        .expect("meshd in Kubernetes mode starts");
    (app, state)
}

async fn get_json(url: String) -> Value {
    reqwest::get(&url).await.unwrap().json().await.unwrap()
}

/// An open ADS stream (the proxy stays connected while this lives).
type Open = (
    mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse>,
);

/// Every certificate in the CA Secret (the roots, during a rotation both): what a proxy's
/// bootstrap trusts for the TLS port.
async fn trusted_roots_pem(client: &Client) -> String {
    let secret: Secret = Api::namespaced(client.clone(), MESHD_NS)
        .get("meshd-ca")
        .await
        .unwrap();
    secret
        .data
        .unwrap_or_default()
        .into_values()
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .filter(|pem| pem.contains("BEGIN CERTIFICATE"))
        .collect()
}

/// Opens an ADS stream with `token` over the TLS port (Kubernetes mode serves no plaintext xDS
/// by default) and waits for the first CDS response.
async fn ads_with(
    kube: &Client,
    app: &App,
    pod: &str,
    ns: &str,
    token: &str,
) -> Result<Open, tonic::Status> {
    ads_at(kube, app, pod, ns, "10.44.0.17", token).await
}

/// As `ads_with`, the node id carrying `ip`.
async fn ads_at(
    kube: &Client,
    app: &App,
    pod: &str,
    ns: &str,
    ip: &str,
    token: &str,
) -> Result<Open, tonic::Status> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(trusted_roots_pem(kube).await))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", app.xds_tls_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: format!("sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"),
            ..Default::default()
        }),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut stream = client.stream_aggregated_resources(req).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a response within 10 s")
        .expect("stream open")?;
    assert_eq!(first.type_url, CLUSTER);
    Ok((tx, stream))
}

fn uid(obj: &Value) -> String {
    obj["metadata"]["uid"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_of_projected_tokens_and_reconnect_after_expiry() {
    let server = ApiServer::start();
    let client = server.client().await;
    create(&client, namespace(MESHD_NS, json!({}))).await;
    create(&client, namespace("voicecore-ai", json!({}))).await;
    create(&client, service_account("voicecore-ai", "billing")).await;
    let pod = create(
        &client,
        pod(
            "voicecore-ai",
            "billing-v1",
            "billing",
            json!({"app": "billing"}),
            8080,
        ),
    )
    .await;
    let pod_uid = uid(&pod);
    let bound = Some(("billing-v1", pod_uid.as_str()));
    // The xDS server binds a stream to the pod's IP as the pod watch reports it.
    pod_running(&client, "voicecore-ai", "billing-v1", "10.44.0.17", true).await;

    // A real projected token (TokenRequest, audience istio-ca, bound to the pod).
    let token = token_request(&client, "voicecore-ai", "billing", "istio-ca", bound).await;
    let auth = TokenReviewAuth::new(client.clone(), "istio-ca", "cluster.local");
    let id = auth.review(&token).await.unwrap();
    assert_eq!(
        id.spiffe_id(),
        "spiffe://cluster.local/ns/voicecore-ai/sa/billing"
    );
    assert_eq!(id.workload, "billing-v1");
    assert_eq!(id.namespace, "voicecore-ai");

    // Another audience, or a token not bound to a pod: refused.
    let other = token_request(&client, "voicecore-ai", "billing", "other", bound).await;
    let e = auth.review(&other).await.unwrap_err();
    assert!(e.contains("rejected") || e.contains("audiences"), "{e}");
    let unbound = token_request(&client, "voicecore-ai", "billing", "istio-ca", None).await;
    let e = auth.review(&unbound).await.unwrap_err();
    assert!(e.contains("not bound to a pod"), "{e}");
    assert!(auth.review("not-a-token").await.is_err());

    // Through meshd's xDS port.
    let (app, _state) = start_meshd(&server).await;
    ads_with(&client, &app, "billing-v1", "voicecore-ai", &token)
        .await
        .expect("the projected token opens a stream");
    let e = ads_with(&client, &app, "billing-v2", "voicecore-ai", &token)
        .await
        .expect_err("a node naming another pod is refused");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    // The pod's own token, with a node id carrying another IP than the pod's: refused.
    let e = ads_at(
        &client,
        &app,
        "billing-v1",
        "voicecore-ai",
        "10.44.0.99",
        &token,
    )
    .await
    .expect_err("a node id with another IP than the pod's is refused");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("10.44.0.99"), "{e}");

    // Token rotation: the kubelet rewrites the token file before expiry; a proxy that
    // reconnects after its first token expired presents the current file content. The API
    // server accepts a token up to 60 s past `exp` (go-jose's leeway), so the first token here
    // expired 55 s ago: valid now, refused a few seconds later.
    let key = server.signing_key();
    let now = now_secs();
    let first = retimed(&token, &key, now - 600, now - 55);
    ads_with(&client, &app, "billing-v1", "voicecore-ai", &first)
        .await
        .expect("the first token is still accepted");
    let refused = eventually(20, "the first token to expire", || {
        let (client, app, first) = (&client, &app, first.clone());
        async move {
            ads_with(client, app, "billing-v1", "voicecore-ai", &first)
                .await
                .err()
        }
    })
    .await;
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    assert!(refused.message().contains("expired"), "{refused}");
    let rotated = retimed(&token, &key, now_secs(), now_secs() + 3600);
    let _connected = ads_with(&client, &app, "billing-v1", "voicecore-ai", &rotated)
        .await
        .expect("the rotated token authenticates the same pod, no restart");
    let syncz = get_json(format!("http://{}/debug/syncz", app.admin_addr)).await;
    assert!(
        syncz
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["identity"] == "spiffe://cluster.local/ns/voicecore-ai/sa/billing"),
        "{syncz}"
    );
    app.shutdown().await.unwrap();
}

async fn lease_holder(client: &Client, name: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), MESHD_NS);
    api.get_opt(name)
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
}

async fn root_serial(app: &App) -> String {
    let certs = get_json(format!("http://{}/debug/certs", app.admin_addr)).await;
    certs
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "root")
        .unwrap_or_else(|| panic!("no root in {certs}"))["serial"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_elects_one_ca_writer_and_replicas_share_its_root() {
    let server = ApiServer::start();
    let client = server.client().await;
    create(&client, namespace(MESHD_NS, json!({}))).await;

    // Two replicas race for an empty Secret: exactly one (the leader) writes it.
    let mut cfg = kube_config(&server);
    cfg.leader_lease = "race".into();
    let a = meshd::kube::Kube::connect(&cfg).await.unwrap();
    let b = meshd::kube::Kube::connect(&cfg).await.unwrap();
    let secret = CaSecretConfig {
        namespace: MESHD_NS.into(),
        name: "race-ca".into(),
        timeout: Duration::from_secs(30),
    };
    let ca_cfg = meshd_ca::CaConfig::default();
    let (ra, rb) = tokio::join!(
        ca_secret::load_or_create_ca(a.client().clone(), &secret, &ca_cfg, a.leader()),
        ca_secret::load_or_create_ca(b.client().clone(), &secret, &ca_cfg, b.leader()),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let origins = [ra.origin, rb.origin];
    assert!(
        origins.contains(&CaOrigin::Written) && origins.contains(&CaOrigin::Loaded),
        "{origins:?}"
    );
    assert_eq!(ra.ca.root_cert_pem(), rb.ca.root_cert_pem());
    let writer_leads = if ra.origin == CaOrigin::Written {
        a.leader()
    } else {
        b.leader()
    };
    assert!(*writer_leads.borrow(), "the writer held the lease");
    let other_leads = if ra.origin == CaOrigin::Written {
        b.leader()
    } else {
        a.leader()
    };
    assert!(!*other_leads.borrow(), "one leader at a time");
    let stored: Secret = Api::namespaced(client.clone(), MESHD_NS)
        .get("race-ca")
        .await
        .unwrap();
    let data = stored.data.unwrap();
    assert_eq!(
        String::from_utf8(data["root-cert.pem"].0.clone()).unwrap(),
        ra.ca.root_cert_pem()
    );
    assert!(data.contains_key("root-key.pem"));
    // Dropped replicas stop electing (and give the lease up).
    drop(a);
    drop(b);

    // Two whole meshd processes' worth (in-process): the same root, one lease holder; the
    // root goes to namespaces with injection; when the leader stops, the other takes over.
    create(
        &client,
        namespace("shop", json!({"istio-injection": "enabled"})),
    )
    .await;
    let ((m1, _s1), (m2, _s2)) = tokio::join!(start_meshd(&server), start_meshd(&server));
    assert_eq!(root_serial(&m1).await, root_serial(&m2).await);
    let holder = lease_holder(&client, "meshd-leader")
        .await
        .expect("a leader");
    let secret: Secret = Api::namespaced(client.clone(), MESHD_NS)
        .get("meshd-ca")
        .await
        .unwrap();
    let root_pem = String::from_utf8(secret.data.unwrap()["root-cert.pem"].0.clone()).unwrap();
    let cm = root_configmap(&client, "shop", 20).await;
    assert_eq!(cm, root_pem);
    // In meshd's own namespace too (the chart's gateways mount it there)…
    let own = root_configmap(&client, MESHD_NS, 20).await;
    assert_eq!(own, root_pem);
    // …but not in namespaces without injection.
    create(&client, namespace("plain", json!({}))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let plain_cms: Api<ConfigMap> = Api::namespaced(client.clone(), "plain");
    assert!(
        plain_cms
            .get_opt("istio-ca-root-cert")
            .await
            .unwrap()
            .is_none()
    );

    // A restarted (or third) replica loads the same CA from the Secret.
    let (m3, _s3) = start_meshd(&server).await;
    assert_eq!(root_serial(&m3).await, root_serial(&m2).await);

    // Replicas stop one by one until the leader is among them: it releases the lease, another
    // takes over and keeps publishing the root.
    let mut running = vec![m1, m2, m3];
    loop {
        running.remove(0).shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if lease_holder(&client, "meshd-leader").await.as_ref() != Some(&holder) {
            break;
        }
        assert!(running.len() > 1, "the leader never stopped");
    }
    let new_holder = eventually(20, "a new lease holder", || {
        let (client, holder) = (client.clone(), holder.clone());
        async move {
            lease_holder(&client, "meshd-leader")
                .await
                .filter(|h| *h != holder)
        }
    })
    .await;
    assert_ne!(new_holder, holder);
    create(
        &client,
        namespace("late", json!({"istio-injection": "enabled"})),
    )
    .await;
    let cm = root_configmap(&client, "late", 30).await;
    assert_eq!(cm, root_pem);
    for m in running {
        m.shutdown().await.unwrap();
    }
}

fn find_service<'a>(registry: &'a Value, host: &str) -> Option<&'a Value> {
    registry["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["hostname"] == host)
}

fn addresses(svc: &Value) -> Vec<String> {
    let mut a: Vec<String> = svc["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect();
    a.sort();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_serves_services_and_pods_from_the_api() {
    let server = ApiServer::start();
    let client = server.client().await;
    create(&client, namespace(MESHD_NS, json!({}))).await;
    create(
        &client,
        namespace("shop", json!({"istio-injection": "enabled"})),
    )
    .await;
    create(&client, service_account("shop", "web")).await;
    for crd in istio_crds() {
        create(&client, crd).await;
    }
    let web = create(
        &client,
        service(
            "shop",
            "web",
            Some(json!({"app": "web"})),
            80,
            json!("http"),
        ),
    )
    .await;
    let cluster_ip = web["spec"]["clusterIP"].as_str().unwrap().to_string();
    create(
        &client,
        pod(
            "shop",
            "web-1",
            "web",
            json!({"app": "web", "version": "v1"}),
            8080,
        ),
    )
    .await;
    create(
        &client,
        pod(
            "shop",
            "web-2",
            "web",
            json!({"app": "web", "version": "v2"}),
            8080,
        ),
    )
    .await;
    pod_running(&client, "shop", "web-1", "10.44.0.21", true).await;
    pod_running(&client, "shop", "web-2", "10.44.0.22", false).await;
    // A Service without selector and its hand-made core Endpoints (1.20 has no
    // EndpointSlice v1, so meshd reads Endpoints).
    create(&client, service("shop", "legacy", None, 8080, json!(8080))).await;
    create(
        &client,
        json!({"apiVersion": "v1", "kind": "Endpoints",
               "metadata": {"name": "legacy", "namespace": "shop"},
               "subsets": [{"addresses": [{"ip": "192.0.2.10"}, {"ip": "192.0.2.11"}],
                            "notReadyAddresses": [{"ip": "192.0.2.12"}],
                            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}),
    )
    .await;
    create(
        &client,
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
               "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"host": "web", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                   {"name": "v2", "labels": {"version": "v2"}}]}}),
    )
    .await;

    // meshd starts on what exists (the initial lists)…
    let (app, _state) = start_meshd(&server).await;
    let registryz = format!("http://{}/debug/registryz", app.admin_addr);
    let configz = format!("http://{}/debug/configz", app.admin_addr);
    let reg = get_json(registryz.clone()).await;
    let svc = find_service(&reg, "web.shop.svc.cluster.local").expect("web is served");
    assert_eq!(svc["addresses"], json!([cluster_ip]));
    assert_eq!(svc["ports"][0]["protocol"], "Http");
    assert_eq!(addresses(svc), ["10.44.0.21"], "only the ready pod");
    assert_eq!(svc["endpoints"][0]["service_account"], "web");
    assert_eq!(svc["endpoints"][0]["labels"]["version"], "v1");
    assert_eq!(
        svc["endpoints"][0]["ports"]["http"], 8080,
        "named targetPort"
    );
    let legacy = find_service(&reg, "legacy.shop.svc.cluster.local").unwrap();
    assert_eq!(addresses(legacy), ["192.0.2.10", "192.0.2.11"]);
    let workloads: Vec<&str> = reg["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(workloads, ["web-1", "web-2"]);

    // …and follows the watch: readiness, new config (valid and not), deletions.
    pod_running(&client, "shop", "web-2", "10.44.0.22", true).await;
    create(
        &client,
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"hosts": ["web"], "http": [{"route": [
                   {"destination": {"host": "web", "subset": "v1"}, "weight": 90},
                   {"destination": {"host": "web", "subset": "v2"}, "weight": 10}]}]}}),
    )
    .await;
    create(
        &client,
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "broken", "namespace": "shop"},
               "spec": {"hosts": ["legacy"], "http": [{"frobnicate": true,
                        "route": [{"destination": {"host": "legacy"}}]}]}}),
    )
    .await;
    eventually(20, "web-2 ready in the registry", || {
        let url = registryz.clone();
        async move {
            let reg = get_json(url).await;
            let svc = find_service(&reg, "web.shop.svc.cluster.local")?.clone();
            (addresses(&svc) == ["10.44.0.21", "10.44.0.22"]).then_some(())
        }
    })
    .await;
    let cfg = eventually(20, "both VirtualServices judged", || {
        let url = configz.clone();
        async move {
            let cfg = get_json(url).await;
            let accepted = cfg["accepted"].as_array()?;
            let rejected = cfg["rejected"].as_array()?;
            (accepted
                .iter()
                .any(|o| o["name"] == "web" && o["kind"] == "VirtualService")
                && rejected.iter().any(|r| r["name"] == "broken"))
            .then_some(cfg)
        }
    })
    .await;
    let broken = cfg["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "broken")
        .unwrap();
    assert!(
        broken["reason"].as_str().unwrap().contains("frobnicate"),
        "{broken}"
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    pods.delete("web-1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually(20, "web-1 gone from the registry", || {
        let url = registryz.clone();
        async move {
            let reg = get_json(url).await;
            let svc = find_service(&reg, "web.shop.svc.cluster.local")?.clone();
            let gone = reg["workloads"]
                .as_array()?
                .iter()
                .all(|w| w["name"] != "web-1");
            (addresses(&svc) == ["10.44.0.22"] && gone).then_some(())
        }
    })
    .await;
    // The root certificate is in the injected namespace.
    let cm = root_configmap(&client, "shop", 20).await;
    assert!(cm.contains("BEGIN CERTIFICATE"));
    app.shutdown().await.unwrap();
}

fn run_helm(server: &ApiServer, args: &[&str]) -> String {
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/meshd");
    let out = std::process::Command::new(helm())
        .args(args)
        .arg(&chart)
        .args(["--namespace", MESHD_NS, "--kubeconfig"])
        .arg(&server.kubeconfig)
        .output()
        .expect("running helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helm {args:?} failed:\n{text}");
    text
}

async fn get_dynamic(
    client: &Client,
    api_version: &str,
    kind: &str,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> Option<Value> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, plural);
    let api: Api<kube::api::DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("get {api_version} {kind} {name}: {e}"))
        .map(|o| serde_json::to_value(o).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_of_the_chart_and_the_voicecore_values() {
    let server = ApiServer::start();
    let client = server.client().await;

    // The README's command, on an empty cluster: CRDs first (crds/), then everything that
    // uses them in the same release.
    let voicecore_values = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/helm/meshd/values-voicecore.yaml"
    );
    run_helm(
        &server,
        &[
            "install",
            "meshd",
            "--create-namespace",
            "-f",
            voicecore_values,
        ],
    );
    let deployment = get_dynamic(
        &client,
        "apps/v1",
        "Deployment",
        "deployments",
        Some(MESHD_NS),
        "meshd",
    )
    .await
    .expect("the meshd Deployment");
    // The replica count is the HPA's (2–5), as in Istio's chart: a count in the Deployment
    // would fight it on every upgrade.
    let meshd = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(meshd["resources"]["requests"]["memory"], "2Gi");
    assert_eq!(meshd["resources"]["limits"]["cpu"], "2");
    // 1.20 serves neither autoscaling/v2 nor policy/v1: the chart picked what it serves.
    let hpa = get_dynamic(
        &client,
        "autoscaling/v2beta2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        Some(MESHD_NS),
        "meshd",
    )
    .await
    .expect("the HPA as autoscaling/v2beta2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "meshd");
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["maxReplicas"], 5);
    get_dynamic(
        &client,
        "policy/v1beta1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        Some(MESHD_NS),
        "meshd",
    )
    .await
    .expect("the PDB as policy/v1beta1");
    let service = get_dynamic(
        &client,
        "v1",
        "Service",
        "services",
        Some(MESHD_NS),
        "meshd",
    )
    .await
    .expect("the meshd Service");
    let mut ports: Vec<i64> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    ports.sort();
    // No plaintext xDS (15010) unless `xdsPlaintext.enabled`: keys only over TLS.
    assert_eq!(ports, [15012, 15014, 15017]);
    let webhook = get_dynamic(
        &client,
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        None,
        "meshd-sidecar-injector-meshd-system",
    )
    .await
    .expect("the webhook configuration, under the name meshd keeps current");
    assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Fail");
    assert_eq!(webhook["webhooks"][0]["sideEffects"], "None");
    // Istio config validation: only Istio's API groups, and a meshd outage does not block
    // writing them (the watches check every object again).
    let validator = get_dynamic(
        &client,
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        None,
        "meshd-validator-meshd-system",
    )
    .await
    .expect("the validating webhook configuration, under the name meshd keeps current");
    let v = &validator["webhooks"][0];
    assert_eq!(v["failurePolicy"], "Ignore");
    assert_eq!(v["clientConfig"]["service"]["path"], "/validate");
    assert_eq!(
        v["rules"][0]["apiGroups"],
        json!([
            "networking.istio.io",
            "security.istio.io",
            "telemetry.istio.io"
        ])
    );
    for crd in [
        "virtualservices.networking.istio.io",
        "authorizationpolicies.security.istio.io",
    ] {
        get_dynamic(
            &client,
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            None,
            crd,
        )
        .await
        .unwrap_or_else(|| panic!("CRD {crd}"));
    }
    for gw in ["istio-ingressgateway", "istio-egressgateway"] {
        get_dynamic(
            &client,
            "apps/v1",
            "Deployment",
            "deployments",
            Some(MESHD_NS),
            gw,
        )
        .await
        .unwrap_or_else(|| panic!("the {gw} Deployment"));
    }
    // No monitoring.coreos.com API here: no PrometheusRule rendered, install still fine.
    let ingress = get_dynamic(
        &client,
        "v1",
        "Service",
        "services",
        Some(MESHD_NS),
        "istio-ingressgateway",
    )
    .await
    .expect("the ingress gateway Service");
    assert_eq!(ingress["spec"]["type"], "LoadBalancer");

    // The VoiceCore values: the namespace with injection, the eight services and their Istio
    // policies.
    let ns = get_dynamic(
        &client,
        "v1",
        "Namespace",
        "namespaces",
        None,
        "voicecore-ai",
    )
    .await
    .expect("the voicecore namespace");
    assert_eq!(ns["metadata"]["labels"]["istio-injection"], "enabled");
    for name in [
        "gateway",
        "tenant-service",
        "call-service",
        "ai-service",
        "crm-service",
        "analytics-service",
        "integration-service",
        "billing-service",
    ] {
        get_dynamic(
            &client,
            "apps/v1",
            "Deployment",
            "deployments",
            Some("voicecore-ai"),
            name,
        )
        .await
        .unwrap_or_else(|| panic!("Deployment voicecore-ai/{name}"));
        get_dynamic(
            &client,
            "v1",
            "Service",
            "services",
            Some("voicecore-ai"),
            name,
        )
        .await
        .unwrap_or_else(|| panic!("Service voicecore-ai/{name}"));
    }
    let policies = kube::api::ListParams::default();
    let gvk = kube::api::GroupVersionKind::gvk("networking.istio.io", "v1", "DestinationRule");
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, "destinationrules");
    let drs: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), "voicecore-ai", &ar);
    let drs = drs.list(&policies).await.unwrap();
    assert_eq!(drs.items.len(), 8, "one DestinationRule per service");

    // The admin API's off-host callers, against the chart's ClusterRoles: `<release>-admin`
    // may read and act, `<release>-debug-viewer` only read, anyone else nothing.
    admin_api_callers_by_the_charts_roles(&client).await;

    // Back to the defaults, then uninstalled: the CRDs (and so users' Istio objects) stay.
    run_helm(&server, &["upgrade", "meshd", "--reset-values"]);
    assert!(
        get_dynamic(
            &client,
            "apps/v1",
            "Deployment",
            "deployments",
            Some("voicecore-ai"),
            "gateway"
        )
        .await
        .is_none(),
        "the VoiceCore Deployments went with the values"
    );
    let out = std::process::Command::new(helm())
        .args([
            "uninstall",
            "meshd",
            "--namespace",
            MESHD_NS,
            "--kubeconfig",
        ])
        .arg(&server.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        get_dynamic(
            &client,
            "apps/v1",
            "Deployment",
            "deployments",
            Some(MESHD_NS),
            "meshd"
        )
        .await
        .is_none()
    );
    get_dynamic(
        &client,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        None,
        "destinationrules.networking.istio.io",
    )
    .await
    .expect("CRDs outlive the release");
}

/// Reads responses until one of `type_url` whose `ROOTCA` secret holds `roots` certificates;
/// ACKs everything on the way.
async fn await_root_bundle(open: &mut Open, roots: usize) {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    use prost::Message as _;
    let (tx, stream) = open;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("a push within 60 s")
            .expect("stream open")
            .expect("no error");
        tx.send(DiscoveryRequest {
            type_url: r.type_url.clone(),
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            resource_names: if r.type_url == meshd_xds::resource::SECRET {
                vec!["ROOTCA".into()]
            } else {
                Vec::new()
            },
            ..Default::default()
        })
        .await
        .unwrap();
        if r.type_url != meshd_xds::resource::SECRET {
            continue;
        }
        for any in &r.resources {
            let s = Secret::decode(any.value.as_slice()).unwrap();
            if s.name != "ROOTCA" {
                continue;
            }
            let Some(secret::Type::ValidationContext(v)) = s.r#type else {
                continue;
            };
            let pem = match v.trusted_ca.and_then(|d| d.specifier) {
                Some(
                    envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(
                        b,
                    ),
                ) => String::from_utf8(b).unwrap(),
                _ => continue,
            };
            if pem.matches("BEGIN CERTIFICATE").count() == roots {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_is_driven_by_the_leader_and_followed_by_every_replica() {
    let server = ApiServer::start();
    let client = server.client().await;
    create(&client, namespace(MESHD_NS, json!({}))).await;
    create(&client, namespace("shop", json!({}))).await;
    create(&client, service_account("shop", "web")).await;
    let pod = create(
        &client,
        pod("shop", "web-1", "web", json!({"app": "web"}), 8080),
    )
    .await;
    pod_running(&client, "shop", "web-1", "10.44.0.17", true).await;
    let pod_uid = uid(&pod);
    let token = token_request(
        &client,
        "shop",
        "web",
        "istio-ca",
        Some(("web-1", &pod_uid)),
    )
    .await;
    let start = || async {
        let state = tempfile::tempdir().unwrap();
        let mut cfg = meshd::testing::config(state.path(), None);
        cfg.kubernetes = Some(KubeConfig {
            resync: Duration::from_secs(1),
            ..kube_config(&server)
        });
        (app::build(cfg).await.expect("meshd starts"), state)
    };
    let ((a, _sa), (b, _sb)) = tokio::join!(start(), start());
    let old_root = root_serial(&a).await;
    assert_eq!(old_root, root_serial(&b).await);
    let http = reqwest::Client::new();
    let rotate = |app: &App| {
        http.post(format!("http://{}/debug/ca/rotate-root", app.admin_addr))
            .send()
    };
    // Only the lease holder may start it; the other says where to go.
    let (ra, rb) = (rotate(&a).await.unwrap(), rotate(&b).await.unwrap());
    let mut codes = [ra.status().as_u16(), rb.status().as_u16()];
    codes.sort();
    assert_eq!(
        codes,
        [202, 409],
        "one leader starts it, the follower refuses"
    );
    let (leader, follower) = if ra.status() == 202 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let refused: Value = if ra.status() == 409 {
        ra.json().await.unwrap()
    } else {
        rb.json().await.unwrap()
    };
    assert!(
        refused["error"].as_str().unwrap().contains("lease"),
        "{refused}"
    );

    // A proxy of the follower gets the two-root bundle (AddRoot), then the new root alone,
    // as the follower reloads each phase the leader writes to the Secret.
    let mut open = ads_with(&client, follower, "web-1", "shop", &token)
        .await
        .expect("the projected token opens a stream on the follower");
    open.0
        .send(DiscoveryRequest {
            type_url: meshd_xds::resource::SECRET.into(),
            resource_names: vec!["ROOTCA".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    await_root_bundle(&mut open, 2).await;
    await_root_bundle(&mut open, 1).await;
    let new_root = eventually(60, "both replicas on the new root", || {
        let (leader, follower, old) = (leader, follower, old_root.clone());
        async move {
            let l = root_serial(leader).await;
            let f = root_serial(follower).await;
            (l != old && l == f).then_some(l)
        }
    })
    .await;
    // The leader saved the finished state: a restart or a new replica loads the new root.
    eventually(20, "the finished rotation in the Secret", || {
        let client = client.clone();
        async move {
            let secret: Secret = Api::namespaced(client, MESHD_NS)
                .get("meshd-ca")
                .await
                .unwrap();
            let data = secret.data.unwrap();
            (!data.contains_key("root-rotation.json") && !data.contains_key("root-next-key.pem"))
                .then_some(())
        }
    })
    .await;
    let (c, _sc) = start().await;
    assert_eq!(
        root_serial(&c).await,
        new_root,
        "a new replica loads the new root"
    );
    c.shutdown().await.unwrap();
    let status = get_json(format!("http://{}/debug/ca/rotate-root", leader.admin_addr)).await;
    assert_eq!(status["state"], "idle", "{status}");
    assert_eq!(
        status["last_rotation"]["new_root_serial"], new_root,
        "{status}"
    );
    drop(open);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Subscribes `open` to its SDS `default` (certificate and key) and `ROOTCA`, and returns the
/// first Secret response (a new subscription is always answered, even with nothing).
async fn first_secrets(open: &mut Open) -> Vec<envoy_types::pb::google::protobuf::Any> {
    let (tx, stream) = open;
    tx.send(DiscoveryRequest {
        type_url: meshd_xds::resource::SECRET.into(),
        resource_names: vec!["default".into(), "ROOTCA".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    loop {
        let r = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("a response within 30 s")
            .expect("stream open")
            .expect("no error");
        if r.type_url == meshd_xds::resource::SECRET {
            return r.resources;
        }
    }
}

fn carries_private_key(resources: &[envoy_types::pb::google::protobuf::Any]) -> bool {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    use prost::Message as _;
    resources.iter().any(|any| {
        matches!(
            Secret::decode(any.value.as_slice()).map(|s| s.r#type),
            Ok(Some(secret::Type::TlsCertificate(c))) if c.private_key.is_some()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_xds_is_off_by_default_and_never_serves_keys() {
    let server = ApiServer::start();
    let client = server.client().await;
    create(&client, namespace(MESHD_NS, json!({}))).await;
    create(&client, namespace("shop", json!({}))).await;
    create(&client, service_account("shop", "web")).await;
    let pod = create(
        &client,
        pod("shop", "web-1", "web", json!({"app": "web"}), 8080),
    )
    .await;
    // Running at the address its node id names: a stream binds only to a running Pod.
    pod_running(&client, "shop", "web-1", "10.44.0.17", true).await;
    let pod_uid = uid(&pod);
    let token = token_request(
        &client,
        "shop",
        "web",
        "istio-ca",
        Some(("web-1", &pod_uid)),
    )
    .await;

    // By default nothing listens on the plaintext port.
    let (app, _state) = start_meshd(&server).await;
    assert_eq!(app.xds_addr, None, "no plaintext xDS unless asked for");
    // Over TLS the pod gets its certificate and key.
    let mut tls = ads_with(&client, &app, "web-1", "shop", &token)
        .await
        .expect("the projected token opens a TLS stream");
    let secrets = first_secrets(&mut tls).await;
    assert!(carries_private_key(&secrets), "{secrets:?}");
    drop(tls);
    app.shutdown().await.unwrap();

    // Asked for, the plaintext port serves config but never a secret.
    let state = tempfile::tempdir().unwrap();
    let mut cfg = meshd::testing::config(state.path(), None);
    cfg.kubernetes = Some(kube_config(&server));
    cfg.xds_plaintext = true;
    let app = app::build(cfg).await.expect("meshd starts");
    let addr = app.xds_addr.expect("--xds-plaintext binds the port");
    let mut ads = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "sidecar~10.44.0.17~web-1.shop~shop.svc.cluster.local".into(),
            ..Default::default()
        }),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let stream = ads
        .stream_aggregated_resources(req)
        .await
        .expect("the plaintext port authenticates the pod")
        .into_inner();
    let mut plain: Open = (tx, stream);
    let secrets = first_secrets(&mut plain).await;
    assert!(
        secrets.is_empty(),
        "no secret over plaintext in Kubernetes mode: {secrets:?}"
    );
    drop(plain);
    app.shutdown().await.unwrap();
}

/// TokenReview + SubjectAccessReview of admin API callers, with the chart's ClusterRoles bound
/// as an operator would (RoleBindings in meshd's namespace), decided for an off-host peer.
async fn admin_api_callers_by_the_charts_roles(client: &Client) {
    use axum::http::{HeaderMap, Method, StatusCode};
    use meshd::admin::access::{AuthOutcome, CallerCheck, Decision, check};
    use meshd::kube::admin_auth::AdminAuth;
    for (sa, role) in [
        ("ops", Some("meshd-admin")),
        ("viewer", Some("meshd-debug-viewer")),
        ("nobody", None),
    ] {
        create(client, service_account(MESHD_NS, sa)).await;
        if let Some(role) = role {
            create(
                client,
                json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": format!("{sa}-{role}"), "namespace": MESHD_NS},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": MESHD_NS}],
                }),
            )
            .await;
        }
    }
    // Tokens as `kubectl create token` makes them (the API server's own audience).
    let audience = "https://kubernetes.default.svc";
    let token = |sa: &'static str| token_request(client, MESHD_NS, sa, audience, None);
    let (ops, viewer, nobody) = (
        token("ops").await,
        token("viewer").await,
        token("nobody").await,
    );
    let auth = AdminAuth::new(client.clone(), MESHD_NS);
    let off_host = Some(std::net::IpAddr::from([10, 44, 0, 9]));
    let decide = |token: String, method: Method, path: &'static str| {
        let auth = &auth;
        async move {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
            check(
                Some(auth as &dyn CallerCheck),
                off_host,
                &method,
                path,
                &headers,
            )
            .await
        }
    };
    let status = |d: Decision| match d {
        Decision::Allow => StatusCode::OK,
        Decision::Deny { status, .. } => status,
    };
    let rotate = "/debug/ca/rotate-root";
    let table = [
        (&ops, Method::POST, rotate, StatusCode::OK),
        (&ops, Method::GET, "/debug/syncz", StatusCode::OK),
        (&viewer, Method::GET, "/debug/syncz", StatusCode::OK),
        (&viewer, Method::POST, rotate, StatusCode::FORBIDDEN),
        (&nobody, Method::GET, "/debug/syncz", StatusCode::FORBIDDEN),
        (&nobody, Method::POST, rotate, StatusCode::FORBIDDEN),
    ];
    for (token, method, path, want) in table {
        let got = decide(token.clone(), method.clone(), path).await;
        assert_eq!(status(got.clone()), want, "{method} {path}: {got:?}");
    }
    let Decision::Deny { reason, .. } = decide(viewer.clone(), Method::POST, rotate).await else {
        unreachable!("checked above");
    };
    assert!(
        reason.contains("system:serviceaccount:meshd-system:viewer")
            && reason.contains("create debug.meshd.io `ca/rotate-root`"),
        "{reason}"
    );
    // A token the API server does not know: not authenticated.
    assert_eq!(
        status(decide("not-a-token".into(), Method::GET, "/debug/syncz").await),
        StatusCode::UNAUTHORIZED
    );
    assert!(matches!(
        auth.authorize("not-a-token", "get", "syncz").await,
        AuthOutcome::Unauthenticated(_)
    ));
}
