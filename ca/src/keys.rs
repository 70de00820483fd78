//! Private keys.
//!
//! * Loading: PKCS#8, plus SEC1 (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`) re-wrapped as
//!   PKCS#8, since the ring backend reads PKCS#8 only. The PKCS#8 algorithm identifier picks
//!   the signature algorithm (RSA keys sign with sha256WithRSAEncryption).
//! * Generating root keys: ECDSA P-256 with ring; RSA with the `rsa` crate (ring cannot generate
//!   RSA keys), handed to rcgen/ring as PKCS#8 for signing.

use rcgen::KeyPair;

use crate::{CaError, RootKeyAlgorithm};

const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// rsaEncryption (1.2.840.113549.1.1.1), tag and length included.
const OID_RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const ALG_RSA: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    der_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// PrivateKeyInfo { version 0, algorithm, OCTET STRING(inner) }.
fn wrap_pkcs8(algorithm: &[u8], inner: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(algorithm);
    body.extend_from_slice(&der_tlv(0x04, inner));
    der_tlv(0x30, &body)
}

/// A DER header at the start of `input`: (tag, header length, content length).
fn read_header(input: &[u8]) -> Option<(u8, usize, usize)> {
    let (&tag, after_tag) = input.split_first()?;
    let (&first, after_len) = after_tag.split_first()?;
    if first < 0x80 {
        return Some((tag, 2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > std::mem::size_of::<usize>() || after_len.len() < n {
        return None;
    }
    let len = after_len[..n]
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Some((tag, 2 + n, len))
}

/// One DER element.
struct Tlv<'a> {
    tag: u8,
    /// Header and content.
    whole: &'a [u8],
    content: &'a [u8],
    /// What follows the element.
    rest: &'a [u8],
}

/// The DER element at the start of `input`.
fn read_tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let (tag, header, len) = read_header(input)?;
    let end = header.checked_add(len)?;
    if input.len() < end {
        return None;
    }
    Some(Tlv {
        tag,
        whole: &input[..end],
        content: &input[header..end],
        rest: &input[end..],
    })
}

/// The algorithm OID (tag and length included) of a PKCS#8 PrivateKeyInfo. Only the outer
/// header is read from a truncated document, so a cut-off RSA key is still reported as RSA.
fn pkcs8_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    let (0x30, header, _) = read_header(der)? else {
        return None;
    };
    let version = read_tlv(&der[header..]).filter(|t| t.tag == 0x02)?;
    let alg = read_tlv(version.rest).filter(|t| t.tag == 0x30)?;
    let oid = read_tlv(alg.content).filter(|t| t.tag == 0x06)?;
    Some(oid.whole)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Parses the first private key PEM block in `data`.
pub(crate) fn parse_private_key(data: &[u8], location: &str) -> Result<KeyPair, CaError> {
    let corrupt = |reason: String| CaError::corrupt(location, reason);
    for pem in x509_parser::pem::Pem::iter_from_buffer(data) {
        let pem = pem.map_err(|e| corrupt(format!("bad PEM: {e}")))?;
        let der = match pem.label.as_str() {
            "PRIVATE KEY" => pem.contents,
            "EC PRIVATE KEY" => {
                let curve = if contains(&pem.contents, OID_P256) {
                    OID_P256
                } else if contains(&pem.contents, OID_P384) {
                    OID_P384
                } else {
                    return Err(corrupt(
                        "EC key on an unsupported curve (or without curve parameters); use P-256 or P-384".into(),
                    ));
                };
                let alg = der_tlv(0x30, &[OID_EC_PUBLIC_KEY, curve].concat());
                wrap_pkcs8(&alg, &pem.contents)
            }
            "RSA PRIVATE KEY" => wrap_pkcs8(ALG_RSA, &pem.contents),
            "ENCRYPTED PRIVATE KEY" => {
                return Err(corrupt(
                    "the private key is encrypted; provide an unencrypted key (mode 0600)".into(),
                ));
            }
            _ => continue,
        };
        if pkcs8_algorithm_oid(&der) == Some(OID_RSA_ENCRYPTION) {
            // Named explicitly rather than guessed, so a damaged RSA key says why ring refused it.
            return KeyPair::from_pkcs8_der_and_sign_algo(
                &der.as_slice().into(),
                &rcgen::PKCS_RSA_SHA256,
            )
            .map_err(|e| {
                corrupt(format!(
                    "RSA private key does not load ({e}); it must be a valid, unencrypted RSA key of 2048 to 8192 bits"
                ))
            });
        }
        return KeyPair::try_from(der.as_slice()).map_err(|e| {
            corrupt(format!(
                "private key does not parse ({e}); supported: ECDSA P-256/P-384, Ed25519, RSA"
            ))
        });
    }
    Err(corrupt("no PRIVATE KEY PEM block found".into()))
}

/// A new key for a self-signed root.
pub(crate) fn generate_root_key(alg: RootKeyAlgorithm) -> Result<KeyPair, CaError> {
    let Some(bits) = alg.rsa_bits() else {
        return KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| {
            CaError::Generate {
                what: "generating the root key",
                source: e,
            }
        });
    };
    use rsa::pkcs8::EncodePrivateKey;
    let keygen_err = |reason: String| CaError::KeyGeneration {
        algorithm: alg.as_str(),
        reason,
    };
    let started = std::time::Instant::now();
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
        .map_err(|e| keygen_err(e.to_string()))?;
    // Zeroized on drop.
    let pkcs8 = key
        .to_pkcs8_der()
        .map_err(|e| keygen_err(format!("encoding as PKCS#8: {e}")))?;
    drop(key);
    tracing::info!(
        algorithm = alg.as_str(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "generated an RSA root key"
    );
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_bytes().into(), &rcgen::PKCS_RSA_SHA256)
        .map_err(|e| CaError::Generate {
            what: "loading the generated RSA root key",
            source: e,
        })
}

/// The [`RootKeyAlgorithm`] of a certificate's public key, if it is one meshd generates.
pub(crate) fn cert_key_algorithm(
    cert: &x509_parser::prelude::X509Certificate<'_>,
) -> Option<RootKeyAlgorithm> {
    use x509_parser::public_key::PublicKey;
    let spki = cert.public_key();
    match spki.parsed().ok()? {
        PublicKey::RSA(k) => match k.key_size() {
            2048 => Some(RootKeyAlgorithm::Rsa2048),
            4096 => Some(RootKeyAlgorithm::Rsa4096),
            _ => None,
        },
        PublicKey::EC(_) => {
            let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
            (curve == x509_parser::oid_registry::OID_EC_P256).then_some(RootKeyAlgorithm::EcdsaP256)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs8_algorithm_of_generated_keys() {
        let ec = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert_eq!(
            pkcs8_algorithm_oid(ec.serialized_der()),
            Some(OID_EC_PUBLIC_KEY)
        );
        let rsa = generate_root_key(RootKeyAlgorithm::Rsa2048).unwrap();
        assert_eq!(
            pkcs8_algorithm_oid(rsa.serialized_der()),
            Some(OID_RSA_ENCRYPTION)
        );
        assert!(rsa.is_compatible(&rcgen::PKCS_RSA_SHA256));
        // the PEM round trip picks RSA again
        let back = parse_private_key(rsa.serialize_pem().as_bytes(), "test").unwrap();
        assert!(back.is_compatible(&rcgen::PKCS_RSA_SHA256));
        assert_eq!(back.public_key_raw(), rsa.public_key_raw());
        assert_eq!(pkcs8_algorithm_oid(b"\x30\x03\x02\x01"), None);
        assert_eq!(pkcs8_algorithm_oid(b""), None);
    }
}
