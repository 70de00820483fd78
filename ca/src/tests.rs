//! CA tests: SVID conformance, persistence, plug-in CA, CSR signing, credentials, openssl.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn cfg(dir: &Path) -> CaConfig {
    CaConfig {
        state_dir: dir.to_path_buf(),
        ..Default::default()
    }
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa)
}

fn pems(s: &str) -> Vec<Vec<u8>> {
    parse_cert_pems(s.as_bytes(), "test").unwrap()
}

fn x509(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).unwrap().1
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn uri_sans(c: &X509Certificate<'_>) -> Vec<String> {
    c.subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn dns_sans(c: &X509Certificate<'_>) -> Vec<String> {
    c.subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ski(c: &X509Certificate<'_>) -> Vec<u8> {
    c.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .expect("SKI present")
}

fn aki(c: &X509Certificate<'_>) -> Vec<u8> {
    c.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(k) => {
                k.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("AKI present")
}

#[derive(Clone, Copy, PartialEq)]
enum LeafKind {
    Workload,
    Server,
}

/// Every X509-SVID / leaf rule, against the signer's certificate.
fn check_leaf(leaf_der: &[u8], signer_der: &[u8], kind: LeafKind, want_uri: Option<&str>) {
    let c = x509(leaf_der);
    let signer = x509(signer_der);
    assert_eq!(c.version(), X509Version::V3);
    // signed by the signer, names chain
    c.verify_signature(Some(signer.public_key()))
        .expect("leaf signature verifies with the signer key");
    assert_eq!(c.issuer().as_raw(), signer.subject().as_raw());
    assert_eq!(aki(&c), ski(&signer));
    // SANs
    let uris = uri_sans(&c);
    match (kind, want_uri) {
        (LeafKind::Workload, Some(u)) => assert_eq!(uris, vec![u.to_string()]),
        (LeafKind::Server, _) => assert!(uris.is_empty()),
        _ => unreachable!(),
    }
    let san = c
        .get_extension_unique(&oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME)
        .unwrap()
        .unwrap();
    if c.subject().iter().next().is_none() {
        assert!(san.critical, "SAN must be critical with an empty subject");
    } else {
        assert_eq!(c.subject().to_string(), "O=meshd");
    }
    // basicConstraints critical CA:false
    let bc = c.basic_constraints().unwrap().expect("basicConstraints");
    assert!(bc.critical);
    assert!(!bc.value.ca);
    // keyUsage critical digitalSignature, never cert/CRL signing
    let ku = c.key_usage().unwrap().expect("keyUsage");
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign());
    assert!(!ku.value.crl_sign());
    let is_rsa = matches!(
        c.public_key().parsed().unwrap(),
        x509_parser::public_key::PublicKey::RSA(_)
    );
    assert_eq!(ku.value.key_encipherment(), is_rsa);
    // EKU
    let eku = c.extended_key_usage().unwrap().expect("EKU");
    assert!(eku.value.server_auth);
    assert!(eku.value.client_auth);
    assert!(!eku.value.any);
    // serial: positive, >= 120 random-ish bits
    let serial = c.raw_serial();
    assert!(serial.len() >= 16, "serial {serial:?}");
    assert!(serial[0] & 0x80 == 0);
    // validity
    let now = secs(SystemTime::now());
    let nb = c.validity().not_before.timestamp();
    let na = c.validity().not_after.timestamp();
    assert!((now - 120 - nb).abs() <= 5, "NotBefore = now - 2min");
    assert!(na <= signer.validity().not_after.timestamp());
    assert!(na > now);
}

fn check_root(der: &[u8], td: &str) {
    check_root_alg(der, td, RootKeyAlgorithm::EcdsaP256);
}

/// The key and signature algorithm of a certificate: ("rsa", bits) / ("ec", curve bits).
fn key_of(c: &X509Certificate<'_>) -> (&'static str, usize) {
    match c.public_key().parsed().unwrap() {
        x509_parser::public_key::PublicKey::RSA(k) => ("rsa", k.key_size()),
        x509_parser::public_key::PublicKey::EC(p) => ("ec", p.key_size()),
        other => panic!("unexpected key {other:?}"),
    }
}

/// The signature algorithm a certificate signed by a key of `alg` carries.
fn sig_oid(alg: RootKeyAlgorithm) -> oid_registry::Oid<'static> {
    match alg {
        RootKeyAlgorithm::EcdsaP256 => oid_registry::OID_SIG_ECDSA_WITH_SHA256,
        RootKeyAlgorithm::Rsa2048 | RootKeyAlgorithm::Rsa4096 => {
            oid_registry::OID_PKCS1_SHA256WITHRSA
        }
    }
}

fn check_root_alg(der: &[u8], td: &str, alg: RootKeyAlgorithm) {
    let c = x509(der);
    assert_eq!(c.version(), X509Version::V3);
    c.verify_signature(None).expect("self-signed");
    assert_eq!(c.subject().as_raw(), c.issuer().as_raw());
    assert!(
        c.subject()
            .iter_organization()
            .any(|o| o.as_str().unwrap() == "meshd")
    );
    let bc = c.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    let ku = c.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    assert_eq!(uri_sans(&c), vec![format!("spiffe://{td}")]);
    match alg.rsa_bits() {
        None => {
            assert_eq!(
                c.public_key().algorithm.algorithm,
                oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
            );
            assert_eq!(key_of(&c), ("ec", 256));
        }
        Some(bits) => {
            assert_eq!(
                c.public_key().algorithm.algorithm,
                oid_registry::OID_PKCS1_RSAENCRYPTION
            );
            assert_eq!(key_of(&c), ("rsa", bits));
        }
    }
    assert_eq!(c.signature_algorithm.algorithm, sig_oid(alg));
    assert_eq!(keys::cert_key_algorithm(&c), Some(alg));
    let ttl = c.validity().not_after.timestamp() - c.validity().not_before.timestamp();
    assert!((ttl - (10 * 365 * 86400 + 120)).abs() < 5, "root ttl {ttl}");
}

fn openssl_verify(dir: &Path, bundle: &str, chain_pem: &str, purpose: &str) {
    let ders = pems(chain_pem);
    let leaf = pem_encode("CERTIFICATE", &ders[0]);
    let untrusted: String = ders[1..]
        .iter()
        .map(|d| pem_encode("CERTIFICATE", d))
        .collect();
    std::fs::write(dir.join("v-root.pem"), bundle).unwrap();
    std::fs::write(dir.join("v-leaf.pem"), leaf).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.arg("verify")
        .arg("-x509_strict")
        .arg("-purpose")
        .arg(purpose)
        .arg("-CAfile")
        .arg(dir.join("v-root.pem"));
    if !untrusted.is_empty() {
        std::fs::write(dir.join("v-chain.pem"), untrusted).unwrap();
        cmd.arg("-untrusted").arg(dir.join("v-chain.pem"));
    }
    let out = cmd
        .arg(dir.join("v-leaf.pem"))
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn signer_der(ca: &CertificateAuthority, dir: &Path) -> Vec<u8> {
    match ca.mode() {
        CaMode::SelfSigned => pems(&ca.root_cert_pem()).swap_remove(0),
        CaMode::PlugIn => {
            pems(&std::fs::read_to_string(dir.join(PLUGIN_CA_CERT_FILE)).unwrap()).swap_remove(0)
        }
    }
}

/// Writes Istio plug-in material (root, intermediate) made with rcgen into `dir`.
/// Returns the root PEM.
fn write_plugin(dir: &Path, intermediate_ttl: Duration) -> String {
    let root_key = KeyPair::generate().unwrap();
    let mut rp = CertificateParams::default();
    rp.distinguished_name = DistinguishedName::new();
    rp.distinguished_name
        .push(DnType::OrganizationName, "Example Corp");
    rp.distinguished_name
        .push(DnType::CommonName, "Example Root CA");
    rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    rp.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    rp.not_before = (now - DAY).into();
    rp.not_after = (now + 3650 * DAY).into();
    let root_issuer = rcgen::CertifiedIssuer::self_signed(rp, root_key).unwrap();
    let root_pem = root_issuer.pem();

    let int_key = KeyPair::generate().unwrap();
    let mut ip = CertificateParams::default();
    ip.distinguished_name = DistinguishedName::new();
    ip.distinguished_name
        .push(DnType::OrganizationName, "Example Corp");
    ip.distinguished_name
        .push(DnType::CommonName, "Intermediate CA cluster-1");
    ip.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ip.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ip.use_authority_key_identifier_extension = true;
    ip.not_before = (now - DAY).into();
    ip.not_after = (now + intermediate_ttl).into();
    let int_cert = ip.signed_by(&int_key, &root_issuer).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(PLUGIN_CA_CERT_FILE), int_cert.pem()).unwrap();
    std::fs::write(dir.join(PLUGIN_CA_KEY_FILE), int_key.serialize_pem()).unwrap();
    std::fs::write(dir.join(ROOT_CERT_FILE), &root_pem).unwrap();
    std::fs::write(
        dir.join(PLUGIN_CERT_CHAIN_FILE),
        format!("{}{}", int_cert.pem(), root_pem),
    )
    .unwrap();
    root_pem
}

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

fn csr_with_sans(sans: Vec<SanType>) -> (String, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = sans;
    (p.serialize_request(&key).unwrap().pem().unwrap(), key)
}

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
fn rotation_due_rules() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let mut c = ca.issue_workload(&id("a", "b")).unwrap();
    let nb = c.not_before;
    let na = c.not_after;
    assert!(!ca.rotation_due(&c, SystemTime::now()));
    assert!(!ca.rotation_due(&c, na - DAY - Duration::from_secs(1)));
    assert!(ca.rotation_due(&c, na - DAY + Duration::from_secs(1)));
    assert!(ca.rotation_due(&c, na + Duration::from_secs(1)));
    // short-lived: half the lifetime wins over the 24h window; the lifetime counts from
    // issuance (NotBefore + the 2 min back-dating), not from NotBefore
    let issued = nb + BACKDATE;
    c.not_after = issued + Duration::from_secs(3600);
    assert_eq!(ca.rotation_window_for(&c), Duration::from_secs(1800));
    assert!(!ca.rotation_due(&c, issued + Duration::from_secs(29 * 60)));
    assert!(ca.rotation_due(&c, issued + Duration::from_secs(31 * 60)));
}

