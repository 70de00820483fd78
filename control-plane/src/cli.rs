//! The `meshd` command line.

use crate::app::{self, Config};
use crate::bootstrap::{self, BootstrapSpec};
use crate::source::FileSource;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use meshd_ca::{CaConfig, CertificateAuthority, RootKeyAlgorithm};
use meshd_model::duration;
use meshd_xds::GenOptions;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    Dashboard(crate::dashboard::open::DashboardArgs),
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

fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
}

/// `ecdsa-p256` | `rsa-2048` | `rsa-4096`, listed in `--help`.
fn root_key_algorithm_parser() -> impl clap::builder::TypedValueParser<Value = RootKeyAlgorithm> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(RootKeyAlgorithm::ALL.map(RootKeyAlgorithm::as_str))
        .map(|s| {
            s.parse::<RootKeyAlgorithm>()
                .expect("PossibleValuesParser only passes listed values")
        })
}

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Istio-API YAML files, watched for changes. Without it, the embedded VoiceCore mesh.
    #[arg(long, env = "MESHD_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    #[arg(long, env = "MESHD_REGISTRY", default_value = "file", value_parser = ["file", "kubernetes"])]
    pub registry: String,
    #[arg(long, env = "MESHD_STATE_DIR", default_value = "./.meshd")]
    pub state_dir: PathBuf,
    #[arg(long, env = "MESHD_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    #[arg(long, env = "MESHD_WORKLOAD_CERT_TTL", default_value = "2160h", value_parser = parse_duration)]
    pub workload_cert_ttl: Duration,
    #[arg(long, env = "MESHD_CERT_ROTATION_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub cert_rotation_window: Duration,
    #[arg(long, env = "MESHD_ROOT_CERT_TTL", default_value = "87600h", value_parser = parse_duration)]
    pub root_cert_ttl: Duration,
    /// Key algorithm of a newly generated root CA (first start, `meshd ca rotate-root`). An
    /// existing root keeps its key: to change it, set this and rotate the root. Certificates
    /// an RSA root signs use sha256WithRSAEncryption; the keys meshd generates for workloads
    /// stay ECDSA P-256.
    #[arg(long, env = "MESHD_ROOT_KEY_ALGORITHM", default_value = "ecdsa-p256", value_parser = root_key_algorithm_parser())]
    pub root_key_algorithm: RootKeyAlgorithm,
    /// Address every listener binds (default 127.0.0.1 in file mode, 0.0.0.0 in Kubernetes mode).
    #[arg(long, env = "MESHD_BIND")]
    pub bind: Option<IpAddr>,
    #[arg(long, env = "MESHD_XDS_PORT", default_value_t = 15010)]
    pub xds_port: u16,
    /// Serve plaintext xDS on `--xds-port` (default: true in file mode, for the local demo;
    /// false in Kubernetes mode). In Kubernetes mode its streams never get SDS secrets (no
    /// certificates, no keys): those are served over TLS (`--xds-tls-port`) only.
    #[arg(long, env = "MESHD_XDS_PLAINTEXT", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub xds_plaintext: Option<bool>,
    #[arg(long, env = "MESHD_XDS_TLS_PORT", default_value_t = 15012)]
    pub xds_tls_port: u16,
    /// Extra names (DNS or IP) for the TLS port's certificate, e.g. a load balancer's.
    #[arg(long, env = "MESHD_XDS_TLS_SANS", value_delimiter = ',')]
    pub xds_tls_san: Vec<String>,
    #[arg(long, env = "MESHD_ADMIN_PORT", default_value_t = 15014)]
    pub admin_port: u16,
    /// Injection webhook port (15017): always served in Kubernetes mode; in file mode only
    /// when this is given.
    #[arg(long, env = "MESHD_WEBHOOK_PORT")]
    pub webhook_port: Option<u16>,
    /// meshd's own namespace (never injected; the webhook serves `<service>.<namespace>.svc`).
    #[arg(long, env = "MESHD_NAMESPACE", default_value = "meshd-system")]
    pub namespace: String,
    /// Kubernetes mode: the MutatingWebhookConfiguration whose caBundle meshd keeps equal to
    /// the mesh trust bundle (default `meshd-sidecar-injector-<namespace>`, the chart's name for
    /// release `meshd`); `-` for none.
    #[arg(long, env = "MESHD_WEBHOOK_CONFIG_NAME")]
    pub webhook_config_name: Option<String>,
    /// Kubernetes mode: the ValidatingWebhookConfiguration (Istio config validation, served at
    /// `/validate` on the webhook port) whose caBundle meshd keeps current (default
    /// `meshd-validator-<namespace>`); `-` for none.
    #[arg(long, env = "MESHD_VALIDATING_WEBHOOK_CONFIG_NAME")]
    pub validating_webhook_config_name: Option<String>,
    /// Kubernetes mode: serve Gateway `credentialName` from Secrets, which needs read access to
    /// Secrets cluster-wide; `false` leaves Secrets alone (gateways then use certificate files).
    #[arg(long, env = "MESHD_GATEWAY_CREDENTIALS", default_value_t = true, action = clap::ArgAction::Set)]
    pub gateway_credentials: bool,
    /// The Service in front of meshd.
    #[arg(long, env = "MESHD_SERVICE_NAME", default_value = "meshd")]
    pub service_name: String,
    /// Sidecar injection settings, YAML or JSON with camelCase keys, each optional
    /// (proxyImage, initImage, xdsAddress, proxyResources, tokenAudience, ...).
    #[arg(long, env = "MESHD_INJECTOR_CONFIG")]
    pub injector_config: Option<PathBuf>,
    /// Quiet period after a config change before it is pushed.
    #[arg(long, env = "MESHD_DEBOUNCE_MS", default_value_t = 100)]
    pub debounce_ms: u64,
    /// After a start, how long a root rotation in progress waits for proxies to reconnect
    /// before it moves to its next phase.
    #[arg(long, env = "MESHD_ROOT_ROTATION_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub root_rotation_grace: Duration,
    /// Zipkin-compatible collector (HOST:PORT, e.g. a Jaeger or Zipkin `:9411`): every proxy
    /// traces each HTTP request (100 % sampling) and reports spans there (`/api/v2/spans`).
    #[arg(long, env = "MESHD_ZIPKIN_ADDRESS")]
    pub zipkin_address: Option<String>,
    /// JSON access logs on each proxy's stdout.
    #[arg(long, env = "MESHD_ACCESS_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
    /// Istio's request metrics on `/metrics`: each proxy streams its access log to meshd over
    /// the bootstrap's `xds-grpc` cluster. Default: on in file mode; off in Kubernetes mode,
    /// where pods injected before this version have no such cluster and would reject every
    /// listener naming it: turn it on once every injected pod runs a current bootstrap.
    #[arg(long, env = "MESHD_REQUEST_TELEMETRY", action = clap::ArgAction::Set)]
    pub request_telemetry: Option<bool>,
    /// Request-metric series (label sets) `/metrics` keeps in all; an entry that would add one
    /// more is dropped and counted in `meshd_telemetry_series_dropped_total{limit="total"}`.
    #[arg(long, env = "MESHD_TELEMETRY_MAX_SERIES", default_value_t = crate::telemetry::metrics::DEFAULT_MAX_SERIES)]
    pub telemetry_max_series: usize,
    /// Request-metric series one workload's proxies may add (`limit="reporter"` when over), so
    /// one proxy cannot take the others' budget.
    #[arg(long, env = "MESHD_TELEMETRY_MAX_SERIES_PER_PROXY", default_value_t = crate::telemetry::metrics::DEFAULT_MAX_SERIES_PER_REPORTER)]
    pub telemetry_max_series_per_proxy: usize,
    /// Kubernetes mode: the audience proxies' projected service-account tokens must carry.
    #[arg(long, env = "MESHD_TOKEN_AUDIENCE", default_value = crate::kube::token::DEFAULT_AUDIENCE)]
    pub token_audience: String,
    /// Kubernetes mode: the Secret (in meshd's namespace) holding the CA.
    #[arg(long, env = "MESHD_CA_SECRET", default_value = crate::kube::ca_secret::DEFAULT_CA_SECRET)]
    pub ca_secret: String,
    /// Kubernetes mode: the ConfigMap carrying the root certificate into injected namespaces.
    #[arg(long, env = "MESHD_ROOT_CERT_CONFIGMAP", default_value = crate::kube::ca_secret::DEFAULT_ROOT_CONFIGMAP)]
    pub root_cert_configmap: String,
    /// Boxed: the limits are most of `serve`'s arguments, and `Command` holds them inline.
    #[command(flatten)]
    pub limits: Box<crate::transport::TransportLimits>,
}

