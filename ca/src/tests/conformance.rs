//! The self-signed CA's certificates against the X509-SVID rules and openssl; configuration defaults.

use super::*;

#[test]
fn ca_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CertificateAuthority>();
}

#[test]
fn config_defaults() {
    let c = CaConfig::default();
    assert_eq!(c.state_dir, PathBuf::from("./.meshd"));
    assert_eq!(c.trust_domain, "cluster.local");
    assert_eq!(c.workload_cert_ttl, 90 * DAY);
    assert_eq!(c.root_cert_ttl, 3650 * DAY);
    assert_eq!(c.rotation_window, DAY);
    assert_eq!(c.root_key_algorithm, RootKeyAlgorithm::EcdsaP256);
}

#[test]
fn root_key_algorithm_strings() {
    for (s, a) in [
        ("ecdsa-p256", RootKeyAlgorithm::EcdsaP256),
        ("rsa-2048", RootKeyAlgorithm::Rsa2048),
        ("rsa-4096", RootKeyAlgorithm::Rsa4096),
    ] {
        assert_eq!(s.parse::<RootKeyAlgorithm>().unwrap(), a);
        assert_eq!(a.to_string(), s);
        assert_eq!(a.as_str(), s);
    }
    assert_eq!(
        "RSA-2048".parse::<RootKeyAlgorithm>().unwrap(),
        RootKeyAlgorithm::Rsa2048
    );
    assert_eq!(RootKeyAlgorithm::default(), RootKeyAlgorithm::EcdsaP256);
    for bad in ["", "rsa", "rsa-1024", "rsa-3072", "ecdsa-p384", "ed25519"] {
        let e = bad.parse::<RootKeyAlgorithm>().unwrap_err();
        assert!(e.contains("ecdsa-p256, rsa-2048 or rsa-4096"), "{e}");
    }
}

#[test]
fn self_signed_conformance_and_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    assert_eq!(ca.mode(), CaMode::SelfSigned);
    assert_eq!(ca.trust_domain(), "cluster.local");
    let roots = pems(&ca.root_cert_pem());
    assert_eq!(roots.len(), 1);
    check_root(&roots[0], "cluster.local");

    let wid = id("voice", "media-relay");
    let w = ca.issue_workload(&wid).unwrap();
    let chain = pems(&w.cert_chain_pem);
    assert_eq!(chain.len(), 1, "self-signed mode serves the leaf only");
    check_leaf(
        &chain[0],
        &roots[0],
        LeafKind::Workload,
        Some("spiffe://cluster.local/ns/voice/sa/media-relay"),
    );
    assert_eq!(w.spiffe_id.as_ref(), Some(&wid));
    let c = x509(&chain[0]);
    assert_eq!(hex::encode(c.raw_serial()), w.serial_hex);
    assert_eq!(secs(w.not_before), c.validity().not_before.timestamp());
    assert_eq!(secs(w.not_after), c.validity().not_after.timestamp());
    assert_eq!(
        secs(w.not_after) - secs(w.not_before),
        (90 * DAY + BACKDATE).as_secs() as i64
    );
    // the key is P-256 PKCS#8 and matches the certificate
    assert!(w.key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let kp = KeyPair::from_pem(&w.key_pem).unwrap();
    assert!(kp.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256));
    assert_eq!(
        kp.public_key_raw(),
        c.public_key().subject_public_key.data.as_ref()
    );
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &w.cert_chain_pem,
        "sslclient",
    );
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &w.cert_chain_pem,
        "sslserver",
    );

    let s = ca
        .server_cert(&[
            "meshd.istio-system.svc".into(),
            "localhost".into(),
            "127.0.0.1".into(),
        ])
        .unwrap();
    assert!(s.spiffe_id.is_none());
    let sc = pems(&s.cert_chain_pem);
    check_leaf(&sc[0], &roots[0], LeafKind::Server, None);
    assert_eq!(
        dns_sans(&x509(&sc[0])),
        vec![
            "meshd.istio-system.svc".to_string(),
            "localhost".to_string()
        ]
    );
    assert!(
        x509(&sc[0])
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .any(|n| matches!(n, GeneralName::IPAddress(ip) if *ip == [127,0,0,1]))
    );
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &s.cert_chain_pem,
        "sslserver",
    );

    // serials are distinct
    let w2 = ca.issue_workload(&wid).unwrap();
    assert_ne!(w.serial_hex, w2.serial_hex);
}

#[test]
fn custom_trust_domain_root() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.trust_domain = "example.org".into();
    let ca = CertificateAuthority::load_or_create(&c).unwrap();
    check_root(&pems(&ca.root_cert_pem())[0], "example.org");
    let w = ca
        .issue_workload(&SpiffeId::new("example.org", "a", "b"))
        .unwrap();
    assert_eq!(
        uri_sans(&x509(&pems(&w.cert_chain_pem)[0])),
        vec!["spiffe://example.org/ns/a/sa/b"]
    );
}
