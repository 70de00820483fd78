//! Root rotation (self-signed mode): the three persisted phases (add-root, switch-signer,
//! drop-old), the marker file that makes a restart resume where it stopped, the signer and trust
//! bundle of each phase, and which CreateCertificate callers still hold what the phase replaces.

use std::time::SystemTime;

use rcgen::KeyPair;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::root::{check_self_signed_root, generate_root, signer_from};
use crate::x509::{ca_cert_info, check_is_ca, parse_cert, parse_cert_pems, pem_encode, rfc3339};
use crate::{
    CaConfig, CaError, CaMode, CaStorage, CertificateAuthority, PhaseNeed, ROOT_CERT_FILE,
    ROOT_KEY_FILE, ROOT_NEXT_KEY_FILE, ROOT_ROTATION_FILE, SigningState, keys,
};

/// Where a root rotation stands. Each phase is persisted before it takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RotationPhase {
    /// The new root is in the trust bundle next to the old one; the old root still signs.
    AddRoot,
    /// Both roots are trusted; the new root signs (workload certificates get re-issued).
    SwitchSigner,
    /// Only the new root is trusted. Finishing the rotation removes its bookkeeping.
    DropOld,
}

impl RotationPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RotationPhase::AddRoot => "add-root",
            RotationPhase::SwitchSigner => "switch-signer",
            RotationPhase::DropOld => "drop-old",
        }
    }
}

/// A root rotation in progress (public view; never key material).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RootRotation {
    pub phase: RotationPhase,
    /// Serial of the new root (lower-case hex).
    pub new_root_serial: String,
    /// Serials of the roots it replaces.
    pub old_root_serials: Vec<String>,
    /// RFC 3339.
    pub started_at: String,
}

/// `root-rotation.json`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct RotationMarker {
    pub(crate) phase: RotationPhase,
    pub(crate) new_root_pem: String,
    pub(crate) old_root_serials: Vec<String>,
    pub(crate) started_at: String,
}

pub(crate) fn public_rotation(m: &RotationMarker) -> RootRotation {
    let new_root_serial = x509_parser::pem::parse_x509_pem(m.new_root_pem.as_bytes())
        .ok()
        .and_then(|(_, pem)| {
            X509Certificate::from_der(&pem.contents)
                .ok()
                .map(|(_, c)| hex::encode(c.raw_serial()))
        })
        .unwrap_or_default();
    RootRotation {
        phase: m.phase,
        new_root_serial,
        old_root_serials: m.old_root_serials.clone(),
        started_at: m.started_at.clone(),
    }
}

pub(crate) fn load_rotation_marker(
    storage: &dyn CaStorage,
) -> Result<Option<RotationMarker>, CaError> {
    let Some(data) = storage.load(ROOT_ROTATION_FILE)? else {
        return Ok(None);
    };
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| CaError::corrupt(storage.location(ROOT_ROTATION_FILE), e))
}

