//! Where the CA keeps its state: a small named-blob store, so a Kubernetes Secret backend
//! can be added beside the file backend.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::CaError;

/// Named-blob storage for CA state (`root-cert.pem`, `root-key.pem`, `credential-key`,
/// Istio's plug-in `ca-cert.pem` …).
pub trait CaStorage: Send + Sync {
    /// The blob called `name`, or `None` if there is none.
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, CaError>;
    /// Stores `data` under `name`, replacing it atomically. `secret` blobs must be readable
    /// only by the owner.
    fn store(&self, name: &str, data: &[u8], secret: bool) -> Result<(), CaError>;
    /// Removes the blob called `name`; removing one that does not exist is not an error.
    fn remove(&self, name: &str) -> Result<(), CaError>;
    /// A human-readable location for `name`, used in error messages (a path, a Secret key…).
    fn location(&self, name: &str) -> String;
}

impl<T: CaStorage + ?Sized> CaStorage for std::sync::Arc<T> {
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, CaError> {
        (**self).load(name)
    }
    fn store(&self, name: &str, data: &[u8], secret: bool) -> Result<(), CaError> {
        (**self).store(name, data, secret)
    }
    fn remove(&self, name: &str) -> Result<(), CaError> {
        (**self).remove(name)
    }
    fn location(&self, name: &str) -> String {
        (**self).location(name)
    }
}

/// Files in one directory. Writes go to a temporary file in the same directory (mode 0600
/// for secrets), are fsynced, then renamed over the target.
#[derive(Clone, Debug)]
pub struct FileStorage {
    dir: PathBuf,
}

impl FileStorage {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn next_tmp_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn io_err(path: &Path, source: io::Error) -> CaError {
    CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl CaStorage for FileStorage {
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, CaError> {
        let path = self.path(name);
        match fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    fn store(&self, name: &str, data: &[u8], secret: bool) -> Result<(), CaError> {
        fs::create_dir_all(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        let path = self.path(name);
        let tmp = self.dir.join(format!(
            ".{name}.tmp.{}.{}",
            std::process::id(),
            next_tmp_id()
        ));
        let write = || -> io::Result<()> {
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(if secret { 0o600 } else { 0o644 });
            }
            let mut f = opts.open(&tmp)?;
            #[cfg(unix)]
            {
                // The mode given to open() is filtered by the umask and ignored for an
                // existing file; set it explicitly.
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(fs::Permissions::from_mode(if secret {
                    0o600
                } else {
                    0o644
                }))?;
            }
            f.write_all(data)?;
            f.sync_all()?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp, e));
        }
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&path, e));
        }
        // Make the rename durable; failure here is not fatal.
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), CaError> {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => {
                if let Ok(d) = fs::File::open(&self.dir) {
                    let _ = d.sync_all();
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    fn location(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_load_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path().join("sub"));
        assert!(s.load("x").unwrap().is_none());
        s.store("x", b"hello", true).unwrap();
        s.store("x", b"world", true).unwrap();
        assert_eq!(s.load("x").unwrap().unwrap(), b"world");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = fs::metadata(s.path("x")).unwrap().permissions().mode();
            assert_eq!(m & 0o777, 0o600);
        }
        // no temp files left behind
        let names: Vec<_> = fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
