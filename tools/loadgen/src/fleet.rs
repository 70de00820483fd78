//! `--envoys N`: a fleet of N real stock Envoys (the `--envoy` binary) on the synthetic mesh,
//! each its own workload and node id (the WorkloadEntries after the P simulated ones), its own
//! admin port on loopback (`26000 + i`), `--concurrency 1`, log level `warn` and
//! `--use-dynamic-base-id`, so they coexist in one network namespace. Their bootstraps are
//! `meshd bootstrap`'s (Delta xDS with `--delta`, else SotW, as the simulated proxies) plus a
//! stats inclusion list as in Istio's sidecar bootstrap (`cluster_manager.`, `listener_manager.`,
//! `control_plane.`, `server.`, `cluster.xds-grpc.`): per-cluster stats would make each Envoy
//! several times bigger and every admin poll slow.
//!
//! Measured from the Envoys' own admin endpoints, beside meshd's `/debug/syncz`
//! (`fleet_view.rs` reads both):
//! - **synced**: an Envoy is synced when its `control_plane.connected_state` is 1, its
//!   `cluster_manager.cds.version_text` and `listener_manager.lds.version_text` equal the CDS
//!   and LDS versions meshd last sent that node (`sent_version` in `/debug/syncz`), nothing is
//!   warming (`cluster_manager.warming_clusters` and `listener_manager.total_listeners_warming`
//!   are 0: every cluster has its endpoints, every listener its routes), and meshd shows every
//!   type of that node SYNCED (the Envoy ACKed what was sent, EDS/RDS/SDS included). Reported:
//!   time from spawning all N until each is synced;
//! - meshd's RSS with the N connected (and the Envoys' own private memory);
//! - **convergence**: one write of the services file raising the `maxConnections` of service
//!   0's DestinationRule (with `--sidecar-scoping`, of the first service of every namespace, so
//!   each Envoy sees one) → for each Envoy, time from the write to the first poll of its stats
//!   showing a new CDS version whose `/config_dump` has every cluster of that service carrying
//!   the new value (the version read again after the dump, so the dump is of that version).
//!   Each figure is late by at most one poll round (printed);
//! - **resync**: meshd SIGKILLed and restarted → time until every Envoy is synced again with
//!   the new process (its syncz lists only streams opened to it: each Envoy reconnected).
//!
//! Every Envoy is SIGKILLed and reaped when the fleet is dropped (the tool ends or fails), and
//! dies with the tool even when the tool is killed (parent-death signal). A wait that runs out
//! names the Envoys not synced and what they and meshd show; the tool then exits non-zero.

use crate::fleet_view::{EnvoyView, MeshdView, bump_max_connections, max_connections_in};
use crate::server::{Server, cpu_seconds, rss_kb};
use crate::{Args, mesh, ms, pct};
use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN_BASE: u16 = 26000;
/// The Envoy stats an admin poll reads, exactly these.
const STATS_FILTER: &str = r"^(control_plane\.connected_state|cluster_manager\.(cds\.version_text|warming_clusters)|listener_manager\.(lds\.version_text|total_listeners_warming))$";
/// How many Envoys are polled at once: enough to sweep 200 in a few rounds, few enough that
/// the polling does not take the CPU meshd and the Envoys need.
const POLL_CONCURRENCY: usize = 16;
const POLL_PAUSE: Duration = Duration::from_millis(20);

struct Envoy {
    node_id: String,
    admin: u16,
    log: PathBuf,
    child: Child,
}

/// The running Envoys; dropping it kills and reaps every one.
pub(crate) struct Fleet {
    envoys: Vec<Envoy>,
    http: reqwest::Client,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for e in &mut self.envoys {
            let _ = e.child.kill();
        }
        for e in &mut self.envoys {
            let _ = e.child.wait();
        }
    }
}

/// Envoy `i`'s workload: the WorkloadEntries after the P simulated proxies' (the shape holds
/// P + N of them).
fn workload_of(i: usize, args: &Args, shape: &mesh::Shape) -> (String, String, String) {
    let w = args.proxies + i;
    let (name, ns, _) = mesh::workload(w, shape);
    let node_id = meshd_xds::NodeId::format(
        meshd_xds::NodeType::Sidecar,
        &mesh::workload_ip(w),
        &name,
        &ns,
    );
    (name, ns, node_id)
}

