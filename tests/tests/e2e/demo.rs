//! `meshd demo` as a user runs it: the VoiceCore mesh comes up, the gateway and the admin API
//! answer on loopback, `meshd proxy-status` sees every proxy, and SIGINT stops every child and
//! removes every namespace, exit 0. Ports and the namespace prefix are the test's own, so a demo
//! running on the default ports is not disturbed.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use meshd_e2e::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET from this (the machine's own) namespace.
fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        let resp = client.get(url).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    })
}

/// A running `meshd demo`; on drop (a failed test) it is interrupted, then killed, and its
/// namespaces are removed.
struct Demo {
    child: Option<std::process::Child>,
    prefix: String,
    log: PathBuf,
    _state: tempfile::TempDir,
}

impl Demo {
    fn start(prefix: &str, gateway_port: u16, admin_port: u16) -> Demo {
        let meshd = meshd_bin().unwrap();
        let state = tempfile::tempdir().unwrap();
        let log = state.path().join("demo.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(meshd)
            .arg("demo")
            .arg("--state-dir")
            .arg(state.path().join("state"))
            .args(["--gateway-port", &gateway_port.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .args(["--netns-prefix", prefix])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Demo {
            child: Some(child),
            prefix: prefix.to_string(),
            log,
            _state: state,
        }
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn namespaces(&self) -> Vec<String> {
        podnet::list_netns()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .collect()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = kill(self.pid(), Signal::SIGINT);
            if self.wait_exit(Duration::from_secs(20)).is_none()
                && let Some(mut c) = self.child.take()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        podnet::cleanup_stale(&self.prefix);
        if std::thread::panicking() {
            eprintln!("===== meshd demo output =====\n{}", self.output());
        }
    }
}

fn pids_in(ns: &str) -> Vec<i32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap_or_else(|e| panic!("ip netns pids {ns}: {e}"));
    assert!(out.status.success(), "ip netns pids {ns}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|p| {
            p.parse()
                .unwrap_or_else(|e| panic!("ip netns pids {ns}: {p:?}: {e}"))
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    // A zombie (not yet reaped by a parent that is itself gone) does not count.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn demo_serves_the_mesh_on_loopback_and_stops_cleanly_on_sigint() {
    let (gw_port, admin_port) = (free_port(), free_port());
    let prefix = format!("mdt{}", std::process::id());
    let mut demo = Demo::start(&prefix, gw_port, admin_port);

    // Up: the status line is printed once start-up (every Envoy ready) is done.
    let deadline = Instant::now() + Duration::from_secs(180);
    while !demo.output().contains("proxies connected") {
        assert!(demo.running(), "meshd demo exited:\n{}", demo.output());
        assert!(Instant::now() < deadline, "demo not up:\n{}", demo.output());
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = demo.output();
    assert!(
        out.contains(&format!("http://127.0.0.1:{gw_port}/billing-service/")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "meshd proxy-status --admin http://127.0.0.1:{admin_port}"
        )),
        "{out}"
    );

    // Through the ingress gateway, from the machine's own namespace: the API gateway answers;
    // the backends, which the shipped AuthorizationPolicies (deploy/mesh/voicecore-authz.yaml)
    // open only to their in-mesh callers, refuse the ingress gateway.
    let url = format!("http://127.0.0.1:{gw_port}/gateway/hello");
    let (status, body) = get(&url).unwrap_or_else(|e| panic!("{url}: {e:#}"));
    assert_eq!(status, 200, "{url}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["service"], "gateway", "{body}");
    assert_eq!(v["path"], "/hello", "{body}");
    assert_eq!(
        v["caller"], "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway",
        "{body}"
    );
    for svc in ["crm-service", "billing-service"] {
        let url = format!("http://127.0.0.1:{gw_port}/{svc}/hello");
        let (status, body) = get(&url).unwrap_or_else(|e| panic!("{url}: {e:#}"));
        assert_eq!((status, body.trim()), (403, "RBAC: access denied"), "{url}");
    }
    assert!(out.contains("403 RBAC: access denied"), "{out}");

    // The admin API, and proxy-status through it: nine proxies, all synced.
    let admin = format!("http://127.0.0.1:{admin_port}");
    let (s, _) = get(&format!("{admin}/healthz/ready")).unwrap();
    assert_eq!(s, 200);

    // The dashboard: its URL printed, and the demo's background load on its graph (the API
    // gateway calling a backend its policy allows, over mTLS).
    assert!(
        out.contains(&format!("http://127.0.0.1:{admin_port}/dashboard/")),
        "{out}"
    );
    let mut graph = String::new();
    let busy = wait_until(Duration::from_secs(90), || {
        graph = get(&format!("{admin}/dashboard/api/graph"))
            .map(|(_, body)| body)
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&graph).unwrap_or_default();
        v["edges"].as_array().is_some_and(|edges| {
            edges.iter().any(|e| {
                e["source"] == "workload:voicecore-ai/gateway-v1"
                    && e["requests"].as_u64().unwrap_or(0) > 0
                    && e["mtls"] == "full"
            })
        })
    });
    assert!(busy, "no demo traffic on the dashboard's graph: {graph}");

    let meshd = meshd_bin().unwrap();
    let mut last = String::new();
    let synced = wait_until(Duration::from_secs(30), || {
        let out = Command::new(&meshd)
            .args(["proxy-status", "--admin", &admin])
            .output()
            .unwrap();
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows: Vec<&str> = last.lines().skip(1).collect();
        out.status.success()
            && rows.len() == 9
            && rows
                .iter()
                .all(|r| r.matches("SYNCED").count() == 5 && !r.contains("STALE"))
    });
    assert!(synced, "proxy-status:\n{last}");
    assert!(
        last.contains("router~10.44.0.2~ingressgateway.istio-system"),
        "{last}"
    );

    // What runs in the demo's namespaces, to check afterwards that it is all gone.
    let namespaces = demo.namespaces();
    assert_eq!(namespaces.len(), 10, "{namespaces:?}");
    let pids: Vec<i32> = namespaces.iter().flat_map(|ns| pids_in(ns)).collect();
    assert!(pids.len() >= 17, "{pids:?}");

    kill(demo.pid(), Signal::SIGINT).unwrap();
    let status = demo
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("meshd demo still running 30 s after SIGINT"));
    let out = demo.output();
    assert!(status.success(), "exit {status}:\n{out}");
    assert!(out.contains("no namespaces left"), "{out}");
    assert_eq!(demo.namespaces(), Vec::<String>::new());
    let left: Vec<i32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left running: {left:?}");
    assert!(!Path::new("/run/meshd-podnet").join(&prefix).exists());
    // Nothing listens on the gateway port any more: the kernel refuses the connection.
    let after = get(&format!("http://127.0.0.1:{gw_port}/"));
    assert_eq!(expect_no_answer(&after), NoAnswer::Refused);
}

#[test]
fn demo_refuses_a_port_in_use_before_creating_anything() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let prefix = format!("mdp{}", std::process::id());
    let mut demo = Demo::start(&prefix, port, free_port());
    let status = demo.wait_exit(Duration::from_secs(60)).expect("demo exits");
    let out = demo.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
    assert!(out.contains("--gateway-port"), "{out}");
    assert_eq!(demo.namespaces(), Vec::<String>::new());
}

#[test]
fn demo_without_root_says_what_it_needs() {
    // The unprivileged user must be able to run the binary: when the build's own path is closed
    // to others (a checkout under /root), run a copy from a directory open to them.
    let built = meshd_bin().unwrap();
    let copy_dir = tempfile::tempdir().unwrap();
    let meshd = if podnet::others_can_exec(&built) {
        built
    } else {
        use std::os::unix::fs::PermissionsExt;
        let dir = copy_dir.path();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("meshd");
        fs::copy(&built, &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(
            podnet::others_can_exec(&copy),
            "{} is not executable by others (is {} searchable?)",
            copy.display(),
            dir.display()
        );
        copy
    };
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&meshd)
        .args(["demo", "--state-dir", "/nonexistent/meshd-demo"])
        .current_dir("/")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("root"), "{stderr}");
    assert!(stderr.contains("Nothing was started"), "{stderr}");
}