impl ServeArgs {
    /// SANs of the TLS port: `<service>.<namespace>.svc[.cluster.local]` (`MESHD_SERVICE_NAME`,
    /// default `meshd`; `MESHD_NAMESPACE`, default `meshd-system`), localhost, the bind
    /// address, and `--xds-tls-san`.
    fn xds_tls_names(&self, bind: IpAddr) -> Vec<String> {
        let env = |k: &str, d: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| d.to_string())
        };
        let mut names = crate::ca_service::serving_names(
            bind,
            &env("MESHD_SERVICE_NAME", "meshd"),
            &env("MESHD_NAMESPACE", "meshd-system"),
        );
        for n in &self.xds_tls_san {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        names
    }

    /// Kubernetes-mode settings.
    fn kube_config(&self) -> crate::kube::KubeConfig {
        crate::kube::KubeConfig {
            namespace: self.namespace.clone(),
            token_audience: self.token_audience.clone(),
            ca_secret: self.ca_secret.clone(),
            root_cert_configmap: self.root_cert_configmap.clone(),
            webhook_config: match self.webhook_config_name.as_deref() {
                Some("-") => None,
                Some(name) => Some(name.to_string()),
                None => Some(format!("meshd-sidecar-injector-{}", self.namespace)),
            },
            validating_webhook_config: match self.validating_webhook_config_name.as_deref() {
                Some("-") => None,
                Some(name) => Some(name.to_string()),
                None => Some(format!("meshd-validator-{}", self.namespace)),
            },
            gateway_credentials: self.gateway_credentials,
            token_review: crate::kube::token::ReviewLimits {
                concurrency: self.limits.token_review_concurrency,
                negative_ttl: self.limits.token_review_negative_ttl,
            },
            ..Default::default()
        }
    }

    pub fn to_config(&self) -> anyhow::Result<Config> {
        let kubernetes = (self.registry == "kubernetes").then(|| self.kube_config());
        let bind = self.bind.unwrap_or(if kubernetes.is_some() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([127, 0, 0, 1])
        });
        Ok(Config {
            config_dir: self.config_dir.clone(),
            state_dir: self.state_dir.clone(),
            trust_domain: self.trust_domain.clone(),
            workload_cert_ttl: self.workload_cert_ttl,
            cert_rotation_window: self.cert_rotation_window,
            root_cert_ttl: self.root_cert_ttl,
            root_key_algorithm: self.root_key_algorithm,
            bind,
            xds_port: self.xds_port,
            xds_plaintext: self.xds_plaintext.unwrap_or(kubernetes.is_none()),
            xds_tls_port: self.xds_tls_port,
            xds_tls_names: self.xds_tls_names(bind),
            admin_port: self.admin_port,
            debounce: Duration::from_millis(self.debounce_ms),
            drain_deadline: Duration::from_secs(5),
            root_rotation_grace: self.root_rotation_grace,
            generator: GenOptions {
                trust_domain: self.trust_domain.clone(),
                access_log: self.access_log,
                request_telemetry: self.request_telemetry.unwrap_or(kubernetes.is_none()),
                zipkin_cluster: self.zipkin_address.clone(),
                ..GenOptions::default()
            },
            webhook: crate::webhook::from_flags(
                self.webhook_port,
                self.registry == "kubernetes",
                &self.namespace,
                &self.service_name,
                self.xds_tls_port,
                self.injector_config.as_deref(),
            )?,
            kubernetes,
            limits: (*self.limits).clone(),
            telemetry_limits: crate::telemetry::SeriesLimits {
                total: self.telemetry_max_series,
                per_reporter: self.telemetry_max_series_per_proxy,
            },
        })
    }
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
    #[command(flatten)]
    kube: crate::kube_bootstrap::KubeBootstrapArgs,
}

