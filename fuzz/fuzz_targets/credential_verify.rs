//! Credential verification (`meshd1.<claims>.<mac>`, file mode's bearer credential): any
//! bytes as the `authorization` value. Never a panic; nothing verifies unless this CA signed
//! it, and nothing verifies past its expiry.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use meshd_ca::WorkloadClaims;
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(claims) = common::CA.verify_credential(token) {
        // Only this CA's own issuance verifies: the fuzzer cannot forge an HMAC.
        assert_eq!(common::CA.issue_credential(&claims).ok().as_deref(), Some(token));
        assert!(claims.expires_at > 0);
    }
    // Claims built from the input round-trip when signed, and expire when they say; claims
    // too long for any verifier are refused at issuance.
    let mut parts = token.splitn(3, '\n');
    let (w, ns, sa) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let ttl = Duration::from_secs(1 + (data.len() as u64 % 86_400));
    let claims = WorkloadClaims::new(w, ns, sa, ttl);
    let signed = match common::CA.issue_credential(&claims) {
        Ok(signed) => signed,
        Err(meshd_ca::CaError::CredentialTooLong { len, max, .. }) => {
            assert!(len > max);
            return;
        }
        Err(e) => panic!("issuance refused in-limit claims: {e}"),
    };
    assert!(signed.len() <= meshd_ca::MAX_CREDENTIAL_LEN);
    assert_eq!(common::CA.verify_credential(&signed).ok(), Some(claims.clone()));
    let after = SystemTime::UNIX_EPOCH + Duration::from_secs(claims.expires_at);
    assert!(common::CA.verify_credential_at(&signed, after).is_err());
});
