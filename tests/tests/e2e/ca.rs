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
    let body = match pod.envoy_admin("/certs") {
        Ok((200, body)) => body,
        other => panic!("Envoy's /certs in pod {}: {other:?}", pod.name),
    };
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("Envoy's /certs in pod {} is not JSON: {e}", pod.name));
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
    envoy_stat(pod, name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Envoy's `/stats` of `pod`; panics when Envoy does not answer (never an empty list).
fn stats(pod: &SidecarPod) -> String {
    pod.envoy_stats()
        .unwrap_or_else(|e| panic!("Envoy's stats in pod {}: {e:#}", pod.name))
}

/// TLS failures either sidecar saw: handshake errors and failed peer verifications.
fn tls_failures(pod: &SidecarPod) -> Vec<String> {
    let stats = stats(pod);
    let failures: Vec<String> = stats
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
        .collect();
    // The failure counters exist once a TLS context does: no such counter means this looked at
    // the wrong stats, not that nothing failed.
    assert!(
        stats.lines().any(|l| l.contains("ssl.connection_error: ")),
        "no TLS failure counters in pod {}'s Envoy",
        pod.name
    );
    failures
}

/// TLS handshakes completed, over every TLS context of `pod`'s Envoy.
fn handshakes(pod: &SidecarPod) -> u64 {
    let counters: Vec<u64> = stats(pod)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.ends_with("ssl.handshake"))
        .map(|(k, v)| {
            v.trim()
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("{k}: {v}: {e}"))
        })
        .collect();
    assert!(
        !counters.is_empty(),
        "no ssl.handshake counter in pod {}'s Envoy",
        pod.name
    );
    counters.iter().sum()
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

fn rotation_status(mesh: &Mesh) -> serde_json::Value {
    mesh.admin_json("/debug/ca/rotate-root")
        .unwrap_or_else(|e| panic!("GET /debug/ca/rotate-root: {e:#}"))
}

fn trusted_roots(mesh: &Mesh) -> Vec<String> {
    let mut v: Vec<String> = rotation_status(mesh)["trusted_roots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    v.sort();
    v
}

fn rotate_root_cli(mesh: &Mesh, extra: &[&str]) -> String {
    let meshd = mesh.meshd_bin().to_string_lossy().into_owned();
    let admin = mesh.admin_url();
    let mut argv = vec![meshd.as_str(), "ca", "rotate-root", "--admin", &admin];
    argv.extend_from_slice(extra);
    mesh.node().run(&argv).unwrap()
}

/// Both sidecars trust exactly `roots` (sorted serials).
fn wait_sidecars_trust(t: &TwoPods, roots: &[String], what: &str) {
    wait_for(Duration::from_secs(30), what, || {
        [&t.client, &t.server]
            .iter()
            .all(|p| envoy_certs(p).1 == roots)
    })
    .unwrap();
}

/// The pid of the Envoy running `pod`'s bootstrap.
fn envoy_pid(pod: &SidecarPod) -> i32 {
    let want = pod.bootstrap.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("envoy"))
            && args.windows(2).any(|w| w[0] == "-c" && w[1] == want)
        {
            return pid;
        }
    }
    panic!("no Envoy running {want}");
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

fn assert_no_failures(what: &str, ok: u64, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} of {} requests failed:\n{}",
        failures.len(),
        ok as usize + failures.len(),
        failures.join("\n")
    );
}

