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

mod credential;
pub mod istio_api;
mod keys;
mod ledger;
mod spiffe;
mod storage;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use x509_parser::prelude::{FromDer, X509Certificate};

pub use credential::{MAX_CREDENTIAL_LEN, WorkloadClaims};
pub use ledger::{CsrHolding, MAX_CSR_HOLDERS, PhaseNeed};
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

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("I/O error on {path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("storage error at {location}: {reason}")]
    Storage { location: String, reason: String },
    #[error("{location}: corrupt or unusable: {reason}")]
    Corrupt { location: String, reason: String },
    #[error("{key} does not match the public key of {cert}")]
    KeyMismatch { key: String, cert: String },
    #[error(
        "incomplete CA state: {present} exists but {missing} does not; refusing to generate a new CA over existing state (restore the missing file or remove both)"
    )]
    IncompleteState { present: String, missing: String },
    #[error("{location}: not usable as a CA certificate: {reason}")]
    NotCa { location: String, reason: String },
    #[error("the signing certificate expired at {not_after}; no certificates can be issued")]
    SignerExpired { not_after: String },
    #[error("certificate generation failed while {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("generating a {algorithm} key failed: {reason}")]
    KeyGeneration {
        algorithm: &'static str,
        reason: String,
    },
    #[error("random number generator failed while {what}")]
    Rng { what: &'static str },
    #[error("invalid SPIFFE ID {input:?}: {reason}")]
    InvalidSpiffeId { input: String, reason: String },
    #[error("SPIFFE ID {id} is not in this CA's trust domain {expected:?}")]
    ForeignTrustDomain { id: String, expected: String },
    #[error("invalid trust domain {input:?} in CA config: {reason}")]
    InvalidTrustDomain { input: String, reason: String },
    #[error("invalid server name {name:?}: {reason}")]
    InvalidServerName { name: String, reason: String },
    #[error("CSR: cannot parse: {reason}")]
    CsrParse { reason: String },
    #[error("CSR: signature does not verify with the CSR's own public key")]
    CsrSignature,
    #[error("CSR: RSA key of {bits} bits is too weak (minimum 2048)")]
    CsrWeakKey { bits: usize },
    #[error("CSR: unsupported public key: {reason}")]
    CsrUnsupportedKey { reason: String },
    #[error("requested certificate TTL {requested:?} exceeds the maximum {max:?}")]
    TtlTooLong { requested: Duration, max: Duration },
    #[error("requested certificate TTL must be positive")]
    TtlZero,
    #[error("credential is malformed: {reason}")]
    CredentialMalformed { reason: String },
    #[error("credential signature does not verify (tampered, or issued by another CA)")]
    CredentialBadSignature,
    #[error(
        "the credential of {workload} expired at {expired_at} (Unix seconds); write a new bootstrap with `meshd bootstrap`"
    )]
    CredentialExpired { workload: String, expired_at: u64 },
    #[error(
        "the credential of {workload} carries no expiry (issued by an older meshd); write a new bootstrap with `meshd bootstrap`"
    )]
    CredentialNoExpiry { workload: String },
    #[error(
        "no credential for {workload}: its names make a credential of {len} bytes, over the {max}-byte limit every verifier enforces"
    )]
    CredentialTooLong {
        workload: String,
        len: usize,
        max: usize,
    },
    #[error("root rotation is not possible: {reason}")]
    RotationUnsupported { reason: String },
    #[error("root rotation: {reason}")]
    RotationState { reason: String },
}

impl CaError {
    fn corrupt(location: impl Into<String>, reason: impl ToString) -> Self {
        CaError::Corrupt {
            location: location.into(),
            reason: reason.to_string(),
        }
    }
}

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
struct RotationMarker {
    phase: RotationPhase,
    new_root_pem: String,
    old_root_serials: Vec<String>,
    started_at: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Workload = 0,
    Server = 1,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Workload => "workload",
            Kind::Server => "server",
        }
    }
}

