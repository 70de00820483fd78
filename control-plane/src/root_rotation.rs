//! Root rotation driven by what the proxies hold: the CA moves to its next phase only when every
//! connected proxy has ACKed the secrets of the current one.
//!
//! 1. `add-root`: the new root joins the trust bundle; the old root still signs. Wait until every
//!    proxy ACKed the new `ROOTCA`.
//! 2. `switch-signer`: the new root signs; every proxy's certificate is re-issued. Wait until every
//!    proxy ACKed a `default` certificate from the new root (and the reordered bundle).
//! 3. `drop-old`: the old root leaves the bundle. Wait until every proxy ACKed it; done.
//!
//! Each phase is persisted by the CA before it takes effect, and the server resumes an
//! interrupted rotation at startup ([`RootRotator::resume`]).
//!
//! Certificates signed through CreateCertificate (15012) count too, though nothing can push to
//! their holders: the CA records each caller's latest certificate and the roots it got with it
//! (bounded), and a phase is synced only once every caller holding a valid certificate has
//! renewed into it — leaving add-root, its bundle must hold the new root; leaving
//! switch-signer, its certificate must come from the new root — or that certificate has
//! expired. Such callers show in `waiting_for` as `csr:<workload> <spiffe-id> (serial …)`.
//! Callers renew on their own schedule (Istio's agent at half the certificate's life), so a
//! mesh with CreateCertificate callers takes up to a renewal period per phase; drop-old never
//! invalidates a certificate the CA handed out unaccounted.

use crate::identity::CaSecrets;
use meshd_ads::{Registry, SyncStatus};
use meshd_ca::{CaError, RootRotation, RotationPhase};
use meshd_xds::generate::common::{ROOT_SECRET, WORKLOAD_SECRET};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// What `GET /debug/ca/rotate-root` answers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RotationStatus {
    /// `idle` | `add-root` | `switch-signer` | `drop-old` | `paused` | `failed`.
    pub state: String,
    /// The rotation in progress.
    pub rotation: Option<RootRotation>,
    /// Proxies that have not yet ACKed what the current phase serves.
    pub waiting_for: Vec<String>,
    /// Serial of the CA certificate signing now.
    pub signer_serial: String,
    /// Serials of the roots in the trust bundle now.
    pub trusted_roots: Vec<String>,
    /// The new root's serial and when the last rotation finished (RFC 3339).
    pub last_rotation: Option<FinishedRotation>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FinishedRotation {
    pub new_root_serial: String,
    pub started_at: String,
    pub finished_at: String,
}

pub struct RootRotator {
    secrets: Arc<CaSecrets>,
    registry: Arc<Registry>,
    /// Pause after all proxies ACKed a phase before moving on, so every Envoy worker thread
    /// has picked up the new TLS context (an ACK means the main thread applied it).
    settle: Duration,
    running: AtomicBool,
    status: Mutex<RotationStatus>,
    stop: watch::Receiver<bool>,
    /// No phase is judged synced before `grace` after the server started: proxies that were
    /// connected before a restart must be back in the registry first.
    not_before: tokio::time::Instant,
    /// Kubernetes mode: several replicas share the CA.
    cluster: Option<ClusterRotation>,
}

/// Root rotation across the replicas of Kubernetes mode: only the Lease holder drives it (and
/// writes the CA Secret); the others reload each phase from the Secret and push it to their own
/// proxies, so between phases the leader also waits `follower_lag` for them.
#[derive(Clone, Debug)]
pub struct ClusterRotation {
    pub leader: watch::Receiver<bool>,
    pub follower_lag: Duration,
}

impl RootRotator {
    pub fn new(
        secrets: Arc<CaSecrets>,
        registry: Arc<Registry>,
        stop: watch::Receiver<bool>,
        grace: Duration,
        cluster: Option<ClusterRotation>,
    ) -> Arc<RootRotator> {
        let r = Arc::new(RootRotator {
            secrets,
            registry,
            settle: Duration::from_secs(2),
            running: AtomicBool::new(false),
            status: Mutex::new(RotationStatus::default()),
            stop,
            not_before: tokio::time::Instant::now() + grace,
            cluster,
        });
        r.refresh_status(None, Vec::new());
        r
    }

    pub fn status(&self) -> RotationStatus {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Phase and bundle straight from the CA, so a finished or resumed rotation shows right.
        let ca = self.secrets.ca();
        s.signer_serial = ca.signer_serial();
        s.trusted_roots = trusted_roots(ca);
        s.rotation = ca.root_rotation();
        if s.state != "failed" && s.state != "paused" {
            s.state = s
                .rotation
                .as_ref()
                .map_or("idle", |r| r.phase.as_str())
                .to_string();
        }
        s
    }

