//! Kubernetes-mode scale (issue 19): a mesh of S Services and their Pods and EndpointSlices
//! created through a real kube-apiserver (`KUBECONFIG`), then `meshd serve --registry
//! kubernetes` started against it (Endpoints on an API server without `discovery.k8s.io/v1`,
//! as meshd reads them there): time from start to ready, RSS and heap with no proxies, and
//! endpoint churn driven through the API server (readiness of endpoints flipped in their
//! EndpointSlices at a steady rate): the rate the API server took, how often meshd published a
//! rebuilt config, and meshd's CPU; and, on a quiet cluster, the time from one endpoint change
//! at the API server to meshd publishing it.

use crate::mesh::{self, Shape};
use crate::server::{Server, cpu_seconds, heap_kb, metric, rss_kb};
use crate::{Args, ms};
use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use kube::Client;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Requests in flight at once: enough to keep the API server busy on two cores.
const CONCURRENCY: usize = 32;

/// The IP of pod `w` (as the synthetic mesh's workload addresses).
fn pod_ip(w: usize) -> String {
    mesh::workload_ip(w)
}

async fn create_all<F, Fut>(what: &str, n: usize, f: F) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let t = Instant::now();
    let mut results = futures::stream::iter((0..n).map(f)).buffer_unordered(CONCURRENCY);
    let mut done = 0usize;
    while let Some(r) = results.next().await {
        match r {
            Ok(()) => {}
            // A rerun on the same API server finds what the last one made.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("creating {what}")),
        }
        done += 1;
        if done.is_multiple_of(5000) {
            eprintln!("meshd-load: {done} of {n} {what}");
        }
    }
    Ok(t.elapsed())
}

/// Where this API server keeps endpoints, as meshd decides it: EndpointSlices
/// (`discovery.k8s.io/v1`, Kubernetes ≥ 1.21), else Endpoints.
#[derive(Clone, Copy)]
enum Endpoints {
    Slices,
    Endpoints,
}

impl Endpoints {
    async fn detect(client: &Client) -> Endpoints {
        match client.list_api_group_resources("discovery.k8s.io/v1").await {
            Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => {
                Endpoints::Slices
            }
            _ => Endpoints::Endpoints,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Endpoints::Slices => "EndpointSlices",
            Endpoints::Endpoints => "Endpoints",
        }
    }

    fn api(self, client: &Client, ns: &str) -> Api<DynamicObject> {
        let (gvk, plural) = match self {
            Endpoints::Slices => (
                GroupVersionKind::gvk("discovery.k8s.io", "v1", "EndpointSlice"),
                "endpointslices",
            ),
            Endpoints::Endpoints => (GroupVersionKind::gvk("", "v1", "Endpoints"), "endpoints"),
        };
        Api::namespaced_with(
            client.clone(),
            ns,
            &ApiResource::from_gvk_with_plural(&gvk, plural),
        )
    }

    /// Replaces service `svc`'s endpoints (a merge patch of the whole list) with its pods,
    /// ready or not as `ready` says.
    async fn write(
        self,
        client: &Client,
        svc: usize,
        shape: &Shape,
        pods: usize,
        ready: impl Fn(usize) -> bool,
    ) -> Result<(), kube::Error> {
        let body = self.object(svc, shape, pods, ready);
        self.api(client, &mesh::namespace(svc, shape))
            .patch(
                &mesh::service_name(svc),
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .await
            .map(|_| ())
    }

    /// Service `svc`'s endpoints: its pods, ready or not as `ready` says.
    fn object(
        self,
        svc: usize,
        shape: &Shape,
        pods: usize,
        ready: impl Fn(usize) -> bool,
    ) -> Value {
        let ns = mesh::namespace(svc, shape);
        let name = mesh::service_name(svc);
        let members = (svc..pods).step_by(shape.services).map(|w| {
            let target =
                json!({"kind": "Pod", "namespace": ns, "name": mesh::workload(w, shape).0});
            (w, target)
        });
        match self {
            Endpoints::Slices => json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": ns,
                    "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": members.map(|(w, target)| json!({
                    "addresses": [pod_ip(w)],
                    "conditions": {"ready": ready(w)},
                    "targetRef": target,
                })).collect::<Vec<_>>(),
            }),
            Endpoints::Endpoints => {
                let (mut up, mut down) = (Vec::new(), Vec::new());
                for (w, target) in members {
                    let address = json!({"ip": pod_ip(w), "targetRef": target});
                    if ready(w) {
                        up.push(address)
                    } else {
                        down.push(address)
                    }
                }
                json!({
                    "apiVersion": "v1",
                    "kind": "Endpoints",
                    "metadata": {"name": name, "namespace": ns},
                    "subsets": [{
                        "addresses": up,
                        "notReadyAddresses": down,
                        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    }],
                })
            }
        }
    }
}

