//! Private key loading: PKCS#8, plus SEC1 (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`)
//! re-wrapped as PKCS#8, since the ring backend reads PKCS#8 only.

use rcgen::KeyPair;

use crate::CaError;

const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
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
        return KeyPair::try_from(der.as_slice()).map_err(|e| {
            corrupt(format!(
                "private key does not parse ({e}); supported: ECDSA P-256/P-384, Ed25519, RSA"
            ))
        });
    }
    Err(corrupt("no PRIVATE KEY PEM block found".into()))
}
