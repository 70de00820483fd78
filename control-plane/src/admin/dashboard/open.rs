//! `meshd dashboard`: prints the dashboard's URL and opens it in a browser, as `istioctl
//! dashboard` does. With `--admin URL` it opens that server's dashboard; with `--namespace`
//! (Kubernetes mode) it port-forwards a local port to a running meshd pod's admin port through
//! the API server, so the connection arrives on the pod's loopback, which the admin guard
//! trusts, and only the kubeconfig's user's `pods/portforward` permission decides.

use anyhow::{Context, anyhow};
use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DashboardArgs {
    /// The admin API of a meshd serving the dashboard (file mode, or a reachable server).
    #[arg(long, conflicts_with = "namespace")]
    pub admin: Option<String>,
    /// Kubernetes mode: the namespace of meshd's pods; port-forwards to one of them.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The kubeconfig (default: `KUBECONFIG`, `~/.kube/config`, in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Label selector of meshd's pods (the chart labels them `app: meshd`).
    #[arg(long, default_value = "app=meshd")]
    pub selector: String,
    /// The pods' admin port.
    #[arg(long, default_value_t = 15014)]
    pub admin_port: u16,
    /// Local port of the port-forward (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Only print the URL; do not start a browser.
    #[arg(long)]
    pub no_browser: bool,
}

/// Starts the desktop's browser on `url` when `xdg-open` exists; says so either way.
fn open_browser(url: &str, no_browser: bool) {
    if no_browser {
        return;
    }
    match std::process::Command::new("xdg-open")
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(_) => println!("Opened it with xdg-open."),
        Err(_) => println!("(no xdg-open here: open the URL in a browser)"),
    }
}

pub fn run(args: DashboardArgs) -> anyhow::Result<ExitCode> {
    let Some(namespace) = args.namespace.clone() else {
        let admin = args
            .admin
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1:15014".into());
        let url = format!("{}{}", admin.trim_end_matches('/'), super::PATH);
        println!("meshd dashboard: {url}");
        open_browser(&url, args.no_browser);
        return Ok(ExitCode::SUCCESS);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(port_forward(args, namespace))
}

/// A running, ready meshd pod matching the selector.
async fn pick_pod(pods: &Api<Pod>, selector: &str, namespace: &str) -> anyhow::Result<String> {
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .with_context(|| format!("listing pods `{selector}` in namespace {namespace}"))?;
    let ready = |p: &Pod| {
        p.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    };
    list.items
        .iter()
        .find(|p| ready(p))
        .and_then(|p| p.metadata.name.clone())
        .ok_or_else(|| {
            anyhow!(
                "no ready pod `{selector}` in namespace {namespace} (is meshd installed there?)"
            )
        })
}

async fn port_forward(args: DashboardArgs, namespace: String) -> anyhow::Result<ExitCode> {
    let client = crate::kube::client(args.kubeconfig.as_deref()).await?;
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let pod = pick_pod(&pods, &args.selector, &namespace).await?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("listening on 127.0.0.1:{}", args.port))?;
    let local = listener.local_addr()?;
    let url = format!("http://{local}{}", super::PATH);
    println!(
        "meshd dashboard: {url}  (port-forward to pod {namespace}/{pod}:{}; Ctrl-C stops)",
        args.admin_port
    );
    open_browser(&url, args.no_browser);
    let port = args.admin_port;
    loop {
        let (mut conn, peer) = tokio::select! {
            accepted = listener.accept() => accepted.context("accepting a local connection")?,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        let pods = pods.clone();
        let pod = pod.clone();
        // One port-forward per browser connection, as kubectl does.
        tokio::spawn(async move {
            let forwarded = async {
                let mut pf = pods
                    .portforward(&pod, &[port])
                    .await
                    .with_context(|| format!("port-forward to {pod}:{port}"))?;
                let mut upstream = pf
                    .take_stream(port)
                    .ok_or_else(|| anyhow!("port-forward to {pod}:{port} gave no stream"))?;
                tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
                drop(upstream);
                pf.join().await.map_err(|e| anyhow!("{e}"))?;
                anyhow::Ok(())
            };
            if let Err(e) = forwarded.await {
                tracing::warn!(%peer, error = %format!("{e:#}"), "dashboard port-forward failed");
            }
        });
    }
}
