//! The CA's error type: every way loading state, issuing, signing a CSR, verifying a credential
//! or rotating the root can fail, each naming the file, field or input at fault.

use std::path::PathBuf;
use std::time::Duration;

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
    pub(crate) fn corrupt(location: impl Into<String>, reason: impl ToString) -> Self {
        CaError::Corrupt {
            location: location.into(),
            reason: reason.to_string(),
        }
    }
}
