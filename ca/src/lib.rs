//! meshd's certificate authority.
//!
//! * a self-signed root persisted in `state_dir` (`root-cert.pem`, `root-key.pem`) — ECDSA
//!   P-256 by default, RSA 2048/4096 with [`CaConfig::root_key_algorithm`] — or Istio's
//!   plug-in CA layout (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`) used as
//!   an intermediate signer;
//! * SPIFFE X509-SVIDs for workloads ([`CertificateAuthority::issue_workload`],
//!   [`CertificateAuthority::sign_csr`]) and TLS server certificates for meshd's own listeners;
//! * HMAC workload credentials proving a proxy's identity in file mode.
//!
//! Served certificate chains are leaf first, followed by the plug-in `cert-chain.pem` (plug-in
//! mode) or nothing (self-signed mode: the root is only in the trust bundle,
//! [`CertificateAuthority::root_cert_pem`]).
//!
//! Root rotation (self-signed mode, [`CertificateAuthority::begin_root_rotation`]) goes through
//! three persisted phases — [`RotationPhase::AddRoot`] (both roots trusted, the old one signs),
//! [`RotationPhase::SwitchSigner`] (both trusted, the new one signs), [`RotationPhase::DropOld`]
//! (only the new one trusted) — so a restart at any point resumes where it stopped. The caller
//! (the control plane) moves to the next phase only once every proxy holds the current one.
//!
//! Where things live: `load` (storage → signer and trust bundle), `issue` (SVIDs, CSRs, server
//! certificates, credentials), `rotation` (the root rotation phases), `registry` (records of
//! issued leaves), `x509` (certificate helpers), `error`; `credential`, `keys`, `ledger`,
//! `spiffe`, `storage` and `istio_api` as named.

mod credential;
mod error;
mod issue;
pub mod istio_api;
mod keys;
mod ledger;
mod load;
mod registry;
mod root;
mod rotation;
mod spiffe;
mod storage;
mod x509;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{Issuer, KeyPair};
use ring::rand::SystemRandom;

use registry::Registry;
use rotation::RotationMarker;

pub use credential::{MAX_CREDENTIAL_LEN, WorkloadClaims};
pub use error::CaError;
pub use ledger::{CsrHolding, MAX_CSR_HOLDERS, PhaseNeed};
pub use registry::{IssuedSummary, KindSummary, MAX_TRACKED_LEAVES};
pub use rotation::{RootRotation, RotationPhase};
pub use spiffe::SpiffeId;
pub use storage::{CaStorage, FileStorage};

/// Self-signed root certificate (also the plug-in root bundle).
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// Self-signed root key (PKCS#8 PEM, mode 0600).
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// Plug-in CA: the signing (intermediate) certificate.
pub const PLUGIN_CA_CERT_FILE: &str = "ca-cert.pem";
/// Plug-in CA: the signing key.
pub const PLUGIN_CA_KEY_FILE: &str = "ca-key.pem";
/// Plug-in CA: chain from `ca-cert.pem` up to the root, `ca-cert.pem` first.
pub const PLUGIN_CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// HMAC key for workload credentials (32 raw bytes, mode 0600).
pub const CREDENTIAL_KEY_FILE: &str = "credential-key";
/// Root rotation in progress: the phase and the new root (JSON; absent when no rotation runs).
pub const ROOT_ROTATION_FILE: &str = "root-rotation.json";
/// Root rotation: the new root's key until it becomes `root-key.pem` (mode 0600).
pub const ROOT_NEXT_KEY_FILE: &str = "root-next-key.pem";

/// How far NotBefore is back-dated, for clock skew.
const BACKDATE: Duration = Duration::from_secs(120);

/// Key algorithm of the self-signed roots meshd generates (first start, root rotation). An
/// existing root is used whatever its algorithm; to change it, rotate the root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RootKeyAlgorithm {
    /// ECDSA on P-256; certificates signed with ecdsa-with-SHA256.
    #[default]
    EcdsaP256,
    /// RSA, 2048-bit modulus; certificates signed with sha256WithRSAEncryption.
    Rsa2048,
    /// RSA, 4096-bit modulus; certificates signed with sha256WithRSAEncryption.
    Rsa4096,
}

impl RootKeyAlgorithm {
    pub const ALL: [RootKeyAlgorithm; 3] = [
        RootKeyAlgorithm::EcdsaP256,
        RootKeyAlgorithm::Rsa2048,
        RootKeyAlgorithm::Rsa4096,
    ];

    /// `ecdsa-p256` | `rsa-2048` | `rsa-4096` (what [`FromStr`](std::str::FromStr) parses).
    pub fn as_str(self) -> &'static str {
        match self {
            RootKeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            RootKeyAlgorithm::Rsa2048 => "rsa-2048",
            RootKeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }

    /// The modulus size of an RSA algorithm.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            RootKeyAlgorithm::EcdsaP256 => None,
            RootKeyAlgorithm::Rsa2048 => Some(2048),
            RootKeyAlgorithm::Rsa4096 => Some(4096),
        }
    }
}

impl std::fmt::Display for RootKeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RootKeyAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RootKeyAlgorithm::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown root key algorithm {s:?} (use ecdsa-p256, rsa-2048 or rsa-4096)")
            })
    }
}

