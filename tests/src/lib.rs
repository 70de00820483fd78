//! End-to-end harness: a control plane (`meshd serve`) in a node network namespace, and pods
//! (network namespaces) each running a workload behind a stock Envoy sidecar with Istio's
//! capture rules — all on this machine, all removed when the [`Mesh`] is dropped.
//!
//! ```no_run
//! use meshd_e2e::*;
//! use std::time::Duration;
//! let mesh = Mesh::start(MeshOptions::named("smoke")).unwrap();
//! mesh.write_config("services.yaml", "...").unwrap();
//! let a = mesh.add_sidecar_pod("frontend.voicecore-ai", ip(10), 8080).unwrap();
//! let (status, body) = a.get("http://billing-service.voicecore-ai.svc.cluster.local:8080/x").unwrap();
//! assert!(wait_until(Duration::from_secs(10), || a.envoy_stats().unwrap().contains("upstream_rq_200")));
//! ```
//!
//! Needs root, `ip`, `iptables-restore`, `setpriv` and Envoy (`scripts/install-tools.sh`), and
//! the `meshd` binary (`MESHD_BIN`, else `target/<profile>/meshd` next to the test executable;
//! `scripts/test.sh` builds it first).

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub use meshd::podnet::{
    self, Child, HttpResponse, Pod, PodNetwork, envoy_binary, in_netns, wait_until,
};

/// Default subnet of a mesh's pods: 10.44.0.0/24, gateway (node, control plane) 10.44.0.1.
pub const DEFAULT_SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 44, 0, 0), 24);
pub const XDS_PORT: u16 = 15010;
pub const ADMIN_PORT: u16 = 15014;
pub const ENVOY_ADMIN_PORT: u16 = 15000;
pub const PROXY_UID: u32 = 1337;

/// `10.44.0.<host>`: a pod address in the default subnet.
pub fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 44, 0, host)
}

/// Like [`wait_until`], but an error saying what did not happen.
pub fn wait_for(timeout: Duration, what: &str, f: impl FnMut() -> bool) -> anyhow::Result<()> {
    if wait_until(timeout, f) {
        Ok(())
    } else {
        bail!("timed out after {timeout:?} waiting for {what}")
    }
}

/// The `meshd` binary: `MESHD_BIN`, else `meshd` in the target directory of this test
/// executable (`target/debug/deps/<test>` → `target/debug/meshd`).
pub fn meshd_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("MESHD_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut candidates = Vec::new();
    if let Some(deps) = exe.parent() {
        if let Some(profile) = deps.parent() {
            candidates.push(profile.join("meshd"));
        }
        candidates.push(deps.join("meshd"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "meshd binary not found next to {} (run `cargo build --bin meshd` or set MESHD_BIN)",
                exe.display()
            )
        })
}

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

/// How to start a [`Mesh`].
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Short name, part of the namespace names (`<name><pid>n<seq>-<pod>`).
    pub name: String,
    /// Pod subnet; the gateway (`.1`) is the node namespace, where `meshd serve` binds.
    pub subnet: (Ipv4Addr, u8),
    /// Config files (name, YAML) written to the config dir before the control plane starts.
    pub configs: Vec<(String, String)>,
    /// Extra `meshd serve` arguments.
    pub serve_args: Vec<String>,
    /// Extra environment for `meshd serve`.
    pub env: Vec<(String, String)>,
    /// Start the control plane (else call [`Mesh::restart_control_plane`] later).
    pub start_control_plane: bool,
    /// How long to wait for readiness of the control plane and of each Envoy.
    pub ready_timeout: Duration,
    /// The `meshd` binary to run (default: [`meshd_bin`]).
    pub meshd_bin: Option<PathBuf>,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            name: "mesh".into(),
            subnet: DEFAULT_SUBNET,
            configs: Vec::new(),
            serve_args: Vec::new(),
            env: Vec::new(),
            start_control_plane: true,
            ready_timeout: Duration::from_secs(30),
            meshd_bin: None,
        }
    }
}

impl MeshOptions {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            ..Default::default()
        }
    }
    pub fn config(mut self, file: &str, yaml: &str) -> Self {
        self.configs.push((file.into(), yaml.into()));
        self
    }
    pub fn serve_arg(mut self, arg: &str) -> Self {
        self.serve_args.push(arg.into());
        self
    }
}

