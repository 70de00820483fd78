//! Istio's plug-in CA layout: conformance, TTL clamping, openssl-made SEC1/RSA material, incomplete or mismatched files, no root rotation.

use super::*;

#[test]
fn plugin_conformance_and_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let root_pem = write_plugin(dir.path(), 365 * DAY);
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    assert_eq!(ca.mode(), CaMode::PlugIn);
    assert_eq!(pems(&ca.root_cert_pem()), pems(&root_pem));
    assert!(
        !dir.path().join(ROOT_KEY_FILE).exists(),
        "no self-signed root made"
    );
    let signer = signer_der(&ca, dir.path());
    let w = ca.issue_workload(&id("default", "sleep")).unwrap();
    let chain = pems(&w.cert_chain_pem);
    assert_eq!(chain.len(), 3, "leaf + cert-chain.pem (intermediate, root)");
    assert_eq!(chain[1], signer);
    assert_eq!(chain[2], pems(&root_pem)[0]);
    check_leaf(
        &chain[0],
        &signer,
        LeafKind::Workload,
        Some("spiffe://cluster.local/ns/default/sa/sleep"),
    );
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &w.cert_chain_pem,
        "sslclient",
    );
    let s = ca.server_cert(&["meshd.example".into()]).unwrap();
    check_leaf(&pems(&s.cert_chain_pem)[0], &signer, LeafKind::Server, None);
    openssl_verify(
        dir.path(),
        &ca.root_cert_pem(),
        &s.cert_chain_pem,
        "sslserver",
    );

    let kinds: Vec<String> = ca.issued().into_iter().map(|i| i.kind).collect();
    assert_eq!(kinds[..2], ["root", "intermediate"]);
    let mut leaves = kinds[2..].to_vec();
    leaves.sort();
    assert_eq!(leaves, ["server", "workload"]);
}

#[test]
fn plugin_ttl_clamped_to_signer() {
    let dir = tempfile::tempdir().unwrap();
    write_plugin(dir.path(), DAY);
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let w = ca.issue_workload(&id("a", "b")).unwrap();
    let signer = signer_der(&ca, dir.path());
    assert_eq!(
        secs(w.not_after),
        x509(&signer).validity().not_after.timestamp()
    );
}

#[test]
fn plugin_with_openssl_material_sec1_and_rsa() {
    // Material as operators make it with openssl: SEC1 EC keys / PKCS#1 RSA keys.
    for (alg, genkey) in [
        (
            "ec",
            vec!["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
        ),
        ("rsa", vec!["genrsa", "-traditional", "2048"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        std::fs::write(d.join("root-key.src"), run(&genkey)).unwrap();
        std::fs::write(d.join(PLUGIN_CA_KEY_FILE), run(&genkey)).unwrap();
        std::fs::write(
            d.join("ext.cnf"),
            "[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
        )
        .unwrap();
        run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "root-key.src",
            "-subj",
            "/O=Org/CN=Root",
            "-days",
            "30",
            "-out",
            ROOT_CERT_FILE,
            "-extensions",
            "v3_ca",
            "-config",
            "ext.cnf",
        ]);
        run(&[
            "req",
            "-new",
            "-key",
            PLUGIN_CA_KEY_FILE,
            "-subj",
            "/O=Org/CN=Intermediate",
            "-out",
            "int.csr",
            "-config",
            "ext.cnf",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "int.csr",
            "-CA",
            ROOT_CERT_FILE,
            "-CAkey",
            "root-key.src",
            "-CAcreateserial",
            "-days",
            "20",
            "-out",
            PLUGIN_CA_CERT_FILE,
            "-extfile",
            "ext.cnf",
            "-extensions",
            "v3_ca",
        ]);
        let key_text = std::fs::read_to_string(d.join(PLUGIN_CA_KEY_FILE)).unwrap();
        let want_label = if alg == "ec" {
            "EC PRIVATE KEY"
        } else {
            "RSA PRIVATE KEY"
        };
        assert!(key_text.contains(want_label), "{alg}: {key_text}");
        std::fs::remove_file(d.join("root-key.src")).unwrap();
        // no cert-chain.pem: ca-cert.pem alone is served after the leaf
        let ca = CertificateAuthority::load_or_create(&cfg(d)).unwrap();
        assert_eq!(ca.mode(), CaMode::PlugIn);
        let w = ca.issue_workload(&id("ns", "sa")).unwrap();
        let chain = pems(&w.cert_chain_pem);
        assert_eq!(chain.len(), 2);
        let signer = signer_der(&ca, d);
        check_leaf(
            &chain[0],
            &signer,
            LeafKind::Workload,
            Some("spiffe://cluster.local/ns/ns/sa/sa"),
        );
        openssl_verify(d, &ca.root_cert_pem(), &w.cert_chain_pem, "sslclient");
    }
}

#[test]
fn plugin_incomplete_or_mismatched_is_error() {
    let dir = tempfile::tempdir().unwrap();
    write_plugin(dir.path(), 365 * DAY);
    std::fs::remove_file(dir.path().join(PLUGIN_CA_KEY_FILE)).unwrap();
    let e = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap_err();
    assert!(matches!(e, CaError::IncompleteState { .. }), "{e}");
    assert!(e.to_string().contains("ca-key.pem"), "{e}");

    // key of another cert
    std::fs::write(
        dir.path().join(PLUGIN_CA_KEY_FILE),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let e = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap_err();
    assert!(matches!(e, CaError::KeyMismatch { .. }), "{e}");

    // intermediate not signed by the given root
    let other = tempfile::tempdir().unwrap();
    write_plugin(dir.path(), 365 * DAY);
    write_plugin(other.path(), 365 * DAY);
    std::fs::copy(
        other.path().join(ROOT_CERT_FILE),
        dir.path().join(ROOT_CERT_FILE),
    )
    .unwrap();
    std::fs::copy(
        other.path().join(ROOT_CERT_FILE),
        dir.path().join(PLUGIN_CERT_CHAIN_FILE),
    )
    .unwrap();
    let e = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap_err();
    assert!(matches!(e, CaError::NotCa { .. }), "{e}");
}

#[test]
fn root_rotation_refused_for_plugin_ca() {
    let dir = tempfile::tempdir().unwrap();
    write_plugin(dir.path(), 365 * DAY);
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let e = ca.begin_root_rotation().unwrap_err();
    assert!(matches!(e, CaError::RotationUnsupported { .. }), "{e}");
    assert!(e.to_string().contains("cacerts"), "{e}");
}