#[test]
fn root_rotation_under_load_with_zero_failures_and_a_restart_midway() {
    use nix::sys::signal::Signal;
    let t = two_pods("rootrot", &["--root-rotation-grace", "3s"]);
    let (client, server) = (&t.client, &t.server);
    let root0 = trusted_roots(&t.mesh);
    assert_eq!(root0.len(), 1, "{root0:?}");
    wait_sidecars_trust(&t, &root0, "sidecars trusting the first root");
    let handshakes_before = handshakes(server);
    let load = Load::start(client);

    // 1. `meshd ca rotate-root` follows a whole rotation to the end.
    let out = rotate_root_cli(&t.mesh, &[]);
    assert!(out.contains("root rotation finished"), "{out}");
    let root1 = trusted_roots(&t.mesh);
    assert_eq!(root1.len(), 1, "{root1:?}");
    assert_ne!(root1, root0);
    wait_sidecars_trust(&t, &root1, "sidecars trusting only the second root");
    let ok1 = load.ok();
    wait_for(
        Duration::from_secs(10),
        "requests under the second root",
        || load.ok() >= ok1 + 20,
    )
    .unwrap();
    let (mut ok, failures) = load.finish();
    assert_no_failures("first root rotation", ok, &failures);

    // 2. A proxy that has not ACKed holds the rotation: the server's Envoy is frozen (no
    // requests meanwhile: it could not answer them) while the rotation starts.
    let server_envoy = envoy_pid(server);
    signal(server_envoy, Signal::SIGSTOP);
    let out = rotate_root_cli(&t.mesh, &["--pause-after", "add-root", "--no-wait"]);
    assert!(out.contains("root rotation started"), "{out}");
    // The rotator has judged the phase after the client ACKed (the server is the only proxy it
    // waits for: a positive sign it looked, where a sleep would only hope so), and holds it.
    let waits_for_server_only = |s: &serde_json::Value| {
        s["waiting_for"].as_array().is_some_and(|w| {
            w.len() == 1 && w[0].as_str().is_some_and(|id| id.contains("~server.demo~"))
        })
    };
    let mut s = serde_json::Value::Null;
    let judged = wait_until(Duration::from_secs(20), || {
        s = rotation_status(&t.mesh);
        waits_for_server_only(&s)
    });
    signal(server_envoy, Signal::SIGCONT);
    assert!(
        judged,
        "the rotator never waited for the frozen server alone: {s}"
    );
    assert_eq!(s["state"], "add-root", "{s}");
    let both = trusted_roots(&t.mesh);
    assert_eq!(both.len(), 2, "{both:?}");
    assert_eq!(envoy_certs(client).1, both, "the client ACKed both roots");
    let load = Load::start(client);
    // Once the server ACKed too, the phase is synced and (as asked) the rotation pauses.
    wait_for(
        Duration::from_secs(20),
        "the rotation to pause after add-root",
        || rotation_status(&t.mesh)["state"] == "paused",
    )
    .unwrap();
    wait_sidecars_trust(&t, &both, "sidecars trusting both roots");

    // 3. The control plane is killed (no chance to tidy up) and restarted mid-rotation: it
    // resumes and finishes by itself.
    let new_root: Vec<String> = both
        .iter()
        .filter(|s| !root1.contains(s))
        .cloned()
        .collect();
    t.mesh.kill_control_plane();
    t.mesh.restart_control_plane().unwrap();
    wait_for(
        Duration::from_secs(60),
        "the resumed rotation to finish",
        || {
            let s = rotation_status(&t.mesh);
            s["state"] == "idle" && s["last_rotation"]["new_root_serial"] == new_root[0].as_str()
        },
    )
    .unwrap();
    assert_eq!(trusted_roots(&t.mesh), new_root);
    wait_sidecars_trust(&t, &new_root, "sidecars trusting only the third root");
    assert!(
        t.mesh
            .control_plane_log()
            .contains("resuming the root rotation"),
        "no resume in the log"
    );
    // Every request since is a handshake verified against the third root only.
    let ok2 = load.ok();
    wait_for(
        Duration::from_secs(10),
        "requests under the third root",
        || load.ok() >= ok2 + 20,
    )
    .unwrap();
    let (ok3, failures) = load.finish();
    assert_no_failures("second root rotation and restart", ok3, &failures);
    ok += ok3;
    assert!(handshakes(server) - handshakes_before >= ok, "handshakes");
    let tls: Vec<String> = [client, server]
        .iter()
        .flat_map(|p| tls_failures(p))
        .collect();
    assert!(tls.is_empty(), "TLS failures: {tls:?}");
    eprintln!(
        "root rotation: {ok} requests, 0 failed; roots {root0:?} -> {root1:?} -> {new_root:?}"
    );

    // The new root persists: a plain restart keeps it.
    t.mesh.restart_control_plane().unwrap();
    assert_eq!(trusted_roots(&t.mesh), new_root);
    assert_eq!(rotation_status(&t.mesh)["state"], "idle");
}

