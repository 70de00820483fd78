//! The `meshd` command line.

use crate::app;
use crate::bootstrap::{self, BootstrapSpec};
use crate::source::FileSource;
use crate::status_cli::AdminArgs;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use meshd_ca::{CaConfig, CertificateAuthority, RootKeyAlgorithm};
use meshd_model::duration;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod serve;
pub use serve::ServeArgs;

#[derive(Parser)]
#[command(
    name = "meshd",
    version,
    about = "A lightweight control plane for stock Envoy sidecars that reads Istio's APIs"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// How meshd logs to stderr: `text` for people, `json` (one object per line, span fields
    /// such as the proxy id included) for log pipelines.
    #[arg(long, global = true, env = "MESHD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The control plane: xDS, CA, admin API.
    Serve(ServeArgs),
    /// The VoiceCore mesh on this machine: eight services behind stock Envoy sidecars and an ingress gateway.
    #[cfg(feature = "demo")]
    Demo(meshd_localmesh::demo::DemoArgs),
    /// Write the Envoy bootstrap for one workload.
    Bootstrap(BootstrapArgs),
    /// Install the traffic-capture rules in this network namespace (istio-iptables' flags).
    InitIptables(crate::iptables::InitIptablesArgs),
    /// Every connected proxy and its sync state per xDS type.
    ProxyStatus(AdminArgs),
    /// What the server last sent one proxy.
    ProxyConfig(ProxyConfigArgs),
    /// Validate mesh config offline: `file:line: message` per problem, exit 1 if any.
    Analyze(AnalyzeArgs),
    /// Version, git revision, Envoy API version.
    Version,
    /// The mesh CA of a running server.
    #[command(subcommand)]
    Ca(CaCommand),
    /// A tiny HTTP workload (the demo's and the tests' app).
    #[cfg(feature = "demo")]
    #[command(hide = true)]
    Workload(meshd_localmesh::workload_app::WorkloadArgs),
    /// Print the stock Envoy binary meshd's demo and tests use, installing it if missing.
    #[cfg(feature = "demo")]
    #[command(hide = true)]
    EnvoyPath,
    /// Inject sidecars into Kubernetes manifests offline, exactly as the webhook would.
    KubeInject(crate::kube_inject::KubeInjectArgs),
    /// Open the web dashboard (port-forwarding to a meshd pod in Kubernetes mode).
    Dashboard(crate::admin::dashboard::open::DashboardArgs),
    /// The CustomResourceDefinitions of the Istio kinds, with schemas from meshd's model
    /// (the chart's crds/ is this output).
    Crds(crate::crds::CrdsArgs),
    /// Wait until the sidecar's Envoy is ready (the injected postStart hook).
    #[command(hide = true)]
    WaitProxy(crate::proxy_wait::WaitProxyArgs),
}

/// `meshd` alone is `meshd serve` with its defaults (and `MESHD_*` environment).
#[derive(Parser)]
struct DefaultServe {
    #[command(flatten)]
    args: ServeArgs,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
}

/// `ecdsa-p256` | `rsa-2048` | `rsa-4096`, listed in `--help`.
pub(crate) fn root_key_algorithm_parser()
-> impl clap::builder::TypedValueParser<Value = RootKeyAlgorithm> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(RootKeyAlgorithm::ALL.map(RootKeyAlgorithm::as_str))
        .map(|s| {
            s.parse::<RootKeyAlgorithm>()
                .expect("PossibleValuesParser only passes listed values")
        })
}