/// Creates the mesh through the API server; returns the report rows of that step.
async fn populate(
    client: &Client,
    shape: &Shape,
    pods: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut namespaces: Vec<String> = (0..shape.namespaces).map(|n| format!("ns-{n}")).collect();
    namespaces.push("meshd-system".into());
    let ns_api: Api<Namespace> = Api::all(client.clone());
    create_all("namespaces", namespaces.len(), |i| {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": namespaces[i]}})).expect("valid");
        let api = ns_api.clone();
        async move { api.create(&PostParams::default(), &ns).await.map(|_| ()) }
    })
    .await?;
    let sa = create_all("service accounts", shape.services, |s| {
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &mesh::namespace(s, shape));
        let obj: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": mesh::service_name(s)}}))
                .expect("valid");
        async move { api.create(&PostParams::default(), &obj).await.map(|_| ()) }
    })
    .await?;
    let services = create_all("services", shape.services, |s| {
        let name = mesh::service_name(s);
        let api: Api<Service> = Api::namespaced(client.clone(), &mesh::namespace(s, shape));
        let obj: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "selector": {"app": name},
                "ports": [{"name": "http", "port": 8080, "targetPort": 8080}],
            },
        }))
        .expect("valid");
        async move { api.create(&PostParams::default(), &obj).await.map(|_| ()) }
    })
    .await?;
    let created = create_all("pods", pods, |w| {
        let (name, ns, sa) = mesh::workload(w, shape);
        let app = mesh::service_name(w % shape.services);
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let obj: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app, "version": "v1"}},
            "spec": {
                "serviceAccountName": sa,
                // No token controller runs beside this API server to make the token Secret.
                "automountServiceAccountToken": false,
                "containers": [{"name": "app", "image": "app",
                    "ports": [{"containerPort": 8080, "name": "http"}]}],
            },
        }))
        .expect("valid");
        async move { api.create(&PostParams::default(), &obj).await.map(|_| ()) }
    })
    .await?;
    // No kubelet here: each pod's status is what a kubelet would report for a running pod.
    let running = create_all("pod statuses", pods, |w| {
        let (name, ns, _) = mesh::workload(w, shape);
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let ip = pod_ip(w);
        let status = json!({"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"},
                           {"type": "ContainersReady", "status": "True"}],
        }});
        async move {
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .map(|_| ())
        }
    })
    .await?;
    let kind = Endpoints::detect(client).await;
    let slices = create_all(kind.kind(), shape.services, |s| {
        let api = kind.api(client, &mesh::namespace(s, shape));
        let obj: DynamicObject =
            serde_json::from_value(kind.object(s, shape, pods, |_| true)).expect("valid");
        async move { api.create(&PostParams::default(), &obj).await.map(|_| ()) }
    })
    .await?;
    let total = sa + services + created + running + slices;
    Ok(vec![(
        format!(
            "created through the API server: {} Services, {pods} Pods (Running), {} {}",
            shape.services,
            shape.services,
            kind.kind()
        ),
        format!(
            "{:.1} s ({} objects and {pods} status writes)",
            total.as_secs_f64(),
            shape.services * 3 + pods
        ),
    )])
}

/// meshd's config version (`meshd_config_version`): it moves each time a rebuilt config is
/// published.
fn config_version(admin_port: u16) -> u64 {
    metric(admin_port, "meshd_config_version").unwrap_or(0.0) as u64
}

