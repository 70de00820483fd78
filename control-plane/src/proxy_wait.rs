//! `meshd wait-proxy`: returns once the sidecar's Envoy is ready — the same wait as the
//! `meshd-proxy-wait` binary the injected postStart hook runs (`meshd_proxy_wait`), for use
//! where meshd itself is at hand (the demo, by hand). `meshd bootstrap --install-proxy-wait`
//! puts that small binary where the proxy container can run it.

use anyhow::Context;
use std::path::Path;
use std::time::Duration;

#[derive(clap::Args, Clone, Debug)]
pub struct WaitProxyArgs {
    /// Envoy's readiness URL (the health listener).
    #[arg(long, default_value = "http://127.0.0.1:15021/healthz/ready")]
    pub url: String,
    /// Give up after this long (the kubelet then restarts the container).
    #[arg(long, default_value = "120s", value_parser = meshd_model::duration::parse)]
    pub timeout: Duration,
}

/// Polls `args.url` until it answers 2xx.
pub fn run(args: &WaitProxyArgs) -> anyhow::Result<()> {
    meshd_proxy_wait::wait_ready(&args.url, args.timeout, Duration::from_millis(200))?;
    Ok(())
}

/// The binary's file name, installed beside `meshd` (in meshd's image: /usr/local/bin).
pub const PROXY_WAIT_BIN: &str = "meshd-proxy-wait";

/// Copies `meshd-proxy-wait` from beside the running `meshd` to `to`, executable by every user
/// (the proxy runs as 1337, the init container as meshd's user).
pub fn install(to: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the meshd executable")?;
    let from = exe
        .parent()
        .map(|dir| dir.join(PROXY_WAIT_BIN))
        .context("the meshd executable has no directory")?;
    install_from(&from, to)
}

fn install_from(from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to).with_context(|| {
        format!(
            "--install-proxy-wait: copying {} to {} (meshd's image ships it beside meshd)",
            from.display(),
            to.display()
        )
    })?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("--install-proxy-wait: making {} executable", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_copy_is_executable_by_everyone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join(PROXY_WAIT_BIN);
        std::fs::write(&from, b"#!/bin/true\n").unwrap();
        std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o700)).unwrap();
        let to = dir.path().join("proxy").join("wait");
        assert!(install_from(&from, &to).is_err(), "no such directory yet");
        std::fs::create_dir(dir.path().join("proxy")).unwrap();
        install_from(&from, &to).unwrap();
        let mode = std::fs::metadata(&to).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(std::fs::read(&to).unwrap(), b"#!/bin/true\n");
    }

    #[test]
    fn a_missing_binary_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = install_from(&dir.path().join("nope"), &dir.path().join("to")).unwrap_err();
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
    }
}
