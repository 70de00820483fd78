//! Loading the CA from its storage: the self-signed root (generated on first start) or Istio's
//! plug-in `cacerts` layout, checked and turned into the signer and trust bundle; reloading after
//! another writer changed it.

use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use ring::rand::SystemRandom;

use crate::registry::Registry;
use crate::root::{check_self_signed_root, generate_root, signer_from};
use crate::rotation::{load_rotation_marker, rotation_state};
use crate::x509::{
    ca_cert_info, check_is_ca, check_key_matches, parse_cert, parse_cert_pems, pem_encode, rfc3339,
};
use crate::{
    CaConfig, CaError, CaMode, CaStorage, CertInfo, CertificateAuthority, FileStorage,
    MAX_TRACKED_LEAVES, PLUGIN_CA_CERT_FILE, PLUGIN_CA_KEY_FILE, PLUGIN_CERT_CHAIN_FILE,
    ROOT_CERT_FILE, ROOT_KEY_FILE, RootKeyAlgorithm, SigningState, credential, keys, ledger,
    spiffe,
};

pub(crate) fn load_self_signed(
    storage: &dyn CaStorage,
    cfg: &CaConfig,
    rng: &SystemRandom,
) -> Result<SigningState, CaError> {
    let cert_loc = storage.location(ROOT_CERT_FILE);
    let key_loc = storage.location(ROOT_KEY_FILE);
    let (cert_pem, key_pem) = match (storage.load(ROOT_CERT_FILE)?, storage.load(ROOT_KEY_FILE)?) {
        (Some(c), Some(k)) => {
            tracing::info!(cert = %cert_loc, "reusing existing mesh root CA");
            (c, k)
        }
        (None, None) => {
            let (c, k) = generate_root(cfg, rng, false)?;
            // Key first: a crash in between leaves a key without a cert, which load refuses
            // loudly rather than silently replacing.
            storage.store(ROOT_KEY_FILE, k.as_bytes(), true)?;
            storage.store(ROOT_CERT_FILE, c.as_bytes(), false)?;
            tracing::info!(cert = %cert_loc, "generated a new self-signed mesh root CA");
            (c.into_bytes(), k.into_bytes())
        }
        (Some(_), None) => {
            return Err(CaError::IncompleteState {
                present: cert_loc,
                missing: key_loc,
            });
        }
        (None, Some(_)) => {
            return Err(CaError::IncompleteState {
                present: key_loc,
                missing: cert_loc,
            });
        }
    };
    let ders = parse_cert_pems(&cert_pem, &cert_loc)?;
    let key = keys::parse_private_key(&key_pem, &key_loc)?;
    if let Some(marker) = load_rotation_marker(storage)? {
        return rotation_state(storage, cfg, ders, key, marker);
    }
    let root_der = &ders[0];
    let root = parse_cert(root_der);
    check_is_ca(&root, &cert_loc)?;
    check_key_matches(&key, &root, &key_loc, &cert_loc)?;
    check_self_signed_root(&root, &cert_loc, cfg)?;
    let existing = keys::cert_key_algorithm(&root);
    if existing != Some(cfg.root_key_algorithm) {
        tracing::info!(
            root = existing.map_or("other", RootKeyAlgorithm::as_str),
            configured = cfg.root_key_algorithm.as_str(),
            "the existing root keeps its key algorithm; the configured one applies to the next generated root (meshd ca rotate-root)"
        );
    }
    // The bundle holds every certificate in root-cert.pem (roots an operator keeps trusted
    // stay trusted); the first one signs.
    let bundle: String = ders.iter().map(|d| pem_encode("CERTIFICATE", d)).collect();
    let infos = ders.iter().map(|d| ca_cert_info(d, "root")).collect();
    let signer = signer_from(root_der, key, &cert_loc, Vec::new())?;
    Ok(SigningState {
        signer,
        bundle_pem: bundle,
        ca_infos: infos,
        rotation: None,
    })
}