/// CA settings. Build with `CaConfig { state_dir, ..Default::default() }`.
#[derive(Clone, Debug)]
pub struct CaConfig {
    pub state_dir: PathBuf,
    /// e.g. `cluster.local`.
    pub trust_domain: String,
    /// Maximum (and default) lifetime of workload and server certificates.
    pub workload_cert_ttl: Duration,
    /// Lifetime of a newly generated self-signed root.
    pub root_cert_ttl: Duration,
    /// Key algorithm of a newly generated self-signed root (first start, root rotation).
    pub root_key_algorithm: RootKeyAlgorithm,
    /// A certificate is due for rotation when its remaining life is below
    /// min(rotation_window, lifetime / 2).
    pub rotation_window: Duration,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("./.meshd"),
            trust_domain: "cluster.local".to_string(),
            workload_cert_ttl: Duration::from_secs(90 * 24 * 3600),
            root_cert_ttl: Duration::from_secs(10 * 365 * 24 * 3600),
            root_key_algorithm: RootKeyAlgorithm::EcdsaP256,
            rotation_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// A certificate with its private key.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub spiffe_id: Option<SpiffeId>,
    /// Leaf first, then the intermediates to serve (plug-in mode). PEM.
    pub cert_chain_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Serial (lower-case hex) of the CA certificate that signed it: after a root rotation
    /// switches the signer, certificates with the old value are re-issued.
    pub signer_serial: String,
}

impl IssuedCert {
    pub fn validity(&self) -> Validity {
        Validity {
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }

    /// What a holder keeps once the chain and key are in what it serves.
    pub fn facts(&self) -> CertFacts {
        CertFacts {
            serial_hex: self.serial_hex.as_str().into(),
            validity: self.validity(),
            signer_serial: self.signer_serial.as_str().into(),
        }
    }
}

/// A served certificate's public facts: enough to rotate it, report it and spot its expiry,
/// so the PEM chain and the private key live only in the one encoding that is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    pub serial_hex: Box<str>,
    pub validity: Validity,
    /// As `IssuedCert::signer_serial`.
    pub signer_serial: Box<str>,
}

/// A certificate's validity period: all that rotation and expiry checks read, so a holder can
/// keep these two times without keeping the certificate (or its key) beside what it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Public information about a certificate; never key material.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CertInfo {
    /// The URI SAN (`spiffe://…`), or `""` for certificates without one (server certificates).
    pub spiffe_id: String,
    /// Lower-case hex of the serial number bytes.
    pub serial: String,
    /// RFC 3339.
    pub not_before: String,
    pub not_after: String,
    /// `root` | `intermediate` | `workload` | `server`.
    pub kind: String,
}

/// Which kind of CA is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaMode {
    /// meshd's own self-signed root signs directly.
    SelfSigned,
    /// Istio's plug-in `cacerts` layout: `ca-cert.pem` signs, chains carry `cert-chain.pem`.
    PlugIn,
}

struct Signer {
    issuer: Issuer<'static, KeyPair>,
    /// Lower-case hex serial of the signing certificate.
    serial_hex: String,
    not_after: SystemTime,
    /// PEMs served after the leaf.
    chain_tail: Vec<String>,
    /// `chain_tail` concatenated.
    chain_tail_joined: String,
}

/// What a root rotation swaps: the signer and the trust bundle.
struct SigningState {
    signer: Signer,
    bundle_pem: String,
    ca_infos: Vec<CertInfo>,
    rotation: Option<RotationMarker>,
}

/// The mesh CA. `Send + Sync`; share it behind an `Arc`.
pub struct CertificateAuthority {
    cfg: CaConfig,
    trust_domain: String,
    workload_ttl: Duration,
    rotation_window: Duration,
    mode: CaMode,
    state: RwLock<Arc<SigningState>>,
    storage: Arc<dyn CaStorage>,
    /// Serialises root-rotation steps (each writes several files).
    rotation_lock: Mutex<()>,
    registry: Mutex<Registry>,
    registry_cap: std::sync::atomic::AtomicUsize,
    /// CreateCertificate callers and what they hold, for root rotation.
    csr_ledger: Mutex<ledger::CsrLedger>,
    /// Certificates signed, by [`Kind`] (workload, server).
    issued_total: [std::sync::atomic::AtomicU64; 2],
    cred_key: ring::hmac::Key,
    rng: SystemRandom,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    fn state(&self) -> Arc<SigningState> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn mode(&self) -> CaMode {
        self.mode
    }

    /// The trust bundle: every root, PEM, concatenated (during a root rotation, both roots).
    pub fn root_cert_pem(&self) -> String {
        self.state().bundle_pem.clone()
    }

    /// The certificates served after a leaf (empty in self-signed mode).
    pub fn chain_tail_pems(&self) -> Vec<String> {
        self.state().signer.chain_tail.clone()
    }

    /// Serial (lower-case hex) of the certificate that signs now.
    pub fn signer_serial(&self) -> String {
        self.state().signer.serial_hex.clone()
    }
}

#[cfg(test)]
mod tests;
