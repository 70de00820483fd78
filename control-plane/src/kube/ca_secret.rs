//! The mesh CA's state in a Secret in meshd's namespace (default `meshd-ca`), shared by every
//! replica, and its root certificate published for the workloads.
//!
//! The Secret's keys are the CA's blob names (`root-cert.pem`, `root-key.pem`,
//! `credential-key`; or Istio's plug-in `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`,
//! `root-cert.pem` — so an operator's Istio `cacerts` Secret works as `--ca-secret cacerts`).
//! Only the leader (see `leader`) creates or completes it, with create / compare-and-swap
//! replace so it is written once; every other replica waits for it and loads the same root.
//!
//! The root goes to a ConfigMap (default `istio-ca-root-cert`, key `root-cert.pem`, as Istio)
//! in each namespace labelled `istio-injection=enabled`, kept current by the leader.
//!
//! RBAC: get/create/update `secrets` in meshd's namespace; get/create/update `configmaps` in
//! injected namespaces (cluster-wide).

use ::kube::api::{Api, ObjectMeta, PostParams};
use ::kube::{Client, Error};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use meshd_ca::{CaConfig, CaError, CaStorage, CertificateAuthority};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Istio's key for the root certificate in the published ConfigMap.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
pub const DEFAULT_CA_SECRET: &str = "meshd-ca";
pub const DEFAULT_ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "meshd");

/// The CA's blobs in memory, as read from the Secret, recording what the CA writes: at creation
/// (saved by [`load_or_create_ca`]) and later, e.g. root rotation phases (saved by
/// [`persist_ca_writes`]).
#[derive(Clone)]
pub struct MemoryStorage {
    inner: Arc<StorageInner>,
}

struct StorageInner {
    secret: String,
    blobs: Mutex<BTreeMap<String, Vec<u8>>>,
    written: Mutex<BTreeSet<String>>,
    /// Bumped on every write.
    writes: watch::Sender<u64>,
    /// The Secret's resourceVersion the blobs match (last loaded or saved).
    resource_version: Mutex<Option<String>>,
}

impl MemoryStorage {
    pub fn new(secret: &str, blobs: BTreeMap<String, Vec<u8>>) -> MemoryStorage {
        MemoryStorage {
            inner: Arc::new(StorageInner {
                secret: secret.to_string(),
                blobs: Mutex::new(blobs),
                written: Mutex::new(BTreeSet::new()),
                writes: watch::Sender::new(0),
                resource_version: Mutex::new(None),
            }),
        }
    }

    pub fn resource_version(&self) -> Option<String> {
        self.inner.resource_version.lock().expect("storage").clone()
    }

    pub fn set_resource_version(&self, rv: Option<String>) {
        *self.inner.resource_version.lock().expect("storage") = rv;
    }

    /// Takes the Secret's content as another replica wrote it: no write of ours, nothing to
    /// save back.
    pub fn replace_from_secret(&self, blobs: BTreeMap<String, Vec<u8>>, rv: Option<String>) {
        *self.inner.blobs.lock().expect("storage") = blobs;
        self.set_resource_version(rv);
    }

    /// Names written since creation.
    pub fn written(&self) -> BTreeSet<String> {
        self.inner.written.lock().expect("storage").clone()
    }

    pub fn blobs(&self) -> BTreeMap<String, Vec<u8>> {
        self.inner.blobs.lock().expect("storage").clone()
    }

    pub fn writes(&self) -> watch::Receiver<u64> {
        self.inner.writes.subscribe()
    }
}

impl CaStorage for MemoryStorage {
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>, CaError> {
        Ok(self.inner.blobs.lock().expect("storage").get(name).cloned())
    }

    fn store(&self, name: &str, data: &[u8], _secret: bool) -> Result<(), CaError> {
        self.inner
            .blobs
            .lock()
            .expect("storage")
            .insert(name.to_string(), data.to_vec());
        self.inner
            .written
            .lock()
            .expect("storage")
            .insert(name.to_string());
        self.inner.writes.send_modify(|n| *n += 1);
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), CaError> {
        let removed = self.inner.blobs.lock().expect("storage").remove(name);
        if removed.is_some() {
            self.inner
                .written
                .lock()
                .expect("storage")
                .insert(name.to_string());
            self.inner.writes.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    fn location(&self, name: &str) -> String {
        format!("Secret {} key {name}", self.inner.secret)
    }
}

#[derive(Clone, Debug)]
pub struct CaSecretConfig {
    pub namespace: String,
    pub name: String,
    /// Give up waiting for the Secret (or for leadership) after this long.
    pub timeout: Duration,
}

fn blobs_of(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut blobs: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        blobs.insert(k.clone(), v.clone().into_bytes());
    }
    blobs
}

fn conflict_or_exists(e: &Error) -> bool {
    matches!(e, Error::Api(s) if s.code == 409)
}

/// How the CA was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaOrigin {
    /// Loaded from the existing Secret.
    Loaded,
    /// This replica created (or completed) the Secret as leader.
    Written,
}