#[test]
fn short_ttl_is_honoured_and_not_due_at_issuance() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&CaConfig {
        workload_cert_ttl: Duration::from_secs(30),
        rotation_window: Duration::from_secs(10),
        ..cfg(dir.path())
    })
    .unwrap();
    let c = ca.issue_workload(&id("a", "b")).unwrap();
    let now = SystemTime::now();
    let left = c.not_after.duration_since(now).unwrap();
    assert!(
        left <= Duration::from_secs(30) && left >= Duration::from_secs(28),
        "{left:?}"
    );
    assert_eq!(ca.rotation_window_for(&c), Duration::from_secs(10));
    assert!(!ca.rotation_due(&c, now));
    assert!(!ca.rotation_due(&c, c.not_after - Duration::from_secs(11)));
    assert!(ca.rotation_due(&c, c.not_after - Duration::from_secs(9)));
    // the same 30 s certificate with the default 24 h window: half its life, 15 s
    let ca = CertificateAuthority::load_or_create(&CaConfig {
        workload_cert_ttl: Duration::from_secs(30),
        ..cfg(dir.path())
    })
    .unwrap();
    let c = ca.issue_workload(&id("a", "b")).unwrap();
    assert_eq!(ca.rotation_window_for(&c), Duration::from_secs(15));
    assert!(!ca.rotation_due(&c, SystemTime::now()));
}

