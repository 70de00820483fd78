//! X.509 and PEM helpers: encoding and parsing certificates, reading validity and SANs, checking
//! that a certificate may sign and matches its key, serial numbers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm};
use ring::rand::{SecureRandom, SystemRandom};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{CaError, CertInfo};

/// A P-256 public key taken straight from a freshly generated ring PKCS#8 document, so
/// issuing does not pay for parsing the key back (a second scalar multiplication).
pub(crate) struct RawP256Public<'a>(pub(crate) &'a [u8]);

impl PublicKeyData for RawP256Public<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// All `CERTIFICATE` blocks of a PEM bundle, as DER.
pub(crate) fn parse_cert_pems(data: &[u8], location: &str) -> Result<Vec<Vec<u8>>, CaError> {
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(data) {
        let pem = pem.map_err(|e| CaError::corrupt(location, format!("bad PEM: {e}")))?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        X509Certificate::from_der(&pem.contents)
            .map_err(|e| CaError::corrupt(location, format!("certificate does not parse: {e}")))?;
        out.push(pem.contents);
    }
    if out.is_empty() {
        return Err(CaError::corrupt(location, "no CERTIFICATE PEM block found"));
    }
    Ok(out)
}

pub(crate) fn parse_cert(der: &[u8]) -> X509Certificate<'_> {
    // Only called on DER already validated by parse_cert_pems.
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .expect("certificate DER validated earlier")
}

pub(crate) fn asn1_to_system(t: x509_parser::time::ASN1Time) -> SystemTime {
    let ts = t.timestamp();
    if ts >= 0 {
        UNIX_EPOCH + Duration::from_secs(ts as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(ts.unsigned_abs())
    }
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Truncates to whole seconds (X.509 validity has second precision).
pub(crate) fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

pub(crate) fn first_uri_san(cert: &X509Certificate<'_>) -> String {
    use x509_parser::extensions::GeneralName;
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
        })
        .unwrap_or_default()
}

pub(crate) fn ca_cert_info(der: &[u8], kind: &str) -> CertInfo {
    let c = parse_cert(der);
    CertInfo {
        spiffe_id: first_uri_san(&c),
        serial: hex::encode(c.raw_serial()),
        not_before: rfc3339(asn1_to_system(c.validity().not_before)),
        not_after: rfc3339(asn1_to_system(c.validity().not_after)),
        kind: kind.to_string(),
    }
}

/// Checks that `cert` may sign certificates.
pub(crate) fn check_is_ca(cert: &X509Certificate<'_>, location: &str) -> Result<(), CaError> {
    let not_ca = |reason: &str| CaError::NotCa {
        location: location.to_string(),
        reason: reason.to_string(),
    };
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => return Err(not_ca("basicConstraints CA:TRUE is missing")),
        Err(e) => return Err(not_ca(&format!("bad basicConstraints: {e}"))),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            Err(not_ca("keyUsage does not allow keyCertSign"))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(not_ca(&format!("bad keyUsage: {e}"))),
    }
}

pub(crate) fn check_key_matches(
    key: &KeyPair,
    cert: &X509Certificate<'_>,
    key_loc: &str,
    cert_loc: &str,
) -> Result<(), CaError> {
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return Err(CaError::KeyMismatch {
            key: key_loc.to_string(),
            cert: cert_loc.to_string(),
        });
    }
    Ok(())
}

pub(crate) fn random_serial(rng: &SystemRandom) -> Result<[u8; 16], CaError> {
    let mut serial = [0u8; 16];
    rng.fill(&mut serial).map_err(|_| CaError::Rng {
        what: "generating a serial number",
    })?;
    // Positive, and exactly 16 bytes in DER (no leading zero to strip or add).
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}
