//! `meshd-load`: N simulated sidecars on real ADS streams against a real `meshd serve`, on a
//! synthetic mesh; measures connect, convergence, full push, reconnect storm, memory and CPU.
//! Run it inside its own network namespace (`scripts/bench-xds.sh` does) so ports never clash.

mod acks;
mod ca_rate;
mod churn;
mod churn_id;
mod client;
mod dataplane;
mod envoy_check;
mod fleet;
mod fleet_view;
mod kube_scale;

/// jemalloc, as meshd: thousands of client tasks allocating on two threads contend on glibc's
/// arena locks, and the load tool's CPU is taken from the server it measures.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The load tool keeps the pages it freed: returning them only for the next connect storm to
/// fault them in again (the kernel zeroing each page) cost it a fifth of its CPU at P = 10 000.
#[unsafe(export_name = "_rjem_malloc_conf")]
#[allow(non_upper_case_globals, unsafe_code)]
pub static malloc_conf: &[u8; 52] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1,abort_conf:true\0";
mod mesh;
mod scan;
mod server;

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use client::{Ack, DecodeCache, ProxySpec, TYPES};
use meshd_ca::{CaConfig, CertificateAuthority, WorkloadClaims};
use meshd_xds::{NodeId, NodeType};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use acks::Acks;
use server::{Server, cpu_seconds, heap_kb, rss_kb, rss_split_kb};

#[derive(Parser, Clone)]
#[command(about = "xDS load harness for meshd")]
struct Args {
    /// The meshd binary to start.
    #[arg(long, default_value = "target/release/meshd")]
    meshd: PathBuf,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 2000)]
    proxies: usize,
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Delta xDS instead of state of the world.
    #[arg(long)]
    delta: bool,
    /// Fraction of responses each client NACKs. A NACK counts as the proxy's answer in the
    /// phase timings, and the client still follows a NACKed CDS/LDS with its EDS/RDS names, so
    /// every phase completes (the point is the server's NACK path under load).
    #[arg(long, default_value_t = 0.0)]
    nack_fraction: f64,
    /// A Sidecar per namespace limiting egress to it.
    #[arg(long)]
    sidecar_scoping: bool,
    #[arg(long, default_value = "/tmp/meshd-load")]
    work_dir: PathBuf,
    #[arg(long, default_value_t = 25010)]
    xds_port: u16,
    #[arg(long, default_value_t = 25014)]
    admin_port: u16,
    /// Connect to the TLS xDS port, verifying meshd's certificate against the mesh root, as
    /// sidecars in Kubernetes do (rustls on both ends), instead of the plaintext port.
    #[arg(long)]
    tls: bool,
    #[arg(long, default_value_t = 25012)]
    xds_tls_port: u16,
    /// Also start one stock Envoy on the synthetic mesh and check its config_dump.
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// With `--envoy`: first start this many stock Envoys on the mesh and measure them from
    /// their own admin endpoints (`fleet.rs`); with `--proxies 0`, only that.
    #[arg(long, default_value_t = 0)]
    envoys: usize,
    /// Fail when any client stream ends before the reconnect storm (the CI smoke: nothing
    /// may be lost); benchmarks at the edge of the machine report them instead.
    #[arg(long)]
    strict: bool,
    /// Skip the reconnect-storm phase.
    #[arg(long)]
    no_restart: bool,
    /// Seconds to wait for each phase before giving up.
    #[arg(long, default_value_t = 120)]
    phase_timeout: u64,
    /// After the full push: replace this many endpoints per second (a rolling restart) for
    /// `--churn-seconds`, and measure how they reach the proxies (`churn.rs`; Delta only).
    #[arg(long, default_value_t = 0)]
    churn: u32,
    #[arg(long, default_value_t = 60)]
    churn_seconds: u64,
    /// Churn only the services of the first this many namespaces (0: all). With
    /// `--sidecar-scoping`, the proxies of the other namespaces must receive nothing.
    #[arg(long, default_value_t = 0)]
    churn_namespaces: usize,
    /// Kubernetes mode (`kube_scale.rs`): create the mesh as Services, Pods and endpoints
    /// through the API server `KUBECONFIG` names, start meshd against it, measure its start,
    /// memory and (`--churn`) endpoint churn through the API server.
    #[arg(long)]
    kube: bool,
    /// With `--kube`: the Pods created (spread over the services).
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Measure the CA instead of xDS: P new proxies at once through SDS and through
    /// CreateCertificate (TLS port), each beside this process's raw key generation and signing
    /// with the same crates (`ca_rate.rs`).
    #[arg(long)]
    ca_rate: bool,
    /// Measure the data plane instead: Envoy sidecars driven by meshd (telemetry on and off)
    /// beside a hand-written minimal pair, under the same wrk load (`dataplane.rs`).
    #[arg(long = "dataplane")]
    data_plane: bool,
    #[command(flatten)]
    dataplane: dataplane::DataplaneArgs,
}

