//! A mesh on this machine: the control plane (`meshd serve`) in the node network namespace of a
//! [`PodNetwork`], and pods, each a network namespace running a workload behind a stock Envoy
//! sidecar with Istio's capture rules, or a gateway Envoy. Everything it starts is stopped, and
//! every namespace removed, by [`LocalMesh::shutdown`] or on drop.
//!
//! This is the one shared harness: `meshd demo` runs the VoiceCore mesh on it, and the
//! end-to-end tests (`tests/`, package `meshd-e2e`) are a thin layer over it.
//!
//! A sidecar pod is made the way the injected init container and sidecar do it: `meshd
//! init-iptables` (capture rules), `meshd bootstrap` (the Envoy bootstrap with the workload's
//! credential), the app (`meshd workload`, as root, so its traffic is captured) on localhost, and
//! Envoy as uid 1337 (not captured). A gateway pod has only Envoy (router mode, from the same
//! `meshd bootstrap`) and no capture rules.
//!
//! Needs root, `ip`, `iptables-restore`, `setpriv` and Envoy.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::podnet::{self, Child, Pod, PodNetwork, wait_until};

mod pods;

pub use pods::SidecarPod;

/// Default subnet of a mesh's pods: 10.44.0.0/24, gateway (node, control plane) 10.44.0.1.
pub const DEFAULT_SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 44, 0, 0), 24);
/// `meshd serve`'s xDS port (plaintext ADS).
pub const XDS_PORT: u16 = 15010;
/// `meshd serve`'s admin port.
pub const ADMIN_PORT: u16 = 15014;
/// Envoy's admin port inside each pod (loopback only).
pub const ENVOY_ADMIN_PORT: u16 = 15000;
/// The proxy uid (excluded from capture).
pub const PROXY_UID: u32 = podnet::PROXY_UID;

/// The last `lines` lines of a log.
pub fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// GET `path` from the Envoy admin interface (127.0.0.1:15000) inside `pod`.
pub fn envoy_admin_get(pod: &Pod, path: &str) -> anyhow::Result<(u16, String)> {
    pod.get(&format!("http://127.0.0.1:{ENVOY_ADMIN_PORT}{path}"))
}

fn chmod(p: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", p.display()))
}

/// How to build a [`LocalMesh`].
#[derive(Debug, Clone)]
pub struct LocalMeshOptions {
    /// Namespace name prefix: the node is `<prefix>-node`, a pod `<prefix>-<pod>`. Leftovers
    /// with this prefix are removed first.
    pub prefix: String,
    /// Pod subnet; its `.1` is the node namespace, where `meshd serve` binds.
    pub subnet: (Ipv4Addr, u8),
    /// The `meshd` binary (control plane, init-iptables, bootstrap, workload app).
    pub meshd_bin: PathBuf,
    /// The Envoy binary; uid 1337 must be able to execute it ([`podnet::envoy_binary`]).
    pub envoy_bin: PathBuf,
    /// Working directory: the processes' cwd, and `pods/<name>/` with each Envoy bootstrap.
    /// Made searchable by others (Envoy runs as uid 1337 and reads its bootstrap there).
    pub work_dir: PathBuf,
    /// `--config-dir` of `meshd serve` and `meshd bootstrap`; `None`: the embedded mesh.
    pub config_dir: Option<PathBuf>,
    /// `--state-dir` (the mesh CA) of `meshd serve` and `meshd bootstrap`.
    pub state_dir: PathBuf,
    /// Extra `meshd serve` arguments.
    pub serve_args: Vec<String>,
    /// Extra environment for `meshd serve`.
    pub env: Vec<(String, String)>,
    /// How long to wait for readiness of the control plane and of each Envoy.
    pub ready_timeout: Duration,
}