#[test]
fn issued_registry_lists_valid_certs_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    ca.issue_workload(&id("a", "b")).unwrap();
    ca.issue_workload(&id("c", "d")).unwrap();
    ca.server_cert(&["localhost".into()]).unwrap();
    let list = ca.issued();
    assert_eq!(list.len(), 4);
    assert_eq!(list[0].kind, "root");
    assert_eq!(list[0].spiffe_id, "spiffe://cluster.local");
    assert!(
        list.iter()
            .any(|i| i.spiffe_id == "spiffe://cluster.local/ns/c/sa/d")
    );
    assert_eq!(list.iter().filter(|i| i.kind == "server").count(), 1);
    for i in &list {
        ::time::OffsetDateTime::parse(
            &i.not_before,
            &::time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        ::time::OffsetDateTime::parse(
            &i.not_after,
            &::time::format_description::well_known::Rfc3339,
        )
        .unwrap();
    }
    let json = serde_json::to_string(&list).unwrap();
    assert!(!json.contains("PRIVATE"));
    // expired entries are pruned
    {
        let mut reg = ca.registry.lock().unwrap();
        for (_, e) in reg.certs.iter_mut() {
            e.not_after = SystemTime::now() - Duration::from_secs(1);
        }
    }
    assert_eq!(ca.issued().len(), 1);
    assert!(ca.registry.lock().unwrap().certs.is_empty());
}