/// The signer and bundle while a root rotation is in progress. Derived from the marker and
/// whichever of the key files matches, so every crash point between the writes of a phase
/// loads as that phase (see [`CertificateAuthority::set_rotation_phase`]).
pub(crate) fn rotation_state(
    storage: &dyn CaStorage,
    cfg: &CaConfig,
    ders: Vec<Vec<u8>>,
    key: KeyPair,
    marker: RotationMarker,
) -> Result<SigningState, CaError> {
    let cert_loc = storage.location(ROOT_CERT_FILE);
    let marker_loc = storage.location(ROOT_ROTATION_FILE);
    let next_loc = storage.location(ROOT_NEXT_KEY_FILE);
    let new_der = parse_cert_pems(marker.new_root_pem.as_bytes(), &marker_loc)?.swap_remove(0);
    let new_root = parse_cert(&new_der);
    check_is_ca(&new_root, &marker_loc)?;
    check_self_signed_root(&new_root, &marker_loc, cfg)?;
    let next_key = match storage.load(ROOT_NEXT_KEY_FILE)? {
        Some(pem) => Some(keys::parse_private_key(&pem, &next_loc)?),
        None => None,
    };
    let matches = |k: &KeyPair, c: &X509Certificate<'_>| {
        k.public_key_raw() == c.public_key().subject_public_key.data.as_ref()
    };
    let (signer_der, signer_key) = match marker.phase {
        RotationPhase::AddRoot => {
            if !next_key.as_ref().is_some_and(|k| matches(k, &new_root)) {
                return Err(CaError::RotationState {
                    reason: format!(
                        "{marker_loc} names a new root but {next_loc} is missing or does not match it"
                    ),
                });
            }
            let old = ders
                .iter()
                .find(|d| matches(&key, &parse_cert(d)))
                .ok_or_else(|| CaError::KeyMismatch {
                    key: storage.location(ROOT_KEY_FILE),
                    cert: cert_loc.clone(),
                })?;
            (old.clone(), key)
        }
        RotationPhase::SwitchSigner | RotationPhase::DropOld => {
            let k = if matches(&key, &new_root) {
                key
            } else {
                next_key
                    .filter(|k| matches(k, &new_root))
                    .ok_or_else(|| CaError::RotationState {
                        reason: format!(
                            "phase {}: neither root-key.pem nor {next_loc} holds the new root's key",
                            marker.phase.as_str()
                        ),
                    })?
            };
            (new_der.clone(), k)
        }
    };
    let mut trusted: Vec<Vec<u8>> = match marker.phase {
        RotationPhase::AddRoot | RotationPhase::SwitchSigner => ders,
        RotationPhase::DropOld => Vec::new(),
    };
    if !trusted.contains(&new_der) {
        trusted.push(new_der.clone());
    }
    // signer first
    trusted.sort_by_key(|d| *d != signer_der);
    let bundle: String = trusted
        .iter()
        .map(|d| pem_encode("CERTIFICATE", d))
        .collect();
    let infos = trusted.iter().map(|d| ca_cert_info(d, "root")).collect();
    let signer = signer_from(&signer_der, signer_key, &cert_loc, Vec::new())?;
    Ok(SigningState {
        signer,
        bundle_pem: bundle,
        ca_infos: infos,
        rotation: Some(marker),
    })
}

impl CertificateAuthority {
    /// CreateCertificate callers whose certificate, still valid, does not yet meet what the
    /// current root rotation phase needs before it moves on (empty outside a rotation):
    /// leaving add-root, the new root in their bundle; leaving switch-signer, a certificate
    /// from the new signer. Each renewal brings a caller up to date; an expiry releases it.
    pub fn csr_holders_behind(&self) -> Vec<String> {
        let state = self.state();
        let Some(marker) = &state.rotation else {
            return Vec::new();
        };
        let new_root = public_rotation(marker).new_root_serial;
        let need = match marker.phase {
            RotationPhase::AddRoot => PhaseNeed::Trusts(&new_root),
            RotationPhase::SwitchSigner => PhaseNeed::SignedBy(&state.signer.serial_hex),
            RotationPhase::DropOld => return Vec::new(),
        };
        self.csr_ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .behind(need, SystemTime::now())
    }

    /// How many CreateCertificate callers are tracked, and how many the cap made forget.
    pub fn csr_holders(&self) -> (usize, u64) {
        let l = self.csr_ledger.lock().unwrap_or_else(|p| p.into_inner());
        (l.len(), l.untracked)
    }

    /// The root rotation in progress, if any.
    pub fn root_rotation(&self) -> Option<RootRotation> {
        self.state().rotation.as_ref().map(public_rotation)
    }

    /// Starts a root rotation (self-signed mode): generates a new root and adds it to the trust
    /// bundle next to the old one, which keeps signing ([`RotationPhase::AddRoot`]). Persisted
    /// before it takes effect. A rotation already in progress is returned unchanged.
    pub fn begin_root_rotation(&self) -> Result<RootRotation, CaError> {
        let _guard = self.rotation_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.mode == CaMode::PlugIn {
            return Err(CaError::RotationUnsupported {
                reason: "meshd signs as an intermediate of a plug-in CA (Istio's cacerts layout); rotate by replacing ca-cert.pem, ca-key.pem and cert-chain.pem, keeping both roots in root-cert.pem until every workload has a new certificate".into(),
            });
        }
        let state = self.state();
        if let Some(m) = &state.rotation {
            return Ok(public_rotation(m));
        }
        let (cert_pem, key_pem) = generate_root(&self.cfg, &self.rng, true)?;
        // The key first: without the marker, a stray next key is ignored (and overwritten by
        // the next attempt).
        self.storage
            .store(ROOT_NEXT_KEY_FILE, key_pem.as_bytes(), true)?;
        let marker = RotationMarker {
            phase: RotationPhase::AddRoot,
            new_root_pem: cert_pem,
            old_root_serials: state.ca_infos.iter().map(|i| i.serial.clone()).collect(),
            started_at: rfc3339(SystemTime::now()),
        };
        self.enter_phase(&marker)?;
        tracing::info!(
            new_root = %public_rotation(&marker).new_root_serial,
            "root rotation started: new root added to the trust bundle; the old root still signs"
        );
        Ok(public_rotation(&marker))
    }