/// What a leaf is for, besides its key.
struct Leaf {
    sans: Vec<SanType>,
    kind: Kind,
    /// SPIFFE ID recorded in the issued registry (`""` for server certificates).
    registry_id: String,
    ttl: Duration,
    /// RSA subject key: keyEncipherment too.
    rsa: bool,
}

struct RegEntry {
    spiffe_id: String,
    kind: Kind,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// Most leaf certificates the CA keeps a record of (`/debug/certs`, `/metrics`): past it the
/// oldest records go first, counted in [`IssuedSummary::untracked`].
pub const MAX_TRACKED_LEAVES: usize = 50_000;

/// Leaves still valid, in issuance order, bounded.
#[derive(Default)]
struct Registry {
    certs: std::collections::VecDeque<(String, RegEntry)>,
    next_prune: Option<SystemTime>,
    /// Records dropped by the cap while their certificate was still valid.
    untracked: u64,
}

impl Registry {
    fn prune(&mut self, now: SystemTime) {
        self.certs.retain(|(_, e)| e.not_after > now);
        self.next_prune = Some(now + Duration::from_secs(60));
    }

    fn insert(&mut self, serial: String, entry: RegEntry, cap: usize) {
        self.certs.push_back((serial, entry));
        while self.certs.len() > cap.max(1) {
            self.certs.pop_front();
            self.untracked += 1;
        }
    }
}

/// Certificates of one kind still valid, for bounded metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindSummary {
    /// `root` | `intermediate` | `workload` | `server`.
    pub kind: &'static str,
    pub count: u64,
    /// The earliest NotAfter among them.
    pub earliest_expiry: Option<SystemTime>,
}

/// What [`CertificateAuthority::issued_summary`] reports.
#[derive(Clone, Debug)]
pub struct IssuedSummary {
    pub kinds: Vec<KindSummary>,
    /// Valid leaves whose record the cap ([`MAX_TRACKED_LEAVES`]) dropped.
    pub untracked: u64,
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

/// A P-256 public key taken straight from a freshly generated ring PKCS#8 document, so
/// issuing does not pay for parsing the key back (a second scalar multiplication).
struct RawP256Public<'a>(&'a [u8]);

impl PublicKeyData for RawP256Public<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// All `CERTIFICATE` blocks of a PEM bundle, as DER.
pub(crate) fn parse_cert_pems(data: &[u8], location: &str) -> Result<Vec<Vec<u8>>, CaError> {
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(data) {
        let pem = pem.map_err(|e| CaError::corrupt(location, format!("bad PEM: {e}")))?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        X509Certificate::from_der(&pem.contents)
            .map_err(|e| CaError::corrupt(location, format!("certificate does not parse: {e}")))?;
        out.push(pem.contents);
    }
    if out.is_empty() {
        return Err(CaError::corrupt(location, "no CERTIFICATE PEM block found"));
    }
    Ok(out)
}

fn parse_cert(der: &[u8]) -> X509Certificate<'_> {
    // Only called on DER already validated by parse_cert_pems.
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .expect("certificate DER validated earlier")
}

fn asn1_to_system(t: x509_parser::time::ASN1Time) -> SystemTime {
    let ts = t.timestamp();
    if ts >= 0 {
        UNIX_EPOCH + Duration::from_secs(ts as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(ts.unsigned_abs())
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Truncates to whole seconds (X.509 validity has second precision).
fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

fn first_uri_san(cert: &X509Certificate<'_>) -> String {
    use x509_parser::extensions::GeneralName;
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
        })
        .unwrap_or_default()
}

fn ca_cert_info(der: &[u8], kind: &str) -> CertInfo {
    let c = parse_cert(der);
    CertInfo {
        spiffe_id: first_uri_san(&c),
        serial: hex::encode(c.raw_serial()),
        not_before: rfc3339(asn1_to_system(c.validity().not_before)),
        not_after: rfc3339(asn1_to_system(c.validity().not_after)),
        kind: kind.to_string(),
    }
}

/// Checks that `cert` may sign certificates.
fn check_is_ca(cert: &X509Certificate<'_>, location: &str) -> Result<(), CaError> {
    let not_ca = |reason: &str| CaError::NotCa {
        location: location.to_string(),
        reason: reason.to_string(),
    };
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => return Err(not_ca("basicConstraints CA:TRUE is missing")),
        Err(e) => return Err(not_ca(&format!("bad basicConstraints: {e}"))),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            Err(not_ca("keyUsage does not allow keyCertSign"))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(not_ca(&format!("bad keyUsage: {e}"))),
    }
}

