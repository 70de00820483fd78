//! RSA roots (2048/4096): conformance and openssl, persistence, corrupt keys refused.

use super::*;

/// A CA with an RSA root of `alg`: the root, leaves for CA-generated (ECDSA) keys and for
/// ECDSA and RSA CSRs, all checked against the SVID rules and by `openssl verify`.
fn rsa_root_conformance(alg: RootKeyAlgorithm) {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let ca = CertificateAuthority::load_or_create(&rsa_cfg(dir.path(), alg)).unwrap();
    eprintln!("{alg} root generated in {:?}", started.elapsed());
    assert_eq!(ca.mode(), CaMode::SelfSigned);
    let roots = pems(&ca.root_cert_pem());
    assert_eq!(roots.len(), 1);
    check_root_alg(&roots[0], "cluster.local", alg);
    let root_ttl = x509(&roots[0]).validity().not_after.timestamp()
        - x509(&roots[0]).validity().not_before.timestamp();
    assert!((root_ttl - (10 * 365 * 86400 + 120)).abs() < 5);
    // the key on disk: unencrypted PKCS#8, RSA, mode 0600, matching the root
    let key_pem = std::fs::read_to_string(dir.path().join(ROOT_KEY_FILE)).unwrap();
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "{key_pem}"
    );
    let kp = KeyPair::from_pem(&key_pem).unwrap();
    assert!(kp.is_compatible(&rcgen::PKCS_RSA_SHA256));
    assert_eq!(
        kp.public_key_raw(),
        x509(&roots[0])
            .public_key()
            .subject_public_key
            .data
            .as_ref()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(dir.path().join(ROOT_KEY_FILE)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }

    // A workload certificate: meshd's ECDSA P-256 key, signed sha256WithRSAEncryption.
    let wid = id("voice", "media-relay");
    let w = ca.issue_workload(&wid).unwrap();
    let leaf = pems(&w.cert_chain_pem).swap_remove(0);
    check_leaf(
        &leaf,
        &roots[0],
        LeafKind::Workload,
        Some("spiffe://cluster.local/ns/voice/sa/media-relay"),
    );
    assert_eq!(x509(&leaf).signature_algorithm.algorithm, sig_oid(alg));
    assert_eq!(key_of(&x509(&leaf)), ("ec", 256));
    assert!(
        !x509(&leaf)
            .key_usage()
            .unwrap()
            .unwrap()
            .value
            .key_encipherment()
    );
    assert!(
        KeyPair::from_pem(&w.key_pem)
            .unwrap()
            .is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256)
    );
    for purpose in ["sslclient", "sslserver"] {
        openssl_verify(dir.path(), &ca.root_cert_pem(), &w.cert_chain_pem, purpose);
    }

    // A server certificate.
    let s = ca
        .server_cert(&["localhost".into(), "127.0.0.1".into()])
        .unwrap();
    let sc = pems(&s.cert_chain_pem).swap_remove(0);
    check_leaf(&sc, &roots[0], LeafKind::Server, None);
    assert_eq!(x509(&sc).signature_algorithm.algorithm, sig_oid(alg));
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &s.cert_chain_pem,
        "sslserver",
    );

    // An ECDSA CSR: the leaf keeps the CSR's key, digitalSignature only.
    let (csr, key) = csr_with_sans(vec![]);
    let chain = ca.sign_csr(&csr, &wid, None).unwrap();
    let der = pems(&chain[0]).swap_remove(0);
    check_leaf(
        &der,
        &roots[0],
        LeafKind::Workload,
        Some("spiffe://cluster.local/ns/voice/sa/media-relay"),
    );
    assert_eq!(
        x509(&der).public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    assert_eq!(x509(&der).signature_algorithm.algorithm, sig_oid(alg));
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &chain.concat(),
        "sslclient",
    );

    // An RSA CSR: the leaf's RSA key adds keyEncipherment (check_leaf asserts it follows the
    // key type), never keyCertSign/cRLSign.
    let chain = ca.sign_csr(&openssl_rsa_csr(2048), &wid, None).unwrap();
    let der = pems(&chain[0]).swap_remove(0);
    check_leaf(
        &der,
        &roots[0],
        LeafKind::Workload,
        Some("spiffe://cluster.local/ns/voice/sa/media-relay"),
    );
    assert_eq!(key_of(&x509(&der)), ("rsa", 2048));
    let leaf = x509(&der);
    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature() && ku.value.key_encipherment());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    assert_eq!(x509(&der).signature_algorithm.algorithm, sig_oid(alg));
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &chain.concat(),
        "sslclient",
    );
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &chain.concat(),
        "sslserver",
    );
}

#[test]
fn rsa_2048_root_conformance_and_openssl() {
    rsa_root_conformance(RootKeyAlgorithm::Rsa2048);
}

#[test]
fn rsa_4096_root_conformance_and_openssl() {
    rsa_root_conformance(RootKeyAlgorithm::Rsa4096);
}