/// One endpoint's readiness flipped on a quiet cluster, `n` times: from the API server's
/// answer to meshd publishing a config with it (watch, debounce and rebuild).
async fn single_change(
    client: &Client,
    args: &Args,
    shape: &Shape,
    pods: usize,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let kind = Endpoints::detect(client).await;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let svc = i % shape.services;
        let before = config_version(args.admin_port);
        kind.write(client, svc, shape, pods, |w| w != svc)
            .await
            .context("flipping one endpoint")?;
        let t = Instant::now();
        while config_version(args.admin_port) == before {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(args.phase_timeout),
                "meshd did not publish an endpoint change in {} s",
                args.phase_timeout
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        out.push(t.elapsed());
        // Back to ready, and quiet again before the next sample.
        kind.write(client, svc, shape, pods, |_| true)
            .await
            .context("restoring one endpoint")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    out.sort();
    Ok(out)
}

/// Flips readiness of endpoints at `args.churn` changes/s (one merge patch per changed
/// endpoints object) for `args.churn_seconds`.
async fn churn(
    client: &Client,
    args: &Args,
    shape: &Shape,
    pods: usize,
    server: &Server,
) -> anyhow::Result<Vec<(String, String)>> {
    let versions0 = config_version(args.admin_port);
    let cpu0 = cpu_seconds(server.pid());
    let t0 = Instant::now();
    let per_tick = (args.churn / 10).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let kind = Endpoints::detect(client).await;
    let mut unready: Vec<bool> = vec![false; pods];
    let mut next = 0usize;
    let mut changes = 0u64;
    while t0.elapsed() < Duration::from_secs(args.churn_seconds) {
        tick.tick().await;
        let mut touched = std::collections::BTreeSet::new();
        for _ in 0..per_tick {
            let w = next % pods;
            unready[w] = !unready[w];
            touched.insert(w % shape.services);
            next += 1;
        }
        let unready = &unready;
        let writes = futures::stream::iter(
            touched
                .into_iter()
                .map(|s| kind.write(client, s, shape, pods, move |w| !unready[w])),
        )
        .buffer_unordered(CONCURRENCY);
        let results: Vec<_> = writes.collect().await;
        for r in results {
            r.context("churning endpoints")?;
        }
        changes += per_tick as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    // Once meshd's watches caught up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = cpu_seconds(server.pid()) - cpu0;
    let versions = config_version(args.admin_port) - versions0;
    Ok(vec![
        (
            format!(
                "API-server churn: endpoint readiness flipped, asked {} changes/s for {} s",
                args.churn, args.churn_seconds
            ),
            format!(
                "{:.0} changes/s taken by the API server; meshd published {:.1} configs/s",
                changes as f64 / secs,
                versions as f64 / secs
            ),
        ),
        (
            "API-server churn: meshd CPU".into(),
            format!("{:.2} cores", cpu / secs),
        ),
    ])
}

pub async fn rows(args: &Args, shape: &Shape) -> anyhow::Result<Vec<(String, String)>> {
    let client = Client::try_default()
        .await
        .context("a Kubernetes client from KUBECONFIG")?;
    let pods = args.pods;
    let mut rows = populate(&client, shape, pods).await?;
    let (server, ready) = Server::start(args)?;
    rows.push(("meshd start-to-ready (Kubernetes mode)".into(), ms(ready)));
    // Steady state: the first config built and the start's freed memory returned.
    tokio::time::sleep(Duration::from_secs(3)).await;
    rows.push((
        "meshd RSS, no proxies".into(),
        format!("{:.1} MB", rss_kb(server.pid()) as f64 / 1024.0),
    ));
    if let Some(heap) = heap_kb(args.admin_port) {
        rows.push((
            "meshd heap in use, no proxies".into(),
            format!("{:.1} MB", heap as f64 / 1024.0),
        ));
    }
    let single = single_change(&client, args, shape, pods, 20).await?;
    rows.push((
        "one endpoint's readiness changed through the API server → meshd published it (20 samples)"
            .into(),
        format!(
            "p50 {}, max {} (incl. 100 ms debounce)",
            ms(crate::pct(&single, 0.5)),
            ms(*single.last().unwrap_or(&Duration::ZERO))
        ),
    ));
    if args.churn > 0 {
        rows.extend(churn(&client, args, shape, pods, &server).await?);
    }
    Ok(rows)
}
