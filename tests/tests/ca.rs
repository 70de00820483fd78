//! The mesh CA end to end, through stock Envoy sidecars: workload certificates rotating under
//! load with a short lifetime, and a root rotation, both with zero failed requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshd_e2e::*;

const SERVER_VIP: &str = "10.96.0.20";
const SERVER_HOST: &str = "server.demo.svc.cluster.local";

/// Two workloads under STRICT mTLS. One request per upstream connection, so every request is a
/// fresh mTLS handshake with whatever certificates and trust bundle the sidecars hold right then.
const MESH: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: server, namespace: demo}
spec:
  hosts: [server.demo.svc.cluster.local]
  addresses: [10.96.0.20]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: server}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: server, namespace: demo}
spec:
  address: 10.44.0.3
  labels: {app: server}
  serviceAccount: server
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: demo}
spec:
  address: 10.44.0.2
  labels: {app: client}
  serviceAccount: client
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: server, namespace: demo}
spec:
  host: server.demo.svc.cluster.local
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    connectionPool:
      http: {maxRequestsPerConnection: 1}
"#;

struct TwoPods {
    mesh: Mesh,
    client: SidecarPod,
    server: SidecarPod,
}

fn two_pods(name: &str, serve_args: &[&str]) -> TwoPods {
    let mut opts = MeshOptions::named(name).config("mesh.yaml", MESH);
    for a in serve_args {
        opts = opts.serve_arg(a);
    }
    let mesh = Mesh::start(opts).unwrap();
    mesh.set_hosts(&[(SERVER_HOST, SERVER_VIP.parse().unwrap())])
        .unwrap();
    let server = mesh.add_sidecar_pod("server.demo", ip(3), 8080).unwrap();
    let client = mesh.add_sidecar_pod("client.demo", ip(2), 8080).unwrap();
    let url = format!("http://{SERVER_HOST}:8080/warmup");
    wait_for(
        Duration::from_secs(20),
        "a first request through mTLS",
        || matches!(client.get(&url), Ok((200, _))),
    )
    .unwrap();
    TwoPods {
        mesh,
        client,
        server,
    }
}

/// A steady stream of requests client → server until stopped; every non-200 is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    handle: Option<JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(client: &SidecarPod) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (c, s, n) = (client.clone(), stop.clone(), ok.clone());
        let handle = std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let at = Instant::now();
                match c.get(&format!("http://{SERVER_HOST}:8080/load/{i}")) {
                    Ok((200, _)) => {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((status, body)) => failures.push(format!("#{i}: HTTP {status}: {body}")),
                    Err(e) => failures.push(format!("#{i}: {e:#}")),
                }
                std::thread::sleep(Duration::from_millis(40).saturating_sub(at.elapsed()));
            }
            failures
        });
        Load {
            stop,
            ok,
            handle: Some(handle),
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the stream; (successes, failures).
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.handle.take().unwrap().join().unwrap();
        (self.ok(), failures)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serial (lower-case hex) of the workload certificate Envoy is serving now, and of every CA
/// certificate it trusts, from Envoy's `/certs`.
fn envoy_certs(pod: &SidecarPod) -> (Option<String>, Vec<String>) {
    let Ok((200, body)) = pod.envoy_admin("/certs") else {
        return (None, Vec::new());
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut leaf = None;
    let mut cas = Vec::new();
    for c in v["certificates"].as_array().into_iter().flatten() {
        if let Some(s) = c["cert_chain"][0]["serial_number"].as_str() {
            leaf = Some(s.to_ascii_lowercase());
        }
        for ca in c["ca_cert"].as_array().into_iter().flatten() {
            if let Some(s) = ca["serial_number"].as_str() {
                let s = s.to_ascii_lowercase();
                if !cas.contains(&s) {
                    cas.push(s);
                }
            }
        }
    }
    cas.sort();
    (leaf, cas)
}

fn stat(pod: &SidecarPod, name: &str) -> u64 {
    pod.envoy_stat(name).ok().flatten().unwrap_or(0)
}

/// TLS failures either sidecar saw: handshake errors and failed peer verifications.
fn tls_failures(pod: &SidecarPod) -> Vec<String> {
    let stats = pod.envoy_stats().unwrap_or_default();
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, v)| {
            (k.ends_with("ssl.connection_error")
                || k.ends_with("ssl.fail_verify_error")
                || k.ends_with("ssl.fail_verify_san")
                || k.ends_with("ssl.fail_verify_no_cert")
                || k.ends_with("ssl.fail_verify_cert_hash"))
                && v.trim() != "0"
        })
        .map(|(k, v)| format!("{} {k}: {v}", pod.name))
        .collect()
}