fn check_key_matches(
    key: &KeyPair,
    cert: &X509Certificate<'_>,
    key_loc: &str,
    cert_loc: &str,
) -> Result<(), CaError> {
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return Err(CaError::KeyMismatch {
            key: key_loc.to_string(),
            cert: cert_loc.to_string(),
        });
    }
    Ok(())
}

fn signer_from(
    cert_der: &[u8],
    key: KeyPair,
    cert_loc: &str,
    chain_tail: Vec<String>,
) -> Result<Signer, CaError> {
    let cert = parse_cert(cert_der);
    let not_after = asn1_to_system(cert.validity().not_after);
    let serial_hex = hex::encode(cert.raw_serial());
    let issuer = Issuer::from_ca_cert_der(&cert_der.to_vec().into(), key)
        .map_err(|e| CaError::corrupt(cert_loc, format!("cannot use as issuer: {e}")))?;
    let chain_tail_joined = chain_tail.concat();
    Ok(Signer {
        issuer,
        serial_hex,
        not_after,
        chain_tail,
        chain_tail_joined,
    })
}

fn random_serial(rng: &SystemRandom) -> Result<[u8; 16], CaError> {
    let mut serial = [0u8; 16];
    rng.fill(&mut serial).map_err(|_| CaError::Rng {
        what: "generating a serial number",
    })?;
    // Positive, and exactly 16 bytes in DER (no leading zero to strip or add).
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}