#[derive(Args)]
struct BootstrapArgs {
    /// NAME.NAMESPACE of a WorkloadEntry.
    #[arg(long)]
    workload: String,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_address: String,
    #[arg(long, env = "MESHD_STATE_DIR", default_value = "./.meshd")]
    state_dir: PathBuf,
    #[arg(long, env = "MESHD_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    #[arg(long, env = "MESHD_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Key algorithm of the root CA, when this creates the state dir's CA (as `serve`'s).
    #[arg(long, env = "MESHD_ROOT_KEY_ALGORITHM", default_value = "ecdsa-p256", value_parser = root_key_algorithm_parser())]
    root_key_algorithm: RootKeyAlgorithm,
    /// Delta xDS (incremental), as Istio's sidecars since 1.22; `--delta false` (or
    /// `ISTIO_DELTA_XDS=false`, Istio's opt-out) for state of the world.
    #[arg(long, env = "ISTIO_DELTA_XDS", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    delta: bool,
    /// How long the credential in the bootstrap is accepted (file mode). Open streams stay up
    /// past it; a reconnect after it needs a new bootstrap.
    #[arg(long, env = "MESHD_CREDENTIAL_TTL", default_value = "168h", value_parser = parse_duration)]
    credential_ttl: Duration,
    /// Also copy `meshd-proxy-wait` (beside meshd) to this path, for the proxy container's
    /// postStart hook under holdApplicationUntilProxyStarts (the injector sets it).
    #[arg(long)]
    install_proxy_wait: Option<PathBuf>,
    /// Reported as the node's `ISTIO_VERSION` metadata, which EnvoyFilter
    /// `match.proxy.proxyVersion` matches (none: a version pattern sees an empty string).
    #[arg(long, env = "MESHD_ISTIO_VERSION")]
    istio_version: Option<String>,
    #[command(flatten)]
    kube: crate::kube_bootstrap::KubeBootstrapArgs,
}

#[derive(Args)]
struct ProxyConfigArgs {
    proxy_id: String,
    #[command(flatten)]
    admin: AdminArgs,
    #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
    output: String,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Rotate the root: add a new root to every proxy's trust bundle, re-issue every
    /// certificate under it, then drop the old root. Zero downtime; survives restarts.
    RotateRoot(RotateRootArgs),
}

#[derive(Args)]
struct RotateRootArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Return once the rotation started instead of following it to the end.
    #[arg(long)]
    no_wait: bool,
    /// How long to follow the rotation before giving up (it keeps going on the server).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    timeout: Duration,
    /// Stop the rotation after this phase (add-root, switch-signer, drop-old); the next
    /// server start resumes it.
    #[arg(long, hide = true)]
    pause_after: Option<String>,
}

