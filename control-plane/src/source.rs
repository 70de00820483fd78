//! The file config source: a directory of Istio YAML, watched, debounced, merged into one
//! `MeshConfig`. A file that stops parsing keeps its last good content in force.

use crate::debounce::Debounce;
use meshd_model::{
    ConfigError, DocumentCache, FileConfig, MeshConfig, Rejected, parse_file, parse_file_cached,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// The VoiceCore mesh (`deploy/mesh/*.yaml`), served when no config directory is given: each
/// file with the name it is reported under.
pub const EMBEDDED_MESH: &[(&str, &str)] = &[
    ("embedded:voicecore.yaml", meshd_model::voicecore::MESH_YAML),
    (
        "embedded:voicecore-authz.yaml",
        meshd_model::voicecore::AUTHZ_YAML,
    ),
];

#[derive(Default)]
pub struct FileSource {
    dir: Option<PathBuf>,
    /// Last good content per file.
    files: BTreeMap<PathBuf, FileConfig>,
    /// Files whose current content does not parse, with why.
    broken: BTreeMap<PathBuf, Vec<ConfigError>>,
    /// A hash of each file's content when last parsed: an unchanged file is not parsed again
    /// (one edited file among many costs one parse, not the whole directory's).
    parsed: BTreeMap<PathBuf, u64>,
    /// Each file's documents as last read: an edited file re-parses only its edited documents.
    documents: BTreeMap<PathBuf, DocumentCache>,
}

fn text_hash(text: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(text)
}

fn is_config_file(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

impl FileSource {
    pub fn new(dir: Option<PathBuf>) -> FileSource {
        FileSource {
            dir,
            ..Default::default()
        }
    }

    /// Re-reads the directory and returns the merged config.
    pub fn reload(&mut self) -> MeshConfig {
        let Some(dir) = &self.dir else {
            let files: Vec<FileConfig> = EMBEDDED_MESH
                .iter()
                .map(|(name, text)| {
                    parse_file(name, text).expect("the embedded mesh is valid YAML (tested)")
                })
                .collect();
            return MeshConfig::assemble(&files);
        };
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_config_file(p))
                .collect(),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read config dir; keeping last good config");
                self.files.keys().cloned().collect()
            }
        };
        paths.sort();
        self.files.retain(|p, _| paths.contains(p));
        self.broken.retain(|p, _| paths.contains(p));
        self.parsed.retain(|p, _| paths.contains(p));
        self.documents.retain(|p, _| paths.contains(p));
        for path in &paths {
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            let hash = text_hash(&text);
            if self.parsed.insert(path.clone(), hash) == Some(hash) {
                continue;
            }
            let name = path.display().to_string();
            let cache = self.documents.entry(path.clone()).or_default();
            // A panic reading one file (a meshd bug) is that file's error, not the source's end.
            let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                parse_file_cached(&name, &text, cache)
            }))
            .unwrap_or_else(|panic| {
                *cache = DocumentCache::default();
                Err(vec![ConfigError {
                    file: name.clone(),
                    line: 1,
                    message: format!(
                        "reading this file panicked (a meshd bug): {}",
                        crate::supervise::panic_text(&*panic)
                    ),
                    object: None,
                    host: None,
                }])
            });
            match parsed {
                Ok(cfg) => {
                    for e in &cfg.rejected {
                        tracing::warn!("{e}");
                    }
                    self.broken.remove(path);
                    self.files.insert(path.clone(), cfg);
                }
                Err(errors) => {
                    for e in &errors {
                        tracing::error!("{e} (the file's last good content stays in force)");
                    }
                    self.broken.insert(path.clone(), errors);
                }
            }
        }
        let mut mesh = MeshConfig::assemble(self.files.values());
        for errors in self.broken.values() {
            mesh.rejected.extend(errors.iter().map(|e| {
                let mut r = Rejected::from_error(e);
                r.reason = format!("{}; the file's last good content stays in force", r.reason);
                r
            }));
        }
        mesh
    }

    /// Watches the directory; each burst of changes (as `debounce` bounds it) publishes the
    /// merged config if it differs from what is in force.
    pub async fn watch(mut self, debounce: Debounce, out: watch::Sender<Arc<MeshConfig>>) {
        let Some(dir) = self.dir.clone() else {
            // The embedded mesh never changes.
            return std::future::pending().await;
        };
        // One pending "something changed" is all the reload needs to know.
        let (tx, mut rx) = mpsc::channel(1);
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // Only changes count: inotify also reports opens and reads, and our own reload (or
            // `meshd bootstrap` reading the dir) would otherwise trigger reloads forever.
            if ev.is_ok_and(|ev| !matches!(ev.kind, notify::EventKind::Access(_))) {
                let _ = tx.try_send(());
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch config dir; changes need a restart");
                return;
            }
        };
        use notify::Watcher;
        if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::error!(dir = %dir.display(), error = %e, "cannot watch config dir");
            return;
        }
        // An editor's burst of writes is one push.
        while debounce.burst(&mut rx).await.is_some() {
            let started = std::time::Instant::now();
            let mesh = self.reload();
            out.send_if_modified(|current| {
                if **current == mesh {
                    false
                } else {
                    tracing::info!(
                        objects = mesh.objects.len(),
                        rejected = mesh.rejected.len(),
                        reload_ms = started.elapsed().as_millis() as u64,
                        "config changed"
                    );
                    *current = Arc::new(mesh);
                    true
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SIDECAR: &str = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s, namespace: a}\nspec: {}\n";

    #[test]
    fn broken_file_keeps_last_good_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.yaml");
        std::fs::write(&path, SIDECAR).unwrap();
        let mut src = FileSource::new(Some(dir.path().to_path_buf()));
        assert_eq!(src.reload().sidecars().count(), 1);
        std::fs::write(&path, "kind: [unclosed\n").unwrap();
        let mesh = src.reload();
        assert_eq!(mesh.sidecars().count(), 1, "last good content stays");
        assert_eq!(mesh.rejected.len(), 1);
        assert!(mesh.rejected[0].reason.contains("last good"));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(src.reload().sidecars().count(), 0);
    }

    #[test]
    fn reloads_see_edits_and_keep_unchanged_files_and_their_state() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        let broken = dir.path().join("broken.yaml");
        std::fs::write(&a, SIDECAR).unwrap();
        std::fs::write(&b, SIDECAR.replace("namespace: a", "namespace: b")).unwrap();
        std::fs::write(&broken, "kind: [unclosed\n").unwrap();
        let mut src = FileSource::new(Some(dir.path().to_path_buf()));
        let first = src.reload();
        assert_eq!(first.sidecars().count(), 2);
        assert_eq!(first.rejected.len(), 1);
        std::fs::write(&b, SIDECAR.replace("namespace: a", "namespace: c")).unwrap();
        let second = src.reload();
        let namespaces: Vec<&str> = second.sidecars().map(|(o, _)| o.meta.namespace()).collect();
        assert_eq!(namespaces, ["a", "c"]);
        assert_eq!(
            second.rejected.len(),
            1,
            "the unchanged broken file is still reported"
        );
        assert_eq!(src.reload(), second, "nothing changed");
    }

    /// Writes every 20 ms never leave the 100 ms quiet period: the change is still published
    /// while they go on (before the fix, only once they stopped).
    #[tokio::test]
    async fn steady_writes_still_publish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.yaml");
        std::fs::write(&path, SIDECAR).unwrap();
        let mut src = FileSource::new(Some(dir.path().to_path_buf()));
        let (tx, mut rx) = watch::channel(Arc::new(src.reload()));
        let debounce = Debounce {
            quiet: Duration::from_millis(100),
            max: Duration::from_millis(200),
        };
        tokio::spawn(src.watch(debounce, tx));
        let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writer = {
            let (path, writing) = (path.clone(), writing.clone());
            tokio::spawn(async move {
                for i in 0..500 {
                    let ns = format!("namespace: n{i}");
                    std::fs::write(&path, SIDECAR.replace("namespace: a", &ns)).unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                writing.store(false, std::sync::atomic::Ordering::SeqCst);
            })
        };
        rx.changed().await.unwrap();
        assert!(
            writing.load(std::sync::atomic::Ordering::SeqCst),
            "the config was published only after the writes stopped"
        );
        let ns = rx
            .borrow()
            .sidecars()
            .next()
            .unwrap()
            .0
            .meta
            .namespace()
            .to_string();
        assert!(ns.starts_with('n'), "{ns}");
        writer.abort();
    }

    #[test]
    fn embedded_mesh_is_served_without_a_dir() {
        let mesh = FileSource::new(None).reload();
        assert_eq!(mesh.services.len(), 8);
        assert!(mesh.rejected.is_empty(), "{:?}", mesh.rejected);
        assert_eq!(mesh.authorization_policies().count(), 9);
    }

    #[test]
    fn embedded_mesh_is_every_file_in_deploy_mesh() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mesh");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_config_file(p))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<&str> = EMBEDDED_MESH
            .iter()
            .map(|(n, _)| n.trim_start_matches("embedded:"))
            .collect();
        embedded.sort();
        assert_eq!(
            embedded, on_disk,
            "add new deploy/mesh files to EMBEDDED_MESH"
        );
    }
}