/// `meshd bootstrap` for one Envoy, with the stats inclusion list (see the module doc).
fn write_bootstrap(
    args: &Args,
    name: &str,
    ns: &str,
    admin: u16,
    out: &Path,
) -> anyhow::Result<()> {
    let status = Command::new(&args.meshd)
        .args(["bootstrap", "--workload", &format!("{name}.{ns}")])
        .arg("--out")
        .arg(out)
        .arg("--state-dir")
        .arg(args.work_dir.join("state"))
        .arg("--config-dir")
        .arg(args.work_dir.join("config"))
        .args(["--xds-address", &format!("127.0.0.1:{}", args.xds_port)])
        .args(["--admin-port", &admin.to_string()])
        .arg(format!("--delta={}", args.delta))
        .env("MESHD_LOG", "warn")
        .status()
        .context("running meshd bootstrap")?;
    if !status.success() {
        bail!("meshd bootstrap --workload {name}.{ns} failed ({status})");
    }
    let text = std::fs::read_to_string(out)?;
    let mut boot: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", out.display()))?;
    let prefixes = [
        "cluster_manager.",
        "listener_manager.",
        "control_plane.",
        "server.",
        "cluster.xds-grpc.",
    ];
    boot["stats_config"]["stats_matcher"] = json!({"inclusion_list": {"patterns":
        prefixes.iter().map(|p| json!({"prefix": p})).collect::<Vec<_>>()}});
    std::fs::write(out, serde_json::to_vec(&boot)?)?;
    Ok(())
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

impl Fleet {
    /// Writes every bootstrap first (not timed), then spawns all N Envoys; returns the fleet
    /// and the instant the first was spawned.
    fn start(args: &Args, envoy: &Path, shape: &mesh::Shape) -> anyhow::Result<(Fleet, Instant)> {
        let dir = args.work_dir.join("fleet");
        std::fs::create_dir_all(&dir)?;
        if usize::from(ADMIN_BASE) + args.envoys > usize::from(u16::MAX) {
            bail!(
                "--envoys {}: admin ports from {ADMIN_BASE} run past 65535",
                args.envoys
            );
        }
        let mut planned = Vec::with_capacity(args.envoys);
        for i in 0..args.envoys {
            let (name, ns, node_id) = workload_of(i, args, shape);
            let admin = ADMIN_BASE + i as u16;
            let boot = dir.join(format!("envoy-{i}.json"));
            write_bootstrap(args, &name, &ns, admin, &boot)?;
            planned.push((node_id, admin, boot, dir.join(format!("envoy-{i}.log"))));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()?;
        let mut fleet = Fleet {
            envoys: Vec::with_capacity(args.envoys),
            http,
        };
        let started = Instant::now();
        for (i, (node_id, admin, boot, log)) in planned.into_iter().enumerate() {
            let mut cmd = Command::new(envoy);
            cmd.args(["--concurrency", "1", "--log-level", "warn"])
                .args(["--use-dynamic-base-id", "--disable-hot-restart", "-c"])
                .arg(&boot)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?);
            die_with_parent(&mut cmd);
            let child = cmd
                .spawn()
                .with_context(|| format!("starting Envoy {i} ({})", envoy.display()))?;
            fleet.envoys.push(Envoy {
                node_id,
                admin,
                log,
                child,
            });
        }
        Ok((fleet, started))
    }

    /// An Envoy that exited: the error names it, its exit status and its log's last lines.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (i, e) in self.envoys.iter_mut().enumerate() {
            if let Some(status) = e.child.try_wait()? {
                let log = std::fs::read_to_string(&e.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "Envoy {i} ({}) exited ({status}); its log {} ends:\n{}",
                    e.node_id,
                    e.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    async fn envoy_view(&self, i: usize) -> Result<EnvoyView, reqwest::Error> {
        let url = format!("http://127.0.0.1:{}/stats", self.envoys[i].admin);
        let body: Value = self
            .http
            .get(url)
            .query(&[("format", "json"), ("filter", STATS_FILTER)])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(EnvoyView::from_stats(&body))
    }

    /// The views of the Envoys `which`, polled `POLL_CONCURRENCY` at a time; an Envoy whose
    /// admin does not answer (still starting) shows as unreachable, not connected.
    async fn envoy_views(&self, which: &[usize]) -> Vec<(usize, EnvoyView, Instant)> {
        futures::stream::iter(which.iter().copied())
            .map(|i| async move {
                let v = self.envoy_view(i).await.unwrap_or_else(|e| EnvoyView {
                    unreachable: Some(
                        std::error::Error::source(&e)
                            .map_or_else(|| e.to_string(), |s| s.to_string()),
                    ),
                    ..EnvoyView::default()
                });
                (i, v, Instant::now())
            })
            .buffer_unordered(POLL_CONCURRENCY)
            .collect()
            .await
    }

    /// meshd's `/debug/syncz`, by node id; an unreachable meshd (restarting) shows nothing.
    async fn meshd_view(&self, admin_port: u16) -> HashMap<String, MeshdView> {
        let url = format!("http://127.0.0.1:{admin_port}/debug/syncz");
        let body: Value = match self.http.get(url).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        MeshdView::from_syncz(&body)
    }

    /// Waits until every Envoy is synced (module doc); returns each one's time from `since`,
    /// sorted, or an error naming those that are not and what they show.
    async fn wait_synced(
        &mut self,
        admin_port: u16,
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Duration>> {
        let mut done: Vec<Option<Duration>> = vec![None; self.envoys.len()];
        let mut last: Vec<EnvoyView> = vec![EnvoyView::default(); self.envoys.len()];
        let mut meshd = HashMap::new();
        let mut polled = false;
        loop {
            self.check_alive()?;
            let pending: Vec<usize> = (0..done.len()).filter(|i| done[*i].is_none()).collect();
            if pending.is_empty() {
                let mut v: Vec<Duration> = done.into_iter().flatten().collect();
                v.sort();
                return Ok(v);
            }
            // The deadline is checked only after a poll, so the error shows what was seen.
            if polled && since.elapsed() > timeout {
                return Err(self.not_synced_error(&pending, &last, &meshd, timeout));
            }
            meshd = self.meshd_view(admin_port).await;
            for (i, view, at) in self.envoy_views(&pending).await {
                if view.synced_with(meshd.get(&self.envoys[i].node_id)) {
                    done[i] = Some(at - since);
                }
                last[i] = view;
            }
            polled = true;
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }

    fn not_synced_error(
        &self,
        pending: &[usize],
        last: &[EnvoyView],
        meshd: &HashMap<String, MeshdView>,
        timeout: Duration,
    ) -> anyhow::Error {
        let lines: Vec<String> = pending
            .iter()
            .take(10)
            .map(|&i| {
                let e = &self.envoys[i];
                let v = &last[i];
                let m = match meshd.get(&e.node_id) {
                    None => "meshd: no stream from it".to_string(),
                    Some(m) => format!(
                        "meshd sent CDS {:?} LDS {:?}, not SYNCED: [{}]",
                        m.cds_sent,
                        m.lds_sent,
                        m.not_synced.join("; ")
                    ),
                };
                let envoy = match &v.unreachable {
                    Some(why) => format!("admin not answering ({why})"),
                    None => format!(
                        "connected={}, CDS {:?}, LDS {:?}, warming clusters {}, warming listeners {}",
                        v.connected, v.cds, v.lds, v.warming_clusters, v.warming_listeners
                    ),
                };
                format!("  Envoy {i} ({}, admin :{}): {envoy}; {m}", e.node_id, e.admin)
            })
            .collect();
        anyhow!(
            "{} of {} Envoys not synced within {timeout:?}:\n{}",
            pending.len(),
            self.envoys.len(),
            lines.join("\n")
        )
    }

    /// The `max_connections` of every circuit-breaker threshold of the clusters matching
    /// `name_regex`, from Envoy `i`'s `/config_dump`.
    async fn max_connections(&self, i: usize, name_regex: &str) -> anyhow::Result<Vec<u64>> {
        let url = format!("http://127.0.0.1:{}/config_dump", self.envoys[i].admin);
        let body: Value = self
            .http
            .get(url)
            .query(&[
                ("resource", "dynamic_active_clusters"),
                ("name_regex", name_regex),
            ])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(max_connections_in(&body))
    }

    /// Edits the DestinationRule of service 0 (scoped: of services 0..namespaces, the first in
    /// each namespace, so each Envoy sees one) in one write, and waits until every Envoy's
    /// `/config_dump` shows its namespace's; returns each Envoy's time from the write, sorted.
    async fn converge(
        &mut self,
        args: &Args,
        shape: &mesh::Shape,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Duration>> {
        let all: Vec<usize> = (0..self.envoys.len()).collect();
        let mut before = vec![String::new(); self.envoys.len()];
        for (i, view, _) in self.envoy_views(&all).await {
            before[i] = view.cds;
        }
        let edits = if shape.sidecar_scoping {
            shape.namespaces.clamp(1, shape.services)
        } else {
            1
        };
        let path = args.work_dir.join("config").join("services.yaml");
        let text = std::fs::read_to_string(&path)?;
        let (changed, values) = bump_max_connections(&text, edits)
            .ok_or_else(|| anyhow!("{}: fewer than {edits} maxConnections", path.display()))?;
        // Envoy i's changed service, its cluster names and the value they must show.
        let targets: Vec<(String, String, u64)> = all
            .iter()
            .map(|i| {
                let svc = ((args.proxies + i) % shape.services) % edits;
                let host = format!(
                    "{}.{}.svc.cluster.local",
                    mesh::service_name(svc),
                    mesh::namespace(svc, shape)
                );
                let re = format!(r"^outbound\|8080\|[^|]*\|{}$", host.replace('.', r"\."));
                (host, re, values[svc])
            })
            .collect();
        let since = Instant::now();
        std::fs::write(&path, changed)?;
        let mut done: Vec<Option<Duration>> = vec![None; self.envoys.len()];
        let mut shown: Vec<Vec<u64>> = vec![Vec::new(); self.envoys.len()];
        // Per Envoy, the first CDS version seen after the write and when.
        let mut moved_at: Vec<Option<(String, Instant)>> = vec![None; self.envoys.len()];
        loop {
            self.check_alive()?;
            let pending: Vec<usize> = (0..done.len()).filter(|i| done[*i].is_none()).collect();
            if pending.is_empty() {
                let mut v: Vec<Duration> = done.into_iter().flatten().collect();
                v.sort();
                return Ok(v);
            }
            if since.elapsed() > timeout {
                let lines: Vec<String> = pending
                    .iter()
                    .take(10)
                    .map(|&i| {
                        let (host, _, value) = &targets[i];
                        format!(
                            "  Envoy {i} ({}): clusters of {host} show maxConnections {:?}, not {value}",
                            self.envoys[i].node_id, shown[i]
                        )
                    })
                    .collect();
                bail!(
                    "{} of {} Envoys did not show the DestinationRule change within {timeout:?}:\n{}",
                    pending.len(),
                    self.envoys.len(),
                    lines.join("\n")
                );
            }
            let mut moved = Vec::new();
            for (i, v, at) in self.envoy_views(&pending).await {
                if v.cds.is_empty() || v.cds == before[i] {
                    continue;
                }
                if moved_at[i].as_ref().is_none_or(|(seen, _)| *seen != v.cds) {
                    moved_at[i] = Some((v.cds, at));
                }
                moved.push(i);
            }
            // Timing the config_dump itself would time the dumps: 200 Envoys serializing their
            // clusters at once take the machine's CPU for a second.
            let fleet: &Fleet = self;
            let dumps: Vec<(usize, anyhow::Result<Vec<u64>>)> = futures::stream::iter(moved)
                .map(|i| {
                    let re = &targets[i].1;
                    async move { (i, fleet.max_connections(i, re).await) }
                })
                .buffer_unordered(POLL_CONCURRENCY)
                .collect()
                .await;
            let mut confirmed = Vec::new();
            for (i, got) in dumps {
                let got = got.unwrap_or_default();
                if !got.is_empty() && got.iter().all(|m| *m == targets[i].2) {
                    confirmed.push(i);
                }
                shown[i] = got;
            }
            // The dump showed the change; it came with the version first seen only if the
            // Envoy still holds that version after the dump. Else it is timed from the next.
            for (i, v, _) in self.envoy_views(&confirmed).await {
                match &moved_at[i] {
                    Some((seen, at)) if *seen == v.cds => done[i] = Some(*at - since),
                    _ => moved_at[i] = None,
                }
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }
}

/// A process's private memory (`RssAnon`): Envoy's RSS also counts the pages of its 100 MB
/// binary, which every Envoy shares.
fn anon_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("RssAnon:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

fn spread(v: &[Duration]) -> String {
    format!(
        "max {} (p50 {}, p99 {})",
        ms(*v.last().unwrap_or(&Duration::ZERO)),
        ms(pct(v, 0.5)),
        ms(pct(v, 0.99))
    )
}

/// The fleet's phases against `server` (restarted in place by the last one); the report's rows.
pub(crate) async fn rows(
    args: &Args,
    server: &mut Server,
    envoy: &Path,
    shape: &mesh::Shape,
) -> anyhow::Result<Vec<(String, String)>> {
    let n = args.envoys;
    let timeout = Duration::from_secs(args.phase_timeout);
    let mut rows = Vec::new();
    let rss_before = rss_kb(server.pid());
    eprintln!("meshd-load: phase: fleet of {n} Envoys (writing bootstraps)");
    let (mut fleet, started) = Fleet::start(args, envoy, shape)?;
    // Envoys' own start-up takes most of the machine's two cores here; meshd's share is its CPU.
    let cpu = cpu_seconds(server.pid());
    eprintln!("meshd-load: phase: fleet: {n} Envoys started, waiting for every one to sync");
    let synced = fleet.wait_synced(args.admin_port, started, timeout).await?;
    rows.push((
        format!("fleet: {n} stock Envoys started → all synced (their CDS/LDS version = meshd's, nothing warming, every type ACKed)"),
        format!(
            "{}, meshd CPU {:.2} s",
            spread(&synced),
            cpu_seconds(server.pid()) - cpu
        ),
    ));
    // As for the simulated proxies: meshd returns the sync's freed memory once pushes go quiet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = rss_kb(server.pid());
    let envoys_kb: u64 = fleet.envoys.iter().map(|e| anon_kb(e.child.id())).sum();
    rows.push((
        format!("fleet: meshd RSS with {n} Envoys connected"),
        format!(
            "{:.1} MB (+{:.1} KB per Envoy; each Envoy's own anonymous memory {:.1} MB on average)",
            rss as f64 / 1024.0,
            rss.saturating_sub(rss_before) as f64 / n.max(1) as f64,
            envoys_kb as f64 / 1024.0 / n.max(1) as f64
        ),
    ));

    eprintln!("meshd-load: phase: fleet: one DestinationRule changed");
    let round = Instant::now();
    let all: Vec<usize> = (0..n).collect();
    let _ = fleet.envoy_views(&all).await;
    let round = round.elapsed();
    let conv = fleet.converge(args, shape, timeout).await?;
    rows.push((
        format!("fleet: one DestinationRule changed → seen in all {n} Envoys' config_dump (incl. 100 ms debounce; poll round ≈ {})", ms(round)),
        spread(&conv),
    ));

    eprintln!("meshd-load: phase: fleet: meshd SIGKILLed and restarted");
    server.kill();
    let killed = Instant::now();
    let (restarted, ready) = Server::start(args)?;
    *server = restarted;
    let resync = fleet.wait_synced(args.admin_port, killed, timeout).await?;
    rows.push((
        format!("fleet: meshd SIGKILLed and restarted → all {n} Envoys connected and synced again"),
        format!(
            "{} (meshd ready after {}; the rest is Envoy's reconnect backoff and the resync)",
            spread(&resync),
            ms(ready)
        ),
    ));
    Ok(rows)
}
