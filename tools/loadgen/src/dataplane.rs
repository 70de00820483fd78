//! `meshd-load --dataplane`: what meshd's generated Envoy config costs the data plane.
//!
//! Pairs of network-namespace pods (a client and a server, the server running `meshd workload`
//! behind a stock Envoy sidecar, both with Istio's capture rules) in one local mesh:
//! - `meshd`: sidecars driven by a real `meshd serve`, mTLS STRICT, meshd's default telemetry
//!   (JSON access log on stdout, the gRPC access-log stream feeding meshd's Istio metrics);
//! - `meshd-telemetry-off`: the same, with a workload-scoped Telemetry object turning access
//!   logging and every metric off (what the rest of meshd's config costs);
//! - `minimal`: a hand-written static Envoy pair, the floor: one listener and one cluster per
//!   side, mTLS from a throwaway CA, no access log, no stats sinks.
//!
//! The same `wrk` load runs from each client pod through its sidecar, variants alternating
//! round by round (A B C A B C ...) so a noisy neighbour hits all of them alike. Reported per
//! variant: median requests/s and p50/p99 over rounds, the meshd/minimal ratio and p99 gap, and
//! meshd's CPU and RSS growth during the telemetry-on rounds per 1 000 requests/s. Exits
//! non-zero when a variant served a non-2xx answer or no request at all. This is a benchmark:
//! it measures and prints, it asserts no timing.

use crate::Args;
use crate::server::{cpu_seconds, rss_kb};
use anyhow::{Context, bail};
use meshd_localmesh::mesh::{LocalMesh, LocalMeshOptions, SidecarOptions, envoy_admin_get};
use meshd_localmesh::podnet::{Pod, envoy_binary, wait_until};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod minimal;
mod sink;
use minimal::write_readable;

/// The bench's own options (flattened into `meshd-load`'s).
#[derive(clap::Args, Clone, Debug)]
pub struct DataplaneArgs {
    /// Rounds per variant.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds of load per round.
    #[arg(long, default_value_t = 10)]
    pub round_secs: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    pub wrk_threads: u32,
    /// The floor's breakdown instead of the telemetry variants: meshd with telemetry off, the
    /// minimal pair, and the minimal pair plus each part of meshd's config in turn (retry
    /// policy, CORS and fault filters, XFCC, least-request balancing, all of them).
    #[arg(long)]
    pub floor: bool,
    /// The per-request telemetry paths side by side on the minimal pair instead of the
    /// telemetry variants: meshd's gRPC access-log stream and the OpenTelemetry access log (each
    /// to a discarding sink, whose received bytes are reported), and Envoy's stats logger.
    #[arg(long, conflicts_with_all = ["floor", "breakdown"])]
    pub log_paths: bool,
    /// Leave out the meshd-with-telemetry-off variant.
    #[arg(long)]
    pub skip_telemetry_off: bool,
    /// Two more meshd variants telling the two telemetry parts apart: JSON access log off
    /// (the gRPC stream feeding meshd's metrics on), and metrics off (the JSON log on).
    #[arg(long)]
    pub breakdown: bool,
    /// The wrk binary.
    #[arg(long, default_value = "wrk")]
    pub wrk: PathBuf,
    /// Write each variant's client and server Envoy `/config_dump` (secrets redacted by
    /// Envoy) into this directory after the warm-up, to compare what the variants run.
    #[arg(long)]
    pub dump_configs: Option<PathBuf>,
}

