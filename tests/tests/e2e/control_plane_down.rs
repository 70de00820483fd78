//! Issue 2: the control plane goes down (SIGKILL) while requests flow A → B at a steady rate.
//! Envoy keeps its last config, so not one request fails; after a restart meshd uses the same
//! root CA from its state dir and every proxy (one on SotW, one on Delta) resyncs.
//!
//! Run as root: `cargo build --bin meshd && cargo test -p meshd-e2e --test control_plane_down`.

use crate::skeleton_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshd_e2e::*;
use serde_json::Value;
use skeleton_support::*;

/// One request of the steady load: when it started and its status (or why it failed).
struct Outcome {
    at: Instant,
    result: Result<u16, String>,
}

/// Requests from inside a pod at a fixed interval, each on a new connection, until stopped.
struct SteadyLoad {
    stop: Arc<AtomicBool>,
    /// Requests answered 200 so far: what the test waits on instead of sleeping.
    ok: Arc<AtomicU64>,
    handle: JoinHandle<Vec<Outcome>>,
}

impl SteadyLoad {
    fn start(pod: &Pod, svc: &str, every: Duration) -> SteadyLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let pod = pod.clone();
        let target = url(svc, "/steady");
        let host = fqdn(svc);
        let addr = SocketAddr::new(vip(svc).into(), 0);
        let flag = stop.clone();
        let ok = Arc::new(AtomicU64::new(0));
        let ok_count = ok.clone();
        let handle = std::thread::spawn(move || {
            pod.in_netns(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let client = reqwest::Client::builder()
                        .no_proxy()
                        .resolve(&host, addr)
                        .pool_max_idle_per_host(0)
                        .timeout(Duration::from_secs(5))
                        .build()
                        .unwrap();
                    let mut out = Vec::new();
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !flag.load(Ordering::SeqCst) {
                        tick.tick().await;
                        let at = Instant::now();
                        let result = match client.get(&target).send().await {
                            Ok(r) => Ok(r.status().as_u16()),
                            Err(e) => Err(format!("{e:?}")),
                        };
                        if result == Ok(200) {
                            ok_count.fetch_add(1, Ordering::SeqCst);
                        }
                        out.push(Outcome { at, result });
                    }
                    out
                })
            })
            .expect("enter the pod's netns")
        });
        SteadyLoad { stop, ok, handle }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Waits until `n` more requests than now were answered 200.
    fn wait_for_more(&self, n: u64, what: &str) {
        let from = self.ok();
        wait_for(Duration::from_secs(30), what, || self.ok() >= from + n).unwrap();
    }

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("load thread")
    }
}

/// `max_connections` of the active billing cluster in a sidecar's Envoy.
fn billing_max_connections(pod: &SidecarPod) -> Option<u64> {
    let dump = pod.envoy_config_dump().ok()?;
    let billing = format!("outbound|8007||{}", fqdn("billing-service"));
    dump["configs"]
        .as_array()?
        .iter()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump")?
        ["dynamic_active_clusters"]
        .as_array()?
        .iter()
        .map(|c| &c["cluster"])
        .find(|c| c["name"] == billing.as_str())?["circuit_breakers"]["thresholds"][0]
        ["max_connections"]
        .as_u64()
}

fn root_serials(mesh: &Mesh) -> Vec<String> {
    mesh.admin_json("/debug/certs")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "root")
        .filter_map(|c| c["serial"].as_str().map(str::to_string))
        .collect()
}

