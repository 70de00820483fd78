//! What the 1.20 API server of `kube_apiserver.rs` cannot show: a server that serves
//! discovery.k8s.io/v1 EndpointSlices. A small fake API server speaking the real JSON
//! (discovery, list, watch with ADDED/MODIFIED/ERROR events) drives `kube::watch::KubeSource`:
//! endpoints from slices joined with pods, watch updates, a relist after `410 Gone` removing
//! what vanished meanwhile, and no publish for changes that change nothing.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meshd::kube::index::IndexOptions;
use meshd::kube::watch::{EndpointsApi, KubeOutputs, KubeSource};
use meshd::reg_events::{RegEvent, RegEvents};
use meshd_model::MeshConfig;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

/// Collections the fake serves, by path.
const SERVICES: &str = "/api/v1/services";
const PODS: &str = "/api/v1/pods";
const NAMESPACES: &str = "/api/v1/namespaces";
const SECRETS: &str = "/api/v1/secrets";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";

struct Fake {
    rv: AtomicU64,
    objects: Mutex<BTreeMap<&'static str, Vec<Value>>>,
    /// (collection path, watch event line)
    events: broadcast::Sender<(String, Value)>,
    lists: Mutex<BTreeMap<String, u32>>,
}

fn kind_of(path: &str) -> (&'static str, &'static str) {
    match path {
        SERVICES => ("v1", "Service"),
        PODS => ("v1", "Pod"),
        NAMESPACES => ("v1", "Namespace"),
        SECRETS => ("v1", "Secret"),
        SLICES => ("discovery.k8s.io/v1", "EndpointSlice"),
        _ => unreachable!(),
    }
}

impl Fake {
    fn next_rv(&self) -> String {
        (self.rv.fetch_add(1, Ordering::SeqCst) + 1).to_string()
    }

    fn stamp(&self, mut obj: Value) -> Value {
        obj["metadata"]["resourceVersion"] = self.next_rv().into();
        obj
    }

    fn put(&self, path: &'static str, obj: Value) {
        let obj = self.stamp(obj);
        let mut all = self.objects.lock().unwrap();
        let list = all.entry(path).or_default();
        let name = obj["metadata"]["name"].clone();
        let kind = match list.iter().position(|o| o["metadata"]["name"] == name) {
            Some(i) => {
                list[i] = obj.clone();
                "MODIFIED"
            }
            None => {
                list.push(obj.clone());
                "ADDED"
            }
        };
        let _ = self
            .events
            .send((path.to_string(), json!({"type": kind, "object": obj})));
    }

    /// Changes the stored set without telling the watchers (what a watch gap looks like).
    fn remove_silently(&self, path: &'static str, name: &str) {
        self.next_rv();
        let mut all = self.objects.lock().unwrap();
        all.entry(path)
            .or_default()
            .retain(|o| o["metadata"]["name"] != name);
    }

    /// Ends every watch of `path` with `410 Gone`: clients must relist.
    fn expire(&self, path: &str) {
        let status = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410}});
        let _ = self.events.send((path.to_string(), status));
    }

    fn list_count(&self, path: &str) -> u32 {
        self.lists.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn not_found(path: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [("content-type", "application/json")],
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("the server could not find the requested resource ({path})"),
               "reason": "NotFound", "details": {}, "code": 404})
        .to_string(),
    )
        .into_response()
}

