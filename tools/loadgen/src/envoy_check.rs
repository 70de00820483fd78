//! `--envoy PATH` alone: one stock Envoy bootstrapped by `meshd bootstrap` as the mesh's first
//! workload, checked ready with every cluster it should see in its `/config_dump`.

use crate::{Args, mesh};
use anyhow::{anyhow, bail};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn check_envoy(
    args: &Args,
    envoy: &Path,
    shape: &mesh::Shape,
) -> anyhow::Result<String> {
    let (name, ns, _) = mesh::workload(0, shape);
    // Under Sidecar scoping the Envoy sees its own namespace's services only.
    let expected = if shape.sidecar_scoping {
        (0..shape.services)
            .filter(|i| mesh::namespace(*i, shape) == ns)
            .count()
    } else {
        shape.services
    };
    let boot = args.work_dir.join("envoy.json");
    let status = Command::new(&args.meshd)
        .args(["bootstrap", "--workload", &format!("{name}.{ns}")])
        .arg("--out")
        .arg(&boot)
        .arg("--state-dir")
        .arg(args.work_dir.join("state"))
        .arg("--config-dir")
        .arg(args.work_dir.join("config"))
        .args(["--xds-address", &format!("127.0.0.1:{}", args.xds_port)])
        .args(["--admin-port", "25900"])
        .env("MESHD_LOG", "warn")
        .status()?;
    if !status.success() {
        bail!("meshd bootstrap failed");
    }
    let mut envoy = Command::new(envoy)
        .args(["--disable-hot-restart", "--log-level", "error", "-c"])
        .arg(&boot)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = loop {
        let out = Command::new("curl")
            .args(["-s", "http://127.0.0.1:25900/config_dump?include_eds"])
            .output()?;
        let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let clusters = dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| {
                c["@type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("ClustersConfigDump"))
            })
            .and_then(|c| c["dynamic_active_clusters"].as_array().map(|a| a.len()))
            .unwrap_or(0);
        let ready = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "http://127.0.0.1:25900/ready"])
            .status()?
            .success();
        if ready && clusters >= expected {
            break Ok(format!(
                "stock Envoy joined: ready, {clusters} dynamic clusters in /config_dump"
            ));
        }
        if Instant::now() > deadline {
            break Err(anyhow!(
                "stock Envoy not in sync within 60 s ({clusters} clusters, ready={ready})"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = envoy.kill();
    let _ = envoy.wait();
    result
}