fn load_self_signed(
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

fn public_rotation(m: &RotationMarker) -> RootRotation {
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

fn check_self_signed_root(
    root: &X509Certificate<'_>,
    location: &str,
    cfg: &CaConfig,
) -> Result<(), CaError> {
    if root.verify_signature(None).is_err() {
        return Err(CaError::NotCa {
            location: location.to_string(),
            reason: "root certificate is not self-signed (use the plug-in CA layout for an intermediate)".into(),
        });
    }
    let td_uri = SpiffeId::trust_domain_uri(&cfg.trust_domain);
    let got = first_uri_san(root);
    if !got.is_empty() && got != td_uri {
        tracing::warn!(root = %got, configured = %td_uri, "root CA trust domain differs from the configured trust domain");
    }
    Ok(())
}

fn load_rotation_marker(storage: &dyn CaStorage) -> Result<Option<RotationMarker>, CaError> {
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
fn rotation_state(
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

/// A new self-signed root (cert PEM, key PEM) with a [`CaConfig::root_key_algorithm`] key (an
/// RSA root signs with sha256WithRSAEncryption). Rotated roots carry their creation time in the
/// common name, so two roots of one mesh never share a subject.
fn generate_root(
    cfg: &CaConfig,
    rng: &SystemRandom,
    rotated: bool,
) -> Result<(String, String), CaError> {
    let key = keys::generate_root_key(cfg.root_key_algorithm)?;
    let now = whole_seconds(SystemTime::now());
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "meshd");
    if rotated {
        let stamp = time::OffsetDateTime::from(now)
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_default();
        dn.push(DnType::CommonName, format!("meshd root CA {stamp}"));
    } else {
        dn.push(DnType::CommonName, "meshd root CA");
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI(
        SpiffeId::trust_domain_uri(&cfg.trust_domain)
            .try_into()
            .map_err(|e| CaError::Generate {
                what: "encoding the root's trust-domain URI SAN",
                source: e,
            })?,
    )];
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + cfg.root_cert_ttl).into();
    params.serial_number = Some(SerialNumber::from_slice(&random_serial(rng)?));
    let cert = params.self_signed(&key).map_err(|e| CaError::Generate {
        what: "self-signing the root certificate",
        source: e,
    })?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn load_plugin(storage: &dyn CaStorage) -> Result<SigningState, CaError> {
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

    fn check_id(&self, id: &SpiffeId) -> Result<(), CaError> {
        id.validate()?;
        if id.trust_domain != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                id: id.to_string(),
                expected: self.trust_domain.clone(),
            });
        }
        Ok(())
    }

    /// Signs a leaf for `public_key`. Returns (DER, serial hex, not_before, not_after).
    fn sign_leaf(
        &self,
        state: &SigningState,
        public_key: &impl PublicKeyData,
        leaf: Leaf,
    ) -> Result<(rcgen::Certificate, String, SystemTime, SystemTime), CaError> {
        let Leaf {
            sans,
            kind,
            registry_id,
            ttl,
            rsa,
        } = leaf;
        let signer = &state.signer;
        let now = whole_seconds(SystemTime::now());
        if signer.not_after <= now {
            return Err(CaError::SignerExpired {
                not_after: rfc3339(signer.not_after),
            });
        }
        let not_before = now - BACKDATE;
        let not_after = (now + ttl).min(signer.not_after);
        let serial = random_serial(&self.rng)?;

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new(); // empty subject, critical SAN
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = if rsa {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params
            .signed_by(public_key, &signer.issuer)
            .map_err(|e| CaError::Generate {
                what: "signing a leaf certificate",
                source: e,
            })?;
        let serial_hex = hex::encode(serial);
        self.issued_total[kind as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            if reg.next_prune.is_none_or(|t| now >= t) {
                reg.prune(now);
            }
            reg.insert(
                serial_hex.clone(),
                RegEntry {
                    spiffe_id: registry_id,
                    kind,
                    not_before,
                    not_after,
                },
                self.registry_cap.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        Ok((cert, serial_hex, not_before, not_after))
    }

    /// A fresh ECDSA P-256 key and a leaf for it.
    fn issue_with_new_key(
        &self,
        spiffe_id: Option<SpiffeId>,
        sans: Vec<SanType>,
        kind: Kind,
        registry_id: String,
    ) -> Result<IssuedCert, CaError> {
        let state = self.state();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.rng)
            .map_err(|_| CaError::Rng {
                what: "generating a workload key",
            })?;
        let pkcs8 = doc.as_ref();
        // ring's P-256 PKCS#8 ends with the uncompressed public point (0x04 || X || Y).
        let point = &pkcs8[pkcs8.len().saturating_sub(65)..];
        let owned;
        let public: &[u8] = if point.len() == 65 && point[0] == 0x04 {
            point
        } else {
            let kp = KeyPair::try_from(pkcs8).map_err(|e| CaError::Generate {
                what: "parsing a generated workload key",
                source: e,
            })?;
            owned = kp.public_key_raw().to_vec();
            &owned
        };
        let (cert, serial_hex, not_before, not_after) = self.sign_leaf(
            &state,
            &RawP256Public(public),
            Leaf {
                sans,
                kind,
                registry_id,
                ttl: self.workload_ttl,
                rsa: false,
            },
        )?;
        let leaf = pem_encode("CERTIFICATE", cert.der());
        let tail = &state.signer.chain_tail_joined;
        let mut cert_chain_pem = String::with_capacity(leaf.len() + tail.len());
        cert_chain_pem.push_str(&leaf);
        cert_chain_pem.push_str(tail);
        Ok(IssuedCert {
            spiffe_id,
            cert_chain_pem,
            key_pem: pem_encode("PRIVATE KEY", pkcs8),
            serial_hex,
            not_before,
            not_after,
            signer_serial: state.signer.serial_hex.clone(),
        })
    }

    /// A fresh ECDSA P-256 key and an X509-SVID for `id`, valid for `workload_cert_ttl`
    /// (clamped to the signer's expiry).
    pub fn issue_workload(&self, id: &SpiffeId) -> Result<IssuedCert, CaError> {
        self.check_id(id)?;
        let uri = id.to_string();
        let san = SanType::URI(uri.clone().try_into().map_err(|e| CaError::Generate {
            what: "encoding the URI SAN",
            source: e,
        })?);
        self.issue_with_new_key(Some(id.clone()), vec![san], Kind::Workload, uri)
    }

    /// Signs a PEM CSR for `id`. The SAN comes from `id` only; everything the CSR asks for
    /// besides its public key is ignored. Returns the chain, leaf first.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<Vec<String>, CaError> {
        self.sign_csr_recorded(csr_pem, id, ttl)
            .map(|(chain, _)| chain)
    }

    /// As [`sign_csr`](Self::sign_csr), also returning what was signed (for the ledger).
    fn sign_csr_recorded(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<(Vec<String>, CsrHolding), CaError> {
        use x509_parser::certification_request::X509CertificationRequest;
        use x509_parser::public_key::PublicKey;

        self.check_id(id)?;
        let ttl = match ttl {
            Some(t) if t.is_zero() => return Err(CaError::TtlZero),
            Some(t) if t > self.workload_ttl => {
                return Err(CaError::TtlTooLong {
                    requested: t,
                    max: self.workload_ttl,
                });
            }
            Some(t) => t,
            None => self.workload_ttl,
        };
        let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).map_err(|e| {
            CaError::CsrParse {
                reason: format!("not PEM: {e}"),
            }
        })?;
        if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
            return Err(CaError::CsrParse {
                reason: format!("PEM block is {:?}, want CERTIFICATE REQUEST", pem.label),
            });
        }
        let (_, csr) =
            X509CertificationRequest::from_der(&pem.contents).map_err(|e| CaError::CsrParse {
                reason: format!("not a PKCS#10 request: {e}"),
            })?;
        let spki = &csr.certification_request_info.subject_pki;
        let rsa = match spki.parsed() {
            Ok(PublicKey::RSA(k)) => {
                let bits = k.key_size();
                if bits < 2048 {
                    return Err(CaError::CsrWeakKey { bits });
                }
                true
            }
            Ok(PublicKey::EC(_)) => false,
            Ok(other) => {
                let what = match other {
                    PublicKey::DSA(_) => "DSA",
                    PublicKey::GostR3410(_) | PublicKey::GostR3410_2012(_) => "GOST R 34.10",
                    _ => "unknown algorithm",
                };
                return Err(CaError::CsrUnsupportedKey {
                    reason: format!("{what} key"),
                });
            }
            Err(e) => {
                return Err(CaError::CsrUnsupportedKey {
                    reason: format!("unparsable public key: {e}"),
                });
            }
        };
        csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
        let public = rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| {
            CaError::CsrUnsupportedKey {
                reason: format!("{e} (supported: ECDSA P-256/P-384, Ed25519, RSA >= 2048)"),
            }
        })?;
        let uri = id.to_string();
        let san = SanType::URI(uri.clone().try_into().map_err(|e| CaError::Generate {
            what: "encoding the URI SAN",
            source: e,
        })?);
        let state = self.state();
        let (cert, serial, _, not_after) = self.sign_leaf(
            &state,
            &public,
            Leaf {
                sans: vec![san],
                kind: Kind::Workload,
                registry_id: uri.clone(),
                ttl,
                rsa,
            },
        )?;
        let mut chain = Vec::with_capacity(1 + state.signer.chain_tail.len());
        chain.push(pem_encode("CERTIFICATE", cert.der()));
        chain.extend(state.signer.chain_tail.iter().cloned());
        let holding = CsrHolding {
            spiffe_id: uri,
            holder: String::new(),
            serial,
            not_after,
            signer_serial: state.signer.serial_hex.clone(),
            trusted_roots: state
                .ca_infos
                .iter()
                .filter(|i| i.kind == "root")
                .map(|i| i.serial.clone())
                .collect(),
        };
        Ok((chain, holding))
    }

    /// Signs a CSR for `id` on behalf of `holder` (the caller's workload) and records it in
    /// the ledger a root rotation consults ([`csr_holders_behind`](Self::csr_holders_behind)).
    /// Returns the chain and the trust bundle served with it.
    pub(crate) fn sign_csr_for_holder(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        holder: &str,
        ttl: Option<Duration>,
    ) -> Result<(Vec<String>, String), CaError> {
        // The bundle read before signing: the roots recorded are ones the caller really got.
        let bundle = self.root_cert_pem();
        let (chain, mut holding) = self.sign_csr_recorded(csr_pem, id, ttl)?;
        holding.holder = holder.to_string();
        let cap = MAX_CSR_HOLDERS.min(self.registry_cap.load(std::sync::atomic::Ordering::Relaxed));
        self.csr_ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(holding, cap, SystemTime::now());
        Ok((chain, bundle))
    }

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

    /// How long before `cert`'s NotAfter it is due for rotation: min(rotation_window,
    /// lifetime / 2), where the lifetime counts from issuance (NotBefore is back-dated for
    /// clock skew; that margin is not life the certificate was issued for — counting it would
    /// make a 30 s certificate with a 24 h window "due" the moment it is issued).
    pub fn rotation_window_for(&self, cert: &IssuedCert) -> Duration {
        let issued_at = cert.not_before + BACKDATE;
        let lifetime = cert.not_after.duration_since(issued_at).unwrap_or_default();
        self.rotation_window.min(lifetime / 2)
    }

    /// True when `cert`'s remaining life is below min(rotation_window, lifetime / 2)
    /// (or it has expired). See [`rotation_window_for`](Self::rotation_window_for).
    pub fn rotation_due(&self, cert: &IssuedCert, now: SystemTime) -> bool {
        let Ok(remaining) = cert.not_after.duration_since(now) else {
            return true;
        };
        remaining < self.rotation_window_for(cert)
    }

    /// Certificates signed since start, by kind: `[("workload", n), ("server", m)]`
    /// (workload includes CSR-signed ones).
    pub fn issued_totals(&self) -> [(&'static str, u64); 2] {
        use std::sync::atomic::Ordering::Relaxed;
        [
            (Kind::Workload.as_str(), self.issued_total[0].load(Relaxed)),
            (Kind::Server.as_str(), self.issued_total[1].load(Relaxed)),
        ]
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

    fn reload(&self) -> Result<Arc<SigningState>, CaError> {
        let state = Arc::new(load_self_signed(&*self.storage, &self.cfg, &self.rng)?);
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state.clone();
        Ok(state)
    }

    /// The CA certificates (roots, intermediates) and every issued certificate still valid.
    pub fn issued(&self) -> Vec<CertInfo> {
        let now = SystemTime::now();
        let mut out = self.state().ca_infos.clone();
        let mut leaves: Vec<(SystemTime, CertInfo)> = {
            let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            reg.prune(now);
            reg.certs
                .iter()
                .map(|(serial, e)| {
                    (
                        e.not_before,
                        CertInfo {
                            spiffe_id: e.spiffe_id.clone(),
                            serial: serial.clone(),
                            not_before: rfc3339(e.not_before),
                            not_after: rfc3339(e.not_after),
                            kind: e.kind.as_str().to_string(),
                        },
                    )
                })
                .collect()
        };
        leaves.sort_by(|a, b| {
            (a.0, &a.1.spiffe_id, &a.1.serial).cmp(&(b.0, &b.1.spiffe_id, &b.1.serial))
        });
        out.extend(leaves.into_iter().map(|(_, i)| i));
        out
    }

    /// Counts and earliest expiry by kind of the CA certificates and the tracked leaves
    /// still valid: what `/metrics` reports, with no per-certificate series.
    pub fn issued_summary(&self) -> IssuedSummary {
        let now = SystemTime::now();
        let mut kinds: Vec<KindSummary> = ["root", "intermediate", "workload", "server"]
            .into_iter()
            .map(|kind| KindSummary {
                kind,
                count: 0,
                earliest_expiry: None,
            })
            .collect();
        let mut add = |kind: &str, not_after: SystemTime| {
            if let Some(k) = kinds.iter_mut().find(|k| k.kind == kind) {
                k.count += 1;
                k.earliest_expiry = Some(k.earliest_expiry.map_or(not_after, |t| t.min(not_after)));
            }
        };
        for info in &self.state().ca_infos {
            if let Ok(t) = time::OffsetDateTime::parse(
                &info.not_after,
                &time::format_description::well_known::Rfc3339,
            ) {
                add(&info.kind, t.into());
            }
        }
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        reg.prune(now);
        for (_, e) in &reg.certs {
            add(e.kind.as_str(), e.not_after);
        }
        IssuedSummary {
            kinds,
            untracked: reg.untracked,
        }
    }

    /// Lowers (or raises) how many leaf records are kept ([`MAX_TRACKED_LEAVES`] by default).
    pub fn set_tracking_cap(&self, cap: usize) {
        self.registry_cap
            .store(cap, std::sync::atomic::Ordering::Relaxed);
    }

    /// A signed credential for `claims` (`meshd1.<claims>.<mac>`). Refused when it would be
    /// longer than [`MAX_CREDENTIAL_LEN`]: a credential no verifier accepts is
    /// never handed out.
    pub fn issue_credential(&self, claims: &WorkloadClaims) -> Result<String, CaError> {
        credential::issue(&self.cred_key, claims)
    }

    /// Checks a credential's MAC (constant time) and expiry, and returns its claims.
    pub fn verify_credential(&self, token: &str) -> Result<WorkloadClaims, CaError> {
        self.verify_credential_at(token, SystemTime::now())
    }

    /// As [`verify_credential`](Self::verify_credential), as of `now`.
    pub fn verify_credential_at(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<WorkloadClaims, CaError> {
        credential::verify(&self.cred_key, token, now)
    }

    /// A TLS server certificate (fresh P-256 key) for meshd's own listeners. Names that
    /// parse as IP addresses become IP SANs, the rest DNS SANs.
    pub fn server_cert(&self, dns_names: &[String]) -> Result<IssuedCert, CaError> {
        if dns_names.is_empty() {
            return Err(CaError::InvalidServerName {
                name: String::new(),
                reason: "at least one DNS name or IP address is required".into(),
            });
        }
        let mut sans = Vec::with_capacity(dns_names.len());
        for name in dns_names {
            if let Ok(ip) = name.parse::<std::net::IpAddr>() {
                sans.push(SanType::IpAddress(ip));
                continue;
            }
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').enumerate().all(|(i, label)| {
                    (!label.is_empty() && label.len() <= 63)
                        && label.chars().all(|c| {
                            c.is_ascii_alphanumeric()
                                || c == '-'
                                || (c == '*' && i == 0 && label == "*")
                        })
                });
            if !valid {
                return Err(CaError::InvalidServerName {
                    name: name.clone(),
                    reason: "not a DNS name or IP address".into(),
                });
            }
            sans.push(SanType::DnsName(name.clone().try_into().map_err(|e| {
                CaError::InvalidServerName {
                    name: name.clone(),
                    reason: format!("{e}"),
                }
            })?));
        }
        self.issue_with_new_key(None, sans, Kind::Server, String::new())
    }
}

#[cfg(test)]
mod tests;