/// How to start one sidecar pod.
#[derive(Debug, Clone)]
pub struct SidecarOptions {
    /// Wait for Envoy's `/ready` (it is LIVE once its initial xDS fetch completed).
    pub wait_ready: bool,
    /// Start the workload app (`meshd workload`).
    pub start_app: bool,
    /// Envoy log level.
    pub log_level: String,
    /// Extra `meshd bootstrap` arguments.
    pub bootstrap_args: Vec<String>,
    /// Extra Envoy arguments.
    pub envoy_args: Vec<String>,
    /// `meshd init-iptables` arguments.
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

/// A pod with a workload behind an Envoy sidecar. Cheap to clone; the [`Mesh`] owns the
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

/// A running mesh: control plane plus sidecar pods. Everything stops and is removed on drop;
/// when dropped during a panic, the logs of every process are printed first.
pub struct Mesh {
    opts: MeshOptions,
    meshd: PathBuf,
    envoy: PathBuf,
    dir: tempfile::TempDir,
    config_dir: PathBuf,
    state_dir: PathBuf,
    control_plane: Mutex<Option<Child>>,
    cp_log: PathBuf,
    pods: Mutex<Vec<PodProcs>>,
    plain_pods: Mutex<Vec<Pod>>,
    net: PodNetwork,
}

static MESH_SEQ: AtomicU32 = AtomicU32::new(0);

impl Mesh {
    /// Create the network, write `opts.configs`, start `meshd serve` in the node namespace and
    /// wait for `/healthz/ready`.
    pub fn start(opts: MeshOptions) -> anyhow::Result<Mesh> {
        let meshd = match &opts.meshd_bin {
            Some(p) => p.clone(),
            None => meshd_bin()?,
        };
        let envoy = envoy_binary()?;
        let short: String = opts
            .name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(10)
            .collect();
        let prefix = format!(
            "{short}{}n{}",
            std::process::id(),
            MESH_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("meshd-e2e-{prefix}-"))
            .tempdir()?;
        chmod(dir.path(), 0o755)?;
        let config_dir = dir.path().join("config");
        let state_dir = dir.path().join("state");
        fs::create_dir_all(&config_dir)?;
        fs::create_dir_all(&state_dir)?;
        fs::create_dir_all(dir.path().join("pods"))?;
        chmod(&dir.path().join("pods"), 0o755)?;
        let net = PodNetwork::create(&prefix, opts.subnet)?;
        let cp_log = net.log_dir().join("meshd-serve.log");
        let mesh = Mesh {
            meshd,
            envoy,
            dir,
            config_dir,
            state_dir,
            control_plane: Mutex::new(None),
            cp_log,
            pods: Mutex::new(Vec::new()),
            plain_pods: Mutex::new(Vec::new()),
            net,
            opts,
        };
        for (file, yaml) in mesh.opts.configs.clone() {
            mesh.write_config(&file, &yaml)?;
        }
        if mesh.opts.start_control_plane {
            mesh.restart_control_plane()?;
        }
        Ok(mesh)
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

    pub fn admin_url(&self) -> String {
        format!("http://{}:{ADMIN_PORT}", self.gateway())
    }

    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn meshd_bin(&self) -> &Path {
        &self.meshd
    }

    pub fn envoy_bin(&self) -> &Path {
        &self.envoy
    }

    /// Write (atomically: temp file + rename) a config file into the watched config dir.
    pub fn write_config(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        let target = self.config_dir.join(file);
        let tmp = self.config_dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, yaml)?;
        fs::rename(&tmp, &target)?;
        Ok(())
    }

    pub fn remove_config(&self, file: &str) -> anyhow::Result<()> {
        fs::remove_file(self.config_dir.join(file))?;
        Ok(())
    }

    /// Host entries (name → VIP) every pod resolves (via `/etc/hosts` and in [`Pod::get`]).
    pub fn set_hosts<S: AsRef<str>>(&self, entries: &[(S, Ipv4Addr)]) -> anyhow::Result<()> {
        self.net.set_hosts(entries)
    }

    /// GET a path of the control plane's admin API (from the node namespace).
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

