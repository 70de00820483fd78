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

mod envoy;
mod network;
#[cfg(test)]
mod tests;

pub use envoy::*;
pub use network::PodNetwork;
