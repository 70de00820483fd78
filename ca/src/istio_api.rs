//! Istio's CA API, `istio.v1.auth.IstioCertificateService/CreateCertificate`: the messages
//! (prost, written by hand from Istio's `security/proto/pki/ca.proto`) and the request handling
//! that does not depend on gRPC, so it is unit-tested and fuzzed without a server.

use std::time::Duration;

use crate::{CaError, CertificateAuthority, SpiffeId};

/// The gRPC service name.
pub const SERVICE_NAME: &str = "istio.v1.auth.IstioCertificateService";
/// The one method's path.
pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// Largest request accepted (a CSR is a few hundred bytes; an RSA-4096 one under 2 KiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The metadata key Istio's node agents use to ask for another identity's certificate.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// `istio.v1.auth.IstioCertificateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded PKCS#10 certificate signing request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds; 0 (unset) means the server's default.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Optional request metadata.
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<prost_types::Struct>,
}

/// `istio.v1.auth.IstioCertificateResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates: the leaf first, then intermediates, and the root bundle last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// The gRPC status a rejection maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectCode {
    InvalidArgument,
    PermissionDenied,
    /// The CA cannot sign (expired signer, RNG failure): not the caller's fault.
    Internal,
}

/// Why a CreateCertificate request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsrRejected {
    pub code: RejectCode,
    /// Metric label (`meshd_csr_rejected_total{reason}`): `malformed`, `bad_signature`,
    /// `weak_key`, `unsupported_key`, `ttl_too_long`, `ttl_invalid`, `impersonation`,
    /// `signer_unavailable`.
    pub reason: &'static str,
    /// For the caller.
    pub message: String,
}

impl std::fmt::Display for CsrRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.reason)
    }
}

fn reject(code: RejectCode, reason: &'static str, message: impl Into<String>) -> CsrRejected {
    CsrRejected {
        code,
        reason,
        message: message.into(),
    }
}

impl From<CaError> for CsrRejected {
    fn from(e: CaError) -> Self {
        use RejectCode::*;
        let (code, reason) = match &e {
            CaError::CsrParse { .. } => (InvalidArgument, "malformed"),
            CaError::CsrSignature => (InvalidArgument, "bad_signature"),
            CaError::CsrWeakKey { .. } => (InvalidArgument, "weak_key"),
            CaError::CsrUnsupportedKey { .. } => (InvalidArgument, "unsupported_key"),
            CaError::TtlTooLong { .. } => (InvalidArgument, "ttl_too_long"),
            CaError::TtlZero => (InvalidArgument, "ttl_invalid"),
            CaError::InvalidSpiffeId { .. } | CaError::ForeignTrustDomain { .. } => {
                (PermissionDenied, "identity")
            }
            _ => (Internal, "signer_unavailable"),
        };
        reject(code, reason, e.to_string())
    }
}

impl CertificateAuthority {
    /// Handles a CreateCertificate request from `caller` (already authenticated). The
    /// certificate's only SAN is `caller`; the CSR contributes its public key and nothing else.
    /// The chain is leaf first, then intermediates (plug-in mode), then the trust bundle.
    pub fn create_certificate(
        &self,
        caller: &SpiffeId,
        req: &IstioCertificateRequest,
    ) -> Result<IstioCertificateResponse, CsrRejected> {
        self.create_certificate_for(caller, "", req)
    }

    /// As [`create_certificate`](Self::create_certificate), for `holder` (the caller's
    /// workload, `NAME.NAMESPACE`): the certificate is recorded so a root rotation waits for
    /// the caller to renew before dropping what it holds.
    pub fn create_certificate_for(
        &self,
        caller: &SpiffeId,
        holder: &str,
        req: &IstioCertificateRequest,
    ) -> Result<IstioCertificateResponse, CsrRejected> {
        if let Some(meta) = &req.metadata
            && let Some(v) = meta.fields.get(IMPERSONATED_IDENTITY)
        {
            let asked = match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => s.as_str(),
                _ => "",
            };
            if asked != caller.to_string() {
                return Err(reject(
                    RejectCode::PermissionDenied,
                    "impersonation",
                    format!(
                        "{IMPERSONATED_IDENTITY} is not supported: {caller} may only get a certificate for itself"
                    ),
                ));
            }
        }
        let ttl = match req.validity_duration {
            0 => None,
            s if s < 0 => {
                return Err(reject(
                    RejectCode::InvalidArgument,
                    "ttl_invalid",
                    format!("validity_duration must not be negative (got {s})"),
                ));
            }
            s => Some(Duration::from_secs(s as u64)),
        };
        if req.csr.trim().is_empty() {
            return Err(reject(
                RejectCode::InvalidArgument,
                "malformed",
                "csr is empty: want a PEM-encoded PKCS#10 CERTIFICATE REQUEST",
            ));
        }
        let (mut cert_chain, bundle) = self.sign_csr_for_holder(&req.csr, caller, holder, ttl)?;
        cert_chain.push(bundle);
        Ok(IstioCertificateResponse { cert_chain })
    }
}