#[derive(Args)]
struct AnalyzeArgs {
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MESHD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// Every proxy holds a connection: lift the soft descriptor limit to the hard one, as a server
/// for thousands of proxies must.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = match cli.command {
        Some(c) => c,
        None => Command::Serve(DefaultServe::parse_from(["meshd"]).args),
    };
    match command {
        Command::Serve(args) => {
            raise_fd_limit();
            let config = args.to_config()?;
            runtime()?.block_on(async {
                let app = app::build(config).await?;
                app.run_until_signal().await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => meshd_localmesh::demo::run(args),
        Command::Bootstrap(args) => {
            write_bootstrap(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::InitIptables(args) => {
            crate::iptables::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ProxyStatus(args) => runtime()?.block_on(crate::status_cli::proxy_status(
            &crate::status_cli::AdminClient::new(&args)?,
        )),
        Command::ProxyConfig(args) => runtime()?.block_on(crate::status_cli::proxy_config(
            &crate::status_cli::AdminClient::new(&args.admin)?,
            &args.proxy_id,
            &args.output,
        )),
        Command::Analyze(args) => Ok(crate::analyze::run(&args.paths)),
        Command::Ca(CaCommand::RotateRoot(args)) => {
            runtime()?.block_on(crate::root_rotation::cli_rotate_root(
                &crate::status_cli::AdminClient::new(&args.admin)?,
                args.no_wait,
                args.timeout,
                args.pause_after.as_deref(),
            ))
        }
        Command::Version => {
            let v = crate::admin::version_info();
            println!(
                "meshd {} (git {}), Envoy xDS API {}, tested with Envoy {}",
                v["version"].as_str().unwrap_or(""),
                v["git_revision"].as_str().unwrap_or(""),
                v["envoy_api"].as_str().unwrap_or(""),
                v["envoy_tested"].as_str().unwrap_or(""),
            );
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "demo")]
        Command::EnvoyPath => {
            println!("{}", meshd_localmesh::podnet::ensure_envoy()?.display());
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "demo")]
        Command::Workload(args) => {
            runtime()?.block_on(meshd_localmesh::workload_app::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dashboard(args) => crate::admin::dashboard::open::run(args),
        Command::KubeInject(args) => {
            crate::kube_inject::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crds(args) => {
            crate::crds::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::WaitProxy(args) => {
            crate::proxy_wait::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn write_bootstrap(args: &BootstrapArgs) -> anyhow::Result<()> {
    if let Some(to) = &args.install_proxy_wait {
        crate::proxy_wait::install(to)?;
    }
    if args.kube.registry == "kubernetes" {
        return crate::kube_bootstrap::write(
            &args.workload,
            &args.out,
            &args.xds_address,
            args.admin_port,
            args.delta,
            args.istio_version.clone(),
            &args.kube,
        );
    }
    let mesh = FileSource::new(args.config_dir.clone()).reload();
    let (claims, ip, node_type) = bootstrap::resolve(&mesh, &args.workload, args.credential_ttl)?;
    let mut proxy = meshd_xds::proxy::Proxy::for_workload(
        mesh.workload(&claims.workload, &claims.namespace)
            .context("the workload resolved above")?,
        &args.trust_domain,
    );
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating state dir {}", args.state_dir.display()))?;
    let ca = CertificateAuthority::load_or_create(&CaConfig {
        state_dir: args.state_dir.clone(),
        trust_domain: args.trust_domain.clone(),
        root_key_algorithm: args.root_key_algorithm,
        ..CaConfig::default()
    })
    .context("loading the mesh CA (the credential is signed with its key)")?;
    let spec = BootstrapSpec {
        workload: claims.workload.clone(),
        namespace: claims.namespace.clone(),
        ip,
        node_type,
        xds_address: args.xds_address.clone(),
        admin_port: args.admin_port,
        credential: ca.issue_credential(&claims)?,
        delta: args.delta,
        istio_version: args.istio_version.clone(),
        stats_matcher: args.kube.stats_matcher.clone(),
    };
    let rendered = bootstrap::render(&spec)?;
    proxy.metadata = crate::bootstrap_patch::node_metadata(&rendered["node"]);
    let patch = crate::bootstrap_patch::from_mesh(mesh, &proxy);
    let rendered = crate::bootstrap_patch::merge(&rendered, &patch)?;
    let text = serde_json::to_string_pretty(&rendered)?;
    bootstrap::write_private(&args.out, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let argv = ["meshd", "serve"].iter().chain(args).copied();
        match Cli::try_parse_from(argv)?.command {
            Some(Command::Serve(a)) => Ok(a),
            _ => unreachable!("parsed a serve command"),
        }
    }

    #[test]
    fn root_key_algorithm_flag_reaches_the_ca_config() {
        let default = serve(&[]).unwrap();
        assert_eq!(default.root_key_algorithm, RootKeyAlgorithm::EcdsaP256);
        assert_eq!(
            default.to_config().unwrap().ca_config().root_key_algorithm,
            RootKeyAlgorithm::EcdsaP256
        );
        for alg in RootKeyAlgorithm::ALL {
            let a = serve(&["--root-key-algorithm", alg.as_str()]).unwrap();
            let ca = a.to_config().unwrap().ca_config();
            assert_eq!(ca.root_key_algorithm, alg);
            assert_eq!(ca.root_cert_ttl, Duration::from_secs(87600 * 3600));
        }
        let e = serve(&["--root-key-algorithm", "rsa-1024"]).expect_err("rsa-1024 is refused");
        let msg = e.to_string();
        assert!(
            msg.contains("rsa-2048") && msg.contains("rsa-4096"),
            "{msg}"
        );
    }

    #[test]
    fn mesh_config_providers_reach_the_generator_and_a_bad_file_stops_the_start() {
        let dir = std::env::temp_dir().join(format!("meshd-mesh-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("mesh.yaml");
        std::fs::write(
            &good,
            "enableTracing: true\nextensionProviders:\n- name: ext\n  envoyExtAuthzHttp: {service: a.b.svc.cluster.local, port: 80}\n",
        )
        .unwrap();
        let path = good.to_str().unwrap();
        let config = serve(&["--mesh-config", path])
            .unwrap()
            .to_config()
            .unwrap();
        let names: Vec<&str> = config
            .generator
            .ext_authz_providers
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["ext"]);
        let bad = dir.join("bad.yaml");
        std::fs::write(
            &bad,
            "extensionProviders:\n- name: ext\n  envoyExtAuthzHttp: {service: a, port: eighty}\n",
        )
        .unwrap();
        let e = serve(&["--mesh-config", bad.to_str().unwrap()])
            .unwrap()
            .to_config()
            .expect_err("a bad file stops the start");
        assert!(
            e.to_string()
                .contains("extensionProviders[0].envoyExtAuthzHttp.port"),
            "{e}"
        );
        let missing = dir.join("missing.yaml");
        assert!(
            serve(&["--mesh-config", missing.to_str().unwrap()])
                .unwrap()
                .to_config()
                .is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Istio users set their sidecars' defaults in MeshConfig's `defaultConfig` (the chart's
    /// `meshConfig` value); the injector takes them as its mesh default, over the injector
    /// config's, and a value it would refuse in a pod's `proxy.istio.io/config` stops the start.
    #[test]
    fn mesh_default_config_reaches_the_injector_and_a_bad_value_stops_the_start() {
        let dir = std::env::temp_dir().join(format!("meshd-default-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let injector = dir.join("injector.yaml");
        std::fs::write(
            &injector,
            "terminationDrainDuration: 3s\nproxyStatsMatcher: {inclusionPrefixes: [upstream_cx]}\n",
        )
        .unwrap();
        let mesh = dir.join("mesh.yaml");
        std::fs::write(
            &mesh,
            "defaultConfig:\n  holdApplicationUntilProxyStarts: true\n  terminationDrainDuration: 9s\n  \
             proxyMetadata: {ISTIO_DELTA_XDS: \"false\"}\n  \
             proxyStatsMatcher: {inclusionSuffixes: [rbac.allowed]}\n  discoveryAddress: istiod:15012\n",
        )
        .unwrap();
        let inject = |mesh: &std::path::Path| {
            serve(&[
                "--webhook-port",
                "15017",
                "--injector-config",
                injector.to_str().unwrap(),
                "--mesh-config",
                mesh.to_str().unwrap(),
            ])
            .unwrap()
            .to_config()
            .map(|c| c.webhook.expect("the webhook is on").inject)
        };
        let cfg = inject(&mesh).unwrap();
        assert!(cfg.hold_application_until_proxy_starts);
        assert_eq!(cfg.termination_drain_duration, Duration::from_secs(9));
        assert_eq!(cfg.delta_xds, Some(false));
        let stats = cfg.proxy_stats_matcher.expect("a stats matcher");
        assert_eq!(stats.inclusion_prefixes, ["upstream_cx"]);
        assert_eq!(stats.inclusion_suffixes, ["rbac.allowed"]);
        let bad = dir.join("bad.yaml");
        std::fs::write(
            &bad,
            "defaultConfig:\n  terminationDrainDuration: forever\n",
        )
        .unwrap();
        let e = inject(&bad).expect_err("a bad defaultConfig stops the start");
        let msg = e.to_string();
        assert!(
            msg.contains(bad.to_str().unwrap())
                && msg.contains("defaultConfig: terminationDrainDuration: `forever`"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plaintext_xds_only_in_file_mode_unless_asked_for() {
        let plaintext = |args: &[&str]| serve(args).unwrap().to_config().unwrap().xds_plaintext;
        assert!(plaintext(&[]), "file mode keeps 15010 for the local demo");
        assert!(!plaintext(&["--registry", "kubernetes"]));
        assert!(plaintext(&["--registry", "kubernetes", "--xds-plaintext"]));
        assert!(plaintext(&[
            "--registry",
            "kubernetes",
            "--xds-plaintext=true"
        ]));
        assert!(!plaintext(&["--xds-plaintext=false"]));
    }

    #[test]
    fn sidecars_bootstrap_delta_xds_unless_told_otherwise() {
        let bootstrap = |extra: &[&str]| {
            let argv = [
                "meshd",
                "bootstrap",
                "--workload",
                "w.ns",
                "--out",
                "b.json",
            ]
            .iter()
            .chain(extra)
            .copied();
            match Cli::try_parse_from(argv).unwrap().command {
                Some(Command::Bootstrap(a)) => a.delta,
                _ => unreachable!("parsed a bootstrap command"),
            }
        };
        assert!(bootstrap(&[]), "Delta by default, as Istio since 1.22");
        assert!(bootstrap(&["--delta"]));
        assert!(!bootstrap(&["--delta=false"]));
        assert!(!bootstrap(&["--delta", "false"]));
    }
}
