//! The meshd under test: a child `meshd serve` on the work dir's config and state and the given
//! ports, ready once `/healthz/ready` answers, killed on drop; and what the report reads of it
//! (RSS and CPU from /proc, the jemalloc heap from its admin API).

use crate::Args;
use anyhow::{Context, bail};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(super) fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

/// Of the RSS, the private memory meshd allocated (`RssAnon`) and the pages mapped from files,
/// its own code most of all (`RssFile`: shared with every process running the same binary, and
/// dropped by the kernel under pressure, to be read again when run).
pub(super) fn rss_split_kb(pid: u32) -> (u64, u64) {
    (status_kb(pid, "RssAnon:"), status_kb(pid, "RssFile:"))
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub(super) fn cpu_seconds(pid: u32) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(") ")?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0)
}

/// meshd's heap in use (its `meshd_heap_allocated_bytes` metric), in KB.
pub(super) fn heap_kb(admin_port: u16) -> Option<u64> {
    metric(admin_port, "meshd_heap_allocated_bytes").map(|b| b as u64 / 1024)
}

/// One unlabelled series of meshd's `/metrics`.
pub(super) fn metric(admin_port: u16, name: &str) -> Option<f64> {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{admin_port}/metrics")])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

pub(super) struct Server {
    pub(super) child: Child,
    pub(super) args: Args,
}

impl Server {
    pub(super) fn start(args: &Args) -> anyhow::Result<(Server, Duration)> {
        let started = Instant::now();
        let mut cmd = Command::new(&args.meshd);
        die_with_parent(&mut cmd);
        cmd.arg("serve");
        if args.kube {
            // The cluster from KUBECONFIG (inherited); no webhooks to register.
            cmd.args(["--registry", "kubernetes", "--namespace", "meshd-system"])
                .args(["--webhook-config-name", "-"])
                .args(["--validating-webhook-config-name", "-"])
                .args(["--bind", "127.0.0.1"]);
        } else {
            cmd.arg("--config-dir").arg(args.work_dir.join("config"));
        }
        let child = cmd
            .arg("--state-dir")
            .arg(args.work_dir.join("state"))
            .args(["--xds-port", &args.xds_port.to_string()])
            .args(["--xds-tls-port", &args.xds_tls_port.to_string()])
            .args(["--admin-port", &args.admin_port.to_string()])
            .args(["--access-log", "false"])
            .env(
                "MESHD_LOG",
                // The bench API server's kubeconfig skips TLS verification (loopback only):
                // kube-client says so on every connection.
                std::env::var("MESHD_LOG")
                    .unwrap_or_else(|_| "warn,kube_client::client::tls=error".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", args.meshd.display()))?;
        let url = format!("http://127.0.0.1:{}/healthz/ready", args.admin_port);
        loop {
            if let Ok(out) = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &url])
                .status()
                && out.success()
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("meshd not ready within 60 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok((
            Server {
                child,
                args: args.clone(),
            },
            started.elapsed(),
        ))
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.args.no_restart;
        self.kill();
    }
}

/// The child (an Envoy, meshd) dies with this process even when it is SIGKILLed and no
/// destructor runs: a bench interrupted with Ctrl-C must not leave 200 Envoys behind. Spawn
/// from the main thread: the signal follows the spawning thread's exit.
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only prctl(2), which is async-signal-safe, runs.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}