const NS: &str = "bench";
const PORT: u16 = 8080;
const TRUST_DOMAIN: &str = "cluster.local";
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Meshd,
    NoJsonLog,
    NoMetrics,
    TelemetryOff,
    Minimal,
    /// The minimal pair plus one part of meshd's config: which parts the gap is made of.
    MinimalWith(minimal::Extra),
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Meshd => "meshd",
            Kind::NoJsonLog => "meshd-no-json-log",
            Kind::NoMetrics => "meshd-no-metrics",
            Kind::TelemetryOff => "meshd-telemetry-off",
            Kind::Minimal => "minimal",
            Kind::MinimalWith(e) => e.label(),
        }
    }
    /// Workload name prefix and the last octet of its pods' addresses.
    fn pods(self) -> (&'static str, u8) {
        match self {
            Kind::Meshd => ("on", 10),
            Kind::TelemetryOff => ("off", 11),
            Kind::Minimal => ("min", 12),
            Kind::NoJsonLog => ("nolog", 13),
            Kind::NoMetrics => ("nomet", 14),
            Kind::MinimalWith(e) => e.pods(),
        }
    }
    /// Sidecars driven by meshd, as opposed to a hand-written static pair.
    fn in_mesh(self) -> bool {
        !matches!(self, Kind::Minimal | Kind::MinimalWith(_))
    }
    /// The Telemetry object's spec selecting this variant's workloads (label `telemetry:
    /// <prefix>`); none for meshd's default.
    fn telemetry_spec(self) -> Option<&'static str> {
        const NO_LOG: &str = "  accessLogging: [{disabled: true}]\n";
        const NO_METRICS: &str = "  metrics: [{overrides: [{disabled: true}]}]\n";
        match self {
            Kind::Meshd | Kind::Minimal | Kind::MinimalWith(_) => None,
            Kind::NoJsonLog => Some(NO_LOG),
            Kind::NoMetrics => Some(NO_METRICS),
            Kind::TelemetryOff => Some(concat!(
                "  accessLogging: [{disabled: true}]\n",
                "  metrics: [{overrides: [{disabled: true}]}]\n"
            )),
        }
    }
}

fn pod_ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 44, 0, host)
}

fn vip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, host)
}

fn fqdn(name: &str) -> String {
    format!("{name}.{NS}.svc.cluster.local")
}

/// One wrk run, as its `--latency` report says.
#[derive(Clone, Debug, Default)]
struct WrkRun {
    requests: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    socket_errors: u64,
}

/// `1.23ms`, `456.00us`, `1.01s` → milliseconds.
fn duration_ms(s: &str) -> Option<f64> {
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60_000.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

fn parse_wrk(out: &str) -> anyhow::Result<WrkRun> {
    let mut run = WrkRun::default();
    let mut have = (false, false, false);
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => run.p50_ms = duration_ms(v).context("wrk p50")?,
            ["99%", v] => {
                run.p99_ms = duration_ms(v).context("wrk p99")?;
                have.0 = true;
            }
            [n, "requests", "in", ..] => {
                run.requests = n.parse().context("wrk request count")?;
                have.1 = true;
            }
            ["Requests/sec:", v] => {
                run.rps = v.parse().context("wrk requests/s")?;
                have.2 = true;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => run.non_2xx = n.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                run.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    if have != (true, true, true) {
        bail!("unexpected wrk output (was it run with --latency?):\n{out}");
    }
    Ok(run)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn mesh_yaml() -> String {
    let mut y = format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: strict, namespace: {NS}}}\nspec: {{mtls: {{mode: STRICT}}}}\n---\n"
    );
    for kind in [
        Kind::Meshd,
        Kind::NoJsonLog,
        Kind::NoMetrics,
        Kind::TelemetryOff,
    ] {
        let (telemetry, host) = kind.pods();
        let prefix = telemetry;
        if let Some(spec) = kind.telemetry_spec() {
            write!(
                y,
                "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {prefix}, namespace: {NS}}}\n\
                 spec:\n  selector: {{matchLabels: {{telemetry: '{prefix}'}}}}\n{spec}---\n"
            )
            .expect("writing to a String");
        }
        for (role, h) in [("client", host), ("server", host + 10)] {
            let name = format!("{prefix}-{role}");
            write!(
                y,
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {NS}}}\n\
                 spec:\n  hosts: [{host}]\n  addresses: [{vip}]\n  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]\n  \
                 location: MESH_INTERNAL\n  resolution: STATIC\n  workloadSelector: {{labels: {{app: {name}}}}}\n---\n\
                 apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {NS}}}\n\
                 spec:\n  address: {ip}\n  labels: {{app: {name}, telemetry: '{telemetry}'}}\n  serviceAccount: {name}\n---\n",
                host = fqdn(&name),
                vip = vip(h),
                ip = pod_ip(h),
            )
            .expect("writing to a String");
        }
    }
    y
}

/// One variant's client pod and the URL its load goes to.
struct Variant {
    kind: Kind,
    client: Pod,
    url: String,
    runs: Vec<WrkRun>,
}