    fn refresh_status(&self, error: Option<String>, waiting_for: Vec<String>) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.state = match (&error, self.secrets.ca().root_rotation()) {
            (Some(_), _) => "failed".into(),
            (None, Some(r)) => r.phase.as_str().into(),
            (None, None) => "idle".into(),
        };
        s.error = error;
        s.waiting_for = waiting_for;
    }

    /// Whether this replica may drive a rotation (always, outside Kubernetes mode).
    fn leads(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| *c.leader.borrow())
    }

    /// Kubernetes mode, on every replica: when this one becomes the leader mid-rotation (the
    /// old leader died), it takes the rotation over.
    pub async fn take_over_when_leading(self: Arc<Self>) {
        let Some(mut leader) = self.cluster.as_ref().map(|c| c.leader.clone()) else {
            return;
        };
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                r = leader.changed() => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            if *leader.borrow_and_update()
                && let Err(e) = self.resume()
            {
                tracing::error!(error = %e, "taking over the root rotation failed");
            }
        }
    }

    /// Starts a root rotation (or continues the one in progress) and drives it in the
    /// background. `pause_after`: stop once that phase is synced (tests restart the server
    /// mid-rotation this way; the next start resumes).
    pub fn start(
        self: &Arc<Self>,
        pause_after: Option<RotationPhase>,
    ) -> Result<RotationStatus, CaError> {
        if !self.leads() {
            return Err(CaError::RotationUnsupported {
                reason: "this replica does not hold the CA lease; run `meshd ca rotate-root` against the leader (the holder of the meshd-leader Lease), which writes the CA Secret".into(),
            });
        }
        let r = self.secrets.ca().begin_root_rotation()?;
        if r.phase == RotationPhase::AddRoot {
            self.secrets.bundle_changed();
        }
        self.spawn(pause_after);
        Ok(self.status())
    }

    /// At server start: completes the writes of an interrupted rotation and drives it on.
    pub fn resume(self: &Arc<Self>) -> Result<(), CaError> {
        if !self.leads() {
            return Ok(()); // the leader drives it; this replica follows the Secret
        }
        if let Some(r) = self.secrets.ca().resume_root_rotation()? {
            tracing::warn!(
                phase = r.phase.as_str(),
                new_root = %r.new_root_serial,
                "resuming the root rotation interrupted by the last shutdown"
            );
            self.spawn(None);
        }
        Ok(())
    }

    fn spawn(self: &Arc<Self>, pause_after: Option<RotationPhase>) {
        if self.running.swap(true, Ordering::SeqCst) {
            return; // already driving it
        }
        self.refresh_status(None, Vec::new());
        let me = self.clone();
        tokio::spawn(async move {
            let result = me.drive(pause_after).await;
            me.running.store(false, Ordering::SeqCst);
            match result {
                Ok(Some(done)) => {
                    let mut s = me.status.lock().unwrap_or_else(|p| p.into_inner());
                    s.last_rotation = Some(done);
                    s.state = "idle".into();
                    s.waiting_for.clear();
                    s.error = None;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "root rotation failed; it resumes at the next start or `meshd ca rotate-root`");
                    me.refresh_status(Some(e.to_string()), Vec::new());
                }
            }
        });
    }

    /// Runs phases until the rotation finishes (`Some`), pauses or the server stops (`None`).
    async fn drive(
        &self,
        pause_after: Option<RotationPhase>,
    ) -> Result<Option<FinishedRotation>, CaError> {
        let ca = self.secrets.ca().clone();
        let mut stop = self.stop.clone();
        loop {
            let Some(r) = ca.root_rotation() else {
                return Ok(None);
            };
            tracing::info!(
                phase = r.phase.as_str(),
                "root rotation: waiting for every proxy to ACK"
            );
            tokio::select! {
                _ = tokio::time::sleep_until(self.not_before) => {}
                _ = stop.wait_for(|s| *s) => return Ok(None),
            }
            let mut logged = SystemTime::now();
            loop {
                let waiting = self.unsynced();
                let done = waiting.is_empty();
                if !done && logged.elapsed().is_ok_and(|e| e > Duration::from_secs(30)) {
                    tracing::warn!(phase = r.phase.as_str(), waiting = ?waiting, "root rotation: proxies have not ACKed yet");
                    logged = SystemTime::now();
                }
                self.refresh_status(None, waiting);
                if done {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(None),
                }
            }
            let settle = self.settle
                + self
                    .cluster
                    .as_ref()
                    .map_or(Duration::ZERO, |c| c.follower_lag);
            tokio::select! {
                _ = tokio::time::sleep(settle) => {}
                _ = stop.wait_for(|s| *s) => return Ok(None),
            }
            if !self.leads() {
                tracing::warn!(
                    "lost the CA lease during a root rotation; the new leader takes it over"
                );
                return Ok(None);
            }
            if pause_after == Some(r.phase) {
                tracing::warn!(
                    phase = r.phase.as_str(),
                    "root rotation paused as asked; the next start resumes it"
                );
                let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
                s.state = "paused".into();
                return Ok(None);
            }
            let next = ca.advance_root_rotation()?;
            self.secrets.bundle_changed();
            if next.is_none() {
                return Ok(Some(FinishedRotation {
                    new_root_serial: r.new_root_serial,
                    started_at: r.started_at,
                    finished_at: rfc3339(SystemTime::now()),
                }));
            }
        }
    }

    /// Proxies subscribed to secrets that have not ACKed the current bundle and a certificate
    /// from the current signer, then CreateCertificate callers not renewed into this phase.
    fn unsynced(&self) -> Vec<String> {
        let root_version = self.secrets.root_resource().version.clone();
        let signer = self.secrets.ca().signer_serial();
        let mut waiting = Vec::new();
        for p in self.registry.snapshot() {
            let Some(t) = p.types.get(meshd_xds::resource::SECRET) else {
                continue; // no TLS in its config: nothing to hold
            };
            let root_ok = t
                .sent
                .get(ROOT_SECRET)
                .is_none_or(|r| r.version == root_version);
            let leaf_ok = t.sent.get(WORKLOAD_SECRET).is_none_or(|r| {
                self.secrets
                    .workload_secret(&p.proven)
                    .is_some_and(|(v, s)| v == r.version && s == signer)
            });
            if !(t.status == SyncStatus::Synced && root_ok && leaf_ok) {
                waiting.push(p.proxy_id.clone());
            }
        }
        waiting.extend(self.secrets.ca().csr_holders_behind());
        waiting
    }
}