pub(crate) fn load_plugin(storage: &dyn CaStorage) -> Result<SigningState, CaError> {
    let need = |name: &str, present: &str| -> Result<Vec<u8>, CaError> {
        storage.load(name)?.ok_or_else(|| CaError::IncompleteState {
            present: storage.location(present),
            missing: storage.location(name),
        })
    };
    let ca_cert_loc = storage.location(PLUGIN_CA_CERT_FILE);
    let ca_key_loc = storage.location(PLUGIN_CA_KEY_FILE);
    let root_loc = storage.location(ROOT_CERT_FILE);
    let chain_loc = storage.location(PLUGIN_CERT_CHAIN_FILE);
    let ca_cert_pem = need(PLUGIN_CA_CERT_FILE, PLUGIN_CA_KEY_FILE)?;
    let ca_key_pem = need(PLUGIN_CA_KEY_FILE, PLUGIN_CA_CERT_FILE)?;
    let root_pem = need(ROOT_CERT_FILE, PLUGIN_CA_CERT_FILE)?;

    let ca_der = parse_cert_pems(&ca_cert_pem, &ca_cert_loc)?.swap_remove(0);
    let ca = parse_cert(&ca_der);
    check_is_ca(&ca, &ca_cert_loc)?;
    let key = keys::parse_private_key(&ca_key_pem, &ca_key_loc)?;
    check_key_matches(&key, &ca, &ca_key_loc, &ca_cert_loc)?;

    let roots = parse_cert_pems(&root_pem, &root_loc)?;
    let mut chain = match storage.load(PLUGIN_CERT_CHAIN_FILE)? {
        Some(c) => parse_cert_pems(&c, &chain_loc)?,
        None => vec![ca_der.clone()],
    };
    if chain.first() != Some(&ca_der) {
        tracing::warn!(chain = %chain_loc, "cert-chain.pem does not start with ca-cert.pem; serving ca-cert.pem first");
        chain.retain(|d| *d != ca_der);
        chain.insert(0, ca_der.clone());
    }
    // ca-cert must be signed by the next certificate of the chain or by a root (or be a root).
    let signed_ok = chain[1..].iter().chain(roots.iter()).any(|p| {
        ca.verify_signature(Some(parse_cert(p).public_key()))
            .is_ok()
    });
    if !signed_ok {
        return Err(CaError::NotCa {
            location: ca_cert_loc,
            reason: format!(
                "not signed by any certificate in {chain_loc} or {root_loc}; the plug-in material does not form a chain"
            ),
        });
    }
    let bundle: String = roots.iter().map(|d| pem_encode("CERTIFICATE", d)).collect();
    let mut infos: Vec<CertInfo> = roots.iter().map(|d| ca_cert_info(d, "root")).collect();
    infos.extend(
        chain
            .iter()
            .filter(|d| !roots.contains(d))
            .map(|d| ca_cert_info(d, "intermediate")),
    );
    let tail = chain.iter().map(|d| pem_encode("CERTIFICATE", d)).collect();
    let signer = signer_from(&ca_der, key, &ca_cert_loc, tail)?;
    tracing::info!(ca_cert = %ca_cert_loc, "using plug-in CA certificate as the signer");
    Ok(SigningState {
        signer,
        bundle_pem: bundle,
        ca_infos: infos,
        rotation: None,
    })
}

impl CertificateAuthority {
    /// Loads the CA from `cfg.state_dir`, creating a self-signed root on first start.
    /// Existing state is never replaced: unreadable or mismatched files are an error.
    pub fn load_or_create(cfg: &CaConfig) -> Result<Self, CaError> {
        Self::load_or_create_with_storage(cfg, FileStorage::new(&cfg.state_dir))
    }

    /// As [`load_or_create`](Self::load_or_create), on any [`CaStorage`] backend (kept for
    /// root rotation).
    pub fn load_or_create_with_storage(
        cfg: &CaConfig,
        storage: impl CaStorage + 'static,
    ) -> Result<Self, CaError> {
        let storage: Arc<dyn CaStorage> = Arc::new(storage);
        spiffe::validate_trust_domain(&cfg.trust_domain).map_err(|reason| {
            CaError::InvalidTrustDomain {
                input: cfg.trust_domain.clone(),
                reason,
            }
        })?;
        let rng = SystemRandom::new();
        let plugin = storage.load(PLUGIN_CA_CERT_FILE)?.is_some()
            || storage.load(PLUGIN_CA_KEY_FILE)?.is_some();
        let (mode, state) = if plugin {
            (CaMode::PlugIn, load_plugin(&*storage)?)
        } else {
            (CaMode::SelfSigned, load_self_signed(&*storage, cfg, &rng)?)
        };
        if state.signer.not_after <= SystemTime::now() {
            tracing::error!(
                not_after = %rfc3339(state.signer.not_after),
                "the CA signing certificate has expired; issuance will fail"
            );
        }
        if let Some(m) = &state.rotation {
            tracing::warn!(phase = m.phase.as_str(), started_at = %m.started_at, "a root rotation is in progress");
        }
        let cred_key = credential::load_or_create_key(&*storage, &rng)?;
        Ok(Self {
            cfg: cfg.clone(),
            trust_domain: cfg.trust_domain.clone(),
            workload_ttl: cfg.workload_cert_ttl,
            rotation_window: cfg.rotation_window,
            mode,
            state: RwLock::new(Arc::new(state)),
            storage,
            rotation_lock: Mutex::new(()),
            registry: Mutex::new(Registry::default()),
            registry_cap: std::sync::atomic::AtomicUsize::new(MAX_TRACKED_LEAVES),
            csr_ledger: Mutex::new(ledger::CsrLedger::default()),
            issued_total: Default::default(),
            cred_key,
            rng,
        })
    }

    /// Re-reads the CA's state from its storage after another writer changed it (Kubernetes
    /// mode: the leading replica moved a root rotation on). Returns whether the trust bundle,
    /// the signer or the rotation phase changed. Self-signed mode only: a plug-in CA's files
    /// change only by the operator's hand, and a restart loads them.
    pub fn reload_from_storage(&self) -> Result<bool, CaError> {
        if self.mode == CaMode::PlugIn {
            return Ok(false);
        }
        let _guard = self.rotation_lock.lock().unwrap_or_else(|p| p.into_inner());
        let before = self.state();
        let fresh = Arc::new(load_self_signed(&*self.storage, &self.cfg, &self.rng)?);
        let phase = |s: &SigningState| s.rotation.as_ref().map(|m| m.phase);
        let changed = before.bundle_pem != fresh.bundle_pem
            || before.signer.serial_hex != fresh.signer.serial_hex
            || phase(&before) != phase(&fresh);
        if changed {
            *self.state.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        }
        Ok(changed)
    }

    pub(crate) fn reload(&self) -> Result<Arc<SigningState>, CaError> {
        let state = Arc::new(load_self_signed(&*self.storage, &self.cfg, &self.rng)?);
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state.clone();
        Ok(state)
    }
}
