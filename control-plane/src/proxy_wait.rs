//! `meshd wait-proxy`: returns once the sidecar's Envoy is ready. The injector makes it the
//! `istio-proxy` container's postStart hook under `holdApplicationUntilProxyStarts` (classic
//! path): the kubelet starts the pod's next container only after the hook returns, so the app
//! starts with its proxy ready — what `pilot-agent wait` does in Istio, with stock Envoy.

use anyhow::bail;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone, Debug)]
pub struct WaitProxyArgs {
    /// Envoy's readiness URL (the health listener).
    #[arg(long, default_value = "http://127.0.0.1:15021/healthz/ready")]
    pub url: String,
    /// Give up after this long (the kubelet then restarts the container).
    #[arg(long, default_value = "120s", value_parser = meshd_model::duration::parse)]
    pub timeout: Duration,
}

/// Polls `args.url` until it answers 200.
pub async fn run(args: &WaitProxyArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + args.timeout;
    loop {
        let last = match client.get(&args.url).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!(
                "Envoy at {} not ready after {:?}: {last}",
                args.url,
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