fn handshakes(pod: &SidecarPod) -> u64 {
    let stats = pod.envoy_stats().unwrap_or_default();
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.ends_with("ssl.handshake"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

#[test]
fn workload_certs_rotate_under_load_with_zero_failures() {
    let t = two_pods(
        "rotate",
        &[
            "--workload-cert-ttl",
            "30s",
            "--cert-rotation-window",
            "10s",
        ],
    );
    let (client, server) = (&t.client, &t.server);
    let sds_before = [
        stat(client, "sds.default.update_success"),
        stat(server, "sds.default.update_success"),
    ];
    let first = [
        envoy_certs(client).0.unwrap(),
        envoy_certs(server).0.unwrap(),
    ];
    let handshakes_before = handshakes(server);
    let load = Load::start(client);

    // Three rotations of both sidecars: three new serials each, SDS updates for each.
    let mut seen: [Vec<String>; 2] = [vec![first[0].clone()], vec![first[1].clone()]];
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.iter().any(|s| s.len() < 4) {
        assert!(
            Instant::now() < deadline,
            "fewer than 3 rotations in 120 s: serials {seen:?}\nmeshd log:\n{}",
            tail(&t.mesh.control_plane_log(), 40)
        );
        std::thread::sleep(Duration::from_millis(500));
        for (i, pod) in [client, server].into_iter().enumerate() {
            if let (Some(s), _) = envoy_certs(pod)
                && !seen[i].contains(&s)
            {
                seen[i].push(s);
            }
        }
    }
    // Traffic keeps flowing on the last certificates.
    let ok_at_rotation = load.ok();
    wait_for(
        Duration::from_secs(10),
        "requests after the last rotation",
        || load.ok() >= ok_at_rotation + 20,
    )
    .unwrap();
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across rotations:\n{}",
        failures.len(),
        ok as usize + failures.len(),
        failures.join("\n")
    );
    assert!(ok > 500, "only {ok} requests made it through");

    for (i, pod) in [client, server].into_iter().enumerate() {
        let updates = stat(pod, "sds.default.update_success") - sds_before[i];
        assert!(
            updates >= 3,
            "{}: sds.default.update_success grew by {updates}, want >= 3",
            pod.name
        );
        assert_eq!(stat(pod, "sds.default.update_rejected"), 0, "{}", pod.name);
    }
    // Every request was a fresh mTLS handshake, and none failed on either side.
    assert!(handshakes(server) - handshakes_before >= ok, "handshakes");
    let tls: Vec<String> = [client, server]
        .iter()
        .flat_map(|p| tls_failures(p))
        .collect();
    assert!(tls.is_empty(), "TLS failures: {tls:?}");
    eprintln!(
        "rotation: {ok} requests, 0 failed; client serials {:?}, server serials {:?}; sds.default.update_success client {} server {}",
        seen[0],
        seen[1],
        stat(client, "sds.default.update_success"),
        stat(server, "sds.default.update_success"),
    );

    // The control plane lists the certificates it issued; Envoy served them.
    let certs = t.mesh.admin_json("/debug/certs").unwrap();
    let listed: Vec<&str> = certs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["serial"].as_str())
        .collect();
    let last = [seen[0].last().unwrap(), seen[1].last().unwrap()];
    for s in last {
        assert!(listed.contains(&s.as_str()), "{s} not in /debug/certs");
    }
}