impl LocalMeshOptions {
    /// Options with the default subnet, no extra arguments and a 30 s readiness timeout.
    pub fn new(
        prefix: &str,
        meshd_bin: PathBuf,
        envoy_bin: PathBuf,
        work_dir: PathBuf,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            prefix: prefix.into(),
            subnet: DEFAULT_SUBNET,
            meshd_bin,
            envoy_bin,
            work_dir,
            config_dir: None,
            state_dir,
            serve_args: Vec::new(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// How to start one sidecar (or gateway) pod.
#[derive(Debug, Clone)]
pub struct SidecarOptions {
    /// Wait for Envoy's `/ready` (it is LIVE once its initial xDS fetch completed).
    pub wait_ready: bool,
    /// Start the workload app (`meshd workload`). Ignored for a gateway pod.
    pub start_app: bool,
    /// Envoy log level.
    pub log_level: String,
    /// Extra `meshd bootstrap` arguments.
    pub bootstrap_args: Vec<String>,
    /// Extra Envoy arguments.
    pub envoy_args: Vec<String>,
    /// `meshd init-iptables` arguments. Ignored for a gateway pod.
    pub iptables_args: Vec<String>,
}

impl Default for SidecarOptions {
    fn default() -> Self {
        Self {
            wait_ready: true,
            start_app: true,
            log_level: "warn".into(),
            bootstrap_args: Vec::new(),
            envoy_args: Vec::new(),
            iptables_args: [
                "-p",
                "15001",
                "-z",
                "15006",
                "-u",
                "1337",
                "-m",
                "REDIRECT",
                "-i",
                "*",
                "-b",
                "*",
                "-d",
                "15090,15021,15020",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

struct PodProcs {
    pod: SidecarPod,
    app: Option<Child>,
    envoy: Option<Child>,
    envoy_argv: Vec<String>,
}

/// A running mesh: control plane plus pods. Everything stops and is removed by
/// [`LocalMesh::shutdown`] or on drop; when dropped during a panic, the logs of every process
/// are printed first.
pub struct LocalMesh {
    opts: LocalMeshOptions,
    control_plane: Mutex<Option<Child>>,
    cp_log: PathBuf,
    pods: Mutex<Vec<PodProcs>>,
    plain_pods: Mutex<Vec<Pod>>,
    cancelled: AtomicBool,
    net: PodNetwork,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl LocalMesh {
    /// Create the pod network (removing leftovers with the same prefix first). The control
    /// plane is not started yet: [`LocalMesh::start_control_plane`].
    pub fn create(opts: LocalMeshOptions) -> anyhow::Result<LocalMesh> {
        let pods_dir = opts.work_dir.join("pods");
        fs::create_dir_all(&pods_dir)
            .with_context(|| format!("creating {}", pods_dir.display()))?;
        chmod(&opts.work_dir, 0o755)?;
        chmod(&pods_dir, 0o755)?;
        fs::create_dir_all(&opts.state_dir)
            .with_context(|| format!("creating state dir {}", opts.state_dir.display()))?;
        let net = PodNetwork::create(&opts.prefix, opts.subnet)?;
        let cp_log = net.log_dir().join("meshd-serve.log");
        Ok(LocalMesh {
            opts,
            control_plane: Mutex::new(None),
            cp_log,
            pods: Mutex::new(Vec::new()),
            plain_pods: Mutex::new(Vec::new()),
            cancelled: AtomicBool::new(false),
            net,
        })
    }

    pub fn options(&self) -> &LocalMeshOptions {
        &self.opts
    }

    pub fn network(&self) -> &PodNetwork {
        &self.net
    }

    /// The node namespace (where the control plane runs), as a pod.
    pub fn node(&self) -> Pod {
        self.net.node()
    }

    /// The control plane's address (the bridge gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        self.net.gateway()
    }

    pub fn xds_address(&self) -> String {
        format!("{}:{XDS_PORT}", self.gateway())
    }

    /// The admin API over the node namespace's loopback: the only place from which its
    /// `/debug/*` endpoints answer without a token (from a pod, use [`Self::admin_url_off_host`]).
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{ADMIN_PORT}")
    }

    /// The admin API at the bridge address, as pods (off-host callers) reach it.
    pub fn admin_url_off_host(&self) -> String {
        format!("http://{}:{ADMIN_PORT}", self.gateway())
    }

    pub fn config_dir(&self) -> Option<&Path> {
        self.opts.config_dir.as_deref()
    }

    pub fn state_dir(&self) -> &Path {
        &self.opts.state_dir
    }

    pub fn work_dir(&self) -> &Path {
        &self.opts.work_dir
    }

    pub fn meshd_bin(&self) -> &Path {
        &self.opts.meshd_bin
    }

    pub fn envoy_bin(&self) -> &Path {
        &self.opts.envoy_bin
    }

    /// Make every wait in progress (and every later one) fail at once: for a Ctrl-C during
    /// start-up. The processes keep running until [`LocalMesh::shutdown`] or drop.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn check_cancelled(&self) -> anyhow::Result<()> {
        if self.is_cancelled() {
            bail!("cancelled");
        }
        Ok(())
    }

    /// Host entries (name → VIP) every pod resolves (via `/etc/hosts` and in [`Pod::get`]).
    pub fn set_hosts<S: AsRef<str>>(&self, entries: &[(S, Ipv4Addr)]) -> anyhow::Result<()> {
        self.net.set_hosts(entries)
    }

    /// GET a path of the control plane's admin API (from the node namespace's loopback).
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        self.node().get(&format!("{}{path}", self.admin_url()))
    }

    /// GET a path of the admin API and parse it as JSON (error unless 200).
    pub fn admin_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (s, body) = self.admin_get(path)?;
        if s != 200 {
            bail!("GET {path}: HTTP {s}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
    }

    /// Whether `/healthz/ready` answers 200.
    pub fn control_plane_ready(&self) -> bool {
        matches!(self.admin_get("/healthz/ready"), Ok((200, _)))
    }

    pub fn control_plane_running(&self) -> bool {
        self.control_plane
            .lock()
            .unwrap()
            .as_mut()
            .is_some_and(Child::is_running)
    }

    /// The control plane's process id, while it runs (benchmarks read its CPU and RSS).
    pub fn control_plane_pid(&self) -> Option<u32> {
        self.control_plane
            .lock()
            .unwrap()
            .as_ref()
            .and_then(Child::id)
    }

    /// SIGKILL the control plane (no cleanup on its side).
    pub fn kill_control_plane(&self) {
        if let Some(mut c) = self.control_plane.lock().unwrap().take() {
            c.kill();
        }
    }

    /// Start `meshd serve` in the node namespace (bound to all of its addresses: pods reach it
    /// at the gateway, the harness at 127.0.0.1) and wait until it is ready.
    pub fn start_control_plane(&self) -> anyhow::Result<()> {
        self.restart_control_plane()
    }

    /// Stop (SIGTERM) the control plane if it runs, start it again with the same flags and
    /// state, and wait until it is ready.
    pub fn restart_control_plane(&self) -> anyhow::Result<()> {
        if let Some(mut c) = self.control_plane.lock().unwrap().take() {
            c.stop();
        }
        let gw = self.gateway().to_string();
        let mut cmd = self.node().exec([self.opts.meshd_bin.as_os_str()]);
        // The node namespace holds only the bridge and loopback; the TLS port's certificate
        // names the gateway address proxies dial.
        cmd.args(["serve", "--bind", "0.0.0.0", "--xds-tls-san", &gw]);
        if let Some(dir) = &self.opts.config_dir {
            cmd.arg("--config-dir").arg(dir);
        }
        cmd.arg("--state-dir")
            .arg(&self.opts.state_dir)
            .args(&self.opts.serve_args)
            .current_dir(&self.opts.work_dir);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let child = Child::spawn("meshd serve", cmd, Some(self.cp_log.clone()))?;
        *self.control_plane.lock().unwrap() = Some(child);
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            if self.control_plane_ready() {
                return Ok(());
            }
            if !self.control_plane_running() {
                bail!(
                    "meshd serve exited before becoming ready; log:\n{}",
                    tail(&self.control_plane_log(), 80)
                );
            }
            self.check_cancelled()?;
            if Instant::now() > deadline {
                bail!(
                    "meshd serve not ready after {:?}; log:\n{}",
                    self.opts.ready_timeout,
                    tail(&self.control_plane_log(), 80)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn control_plane_log(&self) -> String {
        fs::read_to_string(&self.cp_log).unwrap_or_default()
    }

    pub fn control_plane_log_path(&self) -> &Path {
        &self.cp_log
    }

    /// Print the tail of every process's log to stderr (done automatically when dropped during
    /// a panic).
    pub fn dump_logs(&self) {
        eprintln!(
            "===== meshd serve ({}) =====\n{}",
            self.cp_log.display(),
            tail(&self.control_plane_log(), 200)
        );
        for p in self.pods.lock().unwrap().iter() {
            for (what, c) in [("envoy", &p.envoy), ("app", &p.app)] {
                if let Some(c) = c {
                    eprintln!(
                        "===== {} {what} ({}) =====\n{}",
                        p.pod.name,
                        c.log_path()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                        tail(&c.log_tail(), 100)
                    );
                }
            }
        }
    }

    /// Stop every process (Envoys, apps, then the control plane) and remove every namespace.
    /// Idempotent; also done on drop.
    pub fn shutdown(&self) {
        self.cancel();
        let pods = std::mem::take(&mut *self.pods.lock().unwrap());
        // SIGTERM every Envoy first, so they drain in parallel, then reap each.
        for p in &pods {
            if let Some(e) = &p.envoy {
                e.signal(nix::sys::signal::Signal::SIGTERM);
            }
        }
        for mut p in pods {
            if let Some(mut e) = p.envoy.take() {
                e.grace = Duration::from_millis(500);
                e.stop();
            }
            drop(p.app.take());
        }
        if let Some(mut c) = self.control_plane.lock().unwrap().take() {
            c.grace = Duration::from_secs(2);
            c.stop();
        }
        self.plain_pods.lock().unwrap().clear();
        self.net.destroy();
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        self.shutdown();
        // The network's log directory goes when `net` drops.
    }
}

/// Accept connections on `listener` (in this process's namespace) and relay each to `target`
/// inside network namespace `netns`: the upstream socket is created on a thread that entered
/// that namespace, so nothing is routed into or out of the machine's own namespace. Runs until
/// the task is dropped. A connection whose upstream cannot be reached is closed.
pub async fn forward_into_netns(
    listener: tokio::net::TcpListener,
    netns: String,
    target: SocketAddr,
) {
    loop {
        let (mut inbound, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ns = netns.clone();
        tokio::spawn(async move {
            let connected =
                tokio::task::spawn_blocking(move || -> anyhow::Result<std::net::TcpStream> {
                    let s = podnet::in_netns(&ns, move || {
                        std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))
                    })??;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
                .await;
            let upstream = match connected {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, %target, error = %e, "upstream not reachable");
                    return;
                }
                Err(_) => return,
            };
            let Ok(mut upstream) = tokio::net::TcpStream::from_std(upstream) else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await;
        });
    }
}
