//! `meshd demo`: the VoiceCore mesh on this machine.
//!
//! The control plane (`meshd serve` with the embedded VoiceCore config) runs in the node network
//! namespace of a [`LocalMesh`]; every WorkloadEntry of that config becomes a pod: each service
//! workload a `meshd workload` app behind a stock Envoy sidecar with the capture rules, the
//! ingress gateway a stock Envoy in router mode. Two small forwarders make the gateway and the
//! admin API reachable on the machine's loopback (their upstream sockets are created inside the
//! target namespaces, so nothing is routed into the machine's own namespace). Ctrl-C or SIGTERM
//! stops every child and removes every namespace.

use crate::mesh::{self as localmesh, LocalMesh, LocalMeshOptions, SidecarOptions};
use crate::podnet;
use anyhow::{Context, bail};
use clap::Args;
use meshd_model::MeshConfig;
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

mod load;
mod plan;

pub use plan::{DemoPlan, GatewayPod, GatewayRoute, ServicePod};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the demo keeps its CA state.
    #[arg(long, default_value = "./.meshd-demo")]
    pub state_dir: PathBuf,
    /// Port on 127.0.0.1 forwarded to the ingress gateway.
    #[arg(long, default_value_t = 8080)]
    pub gateway_port: u16,
    /// Port on 127.0.0.1 forwarded to the control plane's admin API.
    #[arg(long, default_value_t = 15014)]
    pub admin_port: u16,
    /// Prefix of the network namespaces the demo creates (`<prefix>-node`, `<prefix>-<pod>`).
    #[arg(long, default_value = "meshd-demo")]
    pub netns_prefix: String,
    /// How long to wait for the control plane and each Envoy to become ready.
    #[arg(long, default_value = "60s", value_parser = |s: &str| meshd_model::duration::parse(s))]
    pub ready_timeout: Duration,
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            std::fs::metadata(d.join(name)).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
    })
}