fn workload_serials(mesh: &Mesh, sa: &str) -> Vec<String> {
    let id = spiffe(sa);
    mesh.admin_json("/debug/certs")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "workload" && c["spiffe_id"] == id.as_str())
        .filter_map(|c| c["serial"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn sigkill_of_meshd_loses_no_request_and_proxies_resync_with_the_same_root() {
    let mesh = voicecore_mesh("cpdown");
    let a = service_pod(&mesh, "call-service");
    let b = mesh
        .add_sidecar_pod_with(
            &format!("billing-service-v1.{NS}"),
            ip(17),
            8007,
            SidecarOptions {
                bootstrap_args: vec!["--delta=false".into()],
                ..Default::default()
            },
        )
        .unwrap();
    let ids = [proxy_id("call-service"), proxy_id("billing-service")];
    wait_synced(&mesh, &ids);
    let roots_before = root_serials(&mesh);
    assert_eq!(roots_before.len(), 1, "one mesh root");
    let syncz: Value = mesh.admin_json("/debug/syncz").unwrap();
    let versions_before: Vec<Value> = syncz
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["types"].clone())
        .collect();
    assert!(!versions_before.is_empty());
    let lds_version = |pod: &SidecarPod| -> String {
        let dump = pod.envoy_config_dump().unwrap();
        dump["configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ListenersConfigDump")
            .unwrap()["version_info"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let b_lds = lds_version(&b);

    let load = SteadyLoad::start(&a, "billing-service", Duration::from_millis(20));
    load.wait_for_more(20, "requests flowing before the kill");

    // `kill_control_plane` returns once the process is reaped: its ports are closed.
    mesh.kill_control_plane();
    let killed = Instant::now();
    assert!(!mesh.control_plane_running());
    assert_eq!(
        expect_no_answer(&mesh.admin_get("/healthz/ready")),
        NoAnswer::Refused,
        "the admin port after SIGKILL"
    );
    // Both Envoys notice the lost ADS stream and keep serving with what they have.
    wait_for(
        Duration::from_secs(5),
        "A's Envoy to see the xDS stream gone",
        || a.envoy_stat("control_plane.connected_state").ok().flatten() == Some(0),
    )
    .unwrap();
    // While it is down, the billing DestinationRule changes on disk.
    let dr = VOICECORE
        .split("\n---\n")
        .find(|d| {
            d.contains("\nkind: DestinationRule\n") && d.contains("\n  name: billing-service\n")
        })
        .unwrap();
    let changed = VOICECORE.replace(dr, &dr.replace("maxConnections: 100", "maxConnections: 42"));
    assert_ne!(changed, VOICECORE);
    mesh.write_config("voicecore.yaml", &changed).unwrap();
    // The outage lasts until plenty of requests went through without meshd (one more than
    // asserted below: a request in flight at the kill started before it).
    load.wait_for_more(51, "requests answered while meshd is down");
    let restarting = Instant::now();

    mesh.restart_control_plane().unwrap();
    wait_synced(&mesh, &ids);
    let resynced = Instant::now();
    // The reconnected proxies got the change, with the updated cluster active (its endpoints
    // resent), not left warming until Envoy's 15 s initial fetch timeout.
    for p in [&a, &b] {
        wait_for(
            Duration::from_secs(5),
            "the changed billing cluster active after the resync",
            || billing_max_connections(p) == Some(42),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", p.name));
    }
    load.wait_for_more(20, "requests after the resync");
    let outcomes = load.finish();

    // Zero failed requests in the whole run, and plenty of them while meshd was down.
    let failures: Vec<String> = outcomes
        .iter()
        .filter(|o| o.result != Ok(200))
        .map(|o| {
            format!(
                "{:?} after the kill: {:?}",
                o.at.saturating_duration_since(killed),
                o.result
            )
        })
        .collect();
    let during_outage = outcomes
        .iter()
        .filter(|o| o.at >= killed && o.at < restarting)
        .count();
    eprintln!(
        "{} requests, {during_outage} while meshd was down, resynced {:?} after the restart began",
        outcomes.len(),
        resynced - restarting
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed:\n{}",
        failures.len(),
        outcomes.len(),
        failures.join("\n")
    );
    assert!(
        during_outage >= 50,
        "only {during_outage} requests while the control plane was down"
    );

    // Same root after the restart: the CA came back from the state dir.
    assert_eq!(root_serials(&mesh), roots_before);
    // Both proxies reconnected with their credentials and got certificates again.
    for sa in ["call-service", "billing-service"] {
        assert!(
            !workload_serials(&mesh, sa).is_empty(),
            "no certificate for {sa} after the restart"
        );
    }
    // The listeners did not change, so Envoy kept what it had.
    assert_eq!(lds_version(&b), b_lds);
    assert_eq!(
        a.envoy_stat("control_plane.connected_state").unwrap(),
        Some(1)
    );
    assert_eq!(status_of(&a, &url("billing-service", "/")), 200);
    assert_eq!(status_of(&b, &url("call-service", "/")), 200);
}