async fn handle(State(fake): State<Arc<Fake>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let watching = req.uri().query().unwrap_or("").contains("watch=true");
    if path == "/apis/discovery.k8s.io/v1" {
        return axum::Json(json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "discovery.k8s.io/v1",
            "resources": [{"name": "endpointslices", "singularName": "", "namespaced": true,
                           "kind": "EndpointSlice",
                           "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}]
        }))
        .into_response();
    }
    let known = [SERVICES, PODS, NAMESPACES, SECRETS, SLICES];
    let Some(collection) = known.into_iter().find(|p| *p == path) else {
        // The Istio CRDs are not installed here.
        return not_found(&path);
    };
    if watching {
        let events = BroadcastStream::new(fake.events.subscribe()).filter_map(move |e| match e {
            Ok((p, line)) if p == collection => {
                Some(Ok::<_, std::io::Error>(Bytes::from(format!("{line}\n"))))
            }
            _ => None,
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(events))
            .unwrap();
    }
    *fake.lists.lock().unwrap().entry(path.clone()).or_default() += 1;
    let (api_version, kind) = kind_of(collection);
    let items = fake
        .objects
        .lock()
        .unwrap()
        .get(collection)
        .cloned()
        .unwrap_or_default();
    axum::Json(json!({
        "kind": format!("{kind}List"), "apiVersion": api_version,
        "metadata": {"resourceVersion": fake.rv.load(Ordering::SeqCst).to_string()},
        "items": items,
    }))
    .into_response()
}

fn pod(name: &str, ip: &str, version: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                     "labels": {"app": "web", "version": version}},
        "spec": {"serviceAccountName": "web",
                 "containers": [{"name": "app", "image": "x",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

fn slice(ready_22: bool, with_21: bool) -> Value {
    let mut endpoints = Vec::new();
    if with_21 {
        endpoints.push(json!({"addresses": ["10.44.0.21"], "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop", "uid": "uid-web-1"}}));
    }
    endpoints.push(
        json!({"addresses": ["10.44.0.22"], "conditions": {"ready": ready_22},
        "targetRef": {"kind": "Pod", "name": "web-2", "namespace": "shop", "uid": "uid-web-2"}}),
    );
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-x7k2p", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web",
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

fn endpoints_of(mesh: &MeshConfig, host: &str) -> Vec<(String, String, Option<String>)> {
    mesh.service(host)
        .map(|s| {
            s.endpoints
                .iter()
                .map(|e| {
                    (
                        e.address.clone(),
                        e.service_account.clone(),
                        e.labels.get("version").cloned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn next_mesh(rx: &mut watch::Receiver<Arc<MeshConfig>>) -> Arc<MeshConfig> {
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("a new mesh config within 10 s")
        .unwrap();
    rx.borrow_and_update().clone()
}

#[tokio::test]
async fn endpoint_slices_v1_watch_and_relist() {
    let (events, _) = broadcast::channel(256);
    let fake = Arc::new(Fake {
        rv: AtomicU64::new(100),
        objects: Mutex::new(BTreeMap::new()),
        events,
        lists: Mutex::new(BTreeMap::new()),
    });
    fake.put(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "shop", "labels": {"istio-injection": "enabled"}}}),
    );
    fake.put(
        SERVICES,
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"clusterIP": "10.96.5.5", "clusterIPs": ["10.96.5.5"], "type": "ClusterIP",
                        "selector": {"app": "web"},
                        "ports": [{"name": "http", "port": 80, "targetPort": "http",
                                   "protocol": "TCP"}]}}),
    );
    fake.put(PODS, pod("web-1", "10.44.0.21", "v1", true));
    fake.put(PODS, pod("web-2", "10.44.0.22", "v2", false));
    fake.put(SLICES, slice(false, true));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().fallback(handle).with_state(fake.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();

    let mesh_tx = watch::Sender::new(Arc::new(MeshConfig::default()));
    let ns_tx = watch::Sender::new(BTreeSet::new());
    let reg_events = Arc::new(RegEvents::default());
    let source = KubeSource::start(
        client,
        IndexOptions::default(),
        meshd::debounce::Debounce {
            quiet: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        Duration::from_secs(10),
        KubeOutputs {
            mesh: mesh_tx.clone(),
            injection_namespaces: ns_tx.clone(),
            namespace_labels: watch::Sender::new(Default::default()),
            reg_events: reg_events.clone(),
        },
    )
    .await
    .expect("synced against the fake server");
    // pilot_k8s_reg_events: each listed pod is an add.
    assert_eq!(reg_events.get("Pod", RegEvent::Add), 2);
    assert_eq!(reg_events.get("Pod", RegEvent::Update), 0);
    assert_eq!(source.endpoints_api, EndpointsApi::Slices);
    let mut rx = mesh_tx.subscribe();
    let host = "web.shop.svc.cluster.local";
    let mesh = rx.borrow_and_update().clone();
    assert_eq!(
        endpoints_of(&mesh, host),
        [("10.44.0.21".into(), "web".into(), Some("v1".into()))],
        "the ready endpoint of the slice, with its pod's labels and service account"
    );
    assert_eq!(mesh.service(host).unwrap().endpoints[0].ports["http"], 8080);
    assert_eq!(mesh.workloads.len(), 2);
    assert!(ns_tx.borrow().contains("shop"));

    // A watch event: web-2 turns ready.
    fake.put(PODS, pod("web-2", "10.44.0.22", "v2", true));
    fake.put(SLICES, slice(true, true));
    let mut mesh = next_mesh(&mut rx).await;
    while endpoints_of(&mesh, host).len() < 2 {
        mesh = next_mesh(&mut rx).await;
    }
    assert_eq!(
        endpoints_of(&mesh, host),
        [
            ("10.44.0.21".into(), "web".into(), Some("v1".into())),
            ("10.44.0.22".into(), "web".into(), Some("v2".into())),
        ]
    );
    // A new version of a pod the index held: an update, not an add (the pod and slice
    // watches are separate streams: wait for the pod's).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reg_events.get("Pod", RegEvent::Update) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reg_events.get("Pod", RegEvent::Update), 1);
    assert_eq!(reg_events.get("Pod", RegEvent::Add), 2);

    // An update that changes nothing the mesh uses (a new resourceVersion): no publish.
    fake.put(SLICES, slice(true, true));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !rx.has_changed().unwrap(),
        "nothing changed, nothing pushed"
    );

    // A watch gap: web-1 and its endpoint vanish without events, then the watches expire.
    // The relist must drop them.
    let lists_before = fake.list_count(PODS);
    fake.remove_silently(PODS, "web-1");
    fake.put(SLICES, slice(true, false));
    let _ = next_mesh(&mut rx).await;
    fake.expire(PODS);
    let mesh = loop {
        let mesh = next_mesh(&mut rx).await;
        if mesh.workloads.len() == 1 {
            break mesh;
        }
    };
    assert!(
        fake.list_count(PODS) > lists_before,
        "the pods were listed again"
    );
    assert_eq!(mesh.workloads[0].name, "web-2");
    assert_eq!(
        endpoints_of(&mesh, host),
        [("10.44.0.22".into(), "web".into(), Some("v2".into()))]
    );
    drop(source);
    server.abort();
}
