//! Root rotation: the phases persisted and verified, crashes between writes, CreateCertificate callers, rotating to and from RSA.

use super::*;

#[test]
fn root_rotation_phases_persist_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let old = pems(&ca.root_cert_pem()).swap_remove(0);
    assert!(ca.root_rotation().is_none());
    let before = ca.issue_workload(&id("a", "b")).unwrap();

    // AddRoot: both trusted, the old root signs.
    let r = ca.begin_root_rotation().unwrap();
    assert_eq!(r.phase, RotationPhase::AddRoot);
    assert_eq!(r.old_root_serials, vec![serial_of(&old)]);
    assert_eq!(ca.begin_root_rotation().unwrap(), r, "begin is idempotent");
    let bundle = pems(&ca.root_cert_pem());
    assert_eq!(bundle.len(), 2);
    assert_eq!(bundle[0], old);
    let new = bundle[1].clone();
    assert_eq!(serial_of(&new), r.new_root_serial);
    check_root(&new, "cluster.local");
    assert_ne!(
        x509(&new).subject().to_string(),
        x509(&old).subject().to_string(),
        "roots of one mesh have distinct subjects"
    );
    let c = ca.issue_workload(&id("a", "b")).unwrap();
    assert!(leaf_signed_by(&c.cert_chain_pem, &old));
    assert_eq!(c.signer_serial, serial_of(&old));
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &before.cert_chain_pem,
        "sslclient",
    );
    let on_disk = std::fs::read_to_string(dir.path().join(ROOT_CERT_FILE)).unwrap();
    assert_eq!(pems(&on_disk), vec![old.clone(), new.clone()]);
    let reloaded = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    assert_eq!(reloaded.root_rotation(), Some(r.clone()));
    assert_eq!(reloaded.root_cert_pem(), ca.root_cert_pem());
    assert_eq!(reloaded.signer_serial(), serial_of(&old));

    // SwitchSigner: both trusted, the new root signs; old leaves still verify.
    let r2 = ca.advance_root_rotation().unwrap().unwrap();
    assert_eq!(r2.phase, RotationPhase::SwitchSigner);
    assert_eq!(ca.signer_serial(), serial_of(&new));
    let c = ca.issue_workload(&id("a", "b")).unwrap();
    assert!(leaf_signed_by(&c.cert_chain_pem, &new));
    assert_eq!(c.signer_serial, serial_of(&new));
    check_leaf(
        &pems(&c.cert_chain_pem)[0],
        &new,
        LeafKind::Workload,
        Some("spiffe://cluster.local/ns/a/sa/b"),
    );
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &c.cert_chain_pem,
        "sslclient",
    );
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &before.cert_chain_pem,
        "sslclient",
    );
    let reloaded = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    assert_eq!(reloaded.root_rotation(), Some(r2.clone()));
    assert_eq!(reloaded.signer_serial(), serial_of(&new));
    assert_eq!(pems(&reloaded.root_cert_pem()).len(), 2);

    // DropOld: only the new root; new leaves verify, old ones no longer do.
    let r3 = ca.advance_root_rotation().unwrap().unwrap();
    assert_eq!(r3.phase, RotationPhase::DropOld);
    assert_eq!(pems(&ca.root_cert_pem()), vec![new.clone()]);
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &c.cert_chain_pem,
        "sslclient",
    );
    let reloaded = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    assert_eq!(reloaded.root_rotation(), Some(r3));
    assert_eq!(pems(&reloaded.root_cert_pem()), vec![new.clone()]);

    // Finished: plain state on disk, the new root reused on restart.
    assert_eq!(ca.advance_root_rotation().unwrap(), None);
    assert!(ca.root_rotation().is_none());
    assert!(!dir.path().join(ROOT_ROTATION_FILE).exists());
    assert!(!dir.path().join(ROOT_NEXT_KEY_FILE).exists());
    let reloaded = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    assert!(reloaded.root_rotation().is_none());
    assert_eq!(pems(&reloaded.root_cert_pem()), vec![new.clone()]);
    assert_eq!(reloaded.signer_serial(), serial_of(&new));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(dir.path().join(ROOT_KEY_FILE)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
    assert!(matches!(
        ca.advance_root_rotation(),
        Err(CaError::RotationState { .. })
    ));
    // The credential key survives: credentials issued before still verify.
    let claims = WorkloadClaims {
        workload: "w".into(),
        namespace: "n".into(),
        service_account: "s".into(),
        issued_at: 1,
        expires_at: u64::MAX,
    };
    let token = ca.issue_credential(&claims).unwrap();
    assert_eq!(reloaded.verify_credential(&token).unwrap(), claims);
}