/// Where the admin API is and how to prove an off-host caller is an administrator.
#[derive(Args)]
pub struct AdminArgs {
    #[arg(long, default_value = "http://127.0.0.1:15014")]
    pub admin: String,
    /// Bearer token for the admin API (Kubernetes mode: checked by TokenReview and a
    /// SubjectAccessReview of `debug.meshd.io`). Default: the token of the kubeconfig's
    /// current user, if it has one (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`); none on
    /// loopback works without one.
    #[arg(long, env = "MESHD_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The kubeconfig whose current user's token is sent when `--token` is not given.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
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
        Command::Dashboard(args) => crate::dashboard::open::run(args),
        Command::KubeInject(args) => {
            crate::kube_inject::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::WaitProxy(args) => {
            runtime()?.block_on(crate::proxy_wait::run(&args))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn write_bootstrap(args: &BootstrapArgs) -> anyhow::Result<()> {
    if args.kube.registry == "kubernetes" {
        return crate::kube_bootstrap::write(
            &args.workload,
            &args.out,
            &args.xds_address,
            args.admin_port,
            args.delta,
            &args.kube,
        );
    }
    let mesh = FileSource::new(args.config_dir.clone()).reload();
    let (claims, ip, node_type) = bootstrap::resolve(&mesh, &args.workload, args.credential_ttl)?;
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
    };
    let text = serde_json::to_string_pretty(&bootstrap::render(&spec)?)?;
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
