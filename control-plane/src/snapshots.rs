//! The snapshot builder: each accepted config becomes the `MeshSnapshot` the xDS server serves.
//! A config whose generation panics (a meshd bug some object triggers) is reported and skipped;
//! the last good snapshot keeps serving.

use crate::supervise::TaskHealth;
use meshd_model::{MeshConfig, Rejected};
use meshd_xds::{GenOptions, MeshSnapshot};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// The snapshot builder's name among the supervised tasks; a config whose generation panics is
/// reported under it.
pub const SNAPSHOT_TASK: &str = "snapshot-builder";

/// How a snapshot is made from the one it replaces (none for the first).
pub type Generate =
    fn(Option<&MeshSnapshot>, u64, Arc<MeshConfig>, Arc<GenOptions>) -> MeshSnapshot;

/// The generator: what did not change keeps its identity (`MeshSnapshot::rebuild`).
pub fn generate(
    previous: Option<&MeshSnapshot>,
    version: u64,
    config: Arc<MeshConfig>,
    generator: Arc<GenOptions>,
) -> MeshSnapshot {
    match previous {
        Some(p) => p.rebuild(version, config, generator),
        None => MeshSnapshot::build(version, config, generator),
    }
}

/// `generate`, with a panic caught and returned as its message.
fn guarded(
    generate: Generate,
    previous: Option<&MeshSnapshot>,
    version: u64,
    config: Arc<MeshConfig>,
    generator: Arc<GenOptions>,
) -> Result<MeshSnapshot, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        generate(previous, version, config, generator)
    }))
    .map_err(|panic| crate::supervise::panic_text(&*panic))
}

/// The first snapshot; when generating the config panics, an empty one that reports why, so the
/// server still starts (the CA and the admin API serve, proxies get no routes until a fix).
pub fn first_snapshot(
    config: Arc<MeshConfig>,
    generator: Arc<GenOptions>,
    health: &TaskHealth,
) -> MeshSnapshot {
    first_snapshot_with(generate, config, generator, health)
}

fn first_snapshot_with(
    generate: Generate,
    config: Arc<MeshConfig>,
    generator: Arc<GenOptions>,
    health: &TaskHealth,
) -> MeshSnapshot {
    match guarded(generate, None, 1, config.clone(), generator.clone()) {
        Ok(snapshot) => snapshot,
        Err(panic) => {
            let reason = format!("generating the mesh config panicked (a meshd bug): {panic}");
            tracing::error!("{reason}; serving no mesh config until it changes");
            health.report_error(SNAPSHOT_TASK, reason.clone());
            let mut rejected = config.rejected.clone();
            rejected.push(Rejected {
                file: "meshd".into(),
                line: 0,
                kind: None,
                namespace: None,
                name: None,
                reason,
            });
            let empty = MeshConfig {
                rejected,
                ..Default::default()
            };
            MeshSnapshot::build(1, Arc::new(empty), generator)
        }
    }
}

/// Builds each snapshot from the accepted config; versions only move when the config does.
pub async fn snapshots(
    configs: watch::Receiver<Arc<MeshConfig>>,
    out: watch::Sender<Arc<MeshSnapshot>>,
    generator: Arc<GenOptions>,
    health: Arc<TaskHealth>,
) {
    snapshots_with(generate, configs, out, generator, health).await
}

async fn snapshots_with(
    generate: Generate,
    mut configs: watch::Receiver<Arc<MeshConfig>>,
    out: watch::Sender<Arc<MeshSnapshot>>,
    generator: Arc<GenOptions>,
    health: Arc<TaskHealth>,
) {
    let mut version = out.borrow().version;
    while configs.changed().await.is_ok() {
        let config = configs.borrow_and_update().clone();
        let started = Instant::now();
        let previous = out.borrow().clone();
        let built = guarded(
            generate,
            Some(&previous),
            version + 1,
            config,
            generator.clone(),
        );
        drop(previous);
        match built {
            Ok(snapshot) => {
                version += 1;
                tracing::info!(
                    version,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "mesh snapshot built"
                );
                health.clear_error(SNAPSHOT_TASK);
                out.send_replace(Arc::new(snapshot));
            }
            Err(panic) => {
                let reason = format!(
                    "generating the mesh config panicked (a meshd bug): {panic}; the last good config (version {version}) keeps serving"
                );
                tracing::error!("{reason}");
                health.report_error(SNAPSHOT_TASK, reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_model::parse_file;

    fn config(name: &str) -> Arc<MeshConfig> {
        let text = format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: a}}\nspec: {{}}\n"
        );
        Arc::new(MeshConfig::assemble(
            [&parse_file("s.yaml", &text).unwrap()],
        ))
    }

    /// A generator with a bug some object triggers: the Sidecar named `boom`.
    fn buggy(
        previous: Option<&MeshSnapshot>,
        version: u64,
        config: Arc<MeshConfig>,
        generator: Arc<GenOptions>,
    ) -> MeshSnapshot {
        if config.sidecars().any(|(o, _)| o.meta.name == "boom") {
            panic!("index out of bounds");
        }
        generate(previous, version, config, generator)
    }

    fn sidecar_names(s: &MeshSnapshot) -> Vec<String> {
        s.config()
            .sidecars()
            .map(|(o, _)| o.meta.name.clone())
            .collect()
    }

    /// A config that panics the generator is reported; the last good snapshot keeps serving,
    /// and the next good config is built.
    #[tokio::test]
    async fn a_config_that_panics_the_generator_keeps_the_last_good_snapshot() {
        let health = Arc::new(TaskHealth::default());
        let generator = Arc::new(GenOptions::default());
        let (config_tx, configs) = watch::channel(config("good"));
        let first = first_snapshot_with(buggy, config("good"), generator.clone(), &health);
        let (out, mut snapshots) = watch::channel(Arc::new(first));
        let task = tokio::spawn(snapshots_with(
            buggy,
            configs,
            out,
            generator,
            health.clone(),
        ));
        config_tx.send_replace(config("boom"));
        // The builder reports the failure: nothing new is published.
        while health.errors().is_empty() {
            tokio::task::yield_now().await;
        }
        let error = &health.errors()[SNAPSHOT_TASK];
        assert!(error.contains("index out of bounds"), "{error}");
        assert!(error.contains("(version 1) keeps serving"), "{error}");
        assert_eq!(sidecar_names(&snapshots.borrow()), ["good"]);

        config_tx.send_replace(config("fixed"));
        snapshots.changed().await.unwrap();
        let now = snapshots.borrow_and_update().clone();
        assert_eq!(sidecar_names(&now), ["fixed"]);
        assert_eq!(now.version, 2);
        assert!(health.errors().is_empty());
        drop(config_tx);
        task.await.unwrap();
    }

    /// A first config that panics the generator still lets the server start, with the reason
    /// among the rejected.
    #[test]
    fn a_first_config_that_panics_serves_nothing_and_says_why() {
        let health = TaskHealth::default();
        let first = first_snapshot_with(
            buggy,
            config("boom"),
            Arc::new(GenOptions::default()),
            &health,
        );
        assert!(sidecar_names(&first).is_empty());
        let rejected = &first.config().rejected;
        assert!(
            rejected.iter().any(|r| r.reason.contains("panicked")),
            "{rejected:?}"
        );
        assert!(health.errors().contains_key(SNAPSHOT_TASK));
    }
}