/// Everything the demo needs from the machine, checked before anything is started.
fn preflight() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "meshd".into());
        missing.push(format!(
            "root: the demo creates network namespaces, veth pairs, a bridge and iptables rules \
             (run it as root, e.g. `sudo {exe} demo`)"
        ));
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("iptables-restore", "iptables"),
        ("setpriv", "util-linux"),
    ] {
        if !on_path(tool) {
            missing.push(format!("`{tool}` on PATH (package {package}): not found"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "meshd demo runs each workload in its own network namespace and needs:\n  - {}\nNothing was started.",
            missing.join("\n  - ")
        );
    }
    Ok(())
}

fn bind_loopback(port: u16, flag: &str, what: &str) -> anyhow::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).with_context(|| {
        format!("cannot listen on 127.0.0.1:{port} for {what} (in use? pick another with {flag})")
    })?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The VoiceCore mesh `meshd serve` runs when given no config directory (the same files its
/// file source embeds), parsed here so the harness does not link the server.
fn embedded_mesh() -> MeshConfig {
    let files = meshd_model::voicecore::FILES.map(|(name, text)| {
        meshd_model::parse_file(name, text).expect("the embedded mesh is valid YAML (tested)")
    });
    MeshConfig::assemble(&files)
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    preflight()?;
    let mesh_config = embedded_mesh();
    let plan = DemoPlan::from_mesh(&mesh_config)?;
    let calls = load::calls(&mesh_config, &plan);
    if plan.gateways.is_empty() {
        bail!("the embedded mesh has no gateway workload");
    }
    if let Some(pid) = podnet::live_owner(&args.netns_prefix)
        && pid != std::process::id()
    {
        bail!(
            "another meshd demo (pid {pid}) owns the namespaces {}-*; stop it first, or pass a \
             different --netns-prefix",
            args.netns_prefix
        );
    }
    // Reserve the loopback ports before anything is created.
    let gateway_listener = bind_loopback(args.gateway_port, "--gateway-port", "the gateway")?;
    let admin_listener = bind_loopback(args.admin_port, "--admin-port", "the admin API")?;

    let envoy = podnet::ensure_envoy()?;
    let meshd = std::env::current_exe().context("locating the meshd executable")?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating state dir {}", args.state_dir.display()))?;
    let state_dir = args.state_dir.canonicalize()?;
    let work_dir = std::env::temp_dir().join(format!("meshd-demo-{}", args.netns_prefix));
    let _ = std::fs::remove_dir_all(&work_dir);
    let mut opts = LocalMeshOptions::new(
        &args.netns_prefix,
        meshd.clone(),
        envoy.clone(),
        work_dir.clone(),
        state_dir.clone(),
    );
    opts.ready_timeout = args.ready_timeout;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(run_async(
        &args,
        opts,
        plan,
        gateway_listener,
        admin_listener,
        calls,
    ));
    drop(rt);
    let _ = std::fs::remove_dir_all(&work_dir);
    result
}

async fn run_async(
    args: &DemoArgs,
    opts: LocalMeshOptions,
    plan: DemoPlan,
    gateway_listener: std::net::TcpListener,
    admin_listener: std::net::TcpListener,
    calls: Vec<load::Call>,
) -> anyhow::Result<ExitCode> {
    // From here on SIGINT/SIGTERM are ours: every path below stops what it started.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    println!(
        "meshd demo: control plane, {} services behind Envoy sidecars, {} gateway(s) (Envoy {}, state in {})",
        plan.services.len(),
        plan.gateways.len(),
        opts.envoy_bin.display(),
        opts.state_dir.display()
    );
    let mesh = Arc::new(tokio::task::spawn_blocking(move || LocalMesh::create(opts)).await??);

    let gw = &plan.gateways[0];
    let gw_pod_name = gw.workload.split('.').next().unwrap_or("");
    let gw_netns = format!("{}-{gw_pod_name}", mesh.network().prefix());
    let gw_target = SocketAddr::from((gw.address, gw.port));
    // The node namespace's loopback: the admin API trusts only loopback callers with its
    // `/debug/*` endpoints, and the forwarded connections are the machine's own operator's.
    let admin_target = SocketAddr::from(([127, 0, 0, 1], localmesh::ADMIN_PORT));
    let forwarders = [
        tokio::spawn(localmesh::forward_into_netns(
            tokio::net::TcpListener::from_std(gateway_listener)?,
            gw_netns,
            gw_target,
        )),
        tokio::spawn(localmesh::forward_into_netns(
            tokio::net::TcpListener::from_std(admin_listener)?,
            mesh.node().netns,
            admin_target,
        )),
    ];

    let setup = {
        let mesh = mesh.clone();
        let plan = plan.clone();
        tokio::task::spawn_blocking(move || setup(&mesh, &plan))
    };
    tokio::pin!(setup);
    let outcome = tokio::select! {
        r = &mut setup => Some(r),
        _ = sigint.recv() => None,
        _ = sigterm.recv() => None,
    };
    let code = match outcome {
        None => {
            println!("\nmeshd demo: interrupted during start-up; stopping everything");
            mesh.cancel();
            let _ = setup.await;
            ExitCode::SUCCESS
        }
        Some(Ok(Ok(checks))) => {
            print_summary(args, &plan, &mesh, &gw_target, &admin_target, &checks);
            println!(
                "Background load: {} calls the AuthorizationPolicies allow, about once a second each.\n",
                calls.len()
            );
            let load = load::Load::start(mesh.clone(), calls);
            let code = watch(args, &plan, &mesh, &mut sigint, &mut sigterm).await;
            tokio::task::spawn_blocking(move || drop(load)).await?;
            code
        }
        Some(Ok(Err(e))) => {
            eprintln!("meshd demo: start-up failed: {e:#}");
            ExitCode::FAILURE
        }
        Some(Err(e)) => {
            eprintln!("meshd demo: start-up panicked: {e}");
            ExitCode::FAILURE
        }
    };

    for f in &forwarders {
        f.abort();
    }
    println!("meshd demo: stopping Envoys, apps and the control plane; removing the namespaces");
    let prefix = mesh.network().prefix().to_string();
    tokio::task::spawn_blocking(move || {
        mesh.shutdown();
        drop(mesh);
    })
    .await?;
    let left: Vec<String> = podnet::list_netns()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    if left.is_empty() {
        println!("meshd demo: stopped; no namespaces left");
    } else {
        eprintln!("meshd demo: namespaces left behind: {}", left.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    Ok(code)
}

/// One request through the gateway, made at start-up to show the demo really works.
struct Check {
    prefix: String,
    status: Option<u16>,
    detail: String,
}

/// Envoy's answer when an AuthorizationPolicy denies a request.
fn is_rbac_denial(status: Option<u16>, body: &str) -> bool {
    status == Some(403) && body.trim() == "RBAC: access denied"
}

/// Start the control plane and every pod; wait until each Envoy is ready and each gateway
/// route answers.
fn setup(mesh: &LocalMesh, plan: &DemoPlan) -> anyhow::Result<Vec<Check>> {
    println!(
        "  control plane: meshd serve on {} (xDS :{}, admin :{}) in netns {}",
        mesh.gateway(),
        localmesh::XDS_PORT,
        localmesh::ADMIN_PORT,
        mesh.node().netns
    );
    mesh.start_control_plane()?;
    mesh.set_hosts(&plan.hosts)?;
    let no_wait = SidecarOptions {
        wait_ready: false,
        ..SidecarOptions::default()
    };
    for s in &plan.services {
        let pod =
            mesh.add_service_pod_with(&s.workload, s.address, &s.service, s.port, no_wait.clone())?;
        if mesh.is_cancelled() {
            bail!("cancelled");
        }
        println!(
            "  pod {:<22} {:<12} {} on :{} behind Envoy (uid {})",
            pod.name,
            s.address.to_string(),
            s.service,
            s.port,
            localmesh::PROXY_UID
        );
    }
    for g in &plan.gateways {
        let pod = mesh.add_gateway_pod_with(&g.workload, g.address, no_wait.clone())?;
        println!(
            "  pod {:<22} {:<12} ingress gateway Envoy on :{}",
            pod.name,
            g.address.to_string(),
            g.port
        );
    }
    for pod in mesh.sidecars() {
        mesh.wait_envoy_ready(&pod)?;
    }
    // Every gateway route, from the node namespace straight to the gateway pod.
    let gw = &plan.gateways[0];
    let node = mesh.node();
    let mut checks = Vec::new();
    for r in &plan.routes {
        let url = format!("http://{}:{}{}", gw.address, gw.port, r.prefix);
        let mut last = (None, String::new());
        podnet::wait_until(Duration::from_secs(15), || {
            if mesh.is_cancelled() {
                return true;
            }
            last = match node.get(&url) {
                Ok((s, body)) => (Some(s), body),
                Err(e) => (None, format!("{e:#}")),
            };
            // A 403 from an AuthorizationPolicy is an answer too (the shipped policies let
            // the ingress gateway call only the API gateway).
            last.0 == Some(200) || is_rbac_denial(last.0, &last.1)
        });
        if mesh.is_cancelled() {
            bail!("cancelled");
        }
        let detail = match (&last.0, serde_json::from_str::<serde_json::Value>(&last.1)) {
            (Some(200), Ok(v)) => format!(
                "{} (caller {})",
                v["service"].as_str().unwrap_or("?"),
                v["caller"].as_str().unwrap_or("none")
            ),
            _ => last.1.chars().take(200).collect(),
        };
        checks.push(Check {
            prefix: r.prefix.clone(),
            status: last.0,
            detail,
        });
    }
    Ok(checks)
}

fn print_summary(
    args: &DemoArgs,
    plan: &DemoPlan,
    mesh: &LocalMesh,
    gw_target: &SocketAddr,
    admin_target: &SocketAddr,
    checks: &[Check],
) {
    let gw = format!("http://127.0.0.1:{}", args.gateway_port);
    let admin = format!("http://127.0.0.1:{}", args.admin_port);
    let mut out = String::new();
    out += &format!("\nDashboard (the mesh graph, live): {admin}/dashboard/\n");
    out += &format!(
        "\nmeshd demo is up. Through the ingress gateway (127.0.0.1:{} -> {} in netns {}-{}):\n",
        args.gateway_port,
        gw_target,
        mesh.network().prefix(),
        plan.gateways[0].workload.split('.').next().unwrap_or("")
    );
    for r in &plan.routes {
        let check = checks.iter().find(|c| c.prefix == r.prefix);
        let result = match check {
            Some(Check {
                status: Some(200),
                detail,
                ..
            }) => format!("200 {detail}"),
            Some(Check { status, detail, .. }) if is_rbac_denial(*status, detail) => {
                "403 RBAC: access denied (AuthorizationPolicy, deploy/mesh/voicecore-authz.yaml)"
                    .to_string()
            }
            Some(Check { status, detail, .. }) => format!(
                "NOT OK ({}): {detail}",
                status.map_or("no answer".to_string(), |s| format!("HTTP {s}"))
            ),
            None => String::new(),
        };
        out += &format!("  curl {gw}{:<20} -> {:<48} {result}\n", r.prefix, r.host);
    }
    out += &format!(
        "\nControl plane admin API (127.0.0.1:{} -> {admin_target} in netns {}):\n",
        args.admin_port,
        mesh.node().netns
    );
    for path in [
        "/healthz/ready",
        "/debug/syncz",
        "/debug/config_dump?proxy=<proxy_id>",
        "/debug/certs",
        "/debug/configz",
        "/debug/registryz",
        "/metrics",
        "/version",
    ] {
        out += &format!("  {admin}{path}\n");
    }
    if args.admin_port == localmesh::ADMIN_PORT {
        out += "  meshd proxy-status\n";
    } else {
        out += &format!("  meshd proxy-status --admin {admin}\n");
    }
    out += &format!(
        "\nInside the mesh: ip netns exec {}-<pod> curl http://billing-service:8007/  (pods: {})\n",
        mesh.network().prefix(),
        mesh.sidecars()
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    );
    out += &format!(
        "Logs: {} (removed on exit unless MESHD_KEEP_LOGS=1)\n",
        mesh.network().log_dir().display()
    );
    out += "Ctrl-C stops everything.\n";
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// Connected and fully synced proxies, from `/debug/syncz`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncSummary {
    pub connected: usize,
    pub synced: usize,
    pub nacked: usize,
}

impl SyncSummary {
    /// A proxy is synced when every type it was sent is SYNCED.
    pub fn from_syncz(syncz: &serde_json::Value) -> SyncSummary {
        let mut s = SyncSummary::default();
        for p in syncz.as_array().into_iter().flatten() {
            s.connected += 1;
            let statuses: Vec<&str> = p["types"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, t)| t["status"].as_str().unwrap_or(""))
                .collect();
            if !statuses.is_empty() && statuses.iter().all(|st| *st == "SYNCED") {
                s.synced += 1;
            }
            if statuses.contains(&"NACKED") {
                s.nacked += 1;
            }
        }
        s
    }

    pub fn line(&self, expected: usize) -> String {
        let mut line = format!(
            "{}/{expected} proxies connected, {} synced",
            self.connected, self.synced
        );
        if self.nacked > 0 {
            line += &format!(", {} NACKED", self.nacked);
        }
        line
    }
}

/// Print the status line every 2 s until a signal (exit 0) or the control plane dies (exit 1).
async fn watch(
    args: &DemoArgs,
    plan: &DemoPlan,
    mesh: &Arc<LocalMesh>,
    sigint: &mut tokio::signal::unix::Signal,
    sigterm: &mut tokio::signal::unix::Signal,
) -> ExitCode {
    let url = format!("http://127.0.0.1:{}/debug/syncz", args.admin_port);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let tty = std::io::stdout().is_terminal();
    let mut last_line = String::new();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut reported_exits: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => {}
        }
        let m = mesh.clone();
        let (cp_running, exited) =
            tokio::task::spawn_blocking(move || (m.control_plane_running(), m.exited()))
                .await
                .unwrap_or((false, Vec::new()));
        if !cp_running {
            eprintln!(
                "\nmeshd demo: the control plane exited; its log:\n{}",
                localmesh::tail(&mesh.control_plane_log(), 40)
            );
            return ExitCode::FAILURE;
        }
        for e in exited {
            if !reported_exits.contains(&e) {
                eprintln!("\nmeshd demo: {e} exited");
                reported_exits.push(e);
            }
        }
        let line = match fetch_syncz(&client, &url).await {
            Ok(v) => SyncSummary::from_syncz(&v).line(plan.proxies()),
            Err(e) => format!("admin API not answering: {e:#}"),
        };
        let stamp = time::OffsetDateTime::now_utc();
        if tty {
            print!(
                "\r\x1b[2K[{:02}:{:02}:{:02}] {line}",
                stamp.hour(),
                stamp.minute(),
                stamp.second()
            );
            let _ = std::io::stdout().flush();
        } else if line != last_line {
            println!(
                "[{:02}:{:02}:{:02}] {line}",
                stamp.hour(),
                stamp.minute(),
                stamp.second()
            );
        }
        last_line = line;
    }
    if tty {
        println!();
    }
    ExitCode::SUCCESS
}

async fn fetch_syncz(client: &reqwest::Client, url: &str) -> anyhow::Result<serde_json::Value> {
    let resp = client.get(url).send().await?;
    let status = resp.status();
    if !status.is_success() {
        bail!("{url}: {status}");
    }
    Ok(resp.json().await?)
}

#[cfg(test)]
mod tests;
