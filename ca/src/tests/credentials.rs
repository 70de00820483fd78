//! File-mode workload credentials: round trip, tampering, expiry, and never issuing one no verifier accepts.

use super::*;

#[test]
fn credential_round_trip_and_tamper() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let claims = WorkloadClaims {
        workload: "media-relay".into(),
        namespace: "voice".into(),
        service_account: "media-relay".into(),
        issued_at: 1_700_000_000,
        expires_at: u64::MAX,
    };
    let token = ca.issue_credential(&claims).unwrap();
    assert!(token.starts_with("meshd1."));
    assert_eq!(token.split('.').count(), 3);
    assert_eq!(ca.verify_credential(&token).unwrap(), claims);
    assert_eq!(
        claims.spiffe_id(ca.trust_domain()).to_string(),
        "spiffe://cluster.local/ns/voice/sa/media-relay"
    );

    // change the claims, keep the MAC
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims.clone();
    forged.service_account = "admin".into();
    let forged_body = b64.encode(serde_json::to_vec(&forged).unwrap());
    let t = format!("meshd1.{forged_body}.{}", parts[2]);
    assert!(matches!(
        ca.verify_credential(&t),
        Err(CaError::CredentialBadSignature)
    ));
    // flip a MAC character
    let mut mac = parts[2].to_string();
    let c0 = if mac.starts_with('A') { "B" } else { "A" };
    mac.replace_range(0..1, c0);
    let t = format!("meshd1.{}.{mac}", parts[1]);
    assert!(matches!(
        ca.verify_credential(&t),
        Err(CaError::CredentialBadSignature)
    ));
    // malformed
    for bad in [
        "",
        "meshd1",
        "meshd1.abc",
        "meshd1.a.b.c",
        &format!("meshd2.{}.{}", parts[1], parts[2]),
        &format!("meshd1.{}.!!!", parts[1]),
    ] {
        assert!(
            matches!(
                ca.verify_credential(bad),
                Err(CaError::CredentialMalformed { .. })
            ),
            "{bad:?}"
        );
    }
    // another CA's credential
    let dir2 = tempfile::tempdir().unwrap();
    let ca2 = CertificateAuthority::load_or_create(&cfg(dir2.path())).unwrap();
    assert!(matches!(
        ca2.verify_credential(&token),
        Err(CaError::CredentialBadSignature)
    ));
    // longer than any credential: refused before decoding
    let huge = format!("meshd1.{}.{}", "A".repeat(MAX_CREDENTIAL_LEN), parts[2]);
    assert!(matches!(
        ca.verify_credential(&huge),
        Err(CaError::CredentialMalformed { .. })
    ));
}

#[test]
fn credentials_expire_and_need_an_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let claims = WorkloadClaims::new("w", "n", "s", Duration::from_secs(3600));
    assert_eq!(claims.expires_at, claims.issued_at + 3600);
    let token = ca.issue_credential(&claims).unwrap();
    assert_eq!(ca.verify_credential(&token).unwrap(), claims);
    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
    assert!(
        ca.verify_credential_at(&token, at(claims.expires_at - 1))
            .is_ok()
    );
    let err = ca
        .verify_credential_at(&token, at(claims.expires_at))
        .unwrap_err();
    assert!(matches!(err, CaError::CredentialExpired { .. }), "{err}");
    assert!(err.to_string().contains("w.n"), "{err}");
    // a credential of an older meshd, without `expires_at`, never expired: refused
    let legacy = WorkloadClaims {
        expires_at: 0,
        ..claims
    };
    let err = ca
        .verify_credential(&ca.issue_credential(&legacy).unwrap())
        .unwrap_err();
    assert!(matches!(err, CaError::CredentialNoExpiry { .. }), "{err}");
}

/// Found by the `credential_verify` fuzz target: claims with long names were signed into a
/// credential longer than any verifier accepts. Issuance now refuses exactly what
/// verification would, and everything it issues verifies.
#[test]
fn credentials_are_issued_only_when_they_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let ttl = Duration::from_secs(3600);
    let mut refused = 0;
    for len in (0..MAX_CREDENTIAL_LEN).step_by(7) {
        let claims = WorkloadClaims::new("w", "n", &"s".repeat(len), ttl);
        match ca.issue_credential(&claims) {
            Ok(token) => {
                assert!(token.len() <= MAX_CREDENTIAL_LEN);
                assert_eq!(ca.verify_credential(&token).unwrap(), claims);
            }
            Err(err) => {
                assert!(matches!(err, CaError::CredentialTooLong { .. }), "{err}");
                assert!(err.to_string().contains("w.n"), "{err}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "long names must hit the limit");
    // the fuzzer's input: control characters escape to six bytes each in JSON
    let nul = WorkloadClaims::new("", "", &"\0".repeat(600), ttl);
    assert!(matches!(
        ca.issue_credential(&nul),
        Err(CaError::CredentialTooLong { .. })
    ));
}
