//! A CA over in-memory storage, shared by the fuzz targets.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use meshd_ca::{CaConfig, CaError, CaStorage, CertificateAuthority};

#[derive(Default)]
struct Mem(Mutex<HashMap<String, Vec<u8>>>);

impl CaStorage for Mem {
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, CaError> {
        Ok(self.0.lock().unwrap().get(name).cloned())
    }
    fn store(&self, name: &str, data: &[u8], _secret: bool) -> Result<(), CaError> {
        self.0.lock().unwrap().insert(name.into(), data.to_vec());
        Ok(())
    }
    fn remove(&self, name: &str) -> Result<(), CaError> {
        self.0.lock().unwrap().remove(name);
        Ok(())
    }
    fn location(&self, name: &str) -> String {
        format!("mem:{name}")
    }
}

pub static CA: LazyLock<CertificateAuthority> = LazyLock::new(|| {
    CertificateAuthority::load_or_create_with_storage(&CaConfig::default(), Mem::default())
        .expect("in-memory CA")
});
