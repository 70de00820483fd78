//! End-to-end harness: a control plane (`meshd serve`) in a node network namespace, and pods
//! (network namespaces) each running a workload behind a stock Envoy sidecar with Istio's
//! capture rules — all on this machine, all removed when the [`Mesh`] is dropped.
//!
//! A thin layer over [`meshd_localmesh::mesh`] (the one shared harness, also behind `meshd demo`):
//! it adds a temporary directory with a watched config dir and CA state, finds the `meshd`
//! binary, and names namespaces uniquely per test.
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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

pub use meshd_localmesh::mesh::{
    ADMIN_PORT, DEFAULT_SUBNET, ENVOY_ADMIN_PORT, LocalMesh, LocalMeshOptions, PROXY_UID,
    SidecarOptions, SidecarPod, XDS_PORT, envoy_admin_get, forward_into_netns, tail,
};
pub use meshd_localmesh::podnet::{
    self, Child, HttpResponse, Pod, PodNetwork, envoy_binary, in_netns, wait_until,
};

mod evidence;
pub use evidence::*;

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

/// A running mesh: control plane plus sidecar pods, with a watched config dir of its own.
/// Everything stops and is removed on drop; when dropped during a panic, the logs of every
/// process are printed first. Derefs to the [`LocalMesh`] it is built on.
pub struct Mesh {
    // Dropped before `dir`: processes stop and namespaces go before the files do.
    local: LocalMesh,
    config_dir: PathBuf,
    dir: tempfile::TempDir,
}

static MESH_SEQ: AtomicU32 = AtomicU32::new(0);

impl std::ops::Deref for Mesh {
    type Target = LocalMesh;
    fn deref(&self) -> &LocalMesh {
        &self.local
    }
}

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
        let config_dir = dir.path().join("config");
        fs::create_dir_all(&config_dir)?;
        let mut serve_args = vec!["--debounce-ms".to_string(), "50".to_string()];
        serve_args.extend(opts.serve_args.iter().cloned());
        let local = LocalMesh::create(LocalMeshOptions {
            prefix,
            subnet: opts.subnet,
            meshd_bin: meshd,
            envoy_bin: envoy,
            work_dir: dir.path().to_path_buf(),
            config_dir: Some(config_dir.clone()),
            state_dir: dir.path().join("state"),
            serve_args,
            env: opts.env.clone(),
            ready_timeout: opts.ready_timeout,
        })?;
        let mesh = Mesh {
            local,
            config_dir,
            dir,
        };
        for (file, yaml) in &opts.configs {
            mesh.write_config(file, yaml)?;
        }
        if opts.start_control_plane {
            mesh.restart_control_plane()?;
        }
        Ok(mesh)
    }

    /// The [`LocalMesh`] this mesh is built on.
    pub fn local(&self) -> &LocalMesh {
        &self.local
    }

    /// The temporary directory holding config, state and pod files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The watched config dir (`meshd serve --config-dir`).
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
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

    pub fn network(&self) -> &PodNetwork {
        self.local.network()
    }

    /// The node namespace (where the control plane runs), as a pod.
    pub fn node(&self) -> Pod {
        self.local.node()
    }

    /// The control plane's address (the bridge gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        self.local.gateway()
    }

    pub fn xds_address(&self) -> String {
        self.local.xds_address()
    }

    /// The admin API over the node namespace's loopback (trusted: `/debug/*` answers).
    pub fn admin_url(&self) -> String {
        self.local.admin_url()
    }

    /// The admin API at the gateway address, as an off-host caller (a pod) reaches it.
    pub fn admin_url_off_host(&self) -> String {
        self.local.admin_url_off_host()
    }

    pub fn state_dir(&self) -> &Path {
        self.local.state_dir()
    }

    pub fn meshd_bin(&self) -> &Path {
        self.local.meshd_bin()
    }

    pub fn envoy_bin(&self) -> &Path {
        self.local.envoy_bin()
    }

    /// Host entries (name → VIP) every pod resolves (via `/etc/hosts` and in [`Pod::get`]).
    pub fn set_hosts<S: AsRef<str>>(&self, entries: &[(S, Ipv4Addr)]) -> anyhow::Result<()> {
        self.local.set_hosts(entries)
    }

    /// GET a path of the control plane's admin API (from the node namespace).
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        self.local.admin_get(path)
    }

    /// GET a path of the admin API and parse it as JSON (error unless 200).
    pub fn admin_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.local.admin_json(path)
    }

    /// Whether `/healthz/ready` answers 200.
    pub fn control_plane_ready(&self) -> bool {
        self.local.control_plane_ready()
    }

    pub fn control_plane_running(&self) -> bool {
        self.local.control_plane_running()
    }

    /// SIGKILL the control plane (no cleanup on its side).
    pub fn kill_control_plane(&self) {
        self.local.kill_control_plane()
    }

    /// Stop (SIGTERM) the control plane if it runs, start it again with the same flags and
    /// state, and wait until it is ready.
    pub fn restart_control_plane(&self) -> anyhow::Result<()> {
        self.local.restart_control_plane()
    }

    pub fn control_plane_log(&self) -> String {
        self.local.control_plane_log()
    }

    /// A pod without sidecar or capture rules (a plain client or server).
    pub fn add_plain_pod(&self, name: &str, addr: Ipv4Addr) -> anyhow::Result<Pod> {
        self.local.add_plain_pod(name, addr)
    }

    /// An ingress gateway pod for gateway workload `workload` (`name.namespace`): `meshd
    /// bootstrap` (router mode) and Envoy as uid 1337, no capture rules, no app.
    pub fn add_gateway_pod(&self, workload: &str, addr: Ipv4Addr) -> anyhow::Result<SidecarPod> {
        self.local.add_gateway_pod(workload, addr)
    }

    /// The sidecar pod named `name`.
    pub fn sidecar(&self, name: &str) -> Option<SidecarPod> {
        self.local.sidecar(name)
    }

    /// Stop (SIGTERM) the Envoy of pod `name`.
    pub fn stop_envoy(&self, name: &str) -> anyhow::Result<()> {
        self.local.stop_envoy(name)
    }

    /// Restart the Envoy of pod `name` with the same bootstrap and wait until it is ready.
    pub fn restart_envoy(&self, name: &str) -> anyhow::Result<()> {
        self.local.restart_envoy(name)
    }

    /// The Envoy log of pod `name` so far.
    pub fn envoy_log(&self, name: &str) -> String {
        self.local.envoy_log(name)
    }

    /// The workload app log of pod `name` so far.
    pub fn app_log(&self, name: &str) -> String {
        self.local.app_log(name)
    }

    /// Print the tail of every process's log to stderr (done automatically on a failed test).
    pub fn dump_logs(&self) {
        self.local.dump_logs()
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
        self.local
            .add_sidecar_pod_with(workload, addr, app_port, opts)
    }
}