    /// Moves a root rotation on: AddRoot → SwitchSigner (the new root signs) → DropOld (only
    /// the new root is trusted) → finished (`None`). Call each step only once every proxy holds
    /// what the current phase serves.
    pub fn advance_root_rotation(&self) -> Result<Option<RootRotation>, CaError> {
        let _guard = self.rotation_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut marker) = self.state().rotation.clone() else {
            return Err(CaError::RotationState {
                reason: "no root rotation in progress".into(),
            });
        };
        let next = match marker.phase {
            RotationPhase::AddRoot => RotationPhase::SwitchSigner,
            RotationPhase::SwitchSigner => RotationPhase::DropOld,
            RotationPhase::DropOld => {
                self.finish_rotation(&marker)?;
                tracing::info!(
                    new_root = %public_rotation(&marker).new_root_serial,
                    "root rotation finished: the old root is gone from the trust bundle"
                );
                return Ok(None);
            }
        };
        marker.phase = next;
        self.enter_phase(&marker)?;
        tracing::info!(phase = next.as_str(), "root rotation advanced");
        Ok(Some(public_rotation(&marker)))
    }

    /// Redoes the writes of the current rotation phase, completing any a crash interrupted
    /// (idempotent; for the server at startup). `None` when no rotation is in progress.
    pub fn resume_root_rotation(&self) -> Result<Option<RootRotation>, CaError> {
        let _guard = self.rotation_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(marker) = self.state().rotation.clone() else {
            return Ok(None);
        };
        self.enter_phase(&marker)?;
        Ok(Some(public_rotation(&marker)))
    }

    /// Persists `marker` (the commit point of a phase), brings `root-cert.pem`/`root-key.pem`
    /// in line with it (signer first, then the other trusted roots), and swaps the in-memory
    /// signer and bundle to what a restart would load.
    fn enter_phase(&self, marker: &RotationMarker) -> Result<(), CaError> {
        let json = serde_json::to_vec_pretty(marker).expect("the marker always serializes");
        self.storage.store(ROOT_ROTATION_FILE, &json, false)?;
        if marker.phase != RotationPhase::AddRoot {
            self.promote_next_key(marker)?;
        }
        let state = self.reload()?;
        self.storage
            .store(ROOT_CERT_FILE, state.bundle_pem.as_bytes(), false)?;
        Ok(())
    }

    fn finish_rotation(&self, marker: &RotationMarker) -> Result<(), CaError> {
        self.promote_next_key(marker)?;
        self.storage
            .store(ROOT_CERT_FILE, marker.new_root_pem.as_bytes(), false)?;
        // Commit point: without the marker, root-cert.pem and root-key.pem load as a plain root.
        self.storage.remove(ROOT_ROTATION_FILE)?;
        self.storage.remove(ROOT_NEXT_KEY_FILE)?;
        self.reload()?;
        Ok(())
    }

    /// Copies the new root's key over `root-key.pem` (when `root-next-key.pem` holds it).
    fn promote_next_key(&self, marker: &RotationMarker) -> Result<(), CaError> {
        let Some(next) = self.storage.load(ROOT_NEXT_KEY_FILE)? else {
            return Ok(());
        };
        let loc = self.storage.location(ROOT_NEXT_KEY_FILE);
        let key = keys::parse_private_key(&next, &loc)?;
        let der = parse_cert_pems(marker.new_root_pem.as_bytes(), &loc)?;
        if key.public_key_raw()
            != parse_cert(&der[0])
                .public_key()
                .subject_public_key
                .data
                .as_ref()
        {
            return Err(CaError::KeyMismatch {
                key: loc,
                cert: self.storage.location(ROOT_ROTATION_FILE),
            });
        }
        self.storage.store(ROOT_KEY_FILE, &next, true)
    }
}
