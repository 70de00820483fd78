//! State on disk: the root reused across restarts, 0600 secrets, corrupt, mismatched or half-written state refused (never replaced), trust domains, a custom storage backend.

use super::*;

#[test]
fn root_persisted_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let root1 = ca1.root_cert_pem();
    let key1 = std::fs::read(dir.path().join(ROOT_KEY_FILE)).unwrap();
    let serial1 = ca1.issued()[0].serial.clone();
    let token = ca1
        .issue_credential(&WorkloadClaims {
            workload: "w".into(),
            namespace: "n".into(),
            service_account: "s".into(),
            issued_at: 1,
            expires_at: u64::MAX,
        })
        .unwrap();
    drop(ca1);
    let ca2 = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    assert_eq!(ca2.root_cert_pem(), root1);
    assert_eq!(
        std::fs::read_to_string(dir.path().join(ROOT_CERT_FILE)).unwrap(),
        root1
    );
    assert_eq!(std::fs::read(dir.path().join(ROOT_KEY_FILE)).unwrap(), key1);
    assert_eq!(ca2.issued()[0].serial, serial1);
    assert_eq!(ca2.verify_credential(&token).unwrap().workload, "w");
    // certs from the reloaded CA chain to the same root
    let w = ca2.issue_workload(&id("a", "b")).unwrap();
    check_leaf(
        &pems(&w.cert_chain_pem)[0],
        &pems(&root1)[0],
        LeafKind::Workload,
        Some("spiffe://cluster.local/ns/a/sa/b"),
    );
}

#[cfg(unix)]
#[test]
fn secret_files_are_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    for f in [ROOT_KEY_FILE, CREDENTIAL_KEY_FILE] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

#[test]
fn corrupt_root_is_error_and_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let path = dir.path().join(ROOT_CERT_FILE);
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap_err();
    assert!(matches!(e, CaError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("not base64!!")
    );

    std::fs::write(&path, "garbage").unwrap();
    let e = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap_err();
    assert!(e.to_string().contains("root-cert.pem"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "garbage");

    let key_path = dir.path().join(ROOT_KEY_FILE);
    std::fs::write(&key_path, "junk").unwrap();
    let e = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap_err();
    assert!(matches!(e, CaError::Corrupt { .. }), "{e}");
}

#[test]
fn corrupt_key_is_error() {
    let dir = tempfile::tempdir().unwrap();
    CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let key_path = dir.path().join(ROOT_KEY_FILE);
    std::fs::write(
        &key_path,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap_err();
    assert!(matches!(e, CaError::Corrupt { .. }), "{e}");
    assert!(
        e.to_string().contains(&key_path.display().to_string()),
        "{e}"
    );
}

#[test]
fn key_mismatch_is_error() {
    let dir = tempfile::tempdir().unwrap();
    CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let key_path = dir.path().join(ROOT_KEY_FILE);
    let other = KeyPair::generate().unwrap().serialize_pem();
    std::fs::write(&key_path, &other).unwrap();
    let e = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap_err();
    assert!(matches!(e, CaError::KeyMismatch { .. }), "{e}");
    assert!(e.to_string().contains("root-key.pem") && e.to_string().contains("root-cert.pem"));
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), other);
}

#[test]
fn half_state_is_error_not_regenerated() {
    let dir = tempfile::tempdir().unwrap();
    CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    std::fs::remove_file(dir.path().join(ROOT_CERT_FILE)).unwrap();
    let e = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap_err();
    assert!(matches!(e, CaError::IncompleteState { .. }), "{e}");
    assert!(!dir.path().join(ROOT_CERT_FILE).exists());
}

#[test]
fn corrupt_credential_key_is_error() {
    let dir = tempfile::tempdir().unwrap();
    CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    std::fs::write(dir.path().join(CREDENTIAL_KEY_FILE), b"short").unwrap();
    let e = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap_err();
    assert!(e.to_string().contains("credential-key"), "{e}");
}

#[test]
fn bad_trust_domain_and_foreign_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.trust_domain = "Bad Domain".into();
    assert!(matches!(
        CertificateAuthority::load_or_create(&c).unwrap_err(),
        CaError::InvalidTrustDomain { .. }
    ));
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let e = ca
        .issue_workload(&SpiffeId::new("other.td", "a", "b"))
        .unwrap_err();
    assert!(matches!(e, CaError::ForeignTrustDomain { .. }), "{e}");
    let e = ca.issue_workload(&id("a/sa/x", "b")).unwrap_err();
    assert!(matches!(e, CaError::InvalidSpiffeId { .. }), "{e}");
    assert!(ca.server_cert(&[]).is_err());
    assert!(ca.server_cert(&["bad name".into()]).is_err());
}

#[test]
fn custom_storage_backend() {
    use std::collections::HashMap;
    use std::sync::Mutex;
    #[derive(Default)]
    struct Mem(Mutex<HashMap<String, Vec<u8>>>);
    impl CaStorage for Mem {
        fn load(&self, name: &str) -> Result<Option<Vec<u8>>, CaError> {
            Ok(self.0.lock().unwrap().get(name).cloned())
        }
        fn store(&self, name: &str, data: &[u8], _secret: bool) -> Result<(), CaError> {
            self.0.lock().unwrap().insert(name.into(), data.to_vec());
            Ok(())
        }
        fn remove(&self, name: &str) -> Result<(), CaError> {
            self.0.lock().unwrap().remove(name);
            Ok(())
        }
        fn location(&self, name: &str) -> String {
            format!("secret/meshd-ca[{name}]")
        }
    }
    let mem = std::sync::Arc::new(Mem::default());
    let c = CaConfig::default();
    let ca1 = CertificateAuthority::load_or_create_with_storage(&c, mem.clone()).unwrap();
    let ca2 = CertificateAuthority::load_or_create_with_storage(&c, mem.clone()).unwrap();
    assert_eq!(ca1.root_cert_pem(), ca2.root_cert_pem());
    assert!(mem.0.lock().unwrap().contains_key(CREDENTIAL_KEY_FILE));
    mem.0
        .lock()
        .unwrap()
        .insert(ROOT_CERT_FILE.into(), b"x".to_vec());
    let e = CertificateAuthority::load_or_create_with_storage(&c, mem.clone()).unwrap_err();
    assert!(
        e.to_string().contains("secret/meshd-ca[root-cert.pem]"),
        "{e}"
    );
}