#[test]
fn rsa_root_persisted_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = rsa_cfg(dir.path(), RootKeyAlgorithm::Rsa2048);
    let ca1 = CertificateAuthority::load_or_create(&rsa).unwrap();
    let root1 = ca1.root_cert_pem();
    let key1 = std::fs::read(dir.path().join(ROOT_KEY_FILE)).unwrap();
    drop(ca1);
    // Restart with the same configuration, and with another algorithm configured: the
    // persisted RSA root is kept either way (the setting applies to newly generated roots).
    for c in [
        rsa.clone(),
        cfg(dir.path()),
        rsa_cfg(dir.path(), RootKeyAlgorithm::Rsa4096),
    ] {
        let ca = CertificateAuthority::load_or_create(&c).unwrap();
        assert_eq!(ca.root_cert_pem(), root1);
        assert_eq!(std::fs::read(dir.path().join(ROOT_KEY_FILE)).unwrap(), key1);
        let root = pems(&root1).swap_remove(0);
        check_root_alg(&root, "cluster.local", RootKeyAlgorithm::Rsa2048);
        let w = ca.issue_workload(&id("a", "b")).unwrap();
        let leaf = pems(&w.cert_chain_pem).swap_remove(0);
        check_leaf(
            &leaf,
            &root,
            LeafKind::Workload,
            Some("spiffe://cluster.local/ns/a/sa/b"),
        );
        assert_eq!(
            x509(&leaf).signature_algorithm.algorithm,
            oid_registry::OID_PKCS1_SHA256WITHRSA
        );
        openssl_verify(
            dir.path(),
            &ca.root_cert_pem(),
            &w.cert_chain_pem,
            "sslclient",
        );
    }
    // A PKCS#1 ("RSA PRIVATE KEY") copy of the same key, as openssl writes it, loads too.
    let out = Command::new("openssl")
        .args(["rsa", "-traditional", "-in"])
        .arg(dir.path().join(ROOT_KEY_FILE))
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pkcs1 = String::from_utf8(out.stdout).unwrap();
    assert!(
        pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "{pkcs1}"
    );
    std::fs::write(dir.path().join(ROOT_KEY_FILE), &pkcs1).unwrap();
    let ca = CertificateAuthority::load_or_create(&rsa).unwrap();
    assert_eq!(ca.root_cert_pem(), root1);
    let w = ca.issue_workload(&id("a", "b")).unwrap();
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &w.cert_chain_pem,
        "sslclient",
    );
}

#[test]
fn corrupt_rsa_key_is_error_and_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = rsa_cfg(dir.path(), RootKeyAlgorithm::Rsa2048);
    let ca = CertificateAuthority::load_or_create(&rsa).unwrap();
    let root_pem = ca.root_cert_pem();
    drop(ca);
    let key_path = dir.path().join(ROOT_KEY_FILE);
    let key_loc = key_path.display().to_string();
    let good = std::fs::read_to_string(&key_path).unwrap();
    let der = x509_parser::pem::parse_x509_pem(good.as_bytes())
        .unwrap()
        .1
        .contents;
    let load_err = |content: &str| {
        std::fs::write(&key_path, content).unwrap();
        let e = CertificateAuthority::load_or_create(&rsa).unwrap_err();
        assert!(e.to_string().contains(&key_loc), "{e}");
        // never replaced: the broken files stay as they are
        assert_eq!(std::fs::read_to_string(&key_path).unwrap(), content);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(ROOT_CERT_FILE)).unwrap(),
            root_pem
        );
        e
    };

    // A damaged modulus: ring refuses the inconsistent key.
    let root_der = pems(&root_pem).swap_remove(0);
    let modulus = match x509(&root_der).public_key().parsed().unwrap() {
        x509_parser::public_key::PublicKey::RSA(k) => k.modulus.to_vec(),
        _ => unreachable!(),
    };
    let at = der
        .windows(modulus.len())
        .position(|w| w == modulus.as_slice())
        .expect("the modulus is in the key");
    let mut bad = der.clone();
    bad[at + modulus.len() / 2] ^= 0x55;
    let e = load_err(&pem_encode("PRIVATE KEY", &bad));
    assert!(matches!(e, CaError::Corrupt { .. }), "{e}");
    assert!(
        e.to_string().contains("RSA private key does not load"),
        "{e}"
    );

    // Truncated.
    let e = load_err(&pem_encode("PRIVATE KEY", &der[..der.len() / 2]));
    assert!(matches!(e, CaError::Corrupt { .. }), "{e}");
    assert!(
        e.to_string().contains("RSA private key does not load"),
        "{e}"
    );

    // Not base64.
    let e = load_err("-----BEGIN PRIVATE KEY-----\nnot base64!!\n-----END PRIVATE KEY-----\n");
    assert!(matches!(e, CaError::Corrupt { .. }), "{e}");

    // A valid RSA key of another root, and an ECDSA key: mismatched with root-cert.pem.
    for other in [
        keys::generate_root_key(RootKeyAlgorithm::Rsa2048)
            .unwrap()
            .serialize_pem(),
        KeyPair::generate().unwrap().serialize_pem(),
    ] {
        let e = load_err(&other);
        assert!(matches!(e, CaError::KeyMismatch { .. }), "{e}");
        assert!(e.to_string().contains("root-cert.pem"), "{e}");
    }

    // Restoring the key restores the CA.
    std::fs::write(&key_path, &good).unwrap();
    let ca = CertificateAuthority::load_or_create(&rsa).unwrap();
    assert_eq!(ca.root_cert_pem(), root_pem);
}
