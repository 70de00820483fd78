//! CA tests, one file per concern (declared at the end); here the helpers they share: X.509
//! field readers, the X509-SVID leaf and root checks, openssl verification, plug-in material.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

use super::*;
use crate::x509::{asn1_to_system, parse_cert_pems, pem_encode};

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

fn csr_with_sans(sans: Vec<SanType>) -> (String, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = sans;
    (p.serialize_request(&key).unwrap().pem().unwrap(), key)
}

fn leaf_signed_by(chain_pem: &str, root_der: &[u8]) -> bool {
    let leaf = pems(chain_pem).swap_remove(0);
    x509(&leaf)
        .verify_signature(Some(x509(root_der).public_key()))
        .is_ok()
}

fn serial_of(der: &[u8]) -> String {
    hex::encode(x509(der).raw_serial())
}

fn x509_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    asn1_to_system(t)
}

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

mod conformance;
mod create_certificate;
mod credentials;
mod csr;
mod leaf_records;
mod lifetimes;
mod persistence;
mod plugin;
mod root_rotation;
mod rsa_roots;