/// Every crash point between the writes of a phase loads as that phase, and resuming
/// completes the writes.
#[test]
fn root_rotation_survives_crashes_between_writes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let old_cert = std::fs::read(dir.path().join(ROOT_CERT_FILE)).unwrap();
    let old_key = std::fs::read(dir.path().join(ROOT_KEY_FILE)).unwrap();
    let old = pems(&ca.root_cert_pem()).swap_remove(0);

    // A next key without a marker (crash before AddRoot committed) is ignored.
    std::fs::write(dir.path().join(ROOT_NEXT_KEY_FILE), b"garbage").unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    assert!(ca.root_rotation().is_none());

    // AddRoot committed (marker), root-cert.pem not yet rewritten.
    ca.begin_root_rotation().unwrap();
    let new = pems(&ca.root_cert_pem())[1].clone();
    std::fs::write(dir.path().join(ROOT_CERT_FILE), &old_cert).unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    assert_eq!(pems(&ca.root_cert_pem()), vec![old.clone(), new.clone()]);
    assert_eq!(ca.signer_serial(), serial_of(&old));
    ca.resume_root_rotation().unwrap();
    let on_disk = std::fs::read_to_string(dir.path().join(ROOT_CERT_FILE)).unwrap();
    assert_eq!(pems(&on_disk), vec![old.clone(), new.clone()]);

    // SwitchSigner committed, key not yet promoted, root-cert.pem still AddRoot's.
    ca.advance_root_rotation().unwrap();
    std::fs::write(dir.path().join(ROOT_KEY_FILE), &old_key).unwrap();
    std::fs::write(
        dir.path().join(ROOT_CERT_FILE),
        pem_encode("CERTIFICATE", &old) + &pem_encode("CERTIFICATE", &new),
    )
    .unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    assert_eq!(
        ca.root_rotation().unwrap().phase,
        RotationPhase::SwitchSigner
    );
    assert_eq!(ca.signer_serial(), serial_of(&new));
    let c = ca.issue_workload(&id("a", "b")).unwrap();
    assert!(leaf_signed_by(&c.cert_chain_pem, &new));
    ca.resume_root_rotation().unwrap();
    let on_disk = std::fs::read_to_string(dir.path().join(ROOT_CERT_FILE)).unwrap();
    assert_eq!(pems(&on_disk), vec![new.clone(), old.clone()]);

    // DropOld committed, root-cert.pem still holding both.
    ca.advance_root_rotation().unwrap();
    std::fs::write(dir.path().join(ROOT_CERT_FILE), &on_disk).unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    assert_eq!(pems(&ca.root_cert_pem()), vec![new.clone()]);

    // Finish: marker gone but the next key left behind is harmless.
    let next_key = std::fs::read(dir.path().join(ROOT_NEXT_KEY_FILE)).unwrap();
    assert_eq!(ca.advance_root_rotation().unwrap(), None);
    std::fs::write(dir.path().join(ROOT_NEXT_KEY_FILE), next_key).unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    assert!(ca.root_rotation().is_none());
    assert_eq!(ca.signer_serial(), serial_of(&new));

    // A marker whose new root has no key anywhere is an error, not a silent fallback.
    ca.begin_root_rotation().unwrap();
    std::fs::remove_file(dir.path().join(ROOT_NEXT_KEY_FILE)).unwrap();
    let e = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap_err();
    assert!(e.to_string().contains("root-next-key.pem"), "{e}");
}

