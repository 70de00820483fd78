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

/// A pod with a workload behind an Envoy sidecar (or, from [`LocalMesh::add_gateway_pod`], a
/// gateway Envoy alone; its `app_port` is then 0). Cheap to clone; the [`LocalMesh`] owns the
/// processes. Derefs to its [`Pod`] (`get`, `request`, `run`, `in_netns`, ...).
#[derive(Debug, Clone)]
pub struct SidecarPod {
    pub pod: Pod,
    /// `name.namespace`.
    pub workload: String,
    pub name: String,
    pub namespace: String,
    pub app_port: u16,
    /// The Envoy bootstrap file written by `meshd bootstrap`.
    pub bootstrap: PathBuf,
    pub dir: PathBuf,
}

impl std::ops::Deref for SidecarPod {
    type Target = Pod;
    fn deref(&self) -> &Pod {
        &self.pod
    }
}

impl SidecarPod {
    pub fn ip(&self) -> Ipv4Addr {
        self.pod.ip
    }

    /// GET a path of Envoy's admin interface.
    pub fn envoy_admin(&self, path: &str) -> anyhow::Result<(u16, String)> {
        envoy_admin_get(&self.pod, path)
    }

    /// Envoy's `/config_dump` (with EDS), parsed.
    pub fn envoy_config_dump(&self) -> anyhow::Result<serde_json::Value> {
        let (s, body) = self.envoy_admin("/config_dump?include_eds")?;
        if s != 200 {
            bail!("config_dump: HTTP {s}: {body}");
        }
        serde_json::from_str(&body).context("config_dump is not JSON")
    }

    /// Envoy's `/stats` (text).
    pub fn envoy_stats(&self) -> anyhow::Result<String> {
        let (s, body) = self.envoy_admin("/stats")?;
        if s != 200 {
            bail!("stats: HTTP {s}: {body}");
        }
        Ok(body)
    }

