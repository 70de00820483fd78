//! A synthetic mesh as Istio YAML: S services across namespaces, P workloads spread over them.

use std::fmt::Write;
use std::path::Path;

pub struct Shape {
    pub services: usize,
    pub workloads: usize,
    pub namespaces: usize,
    /// Give each namespace a Sidecar limiting egress to its own namespace.
    pub sidecar_scoping: bool,
}

pub fn namespace(i: usize, shape: &Shape) -> String {
    format!("ns-{}", i % shape.namespaces.max(1))
}

pub fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

/// The workload (name, namespace, service account) for index `w`.
pub fn workload(w: usize, shape: &Shape) -> (String, String, String) {
    let svc = w % shape.services;
    (
        format!("{}-{w}", service_name(svc)),
        namespace(svc, shape),
        service_name(svc),
    )
}

/// The address of workload `w`'s WorkloadEntry (its proxy's node id carries it).
pub fn workload_ip(w: usize) -> String {
    format!("10.{}.{}.{}", 100 + w / 62500, (w / 250) % 250, w % 250 + 1)
}

pub fn service_yaml(i: usize, shape: &Shape, extra_port: bool) -> String {
    let ns = namespace(i, shape);
    let name = service_name(i);
    let host = format!("{name}.{ns}.svc.cluster.local");
    let vip = format!("240.240.{}.{}", i / 250, i % 250 + 1);
    let mut y = String::new();
    let _ = write!(
        y,
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  hosts: [{host}]\n  addresses: [{vip}]\n  ports:\n  - {{number: 8080, name: http, protocol: HTTP}}\n"
    );
    if extra_port {
        y.push_str("  - {number: 9090, name: grpc, protocol: GRPC}\n");
    }
    let _ = write!(
        y,
        "  location: MESH_INTERNAL\n  resolution: STATIC\n  workloadSelector:\n    labels: {{app: {name}}}\n---\n"
    );
    let _ = write!(
        y,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  host: {host}\n  trafficPolicy:\n    connectionPool:\n      tcp: {{maxConnections: 100}}\n      http: {{http1MaxPendingRequests: 50}}\n    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n---\n"
    );
    let _ = write!(
        y,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  hosts: [{host}]\n  http:\n  - route:\n    - destination: {{host: {host}, subset: v1}}\n    timeout: 30s\n    retries: {{attempts: 3, perTryTimeout: 10s, retryOn: 5xx}}\n---\n"
    );
    y
}

pub fn write(dir: &Path, shape: &Shape) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut services = String::new();
    for i in 0..shape.services {
        services.push_str(&service_yaml(i, shape, false));
    }
    std::fs::write(dir.join("services.yaml"), services)?;
    let mut workloads = String::new();
    for w in 0..shape.workloads {
        let (name, ns, sa) = workload(w, shape);
        let svc = service_name(w % shape.services);
        let ip = workload_ip(w);
        let _ = write!(
            workloads,
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  address: {ip}\n  labels: {{app: {svc}, version: v1}}\n  serviceAccount: {sa}\n---\n"
        );
    }
    std::fs::write(dir.join("workloads.yaml"), workloads)?;
    if shape.sidecar_scoping {
        let mut sidecars = String::new();
        for n in 0..shape.namespaces {
            let _ = write!(
                sidecars,
                "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: default\n  namespace: ns-{n}\nspec:\n  egress:\n  - hosts: [\"./*\"]\n---\n"
            );
        }
        std::fs::write(dir.join("sidecars.yaml"), sidecars)?;
    }
    Ok(())
}