#[test]
fn root_rotation_to_and_from_rsa() {
    // ECDSA root -> (configured rsa-2048) rotate-root -> RSA root -> (configured ecdsa) -> ECDSA.
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let ec_root = pems(&ca.root_cert_pem()).swap_remove(0);
    let before = ca.issue_workload(&id("a", "b")).unwrap();
    drop(ca);

    let rsa = rsa_cfg(dir.path(), RootKeyAlgorithm::Rsa2048);
    let ca = CertificateAuthority::load_or_create(&rsa).unwrap();
    assert_eq!(pems(&ca.root_cert_pem()), vec![ec_root.clone()]);
    let r = ca.begin_root_rotation().unwrap();
    let bundle = pems(&ca.root_cert_pem());
    assert_eq!(bundle.len(), 2);
    let rsa_root = bundle[1].clone();
    assert_eq!(serial_of(&rsa_root), r.new_root_serial);
    check_root_alg(&rsa_root, "cluster.local", RootKeyAlgorithm::Rsa2048);
    // the new root's key waits in root-next-key.pem; a restart mid-rotation loads it
    let reloaded = CertificateAuthority::load_or_create(&rsa).unwrap();
    assert_eq!(reloaded.root_rotation(), Some(r));
    drop(reloaded);

    ca.advance_root_rotation().unwrap().unwrap(); // switch-signer
    assert_eq!(ca.signer_serial(), serial_of(&rsa_root));
    let c = ca.issue_workload(&id("a", "b")).unwrap();
    let leaf = pems(&c.cert_chain_pem).swap_remove(0);
    check_leaf(
        &leaf,
        &rsa_root,
        LeafKind::Workload,
        Some("spiffe://cluster.local/ns/a/sa/b"),
    );
    assert_eq!(
        x509(&leaf).signature_algorithm.algorithm,
        oid_registry::OID_PKCS1_SHA256WITHRSA
    );
    // both roots trusted: old ECDSA-signed and new RSA-signed leaves verify
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &c.cert_chain_pem,
        "sslclient",
    );
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &before.cert_chain_pem,
        "sslclient",
    );
    let reloaded = CertificateAuthority::load_or_create(&rsa).unwrap();
    assert_eq!(reloaded.signer_serial(), serial_of(&rsa_root));
    drop(reloaded);

    ca.advance_root_rotation().unwrap().unwrap(); // drop-old
    assert_eq!(ca.advance_root_rotation().unwrap(), None);
    drop(ca);
    let ca = CertificateAuthority::load_or_create(&rsa).unwrap();
    assert!(ca.root_rotation().is_none());
    assert_eq!(pems(&ca.root_cert_pem()), vec![rsa_root.clone()]);
    let key = std::fs::read_to_string(dir.path().join(ROOT_KEY_FILE)).unwrap();
    assert!(
        KeyPair::from_pem(&key)
            .unwrap()
            .is_compatible(&rcgen::PKCS_RSA_SHA256)
    );
    let c = ca.issue_workload(&id("a", "b")).unwrap();
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &c.cert_chain_pem,
        "sslclient",
    );
    drop(ca);

    // and back: the configured algorithm decides the next generated root
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    ca.begin_root_rotation().unwrap();
    let next = pems(&ca.root_cert_pem())[1].clone();
    check_root_alg(&next, "cluster.local", RootKeyAlgorithm::EcdsaP256);
    ca.advance_root_rotation().unwrap().unwrap();
    let c = ca.issue_workload(&id("a", "b")).unwrap();
    check_leaf(
        &pems(&c.cert_chain_pem)[0],
        &next,
        LeafKind::Workload,
        Some("spiffe://cluster.local/ns/a/sa/b"),
    );
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &c.cert_chain_pem,
        "sslclient",
    );
}

#[test]
fn root_rotation_waits_for_create_certificate_callers_to_renew() {
    use crate::istio_api::IstioCertificateRequest;
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let caller = SpiffeId::new("cluster.local", "n", "s");
    let (csr, _) = csr_with_sans(vec![]);
    let req = IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: None,
    };
    let renew = || ca.create_certificate_for(&caller, "w.n", &req).unwrap();
    renew();
    assert!(
        ca.csr_holders_behind().is_empty(),
        "no rotation, nothing to wait for"
    );
    ca.begin_root_rotation().unwrap();
    let behind = ca.csr_holders_behind();
    assert_eq!(behind.len(), 1, "its bundle lacks the new root: {behind:?}");
    assert!(
        behind[0].starts_with("csr:w.n spiffe://cluster.local/ns/n/sa/s"),
        "{behind:?}"
    );
    let resp = renew();
    assert_eq!(
        resp.cert_chain.last().unwrap(),
        &ca.root_cert_pem(),
        "both roots"
    );
    assert!(ca.csr_holders_behind().is_empty());
    ca.advance_root_rotation().unwrap(); // switch-signer
    assert_eq!(
        ca.csr_holders_behind().len(),
        1,
        "its certificate is from the old root"
    );
    renew();
    assert!(ca.csr_holders_behind().is_empty());
    ca.advance_root_rotation().unwrap(); // drop-old
    assert!(ca.csr_holders_behind().is_empty());
    assert_eq!(ca.csr_holders(), (1, 0));
}