/// The CA and where its state lives.
pub struct SecretCa {
    pub ca: CertificateAuthority,
    pub origin: CaOrigin,
    /// The CA's storage: later writes (root rotation) go to [`persist_ca_writes`].
    pub storage: MemoryStorage,
    /// The Secret's resourceVersion the storage matches.
    pub resource_version: Option<String>,
}

fn secret_with(cfg: &CaSecretConfig, blobs: BTreeMap<String, Vec<u8>>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(cfg.namespace.clone()),
            labels: Some([(MANAGED_BY.0.into(), MANAGED_BY.1.into())].into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(blobs.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Default::default()
    }
}

/// Loads the CA from the Secret, or — as leader, when there is none — creates it and the
/// Secret. Non-leaders wait until the leader has written it.
pub async fn load_or_create_ca(
    client: Client,
    cfg: &CaSecretConfig,
    ca_cfg: &CaConfig,
    mut leader: watch::Receiver<bool>,
) -> anyhow::Result<SecretCa> {
    let api: Api<Secret> = Api::namespaced(client, &cfg.namespace);
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    let location = format!("{}/{}", cfg.namespace, cfg.name);
    loop {
        let is_leader = *leader.borrow_and_update();
        let existing = api
            .get_opt(&cfg.name)
            .await
            .map_err(|e| anyhow::anyhow!("reading Secret {location}: {e}"))?;
        let blobs = existing.as_ref().map(blobs_of).unwrap_or_default();
        let storage = MemoryStorage::new(&location, blobs);
        // Off the async workers: a new RSA 4096 root takes seconds to generate.
        let (blocking_cfg, blocking_storage) = (ca_cfg.clone(), storage.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            CertificateAuthority::load_or_create_with_storage(&blocking_cfg, blocking_storage)
        })
        .await
        .map_err(|e| anyhow::anyhow!("loading the mesh CA: {e}"))?;
        let ca = match loaded {
            Ok(ca) => ca,
            // Never replace material that exists but does not load.
            Err(e) if existing.is_some() => anyhow::bail!("the CA in Secret {location}: {e}"),
            Err(e) => anyhow::bail!("creating the mesh CA: {e}"),
        };
        let written = storage.written();
        match existing {
            Some(s) if written.is_empty() => {
                tracing::info!(secret = %location, "mesh CA loaded from its Secret");
                return Ok(SecretCa {
                    ca,
                    origin: CaOrigin::Loaded,
                    storage,
                    resource_version: s.metadata.resource_version,
                });
            }
            None if is_leader => {
                match api
                    .create(&PostParams::default(), &secret_with(cfg, storage.blobs()))
                    .await
                {
                    Ok(created) => {
                        tracing::info!(secret = %location, "created the mesh CA and its Secret");
                        return Ok(SecretCa {
                            ca,
                            origin: CaOrigin::Written,
                            storage,
                            resource_version: created.metadata.resource_version,
                        });
                    }
                    // Another replica was faster (a previous leader): load theirs.
                    Err(e) if conflict_or_exists(&e) => continue,
                    Err(e) => anyhow::bail!("creating Secret {location}: {e}"),
                }
            }
            Some(mut s) if is_leader => {
                // Complete a partial Secret (e.g. an operator's plug-in material without our
                // credential key): compare-and-swap on its resourceVersion.
                let mut data = s.data.take().unwrap_or_default();
                let blobs = storage.blobs();
                for name in &written {
                    if let Some(v) = blobs.get(name) {
                        data.insert(name.clone(), ByteString(v.clone()));
                    }
                }
                s.data = Some(data);
                match api.replace(&cfg.name, &PostParams::default(), &s).await {
                    Ok(updated) => {
                        tracing::info!(secret = %location, added = ?written, "completed the CA Secret");
                        return Ok(SecretCa {
                            ca,
                            origin: CaOrigin::Written,
                            storage,
                            resource_version: updated.metadata.resource_version,
                        });
                    }
                    Err(e) if conflict_or_exists(&e) => continue,
                    Err(e) => anyhow::bail!("updating Secret {location}: {e}"),
                }
            }
            // Not the leader: wait for the one that is to write it.
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "no usable CA in Secret {location} after {:?}, and this replica did not become leader",
                cfg.timeout
            );
        }
        tokio::select! {
            _ = leader.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Saves what the CA writes after start (root rotation phases) to the Secret, each time as one
/// compare-and-swap of the whole blob set, so the Secret always holds a state the CA wrote at
/// once (the CA's phases are designed to resume from any of them). Runs until `stop`.
pub async fn persist_ca_writes(
    client: Client,
    cfg: CaSecretConfig,
    storage: MemoryStorage,
    resource_version: Option<String>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Secret> = Api::namespaced(client, &cfg.namespace);
    storage.set_resource_version(resource_version);
    let mut writes = storage.writes();
    writes.mark_unchanged();
    loop {
        tokio::select! {
            r = writes.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut secret = secret_with(&cfg, storage.blobs());
        secret.metadata.resource_version = storage.resource_version();
        match api
            .replace(&cfg.name, &PostParams::default(), &secret)
            .await
        {
            Ok(s) => {
                storage.set_resource_version(s.metadata.resource_version);
                tracing::info!(secret = %cfg.name, "saved the CA's state to its Secret");
            }
            Err(e) => {
                tracing::error!(secret = %cfg.name, error = %e, "cannot save the CA's state to its Secret (changed by another writer?); the change lives in this process only");
            }
        }
    }
}

/// While this replica does not lead: re-reads the CA Secret every `resync` and, when another
/// replica changed it (the leader moved a root rotation on), reloads the CA from it and calls
/// `on_change` (which pushes the new trust bundle and certificates to this replica's proxies).
pub async fn follow_ca_secret(
    client: Client,
    cfg: CaSecretConfig,
    storage: MemoryStorage,
    ca: Arc<CertificateAuthority>,
    leader: watch::Receiver<bool>,
    on_change: Arc<dyn Fn() + Send + Sync>,
    resync: Duration,
) {
    let api: Api<Secret> = Api::namespaced(client, &cfg.namespace);
    loop {
        tokio::time::sleep(resync).await;
        if *leader.borrow() {
            continue; // the leader is the writer
        }
        let secret = match api.get_opt(&cfg.name).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::warn!(secret = %cfg.name, "the CA Secret is gone; serving the CA loaded before");
                continue;
            }
            Err(e) => {
                tracing::warn!(secret = %cfg.name, error = %e, "cannot read the CA Secret");
                continue;
            }
        };
        if secret.metadata.resource_version == storage.resource_version() {
            continue;
        }
        let previous = storage.blobs();
        storage.replace_from_secret(blobs_of(&secret), secret.metadata.resource_version.clone());
        match ca.reload_from_storage() {
            Ok(true) => {
                tracing::info!(secret = %cfg.name, rotation = ?ca.root_rotation().map(|r| r.phase), "the CA changed in its Secret (another replica); reloaded");
                on_change();
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(secret = %cfg.name, error = %e, "the CA Secret changed but does not load; serving the CA loaded before");
                storage.replace_from_secret(previous, None);
            }
        }
    }
}

/// Keeps the root-certificate ConfigMap `name` current in every namespace of `namespaces` and
/// in `own_namespace` (where the chart's gateways run) while this replica leads; re-checks
/// every `resync` (repairs deleted or edited ConfigMaps).
pub async fn publish_root_cert(
    client: Client,
    name: String,
    ca: Arc<CertificateAuthority>,
    mut namespaces: watch::Receiver<BTreeSet<String>>,
    own_namespace: String,
    mut leader: watch::Receiver<bool>,
    resync: Duration,
) {
    loop {
        if *leader.borrow_and_update() {
            let mut wanted = namespaces.borrow_and_update().clone();
            wanted.insert(own_namespace.clone());
            let root = ca.root_cert_pem();
            for ns in wanted {
                if let Err(e) = ensure_configmap(&client, &ns, &name, &root).await {
                    tracing::warn!(namespace = %ns, configmap = %name, error = %e, "cannot publish the root certificate");
                }
            }
        }
        tokio::select! {
            r = namespaces.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(resync) => {}
        }
    }
}

async fn ensure_configmap(client: &Client, ns: &str, name: &str, root: &str) -> Result<(), Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let data: BTreeMap<String, String> = [(ROOT_CERT_KEY.to_string(), root.to_string())].into();
    match api.get_opt(name).await? {
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(ns.to_string()),
                    labels: Some([(MANAGED_BY.0.into(), MANAGED_BY.1.into())].into()),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => {
                    tracing::info!(namespace = %ns, configmap = %name, "published the root certificate");
                    Ok(())
                }
                Err(e) if conflict_or_exists(&e) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Some(cm)
            if cm.data.as_ref().and_then(|d| d.get(ROOT_CERT_KEY)) == Some(&root.to_string()) =>
        {
            Ok(())
        }
        Some(mut cm) => {
            cm.data
                .get_or_insert_default()
                .insert(ROOT_CERT_KEY.into(), root.to_string());
            match api.replace(name, &PostParams::default(), &cm).await {
                Ok(_) => {
                    tracing::info!(namespace = %ns, configmap = %name, "updated the root certificate");
                    Ok(())
                }
                Err(e) if conflict_or_exists(&e) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_storage_records_writes() {
        let s = MemoryStorage::new("ns/meshd-ca", BTreeMap::new());
        let cfg = CaConfig::default();
        let ca = CertificateAuthority::load_or_create_with_storage(&cfg, s.clone()).unwrap();
        let written = s.written();
        assert!(written.contains("root-cert.pem"), "{written:?}");
        assert!(written.contains("root-key.pem"), "{written:?}");
        // Loading the same blobs again writes nothing and yields the same root.
        let again = MemoryStorage::new("ns/meshd-ca", s.blobs());
        let ca2 = CertificateAuthority::load_or_create_with_storage(&cfg, again.clone()).unwrap();
        assert!(again.written().is_empty(), "{:?}", again.written());
        assert_eq!(ca.root_cert_pem(), ca2.root_cert_pem());
        assert!(
            again
                .location("root-key.pem")
                .contains("Secret ns/meshd-ca")
        );
    }
}