    /// Stop (SIGTERM) the control plane if it runs, start it again with the same flags and
    /// state, and wait until it is ready.
    pub fn restart_control_plane(&self) -> anyhow::Result<()> {
        if let Some(mut c) = self.control_plane.lock().unwrap().take() {
            c.stop();
        }
        let gw = self.gateway().to_string();
        let mut cmd = self.node().exec([self.meshd.as_os_str()]);
        cmd.args(["serve", "--bind", &gw, "--config-dir"])
            .arg(&self.config_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--debounce-ms", "50"])
            .args(&self.opts.serve_args)
            .current_dir(self.dir.path());
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

    /// A pod without sidecar or capture rules (a plain client or server).
    pub fn add_plain_pod(&self, name: &str, addr: Ipv4Addr) -> anyhow::Result<Pod> {
        let pod = self.net.add_pod(name, addr)?;
        self.plain_pods.lock().unwrap().push(pod.clone());
        Ok(pod)
    }

    /// [`Mesh::add_sidecar_pod_with`] with default options.
    pub fn add_sidecar_pod(
        &self,
        workload: &str,
        addr: Ipv4Addr,
        app_port: u16,
    ) -> anyhow::Result<SidecarPod> {
        self.add_sidecar_pod_with(workload, addr, app_port, SidecarOptions::default())
    }

    /// Create pod `name` for `workload` (`name.namespace`): capture rules (`meshd
    /// init-iptables`), bootstrap (`meshd bootstrap`), the workload app (`meshd workload`, as
    /// root, so its traffic is captured) and Envoy as uid 1337.
    pub fn add_sidecar_pod_with(
        &self,
        workload: &str,
        addr: Ipv4Addr,
        app_port: u16,
        opts: SidecarOptions,
    ) -> anyhow::Result<SidecarPod> {
        let (name, namespace) = workload
            .split_once('.')
            .with_context(|| format!("workload {workload:?} is not name.namespace"))?;
        let pod = self.net.add_pod(name, addr)?;
        let dir = self.dir.path().join("pods").join(name);
        fs::create_dir_all(&dir)?;
        chmod(&dir, 0o755)?;
        let meshd = self.meshd.to_string_lossy().into_owned();

        let mut argv = vec![meshd.clone(), "init-iptables".into()];
        argv.extend(opts.iptables_args.iter().cloned());
        pod.run(&argv)
            .with_context(|| format!("capture rules in pod {name}"))?;

        let bootstrap = dir.join("envoy-bootstrap.yaml");
        let mut cmd = pod.exec([&meshd, "bootstrap", "--workload", workload, "--xds-address"]);
        cmd.arg(self.xds_address())
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--config-dir")
            .arg(&self.config_dir)
            .arg("--out")
            .arg(&bootstrap)
            .args(&opts.bootstrap_args)
            .current_dir(self.dir.path());
        podnet::run_cmd(&mut cmd).with_context(|| format!("bootstrap for {workload}"))?;
        std::os::unix::fs::chown(&bootstrap, Some(PROXY_UID), Some(PROXY_UID))?;
        let mode = fs::metadata(&bootstrap)?.permissions().mode();
        chmod(&bootstrap, mode | 0o400)?;

        let sidecar = SidecarPod {
            pod: pod.clone(),
            workload: workload.to_string(),
            name: name.to_string(),
            namespace: namespace.to_string(),
            app_port,
            bootstrap: bootstrap.clone(),
            dir: dir.clone(),
        };
        let mut procs = PodProcs {
            pod: sidecar.clone(),
            app: None,
            envoy: None,
            envoy_argv: Vec::new(),
        };

        if opts.start_app {
            let port = app_port.to_string();
            let mut app =
                pod.spawn([meshd.as_str(), "workload", "--name", name, "--port", &port])?;
            app.grace = Duration::from_millis(500);
            procs.app = Some(app);
            let port = app_port;
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
            self.envoy.to_string_lossy().into_owned(),
            "--disable-hot-restart".into(),
            "-c".into(),
            bootstrap.to_string_lossy().into_owned(),
            "--log-level".into(),
            opts.log_level.clone(),
        ];
        envoy_argv.extend(opts.envoy_args.iter().cloned());
        procs.envoy_argv = envoy_argv;
        procs.envoy = Some(self.spawn_envoy(&sidecar, &procs.envoy_argv)?);
        let envoy_log = procs.envoy.as_ref().unwrap().log_path().map(PathBuf::from);
        self.pods.lock().unwrap().push(procs);

        if opts.wait_ready {
            self.wait_envoy_ready(&sidecar, envoy_log.as_deref())?;
        }
        Ok(sidecar)
    }

    fn spawn_envoy(&self, pod: &SidecarPod, argv: &[String]) -> anyhow::Result<Child> {
        let mut cmd = pod.exec_as(PROXY_UID, PROXY_UID, argv);
        cmd.current_dir(&pod.dir);
        let log = self.net.log_dir().join(format!(
            "{}-envoy-{}.log",
            pod.name,
            MESH_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut c = Child::spawn(&format!("{}:envoy", pod.name), cmd, Some(log))?;
        c.grace = Duration::from_secs(2);
        Ok(c)
    }

    fn wait_envoy_ready(&self, pod: &SidecarPod, log: Option<&Path>) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            if pod.envoy_ready() {
                return Ok(());
            }
            let log_text = || {
                log.map(|l| tail(&fs::read_to_string(l).unwrap_or_default(), 60))
                    .unwrap_or_default()
            };
            if !self.envoy_running(&pod.name) {
                bail!("Envoy in pod {} exited; log:\n{}", pod.name, log_text());
            }
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

    fn envoy_running(&self, name: &str) -> bool {
        self.pods
            .lock()
            .unwrap()
            .iter_mut()
            .find(|p| p.pod.name == name)
            .and_then(|p| p.envoy.as_mut())
            .is_some_and(Child::is_running)
    }

    /// The sidecar pod named `name`.
    pub fn sidecar(&self, name: &str) -> Option<SidecarPod> {
        self.pods
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.pod.name == name)
            .map(|p| p.pod.clone())
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
        let log = child.log_path().map(PathBuf::from);
        {
            let mut pods = self.pods.lock().unwrap();
            let p = pods.iter_mut().find(|p| p.pod.name == name).unwrap();
            p.envoy = Some(child);
        }
        self.wait_envoy_ready(&pod, log.as_deref())
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

    /// Print the tail of every process's log to stderr (done automatically on a failed test).
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
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let pods = std::mem::take(&mut *self.pods.lock().unwrap());
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
        // The network (and with it every namespace) goes when the fields drop.
    }
}