    /// One counter or gauge from `/stats` (exact name), if present.
    pub fn envoy_stat(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let stats = self.envoy_stats()?;
        Ok(stats.lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        }))
    }

    /// Whether Envoy's `/ready` answers 200.
    pub fn envoy_ready(&self) -> bool {
        matches!(self.envoy_admin("/ready"), Ok((200, _)))
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

    /// A pod without sidecar or capture rules (a plain client or server).
    pub fn add_plain_pod(&self, name: &str, addr: Ipv4Addr) -> anyhow::Result<Pod> {
        let pod = self.net.add_pod(name, addr)?;
        self.plain_pods.lock().unwrap().push(pod.clone());
        Ok(pod)
    }

    /// Create pod `name` for `workload` (`name.namespace`): capture rules (`meshd
    /// init-iptables`), bootstrap (`meshd bootstrap`), the workload app (`meshd workload`, as
    /// root, so its traffic is captured) on `app_port` and Envoy as uid 1337.
    pub fn add_sidecar_pod_with(
        &self,
        workload: &str,
        addr: Ipv4Addr,
        app_port: u16,
        opts: SidecarOptions,
    ) -> anyhow::Result<SidecarPod> {
        let name = workload.split_once('.').map_or(workload, |(n, _)| n);
        self.add_proxy_pod(workload, addr, Some((name.to_string(), app_port)), opts)
    }

    /// Like [`LocalMesh::add_sidecar_pod_with`], with the app answering as `app_name` (e.g. the
    /// service name, where the pod is named after the workload).
    pub fn add_service_pod_with(
        &self,
        workload: &str,
        addr: Ipv4Addr,
        app_name: &str,
        app_port: u16,
        opts: SidecarOptions,
    ) -> anyhow::Result<SidecarPod> {
        self.add_proxy_pod(workload, addr, Some((app_name.to_string(), app_port)), opts)
    }

    /// Create pod `name` for gateway workload `workload` (`name.namespace`, a WorkloadEntry
    /// labelled `istio: ...gateway`): `meshd bootstrap` (router mode) and Envoy as uid 1337; no
    /// capture rules, no app. Of `opts`, `start_app` and `iptables_args` are ignored.
    pub fn add_gateway_pod_with(
        &self,
        workload: &str,
        addr: Ipv4Addr,
        opts: SidecarOptions,
    ) -> anyhow::Result<SidecarPod> {
        self.add_proxy_pod(workload, addr, None, opts)
    }

    /// [`LocalMesh::add_gateway_pod_with`] with default options.
    pub fn add_gateway_pod(&self, workload: &str, addr: Ipv4Addr) -> anyhow::Result<SidecarPod> {
        self.add_gateway_pod_with(workload, addr, SidecarOptions::default())
    }

    fn add_proxy_pod(
        &self,
        workload: &str,
        addr: Ipv4Addr,
        app: Option<(String, u16)>,
        opts: SidecarOptions,
    ) -> anyhow::Result<SidecarPod> {
        self.check_cancelled()?;
        let (name, namespace) = workload
            .split_once('.')
            .with_context(|| format!("workload {workload:?} is not name.namespace"))?;
        let pod = self.net.add_pod(name, addr)?;
        let dir = self.opts.work_dir.join("pods").join(name);
        fs::create_dir_all(&dir)?;
        chmod(&dir, 0o755)?;
        let meshd = self.opts.meshd_bin.to_string_lossy().into_owned();

        if app.is_some() {
            let mut argv = vec![meshd.clone(), "init-iptables".into()];
            argv.extend(opts.iptables_args.iter().cloned());
            pod.run(&argv)
                .with_context(|| format!("capture rules in pod {name}"))?;
        }

        let bootstrap = dir.join("envoy-bootstrap.yaml");
        let mut cmd = pod.exec([&meshd, "bootstrap", "--workload", workload, "--xds-address"]);
        cmd.arg(self.xds_address())
            .arg("--state-dir")
            .arg(&self.opts.state_dir);
        if let Some(config_dir) = &self.opts.config_dir {
            cmd.arg("--config-dir").arg(config_dir);
        }
        cmd.arg("--out")
            .arg(&bootstrap)
            .args(&opts.bootstrap_args)
            .current_dir(&self.opts.work_dir);
        podnet::run_cmd(&mut cmd).with_context(|| format!("bootstrap for {workload}"))?;
        std::os::unix::fs::chown(&bootstrap, Some(PROXY_UID), Some(PROXY_UID))?;
        let mode = fs::metadata(&bootstrap)?.permissions().mode();
        chmod(&bootstrap, mode | 0o400)?;

        let sidecar = SidecarPod {
            pod: pod.clone(),
            workload: workload.to_string(),
            name: name.to_string(),
            namespace: namespace.to_string(),
            app_port: app.as_ref().map_or(0, |(_, port)| *port),
            bootstrap: bootstrap.clone(),
            dir: dir.clone(),
        };
        let mut procs = PodProcs {
            pod: sidecar.clone(),
            app: None,
            envoy: None,
            envoy_argv: Vec::new(),
        };

        if let Some((app_name, port)) = app.filter(|_| opts.start_app) {
            let port_s = port.to_string();
            let mut app = pod.spawn([
                meshd.as_str(),
                "workload",
                "--name",
                &app_name,
                "--port",
                &port_s,
            ])?;
            app.grace = Duration::from_millis(500);
            procs.app = Some(app);
            let up = wait_until(Duration::from_secs(10), || {
                pod.in_netns(|| std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok())
                    .unwrap_or(false)
            });
            if !up {
                let log = procs.app.as_ref().map(Child::log_tail).unwrap_or_default();
                bail!("workload app in pod {name} not listening on {port}; log:\n{log}");
            }
        }

        let mut envoy_argv = vec![
            self.opts.envoy_bin.to_string_lossy().into_owned(),
            "--disable-hot-restart".into(),
            // As Istio runs its sidecars: when a listener's filter chain changes (an
            // AuthorizationPolicy, a PeerAuthentication mode), connections on the old chain are
            // told to close at once (HTTP/1.1 `connection: close`, HTTP/2 GOAWAY) instead of
            // lingering, with the old policy, through Envoy's default 600 s gradual drain.
            "--drain-strategy".into(),
            "immediate".into(),
            "--drain-time-s".into(),
            "45".into(),
            "-c".into(),
            bootstrap.to_string_lossy().into_owned(),
            "--log-level".into(),
            opts.log_level.clone(),
        ];
        envoy_argv.extend(opts.envoy_args.iter().cloned());
        procs.envoy_argv = envoy_argv;
        procs.envoy = Some(self.spawn_envoy(&sidecar, &procs.envoy_argv)?);
        self.pods.lock().unwrap().push(procs);

        if opts.wait_ready {
            self.wait_envoy_ready(&sidecar)?;
        }
        Ok(sidecar)
    }

    fn spawn_envoy(&self, pod: &SidecarPod, argv: &[String]) -> anyhow::Result<Child> {
        let mut cmd = pod.exec_as(PROXY_UID, PROXY_UID, argv);
        cmd.current_dir(&pod.dir);
        let log = self.net.log_dir().join(format!(
            "{}-envoy-{}.log",
            pod.name,
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut c = Child::spawn(&format!("{}:envoy", pod.name), cmd, Some(log))?;
        c.grace = Duration::from_secs(2);
        Ok(c)
    }

    /// Wait until the Envoy of `pod` answers `/ready` (error with its log if it exits or the
    /// readiness timeout passes).
    pub fn wait_envoy_ready(&self, pod: &SidecarPod) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            if pod.envoy_ready() {
                return Ok(());
            }
            let log_text = || tail(&self.envoy_log(&pod.name), 60);
            if !self.envoy_running(&pod.name) {
                bail!("Envoy in pod {} exited; log:\n{}", pod.name, log_text());
            }
            self.check_cancelled()?;
            if Instant::now() > deadline {
                bail!(
                    "Envoy in pod {} not ready after {:?}; log:\n{}\ncontrol plane log:\n{}",
                    pod.name,
                    self.opts.ready_timeout,
                    log_text(),
                    tail(&self.control_plane_log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the Envoy of pod `name` is running.
    pub fn envoy_running(&self, name: &str) -> bool {
        self.pods
            .lock()
            .unwrap()
            .iter_mut()
            .find(|p| p.pod.name == name)
            .and_then(|p| p.envoy.as_mut())
            .is_some_and(Child::is_running)
    }

    /// The sidecar (or gateway) pod named `name`.
    pub fn sidecar(&self, name: &str) -> Option<SidecarPod> {
        self.pods
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.pod.name == name)
            .map(|p| p.pod.clone())
    }

    /// Every sidecar and gateway pod, in the order they were added.
    pub fn sidecars(&self) -> Vec<SidecarPod> {
        self.pods
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.pod.clone())
            .collect()
    }

    /// Names of the pods whose Envoy or app is not running (any more).
    pub fn exited(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.pods.lock().unwrap().iter_mut() {
            if let Some(e) = p.envoy.as_mut()
                && !e.is_running()
            {
                out.push(format!("{} (envoy)", p.pod.name));
            }
            if let Some(a) = p.app.as_mut()
                && !a.is_running()
            {
                out.push(format!("{} (app)", p.pod.name));
            }
        }
        out
    }

    /// Stop (SIGTERM) the Envoy of pod `name`.
    pub fn stop_envoy(&self, name: &str) -> anyhow::Result<()> {
        let mut pods = self.pods.lock().unwrap();
        let p = pods
            .iter_mut()
            .find(|p| p.pod.name == name)
            .with_context(|| format!("no sidecar pod {name}"))?;
        if let Some(mut e) = p.envoy.take() {
            e.stop();
        }
        Ok(())
    }

    /// Restart the Envoy of pod `name` with the same bootstrap and wait until it is ready.
    pub fn restart_envoy(&self, name: &str) -> anyhow::Result<()> {
        self.stop_envoy(name)?;
        let (pod, argv) = {
            let pods = self.pods.lock().unwrap();
            let p = pods.iter().find(|p| p.pod.name == name).unwrap();
            (p.pod.clone(), p.envoy_argv.clone())
        };
        let child = self.spawn_envoy(&pod, &argv)?;
        {
            let mut pods = self.pods.lock().unwrap();
            let p = pods.iter_mut().find(|p| p.pod.name == name).unwrap();
            p.envoy = Some(child);
        }
        self.wait_envoy_ready(&pod)
    }

    /// The Envoy log of pod `name` so far.
    pub fn envoy_log(&self, name: &str) -> String {
        self.pods
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.pod.name == name)
            .and_then(|p| p.envoy.as_ref())
            .map(Child::log_tail)
            .unwrap_or_default()
    }

    /// The workload app log of pod `name` so far.
    pub fn app_log(&self, name: &str) -> String {
        self.pods
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.pod.name == name)
            .and_then(|p| p.app.as_ref())
            .map(Child::log_tail)
            .unwrap_or_default()
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
