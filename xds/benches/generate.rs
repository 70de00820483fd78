//! Generation time per proxy and config bytes per proxy for the VoiceCore mesh
//! (`deploy/mesh/voicecore.yaml`: eight services, their sidecars and the ingress gateway), with
//! and without Sidecar scoping, plus the same mesh copied into many namespaces for scale.
//!
//! `cargo bench -p meshd-xds --bench generate` (optional arg: seconds per measurement, default 1).
//! Without `--bench` (e.g. `cargo test --all-targets`) it runs each case once, as a smoke test.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshd_model::{MeshConfig, parse_file};
use meshd_xds::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use meshd_xds::{GenOptions, MeshSnapshot, NodeType, Proxy};

const VOICECORE: &str = meshd_model::voicecore::MESH_YAML;
const NS: &str = "voicecore-ai";

/// Every service may call only billing-service (the scoping the e2e test proves).
fn scoping(namespace: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: {namespace}}}\nspec:\n  egress:\n  - hosts: [\"./billing-service.{namespace}.svc.cluster.local\"]\n"
    )
}

/// The VoiceCore mesh, copied into `copies` namespaces (`voicecore-ai`, `voicecore-ai-1`, ...),
/// each optionally scoped.
fn mesh(copies: usize, scoped: bool) -> Arc<MeshConfig> {
    let mut text = String::new();
    for i in 0..copies {
        let ns = if i == 0 {
            NS.to_string()
        } else {
            format!("{NS}-{i}")
        };
        text.push_str("\n---\n");
        text.push_str(&VOICECORE.replace(NS, &ns));
        if scoped {
            text.push_str(&scoping(&ns));
        }
    }
    let file = parse_file("voicecore.yaml", &text).expect("the mesh parses");
    let config = MeshConfig::assemble([&file]);
    assert!(
        config
            .rejected
            .iter()
            .all(|r| r.reason.contains("duplicate")),
        "{:?}",
        config.rejected
    );
    Arc::new(config)
}

/// Every proxy of the mesh: a sidecar per workload of the `voicecore-ai*` namespaces, and the
/// ingress gateway.
fn proxies(config: &MeshConfig) -> Vec<Proxy> {
    config
        .workloads
        .iter()
        .map(|w| Proxy::for_workload(w, "cluster.local"))
        .collect()
}

/// Bytes (and resource count) of one type's resources for one proxy.
trait Measure {
    fn measure(&self) -> (usize, usize);
}

impl Measure for meshd_xds::resource::ResourceSet {
    fn measure(&self) -> (usize, usize) {
        (self.iter().map(|r| r.size()).sum(), self.len())
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Repeats `f` for about `secs` (at least 3 times; once when not benchmarking), median time.
fn time(secs: f64, bench: bool, mut f: impl FnMut()) -> Duration {
    let mut samples = Vec::new();
    let start = Instant::now();
    loop {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
        if !bench || (samples.len() >= 3 && start.elapsed().as_secs_f64() >= secs) {
            break;
        }
    }
    median(samples)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn kib(b: usize) -> String {
    format!("{:.1} KiB", b as f64 / 1024.0)
}

fn case(name: &str, copies: usize, scoped: bool, secs: f64, bench: bool) {
    let config = mesh(copies, scoped);
    let opts = Arc::new(GenOptions::default());
    let proxies = proxies(&config);
    let sidecars = proxies
        .iter()
        .filter(|p| p.node_type == NodeType::Sidecar)
        .count();

    let build = time(secs, bench, || {
        black_box(MeshSnapshot::build(1, config.clone(), opts.clone()));
    });
    // Cold: a fresh snapshot, then every proxy once (scope caches fill as proxies connect).
    let cold = time(secs, bench, || {
        let snap = MeshSnapshot::build(1, config.clone(), opts.clone());
        for p in &proxies {
            black_box(snap.generate(p));
        }
    })
    .saturating_sub(build);
    // Warm: caches filled, as for a reconnect or a push that changes nothing.
    let snap = MeshSnapshot::build(1, config.clone(), opts.clone());
    for p in &proxies {
        snap.generate(p);
    }
    let warm = time(secs, bench, || {
        for p in &proxies {
            black_box(snap.generate(p));
        }
    });
    let n = proxies.len() as u32;
    println!(
        "\n{name}: {} services, {} proxies ({sidecars} sidecars)",
        config.services.len(),
        proxies.len()
    );
    println!("  snapshot build            {}", us(build));
    println!("  generate, cold, per proxy {}", us(cold / n));
    println!("  generate, warm, per proxy {}", us(warm / n));

    // Config bytes per proxy, by type: the average sidecar, and the gateway.
    let mut per_type: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut total = 0usize;
    let mut gateway = None;
    for p in &proxies {
        let res = snap.generate(p);
        let bytes: usize = res.values().map(|set| set.measure().0).sum();
        if p.node_type == NodeType::Router {
            gateway.get_or_insert(bytes);
            continue;
        }
        total += bytes;
        for (ty, set) in &res {
            let (b, c) = set.measure();
            let e = per_type.entry(ty).or_default();
            e.0 += b;
            e.1 += c;
        }
    }
    let s = sidecars.max(1);
    println!(
        "  bytes per sidecar         {} (avg of {sidecars})",
        kib(total / s)
    );
    for (ty, label) in [
        (CLUSTER, "CDS"),
        (ENDPOINT, "EDS"),
        (LISTENER, "LDS"),
        (ROUTE, "RDS"),
    ] {
        let (b, c) = per_type.get(ty).copied().unwrap_or_default();
        println!(
            "    {label}  {:>10}  {:>6.1} resources",
            kib(b / s),
            c as f64 / s as f64
        );
    }
    if let Some(g) = gateway {
        println!("  bytes, ingress gateway    {}", kib(g));
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1.0);
    println!("meshd-xds generation (release build; median of repeated runs)");
    case("VoiceCore, unscoped", 1, false, secs, bench);
    case(
        "VoiceCore, Sidecar: ./billing-service only",
        1,
        true,
        secs,
        bench,
    );
    if bench {
        case("VoiceCore ×25 namespaces, unscoped", 25, false, secs, bench);
        case("VoiceCore ×25 namespaces, scoped", 25, true, secs, bench);
    }
}
