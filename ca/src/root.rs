//! The root and signing certificates themselves: generating a self-signed root, checking one
//! read from storage, and turning a CA certificate and its key into the signer. Shared by loading
//! and by root rotation.

use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SystemRandom;
use x509_parser::prelude::X509Certificate;

use crate::x509::{asn1_to_system, first_uri_san, parse_cert, random_serial, whole_seconds};
use crate::{BACKDATE, CaConfig, CaError, Signer, SpiffeId, keys};

pub(crate) fn signer_from(
    cert_der: &[u8],
    key: KeyPair,
    cert_loc: &str,
    chain_tail: Vec<String>,
) -> Result<Signer, CaError> {
    let cert = parse_cert(cert_der);
    let not_after = asn1_to_system(cert.validity().not_after);
    let serial_hex = hex::encode(cert.raw_serial());
    let issuer = Issuer::from_ca_cert_der(&cert_der.to_vec().into(), key)
        .map_err(|e| CaError::corrupt(cert_loc, format!("cannot use as issuer: {e}")))?;
    let chain_tail_joined = chain_tail.concat();
    Ok(Signer {
        issuer,
        serial_hex,
        not_after,
        chain_tail,
        chain_tail_joined,
    })
}

pub(crate) fn check_self_signed_root(
    root: &X509Certificate<'_>,
    location: &str,
    cfg: &CaConfig,
) -> Result<(), CaError> {
    if root.verify_signature(None).is_err() {
        return Err(CaError::NotCa {
            location: location.to_string(),
            reason: "root certificate is not self-signed (use the plug-in CA layout for an intermediate)".into(),
        });
    }
    let td_uri = SpiffeId::trust_domain_uri(&cfg.trust_domain);
    let got = first_uri_san(root);
    if !got.is_empty() && got != td_uri {
        tracing::warn!(root = %got, configured = %td_uri, "root CA trust domain differs from the configured trust domain");
    }
    Ok(())
}

/// A new self-signed root (cert PEM, key PEM) with a [`CaConfig::root_key_algorithm`] key (an
/// RSA root signs with sha256WithRSAEncryption). Rotated roots carry their creation time in the
/// common name, so two roots of one mesh never share a subject.
pub(crate) fn generate_root(
    cfg: &CaConfig,
    rng: &SystemRandom,
    rotated: bool,
) -> Result<(String, String), CaError> {
    let key = keys::generate_root_key(cfg.root_key_algorithm)?;
    let now = whole_seconds(SystemTime::now());
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "meshd");
    if rotated {
        let stamp = time::OffsetDateTime::from(now)
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_default();
        dn.push(DnType::CommonName, format!("meshd root CA {stamp}"));
    } else {
        dn.push(DnType::CommonName, "meshd root CA");
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI(
        SpiffeId::trust_domain_uri(&cfg.trust_domain)
            .try_into()
            .map_err(|e| CaError::Generate {
                what: "encoding the root's trust-domain URI SAN",
                source: e,
            })?,
    )];
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + cfg.root_cert_ttl).into();
    params.serial_number = Some(SerialNumber::from_slice(&random_serial(rng)?));
    let cert = params.self_signed(&key).map_err(|e| CaError::Generate {
        what: "self-signing the root certificate",
        source: e,
    })?;
    Ok((cert.pem(), key.serialize_pem()))
}
