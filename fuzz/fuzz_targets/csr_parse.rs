//! CSR parsing and checking (`CertificateAuthority::sign_csr`): arbitrary text as the PEM
//! input, and arbitrary bytes as the DER inside a well-formed `CERTIFICATE REQUEST` block, so
//! both the PEM layer and the PKCS#10 / public key / signature checks get exercised. Any input
//! must give a certificate or an error, never a panic.

#![no_main]

mod common;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use meshd_ca::SpiffeId;

fuzz_target!(|data: &[u8]| {
    let ca = &*common::CA;
    let id = SpiffeId::new("cluster.local", "fuzz", "csr");
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ca.sign_csr(text, &id, None);
    }
    let pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::engine::general_purpose::STANDARD.encode(data)
    );
    if let Ok(chain) = ca.sign_csr(&pem, &id, None) {
        assert!(!chain.is_empty());
    }
});
