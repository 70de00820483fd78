//! Test helpers (feature `testing`): a whole control plane in-process on ephemeral ports, and
//! credentials for any workload of its mesh.

use crate::app::{self, App, Config};
use meshd_ca::{CaConfig, CertificateAuthority, WorkloadClaims};
use meshd_xds::GenOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct TestServer {
    pub app: App,
    pub state_dir: tempfile::TempDir,
    pub config_dir: Option<PathBuf>,
}

pub fn config(state_dir: &Path, config_dir: Option<PathBuf>) -> Config {
    Config {
        config_dir,
        state_dir: state_dir.to_path_buf(),
        trust_domain: "cluster.local".into(),
        workload_cert_ttl: Duration::from_secs(90 * 24 * 3600),
        cert_rotation_window: Duration::from_secs(24 * 3600),
        root_cert_ttl: Duration::from_secs(10 * 365 * 24 * 3600),
        root_key_algorithm: meshd_ca::RootKeyAlgorithm::default(),
        bind: [127, 0, 0, 1].into(),
        xds_port: 0,
        xds_plaintext: true,
        xds_tls_port: 0,
        xds_tls_names: vec!["localhost".into(), "127.0.0.1".into()],
        admin_port: 0,
        debounce: crate::debounce::Debounce {
            quiet: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        drain_deadline: Duration::from_secs(2),
        root_rotation_grace: Duration::ZERO,
        generator: GenOptions::default(),
        webhook: None,
        kubernetes: None,
        limits: crate::transport::TransportLimits::default(),
        telemetry_limits: crate::telemetry::SeriesLimits::default(),
    }
}

impl TestServer {
    /// The embedded VoiceCore mesh, or the YAML files of `config_dir`.
    pub async fn start(config_dir: Option<PathBuf>) -> anyhow::Result<TestServer> {
        let state_dir = tempfile::tempdir()?;
        let app = app::build(config(state_dir.path(), config_dir.clone())).await?;
        Ok(TestServer {
            app,
            state_dir,
            config_dir,
        })
    }

    /// The server's CA, loaded from its state dir (to issue credentials as `meshd bootstrap`).
    pub fn ca(&self) -> CertificateAuthority {
        CertificateAuthority::load_or_create(&CaConfig {
            state_dir: self.state_dir.path().to_path_buf(),
            ..CaConfig::default()
        })
        .expect("the server created its CA")
    }

    /// A credential as `meshd bootstrap` would write it for this workload (valid for an hour).
    pub fn credential(&self, workload: &str, namespace: &str, service_account: &str) -> String {
        self.ca()
            .issue_credential(&WorkloadClaims::new(
                workload,
                namespace,
                service_account,
                Duration::from_secs(3600),
            ))
            .expect("test workload names make a credential within the limit")
    }

    pub fn xds_url(&self) -> String {
        let addr = self
            .app
            .xds_addr
            .expect("plaintext xDS is served (xds_plaintext)");
        format!("http://{addr}")
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.app.admin_addr)
    }
}