/// A stock Envoy fetching its whole config (and its certificate) over the TLS port, checking
/// meshd's serving certificate against the mesh root.
#[test]
fn stock_envoy_syncs_over_the_tls_port() {
    let mesh = Mesh::start(MeshOptions::named("xdstls").config("mesh.yaml", MESH)).unwrap();
    mesh.set_hosts(&[(SERVER_HOST, SERVER_VIP.parse().unwrap())])
        .unwrap();
    let opts = SidecarOptions {
        wait_ready: false,
        ..SidecarOptions::default()
    };
    let server = mesh
        .add_sidecar_pod_with("server.demo", ip(3), 8080, opts)
        .unwrap();
    mesh.stop_envoy("server").unwrap();
    // The bootstrap `meshd bootstrap` wrote, pointed at 15012 with TLS.
    let root = mesh.state_dir().join("root-cert.pem");
    let mut b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&server.bootstrap).unwrap()).unwrap();
    let xds = b["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "xds-grpc")
        .unwrap();
    xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        ["port_value"] = 15012.into();
    xds["transport_socket"] = serde_json::json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "meshd.meshd-system.svc",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "validation_context": {
                    "trusted_ca": {"filename": root.to_string_lossy()},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": "meshd.meshd-system.svc"}}
                    ]
                }
            }
        }
    });
    std::fs::write(&server.bootstrap, b.to_string()).unwrap();
    mesh.restart_envoy("server").unwrap();

    let client = mesh.add_sidecar_pod("client.demo", ip(2), 8080).unwrap();
    let url = format!("http://{SERVER_HOST}:8080/over-tls-xds");
    wait_for(
        Duration::from_secs(20),
        "a request to the TLS-synced server",
        || matches!(client.get(&url), Ok((200, _))),
    )
    .unwrap();
    assert!(stat(&server, "cluster.xds-grpc.ssl.handshake") >= 1);
    assert_eq!(stat(&server, "cluster.xds-grpc.ssl.fail_verify_san"), 0);
    assert!(stat(&server, "sds.default.update_success") >= 1);
    let syncz = mesh.admin_json("/debug/syncz").unwrap();
    assert!(
        syncz
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["proxy_id"].as_str().unwrap().contains("~server.demo~")),
        "{syncz}"
    );
}

/// An RSA root (`--root-key-algorithm rsa-2048`): stock Envoy accepts the bundle and the
/// certificates it signs, and mTLS traffic flows.
#[test]
fn stock_envoy_meshes_under_an_rsa_root() {
    let t = two_pods("rsaroot", &["--root-key-algorithm", "rsa-2048"]);
    let root = std::fs::read_to_string(t.mesh.state_dir().join("root-cert.pem")).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(root.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rsaEncryption") && text.contains("2048 bit"),
        "{text}"
    );
    let url = format!("http://{SERVER_HOST}:8080/rsa");
    let (status, body) = t.client.get(&url).unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["caller"], "spiffe://cluster.local/ns/demo/sa/client");
    // Envoy holds the RSA root as its validation context, and a leaf under it.
    let (leaf, roots) = envoy_certs(&t.server);
    assert!(leaf.is_some(), "no workload certificate in Envoy");
    assert_eq!(roots.len(), 1, "{roots:?}");
    assert!(handshakes(&t.server) >= 1);
}