fn trusted_roots(ca: &meshd_ca::CertificateAuthority) -> Vec<String> {
    ca.issued()
        .into_iter()
        .filter(|c| c.kind == "root")
        .map(|c| c.serial)
        .collect()
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `meshd ca rotate-root`: starts a root rotation on the running server and, unless
/// `no_wait`, follows it until it finishes. Off-host, `admin` must carry an administrator's
/// token (the admin API refuses the POST otherwise).
pub async fn cli_rotate_root(
    admin: &crate::status_cli::AdminClient,
    no_wait: bool,
    timeout: Duration,
    pause_after: Option<&str>,
) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::{Context, bail};
    let mut path = "/debug/ca/rotate-root".to_string();
    if let Some(p) = pause_after {
        path.push_str(&format!("?pause_after={p}"));
    }
    let url = admin.url(&path);
    let resp = admin
        .request(reqwest::Method::POST, &path)
        .send()
        .await
        .with_context(|| format!("POST {url} (is `meshd serve` running?)"))?;
    let code = resp.status();
    let text = resp.text().await.context("reading the response")?;
    // Refusals by the admin API's access check are one line of text, not JSON.
    let body: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) if !code.is_success() => bail!("the server refused ({code}): {}", text.trim()),
        Err(e) => bail!("POST {url}: response is not JSON: {e}"),
    };
    if !code.is_success() {
        bail!(
            "the server refused: {}",
            body["error"].as_str().unwrap_or(&body.to_string())
        );
    }
    let new_root = body["rotation"]["new_root_serial"]
        .as_str()
        .unwrap_or("")
        .to_string();
    println!(
        "root rotation started: new root {new_root}, phase {}",
        body["state"].as_str().unwrap_or("?")
    );
    if no_wait {
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let s = admin.get_json("/debug/ca/rotate-root").await?;
        let state = s["state"].as_str().unwrap_or("?").to_string();
        let waiting = s["waiting_for"].as_array().map_or(0, Vec::len);
        let line = format!("{state} (waiting for {waiting} proxies)");
        if line != last {
            println!("  {line}");
            last = line;
        }
        match state.as_str() {
            "idle" if s["last_rotation"]["new_root_serial"].as_str() == Some(&new_root) => {
                println!(
                    "root rotation finished: trust bundle = [{}], signer {}",
                    s["trusted_roots"]
                        .as_array()
                        .map(|a| a
                            .iter()
                            .filter_map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default(),
                    s["signer_serial"].as_str().unwrap_or("")
                );
                return Ok(std::process::ExitCode::SUCCESS);
            }
            "paused" => {
                println!("root rotation paused (it resumes when the server restarts)");
                return Ok(std::process::ExitCode::SUCCESS);
            }
            "failed" => bail!(
                "root rotation failed: {}",
                s["error"].as_str().unwrap_or("unknown error")
            ),
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "root rotation still at {state} after {timeout:?}; waiting for: {}",
                s["waiting_for"]
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
