//! Workload credentials for file mode: `meshd1.<base64url(json claims)>.<base64url(HMAC-SHA256)>`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{CREDENTIAL_KEY_FILE, CaError, CaStorage, SpiffeId};

const PREFIX: &str = "meshd1";
const KEY_LEN: usize = 32;

/// What a credential asserts about the workload holding it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadClaims {
    pub workload: String,
    pub namespace: String,
    pub service_account: String,
    /// Seconds since the Unix epoch.
    pub issued_at: u64,
    /// Seconds since the Unix epoch; the credential is refused from then on. Absent (0) in
    /// credentials of meshd versions that issued them without one: those are refused.
    #[serde(default)]
    pub expires_at: u64,
}

/// Longest credential accepted: claims of a few names are a few hundred bytes.
pub const MAX_CREDENTIAL_LEN: usize = 4096;

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl WorkloadClaims {
    /// Claims for a workload, issued now and valid for `ttl`.
    pub fn new(
        workload: &str,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
    ) -> WorkloadClaims {
        let now = unix_secs(SystemTime::now());
        WorkloadClaims {
            workload: workload.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            issued_at: now,
            expires_at: now.saturating_add(ttl.as_secs()),
        }
    }

    pub fn spiffe_id(&self, trust_domain: &str) -> SpiffeId {
        SpiffeId::new(trust_domain, &self.namespace, &self.service_account)
    }
}

pub(crate) fn load_or_create_key(
    storage: &dyn CaStorage,
    rng: &SystemRandom,
) -> Result<hmac::Key, CaError> {
    let bytes = match storage.load(CREDENTIAL_KEY_FILE)? {
        Some(b) => {
            if b.len() != KEY_LEN {
                return Err(CaError::corrupt(
                    storage.location(CREDENTIAL_KEY_FILE),
                    format!("credential key is {} bytes, want {KEY_LEN}", b.len()),
                ));
            }
            b
        }
        None => {
            let mut b = vec![0u8; KEY_LEN];
            rng.fill(&mut b).map_err(|_| CaError::Rng {
                what: "generating the credential key",
            })?;
            storage.store(CREDENTIAL_KEY_FILE, &b, true)?;
            b
        }
    };
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
}

pub(crate) fn issue(key: &hmac::Key, claims: &WorkloadClaims) -> Result<String, CaError> {
    let json = serde_json::to_vec(claims).expect("WorkloadClaims always serializes");
    // Unpadded base64url of n bytes is ceil(4n/3) characters; the MAC is 32 bytes.
    let len = PREFIX.len() + 2 + (4 * json.len()).div_ceil(3) + 43;
    if len > MAX_CREDENTIAL_LEN {
        return Err(CaError::CredentialTooLong {
            workload: format!("{}.{}", claims.workload, claims.namespace),
            len,
            max: MAX_CREDENTIAL_LEN,
        });
    }
    let mut token = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(json));
    let tag = hmac::sign(key, token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(tag.as_ref()));
    debug_assert_eq!(token.len(), len);
    Ok(token)
}

/// Checks `token`'s MAC (constant time), then that it has not expired at `now`.
pub(crate) fn verify(
    key: &hmac::Key,
    token: &str,
    now: SystemTime,
) -> Result<WorkloadClaims, CaError> {
    let malformed = |reason: &str| CaError::CredentialMalformed {
        reason: reason.to_string(),
    };
    if token.len() > MAX_CREDENTIAL_LEN {
        return Err(malformed("longer than any credential meshd issues"));
    }
    let mut parts = token.split('.');
    let (Some(prefix), Some(body), Some(mac), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "want three dot-separated parts: meshd1.<claims>.<signature>",
        ));
    };
    if prefix != PREFIX {
        return Err(malformed(
            "unknown credential format (want prefix \"meshd1\")",
        ));
    }
    let mac = URL_SAFE_NO_PAD
        .decode(mac)
        .map_err(|_| malformed("signature is not base64url"))?;
    let signed = &token[..prefix.len() + 1 + body.len()];
    hmac::verify(key, signed.as_bytes(), &mac).map_err(|_| CaError::CredentialBadSignature)?;
    let json = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| malformed("claims are not base64url"))?;
    let claims: WorkloadClaims =
        serde_json::from_slice(&json).map_err(|e| CaError::CredentialMalformed {
            reason: format!("claims are not valid JSON: {e}"),
        })?;
    if claims.expires_at == 0 {
        return Err(CaError::CredentialNoExpiry {
            workload: format!("{}.{}", claims.workload, claims.namespace),
        });
    }
    if unix_secs(now) >= claims.expires_at {
        return Err(CaError::CredentialExpired {
            workload: format!("{}.{}", claims.workload, claims.namespace),
            expired_at: claims.expires_at,
        });
    }
    Ok(claims)
}