#[test]
fn concurrent_issuance() {
    let dir = tempfile::tempdir().unwrap();
    let ca = std::sync::Arc::new(CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let ca = ca.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    ca.issue_workload(&id(&format!("ns{t}"), &format!("sa{i}")))
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(ca.issued().len(), 41);
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

// ---------------------------------------------------------------------------------------------
// Root rotation

fn leaf_signed_by(chain_pem: &str, root_der: &[u8]) -> bool {
    let leaf = pems(chain_pem).swap_remove(0);
    x509(&leaf)
        .verify_signature(Some(x509(root_der).public_key()))
        .is_ok()
}

fn serial_of(der: &[u8]) -> String {
    hex::encode(x509(der).raw_serial())
}

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
fn root_rotation_refused_for_plugin_ca() {
    let dir = tempfile::tempdir().unwrap();
    write_plugin(dir.path(), 365 * DAY);
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let e = ca.begin_root_rotation().unwrap_err();
    assert!(matches!(e, CaError::RotationUnsupported { .. }), "{e}");
    assert!(e.to_string().contains("cacerts"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Istio's CreateCertificate, without gRPC

#[test]
fn create_certificate_chain_identity_and_rejections() {
    use crate::istio_api::*;
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    let caller = id("payments", "ledger");
    // The CSR asks for another identity and a DNS name: both ignored.
    let (csr, _) = csr_with_sans(vec![
        SanType::URI(
            "spiffe://cluster.local/ns/kube-system/sa/admin"
                .try_into()
                .unwrap(),
        ),
        SanType::DnsName("evil.example".try_into().unwrap()),
    ]);
    let req = |csr: &str, ttl: i64| IstioCertificateRequest {
        csr: csr.into(),
        validity_duration: ttl,
        metadata: None,
    };
    let resp = ca.create_certificate(&caller, &req(&csr, 3600)).unwrap();
    assert_eq!(resp.cert_chain.len(), 2, "leaf, then the root bundle");
    assert_eq!(resp.cert_chain[1], ca.root_cert_pem());
    let leaf = pems(&resp.cert_chain[0]).swap_remove(0);
    check_leaf(
        &leaf,
        &pems(&ca.root_cert_pem())[0],
        LeafKind::Workload,
        Some("spiffe://cluster.local/ns/payments/sa/ledger"),
    );
    assert!(dns_sans(&x509(&leaf)).is_empty());
    let life = secs(x509_time(x509(&leaf).validity().not_after))
        - secs(x509_time(x509(&leaf).validity().not_before));
    assert_eq!(life, 3600 + BACKDATE.as_secs() as i64);
    openssl_verify(
        dir.path(),
        &resp.cert_chain[1],
        &resp.cert_chain[0],
        "sslclient",
    );
    // default TTL when unset
    ca.create_certificate(&caller, &req(&csr, 0)).unwrap();

    let rejected = |r: &IstioCertificateRequest| ca.create_certificate(&caller, r).unwrap_err();
    let e = rejected(&req(&csr, 91 * 24 * 3600));
    assert_eq!(
        (e.code, e.reason),
        (RejectCode::InvalidArgument, "ttl_too_long")
    );
    assert!(e.message.contains("exceeds the maximum"), "{e}");
    let e = rejected(&req(&csr, -5));
    assert_eq!(
        (e.code, e.reason),
        (RejectCode::InvalidArgument, "ttl_invalid")
    );
    let e = rejected(&req("", 0));
    assert_eq!(
        (e.code, e.reason),
        (RejectCode::InvalidArgument, "malformed")
    );
    let e = rejected(&req("-----BEGIN CERTIFICATE REQUEST-----\n!!\n", 0));
    assert_eq!(
        (e.code, e.reason),
        (RejectCode::InvalidArgument, "malformed")
    );
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr.as_bytes()).unwrap();
    let mut der = pem.contents.clone();
    let n = der.len();
    der[n - 1] ^= 0x01;
    let e = rejected(&req(&pem_encode("CERTIFICATE REQUEST", &der), 0));
    assert_eq!(
        (e.code, e.reason),
        (RejectCode::InvalidArgument, "bad_signature")
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            "/dev/null",
            "-subj",
            "/CN=x",
        ])
        .output()
        .unwrap();
    let e = rejected(&req(&String::from_utf8(out.stdout).unwrap(), 0));
    assert_eq!(
        (e.code, e.reason),
        (RejectCode::InvalidArgument, "weak_key")
    );
    assert!(e.message.contains("1024"), "{e}");

    // Impersonation through metadata is refused; naming oneself is fine.
    let meta = |who: &str| {
        let mut s = prost_types::Struct::default();
        s.fields.insert(
            IMPERSONATED_IDENTITY.into(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(who.into())),
            },
        );
        Some(s)
    };
    let mut r = req(&csr, 0);
    r.metadata = meta("spiffe://cluster.local/ns/kube-system/sa/admin");
    let e = rejected(&r);
    assert_eq!(
        (e.code, e.reason),
        (RejectCode::PermissionDenied, "impersonation")
    );
    r.metadata = meta(&caller.to_string());
    ca.create_certificate(&caller, &r).unwrap();

    // Wire round trip of the hand-written messages.
    use prost::Message;
    let bytes = r.encode_to_vec();
    assert_eq!(
        IstioCertificateRequest::decode(bytes.as_slice()).unwrap(),
        r
    );
}

fn x509_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    asn1_to_system(t)
}

// ---------------------------------------------------------------------------------------------
// RSA roots

fn rsa_cfg(dir: &Path, alg: RootKeyAlgorithm) -> CaConfig {
    CaConfig {
        root_key_algorithm: alg,
        ..cfg(dir)
    }
}

/// An RSA CSR made by openssl (the key type a CSR-signing client may use).
fn openssl_rsa_csr(bits: u32) -> String {
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
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

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
fn leaf_records_are_bounded_and_summarised_without_per_certificate_series() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&cfg(dir.path())).unwrap();
    ca.set_tracking_cap(8);
    let id = SpiffeId::new("cluster.local", "n", "s");
    let mut last = None;
    for _ in 0..20 {
        last = Some(ca.issue_workload(&id).unwrap());
    }
    let leaves: Vec<CertInfo> = ca
        .issued()
        .into_iter()
        .filter(|c| c.kind == "workload")
        .collect();
    assert_eq!(leaves.len(), 8, "at most the cap");
    assert!(
        leaves
            .iter()
            .any(|c| c.serial == last.as_ref().unwrap().serial_hex),
        "the newest records are kept"
    );
    let summary = ca.issued_summary();
    assert_eq!(summary.untracked, 12);
    let kind = |k: &str| summary.kinds.iter().find(|s| s.kind == k).unwrap().clone();
    assert_eq!(kind("workload").count, 8);
    assert_eq!(kind("root").count, 1);
    assert_eq!(kind("server").count, 0);
    assert!(kind("workload").earliest_expiry.unwrap() <= last.unwrap().not_after);
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
