//! Signing CSRs: the SAN comes from the authenticated identity only, plug-in chains, bad input refused, RSA subject keys.

use super::*;

#[test]
fn sign_csr_san_from_id_not_csr() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let (csr, key) = csr_with_sans(vec![
        SanType::URI(
            "spiffe://cluster.local/ns/kube-system/sa/admin"
                .try_into()
                .unwrap(),
        ),
        SanType::DnsName("evil.example".try_into().unwrap()),
    ]);
    let chain = ca.sign_csr(&csr, &id("voice", "sip-proxy"), None).unwrap();
    assert_eq!(chain.len(), 1);
    let der = pems(&chain[0]).swap_remove(0);
    let root = pems(&ca.root_cert_pem()).swap_remove(0);
    check_leaf(
        &der,
        &root,
        LeafKind::Workload,
        Some("spiffe://cluster.local/ns/voice/sa/sip-proxy"),
    );
    let c = x509(&der);
    assert!(dns_sans(&c).is_empty());
    assert_eq!(
        key.public_key_raw(),
        c.public_key().subject_public_key.data.as_ref()
    );
    let w = ca.issued();
    assert!(w.iter().any(
        |i| i.spiffe_id == "spiffe://cluster.local/ns/voice/sa/sip-proxy" && i.kind == "workload"
    ));
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &chain.concat(),
        "sslclient",
    );

    // ttl
    let chain = ca
        .sign_csr(
            &csr,
            &id("voice", "sip-proxy"),
            Some(Duration::from_secs(3600)),
        )
        .unwrap();
    let c = x509(&pems(&chain[0])[0]).validity().not_after.timestamp();
    assert!((c - secs(SystemTime::now()) - 3600).abs() <= 5);
    assert!(matches!(
        ca.sign_csr(&csr, &id("voice", "sip-proxy"), Some(91 * DAY)),
        Err(CaError::TtlTooLong { .. })
    ));
    assert!(
        ca.sign_csr(&csr, &id("voice", "sip-proxy"), Some(Duration::ZERO))
            .is_err()
    );
}

#[test]
fn sign_csr_in_plugin_mode_returns_chain() {
    let dir = tempfile::tempdir().unwrap();
    write_plugin(dir.path(), 365 * DAY);
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let (csr, _) = csr_with_sans(vec![]);
    let chain = ca.sign_csr(&csr, &id("a", "b"), None).unwrap();
    assert_eq!(chain.len(), 3);
    check_leaf(
        &pems(&chain[0])[0],
        &signer_der(&ca, dir.path()),
        LeafKind::Workload,
        Some("spiffe://cluster.local/ns/a/sa/b"),
    );
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &chain.concat(),
        "sslclient",
    );
}

#[test]
fn sign_csr_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let wid = id("a", "b");
    // garbage
    assert!(matches!(
        ca.sign_csr("hello", &wid, None),
        Err(CaError::CsrParse { .. })
    ));
    assert!(matches!(
        ca.sign_csr(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            &wid,
            None
        ),
        Err(CaError::CsrParse { .. })
    ));
    // a certificate is not a CSR
    assert!(matches!(
        ca.sign_csr(&ca.root_cert_pem(), &wid, None),
        Err(CaError::CsrParse { .. })
    ));
    // bad signature: flip the last byte (inside the signature)
    let (csr, _) = csr_with_sans(vec![]);
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr.as_bytes()).unwrap();
    let mut der = pem.contents.clone();
    let n = der.len();
    der[n - 1] ^= 0x01;
    let bad = pem_encode("CERTIFICATE REQUEST", &der);
    assert!(matches!(
        ca.sign_csr(&bad, &wid, None),
        Err(CaError::CsrSignature)
    ));
    // RSA-1024 and RSA-2048 CSRs from openssl
    let csr_rsa = |bits: &str| {
        let out = Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                &format!("rsa:{bits}"),
                "-nodes",
                "-keyout",
                "/dev/null",
                "-subj",
                "/CN=x",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(matches!(
        ca.sign_csr(&csr_rsa("1024"), &wid, None),
        Err(CaError::CsrWeakKey { bits: 1024 })
    ));
    let chain = ca.sign_csr(&csr_rsa("2048"), &wid, None).unwrap();
    let der = pems(&chain[0]).swap_remove(0);
    check_leaf(
        &der,
        &pems(&ca.root_cert_pem())[0],
        LeafKind::Workload,
        Some("spiffe://cluster.local/ns/a/sa/b"),
    );
    assert!(
        x509(&der)
            .key_usage()
            .unwrap()
            .unwrap()
            .value
            .key_encipherment()
    );
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &chain.concat(),
        "sslclient",
    );
}

#[test]
fn ecdsa_root_signs_rsa_csr_with_key_encipherment() {
    // The default root: an RSA leaf key still gets keyEncipherment, signed ecdsa-with-SHA256.
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let root = pems(&ca.root_cert_pem()).swap_remove(0);
    let chain = ca
        .sign_csr(&openssl_rsa_csr(2048), &id("a", "b"), None)
        .unwrap();
    let der = pems(&chain[0]).swap_remove(0);
    check_leaf(
        &der,
        &root,
        LeafKind::Workload,
        Some("spiffe://cluster.local/ns/a/sa/b"),
    );
    assert!(
        x509(&der)
            .key_usage()
            .unwrap()
            .unwrap()
            .value
            .key_encipherment()
    );
    assert_eq!(
        x509(&der).signature_algorithm.algorithm,
        oid_registry::OID_SIG_ECDSA_WITH_SHA256
    );
}