fn run_wrk(d: &DataplaneArgs, v: &Variant, secs: u64) -> anyhow::Result<WrkRun> {
    let mut cmd = v.client.exec([d.wrk.as_os_str()]);
    cmd.arg("-c")
        .arg(d.connections.to_string())
        .arg("-t")
        .arg(d.wrk_threads.to_string())
        .arg("-d")
        .arg(format!("{secs}s"))
        .arg("--latency")
        .arg(&v.url);
    let out = cmd
        .output()
        .with_context(|| format!("running {} (install: apt-get install wrk)", d.wrk.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed for {}: {}\n{text}\n{}",
            v.kind.label(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("variant {}", v.kind.label()))
}

/// The requests meshd counted from the telemetry-on server's sidecar (`reporter=destination`):
/// proof that telemetry was really on during the rounds that say so.
fn counted_by_meshd(mesh: &LocalMesh) -> f64 {
    let Ok((200, text)) = mesh.admin_get("/metrics") else {
        return 0.0;
    };
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| {
            l.contains("reporter=\"destination\"")
                && l.contains("destination_workload=\"on-server\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `<variant>-{client,server}.json`: each sidecar's `/config_dump` (the minimal pair's client
/// only: its server pod is not in the mesh's list).
fn dump_configs(
    mesh: &LocalMesh,
    variants: &[Variant],
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for v in variants {
        let (prefix, _) = v.kind.pods();
        let mut pods = vec![("client", v.client.clone())];
        if let Some(server) = mesh.sidecar(&format!("{prefix}-server")) {
            pods.push(("server", server.pod));
        }
        for (role, pod) in pods {
            let (status, body) = envoy_admin_get(&pod, "/config_dump")?;
            if status != 200 {
                bail!("{}: /config_dump answered {status}", pod.name);
            }
            let path = dir.join(format!("{}-{role}.json", v.kind.label()));
            std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    println!("config dumps written to {}", dir.display());
    Ok(())
}

/// Run the benchmark; the report goes to stdout.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let d = &args.dataplane;
    if d.rounds == 0 || d.round_secs == 0 {
        bail!("--rounds and --round-secs must be at least 1");
    }
    let meshd = std::fs::canonicalize(&args.meshd)
        .with_context(|| format!("meshd binary {}", args.meshd.display()))?;
    let envoy = envoy_binary()?;
    let work = args.work_dir.join("dataplane");
    let _ = std::fs::remove_dir_all(&work);
    let config_dir = work.join("config");
    let static_dir = work.join("static");
    for dir in [&config_dir, &static_dir] {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755))?;
    write_readable(&config_dir.join("mesh.yaml"), &mesh_yaml())?;
    let mut opts = LocalMeshOptions::new(
        &format!("dpb{}", std::process::id()),
        meshd.clone(),
        envoy.clone(),
        work.clone(),
        work.join("state"),
    );
    opts.config_dir = Some(config_dir);
    let mesh = LocalMesh::create(opts)?;
    mesh.start_control_plane()?;
    let cp_pid = mesh
        .control_plane_pid()
        .context("meshd serve is not running")?;

    let mut kinds = Vec::new();
    if d.floor {
        kinds.push(Kind::TelemetryOff);
    } else if d.log_paths {
    } else {
        kinds.push(Kind::Meshd);
        if d.breakdown {
            kinds.extend([Kind::NoJsonLog, Kind::NoMetrics]);
        }
        if !d.skip_telemetry_off {
            kinds.push(Kind::TelemetryOff);
        }
    }
    kinds.push(Kind::Minimal);
    if d.floor {
        kinds.extend(minimal::Extra::ALL.map(Kind::MinimalWith));
    }
    if d.log_paths {
        kinds.extend(minimal::Extra::LOG_PATHS.map(Kind::MinimalWith));
    }
    let mut hosts = Vec::new();
    for kind in kinds.iter().filter(|k| k.in_mesh()) {
        let (prefix, host) = kind.pods();
        hosts.push((fqdn(&format!("{prefix}-server")), vip(host + 10)));
    }
    mesh.set_hosts(&hosts)?;
    let mut variants = Vec::new();
    let mut _minimal_procs = Vec::new();
    let mut sinks = Vec::new();
    for kind in kinds {
        let (prefix, host) = kind.pods();
        let (client, url) = if !kind.in_mesh() {
            // Each log variant its own sink, so the bytes it reports are that variant's.
            let gateway = mesh.gateway();
            let listener = mesh
                .node()
                .in_netns(move || std::net::TcpListener::bind((gateway, 0)))??;
            let sink = sink::start(listener)?;
            let addr = sink.addr;
            sinks.push((kind, sink));
            let (pod, procs) = minimal::start(&mesh, &meshd, &envoy, &static_dir, kind, addr)?;
            _minimal_procs.extend(procs);
            (pod, format!("http://{}:{PORT}/", pod_ip(host + 10)))
        } else {
            for (role, h) in [("server", host + 10), ("client", host)] {
                mesh.add_sidecar_pod_with(
                    &format!("{prefix}-{role}.{NS}"),
                    pod_ip(h),
                    PORT,
                    SidecarOptions::default(),
                )?;
            }
            let client = mesh
                .sidecar(&format!("{prefix}-client"))
                .context("client")?;
            let url = format!("http://{}:{PORT}/", fqdn(&format!("{prefix}-server")));
            (client.pod, url)
        };
        let mut last = String::new();
        let up = wait_until(Duration::from_secs(30), || match client.get(&url) {
            Ok((200, _)) => true,
            other => {
                last = format!("{other:?}");
                false
            }
        });
        if !up {
            bail!(
                "{}: {url} does not answer 200 through the client sidecar; last: {last}",
                kind.label()
            );
        }
        variants.push(Variant {
            kind,
            client,
            url,
            runs: Vec::new(),
        });
    }

    let warmup = d.round_secs.min(2);
    for v in &variants {
        run_wrk(d, v, warmup)?;
    }
    if let Some(dir) = &d.dump_configs {
        dump_configs(&mesh, &variants, dir)?;
    }
    println!(
        "meshd-load --dataplane: {} rounds x {} s per variant, wrk -c {} -t {}, variants {}",
        d.rounds,
        d.round_secs,
        d.connections,
        d.wrk_threads,
        variants
            .iter()
            .map(|v| v.kind.label())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (mut on_cpu, mut on_secs, mut other_cpu, mut other_secs) = (0.0, 0.0, 0.0, 0.0);
    let rss_before = rss_kb(cp_pid);
    let mut rss_peak = rss_before;
    for round in 1..=d.rounds {
        for v in &mut variants {
            let (cpu0, t0) = (cpu_seconds(cp_pid), Instant::now());
            let run = run_wrk(d, v, d.round_secs)?;
            let (cpu, secs) = (cpu_seconds(cp_pid) - cpu0, t0.elapsed().as_secs_f64());
            if v.kind == Kind::Meshd {
                (on_cpu, on_secs) = (on_cpu + cpu, on_secs + secs);
                rss_peak = rss_peak.max(rss_kb(cp_pid));
            } else {
                (other_cpu, other_secs) = (other_cpu + cpu, other_secs + secs);
            }
            println!(
                "round {round} {:<20} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  non-2xx {}  socket errors {}",
                v.kind.label(),
                run.rps,
                run.p50_ms,
                run.p99_ms,
                run.non_2xx,
                run.socket_errors
            );
            v.runs.push(run);
        }
    }
    // Entries reach meshd within a flush interval after the load stops.
    let counted = {
        let mut n = 0.0;
        wait_until(Duration::from_secs(10), || {
            n = counted_by_meshd(&mesh);
            n > 0.0
        });
        n
    };
    let rss_after = rss_kb(cp_pid);
    for (kind, sink) in &sinks {
        let Some(v) = variants.iter().find(|v| v.kind == *kind) else {
            continue;
        };
        let requests: u64 = v.runs.iter().map(|r| r.requests).sum();
        if sink.received() > 0 && requests > 0 {
            // Warm-up requests are in the bytes but not in the runs: an upper bound.
            println!(
                "{:<20} sent {} bytes to its sink: {:.0} bytes per request (both sides)",
                kind.label(),
                sink.received(),
                sink.received() as f64 / requests as f64
            );
        }
    }
    report(
        &variants,
        Usage {
            on_cpu,
            on_secs,
            other_cpu,
            other_secs,
            rss_before,
            rss_peak: rss_peak.max(rss_after),
            counted,
        },
    )
}

/// meshd's own cost while the variants ran.
struct Usage {
    on_cpu: f64,
    on_secs: f64,
    other_cpu: f64,
    other_secs: f64,
    rss_before: u64,
    rss_peak: u64,
    counted: f64,
}

fn report(variants: &[Variant], u: Usage) -> anyhow::Result<()> {
    let summary = |v: &Variant| {
        let pick = |f: fn(&WrkRun) -> f64| median(&mut v.runs.iter().map(f).collect::<Vec<_>>());
        (pick(|r| r.rps), pick(|r| r.p50_ms), pick(|r| r.p99_ms))
    };
    println!(
        "\n{:<20} {:>12} {:>10} {:>10}",
        "variant", "median rps", "p50 ms", "p99 ms"
    );
    for v in variants {
        let (rps, p50, p99) = summary(v);
        println!("{:<20} {rps:>12.0} {p50:>10.2} {p99:>10.2}", v.kind.label());
    }
    let minimal = variants.iter().find(|v| v.kind == Kind::Minimal);
    if let Some(min) = minimal {
        let (min_rps, _, min_p99) = summary(min);
        for v in variants.iter().filter(|v| v.kind != Kind::Minimal) {
            let (rps, _, p99) = summary(v);
            // Per-round ratios too: each round's pair ran back to back, so their spread shows
            // how much of the median ratio is noise.
            let mut per_round: Vec<f64> = v
                .runs
                .iter()
                .zip(&min.runs)
                .map(|(a, b)| a.rps / b.rps.max(f64::MIN_POSITIVE))
                .collect();
            let ratios: Vec<String> = per_round.iter().map(|r| format!("{r:.3}")).collect();
            println!(
                "{}/minimal: rps ratio {:.3} (median of per-round ratios {:.3}: {}), p99 {:+.2} ms",
                v.kind.label(),
                rps / min_rps.max(f64::MIN_POSITIVE),
                median(&mut per_round),
                ratios.join(" "),
                p99 - min_p99
            );
        }
    }
    if let Some(on) = variants.iter().find(|v| v.kind == Kind::Meshd) {
        let rps: f64 = on.runs.iter().map(|r| r.requests as f64).sum::<f64>() / u.on_secs.max(1e-9);
        let per_k = rps / 1000.0;
        let cores = u.on_cpu / u.on_secs.max(1e-9);
        let idle = u.other_cpu / u.other_secs.max(1e-9);
        let growth_mb = u.rss_peak.saturating_sub(u.rss_before) as f64 / 1024.0;
        println!(
            "meshd serve during telemetry-on rounds: {:.1} CPU s over {:.1} s at {rps:.0} req/s \
             (each request reported by both sidecars) = {:.1} % of a core, {:.1} % of a core per 1000 req/s \
             (other rounds: {:.1} % of a core); RSS {:.1} MB before, peak {:.1} MB (+{growth_mb:.1} MB, \
             {:.2} MB per 1000 req/s); meshd counted {:.0} requests at the telemetry-on server",
            u.on_cpu,
            u.on_secs,
            cores * 100.0,
            cores * 100.0 / per_k.max(1e-9),
            idle * 100.0,
            u.rss_before as f64 / 1024.0,
            u.rss_peak as f64 / 1024.0,
            growth_mb / per_k.max(1e-9),
            u.counted
        );
    }
    let mut failed = Vec::new();
    for v in variants {
        let served: u64 = v.runs.iter().map(|r| r.requests).sum();
        let errors: u64 = v.runs.iter().map(|r| r.non_2xx).sum();
        if served == 0 || errors > 0 {
            failed.push(format!(
                "{}: {served} requests, {errors} non-2xx",
                v.kind.label()
            ));
        }
    }
    if variants.iter().any(|v| v.kind == Kind::Meshd) && u.counted <= 0.0 {
        failed.push("meshd counted no request of the telemetry-on variant".into());
    }
    if !failed.is_empty() {
        bail!("data-plane bench failed: {}", failed.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_latency_report() {
        let out = "Running 2s test @ http://x:8080/\n  2 threads and 16 connections\n  Latency Distribution\n     50%  512.00us\n     75%    1.02ms\n     90%    2.00ms\n     99%    1.50s\n  4242 requests in 2.00s, 1.00MB read\n  Non-2xx or 3xx responses: 3\n  Socket errors: connect 0, read 2, write 1, timeout 0\nRequests/sec:   2121.00\nTransfer/sec:  500.00KB\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 4242);
        assert_eq!(r.non_2xx, 3);
        assert_eq!(r.socket_errors, 3);
        assert!((r.rps - 2121.0).abs() < 1e-9);
        assert!((r.p50_ms - 0.512).abs() < 1e-9);
        assert!((r.p99_ms - 1500.0).abs() < 1e-9);
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
