//! Workload credentials for file mode: `meshd1.<base64url(json claims)>.<base64url(HMAC-SHA256)>`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

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
}

impl WorkloadClaims {
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

pub(crate) fn issue(key: &hmac::Key, claims: &WorkloadClaims) -> String {
    let json = serde_json::to_vec(claims).expect("WorkloadClaims always serializes");
    let mut token = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(json));
    let tag = hmac::sign(key, token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(tag.as_ref()));
    token
}

pub(crate) fn verify(key: &hmac::Key, token: &str) -> Result<WorkloadClaims, CaError> {
    let malformed = |reason: &str| CaError::CredentialMalformed {
        reason: reason.to_string(),
    };
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
    serde_json::from_slice(&json).map_err(|e| CaError::CredentialMalformed {
        reason: format!("claims are not valid JSON: {e}"),
    })
}