fn pct(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// The mesh CA meshd will load from the same state dir: it signs the proxies' credentials and
/// its root verifies meshd's TLS port.
fn mesh_ca(args: &Args) -> anyhow::Result<CertificateAuthority> {
    Ok(CertificateAuthority::load_or_create(&CaConfig {
        state_dir: args.work_dir.join("state"),
        ..CaConfig::default()
    })?)
}

fn credentials(
    args: &Args,
    ca: &CertificateAuthority,
    shape: &mesh::Shape,
) -> anyhow::Result<Vec<ProxySpec>> {
    (0..args.proxies)
        .map(|w| {
            let (name, ns, sa) = mesh::workload(w, shape);
            let credential = ca.issue_credential(&WorkloadClaims::new(
                &name,
                &ns,
                &sa,
                std::time::Duration::from_secs(7 * 24 * 3600),
            ))?;
            Ok(ProxySpec {
                index: w as u32,
                node_id: NodeId::format(NodeType::Sidecar, &mesh::workload_ip(w), &name, &ns),
                credential,
            })
        })
        .collect()
}

/// Where the simulated sidecars connect: with `--tls`, the TLS port, trusting the mesh root.
fn target(args: &Args, ca: &CertificateAuthority) -> anyhow::Result<client::Target> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    if !args.tls {
        return Ok(client::Target {
            addr: ([127, 0, 0, 1], args.xds_port).into(),
            tls: None,
        });
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.root_cert_pem().as_bytes()) {
        roots.add(cert.context("the mesh root certificate")?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(client::Target {
        addr: ([127, 0, 0, 1], args.xds_tls_port).into(),
        tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
    })
}

fn spawn_proxies(
    args: &Args,
    ca: &CertificateAuthority,
    specs: &[ProxySpec],
    cache: Arc<DecodeCache>,
    tx: mpsc::UnboundedSender<Ack>,
) -> anyhow::Result<()> {
    let target = target(args, ca)?;
    for spec in specs {
        let spec = spec.clone();
        let cache = cache.clone();
        let tx = tx.clone();
        let delta = args.delta;
        let nack = args.nack_fraction;
        let target = target.clone();
        tokio::spawn(async move {
            // Like Envoy: reconnect with backoff whenever the stream ends.
            let mut backoff = Duration::from_millis(50);
            loop {
                let channel = match client::connect(&target).await {
                    Ok(c) => c,
                    Err(_) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                };
                backoff = Duration::from_millis(50);
                let ended = if delta {
                    client::run_delta(channel, spec.clone(), cache.clone(), tx.clone(), nack).await
                } else {
                    client::run_sotw(channel, spec.clone(), cache.clone(), tx.clone(), nack).await
                };
                let n = cache.stream_errors.fetch_add(1, Ordering::Relaxed);
                if n < 5 {
                    let why = ended
                        .err()
                        .map(|e| format!("{e:#}"))
                        .unwrap_or("ended".into());
                    eprintln!("meshd-load: proxy {} stream ended: {why}", spec.node_id);
                }
                tokio::time::sleep(backoff).await;
            }
        });
    }
    Ok(())
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_fd_limit();
    if args.data_plane {
        return tokio::task::spawn_blocking(move || dataplane::run(&args)).await?;
    }
    let shape = mesh::Shape {
        services: args.services,
        workloads: (args.proxies + args.envoys).max(args.services),
        namespaces: args.namespaces,
        sidecar_scoping: args.sidecar_scoping,
    };
    let _ = std::fs::remove_dir_all(&args.work_dir);
    if args.kube {
        let rows = kube_scale::rows(&args, &shape).await?;
        return print_rows(&rows);
    }
    mesh::write(&args.work_dir.join("config"), &shape)?;
    if args.churn > 0 {
        if !args.delta {
            bail!("--churn needs --delta: in SotW every EDS push resends every endpoint");
        }
        let pool = churn::Pool::new(&shape, args.churn_namespaces);
        churn::initial(&args.work_dir.join("config"), &shape, &pool)?;
    }
    let mut rows: Vec<(String, String)> = Vec::new();
    let mode = match (args.delta, args.tls) {
        (false, false) => "SotW",
        (true, false) => "Delta",
        (false, true) => "SotW over TLS",
        (true, true) => "Delta over TLS",
    };
    println!(
        "meshd-load: S={} services, P={} proxies, {} namespaces, {mode}, sidecar scoping {}, NACK fraction {}",
        args.services, args.proxies, args.namespaces, args.sidecar_scoping, args.nack_fraction
    );

    let (mut server, ready) = Server::start(&args)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = rss_kb(server.pid());
    let (idle_anon, idle_file) = rss_split_kb(server.pid());
    let idle_heap = heap_kb(args.admin_port);
    rows.push(("start-to-ready".into(), ms(ready)));
    rows.push((
        "idle RSS (mesh loaded, no proxies): private / mapped from files (code)".into(),
        format!(
            "{:.1} MB: {:.1} / {:.1} MB",
            idle_rss as f64 / 1024.0,
            idle_anon as f64 / 1024.0,
            idle_file as f64 / 1024.0
        ),
    ));

    let ca = mesh_ca(&args)?;
    let specs = credentials(&args, &ca, &shape)?;
    if args.ca_rate {
        rows.extend(ca_rate::rows(&args, &ca, &shape, &specs).await?);
        return print_rows(&rows);
    }
    if args.envoys > 0 {
        let envoy = args
            .envoy
            .as_deref()
            .ok_or_else(|| anyhow!("--envoys needs --envoy PATH"))?;
        rows.extend(fleet::rows(&args, &mut server, envoy, &shape).await?);
        if args.proxies == 0 {
            return print_rows(&rows);
        }
    }
    let cache = Arc::new(DecodeCache::new(args.churn > 0));
    let (tx, rx) = mpsc::unbounded_channel();
    let mut acks = Acks::new(rx, specs.len());
    let all_types: Vec<usize> = (0..TYPES.len()).collect();
    let timeout = Duration::from_secs(args.phase_timeout);

    eprintln!("meshd-load: phase: connect");
    let cpu0 = cpu_seconds(server.pid());
    let t0 = Instant::now();
    spawn_proxies(&args, &ca, &specs, cache.clone(), tx.clone())?;
    let connect = acks.all_after(t0, &all_types, timeout).await?;
    let cpu1 = cpu_seconds(server.pid());
    let bytes = cache.bytes_received.load(Ordering::Relaxed);
    // Steady state: meshd returns the storm's freed memory a second after pushes go quiet.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let loaded_rss = rss_kb(server.pid());
    let loaded_heap = heap_kb(args.admin_port);
    rows.push((
        format!("connect {} proxies, all 5 types ACKed", args.proxies),
        format!(
            "{} (p50 {}, p90 {}, CPU {:.2} s)",
            ms(*connect.last().unwrap_or(&Duration::ZERO)),
            ms(pct(&connect, 0.5)),
            ms(pct(&connect, 0.9)),
            cpu1 - cpu0
        ),
    ));
    rows.push((
        format!("RSS with {} proxies", args.proxies),
        format!("{:.1} MB", loaded_rss as f64 / 1024.0),
    ));
    rows.push((
        "RSS per connected proxy".into(),
        format!(
            "{:.1} KB",
            (loaded_rss.saturating_sub(idle_rss)) as f64 / args.proxies.max(1) as f64
        ),
    ));
    if let (Some(idle), Some(loaded)) = (idle_heap, loaded_heap) {
        rows.push((
            "heap in use: idle / with proxies / per proxy".into(),
            format!(
                "{:.1} MB / {:.1} MB / {:.1} KB",
                idle as f64 / 1024.0,
                loaded as f64 / 1024.0,
                loaded.saturating_sub(idle) as f64 / args.proxies.max(1) as f64
            ),
        ));
    }
    rows.push((
        "xDS config bytes per proxy (initial sync)".into(),
        format!(
            "{:.1} KB",
            bytes as f64 / args.proxies.max(1) as f64 / 1024.0
        ),
    ));

    if let Some(envoy) = &args.envoy {
        rows.push((
            "real Envoy".into(),
            envoy_check::check_envoy(&args, envoy, &shape)?,
        ));
    }

    // One DestinationRule changed.
    let cfg = args.work_dir.join("config");
    let services_path = cfg.join("services.yaml");
    let text = std::fs::read_to_string(&services_path)?;
    let changed = text.replacen("maxConnections: 100", "maxConnections: 101", 1);
    eprintln!("meshd-load: phase: one DestinationRule changed");
    let t1 = Instant::now();
    std::fs::write(&services_path, &changed)?;
    // Unscoped, every proxy holds the changed cluster and ACKs it; scoped (only its namespace's
    // proxies) or NACKing some responses, the count is not known here: until the ACKs stop.
    let everyone = (!args.sidecar_scoping && args.nack_fraction <= 0.0).then_some(args.proxies);
    let conv = acks
        .settle(
            t1,
            client::type_index(meshd_xds::resource::CLUSTER),
            everyone,
            Duration::from_secs(2),
            timeout,
        )
        .await?;
    rows.push((
        format!(
            "one DestinationRule changed → {} proxies ACKed (incl. 100 ms debounce)",
            conv.len()
        ),
        format!("p50 {}, p99 {}", ms(pct(&conv, 0.5)), ms(pct(&conv, 0.99))),
    ));

    // A change every proxy sees: a new service.
    eprintln!("meshd-load: phase: full push");
    let cpu2 = cpu_seconds(server.pid());
    let t2 = Instant::now();
    std::fs::write(
        cfg.join("new.yaml"),
        mesh::service_yaml(args.services, &shape, true),
    )?;
    let full = acks
        .settle(
            t2,
            client::type_index(meshd_xds::resource::CLUSTER),
            everyone,
            Duration::from_secs(2),
            timeout,
        )
        .await?;
    let cpu3 = cpu_seconds(server.pid());
    rows.push((
        format!("full push (new service) → {} proxies ACKed CDS", full.len()),
        format!(
            "{} wall, {:.2} CPU s (p50 {})",
            ms(*full.last().unwrap_or(&Duration::ZERO)),
            cpu3 - cpu2,
            ms(pct(&full, 0.5))
        ),
    ));

    if args.churn > 0 {
        eprintln!("meshd-load: phase: endpoint churn");
        rows.extend(churn::rows(&args, &shape, &mut acks, &cache, &server).await?);
    }

    let ended_early = cache.stream_errors.load(Ordering::Relaxed);
    rows.push((
        "client streams that ended early (each reconnected)".into(),
        ended_early.to_string(),
    ));
    if args.strict && ended_early > 0 {
        bail!("{ended_early} client stream(s) ended before the reconnect storm (--strict)");
    }
    if !args.no_restart {
        eprintln!("meshd-load: phase: reconnect storm");
        server.kill();
        let t3 = Instant::now();
        let (s2, _) = Server::start(&args)?;
        server = s2;
        let storm = acks.all_after(t3, &all_types, timeout).await?;
        rows.push((
            format!(
                "reconnect storm: meshd restarted, {} proxies re-synced",
                args.proxies
            ),
            format!(
                "{} (p50 {}, p90 {})",
                ms(*storm.last().unwrap_or(&Duration::ZERO)),
                ms(pct(&storm, 0.5)),
                ms(pct(&storm, 0.9))
            ),
        ));
    }
    let _ = &server;
    print_rows(&rows)
}

fn print_rows(rows: &[(String, String)]) -> anyhow::Result<()> {
    println!("\n| measure | result |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    Ok(())
}
